"""The inputs people have: HEIC photos, EXIF-rotated photos, nested folders (--recursive), lists of
paths (--image-list) and http(s) URLs (served by a local http.server on 127.0.0.1).

The checkpoint is a tiny random transformers DPT saved in tmp_path; the CLI runs in-process.
"""

from __future__ import annotations

import functools
import http.server
import io
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpt_mlx.cli.predict import main
from dpt_mlx.errors import ImageError
from dpt_mlx.processing.images import list_images, load_image, url_name

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "examples" / "images" / "coffee.jpg"
ORIENTATION = 0x0112  # EXIF tag; 6 = "rotate 90° clockwise to display"


@pytest.fixture(scope="module")
def ckpt(tiny_dpt_dir):
    """The shared tiny depth checkpoint with a fixed 32x32 model input (conftest.py)."""
    return tiny_dpt_dir


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert "Traceback" not in err and lines[0].startswith("error: ")
    return lines[0]


def _photo(path: Path, size=(64, 40), orientation: int | None = None) -> Path:
    """A crop of the sample photo (W, H = ``size`` as stored), optionally with an EXIF orientation."""
    image = Image.open(PHOTO).convert("RGB").resize(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        image.save(path, exif=exif.tobytes())
    return path


def _files(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------------------------
# HEIC and EXIF orientation


@pytest.mark.parametrize("suffix", [".heic", ".jpg"])
def test_exif_orientation_gives_the_displayed_shape(ckpt, tmp_path, capsys, suffix):
    if suffix == ".heic":
        pillow_heif = pytest.importorskip("pillow_heif")  # in the test extra
        pillow_heif.register_heif_opener()  # to write the file; dpt_mlx registers it itself to read
    path = _photo(tmp_path / f"turned{suffix}", size=(64, 40), orientation=6)
    assert load_image(path).size == (40, 64)  # W, H as displayed
    code, out, err = _run(["--model", ckpt, "--image", path, "--format", "npy"], capsys)
    assert code == 0, err
    depth = np.load(tmp_path / "turned_depth.npy")
    assert depth.shape == (64, 40)  # H, W as displayed, not as stored
    assert np.isfinite(depth).all() and depth.std() > 0


def test_heic_without_pillow_heif_says_what_to_install(ckpt, tmp_path, capsys, monkeypatch):
    path = tmp_path / "photo.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic")  # never decoded: the missing package is found first
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import pillow_heif -> ImportError
    with pytest.raises(ImageError, match=r'pip install "dpt_mlx\[heic\]"'):
        load_image(path)
    code, out, err = _run(["--model", ckpt, "--image", path], capsys)
    assert code == 2
    assert 'pip install "dpt_mlx[heic]"' in _one_error_line(err)


def test_heic_is_listed_in_folders(tmp_path):
    for name in ("a.HEIC", "b.heif", "c.jpg", "d.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.HEIC", "b.heif", "c.jpg"]


# ----------------------------------------------------------------------------------------------
# --recursive


@pytest.fixture
def tree(tmp_path):
    """photos/: a.jpg, sub/b.png, sub/deeper/c.jpg; skipped: .hidden/d.jpg, sub/.e.jpg, sub/x_depth.png,
    notes.txt; and a directory symlink loop sub/loop -> photos."""
    root = tmp_path / "photos"
    for name in ("a.jpg", "sub/b.png", "sub/deeper/c.jpg", ".hidden/d.jpg", "sub/.e.jpg", "sub/x_depth.png"):
        _photo(root / name, size=(48, 36))
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    return root


def test_recursive_listing_skips_hidden_and_does_not_follow_folder_links(tree):
    found: list = []
    worker = threading.Thread(target=lambda: found.extend(list_images(tree, recursive=True)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the listing hangs on a directory symlink loop"
    names = [p.relative_to(tree).as_posix() for p in found]
    assert names == ["a.jpg", "sub/b.png", "sub/x_depth.png", "sub/deeper/c.jpg"]  # the CLI drops x_depth.png


def test_recursive_outputs_mirror_the_tree(ckpt, tree, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(
        ["--model", ckpt, "--input-dir", tree, "--recursive", "--output-dir", out, "--format", "npy"], capsys
    )
    assert code == 0, err
    assert _files(out) == {"a_depth.npy", "sub/b_depth.npy", "sub/deeper/c_depth.npy"}
    assert np.load(out / "sub" / "deeper" / "c_depth.npy").shape == (36, 48)


def test_recursive_without_output_dir_writes_beside_each_input(ckpt, tree, capsys):
    before = _files(tree)
    code, stdout, err = _run(["--model", ckpt, "--input-dir", tree, "--recursive", "--format", "npy"], capsys)
    assert code == 0, err
    assert _files(tree) - before == {"a_depth.npy", "sub/b_depth.npy", "sub/deeper/c_depth.npy"}


def test_without_recursive_only_the_top_folder(ckpt, tree, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(["--model", ckpt, "--input-dir", tree, "--output-dir", out, "--format", "npy"], capsys)
    assert code == 0, err
    assert _files(out) == {"a_depth.npy"}


# ----------------------------------------------------------------------------------------------
# --image-list


def test_image_list_comments_relative_paths_and_a_missing_file(ckpt, tmp_path, capsys, monkeypatch):
    lists = tmp_path / "lists"
    _photo(lists / "near.jpg")
    far = _photo(tmp_path / "elsewhere" / "far.png")
    (lists / "todo.txt").write_text(f"# photos to do\n\nnear.jpg\n  {far}  \n# missing.jpg\nmissing.jpg\n")
    monkeypatch.chdir(tmp_path / "elsewhere")  # relative entries are read from the list's folder, not here
    out = tmp_path / "out"
    code, stdout, err = _run(
        ["--model", ckpt, "--image-list", lists / "todo.txt", "--output-dir", out, "--format", "npy"], capsys
    )
    assert code == 1
    assert _files(out) == {"near_depth.npy", "far_depth.npy"}
    errors = err.strip().splitlines()
    assert "no such image file" in errors[0] and "missing.jpg" in errors[0]
    assert errors[1:] == ["error: 1 of 3 images failed (see above); the others were written"]
    assert "Traceback" not in err


def test_image_list_from_stdin(ckpt, tmp_path, capsys, monkeypatch):
    _photo(tmp_path / "one.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("one.jpg\n"))
    code, stdout, err = _run(["--model", ckpt, "--image-list", "-", "--format", "npy"], capsys)
    assert code == 0, err
    assert (tmp_path / "one_depth.npy").is_file()


def test_image_list_that_cannot_be_read(ckpt, tmp_path, capsys):
    code, stdout, err = _run(["--model", ckpt, "--image-list", tmp_path / "nope.txt"], capsys)
    assert code == 2
    assert "--image-list" in _one_error_line(err)


# ----------------------------------------------------------------------------------------------
# URLs


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request log on stderr
        pass


@pytest.fixture
def server(tmp_path):
    """http://127.0.0.1:<port>/ serving a folder that holds coffee.jpg; stopped after the test."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(PHOTO, served / "coffee.jpg")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    httpd.timeout = 10
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_url_in_the_pipeline(ckpt, server):
    from dpt_mlx import pipeline

    width, height = Image.open(PHOTO).size
    result = pipeline("depth-estimation", model=ckpt)(f"{server}/coffee.jpg")
    assert result["predicted_depth"].shape == (height, width)
    np.testing.assert_allclose(
        result["predicted_depth"], pipeline("depth-estimation", model=ckpt)(str(PHOTO))["predicted_depth"]
    )


def test_url_on_the_command_line(ckpt, server, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(
        ["--model", ckpt, "--image", f"{server}/coffee.jpg?size=large", "--output-dir", out, "--format", "npy"], capsys
    )
    assert code == 0, err
    width, height = Image.open(PHOTO).size
    assert np.load(out / "coffee_depth.npy").shape == (height, width)


def test_url_needs_an_output_dir(ckpt, server, capsys):
    code, stdout, err = _run(["--model", ckpt, "--image", f"{server}/coffee.jpg"], capsys)
    assert code == 2
    assert "--output-dir" in _one_error_line(err)


def test_url_that_is_not_found_is_one_line(ckpt, server, tmp_path, capsys):
    url = f"{server}/missing.jpg"
    with pytest.raises(ImageError, match="404"):
        load_image(url)
    code, stdout, err = _run(["--model", ckpt, "--image", url, "--output-dir", tmp_path / "out"], capsys)
    assert code == 2
    assert f"cannot fetch {url}: HTTP 404" in _one_error_line(err)


@pytest.mark.parametrize(
    "url, name",
    [
        ("https://example.com/photos/My%20Photo.JPG?x=1#y", "My_Photo.JPG"),
        ("http://example.com/a/b/", "b"),
        ("http://example.com/.hidden.png", "hidden.png"),
        ("http://example.com/", "example.com"),
    ],
)
def test_url_names(url, name):
    assert url_name(url) == name

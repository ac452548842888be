"""dpt_mlx.ray.DepthPredictor on Ray Data, and ``python -m dpt_mlx.batch``, on a local two-CPU Ray:
the maps equal dpt_mlx.pipeline()'s, the files equal ``dpt-mlx --input-dir``'s, reruns finish only
what is missing, and bad inputs are one-line errors."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import ray.data  # noqa: F401  (here: its logging binds to the real stderr, not one test's capsys)
import torch
import transformers
from helpers import TINY_DPT as TINY
from helpers import perturb, photo, tiny_dpt
from PIL import Image

import dpt_mlx
from dpt_mlx.cli import batch
from dpt_mlx.cli.console import Console
from dpt_mlx.cli.inputs import collect_batch_inputs
from dpt_mlx.pipelines import load_image
from dpt_mlx.ray import DepthPredictor, map_depth, read_image

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "examples" / "images" / "coffee.jpg"
LABELS = {0: "wall", 1: "floor", 2: "table", 3: "cup", 4: "plate"}
SIZES = [(48, 64), (61, 97), (40, 40), (75, 52)]  # (H, W): every one a different model input with keep_aspect_ratio
ONE_THREAD = dict(os.environ, DPT_MLX_THREADS="1", OMP_NUM_THREADS="1")  # as a worker with one CPU computes


@pytest.fixture
def local_ray():
    """A fresh two-CPU Ray for each test that uses one: the workers of an earlier test's datasets
    (Ray releases them in its own time) can never hold the CPUs a later test asks for."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Tiny perturbed checkpoints: depth (aspect ratio kept, so images of different sizes batch apart)
    and 5-label segmentation."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    depth = tiny_dpt(seed=6)
    with torch.no_grad():  # keep the depth above the head's final ReLU, so that it varies over the image
        depth.head.head[4].bias.fill_(1.0)
    depth.save_pretrained(str(root / "depth"))
    transformers.DPTImageProcessorPil(
        size={"height": 32, "width": 32}, keep_aspect_ratio=True, ensure_multiple_of=8
    ).save_pretrained(str(root / "depth"))
    seg = perturb(transformers.DPTForSemanticSegmentation(transformers.DPTConfig(**TINY, id2label=LABELS)), seed=7)
    seg.save_pretrained(str(root / "seg"))
    transformers.DPTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(str(root / "seg"))
    return {"depth": str(root / "depth"), "seg": str(root / "seg")}


def _folder(root: Path) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / "coffee.jpg"]
    shutil.copy(PHOTO, paths[0])
    for i, (h, w) in enumerate(SIZES):
        paths.append(root / f"photo{i}.{'png' if i % 2 else 'jpg'}")
        Image.fromarray(photo(h, w, seed=i)).save(paths[-1], quality=95)
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("photos"))


def _reference(model: str, paths) -> dict[str, np.ndarray]:
    pipe = dpt_mlx.pipeline("depth-estimation", model=model)
    return {str(p): pipe(str(p))["predicted_depth"] for p in paths}


def _check_depth(rows, reference, column="predicted_depth"):
    assert sorted(r["path"] for r in rows) == sorted(reference)  # every image exactly once
    for row in rows:
        ours, ref = row[column], reference[row["path"]]
        assert ours.dtype == np.float32 and ours.shape == ref.shape, row["path"]
        assert np.count_nonzero(ref) > ref.size // 2
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max(), err_msg=row["path"])


def _pool(**kwargs):
    return dict(compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5, **kwargs)  # CPUs left for the reads


# ----------------------------------------------------------------------------------------------
# DepthPredictor


def test_read_images_matches_the_pipeline(local_ray, ckpt, photos):
    ds = ray.data.read_images(str(photos[0].parent), include_paths=True, mode="RGB")
    rows = ds.map_batches(
        DepthPredictor, fn_constructor_kwargs={"model": ckpt["depth"], "batch_size": 2}, batch_size=3, **_pool()
    ).take_all()
    _check_depth(rows, _reference(ckpt["depth"], photos))
    for row in rows:  # the other columns pass through
        assert row["image"].dtype == np.uint8 and row["image"].shape[:2] == row["predicted_depth"].shape


def test_paths_and_bytes_columns_and_recorded_errors(local_ray, ckpt, photos, tmp_path):
    reference = _reference(ckpt["depth"], photos)
    rows = (
        ray.data.from_items([{"path": str(p), "id": i} for i, p in enumerate(photos)])
        .map_batches(DepthPredictor, fn_constructor_kwargs={"model": ckpt["depth"]}, batch_size=2, **_pool())
        .take_all()
    )
    _check_depth(rows, reference)
    assert sorted(r["id"] for r in rows) == list(range(len(photos)))

    folder = tmp_path / "with_bad"
    folder.mkdir()
    for p in photos:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    rows = (
        ray.data.read_binary_files(str(folder), include_paths=True)
        .map_batches(
            DepthPredictor, fn_constructor_kwargs={"model": ckpt["depth"], "errors": "record"}, batch_size=3, **_pool()
        )
        .take_all()
    )
    bad = [r for r in rows if r["path"].endswith("broken.jpg")]
    assert len(bad) == 1 and bad[0]["predicted_depth"].shape == (0, 0)
    assert bad[0]["error"] == (
        f"{folder / 'broken.jpg'} is not an image Pillow can read (corrupt file or unsupported format)"
    )
    good = [dict(r, path=str(photos[0].parent / Path(r["path"]).name)) for r in rows if r is not bad[0]]
    assert all(r["error"] == "" for r in good)
    _check_depth(good, reference)

    with pytest.raises(Exception, match="broken.jpg is not an image Pillow can read"):
        (
            ray.data.read_binary_files(str(folder), include_paths=True)
            .map_batches(DepthPredictor, fn_constructor_kwargs={"model": ckpt["depth"]}, batch_size=6, **_pool())
            .take_all()
        )


def test_segmentation_column(local_ray, ckpt, photos):
    rows = map_depth(
        ray.data.from_items([{"path": str(p)} for p in photos]), ckpt["seg"], workers=2, num_cpus=0.5, batch_size=4
    ).take_all()
    pipe = dpt_mlx.pipeline("image-segmentation", model=ckpt["seg"])
    ids = {name: i for i, name in LABELS.items()}
    assert sorted(r["path"] for r in rows) == sorted(map(str, photos))
    for row in rows:
        classes = row["segmentation"]
        expected = np.full(classes.shape, -1)
        for entry in pipe(row["path"]):
            expected[np.asarray(entry["mask"]) == 255] = ids[entry["label"]]
        assert classes.dtype == np.uint8 and (expected >= 0).all()
        assert len(np.unique(expected)) > 1 and (classes == expected).all(), row["path"]


def test_read_image_accepts_what_a_column_holds(photos):
    expected = np.asarray(Image.open(photos[1]).convert("RGB"))
    for item in (
        str(photos[1]),
        photos[1].read_bytes(),
        np.array(photos[1].read_bytes(), dtype=object),
        expected,
        photos[1].resolve().as_uri(),
    ):
        assert (np.asarray(read_image(item, str(photos[1]))) == expected).all(), type(item)
    assert (np.asarray(load_image(photos[1].read_bytes())) == expected).all()
    with pytest.raises(dpt_mlx.ImageError, match=r"^no such image file: file://.*missing\.jpg$"):
        read_image(photos[1].parent.resolve().as_uri() + "/missing.jpg")


def test_threads_follow_the_cpus_ray_assigns(local_ray, ckpt):
    class Threads(DepthPredictor):  # defined here, so that Ray sends it to the workers by value
        def __call__(self, batch):
            return {"threads": np.array([self.threads]), "blas": np.array([dpt_mlx.blas_info()["threads"]])}

    def threads(num_cpus):
        rows = (
            ray.data.from_items([{"path": "unused"}])
            .map_batches(
                Threads,
                fn_constructor_kwargs={"model": ckpt["depth"]},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=1),
                num_cpus=num_cpus,
            )
            .take_all()
        )
        return rows[0]["threads"], rows[0]["blas"]

    assert threads(2) == (2, 2) and threads(0.5) == (1, 1)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        DepthPredictor(ckpt["depth"], threads=0)


def _batch_args(tmp_path, ckpt, *extra) -> list:
    _folder(tmp_path / "in")
    return [
        "--input",
        tmp_path / "in",
        "--output",
        tmp_path / "out",
        "--model",
        ckpt["depth"],
        "--format",
        "npy",
        *extra,
    ]


def test_workers_no_node_can_hold_are_refused_at_once(local_ray, ckpt, tmp_path, capsys):
    ds = ray.data.from_items([{"path": "unused"}])
    start = time.monotonic()
    with pytest.raises(
        ValueError,
        match=r"^each worker asks for 3 CPUs, but the largest Ray node has 2 CPUs; "
        r"ask for at most 2 per worker$",
    ):
        map_depth(ds, ckpt["depth"], num_cpus=3)
    with pytest.raises(ValueError, match=r"^3 workers of 1 CPU each do not fit on the Ray cluster's 2 CPUs \(2 do\); "):
        map_depth(ds, ckpt["depth"], workers=3, num_cpus=1)
    for extra, expected in (
        (
            ["--cpus-per-worker", 3],
            "error: --cpus-per-worker: each worker asks for 3 CPUs, but the largest Ray node "
            "has 2 CPUs; ask for at most 2 per worker",
        ),
        (
            ["--workers", 5, "--cpus-per-worker", 0.5],
            "error: --cpus-per-worker: 5 workers of 0.5 CPUs each do not "
            "fit on the Ray cluster's 2 CPUs (4 do); ask for fewer workers "
            "or fewer CPUs each",
        ),
    ):
        code, out, errors = _run(_batch_args(tmp_path, ckpt, *extra), capsys)
        assert (code, errors) == (2, [expected])
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert time.monotonic() - start < 60


def test_workers_that_cannot_start_fail_within_the_start_timeout(local_ray, ckpt, tmp_path, capsys):
    @ray.remote(num_cpus=2)
    class Hog:  # another job that holds every CPU of the cluster
        def ping(self):
            return True

    hog = Hog.remote()
    assert ray.get(hog.ping.remote(), timeout=60)
    start = time.monotonic()
    with pytest.raises(ray.exceptions.GetTimeoutError):
        map_depth(ray.data.from_items([{"path": str(PHOTO)}]), ckpt["depth"], start_timeout=2).take_all()
    code, out, errors = _run(_batch_args(tmp_path, ckpt, "--start-timeout", 2), capsys)
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(
        "error: the Ray workers did not start within 2 s (1 worker, 2 CPUs each; the "
        "cluster has 0 of 2 CPUs free now): other work holds the CPUs"
    ), errors
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert time.monotonic() - start < 90
    ray.kill(hog)


# ----------------------------------------------------------------------------------------------
# python -m dpt_mlx.batch


def _run(args, capsys) -> tuple[int, str, list[str]]:
    code = batch.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, [line for line in err.splitlines() if line.startswith("error: ")]


def _dpt_mlx(*args) -> subprocess.CompletedProcess:
    """``dpt-mlx`` in a process with one BLAS thread, as each of two workers on two CPUs computes."""
    return subprocess.run(
        [sys.executable, "-m", "dpt_mlx.generate", *map(str, args), "-q"],
        env=ONE_THREAD,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_batch_writes_what_dpt_mlx_writes_and_reports_a_corrupt_image(local_ray, ckpt, tmp_path, capsys):
    photos = _folder(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    formats = "png,png16,npy"
    code, out, errors = _run(
        [
            "--input",
            tmp_path / "in",
            "--output",
            tmp_path / "ray",
            "--model",
            ckpt["depth"],
            "--format",
            formats,
            "--workers",
            2,
            "--batch-size",
            2,
        ],
        capsys,
    )
    assert code == 1, errors
    assert errors == [
        f"error: {tmp_path / 'in' / 'broken.png'} is not an image Pillow can read (corrupt file or unsupported format)",
        "error: 1 of 6 images failed (see above); the others were written",
    ]
    assert "5 images written" in out and "2 workers, 1 CPU each" in out
    reference = _dpt_mlx(
        "--input-dir", tmp_path / "in", "--output-dir", tmp_path / "cli", "--model", ckpt["depth"], "--format", formats
    )
    assert reference.returncode == 1, reference.stderr
    ours, theirs = _files(tmp_path / "ray"), _files(tmp_path / "cli")
    assert sorted(ours) == sorted(theirs) and len(ours) == 15
    assert [name for name in ours if ours[name] != theirs[name]] == []
    depth = np.load(tmp_path / "ray" / "coffee_depth.npy")
    np.testing.assert_allclose(depth, _reference(ckpt["depth"], [photos[0]])[str(photos[0])], rtol=1e-5, atol=1e-6)


def test_a_rerun_does_only_what_an_interrupted_run_left(local_ray, ckpt, tmp_path, capsys):
    _folder(tmp_path / "in")
    args = [
        "--input",
        tmp_path / "in",
        "--output",
        tmp_path / "out",
        "--model",
        ckpt["depth"],
        "--format",
        "png,npy",
        "--workers",
        2,
    ]
    assert _run(args, capsys)[0] == 0
    out = tmp_path / "out"
    first = _files(out)
    assert len(first) == 10
    # An interrupted run: photo0 never started, photo1 got one of its two files, photo2's PNG was being
    # written when the process was killed (its temporary file is left, old enough to be stale).
    for name in ("photo0_depth.png", "photo0_depth.npy", "photo1_depth.npy", "photo2_depth.png"):
        (out / name).unlink()
    stale = out / ".photo2_depth.png.k1ll3d.tmp"
    stale.write_bytes(b"half a png")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    kept = {
        p.name: p.stat().st_mtime_ns
        for p in out.iterdir()
        if not p.name.startswith((".", "photo0", "photo1", "photo2"))
    }
    assert len(kept) == 4
    time.sleep(0.05)
    code, summary, errors = _run(args, capsys)
    assert code == 0 and errors == []
    assert "3 images written" in summary and "2 skipped (all outputs exist)" in summary
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in kept} == kept  # not redone
    assert _files(out) == first  # the stale temporary file is gone, the rest as the first run wrote it

    code, summary, errors = _run(args, capsys)
    assert code == 0 and errors == [] and "5 image(s) skipped (all outputs exist" in summary


def test_sigterm_keeps_whole_files_and_the_rerun_does_the_rest(ckpt, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i in range(100):
        Image.fromarray(photo(60, 80, seed=i % 5)).save(folder / f"img{i:03d}.png")
    args = ["--input", folder, "--output", out, "--model", ckpt["depth"], "--format", "png,npy", "--workers", 2]
    run = subprocess.Popen(
        [sys.executable, "-m", "dpt_mlx.batch", *map(str, args), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 90
    while run.poll() is None and time.time() < deadline and len(list(out.glob("*.npy")) if out.is_dir() else []) < 3:
        time.sleep(0.05)
    run.terminate()  # SIGTERM: Ray's own handler would end the driver at once with status 15
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143, err
    assert [line for line in err.splitlines() if line.startswith("error: ")][-1].startswith(
        "error: terminated by SIGTERM after "
    )
    for path in out.iterdir():  # only whole files under their names (a killed worker's temporary files are hidden)
        if not path.name.startswith("."):
            np.load(path) if path.suffix == ".npy" else Image.open(path).load()
    done = {p.name[:6] for p in out.glob("*_depth.npy") if (out / f"{p.name[:6]}_depth.png").exists()}
    assert 2 <= len(done) < 90
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name[:6] in done}
    code, summary, errors = _run(args, capsys)
    assert code == 0 and errors == []
    assert f"{100 - len(done)} images written" in summary and f"{len(done)} skipped" in summary
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert len(list(out.glob("*_depth.png"))) == len(list(out.glob("*_depth.npy"))) == 100


def test_segmentation_from_a_uri_writes_what_dpt_mlx_writes(local_ray, ckpt, tmp_path, capsys):
    _folder(tmp_path / "in" / "sub")
    code, out, errors = _run(
        [
            "--input",
            (tmp_path / "in").as_uri(),
            "--recursive",
            "--output",
            tmp_path / "ray",
            "--model",
            ckpt["seg"],
            "--format",
            "png,npy",
            "--verbose",
        ],
        capsys,
    )
    assert code == 0, errors
    assert f"{(tmp_path / 'in').as_uri()}/sub/coffee.jpg -> {tmp_path / 'ray' / 'sub' / 'coffee_seg.png'}" in out
    assert "1 worker, 2 CPUs each" in out
    reference = _dpt_mlx(
        "--input-dir",
        tmp_path / "in",
        "--recursive",
        "--output-dir",
        tmp_path / "cli",
        "--model",
        ckpt["seg"],
        "--format",
        "png,npy",
    )
    assert reference.returncode == 0, reference.stderr
    ours, theirs = _files(tmp_path / "ray" / "sub"), _files(tmp_path / "cli" / "sub")
    assert sorted(ours) == sorted(theirs) and len(ours) == 10 and ours == theirs
    assert np.load(tmp_path / "ray" / "sub" / "coffee_seg.npy").dtype == np.uint8


# ----------------------------------------------------------------------------------------------
# Errors and planning (no Ray work)


@pytest.mark.parametrize("case", ["missing", "empty", "glob", "model", "ray", "png16", "output"])
def test_errors_are_one_line_with_exit_status_2(case, ckpt, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    _folder(tmp_path / "in")
    source, model = tmp_path / "in", ckpt["depth"]
    expected = {
        "missing": f"--input {tmp_path / 'nowhere'}: no such folder or file",
        "empty": f"no images in {tmp_path / 'empty'} (looked for",
        "glob": f"--input {tmp_path / 'in' / '*.webp'} matches no images",
        "model": "config.json",
        "ray": 'ray is not installed; pip install "dpt_mlx[ray]"',
        "png16": "--format png16 is for depth models",
        "output": f"error: cannot create --output {tmp_path / 'file' / 'out'}: Not a directory",
    }[case]
    if case == "missing":
        source = tmp_path / "nowhere"
    elif case == "empty":
        source = tmp_path / "empty"
    elif case == "glob":
        source = tmp_path / "in" / "*.webp"
    elif case == "model":
        model = tmp_path / "empty"
    elif case == "ray":
        monkeypatch.setitem(sys.modules, "ray", None)
    elif case == "png16":
        model = ckpt["seg"]
    output = tmp_path / "out"
    if case == "output":  # a folder under a regular file
        (tmp_path / "file").write_text("not a folder")
        output = tmp_path / "file" / "out"
    code, out, errors = _run(
        ["--input", source, "--output", output, "--model", model, "--format", "png16" if case == "png16" else "png"],
        capsys,
    )
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_python_m_dpt_mlx_batch_joins_a_running_cluster(local_ray, ckpt, tmp_path):
    """--address: the command's driver joins this module's Ray, and leaves it running."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(photo(40, 56, seed=i)).save(folder / f"p{i}.png")
    args = [
        "--input",
        folder,
        "--output",
        tmp_path / "out",
        "--model",
        ckpt["depth"],
        "--format",
        "npy",
        "--address",
        ray.get_runtime_context().gcs_address,
        "--workers",
        2,
    ]
    run = subprocess.run(
        [sys.executable, "-m", "dpt_mlx.batch", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "2 images written" in run.stdout and "2 workers, 1 CPU each" in run.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0_depth.npy", "p1_depth.npy"]
    assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2


def test_python_m_dpt_mlx_batch_errors_and_import_without_ray(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpt_mlx.batch",
            "--input",
            str(tmp_path / "nowhere"),
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stderr == f"error: --input {tmp_path / 'nowhere'}: no such folder or file\n"
    check = "import sys, dpt_mlx, dpt_mlx.ray, dpt_mlx.cli.batch, dpt_mlx.cli.inputs; print('ray' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
        ).stdout.strip()
        == "False"
    )


def test_glob_inputs_mirror_the_folders_below_the_pattern(tmp_path):
    for sub in ("a", "b/c"):
        _folder(tmp_path / "in" / sub)
    (tmp_path / "in" / "a" / "photo1_depth.png").write_bytes(b"an output of an earlier run")
    pattern = str(tmp_path / "in" / "**" / "photo1.*")
    inputs = collect_batch_inputs(pattern, recursive=True, console=Console(quiet=True, verbose=False))
    assert inputs.paths == [tmp_path / "in" / "a" / "photo1.png", tmp_path / "in" / "b" / "c" / "photo1.png"]
    assert inputs.base == str(tmp_path / "in") and inputs.mirror


@pytest.mark.parametrize(
    "nodes, workers, per, expected",
    [
        ([16], None, None, (1, 16.0)),
        ([16], 3, None, (3, 5.0)),
        ([16, 8], None, None, (2, 8.0)),
        ([16, 8], 3, None, (3, 8.0)),
        ([4, 4, 4], 4, None, (4, 2.0)),
        ([2], 4, None, (4, 0.5)),
        ([8], 2, 1.5, (2, 1.5)),
    ],
)
def test_placement(nodes, workers, per, expected):
    assert batch.placement(nodes, workers, per) == expected

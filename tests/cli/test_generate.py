"""The command line (dpt_mlx.generate): outputs, formats, batching, error handling, exit status.

Checkpoints are tiny random transformers models saved in tmp_path; photographs are derived
from examples/images/coffee.jpg (RGB, grayscale, RGBA, 16-bit, odd sizes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from helpers import TINY_DPT as TINY
from helpers import perturb, rel_err, tiny_dpt
from PIL import Image

from dpt_mlx.cli import predict as generate
from dpt_mlx.cli.predict import main
from dpt_mlx.processing import visualize

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "examples" / "images" / "coffee.jpg"


def _save(model, path: Path, **processor) -> Path:
    model.save_pretrained(str(path))
    transformers.DPTImageProcessorPil(**processor).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Tiny perturbed checkpoints: depth (fixed 32x32 input), depth with aspect-ratio resizing,
    depth without preprocessor_config.json, segmentation with 150 labels and with 5 labels."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    square = dict(size={"height": 32, "width": 32})
    out = {}
    depth = tiny_dpt(seed=1)
    with torch.no_grad():  # keep the depth above the head's final ReLU, so that it varies over the image
        depth.head.head[4].bias.fill_(1.0)
    out["depth"] = _save(depth, root / "depth", **square)
    out["depth_aspect"] = _save(
        depth, root / "depth_aspect", size={"height": 32, "width": 32}, keep_aspect_ratio=True, ensure_multiple_of=8
    )
    out["depth_noproc"] = root / "depth_noproc"
    depth.save_pretrained(str(out["depth_noproc"]))
    ade = transformers.DPTConfig(**TINY, id2label={i: f"thing{i}" for i in range(150)})
    out["seg"] = _save(perturb(transformers.DPTForSemanticSegmentation(ade), seed=2), root / "seg", **square)
    few = transformers.DPTConfig(**TINY, id2label={0: "sky", 1: "tree", 2: "road", 3: "car", 4: "person"})
    out["seg5"] = _save(perturb(transformers.DPTForSemanticSegmentation(few), seed=3), root / "seg5", **square)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """name -> path: RGB 600x400 JPEG, odd-size grayscale PNG, RGBA PNG, odd-size JPEG, 16-bit PNG."""
    root = tmp_path_factory.mktemp("photos")
    photo = Image.open(PHOTO)
    paths = {"rgb": root / "coffee.jpg"}
    shutil.copy(PHOTO, paths["rgb"])
    paths["gray"] = root / "gray.png"
    photo.convert("L").crop((10, 20, 311, 223)).save(paths["gray"])
    paths["rgba"] = root / "rgba.png"
    rgba = photo.convert("RGBA").resize((97, 61))
    rgba.putalpha(200)
    rgba.save(paths["rgba"])
    paths["odd"] = root / "odd.jpg"
    photo.crop((100, 50, 133, 97)).save(paths["odd"], quality=95)
    paths["gray16"] = root / "gray16.png"
    Image.fromarray(np.asarray(photo.convert("L").resize((64, 48)), dtype=np.uint16) * 257).save(paths["gray16"])
    return paths


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _reference_depth(ckpt_dir: Path, path: Path) -> np.ndarray:
    """transformers: processor -> model -> post_process_depth_estimation at the photo's size."""
    model = transformers.DPTForDepthEstimation.from_pretrained(str(ckpt_dir)).eval()
    processor = transformers.DPTImageProcessorPil.from_pretrained(str(ckpt_dir))
    image = Image.open(path)
    image = (
        Image.fromarray(np.asarray(image, dtype=np.float64).round().clip(0, 65535).astype(np.uint16) // 257).convert(
            "RGB"
        )
        if image.mode.startswith("I")
        else image.convert("RGB")
    )
    with torch.no_grad():
        out = model(**processor(images=image, return_tensors="pt"))
    post = processor.post_process_depth_estimation(out, target_sizes=[(image.height, image.width)])
    return post[0]["predicted_depth"].numpy()


def _one_error_line(err: str) -> str:
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert "Traceback" not in err
    assert lines[0].startswith("error: ")
    return lines[0]


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------
# Depth outputs


def test_depth_png_beside_input_at_input_size(ckpt, photos, tmp_path, capsys):
    src = tmp_path / "coffee.jpg"
    shutil.copy(photos["rgb"], src)
    code, out, err = _run(["--model", ckpt["depth"], "--image", src], capsys)
    assert code == 0, err
    target = tmp_path / "coffee_depth.png"
    with Image.open(target) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (600, 400)
        pixels = np.asarray(image).reshape(-1, 3)
        info = dict(image.text)
    lut = visualize.colormap_lut("inferno")
    # min-max normalised per image: the darkest and brightest entries of the colormap both occur
    assert (pixels == lut[0]).all(axis=1).any() and (pixels == lut[255]).all(axis=1).any()
    assert float(info["depth_min"]) < float(info["depth_max"])
    assert "relative inverse depth" in out and "normalised per image" in out
    assert "written" in out and "s/image" in out and "model load" in out
    assert err == "" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["rgb", "gray", "rgba", "odd", "gray16"])
def test_npy_and_png16_round_trip_to_reference_depth(ckpt, photos, tmp_path, capsys, name):
    code, _, err = _run(
        ["--model", ckpt["depth"], "--image", photos[name], "--format", "png16,npy", "--output-dir", tmp_path, "-q"],
        capsys,
    )
    assert code == 0, err
    stem = photos[name].stem
    with Image.open(photos[name]) as photo:
        width, height = photo.size
    depth = np.load(tmp_path / f"{stem}_depth.npy")
    assert depth.dtype == np.float32 and depth.shape == (height, width)
    assert rel_err(depth, _reference_depth(ckpt["depth"], photos[name])) < 1e-4
    with Image.open(tmp_path / f"{stem}_depth16.png") as png:
        assert png.mode.startswith("I") and png.size == (width, height)
        values = np.asarray(png).astype(np.float64)
        low, high = float(png.text["depth_min"]), float(png.text["depth_max"])
    assert values.min() == 0 and values.max() == 65535
    assert (low, high) == (float(depth.min()), float(depth.max()))
    restored = visualize.uint16_to_depth(values, low, high)
    assert np.abs(restored - depth).max() <= (high - low) / 65535 * 0.5 + 1e-6 * abs(high)


def test_colormaps_and_gray(ckpt, photos, tmp_path, capsys):
    code, _, err = _run(
        [
            "--model",
            ckpt["depth"],
            "--image",
            photos["odd"],
            "--colormap",
            "gray",
            "--output",
            tmp_path / "g.png",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    with Image.open(tmp_path / "g.png") as gray:
        assert gray.mode == "L" and gray.size == (33, 47)
        assert np.asarray(gray).min() == 0 and np.asarray(gray).max() == 255
    code, _, err = _run(
        [
            "--model",
            ckpt["depth"],
            "--image",
            photos["odd"],
            "--colormap",
            "turbo",
            "--output",
            tmp_path / "t.png",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    turbo = visualize.colormap_lut("turbo")
    with Image.open(tmp_path / "t.png") as image:
        pixels = np.asarray(image).reshape(-1, 3)
    assert all((pixels == c).all(axis=1).any() for c in (turbo[0], turbo[255]))


def test_colormap_tables_match_published_endpoints():
    # matplotlib's tables at 0, 0.5 and 1, scaled to 0..255 (each LUT is within 1/255 of them)
    published = {
        "inferno": [(0.001462, 0.000466, 0.013866), (0.735683, 0.215906, 0.330245), (0.988362, 0.998364, 0.644924)],
        "magma": [(0.001462, 0.000466, 0.013866), (0.716387, 0.214982, 0.475290), (0.987053, 0.991438, 0.749504)],
        "viridis": [(0.267004, 0.004874, 0.329415), (0.127568, 0.566949, 0.550556), (0.993248, 0.906157, 0.143936)],
        "plasma": [(0.050383, 0.029803, 0.527975), (0.798216, 0.280197, 0.469538), (0.940015, 0.975158, 0.131326)],
        "turbo": [(0.18995, 0.07176, 0.23217), (0.64362, 0.98999, 0.23356), (0.4796, 0.01583, 0.01055)],
    }
    for name, (first, middle, last) in published.items():
        lut = visualize.colormap_lut(name).astype(float)
        assert lut.shape == (256, 3)
        for index, color in ((0, first), (128, middle), (255, last)):
            assert np.abs(lut[index] - np.array(color) * 255).max() <= 1.01, (name, index)
    assert (visualize.colormap_lut("gray")[:, 0] == np.arange(256)).all()
    with pytest.raises(ValueError, match="inferno"):
        visualize.colormap_lut("jet")


def test_depth_overlay_and_output_extension_picks_format(ckpt, photos, tmp_path, capsys):
    code, _, err = _run(
        ["--model", ckpt["depth"], "--image", photos["gray"], "--output", tmp_path / "d.npy", "-q"], capsys
    )
    assert code == 0, err
    assert np.load(tmp_path / "d.npy").shape == (203, 301)
    code, _, err = _run(
        [
            "--model",
            ckpt["depth"],
            "--image",
            photos["gray"],
            "--overlay",
            "--alpha",
            "0.3",
            "--output-dir",
            tmp_path,
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    with Image.open(tmp_path / "gray_depth_overlay.png") as image:
        assert image.mode == "RGB" and image.size == (301, 203)
    assert (tmp_path / "gray_depth.png").exists()


# ----------------------------------------------------------------------------------------------
# Several images: folders, batching, failures, overwriting


def _folder(photos, root: Path, names=("rgb", "gray", "rgba", "odd")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(photos[name], root / photos[name].name)
    return root


def test_batching_gives_the_same_depth(ckpt, photos, tmp_path, capsys):
    folder = _folder(photos, tmp_path / "in")
    results = {}
    for batch in (1, 3):
        out_dir = tmp_path / f"out{batch}"
        code, out, err = _run(
            [
                "--model",
                ckpt["depth_aspect"],
                "--input-dir",
                folder,
                "--output-dir",
                out_dir,
                "--format",
                "npy",
                "--batch-size",
                batch,
                "-v",
            ],
            capsys,
        )
        assert code == 0, err
        results[batch] = {p.name: np.load(p) for p in out_dir.iterdir()}
        assert len(results[batch]) == 4
    assert "batch of 3" in out  # rgb, gray and rgba share a size (32x48) after aspect-preserving resizing
    for name, depth in results[1].items():
        assert rel_err(results[3][name], depth) < 1e-5


def test_folder_with_a_corrupt_file_writes_the_rest(ckpt, photos, tmp_path, capsys):
    folder = _folder(photos, tmp_path / "in")
    (folder / "broken.jpg").write_bytes(PHOTO.read_bytes()[:2500])  # truncated JPEG
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not an image extension")
    code, out, err = _run(["--model", ckpt["depth"], "--input-dir", folder], capsys)
    assert code == 1
    assert "broken.jpg" in err and "empty.png" in err and "Traceback" not in err
    assert "2 of 6 images failed" in err
    written = sorted(p.name for p in folder.glob("*_depth.png"))
    assert written == ["coffee_depth.png", "gray_depth.png", "odd_depth.png", "rgba_depth.png"]
    assert "4 images written" in out
    assert _leftovers(folder) == []
    # a second run skips the outputs of the first (named like outputs) and refuses to overwrite them
    code, out, err = _run(["--model", ckpt["depth"], "--input-dir", folder], capsys)
    assert code == 2 and err.count("exists; pass --overwrite") == 4


def test_overwrite(ckpt, photos, tmp_path, capsys):
    src = tmp_path / "odd.jpg"
    shutil.copy(photos["odd"], src)
    target = tmp_path / "odd_depth.png"
    target.write_bytes(b"keep me")
    code, out, err = _run(["--model", ckpt["depth"], "--image", src], capsys)
    assert code == 2 and "--overwrite" in _one_error_line(err) and out == ""
    assert target.read_bytes() == b"keep me"
    code, _, err = _run(["--model", ckpt["depth"], "--image", src, "--overwrite", "-q"], capsys)
    assert code == 0, err
    with Image.open(target) as image:
        assert image.size == (33, 47)
    # with several images only the one whose output exists fails
    other = tmp_path / "gray.png"
    shutil.copy(photos["gray"], other)
    code, _, err = _run(["--model", ckpt["depth"], "--image", src, other, "-q"], capsys)
    assert code == 1 and "odd_depth.png exists" in err and (tmp_path / "gray_depth.png").exists()


def test_never_overwrites_an_input(ckpt, photos, tmp_path, capsys):
    src = tmp_path / "photo.png"
    shutil.copy(photos["gray"], src)
    before = src.read_bytes()
    code, _, err = _run(["--model", ckpt["depth"], "--image", src, "--output", src, "--overwrite"], capsys)
    assert code == 2 and "input image" in _one_error_line(err)
    assert src.read_bytes() == before


def test_fallback_preprocessing_is_reported_with_verbose(ckpt, photos, tmp_path, capsys):
    code, out, err = _run(
        ["--model", ckpt["depth_noproc"], "--image", photos["odd"], "--output-dir", tmp_path, "--format", "npy", "-v"],
        capsys,
    )
    assert code == 0, err
    assert "no preprocessor_config.json" in out and "32x32" in out
    # the defaults for a ViT DPT are the reference processor's with the config's image size
    assert rel_err(np.load(tmp_path / "odd_depth.npy"), _reference_depth(ckpt["depth"], photos["odd"])) < 1e-4


def test_progress_bar_on_a_terminal(ckpt, photos, tmp_path, capsys, monkeypatch):
    folder = _folder(photos, tmp_path / "in", names=("odd", "gray"))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, _, err = _run(["--model", ckpt["depth"], "--input-dir", folder], capsys)
    assert code == 0
    assert "2/2" in err and "\r" in err
    code, _, err = _run(["--model", ckpt["depth"], "--input-dir", folder, "--overwrite", "-q"], capsys)
    assert code == 0 and err == ""


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.png"

    def write(f):
        f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        visualize.atomic_write(target, write)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Segmentation


def _reference_classes(ckpt_dir: Path, path: Path) -> np.ndarray:
    model = transformers.DPTForSemanticSegmentation.from_pretrained(str(ckpt_dir)).eval()
    processor = transformers.DPTImageProcessorPil.from_pretrained(str(ckpt_dir))
    image = Image.open(path).convert("RGB")
    with torch.no_grad():
        out = model(**processor(images=image, return_tensors="pt"))
    return processor.post_process_semantic_segmentation(out, target_sizes=[(image.height, image.width)])[0].numpy()


def test_segmentation_palette_png_overlay_and_class_list(ckpt, photos, tmp_path, capsys):
    code, out, err = _run(
        [
            "--model",
            ckpt["seg"],
            "--image",
            photos["rgb"],
            "--output-dir",
            tmp_path,
            "--overlay",
            "--alpha",
            "0.6",
            "--format",
            "png,npy",
        ],
        capsys,
    )
    assert code == 0, err
    with Image.open(tmp_path / "coffee_seg.png") as seg:
        assert seg.mode == "P" and seg.size == (600, 400)
        classes = np.asarray(seg)
        palette = np.array(seg.getpalette()[: 150 * 3]).reshape(150, 3)
    assert (palette == visualize.ade20k_palette()).all()
    assert (palette[0] == (120, 120, 120)).all()
    reference = _reference_classes(ckpt["seg"], photos["rgb"])
    assert (classes != reference).mean() < 1e-3
    ids = np.load(tmp_path / "coffee_seg.npy")
    assert ids.dtype == np.uint8 and (ids == classes).all()
    with Image.open(tmp_path / "coffee_seg_overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size == (600, 400)
        blended = np.asarray(overlay).astype(float)
    photo = np.asarray(Image.open(photos["rgb"]).convert("RGB")).astype(float)
    expected = photo * 0.4 + visualize.ade20k_palette()[classes] * 0.6
    assert np.abs(blended - expected).max() <= 0.51
    # the classes present, by name, largest first, with shares that add up to the whole image
    shares = [float(line.split("%")[0]) for line in out.splitlines() if line.startswith("    ") and "%" in line]
    assert abs(sum(shares) - 100) < 0.1 * len(shares)
    most = np.bincount(classes.ravel()).argmax()
    assert f"thing{most} ({most})" in out.splitlines()[1]
    assert "inverse depth" not in out


def test_segmentation_with_few_labels_uses_a_deterministic_palette(ckpt, photos, tmp_path, capsys):
    code, out, err = _run(["--model", ckpt["seg5"], "--image", photos["gray"], "--output", tmp_path / "s.png"], capsys)
    assert code == 0, err
    with Image.open(tmp_path / "s.png") as seg:
        assert seg.mode == "P" and seg.size == (301, 203)
        assert np.asarray(seg).max() < 5
        assert seg.getpalette()[:15] == visualize.voc_palette(5).ravel().tolist()
    assert any(name in out for name in ("sky", "tree", "road", "car", "person"))
    code, _, err = _run(
        ["--model", ckpt["seg5"], "--image", photos["gray"], "--format", "png16", "--output-dir", tmp_path], capsys
    )
    assert code == 2 and "png16" in _one_error_line(err)


# ----------------------------------------------------------------------------------------------
# Errors: one line, exit status 2, no traceback


def _broken_checkpoints(ckpt, root: Path) -> dict[str, Path]:
    cases = {}
    cases["no_weights"] = root / "no_weights"
    cases["no_weights"].mkdir()
    shutil.copy(ckpt["depth"] / "config.json", cases["no_weights"])
    cases["truncated"] = root / "truncated"
    shutil.copytree(ckpt["depth"], cases["truncated"])
    weights = cases["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases["unsupported"] = root / "unsupported"
    shutil.copytree(ckpt["depth"], cases["unsupported"])
    config = json.loads((cases["unsupported"] / "config.json").read_text())
    config["model_type"] = "glpn"
    (cases["unsupported"] / "config.json").write_text(json.dumps(config))
    cases["empty_dir"] = root / "empty_dir"
    cases["empty_dir"].mkdir()
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "missing_image",
        "corrupt_image",
        "image_is_dir",
        "no_weights",
        "truncated",
        "unsupported",
        "empty_dir",
        "hub_offline",
        "output_count",
        "output_suffix",
        "empty_input_dir",
    ],
)
def test_errors_are_one_line_with_exit_status_2(ckpt, photos, tmp_path, capsys, monkeypatch, case):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    broken = _broken_checkpoints(ckpt, tmp_path)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    (tmp_path / "no_images").mkdir()
    model, image, extra = ckpt["depth"], photos["odd"], ["--output-dir", tmp_path / "out"]
    expect = {
        "missing_image": "no such image file",
        "corrupt_image": "corrupt.jpg",
        "image_is_dir": "--input-dir",
        "no_weights": "model.safetensors",
        "truncated": "model.safetensors",
        "unsupported": "glpn",
        "empty_dir": "config.json",
        "hub_offline": "nobody/no-such-dpt-model",
        "output_count": "--output-dir",
        "output_suffix": ".npy",
        "empty_input_dir": "no images",
    }[case]
    if case == "missing_image":
        image = tmp_path / "nope.jpg"
    elif case == "corrupt_image":
        image = corrupt
    elif case == "image_is_dir":
        image = tmp_path
    elif case in broken:
        model = broken[case]
    elif case == "hub_offline":
        model = "nobody/no-such-dpt-model"
    elif case == "output_count":
        extra = ["--image", photos["gray"], "--output", tmp_path / "x.png"]
    elif case == "output_suffix":
        extra = ["--format", "npy", "--output", tmp_path / "x.png"]
    args = ["--model", model, "--image", image, *extra]
    if case == "empty_input_dir":
        args = ["--model", model, "--input-dir", tmp_path / "no_images"]
    code, out, err = _run(args, capsys)
    assert code == 2
    assert expect in _one_error_line(err)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_verbose_shows_the_traceback(ckpt, tmp_path, capsys):
    code, _, err = _run(["--model", tmp_path, "--image", PHOTO, "-v"], capsys)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--image"],
        ["--image", "x.jpg", "--batch-size", "0"],
        ["--image", "x.jpg", "--alpha", "1.5"],
        ["--image", "x.jpg", "--format", "jpg"],
        ["--image", "x.jpg", "--dtype", "float64"],
        ["--image", "x.jpg", "-q", "-v"],
        ["--image", "x.jpg", "--output", "a.png", "--output-dir", "d"],
    ],
)
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and err.rstrip().endswith("(see --help)"), err


def test_help_explains_normalisation_and_inverse_depth():
    text = generate.build_parser().format_help()
    for phrase in (
        "relative inverse depth",
        "larger = closer",
        "min-max normalised per image",
        "--overwrite",
        "exit status",
        "--batch-size",
        "png16",
        "Intel/dpt-large",
    ):
        assert phrase in text, phrase


# ----------------------------------------------------------------------------------------------
# The real command


def _cli(args, **env):
    environment = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "dpt_mlx.generate", *map(str, args)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_python_m_dpt_mlx_generate(ckpt, photos, tmp_path):
    folder = _folder(photos, tmp_path / "in", names=("odd", "rgba"))
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = _cli(
        ["--model", ckpt["depth"], "--input-dir", folder, "--output-dir", tmp_path / "out", "--format", "png,npy"]
    )
    assert result.returncode == 1, result.stderr
    assert "bad.png" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "odd_depth.npy",
        "odd_depth.png",
        "rgba_depth.npy",
        "rgba_depth.png",
    ]
    assert "2 images written" in result.stdout and "normalised per image" in result.stdout

    offline = _cli(["--model", "nobody/no-such-dpt-model", "--image", photos["odd"]], HF_HUB_OFFLINE="1")
    assert offline.returncode == 2
    assert "nobody/no-such-dpt-model" in _one_error_line(offline.stderr)


# ----------------------------------------------------------------------------------------------
# Concurrent runs, signals, --skip-existing, a closed stdout


def test_a_second_run_into_the_same_folder_never_replaces_the_first_runs_files(
    ckpt, photos, tmp_path, capsys, monkeypatch
):
    """Run A plans (no outputs exist yet); run B writes everything; then A writes: A's files all clash."""
    folder = _folder(photos, tmp_path / "in", names=("odd", "gray", "rgba"))
    out = tmp_path / "out"
    save_png, nested = visualize.save_png, []

    def save_png_after_another_run(*args, **kwargs):
        if not nested:  # the first write of run A: run B starts and finishes in the meantime
            nested.append(None)
            nested[0] = main(
                ["--model", str(ckpt["depth"]), "--input-dir", str(folder), "-d", str(out), "--colormap", "turbo", "-q"]
            )
        return save_png(*args, **kwargs)

    monkeypatch.setattr(visualize, "save_png", save_png_after_another_run)
    code, _, err = _run(["--model", ckpt["depth"], "--input-dir", folder, "-d", out], capsys)
    monkeypatch.setattr(visualize, "save_png", save_png)
    assert nested == [0]
    assert code == 2 and err.count("appeared while this run was writing it") == 3 and "--overwrite" in err
    assert _leftovers(out) == []
    # every file is B's (turbo), none was replaced by A's (inferno)
    _run(["--model", ckpt["depth"], "--input-dir", folder, "-d", tmp_path / "b", "--colormap", "turbo"], capsys)
    for name in ("odd_depth.png", "gray_depth.png", "rgba_depth.png"):
        assert (out / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def _big_folder(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    photo = Image.open(PHOTO).convert("RGB").resize((900, 600))
    for i in range(n):
        photo.rotate(i).save(root / f"img{i:02d}.png")
    return root


def _popen(args):
    return subprocess.Popen(
        [sys.executable, "-m", "dpt_mlx.generate", *map(str, args)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_into_one_folder_write_each_file_once(ckpt, tmp_path):
    folder = _big_folder(tmp_path / "in", 6)
    args = ["--model", ckpt["depth"], "--input-dir", folder, "-d", tmp_path / "out", "--format", "png,npy"]
    procs = [_popen(args) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    names = [f"img{i:02d}" for i in range(6)]
    written = [[n for n in names if f"{n}.png ->" in out] for _, out, _ in results]
    assert sorted(written[0] + written[1]) == names, results  # each image written by exactly one run
    for (code, _, err), mine in zip(results, written):
        if len(mine) < 6:  # the other run wrote some of its images: it says so, and exits non-zero
            assert code == (1 if mine else 2), err
            assert err.count("--overwrite") >= 6 - len(mine) and "Traceback" not in err
        else:
            assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{n}_depth.{e}" for n in names for e in ("png", "npy")
    )


def _outputs_are_complete(out: Path) -> list[str]:
    """The names in ``out``, after checking that each is a complete PNG or .npy (no temporary files)."""
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names
    for name in names:
        if name.endswith(".npy"):
            assert np.load(out / name).shape == (600, 900), name
        else:
            with Image.open(out / name) as image:
                image.load()
                assert image.size == (900, 600), name
    return names


def test_sigterm_leaves_only_complete_files_and_skip_existing_finishes(ckpt, tmp_path):
    import signal
    import time

    folder, out = _big_folder(tmp_path / "in", 12), tmp_path / "out"
    args = ["--model", ckpt["depth"], "--input-dir", folder, "-d", out, "--format", "png,png16,npy"]
    proc = _popen(args)
    deadline = time.monotonic() + 120
    first = [out / f"img00{s}" for s in ("_depth.png", "_depth16.png", "_depth.npy")]
    while not all(p.exists() for p in first):  # the first image is done; the run is in the middle
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    _, err = proc.communicate()
    assert code == 143, err
    assert "terminated by SIGTERM" in err and "Traceback" not in err
    names = _outputs_are_complete(out)
    done = [
        f"img{i:02d}"
        for i in range(12)
        if all(f"img{i:02d}{s}" in names for s in ("_depth.png", "_depth16.png", "_depth.npy"))
    ]
    assert 1 <= len(done) < 12
    # a temporary file of a killed (SIGKILL) run: ignored as input, removed as stale by the next run
    stale = out / ".img11_depth.png.abcd1234.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600,) * 2)
    (folder / stale.name).write_bytes(b"half")  # hidden: never an input
    rerun = _cli([*args, "--skip-existing"])
    assert rerun.returncode == 0, rerun.stderr
    assert not stale.exists()
    plural = "s" if len(done) > 1 else ""
    assert f"{12 - len(done)} image" in rerun.stdout and f"{len(done)} image{plural} skipped" in rerun.stdout
    assert not [n for n in done if f"{n}.png ->" in rerun.stdout]
    assert len(_outputs_are_complete(out)) == 36
    again = _cli([*args, "--skip-existing"])
    assert again.returncode == 0 and "12 images skipped" in again.stdout, again.stderr


def test_skip_existing_redoes_an_image_with_only_some_outputs(ckpt, photos, tmp_path, capsys):
    folder = _folder(photos, tmp_path / "in", names=("odd", "gray"))
    args = ["--model", ckpt["depth"], "--input-dir", folder, "-d", tmp_path / "out", "--format", "png,npy"]
    assert _run(args, capsys)[0] == 0
    partial = tmp_path / "out" / "gray_depth.npy"
    partial.unlink()
    (tmp_path / "out" / "gray_depth.png").write_bytes(b"from an interrupted run")
    assert _run(args, capsys)[0] == 2  # without --skip-existing both images fail on their existing files
    code, out, err = _run([*args, "--skip-existing"], capsys)
    assert code == 0, err
    assert "1 image written" in out and "1 image skipped" in out and "odd.png" not in out
    assert partial.exists()
    with Image.open(tmp_path / "out" / "gray_depth.png") as image:
        assert image.size == (301, 203)
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in (*args, "--skip-existing", "--overwrite")])
    assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_a_closed_stdout_ends_quietly(ckpt, photos):
    read, write = os.pipe()
    os.close(read)  # as `dpt-mlx -v ... | head -0`: every write to stdout fails with EPIPE
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "dpt_mlx.generate",
                "--model",
                str(ckpt["depth"]),
                "--image",
                str(photos["odd"]),
                "--format",
                "npy",
                "--output-dir",
                str(photos["odd"].parent / "piped"),
                "-v",
            ],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_the_summary_is_the_last_thing_on_the_terminal(monkeypatch):
    import io

    from dpt_mlx.cli.console import Console

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    console = Console(quiet=False, verbose=False, total=2)
    for name in ("a", "b"):
        console.info(f"{name}.jpg -> {name}_depth.png")
        console.advance()
    assert "2/2" in screen.getvalue()
    console.info("2 images written in 1.00 s")
    console.error("1 of 2 images failed")
    assert screen.getvalue().endswith("2 images written in 1.00 s\nerror: 1 of 2 images failed\n")


def test_the_portable_path_note_is_one_line_and_quiet_silences_it(ckpt, photos, tmp_path):
    """Without the CPU kernels (no compiler at install) the first model load says why in one line;
    -q prints nothing."""
    stub = (
        "import runpy, sys; from dpt_mlx.cpu import native; "
        "native._state.update(module=None, why='the CPU kernels were not built (test)'); "
        "sys.argv[0] = 'dpt-mlx'; runpy.run_module('dpt_mlx.generate', run_name='__main__')"
    )
    args = ["--model", ckpt["depth"], "--image", photos["rgb"], "--output-dir", tmp_path]

    def run(extra):
        return subprocess.run(
            [sys.executable, "-c", stub, *map(str, args + extra)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )

    loud = run([])
    assert loud.returncode == 0, loud.stderr
    assert loud.stderr.strip().splitlines() == ["dpt_mlx: the CPU kernels were not built (test)"]
    quiet = run(["-q", "--overwrite"])
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""

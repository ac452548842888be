"""The command line on a Depth Pro checkpoint: metric depth equal to transformers' processor + model +
post-processing at the photo's size, the camera it was made with (the model's estimate, or --focal-length,
--fov or the photo's EXIF, which then scale the depth as the reference scales it with its estimate), and that
camera in the image's line, the PNG text chunks, the npy's JSON sidecar, the EXR header and the PLY header."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import TOL, photo, rel_err
from model_configs import DEPTH_PRO_VARIANTS, depth_pro_config, make_depth_pro
from PIL import Image
from plyfile import PlyData

from dpt_mlx.cli.predict import main

SIZE = 64  # the "two-scales" checkpoint's input: patch_size 32 / 0.5
F35 = 0xA405  # EXIF FocalLengthIn35mmFilm


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, depth_pro_reference):
    root = tmp_path_factory.mktemp("depth_pro_cli")
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    ref = make_depth_pro(root, depth_pro_config(**DEPTH_PRO_VARIANTS["two-scales"]), x, seed=3)
    processor = depth_pro_reference(size={"height": SIZE, "width": SIZE})
    processor.save_pretrained(root)
    return root, ref, processor


def _photo(path, exif_f35=None):
    image = Image.fromarray(photo(70, 96, seed=5))
    if exif_f35 is None:
        image.save(path, quality=95)
    else:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[F35] = exif_f35
        image.save(path, quality=95, exif=exif)
    return path


def _reference(checkpoint, path, fov=None):
    """transformers on the photo: processor, model, post-processing at its size (``fov`` replacing the model's)."""
    _, ref, processor = checkpoint
    image = Image.open(path).convert("RGB")
    with torch.no_grad():
        out = ref(**processor(images=image, return_tensors="pt"))
    estimated = float(out.field_of_view[0])
    if fov is not None:
        out.field_of_view = torch.tensor([fov], dtype=torch.float32)
    result = processor.post_process_depth_estimation(out, target_sizes=[(image.height, image.width)])[0]
    return result["predicted_depth"].numpy(), float(result["focal_length"]), estimated


def _same_depth(ours, want) -> bool:
    """Within 1e-4 of the range and, pixel by pixel, 1e-3 relative: where the reference clamps some
    inverse depths (depth 1e4) the range alone would hide a wrong scale everywhere else."""
    return rel_err(ours, want) < TOL and np.allclose(ours, want, rtol=1e-3, atol=0)


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _fov(focal, width):
    return math.degrees(2 * math.atan(0.5 * width / focal))


@pytest.mark.parity
def test_no_exif_the_model_estimate_names_the_camera_everywhere(checkpoint, tmp_path, capsys):
    path = _photo(tmp_path / "photo.jpg")
    out = tmp_path / "out"
    code, stdout, err = _run(
        ["--model", checkpoint[0], "--image", path, "--format", "npy,ply,png,exr", "--output-dir", out], capsys
    )
    assert code == 0, err
    want, focal, fov = _reference(checkpoint, path)
    assert _same_depth(np.load(out / "photo_depth.npy"), want)
    # the camera: the model's estimate, named on the image's line, in the sidecar and the headers
    assert "Depth Pro's estimate" in stdout and f"{focal:.4g}" in stdout and "metres" in stdout
    sidecar = json.loads((out / "photo_depth.json").read_text())
    assert sidecar["focal_length"] == pytest.approx(focal, rel=1e-4)
    assert sidecar["field_of_view"] == pytest.approx(fov, rel=1e-4)
    assert sidecar["focal_length_source"] == "Depth Pro's estimate" and "metres" in sidecar["depth"]
    assert (sidecar["width"], sidecar["height"]) == (96, 70)
    text = Image.open(out / "photo_depth.png").text
    assert float(text["focal_length"]) == pytest.approx(focal, rel=1e-4)
    assert float(text["field_of_view"]) == pytest.approx(fov, rel=1e-4)
    comments = PlyData.read(str(out / "photo_points.ply")).comments
    assert any("Depth Pro's estimate" in c and f"fx {sidecar['focal_length']!r}" in c for c in comments), comments
    import OpenEXR

    with OpenEXR.File(str(out / "photo_depth.exr")) as exr:
        assert float(exr.header()["focal_length"]) == pytest.approx(focal, rel=1e-4)


@pytest.mark.parity
@pytest.mark.parametrize("source", ["exif", "focal-length", "fov"])
def test_a_known_camera_scales_the_depth_as_the_reference(checkpoint, tmp_path, capsys, source):
    path = _photo(tmp_path / "photo.jpg", exif_f35=50 if source == "exif" else None)
    focal = {"exif": 50 / 36 * 96, "focal-length": 123.0, "fov": 96 / 2 / math.tan(math.radians(35))}[source]
    extra = {"exif": [], "focal-length": ["--focal-length", 123], "fov": ["--fov", 70]}[source]
    out = tmp_path / "out"
    code, stdout, err = _run(
        ["--model", checkpoint[0], "--image", path, "--format", "npy,ply", "--output-dir", out, *extra], capsys
    )
    assert code == 0, err
    want, want_focal, estimated = _reference(checkpoint, path, fov=_fov(focal, 96))
    assert want_focal == pytest.approx(focal, rel=1e-5)
    assert _same_depth(np.load(out / "photo_depth.npy"), want)
    named = {"exif": "EXIF FocalLengthIn35mmFilm", "focal-length": "--focal-length", "fov": "--fov"}[source]
    sidecar = json.loads((out / "photo_depth.json").read_text())
    assert sidecar["focal_length_source"] == named and sidecar["focal_length"] == pytest.approx(focal)
    assert named in stdout
    assert any(named in c for c in PlyData.read(str(out / "photo_points.ply")).comments)
    # --no-exif: the model's estimate, whatever the photo says
    if source == "exif":
        again = tmp_path / "again"
        code, stdout, _ = _run(
            ["--model", checkpoint[0], "--image", path, "-f", "npy", "-d", again, "--no-exif"], capsys
        )
        assert code == 0 and "Depth Pro's estimate" in stdout
        assert _same_depth(np.load(again / "photo_depth.npy"), _reference(checkpoint, path)[0])
        assert json.loads((again / "photo_depth.json").read_text())["field_of_view"] == pytest.approx(estimated)


def test_output_file_gets_its_sidecar_and_other_models_get_none(checkpoint, tiny_dpt_dir, tmp_path, capsys):
    path = _photo(tmp_path / "photo.jpg")
    code, _, err = _run(["--model", checkpoint[0], "--image", path, "--output", tmp_path / "d.npy"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "d.json").read_text())["focal_length_source"] == "Depth Pro's estimate"
    code, _, err = _run(["--model", tiny_dpt_dir, "--image", path, "-f", "npy", "-d", tmp_path / "dpt"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "dpt").iterdir()) == ["photo_depth.npy"]

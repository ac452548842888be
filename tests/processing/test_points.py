"""Point clouds (dpt_mlx.processing.points and --format ply): back-projection against a per-pixel loop,
valid pixels, colours, intrinsics from options and EXIF, and the command line on tiny Depth Anything
checkpoints (metric written as is, relative refused unless --depth-kind metric)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from depth3d import checkpoints_3d
from PIL import Image
from plyfile import PlyData

from dpt_mlx import depth_to_points
from dpt_mlx.cli.predict import main
from dpt_mlx.processing.images import load_image
from dpt_mlx.processing.points import camera_intrinsics, focal_from_fov, save_ply

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "images" / "coffee.jpg"


def _loop_points(depth, fx, fy, cx, cy):
    """The reference: one pixel at a time, on pixel centres."""
    out = []
    for v in range(depth.shape[0]):
        for u in range(depth.shape[1]):
            z = float(depth[v, u])
            if math.isfinite(z) and z > 0:
                out.append(((u + 0.5 - cx) * z / fx, (v + 0.5 - cy) * z / fy, z))
    return np.array(out, dtype=np.float64).reshape(-1, 3)


def _depth(h=7, w=11, seed=0):
    depth = np.random.default_rng(seed).uniform(0.5, 10.0, (h, w)).astype(np.float32)
    depth[0, 0], depth[1, 3], depth[4, 2] = np.nan, 0.0, -1.0
    depth[6, 10] = np.inf
    return depth


def test_back_projection_matches_a_per_pixel_loop():
    depth = _depth()
    points = depth_to_points(depth, focal_length=(9.0, 13.0), principal_point=(4.0, 3.5))
    assert points.dtype == np.float32 and points.shape == (7 * 11 - 4, 3)
    np.testing.assert_allclose(points, _loop_points(depth, 9.0, 13.0, 4.0, 3.5), rtol=1e-6, atol=1e-6)
    # default principal point: the centre; one focal length for both axes
    np.testing.assert_allclose(
        depth_to_points(depth, focal_length=20.0), _loop_points(depth, 20, 20, 5.5, 3.5), rtol=1e-6, atol=1e-6
    )


def test_vertex_count_is_valid_pixels_and_colours_come_from_the_photo():
    depth = _depth()
    photo = np.random.default_rng(1).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    points, colors = depth_to_points(depth, focal_length=10.0, image=Image.fromarray(photo))
    valid = np.isfinite(depth) & (depth > 0)
    assert len(points) == len(colors) == valid.sum()
    assert colors.dtype == np.uint8
    np.testing.assert_array_equal(colors, photo[valid])  # row-major, as the points
    np.testing.assert_array_equal(points[:, 2], depth[valid])
    with pytest.raises(ValueError, match="image is 11x6"):
        depth_to_points(depth, focal_length=10.0, image=photo[:6])


def test_fov_math():
    width = 640
    assert focal_from_fov(90, width) == pytest.approx(320.0)
    assert focal_from_fov(60, width) == pytest.approx(320.0 / math.tan(math.radians(30)))
    depth = _depth()
    expected = _loop_points(depth, 5.5, 5.5, 5.5, 3.5)  # 90 degrees over 11 pixels: fx = 5.5
    np.testing.assert_allclose(depth_to_points(depth, fov=90), expected, rtol=1e-6, atol=1e-6)
    camera = camera_intrinsics(PHOTO, 640, fov=90, height=480)
    assert (camera.fx, camera.fy, camera.cx, camera.cy, camera.source) == (
        pytest.approx(320),
        pytest.approx(320),
        320,
        240,
        "--fov",
    )
    camera = camera_intrinsics(PHOTO, 640, focal_length=500, height=480)
    assert (camera.fx, camera.source) == (500, "--focal-length")
    with pytest.raises(ValueError, match="not both"):
        camera_intrinsics(PHOTO, 640, focal_length=500, fov=60)


def _jpeg(path, size=(120, 80), **tags):
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    for tag, value in tags.items():
        sub[int(tag, 16)] = value
    Image.new("RGB", size, (10, 20, 30)).save(path, exif=exif)
    return path


def test_exif_focal_length(tmp_path):
    f35 = _jpeg(tmp_path / "f35.jpg", **{"0xA405": 28})
    camera = camera_intrinsics(f35, 120)
    assert camera.source == "EXIF FocalLengthIn35mmFilm"
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (
        pytest.approx(28 / 36 * 120),
        pytest.approx(28 / 36 * 120),
        60,
        40,
    )
    # a portrait photo: the 36 mm side is the longer side, here the height
    portrait = _jpeg(tmp_path / "portrait.jpg", size=(80, 120), **{"0xA405": 28})
    assert camera_intrinsics(portrait, 80).fx == pytest.approx(28 / 36 * 120)
    assert camera_intrinsics(Image.open(f35), 240, height=160).fx == pytest.approx(28 / 36 * 240)  # a PIL image
    # FocalLength 4 mm on a sensor 120 px / (25 px/mm) = 4.8 mm wide: fx = 4 / 4.8 * 120 = 100 px
    sensor = _jpeg(tmp_path / "sensor.jpg", **{"0x920A": 4.0, "0xA20E": 25.0, "0xA210": 4})
    camera = camera_intrinsics(sensor, 120)
    assert (camera.fx, camera.source) == (pytest.approx(100.0), "EXIF FocalLength + sensor size")
    plain = _jpeg(tmp_path / "plain.jpg", **{"0x920A": 4.0})  # no sensor size: the default
    camera = camera_intrinsics(plain, 120)
    assert camera.source == "default (60° horizontal field of view)"
    assert camera.fx == pytest.approx(60 / math.tan(math.radians(30)))


def test_save_ply_round_trip(tmp_path):
    points, colors = depth_to_points(_depth(), focal_length=10.0, image=np.full((7, 11, 3), 7, np.uint8))
    save_ply(points, tmp_path / "c.ply", colors, comments=["60° camera"])
    ply = PlyData.read(str(tmp_path / "c.ply"))
    assert ply.header.splitlines()[1] == "format binary_little_endian 1.0"
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == ["x", "y", "z", "red", "green", "blue"]
    assert vertex["x"].dtype == np.float32 and vertex["red"].dtype == np.uint8
    np.testing.assert_array_equal(np.stack([vertex["x"], vertex["y"], vertex["z"]], 1), points)
    with pytest.raises(FileExistsError):
        save_ply(points, tmp_path / "c.ply", colors, overwrite=False)


# ----------------------------------------------------------------------------------------------
# The command line


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return checkpoints_3d(tmp_path_factory.mktemp("points"))  # metric and relative Depth Anything, a 45x31 photo


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _read_ply(path):
    vertex = PlyData.read(str(path))["vertex"]
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1)
    return xyz, np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1)


def test_cli_metric_ply_equals_depth_to_points_of_the_npy(models, tmp_path, capsys):
    code, out, err = _run(
        [
            "--model",
            models["metric"],
            "--image",
            models["photo"],
            "--format",
            "ply,npy",
            "--focal-length",
            500,
            "--output-dir",
            tmp_path,
        ],
        capsys,
    )
    assert code == 0, err
    assert "fx = fy = 500 px" in out and "from --focal-length" in out
    depth = np.load(tmp_path / "photo_depth.npy")
    assert depth.shape == (31, 45)
    photo = load_image(models["photo"])
    want_xyz, want_rgb = depth_to_points(depth, focal_length=500, image=photo)
    xyz, rgb = _read_ply(tmp_path / "photo_points.ply")
    assert len(xyz) == np.count_nonzero(np.isfinite(depth) & (depth > 0)) > 0
    np.testing.assert_array_equal(xyz, want_xyz)
    np.testing.assert_array_equal(rgb, want_rgb)
    np.testing.assert_allclose(xyz, _loop_points(depth, 500, 500, 22.5, 15.5), rtol=1e-6, atol=1e-7)

    # an existing file is kept without --overwrite, replaced with it; --skip-existing skips the image
    code, _, err = _run(
        [
            "--model",
            models["metric"],
            "--image",
            models["photo"],
            "--format",
            "ply",
            "--output-dir",
            tmp_path,
            "--fov",
            90,
        ],
        capsys,
    )
    assert code == 2 and "photo_points.ply exists; pass --overwrite" in err
    code, out, _ = _run(
        [
            "--model",
            models["metric"],
            "--image",
            models["photo"],
            "--format",
            "ply",
            "--output-dir",
            tmp_path,
            "--fov",
            90,
            "--overwrite",
        ],
        capsys,
    )
    assert code == 0 and "from --fov" in out
    np.testing.assert_allclose(
        _read_ply(tmp_path / "photo_points.ply")[0], depth_to_points(depth, focal_length=22.5), rtol=1e-6
    )
    code, out, _ = _run(
        [
            "--model",
            models["metric"],
            "--image",
            models["photo"],
            "--format",
            "ply",
            "--output-dir",
            tmp_path,
            "--skip-existing",
        ],
        capsys,
    )
    assert code == 0 and "1 image skipped" in out


def test_cli_relative_model_is_refused_unless_depth_kind_metric(models, tmp_path, capsys):
    args = ["--model", models["relative"], "--image", models["photo"], "--format", "ply", "--output-dir", tmp_path]
    code, out, err = _run(args, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "Depth-Anything-V2-Metric-Indoor-Small-hf" in err and "--depth-kind metric" in err
    assert not (tmp_path / "photo_points.ply").exists()
    code, out, err = _run(args + ["--depth-kind", "metric"], capsys)
    assert code == 0, err
    assert "default (60° horizontal field of view)" in out
    assert "(taken as metric: --depth-kind)" in out
    xyz, _ = _read_ply(tmp_path / "photo_points.ply")
    assert len(xyz) > 0 and np.all(xyz[:, 2] > 0)


def test_cli_options_are_checked(models, tmp_path, capsys):
    base = ["--model", models["metric"], "--image", models["photo"], "--format", "ply"]
    for bad in (["--focal-length", 0], ["--fov", 180], ["--fov", 60, "--focal-length", 500]):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in base + bad])
        assert e.value.code == 2
    capsys.readouterr()


def test_cli_without_plyfile_says_how_to_install(models, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "plyfile", None)  # import plyfile -> ImportError
    code, _, err = _run(
        ["--model", models["metric"], "--image", models["photo"], "--format", "ply", "--output-dir", tmp_path], capsys
    )
    assert code == 2
    assert err.strip().count("\n") == 0 and 'pip install "dpt_mlx[3d]"' in err

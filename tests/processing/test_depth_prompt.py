"""Reading depth prompts from files: the unit conventions and every way a file can be unusable."""

import numpy as np
import pytest
from PIL import Image

from dpt_mlx.errors import ImageError
from dpt_mlx.processing.depth_prompt import check_prompt_depth, read_prompt_depth


def lidar(height=12, width=16, seed=0):
    """A LiDAR-like map in metres: a smooth ramp with noise, 0.4 to 4 m."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.4, 4.0, width, dtype=np.float32)[None, :].repeat(height, 0)
    return ramp + rng.uniform(0, 0.05, (height, width)).astype(np.float32)


def test_npy_is_metres_and_png_is_millimetres(tmp_path):
    metres = lidar()
    np.save(tmp_path / "a.npy", metres)
    assert np.array_equal(read_prompt_depth(tmp_path / "a.npy"), metres)
    mm = np.round(metres * 1000).astype(np.uint16)
    Image.fromarray(mm).save(tmp_path / "a.png")
    got = read_prompt_depth(tmp_path / "a.png")
    assert got.dtype == np.float32 and got.shape == metres.shape
    np.testing.assert_allclose(got, mm.astype(np.float64) / 1000, rtol=1e-6)
    Image.fromarray(metres, mode="F").save(tmp_path / "a.tif")
    assert np.array_equal(read_prompt_depth(tmp_path / "a.tif"), metres)


def test_scale_overrides_the_convention(tmp_path):
    mm = np.round(lidar() * 1000).astype(np.float32)
    np.save(tmp_path / "mm.npy", mm)
    np.testing.assert_allclose(read_prompt_depth(tmp_path / "mm.npy", scale=0.001), mm * np.float32(0.001))
    np.save(tmp_path / "chw.npy", lidar()[None])  # (1, H, W) is squeezed
    assert read_prompt_depth(tmp_path / "chw.npy").shape == (12, 16)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        (np.array([[1.0, np.inf], [1.0, 2.0]], np.float32), "NaN or inf"),
        (-lidar(), "negative"),
        (np.zeros((4, 4), np.float32), "all zero"),
        (np.ones((1, 8), np.float32), "at least 2x2"),
        (np.ones((2, 3, 4), np.float32), "2-D"),
    ],
)
def test_unusable_maps_are_one_line_errors(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ImageError, match=message) as e:
        read_prompt_depth(tmp_path / "bad.npy")
    assert "\n" not in str(e.value) and "bad.npy" in str(e.value)


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    (tmp_path / "truncated.npy").write_bytes(b"\x93NUMPY\x01\x00")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    (tmp_path / "dir.npy").mkdir()
    cases = {
        "junk.png": "cannot read",
        "truncated.npy": "cannot read",
        "objects.npy": "cannot read",
        "rgb.png": "one-channel",
        "missing.npy": "no such",
        "dir.npy": "folder",
        "a.jpg": "must be",
    }
    (tmp_path / "a.jpg").write_bytes(b"")
    for name, message in cases.items():
        with pytest.raises(ImageError, match=message) as e:
            read_prompt_depth(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value), name
    with pytest.raises(ImageError, match="positive"):
        read_prompt_depth(tmp_path / "junk.png", scale=0)


def test_check_prompt_depth_keeps_good_maps():
    metres = lidar()
    assert np.array_equal(check_prompt_depth(metres[..., None]), metres)

"""The command line on a CHMv2 checkpoint: canopy heights in metres at the photo's size, equal to
dpt_mlx's pipeline (itself at parity with transformers' in tests/processing), said to be heights, and no
camera-based 3D output."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import photo
from model_configs import chmv2_config, chmv2_reference
from PIL import Image

import dpt_mlx
from dpt_mlx.cli.predict import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("chmv2_cli")
    chmv2_reference(chmv2_config()).save_pretrained(root)
    return root


def test_heights_as_npy_and_png_and_no_point_cloud(checkpoint, tmp_path, capsys):
    path = tmp_path / "aerial.png"
    Image.fromarray(photo(45, 61, seed=2)).save(path)
    code = main([str(a) for a in ("--model", checkpoint, "--image", path, "-f", "npy,png16", "-d", tmp_path / "o")])
    out, err = capsys.readouterr()
    assert code == 0, err
    heights = np.load(tmp_path / "o" / "aerial_depth.npy")
    want = dpt_mlx.pipeline("depth-estimation", model=str(checkpoint))(Image.open(path))["predicted_depth"]
    assert heights.shape == (45, 61) and np.array_equal(heights, want)
    assert "canopy height in metres" in out
    assert "canopy height in metres" in Image.open(tmp_path / "o" / "aerial_depth16.png").text["description"]
    for kind in ("ply", "glb"):
        code = main([str(a) for a in ("--model", checkpoint, "--image", path, "-f", kind, "-d", tmp_path / kind)])
        err = capsys.readouterr().err
        assert code == 2 and "canopy heights" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / kind).exists() or not any((tmp_path / kind).iterdir())

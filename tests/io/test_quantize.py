"""8-bit and 4-bit quantised models: which layers, how much smaller, how close, and the checkpoint format.

Error bounds are measured on these tests' tiny checkpoints (max|quantised - f32| / max|f32|) and
set with a stated margin; the measured value is in each comment. Real-model figures: README.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers import rel_err
from mlx.utils import tree_flatten
from model_configs import build_precision_checkpoint as build
from model_configs import model_output as output

import dpt_mlx
from dpt_mlx.cpu.layers import QuantizedLinear
from dpt_mlx.errors import CheckpointError
from dpt_mlx.io.quantize import Quantization, quantizable, quantize_model
from dpt_mlx.models import load_model as load_pretrained

ROOT = Path(__file__).resolve().parents[2]


def nbytes(tree) -> int:
    return sum(v.nbytes for _, v in tree_flatten(tree))


def linear_paths(model, cls) -> set[str]:
    """Modules of class ``cls`` or of the CPU layer standing in for it (same arrays, a subclass)."""
    return {name for name, m in model.named_modules() if type(m) is cls or type(m).__bases__ == (cls,)}


@pytest.mark.parametrize("kind", ["dpt", "depth-anything"])
def test_only_the_transformer_linears_are_quantized(tmp_path, kind):
    path, _ = build(tmp_path, kind)
    model = load_pretrained(path)
    before = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    encoder = {name for name in before if ".encoder." in f".{name}"}
    quantize_model(model, bits=8, group_size=64)
    assert linear_paths(model, QuantizedLinear) == encoder
    # everything else keeps its float layers: readout projections, neck, heads
    assert linear_paths(model, nn.Linear) == before - encoder
    assert model.quantization == Quantization(8, 64)
    assert not any(
        isinstance(m, nn.QuantizedLinear) and type(m) is not QuantizedLinear for _, m in model.named_modules()
    )


def test_predicate():
    lin = nn.Linear(64, 8)
    assert quantizable("dpt.encoder.layer.0.attention.attention.query", lin, 64)
    assert quantizable("encoder.layer.3.output.dense", lin, 32)
    assert not quantizable("dpt.encoder.layer.0.output.dense", nn.Linear(48, 8), 64)  # 48 % 64
    assert not quantizable("neck.reassemble_stage.readout_projects.0.dense", lin, 64)
    assert not quantizable(
        "backbone.encoder.layers.0.blocks.0.attention.self.continuous_position_bias_mlp.fc2", lin, 64
    )
    assert not quantizable("dpt.encoder.layer.0.norm", nn.LayerNorm(64), 64)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_weights_are_smaller(tmp_path, bits):
    path, _ = build(tmp_path, "dpt")
    model = load_pretrained(path)
    linears = {name: m for name, m in model.named_modules() if ".encoder." in f".{name}" and isinstance(m, nn.Linear)}
    float_bytes = sum(m.weight.nbytes for m in linears.values())
    total_before = nbytes(model.parameters())
    quantize_model(model, bits=bits, group_size=32)
    q = dict(model.named_modules())
    packed = sum(q[name].weight.nbytes + q[name].scales.nbytes + q[name].biases.nbytes for name in linears)
    # bits per weight + a float32 scale and offset per 32 weights: 8 -> 10/32, 4 -> 6/32 of float32
    assert packed == float_bytes * (bits + 2) // 32
    assert nbytes(model.parameters()) == total_before - float_bytes + packed
    assert all(q[name].bias.dtype == mx.float32 for name in linears)  # biases stay float


# max|q - f32| / max|f32| measured on the tiny checkpoints (seed 0), group size 32 / 64:
#   8-bit: dpt 1.2e-2 / 9.3e-3, depth-anything 4.1e-3 / 3.9e-3
#   4-bit: dpt 0.15 / 0.13,     depth-anything 0.11 / 0.063
# Bounds: ~3x the largest per bit width.
BOUND = {8: 0.04, 4: 0.45}


@pytest.mark.parity
@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("kind", ["dpt", "depth-anything"])
def test_quantized_error_is_bounded(tmp_path, kind, bits, group_size):
    path, x = build(tmp_path, kind)
    ref = np.array(output(load_pretrained(path), x))
    model = quantize_model(load_pretrained(path), bits=bits, group_size=group_size)
    assert rel_err(np.array(output(model, x)), ref) <= BOUND[bits]


def test_cpu_path_matches_mlx_quantized_matmul():
    layer = QuantizedLinear(128, 48, bias=True, group_size=64, bits=4)
    layer.bias = mx.random.normal((48,))
    x = mx.random.normal((5, 7, 128))
    want = nn.QuantizedLinear.__call__(layer, x)  # mx.quantized_matmul
    assert float(mx.abs(layer(x) - want).max() / mx.abs(want).max()) < 1e-5  # measured 2e-7
    assert layer(x.astype(mx.bfloat16)).dtype == mx.bfloat16


@pytest.mark.parity
def test_save_and_load_round_trip(tmp_path):
    path, x = build(tmp_path, "depth-anything")
    model = quantize_model(load_pretrained(path), bits=4, group_size=32)
    expected = np.array(output(model, x))
    model.save_pretrained(tmp_path / "q4")
    config = json.loads((tmp_path / "q4" / "config.json").read_text())
    assert config["quantization"] == {"bits": 4, "group_size": 32}
    again = dpt_mlx.load_model(tmp_path / "q4")
    assert again.quantization == Quantization(4, 32)
    assert linear_paths(again, QuantizedLinear) == linear_paths(model, QuantizedLinear)
    assert np.array_equal(np.array(output(again, x)), expected)
    # and in half precision: scales and offsets become float16 too, the packed weights stay uint32
    half = load_pretrained(tmp_path / "q4", dtype="float16")
    kinds = {v.dtype for k, v in tree_flatten(half.parameters()) if k.endswith(".weight") and v.dtype == mx.uint32}
    assert kinds == {mx.uint32}
    assert rel_err(np.array(output(half, x).astype(mx.float32)), expected) < 1e-2  # measured 2.2e-3


def test_quantizing_twice_or_nothing_is_an_error(tmp_path):
    path, _ = build(tmp_path, "dpt")
    model = quantize_model(load_pretrained(path), bits=8)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, bits=8)
    with pytest.raises(ValueError, match="bits=3"):
        quantize_model(load_pretrained(path), bits=3)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = [nn.Linear(48, 8)]  # 48 is no multiple of 64

    with pytest.raises(ValueError, match="group_size=64"):
        quantize_model(Tiny(), bits=8, group_size=64)


def test_bad_quantization_entry_is_a_one_line_error(tmp_path):
    path, _ = build(tmp_path, "dpt")
    quantize_model(load_pretrained(path), bits=8).save_pretrained(tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    config["quantization"] = {"bits": 3, "group_size": 64}
    (tmp_path / "q" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="bits=3") as err:
        load_pretrained(tmp_path / "q")
    assert "\n" not in str(err.value)
    # a transformers-format checkpoint cannot carry quantized weights
    config = json.loads((path / "config.json").read_text())
    config["quantization"] = {"bits": 8, "group_size": 64}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="MLX format"):
        load_pretrained(path)


def test_converter_writes_a_verified_quantized_checkpoint(tmp_path):
    path, x = build(tmp_path, "dpt")
    out = tmp_path / "q8"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "convert.py"),
            "--hf-path",
            str(path),
            "--mlx-path",
            str(out),
            "--quantize",
            "--q-bits",
            "8",
            "--q-group-size",
            "32",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout and "8-bit" in r.stdout
    model = dpt_mlx.load_model(out)
    assert model.quantization == Quantization(8, 32)
    expected = quantize_model(load_pretrained(path), bits=8, group_size=32)
    assert np.array_equal(np.array(output(model, x)), np.array(output(expected, x)))
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "convert.py"),
            "--hf-path",
            str(path),
            "--mlx-path",
            str(tmp_path / "bad"),
            "--quantize",
            "--q-bits",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "--q-bits" in r.stderr and not (tmp_path / "bad").exists()

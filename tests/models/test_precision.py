"""float16 / bfloat16 models: they load, run in that dtype, and stay within measured error bounds.

The bounds are measured on these tests' own tiny checkpoints (perturbed random weights) against
our float32 output, max|half - f32| / max|f32|, and set with a stated margin (the measured value is
in each comment). On real checkpoints see README (python -m benchmarks.compare).
"""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers import rel_err
from mlx.utils import tree_flatten
from model_configs import PRECISION_KINDS as KINDS
from model_configs import build_precision_checkpoint as build
from model_configs import model_output as output

import dpt_mlx
from dpt_mlx import cpu, layers
from dpt_mlx.cpu import layers as cpu_layers
from dpt_mlx.models import load_model as load_pretrained

pytestmark = pytest.mark.parity  # on both paths: the half-precision layers differ between them


# max|half - f32| / max|f32| measured on these checkpoints (seed 0), float16 / bfloat16:
#   dpt 2.9e-3 / 1.8e-2, dpt-segmentation-bn 1.5e-3 / 1.4e-2, depth-anything 2.5e-3 / 1.9e-2.
# Bounds: 3x the largest of the three per dtype (bfloat16 keeps 8 mantissa bits, float16 11).
BOUND = {"float16": 9e-3, "bfloat16": 6e-2}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_half_precision_loads_runs_and_stays_close(tmp_path, kind, dtype):
    path, x = build(tmp_path, kind)
    ref = np.array(output(load_pretrained(path), x))
    model = load_pretrained(path, dtype=dtype)
    assert model.dtype == getattr(mx, dtype)
    out = output(model, x)
    assert out.dtype == getattr(mx, dtype)
    assert rel_err(np.array(out.astype(mx.float32)), ref) <= BOUND[dtype]


def test_half_cast_keeps_batch_norm_statistics_in_float32(tmp_path):
    path, _ = build(tmp_path, "dpt-segmentation-bn")
    model = load_pretrained(path, dtype="float16")
    params = dict(tree_flatten(model.parameters()))
    stats = {k: v for k, v in params.items() if k.endswith((".running_mean", ".running_var"))}
    assert stats and all(v.dtype == mx.float32 for v in stats.values())
    assert all(v.dtype == mx.float16 for k, v in params.items() if k not in stats)
    modules = [m for _, m in model.named_modules()]
    norms = [m for m in modules if isinstance(m, nn.BatchNorm)]
    assert norms and all(isinstance(m, layers.BatchNorm) for m in norms)  # float32 statistics, on every path
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    if cpu.enabled() and cpu.on_cpu():  # the CPU layer multiplies half weights in float32
        assert linears and all(type(m) is cpu_layers.Linear for m in linears)
    else:
        assert linears and all(type(m) is nn.Linear for m in linears)


def test_half_checkpoint_round_trip(tmp_path):
    path, x = build(tmp_path, "dpt")
    model = load_pretrained(path, dtype="bfloat16")
    model.save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    again = dpt_mlx.load_model(tmp_path / "bf16")
    assert again.dtype == mx.bfloat16
    assert np.array_equal(np.array(output(again, x).astype(mx.float32)), np.array(output(model, x).astype(mx.float32)))


def test_half_precision_large_activations_stay_finite(tmp_path):
    """Scores far beyond float16's range of exp: softmax is computed in float32."""
    path, x = build(tmp_path, "dpt")
    model = load_pretrained(path, dtype="float16")
    out = output(model, x * 50)  # embeddings ~50x larger, attention logits ~2500x
    assert np.all(np.isfinite(np.array(out.astype(mx.float32))))

"""A random checkpoint with the real Intel/dpt-large shape (hidden 1024, 24 layers) at 384x384."""

import mlx.core as mx
import pytest
import torch
import transformers
from helpers import TOL, keep_depth_positive, perturb, pixels, rel_err

import dpt_mlx
from dpt_mlx import cpu
from dpt_mlx.configs.dpt import DPTConfig
from dpt_mlx.io import weights as W
from dpt_mlx.io.checkpoint import load_strict

pytestmark = [pytest.mark.parity, pytest.mark.slow]

DPT_LARGE = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    image_size=384,
    patch_size=16,
    backbone_out_indices=[5, 11, 17, 23],
    readout_type="project",
    reassemble_factors=[4, 2, 1, 0.5],
    neck_hidden_sizes=[256, 512, 1024, 1024],
    fusion_hidden_size=256,
    qkv_bias=True,
    layer_norm_eps=1e-12,
    hidden_act="gelu",
)


def test_dpt_large_shape_384():
    torch.manual_seed(0)
    ref = perturb(transformers.DPTForDepthEstimation(transformers.DPTConfig(**DPT_LARGE)), scale=0.02)
    keep_depth_positive(ref)
    state = {k: mx.array(v.numpy()) for k, v in ref.state_dict().items()}
    ours = dpt_mlx.DPTForDepthEstimation(DPTConfig(**DPT_LARGE))
    load_strict(ours, W.sanitize(ours, state, "depth"))
    ours.eval()
    cpu.accelerate(ours)  # what the loader does: the CPU kernels (MLX's own BLAS is the reference one on Linux)
    del state
    x = pixels(1, 384, 384)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).predicted_depth
    got = ours(x).predicted_depth
    assert got.shape == (1, 384, 384)
    assert rel_err(got, expected) <= TOL

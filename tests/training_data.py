"""Tiny dpt_mlx checkpoints and depth datasets with a known answer, for the training tests."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
from PIL import Image

import dpt_mlx
from dpt_mlx.configs.dpt import DPTConfig
from dpt_mlx.processing.image_processor import DPTImageProcessor

SIZE = 32


def tiny_mlx_config(**overrides) -> DPTConfig:
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        image_size=SIZE,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 24, 32],
        fusion_hidden_size=16,
        id2label={0: "r", 1: "g", 2: "b"},
        use_batch_norm_in_fusion_residual=True,
    )
    kwargs.update(overrides)
    return DPTConfig.from_dict(kwargs)


def save_model(path: Path, cls, seed=0, processor=None, **overrides) -> Path:
    mx.random.seed(seed)
    model = cls(tiny_mlx_config(**overrides))
    if isinstance(model, dpt_mlx.DPTForDepthEstimation):
        # like a pretrained head, predict positive depth: a random one can start with its final ReLU closed
        model.head.conv3.bias = mx.ones_like(model.head.conv3.bias)
    mx.eval(model.parameters())
    model.save_pretrained(path)
    (processor or DPTImageProcessor(size={"height": SIZE, "width": SIZE})).save_pretrained(path)
    return path


def make_depth_data(root: Path, n: int, seed=0, size=(SIZE, SIZE)) -> Path:
    """Tilted planes: the colour encodes the disparity, so depth is a known function of the image.
    Depth is written in millimetres as 16-bit PNGs, 5% of the pixels missing (0)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = yy / (h - 1), xx / (w - 1)
    for i in range(n):
        a, b = rng.uniform(-1, 1, 2)
        disparity = 0.6 + 0.35 * (a * (xx - 0.5) + b * (yy - 0.5))
        image = np.stack([disparity * 230, disparity * 200, 255 - disparity * 200], -1)
        image = image + rng.normal(0, 5, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        depth_mm = (1000.0 / disparity).astype(np.uint16)
        depth_mm[rng.random(depth_mm.shape) < 0.05] = 0
        Image.fromarray(depth_mm).save(root / "depth" / f"{i:03d}.png")
    return root

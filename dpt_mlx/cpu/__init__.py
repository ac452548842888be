"""Everything that exists only to make MLX's CPU backend fast, applied to a loaded model by one call.

The models are plain MLX and run as they are on Metal, CUDA and the CPU. :func:`accelerate`,
which the checkpoint loader calls on every model it loads, does three things when MLX computes
on the CPU, and nothing elsewhere:

1. on Linux, points MLX's matrix products at an optimized BLAS (:mod:`dpt_mlx.cpu.blas`; the
   ``mlx[cpu]`` wheel links a reference BLAS), once per process; ``DPT_MLX_BLAS=off`` keeps
   MLX's own;
2. swaps layers for CPU layers with the same arrays (:mod:`dpt_mlx.cpu.layers`: GELU,
   attention, stride-1 and patch-transposed convolutions, half-precision and quantised linear
   layers), so parameter paths, checkpoints and gradients are unchanged;
3. bounds MLX's CPU buffer cache to what one more forward pass needs (:mod:`dpt_mlx.cpu.cache`:
   MLX's 32 MiB for the first pass, then half the largest working set of a pass), so later passes
   reuse most of their buffers instead of page-faulting fresh memory in, and little more is kept.

``DPT_MLX_FAST_KERNELS=0`` switches 2 and 3 off: the model then runs exactly the code that Metal
and CUDA users run. ``import dpt_mlx`` changes nothing in MLX.
"""

from __future__ import annotations

import os

import mlx.nn as nn
from mlx.utils import tree_map

from . import cache
from .blas import blas_info
from .layers import FAST_LAYERS, fast_layer, on_cpu

__all__ = ["FAST_LAYERS", "PASS_PIXELS", "accelerate", "blas_info", "enabled", "images_per_pass", "is_accelerated",
           "on_cpu"]

FAST_KERNELS_ENV_VAR = "DPT_MLX_FAST_KERNELS"
PASS_PIXELS = 518 * 518  # on the CPU a forward pass takes this many input pixels, or one image


def enabled() -> bool:
    """Whether the CPU layers and cache policy apply (``DPT_MLX_FAST_KERNELS`` is not 0/false/off/no)."""
    return os.environ.get(FAST_KERNELS_ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


def images_per_pass(batch: int, height: int, width: int) -> int:
    """How many of ``batch`` images of ``height`` x ``width`` one forward pass should take.

    With the CPU layer on, as many as fit in :data:`PASS_PIXELS` (at least one): MLX's CPU backend
    gets no more images per second from larger batches (their matrices are already large enough
    for BLAS), and a pass's memory grows with its batch. Elsewhere (Metal, CUDA, or
    ``DPT_MLX_FAST_KERNELS=0``), the whole batch.
    """
    if not (on_cpu() and enabled()):
        return batch
    return max(1, min(batch, PASS_PIXELS // max(height * width, 1)))


def is_accelerated(model: nn.Module) -> bool:
    """Whether any CPU layer stands in ``model``."""
    return any(isinstance(m, FAST_LAYERS) for _, m in model.named_modules())


def accelerate(model: nn.Module) -> nn.Module:
    """Give ``model`` (in place) the CPU backend's BLAS, layers and cache policy; returns it.

    Does nothing unless MLX's default device is the CPU. Safe to call again, after casting to
    half precision or quantising, to swap in the layers those need.
    """
    if not on_cpu():
        return model
    from . import blas

    blas.setup()
    if not enabled():
        return model
    model.update_modules(tree_map(fast_layer, model.leaf_modules(), is_leaf=nn.Module.is_module))
    cache.watch(model)
    return model

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
3. lets MLX's CPU allocator keep a buffer cache of a quarter of its memory limit instead of
   32 MiB, so large activations reuse memory instead of being page-faulted in anew.

``DPT_MLX_FAST_KERNELS=0`` switches 2 and 3 off: the model then runs exactly the code that Metal
and CUDA users run. ``import dpt_mlx`` changes nothing in MLX.
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from .blas import blas_info
from .layers import FAST_LAYERS, fast_layer, on_cpu

__all__ = ["FAST_LAYERS", "accelerate", "blas_info", "cpu_cache_limit", "enabled", "is_accelerated", "on_cpu",
           "raise_cpu_cache_limit"]

FAST_KERNELS_ENV_VAR = "DPT_MLX_FAST_KERNELS"
_MLX_CPU_CACHE_DEFAULT = 32 << 20  # mlx's CPU allocator keeps at most this much freed memory


def enabled() -> bool:
    """Whether the CPU layers and cache policy apply (``DPT_MLX_FAST_KERNELS`` is not 0/false/off/no)."""
    return os.environ.get(FAST_KERNELS_ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


def cpu_cache_limit() -> int:
    """A quarter of MLX's memory limit (which is 80% of RAM): 4.7 GiB on a 23 GiB machine."""
    return max(mx.get_memory_limit() // 4, 1 << 30)


def raise_cpu_cache_limit(limit: int | None = None) -> None:
    """Let MLX's CPU allocator keep up to ``limit`` bytes (default :func:`cpu_cache_limit`) of freed
    buffers, as its Metal allocator does by default. A limit set by the user (anything but MLX's
    default) is left alone; ``mx.clear_cache()`` returns the memory."""
    previous = mx.set_cache_limit(cpu_cache_limit() if limit is None else limit)
    if previous != _MLX_CPU_CACHE_DEFAULT:
        mx.set_cache_limit(previous)


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
    raise_cpu_cache_limit()
    return model

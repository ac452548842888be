"""Everything that exists only to make MLX's CPU backend fast, applied to a loaded model by one call.

The models are plain MLX and run as they are on Metal, CUDA and the CPU. On the CPU,
:func:`accelerate` (which the checkpoint loader calls on every model it loads) swaps layers for
CPU layers with the same arrays (:mod:`dpt_mlx.cpu.layers`, :mod:`dpt_mlx.cpu.blocks`), which
compute through compiled MLX primitives (:mod:`dpt_mlx.cpu.native`, built from ``csrc/``): fused
attention, linear layers and convolutions with their bias, activation and residual in the
product's epilogue, threaded LayerNorm, activations and resizes, all on one thread pool with a
single-threaded BLAS inside it (Intel's oneMKL linked in on x86-64 Intel CPUs, else OpenBLAS).
Parameter paths, checkpoints and gradients are unchanged, and no op of MLX is modified: other code
in the process gets MLX's ops exactly as they were installed. The one process-wide setting
it changes is the size of MLX's CPU buffer cache (:func:`cache_limit`, once, unless the user set
their own).

``DPT_MLX_FAST_KERNELS=0`` switches the swap off, and where the kernels are unavailable (macOS,
no compiler at install, another MLX version) the models run MLX's own ops; :func:`cpu_info` says
which path runs and why.
"""

from __future__ import annotations

import os
import sys
import warnings

import mlx.core as mx
import mlx.nn as nn

from . import native
from .memory import before_pass, max_cache_limit

__all__ = [
    "PASS_PIXELS",
    "accelerate",
    "before_pass",
    "blas_info",
    "cpu_info",
    "enabled",
    "images_per_pass",
    "is_accelerated",
    "max_cache_limit",
    "on_cpu",
    "set_threads",
]

FAST_KERNELS_ENV_VAR = "DPT_MLX_FAST_KERNELS"
PASS_PIXELS = 518 * 518  # on the CPU a forward pass takes this many input pixels, or one image
# the module each model runs once a pass, after its encoder (DPT's neck, Depth Pro's fusion stage): it sizes
# MLX's buffer cache first (see :func:`dpt_mlx.cpu.memory.before_pass`)
PASS_MODULES = ("neck", "fusion_stage")
_noted: set[str] = set()


def on_cpu() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


def enabled() -> bool:
    """Whether the CPU layers apply (``DPT_MLX_FAST_KERNELS`` is not 0/false/off/no)."""
    return os.environ.get(FAST_KERNELS_ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


def set_threads(n: int | None = None) -> int:
    """Threads of the CPU kernels (default: ``DPT_MLX_THREADS`` or every CPU this process may use)."""
    return native.set_threads(n)


def images_per_pass(batch: int, height: int, width: int) -> int:
    """How many of ``batch`` images of ``height`` x ``width`` one forward pass should take.

    With the CPU layers on, as many as fit in :data:`PASS_PIXELS` (at least one): the CPU gets no
    more images per second from larger batches (their matrices are already large enough for the
    BLAS), and a pass's memory grows with its batch. Elsewhere, the whole batch.
    """
    if not (on_cpu() and enabled() and native.kernels() is not None):
        return batch
    return max(1, min(batch, PASS_PIXELS // max(height * width, 1)))


def cpu_info() -> dict:
    """Which path the models take on the CPU, and why.

    Keys: ``kernels`` (True when the compiled kernels are used), ``enabled`` (the
    ``DPT_MLX_FAST_KERNELS`` setting), ``threads``, ``blas`` (the library the kernels call, as it
    describes itself), ``built_with_mlx``, ``mlx``, and ``note``: one line saying why the portable
    path runs, or None.
    """
    module = native.kernels() if sys.platform.startswith("linux") else None
    note = (
        native.unavailable()
        if sys.platform.startswith("linux")
        else (f"no CPU kernels on {sys.platform}: MLX's own ops run (Metal on macOS)")
    )
    if not enabled():  # the user's choice, whatever else would keep the kernels from running
        note = f"{FAST_KERNELS_ENV_VAR}=0: MLX's own ops run"
    return {
        "kernels": module is not None and enabled(),
        "enabled": enabled(),
        "threads": module.threads() if module is not None else None,
        "blas": module.blas_config() if module is not None else None,
        "built_with_mlx": module.built_with_mlx if module is not None else None,
        "mlx": mx.__version__,
        "note": note,
    }


def blas_info() -> dict:
    """The BLAS of the CPU path: :func:`cpu_info` with ``provider`` (``mkl-static`` or
    ``scipy-openblas32``, whichever the kernels call, else None: MLX's own matmul, the reference
    BLAS of the ``mlx[cpu]`` wheel) and ``notes`` (a list, empty when the kernels run)."""
    info = cpu_info()
    blas = info["blas"] or ""
    info["provider"] = "mkl-static" if "oneMKL" in blas else "scipy-openblas32" if blas else None
    info["notes"] = [info["note"]] if info["note"] else []
    return info


def is_accelerated(model: nn.Module) -> bool:
    """Whether any CPU layer stands in ``model``."""
    from .blocks import FAST_LAYERS

    return any(isinstance(m, FAST_LAYERS) for _, m in model.named_modules())


def _swap(value):
    """``value`` with every module in it (itself included) replaced by its CPU layer, in place
    where the structure is a list or dict."""
    from .blocks import fast_layer

    if isinstance(value, nn.Module):
        value = fast_layer(value)
        for key, child in list(value.items()):
            if isinstance(child, (nn.Module, list, dict)):
                swapped = _swap(child)
                if swapped is not child:
                    value[key] = swapped
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = _swap(item)
    elif isinstance(value, dict):
        for key in list(value):
            value[key] = _swap(value[key])
    return value


def _note(why: str) -> None:
    """Say ``why`` on stderr in one line, as a RuntimeWarning that a filter can silence (``-q``)."""
    with warnings.catch_warnings(record=True) as caught:  # the current filters still apply
        warnings.warn(f"dpt_mlx: {why}", RuntimeWarning, stacklevel=3)
    for warning in caught:
        print(warning.message, file=sys.stderr)


def accelerate(model: nn.Module) -> nn.Module:
    """Give ``model`` (in place) the CPU layers; returns it.

    Does nothing unless MLX's default device is the CPU, the layers are enabled and the kernels
    are available (the first time they are not, a one-line note says why on stderr). Safe to
    call again, after casting to half precision or quantising, to swap in the layers those need.
    """
    if not (on_cpu() and enabled()):
        return model
    if native.kernels() is None:
        why = native.unavailable()
        if why not in _noted:
            _noted.add(why)
            _note(why)
        return model
    for key, child in list(model.items()):
        if isinstance(child, (nn.Module, list, dict)):
            swapped = _swap(child)
            if swapped is not child:
                model[key] = swapped
    from .blocks import with_cache_policy

    for name in PASS_MODULES:
        if isinstance(model.get(name), nn.Module):
            model[name] = with_cache_policy(model[name])
            mx.reset_peak_memory()
            break
    return model

"""Small array helpers shared by the models and the processors.

Resizing follows ``torch.nn.functional.interpolate`` exactly (no antialiasing): the
sampling positions and the cubic kernel (A = -0.75) are PyTorch's, so results agree
with the reference for any output size, not only integer scale factors. A resize is
separable, so it is done as two small matrix products with precomputed weights.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import numpy as np

_CUBIC_A = -0.75


def _source_coords(
    in_size: int, out_size: int, align_corners: bool, dtype=np.float64, step: float | None = None
) -> np.ndarray:
    """Where each output pixel samples the input, in ``dtype``. In float32 the scale is divided in
    float32 and ``(i + 0.5) * scale - 0.5`` rounded once, as PyTorch's CPU kernels compute it for a
    float32 tensor (a fused multiply-add)."""
    dst = np.arange(out_size, dtype=np.float64)
    if align_corners:
        scale = dtype(in_size - 1) / dtype(out_size - 1) if out_size > 1 else dtype(0.0)
        return (dst * np.float64(scale)).astype(dtype)
    scale = dtype(in_size) / dtype(out_size) if step is None else dtype(step)
    return ((dst + 0.5) * np.float64(scale) - 0.5).astype(dtype)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the four taps at offsets -1, 0, 1, 2 for fractional position ``t``."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@lru_cache(maxsize=256)
def interpolation_matrix(
    in_size: int,
    out_size: int,
    mode: str,
    align_corners: bool,
    float32_positions: bool = False,
    step: float | None = None,
) -> np.ndarray:
    """The (out_size, in_size) float32 matrix that resamples one axis like PyTorch.

    ``float32_positions``: compute the sampling positions in float32, as PyTorch's CPU kernels
    do for a float32 tensor (else in float64, closer to the exact positions). ``step``: input
    pixels per output pixel, where PyTorch is given a ``scale_factor`` (it then samples
    ``1 / scale_factor`` apart, not ``in_size / out_size``); not with ``align_corners``.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resize an axis of size {in_size} to {out_size}")
    if step is not None and align_corners:
        raise ValueError("a sampling step applies only with align_corners=False")
    src = _source_coords(in_size, out_size, align_corners, np.float32 if float32_positions else np.float64, step)
    rows = np.arange(out_size)
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    if mode == "bilinear":
        if not align_corners:
            src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(np.int64)
        i0 = np.minimum(i0, in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        lam = src - i0.astype(src.dtype)  # in the positions' precision, as PyTorch
        np.add.at(weights, (rows, i0), 1 - lam)
        np.add.at(weights, (rows, i1), lam)
    elif mode == "bicubic":
        i0 = np.floor(src).astype(np.int64)
        taps = _cubic_weights(src - i0.astype(src.dtype))
        for k, offset in enumerate((-1, 0, 1, 2)):
            idx = np.clip(i0 + offset, 0, in_size - 1)
            np.add.at(weights, (rows, idx), taps[:, k])
    else:
        raise ValueError(f"unknown interpolation mode {mode!r}; use 'bilinear' or 'bicubic'")
    return weights.astype(np.float32)


def interpolate(
    x: mx.array,
    size: tuple[int, int],
    mode: str = "bilinear",
    align_corners: bool = False,
    step: tuple[float, float] | None = None,
) -> mx.array:
    """Resize an NHWC array to ``size`` = (height, width) like ``F.interpolate`` on NCHW; ``step`` =
    (1 / scale_h, 1 / scale_w) where ``F.interpolate`` is given a ``scale_factor`` instead of a size
    (see :func:`interpolation_matrix`)."""
    b, h, w, c = x.shape
    out_h, out_w = int(size[0]), int(size[1])
    step_h, step_w = (None, None) if step is None else (float(step[0]), float(step[1]))
    dtype = x.dtype
    if dtype in (mx.float16, mx.bfloat16):
        x = x.astype(mx.float32)  # resampled in float32, as PyTorch accumulates half-precision resizes
    # Plain matmuls, no einsum: ~25% faster on the CPU (no transposed copies).
    if out_h != h or step_h not in (None, 1.0):
        wh = mx.array(interpolation_matrix(h, out_h, mode, align_corners, step=step_h), dtype=x.dtype)
        x = (wh @ x.reshape(b, h, w * c)).reshape(b, out_h, w, c)  # (oh, h) @ (B, h, w*c)
    if out_w != w or step_w not in (None, 1.0):
        ww = mx.array(interpolation_matrix(w, out_w, mode, align_corners, step=step_w), dtype=x.dtype)
        x = ww @ x  # (ow, w) @ (B, oh, w, c), broadcast over B and oh
    return x.astype(dtype)


def interpolate_np(
    x: np.ndarray,
    size: tuple[int, int],
    mode: str = "bilinear",
    align_corners: bool = False,
    float32_positions: bool = False,
) -> np.ndarray:
    """NumPy twin of :func:`interpolate` for arrays laid out as (..., H, W) (channels-first);
    ``float32_positions`` as :func:`interpolation_matrix`."""
    h, w = x.shape[-2:]
    wh = interpolation_matrix(h, int(size[0]), mode, align_corners, float32_positions)
    ww = interpolation_matrix(w, int(size[1]), mode, align_corners, float32_positions)
    x = np.asarray(x, dtype=np.float32)
    return np.matmul(np.matmul(wh, x), ww.T)


def upsample2x(x: mx.array, align_corners: bool = True) -> mx.array:
    """``interpolate(scale_factor=2, mode="bilinear")`` on an NHWC array."""
    _, h, w, _ = x.shape
    return interpolate(x, (2 * h, 2 * w), "bilinear", align_corners)


def to_nhwc(x: mx.array) -> mx.array:
    """(B, C, H, W) -> (B, H, W, C)."""
    return x.transpose(0, 2, 3, 1)


def to_nchw(x: mx.array) -> mx.array:
    """(B, H, W, C) -> (B, C, H, W)."""
    return x.transpose(0, 3, 1, 2)

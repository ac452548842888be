"""Model outputs -> per-image NumPy maps at the sizes asked for, as transformers' DPT processor.

Depth maps are resized bicubically, segmentation logits bilinearly (both align_corners=False,
with PyTorch's kernels); :func:`segment` resizes and arg-maxes logits in bands of rows, so the
full-size (C, H, W) scores are never held at once. ``DPTImageProcessor``'s post-processing
methods wrap these functions.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from ..ops import interpolate_np, interpolation_matrix
from .transforms import as_numpy

# Segmentation logits are resized to the target size before the argmax in bands of output rows
# holding at most this many bytes of resized logits.
_BAND_BYTES = 64 * 2**20


def _output_field(outputs: Any, name: str) -> Any:
    value = outputs.get(name) if isinstance(outputs, Mapping) else getattr(outputs, name, None)
    if value is None:
        raise ValueError(f"outputs has no {name!r}; pass the model's output object")
    return value


def _float_numpy(x: Any, name: str) -> np.ndarray:
    """``outputs.<name>`` as float32 NumPy; NaN or inf in it is a ValueError (it would pass for a map)."""
    array = as_numpy(x)
    if not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=array.dtype != np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
        where = f" (in {int(bad.reshape(len(bad), -1).any(axis=1).sum())} of {len(bad)} images)" if bad.ndim else ""
        raise ValueError(f"{name} contains NaN or inf{where}; no map can be made from it")
    return array


def _is_side(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) and value >= 1


def check_target_sizes(target_sizes: Any, batch: int, what: str, kind: str = "target") -> list[tuple[int, int] | None]:
    """One (height, width) or ``None`` per item of a batch of ``batch`` ``what``; ``None`` -> all ``None``.
    ``kind`` names the sizes in errors (``"source"`` for ``source_sizes``)."""
    if target_sizes is None:
        return [None] * batch
    if isinstance(target_sizes, (np.ndarray, mx.array)) or hasattr(target_sizes, "__array__"):
        target_sizes = as_numpy(target_sizes).tolist()
    if not isinstance(target_sizes, Sequence) or isinstance(target_sizes, str):
        raise ValueError(f"{kind}_sizes must be a list of (height, width) pairs, got {type(target_sizes).__name__}")
    target_sizes = list(target_sizes)
    if len(target_sizes) != batch:
        hint = " in a list, [(height, width)]" if len(target_sizes) == 2 and all(map(_is_side, target_sizes)) else ""
        raise ValueError(
            f"got {len(target_sizes)} {kind} sizes for a batch of {batch} {what}; pass one (height, width) per "
            f"image{hint}"
        )
    sizes: list[tuple[int, int] | None] = []
    for size in target_sizes:
        if size is None:
            sizes.append(None)
            continue
        if hasattr(size, "__array__"):  # a NumPy, MLX or torch array
            size = as_numpy(size).tolist()
        if not (isinstance(size, Sequence) and len(size) == 2 and all(_is_side(side) for side in size)):
            raise ValueError(f"{kind} size {size!r} is invalid; use (height, width) with positive integers")
        sizes.append((int(size[0]), int(size[1])))
    return sizes


def predicted_depth(outputs: Any, name: str = "outputs") -> np.ndarray:
    """``outputs.predicted_depth`` ((B, H, W) or (B, 1, H, W), mx or NumPy) as a (B, H, W) float32
    array; ``name`` says which outputs in errors."""
    depth = _float_numpy(_output_field(outputs, "predicted_depth"), f"{name}.predicted_depth")
    if depth.ndim == 4 and depth.shape[1] == 1:
        depth = depth[:, 0]
    if depth.ndim != 3:
        raise ValueError(f"{name}.predicted_depth must have shape (batch, height, width), got {depth.shape}")
    return depth


def depth_maps(outputs: Any, target_sizes: Any = None) -> list[np.ndarray]:
    """``outputs.predicted_depth`` ((B, H, W) or (B, 1, H, W), mx or NumPy) -> B float32 (h, w) maps,
    each bicubically resized to its ``target_sizes`` entry (``None`` keeps the model's size)."""
    depth = predicted_depth(outputs)
    results = []
    for one, size in zip(depth, check_target_sizes(target_sizes, len(depth), "depth maps")):
        if size is not None:
            one = interpolate_np(one, size, "bicubic", align_corners=False)
        results.append(np.array(one, dtype=np.float32))
    return results


def _logits(outputs: Any, target_sizes: Any) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """(C, h, w) float32 logits and the (height, width) to resize them to, per image."""
    logits = _float_numpy(_output_field(outputs, "logits"), "logits")
    if logits.ndim != 4:
        raise ValueError(f"logits must have shape (batch, classes, height, width), got {logits.shape}")
    sizes = check_target_sizes(target_sizes, len(logits), "logits")
    return [(scores, scores.shape[-2:] if size is None else size) for scores, size in zip(logits, sizes)]


def class_maps(outputs: Any, target_sizes: Any = None) -> list[np.ndarray]:
    """``outputs.logits`` ((B, C, h, w)) -> B (H, W) int64 class maps, through :func:`segment`."""
    return [segment(scores, size) for scores, size in _logits(outputs, target_sizes)]


def class_scores(outputs: Any, target_sizes: Any = None) -> list[np.ndarray]:
    """``outputs.logits`` ((B, C, h, w)) -> B (C, H, W) float32 logits, bilinearly resized (not probabilities)."""
    return [
        np.array(interpolate_np(scores, size, "bilinear", align_corners=False), dtype=np.float32)
        for scores, size in _logits(outputs, target_sizes)
    ]


def segment(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits -> (H, W) int64 class map: bilinear resize (align_corners=False) then argmax.

    The same maths as transformers' ``post_process_semantic_segmentation``, done as two 2-D
    matrix products per band of output rows, so the (C, H, W) resized logits are never held
    at once: fast, and bounded memory for large photos.
    """
    if np.ndim(logits) != 3:
        raise ValueError(f"logits must have shape (classes, height, width), got {np.shape(logits)}")
    ((height, width),) = check_target_sizes([size], 1, "logits")
    logits = np.asarray(logits, dtype=np.float32)
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf; no class map can be made from them")
    channels, h, w = logits.shape
    wh = interpolation_matrix(h, height, "bilinear", False).astype(np.float32)
    ww = interpolation_matrix(w, width, "bilinear", False).astype(np.float32)
    rows = np.ascontiguousarray(logits.transpose(1, 2, 0)).reshape(h, w * channels)
    out = np.empty((height, width), dtype=np.int64)
    band = max(1, _BAND_BYTES // (4 * channels * max(width, w)))
    for top in range(0, height, band):
        a = wh[top : top + band] @ rows  # (b, w*C): resized along the height
        b = a.shape[0]
        a = np.ascontiguousarray(a.reshape(b, w, channels).transpose(1, 0, 2)).reshape(w, b * channels)
        scores = (ww @ a).reshape(width, b, channels)  # resized along the width
        out[top : top + b] = scores.argmax(axis=-1).T
    return out


__all__ = ["check_target_sizes", "class_maps", "class_scores", "depth_maps", "predicted_depth", "segment"]

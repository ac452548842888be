"""TIPSv2-DPT image processor: ``Tipsv2DptImageProcessor``, in NumPy.

It reproduces transformers' ``Tipsv2DptImageProcessor`` (a torchvision processor). Per image,
channels first:

1. to RGB, as the reference's torchvision path does it (PIL images through Pillow, transparency
   composited onto white; arrays: grey repeated, RGBA blended onto white);
2. resize to ``size`` (448x448) with torchvision's antialiased bilinear resize, which is PyTorch's
   ``interpolate(mode="bilinear", align_corners=False, antialias=True)``: a triangle filter widened
   by the scale factor when downsampling, normalised weights (see
   :func:`dpt_mlx.backbones.tipsv2.antialias_matrix`). An integer image stays integer, as in the
   reference: the result is rounded to the nearest level (PyTorch's own uint8 kernel uses fixed-point
   weights, so a pixel can differ from it by one level);
3. rescale by ``rescale_factor`` (1/255) in float32; no normalisation (``do_normalize`` False: the
   model takes pixels in [0, 1]).

Post-processing follows the reference: depth maps and normals are resized bilinearly
(align_corners=False) to a target size, normals L2-normalised over the channels first (with
PyTorch's ``normalize`` floor of 1e-12 on the norm), segmentation logits resized then argmaxed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ..backbones.tipsv2 import antialias_matrix
from ..ops import interpolate_np
from .depth_pro_processor import rescale_and_normalize, to_rgb_chw
from .postprocess import _float_numpy, _output_field, check_target_sizes, predicted_depth, segment
from .processor_base import BatchFeature, ImageProcessorBase, collate
from .transforms import DEFAULTS, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, flatten_inputs, validate_options

BILINEAR = 2  # PIL.Image.BILINEAR: the only resample the reference's checkpoints use
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's floor on the norm

# The options, with the reference's defaults (``Tipsv2DptImageProcessor`` class attributes).
TIPSV2_DEFAULTS: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 448, "width": 448},
    "resample": BILINEAR,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": False,
    "image_mean": list(IMAGENET_STANDARD_MEAN),
    "image_std": list(IMAGENET_STANDARD_STD),
    "do_convert_rgb": True,
}


def validate_tipsv2_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check TIPSv2-DPT's options and return them normalised (as :func:`validate_options` does DPT's)."""
    checked = validate_options({**DEFAULTS, **options})
    out = {name: checked[name] for name in TIPSV2_DEFAULTS}
    if out["resample"] != BILINEAR:
        raise ValueError(f"resample={out['resample']!r} is not supported; TIPSv2-DPT resizes bilinearly (2)")
    return out


MAX_PRECISION = 22  # PyTorch's uint8 kernel: at most 22 fraction bits in its int16 weights


@lru_cache(maxsize=64)
def _fixed_point_weights(in_size: int, out_size: int) -> tuple[np.ndarray, int]:
    """PyTorch's uint8 weights: the float64 antialias weights scaled by 2**p and rounded to int16, p the
    most fraction bits (up to 22) for which the largest weight still fits."""
    weights = antialias_matrix(in_size, out_size, np.float64)
    largest = float(weights.max())
    bits = 0
    while bits < MAX_PRECISION and int(0.5 + largest * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    return np.floor(weights * (1 << bits) + 0.5).astype(np.int64), bits


def _fixed_point_pass(x: np.ndarray, in_size: int, out_size: int, axis: int) -> np.ndarray:
    """One axis of PyTorch's uint8 resize: integer weighted sums, rounded (half up) and clipped to 0..255."""
    weights, bits = _fixed_point_weights(in_size, out_size)
    moved = np.moveaxis(x.astype(np.int64), axis, -1)
    out = (moved @ weights.T + (1 << (bits - 1))) >> bits if bits else moved @ weights.T
    return np.moveaxis(np.clip(out, 0, 255), -1, axis).astype(np.uint8)


def antialiased_resize(chw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, h, w) like torchvision's ``resize(BILINEAR, antialias=True)`` (PyTorch's
    ``interpolate(antialias=True)``).

    Float images: the antialias weights (float32, see :func:`antialias_matrix`) applied in float32.
    uint8 images: PyTorch's uint8 kernel, which torchvision calls for them: fixed-point int16 weights,
    the width resized first, each pass rounded to uint8. Other integer images: in float32, then rounded.
    """
    h, w = chw.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    if (h, w) == (out_h, out_w):
        return chw
    if chw.dtype == np.uint8:
        if w != out_w:
            chw = _fixed_point_pass(chw, w, out_w, axis=-1)
        if h != out_h:
            chw = _fixed_point_pass(chw, h, out_h, axis=-2)
        return chw
    out = np.matmul(np.matmul(antialias_matrix(h, out_h), chw.astype(np.float32)), antialias_matrix(w, out_w).T)
    if np.issubdtype(chw.dtype, np.integer):
        info = np.iinfo(chw.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(chw.dtype)
    return out


def process(chw: np.ndarray, opts: Mapping[str, Any]) -> np.ndarray:
    """One (C, H, W) RGB image through steps 2 and 3 of the module docstring."""
    if opts["do_resize"]:
        chw = antialiased_resize(chw, (opts["size"]["height"], opts["size"]["width"]))
    return rescale_and_normalize(chw, opts)


def _resize_maps(maps: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """(C, h, w) float32 -> (C, H, W), bilinear with align_corners=False (the reference's post-processing)."""
    if size is None:
        return np.array(maps, dtype=np.float32)
    return np.array(interpolate_np(maps, size, "bilinear", align_corners=False), dtype=np.float32)


class Tipsv2DptImageProcessor(ImageProcessorBase):
    """Prepares images for TIPSv2-DPT and post-processes its depth, normals and segmentation.

    Options and defaults are those of transformers' ``Tipsv2DptImageProcessor``: ``do_resize`` (True)
    to ``size`` (448x448) with ``resample`` 2 (bilinear, antialiased; the only one supported),
    ``do_rescale`` (True) by ``rescale_factor`` (1/255), ``do_normalize`` (False; ``image_mean`` /
    ``image_std`` are used only when it is set), ``do_convert_rgb`` (True). ``None`` for an option
    means its default; invalid values raise ``ValueError`` naming the option.
    """

    processor_type = "Tipsv2DptImageProcessor"
    _defaults = TIPSV2_DEFAULTS
    _validate = staticmethod(validate_tipsv2_options)

    def __init__(
        self,
        do_resize: bool | None = None,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool | None = None,
    ):
        self._set_options(locals())

    def __call__(self, images: Any, return_tensors: str | None = "np", **overrides: Any) -> BatchFeature:
        """Preprocess one image or a batch (PIL images, (H, W) / HWC / CHW arrays, or lists of them).

        Returns a :class:`BatchFeature` with ``pixel_values``, float32 (B, 3, 448, 448) by default: NumPy
        for ``return_tensors="np"``, mx.array for ``"mlx"``, a list of (3, H, W) arrays for ``None``.
        ``overrides``: any option, for this call only.
        """
        opts = self._call_options(return_tensors, overrides)
        images = flatten_inputs(images, 3, "images")
        if not images:
            raise ValueError("no images given")
        convert_rgb = opts["do_convert_rgb"] is not False
        pixel_values = [process(to_rgb_chw(image, convert_rgb), opts).astype(np.float32) for image in images]
        return BatchFeature(pixel_values=collate("pixel_values", pixel_values, return_tensors))

    preprocess = __call__

    def post_process_depth_estimation(self, outputs: Any, target_sizes: Any = None) -> list[dict[str, np.ndarray]]:
        """``outputs.predicted_depth`` ((B, H, W) metres) -> per image ``{"predicted_depth": (h, w) float32}``,
        resized to its ``target_sizes`` entry (bilinear, align_corners=False; ``None`` keeps the model's
        size). Unlike the reference (which squeezes, so a target of height 1 loses an axis) each map stays 2-D."""
        depth = predicted_depth(outputs)
        sizes = check_target_sizes(target_sizes, len(depth), "depth maps")
        return [{"predicted_depth": _resize_maps(one[None], size)[0]} for one, size in zip(depth, sizes)]

    def post_process_normal_estimation(self, outputs: Any, target_sizes: Any = None) -> list[dict[str, np.ndarray]]:
        """``outputs.normals`` ((B, 3, H, W), unnormalised) -> per image ``{"normals": (3, h, w) float32}``:
        L2-normalised over the channels (``x / max(|x|, 1e-12)``), then resized to the ``target_sizes``
        entry (bilinear, align_corners=False), as the reference (so resized normals are not unit length)."""
        normals = _float_numpy(_output_field(outputs, "normals"), "normals")
        if normals.ndim != 4:
            raise ValueError(f"normals must have shape (batch, 3, height, width), got {normals.shape}")
        norm = np.sqrt(np.sum(normals * normals, axis=1, keepdims=True, dtype=np.float32))
        normals = normals / np.maximum(norm, np.float32(NORMALIZE_EPS))
        sizes = check_target_sizes(target_sizes, len(normals), "normal maps")
        return [{"normals": _resize_maps(one, size)} for one, size in zip(normals, sizes)]

    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: Any = None, return_segmentation_scores: bool = False
    ) -> list:
        """``outputs.segmentation_logits`` (dense model) or ``outputs.logits`` ((B, C, h, w)) -> per image an
        (H, W) int64 class map (logits resized bilinearly, align_corners=False, then argmax). With
        ``return_segmentation_scores`` each item is a dict with ``segmentation`` and the resized logits as
        ``segmentation_scores`` (C, H, W)."""
        field = "segmentation_logits"
        has = outputs.get(field) if isinstance(outputs, Mapping) else getattr(outputs, field, None)
        logits = _float_numpy(has if has is not None else _output_field(outputs, "logits"), "logits")
        if logits.ndim != 4:
            raise ValueError(f"logits must have shape (batch, classes, height, width), got {logits.shape}")
        sizes = check_target_sizes(target_sizes, len(logits), "logits")
        results = []
        for scores, size in zip(logits, sizes):
            size = scores.shape[-2:] if size is None else size
            if not return_segmentation_scores:
                results.append(segment(scores, size))
                continue
            resized = _resize_maps(scores, size)
            results.append({"segmentation": resized.argmax(axis=0), "segmentation_scores": resized})
        return results


__all__ = ["TIPSV2_DEFAULTS", "Tipsv2DptImageProcessor", "antialiased_resize", "validate_tipsv2_options"]

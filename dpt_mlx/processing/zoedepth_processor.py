"""ZoeDepth image processor: ``ZoeDepthImageProcessor``, in NumPy.

It reproduces transformers' ``ZoeDepthImageProcessorPil``, whose steps differ from DPT's in
kind and in order. Per image (channels first):

1. to RGB (as :mod:`dpt_mlx.processing.transforms`), channels first;
2. ``do_rescale``: ``x * rescale_factor`` in float64, stored as float32;
3. ``do_pad``: reflect-pad (``np.pad(mode="reflect")``, the edge pixel not repeated)
   ``int(sqrt(height / 2) * 3)`` rows at the top and at the bottom, and
   ``int(sqrt(width / 2) * 3)`` columns at the left and at the right;
4. ``do_resize``: the output size is computed from the **padded** size (fit ``size``,
   keeping the aspect ratio by scaling as little as possible; each side rounded, half to
   even, to a multiple of ``ensure_multiple_of``, then truncated to an int), and the image
   is resized as ``torch.nn.functional.interpolate(..., align_corners=True)`` does on float32
   (bilinear for ``resample=2``, bicubic for 3; sampling positions in float32 unless the
   image is float64), not with Pillow;
5. ``do_normalize``: ``(x - mean) / std`` in float32.

Post-processing undoes the padding: each depth map is resized (bicubic, align_corners=False)
to its source size plus the padding the source size implies, and the padding is cropped off.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..ops import interpolate_np
from .postprocess import check_target_sizes, predicted_depth
from .processor_base import BatchFeature, ImageProcessorBase, collate
from .transforms import (
    DEFAULTS,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    normalize,
    rescale,
    resize_output_size,
    validate_options,
)

# The options, with the reference's defaults (``ZoeDepthImageProcessorPil`` class attributes).
ZOEDEPTH_DEFAULTS: dict[str, Any] = {
    "do_pad": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(IMAGENET_STANDARD_MEAN),
    "image_std": list(IMAGENET_STANDARD_STD),
    "do_resize": True,
    "size": {"height": 384, "width": 512},
    "resample": 2,  # PIL.Image.BILINEAR
    "keep_aspect_ratio": True,
    # transformers' class default; the hub checkpoints' files set 32.
    "ensure_multiple_of": 1 / 32,
    "do_convert_rgb": None,
}
_MODES = {2: "bilinear", 3: "bicubic"}
_PAD_FACTOR = 3  # ZoeDepth pads int(sqrt(side / 2) * 3) pixels on each side


def validate_zoedepth_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ZoeDepth's options and return them normalised (as :func:`validate_options` does DPT's)."""
    multiple = options["ensure_multiple_of"]
    if not (
        isinstance(multiple, numbers.Real)
        and not isinstance(multiple, (bool, np.bool_))
        and math.isfinite(multiple)
        and multiple > 0
    ):
        raise ValueError(f"ensure_multiple_of={multiple!r} is invalid; use a positive number (32 for multiples of 32)")
    checked = validate_options({**DEFAULTS, **options, "ensure_multiple_of": 1})
    out = {name: checked[name] for name in ZOEDEPTH_DEFAULTS}
    out["ensure_multiple_of"] = int(multiple) if isinstance(multiple, numbers.Integral) else float(multiple)
    if out["resample"] not in _MODES:
        raise ValueError(f"resample={out['resample']!r} is invalid; ZoeDepth resizes with 2 (bilinear) or 3 (bicubic)")
    return out


def padding(height: int, width: int) -> tuple[int, int]:
    """The rows (top and bottom each) and columns (left and right each) ZoeDepth pads an image with."""
    return int(np.sqrt(height / 2) * _PAD_FACTOR), int(np.sqrt(width / 2) * _PAD_FACTOR)


def process(chw: np.ndarray, opts: Mapping[str, Any]) -> np.ndarray:
    """One (C, H, W) image through the steps the validated options switch on (module docstring)."""
    if opts["do_rescale"]:
        chw = rescale(chw, opts["rescale_factor"])
    if opts["do_pad"]:
        pad_h, pad_w = padding(chw.shape[1], chw.shape[2])
        chw = np.pad(chw, ((0, 0), (pad_h, pad_h), (pad_w, pad_w)), mode="reflect")
    if opts["do_resize"]:
        height, width = resize_output_size(
            chw.shape[1], chw.shape[2], opts["size"], opts["keep_aspect_ratio"], opts["ensure_multiple_of"]
        )
        if height < 1 or width < 1:
            raise ValueError(
                f"cannot resize an image of size {chw.shape[1:]} to {(height, width)}; it is too small for "
                f"ensure_multiple_of={opts['ensure_multiple_of']}, so lower ensure_multiple_of or enlarge the image"
            )
        # PyTorch computes in the tensor's precision: float32 positions unless the image is float64.
        float32 = chw.dtype != np.float64
        chw = interpolate_np(chw, (height, width), _MODES[opts["resample"]], True, float32_positions=float32)
    if opts["do_normalize"]:
        chw = normalize(chw, opts["image_mean"], opts["image_std"])
    return chw


def _bicubic(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchvision's ``resize(BICUBIC, antialias=False)`` of an (H, W) map: the map itself at its own size."""
    if depth.shape == tuple(size):
        return depth
    return interpolate_np(depth, size, "bicubic", align_corners=False, float32_positions=True)


class ZoeDepthImageProcessor(ImageProcessorBase):
    """Prepares images for ZoeDepth and turns its depth back into maps of the input's size.

    Options and defaults are those of transformers' ``ZoeDepthImageProcessor`` (PIL backend):
    ``do_pad`` (True, reflect padding), ``do_rescale`` (True), ``rescale_factor`` (1/255),
    ``do_normalize`` (True), ``image_mean`` / ``image_std`` (0.5 each), ``do_resize`` (True),
    ``size`` (384x512; an int means a square), ``resample`` (2 bilinear, or 3 bicubic),
    ``keep_aspect_ratio`` (True), ``ensure_multiple_of`` (1/32, transformers' default: sides
    are then not rounded to a multiple of anything larger than 1; the hub files set 32) and
    ``do_convert_rgb`` (None, which converts like True). ``None`` for an option means its
    default; invalid values raise ``ValueError`` naming the option.

    With ``do_rescale=False``, an integer image is resized in float32, where transformers
    resizes it as uint8 in PyTorch (rounding inside its kernels); float images match exactly.
    """

    processor_type = "ZoeDepthImageProcessor"
    _defaults = ZOEDEPTH_DEFAULTS
    _validate = staticmethod(validate_zoedepth_options)

    def __init__(
        self,
        do_pad: bool | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_resize: bool | None = None,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int | None = None,
        keep_aspect_ratio: bool | None = None,
        ensure_multiple_of: float | None = None,
        do_convert_rgb: bool | None = None,
    ):
        self._set_options(locals())

    def __call__(self, images: Any, return_tensors: str | None = "np", **overrides: Any) -> BatchFeature:
        """Preprocess one image or a batch (inputs as :meth:`DPTImageProcessor.__call__` takes them).

        Returns a :class:`BatchFeature` with ``pixel_values``, float32 (B, 3, H, W): NumPy for
        ``return_tensors="np"``, mx.array for ``"mlx"``, a list of (3, H, W) arrays for ``None``
        (needed when ``keep_aspect_ratio`` gives images of different shapes different sizes).
        ``overrides``: any option, for this call only.
        """
        opts = self._call_options(return_tensors, overrides)
        pixel_values = self._pixel_values(images, opts, process)
        return BatchFeature(pixel_values=collate("pixel_values", pixel_values, return_tensors))

    preprocess = __call__

    def post_process_depth_estimation(
        self,
        outputs: Any,
        source_sizes: Any = None,
        target_sizes: Any = None,
        outputs_flipped: Any = None,
        do_remove_padding: bool | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """``outputs.predicted_depth`` ((B, H, W), mx or NumPy) -> ``[{"predicted_depth": (h, w) float32}]``.

        As transformers, in this order: with ``outputs_flipped`` (the model's output on the
        horizontally flipped ``pixel_values``), each map is averaged with the mirrored flipped
        one. Then, for each ``source_sizes`` entry (the image's (height, width) before
        preprocessing), the map is resized bicubically to that size plus the padding it
        implies and, with ``do_remove_padding`` (default: the processor's ``do_pad``), the
        padding is cropped off; ``do_remove_padding`` needs ``source_sizes``. Last, each map is
        resized bicubically to its ``target_sizes`` entry. A ``None`` list or entry skips a step.
        """
        depth = predicted_depth(outputs)
        if outputs_flipped is not None:
            flipped = predicted_depth(outputs_flipped, "outputs_flipped")
            if flipped.shape != depth.shape:
                raise ValueError(
                    f"outputs_flipped.predicted_depth has shape {flipped.shape} but outputs.predicted_depth has "
                    f"{depth.shape}; pass the model's output on the flipped pixel_values of the same batch"
                )
            depth = (depth + flipped[..., ::-1]) / 2
        targets = check_target_sizes(target_sizes, len(depth), "depth maps")
        if do_remove_padding is None:
            do_remove_padding = self.do_pad
        if not isinstance(do_remove_padding, (bool, np.bool_)):
            raise ValueError(f"do_remove_padding={do_remove_padding!r} is invalid; use True, False or None")
        if source_sizes is None and do_remove_padding:
            raise ValueError(
                "removing ZoeDepth's padding needs source_sizes, each image's (height, width) before preprocessing; "
                "pass source_sizes, or do_remove_padding=False"
            )
        sources = check_target_sizes(source_sizes, len(depth), "depth maps", kind="source")
        results = []
        for one, target, source in zip(depth, targets, sources):
            if source is not None:
                pad_h, pad_w = padding(*source) if do_remove_padding else (0, 0)
                one = _bicubic(one, (source[0] + 2 * pad_h, source[1] + 2 * pad_w))
                one = one[pad_h : one.shape[0] - pad_h, pad_w : one.shape[1] - pad_w]
            if target is not None:
                one = _bicubic(one, target)
            results.append({"predicted_depth": np.array(one, dtype=np.float32)})
        return results


__all__ = ["ZOEDEPTH_DEFAULTS", "ZoeDepthImageProcessor", "padding", "validate_zoedepth_options"]

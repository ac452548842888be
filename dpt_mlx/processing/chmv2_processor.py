"""CHMv2 image processor: ``CHMv2ImageProcessor``, in NumPy.

It reproduces transformers' ``CHMv2ImageProcessor`` (a torchvision processor; DPT's steps without
the resize). Per image, channels first:

1. to RGB, as the reference's torchvision path does it (PIL images through Pillow, transparency
   composited onto white; arrays: grey repeated, RGBA blended onto white in float32);
2. rescale and normalise in one step, in float32: ``(x - mean / rescale_factor) / (std /
   rescale_factor)`` with both divided statistics float32 (``x * rescale_factor`` without
   ``do_normalize``, ``(x - mean) / std`` without ``do_rescale``); the mean and std default to
   CHMv2's satellite-image statistics;
3. ``do_pad``: zero-pad to multiples of ``size_divisor`` (16), centred (an odd extra row or column
   goes at the bottom / right). Padding comes after normalisation: padded pixels are 0 in
   normalised units.

Images are never resized (``do_resize`` is False, as in the reference and the hub's file; the
resizing options are kept so that a saved file reads back unchanged). Post-processing resizes each
height map to its target size (bilinear, align_corners=True) and, like the reference, keeps the
padding: the padded map is stretched to the target size, not cropped first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..ops import interpolate_np
from .depth_pro_processor import rescale_and_normalize, to_rgb_chw
from .postprocess import check_target_sizes, predicted_depth
from .processor_base import BatchFeature, ImageProcessorBase, collate
from .transforms import DEFAULTS, center_pad, flatten_inputs, validate_options

CHMV2_MEAN = (0.420, 0.411, 0.296)  # the reference's satellite-image statistics
CHMV2_STD = (0.213, 0.156, 0.143)

# The options, with the reference's defaults (``CHMv2ImageProcessor`` class attributes).
CHMV2_DEFAULTS: dict[str, Any] = {
    "do_resize": False,
    "size": {"height": 384, "width": 384},
    "resample": 3,  # PIL.Image.BICUBIC
    "keep_aspect_ratio": True,
    "ensure_multiple_of": 16,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(CHMV2_MEAN),
    "image_std": list(CHMV2_STD),
    "do_pad": True,
    "size_divisor": 16,
    "do_convert_rgb": None,
}


def validate_chmv2_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check CHMv2's options and return them normalised (as :func:`validate_options` does DPT's)."""
    checked = validate_options({**DEFAULTS, **options})
    out = {name: checked[name] for name in CHMV2_DEFAULTS}
    if out["do_resize"]:
        raise ValueError(
            "do_resize=True is not supported: CHMv2 runs at the image's own size (padded to a multiple of "
            "size_divisor); resize the image beforehand"
        )
    return out


def process(chw: np.ndarray, opts: Mapping[str, Any]) -> np.ndarray:
    """One (C, H, W) RGB image through steps 2 and 3 of the module docstring."""
    chw = rescale_and_normalize(chw, opts)
    if opts["do_pad"]:
        chw = center_pad(chw, opts["size_divisor"])
    return chw


class CHMv2ImageProcessor(ImageProcessorBase):
    """Prepares satellite images for CHMv2 and resizes its height maps.

    Options and defaults are those of transformers' ``CHMv2ImageProcessor``: ``do_rescale`` (True),
    ``rescale_factor`` (1/255), ``do_normalize`` (True), ``image_mean`` (0.420, 0.411, 0.296) /
    ``image_std`` (0.213, 0.156, 0.143), ``do_pad`` (True) with ``size_divisor`` (16), and
    ``do_convert_rgb`` (None, which converts like True: where transformers would not convert, a grey
    or RGBA image makes it fail). ``do_resize`` must stay False; ``size``, ``resample``,
    ``keep_aspect_ratio`` and ``ensure_multiple_of`` are kept for the config file only. ``None`` for
    an option means its default; invalid values raise ``ValueError`` naming the option.

    With neither ``do_rescale`` nor ``do_normalize`` the pixel values are the image's values as
    float32 (transformers keeps the input's dtype there).
    """

    processor_type = "CHMv2ImageProcessor"
    _defaults = CHMV2_DEFAULTS
    _validate = staticmethod(validate_chmv2_options)

    def __init__(
        self,
        do_resize: bool | None = None,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int | None = None,
        keep_aspect_ratio: bool | None = None,
        ensure_multiple_of: int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_pad: bool | None = None,
        size_divisor: int | None = None,
        do_convert_rgb: bool | None = None,
    ):
        self._set_options(locals())

    def __call__(self, images: Any, return_tensors: str | None = "np", **overrides: Any) -> BatchFeature:
        """Preprocess one image or a batch (PIL images, (H, W) / HWC / CHW arrays, or lists of them).

        Returns a :class:`BatchFeature` with ``pixel_values``, float32 (B, 3, H', W'), H' and W' the
        image's sides rounded up to ``size_divisor``: NumPy for ``return_tensors="np"``, mx.array for
        ``"mlx"``, a list of (3, H', W') arrays for ``None`` (images of different padded sizes cannot
        be stacked). ``overrides``: any option, for this call only.
        """
        opts = self._call_options(return_tensors, overrides)
        images = flatten_inputs(images, 3, "images")
        if not images:
            raise ValueError("no images given")
        convert_rgb = opts["do_convert_rgb"] is not False
        pixel_values = [process(to_rgb_chw(image, convert_rgb), opts) for image in images]
        return BatchFeature(pixel_values=collate("pixel_values", pixel_values, return_tensors))

    preprocess = __call__

    def post_process_depth_estimation(self, outputs: Any, target_sizes: Any = None) -> list[dict[str, np.ndarray]]:
        """``outputs.predicted_depth`` ((B, H, W) heights in metres, mx or NumPy) -> per image
        ``{"predicted_depth": (h, w) float32}``.

        Each map is resized to its ``target_sizes`` entry ((height, width); ``None`` or a ``None``
        entry keeps the model's size) bilinearly with align_corners=True, sampling positions in
        float32, as the reference does. As in the reference the padding is not removed first: the
        whole (padded) map is resized. Unlike the reference (which squeezes the result, so a target
        of height 1 loses an axis), each map is always 2-D.
        """
        depth = predicted_depth(outputs)
        results = []
        for one, size in zip(depth, check_target_sizes(target_sizes, len(depth), "depth maps")):
            if size is not None:
                one = interpolate_np(one, size, "bilinear", align_corners=True, float32_positions=True)
            results.append({"predicted_depth": np.array(one, dtype=np.float32)})
        return results


__all__ = ["CHMV2_DEFAULTS", "CHMV2_MEAN", "CHMV2_STD", "CHMv2ImageProcessor", "validate_chmv2_options"]

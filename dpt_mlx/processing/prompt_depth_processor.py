"""Prompt Depth Anything image processor: ``PromptDepthAnythingImageProcessor``, in NumPy and Pillow.

It reproduces transformers' ``PromptDepthAnythingImageProcessorPil``. Images go through the
same steps as DPT's (:func:`dpt_mlx.processing.transforms.process`: Pillow resize,
rescale, normalise, optional centred zero padding to ``size_divisor``). A prompt depth (a
low-resolution metric depth map, e.g. from a phone's LiDAR) is not resized: each one is
multiplied by ``prompt_scale_to_meter`` in its own dtype's arithmetic (a uint16 map in
millimetres times 0.001 is computed in float64), a constant map gets 1e-6 added to its first
row (so that the model's min/max normalisation does not divide by zero), and the result is
stored as float32, (1, h, w) per map.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from .postprocess import depth_maps
from .processor_base import BatchFeature, ImageProcessorBase, collate
from .transforms import DEFAULTS, as_numpy, check_image_array, flatten_inputs, process, validate_options

# The options, with the reference's defaults (``PromptDepthAnythingImageProcessorPil`` class
# attributes): DPT's, without label reduction, with the prompt's unit.
PROMPT_DEPTH_DEFAULTS: dict[str, Any] = {
    **{name: value for name, value in DEFAULTS.items() if name != "do_reduce_labels"},
    "prompt_scale_to_meter": 0.001,
}


def validate_prompt_depth_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check the options and return them normalised (as :func:`validate_options` does DPT's)."""
    scale = options["prompt_scale_to_meter"]
    if not (
        isinstance(scale, numbers.Real)
        and not isinstance(scale, (bool, np.bool_))
        and math.isfinite(scale)
        and scale > 0
    ):
        raise ValueError(
            f"prompt_scale_to_meter={scale!r} is invalid; use a positive number (0.001 for prompts in millimetres)"
        )
    checked = validate_options({**DEFAULTS, **options})
    out = {name: checked[name] for name in PROMPT_DEPTH_DEFAULTS}
    out["prompt_scale_to_meter"] = int(scale) if isinstance(scale, numbers.Integral) else float(scale)
    return out


def prompt_to_meters(prompt: Any, scale: float) -> np.ndarray:
    """One prompt depth (a 2-D array or a one-channel PIL image, e.g. a 16-bit PNG) -> (1, h, w)
    float32 metres, as transformers: ``prompt * scale``; 1e-6 added to the first row of a constant map."""
    if isinstance(prompt, Image.Image):
        if len(prompt.getbands()) != 1:
            raise ValueError(
                f"a prompt depth must have one channel, got a PIL image of mode {prompt.mode!r}; pass a 2-D "
                "depth map (e.g. a 16-bit PNG)"
            )
        array = np.array(prompt)
    else:
        array = as_numpy(prompt)
    if array.ndim != 2:
        raise ValueError(f"a prompt depth must be 2-D (height, width), got shape {array.shape}")
    depth = check_image_array(array, channels_first=True, what="prompt depth")[None] * scale
    if depth.min() == depth.max():
        depth[0, 0] = depth[0, 0] + 1e-6
    return depth.astype(np.float32)


class PromptDepthAnythingImageProcessor(ImageProcessorBase):
    """Prepares images and prompt depths for Prompt Depth Anything, and turns its depth into maps.

    Options and defaults are those of transformers' ``PromptDepthAnythingImageProcessor`` (PIL
    backend), which are DPT's (see :class:`DPTImageProcessor`: ``size`` 384x384, bicubic,
    mean/std 0.5, no aspect ratio kept, no padding) without ``do_reduce_labels``, plus
    ``prompt_scale_to_meter`` (0.001: prompts in millimetres). The hub checkpoints' files set
    ``size`` 756x756, ``keep_aspect_ratio``, ``ensure_multiple_of`` 14 and ImageNet's mean/std.

    transformers never converts these images to RGB (a grayscale or RGBA image fails there);
    here ``do_convert_rgb=None`` converts like DPT's processor, ``False`` keeps the channels.
    """

    processor_type = "PromptDepthAnythingImageProcessor"
    model_input_names = ["pixel_values", "prompt_depth"]
    _defaults = PROMPT_DEPTH_DEFAULTS
    _validate = staticmethod(validate_prompt_depth_options)

    def __init__(
        self,
        *,
        resample: int | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        do_resize: bool | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        keep_aspect_ratio: bool | None = None,
        ensure_multiple_of: int | None = None,
        do_pad: bool | None = None,
        size_divisor: int | None = None,
        prompt_scale_to_meter: float | None = None,
        do_convert_rgb: bool | None = None,
    ):
        # Keyword-only, in the order of the reference's class attributes.
        self._set_options(locals())

    def __call__(
        self, images: Any, prompt_depth: Any = None, return_tensors: str | None = "np", **overrides: Any
    ) -> BatchFeature:
        """Preprocess one image or a batch, with one prompt depth per image or none.

        ``images`` as :meth:`DPTImageProcessor.__call__` takes them. ``prompt_depth``: a 2-D
        array (NumPy or mx; any real dtype, in the unit ``prompt_scale_to_meter`` converts to
        metres), a one-channel PIL image (e.g. a uint16 PNG in millimetres), a (B, h, w)
        array, or a list of these; NaN, inf or an empty map is a ``ValueError``.
        ``overrides``: any option, for this call only.

        Returns a :class:`BatchFeature` with ``pixel_values`` (float32, (B, 3, H, W)) and, with
        prompts, ``prompt_depth`` (float32, (B, 1, h, w), at the prompts' own resolution):
        NumPy for ``return_tensors="np"``, mx.array for ``"mlx"``, lists for ``None``.
        """
        opts = self._call_options(return_tensors, overrides)
        pixel_values = self._pixel_values(images, opts, partial(process, is_label=False))
        data = BatchFeature(pixel_values=collate("pixel_values", pixel_values, return_tensors))
        if prompt_depth is not None:
            prompts = flatten_inputs(prompt_depth, 2, "prompt depth")
            if len(prompts) != len(pixel_values):
                raise ValueError(f"got {len(prompts)} prompt depths for {len(pixel_values)} images; pass one per image")
            scale = opts["prompt_scale_to_meter"]
            data["prompt_depth"] = collate(
                "prompt_depth", [prompt_to_meters(p, scale) for p in prompts], return_tensors
            )
        return data

    preprocess = __call__

    def post_process_depth_estimation(self, outputs: Any, target_sizes: Any = None) -> list[dict[str, np.ndarray]]:
        """``outputs.predicted_depth`` ((B, H, W), mx or NumPy) -> ``[{"predicted_depth": (h, w) float32}]``,
        each map resized bicubically (align_corners=False) to its ``target_sizes`` entry, as
        :meth:`DPTImageProcessor.post_process_depth_estimation`."""
        return [{"predicted_depth": depth} for depth in depth_maps(outputs, target_sizes)]


__all__ = [
    "PROMPT_DEPTH_DEFAULTS",
    "PromptDepthAnythingImageProcessor",
    "prompt_to_meters",
    "validate_prompt_depth_options",
]

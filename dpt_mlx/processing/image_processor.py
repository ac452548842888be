"""DPT / Depth Anything image processor: ``DPTImageProcessor``, its config file, ``BatchFeature``.

``DPTImageProcessor`` reproduces transformers' ``DPTImageProcessorPil`` exactly (same Pillow
calls, same NumPy dtypes at every step), so ``pixel_values`` agree with the reference to
float32 rounding. The per-image steps and the option checks are in
:mod:`dpt_mlx.processing.transforms`, the post-processing in :mod:`dpt_mlx.processing.postprocess`;
this module batches them; :mod:`dpt_mlx.processing.processor_base` reads and writes
``preprocessor_config.json``. It needs neither torch nor transformers; post-processing returns
NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from .postprocess import class_maps, class_scores, depth_maps, segment
from .processor_base import CONFIG_NAME, BatchFeature, ImageProcessorBase, collate
from .transforms import (
    DEFAULTS,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    flatten_inputs,
    map_to_chw,
    process,
    resize_output_size,
    validate_options,
)


class DPTImageProcessor(ImageProcessorBase):
    """Prepares images for DPT / Depth Anything and turns model outputs into maps.

    Options and defaults are those of transformers' ``DPTImageProcessor`` (PIL backend):
    ``do_resize`` (True), ``size`` (384x384; an int means a square), ``resample`` (3, a
    Pillow filter code), ``keep_aspect_ratio`` (False), ``ensure_multiple_of`` (1),
    ``do_rescale`` (True), ``rescale_factor`` (1/255), ``do_normalize`` (True),
    ``image_mean`` / ``image_std`` (0.5 each), ``do_pad`` (False) with ``size_divisor``
    (None: no padding), ``do_reduce_labels`` (False) and ``do_convert_rgb`` (None).
    ``None`` for an option means its default. ``do_convert_rgb=None`` converts like True:
    where transformers would not convert, a non-RGB image makes it fail; ``False`` keeps the
    channels as given (the mean and std must then have one value per channel).
    Invalid values raise ``ValueError`` naming the option.
    """

    processor_type = "DPTImageProcessor"
    _defaults = DEFAULTS
    _validate = staticmethod(validate_options)
    _legacy_keys = {"reduce_labels": "do_reduce_labels"}

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
        do_reduce_labels: bool | None = None,
        do_convert_rgb: bool | None = None,
    ):
        self._set_options(locals())

    # -- preprocessing ------------------------------------------------------------------------

    def __call__(
        self,
        images: Any,
        segmentation_maps: Any = None,
        return_tensors: str | None = "np",
        **overrides: Any,
    ) -> BatchFeature:
        """Preprocess one image or a batch.

        ``images``: a PIL image, an array (HWC or CHW, 1/3/4 channels, or HW grayscale; uint8,
        or float in [0, 1]), an (N, ...) array, an mx.array, or a list of these. An empty image,
        or one with NaN, inf or values that are not real numbers, is a ``ValueError``.
        ``segmentation_maps``: the same for 2-D label maps (PIL "L"/"P" images or integer arrays).
        ``overrides``: any option, for this call only (``None`` keeps the processor's value).

        Returns a :class:`BatchFeature` with ``pixel_values`` (float32, (B, 3, H, W)) and, with
        maps, ``labels`` (int64, (B, H, W)): NumPy arrays for ``return_tensors="np"`` (the
        default), mx.arrays for ``"mlx"``, or, for ``None``, lists of per-image arrays, as
        transformers returns by default.

        Like transformers, images are not padded to a common size: with ``keep_aspect_ratio``
        or ``do_resize=False``, images of different shapes give different output shapes; use
        ``return_tensors=None`` to get them as a list (stacking them raises ``ValueError``).
        """
        opts = self._call_options(return_tensors, overrides)
        pixel_values = self._pixel_values(images, opts, partial(process, is_label=False))
        data = BatchFeature(pixel_values=collate("pixel_values", pixel_values, return_tensors))

        if segmentation_maps is not None:
            maps = flatten_inputs(segmentation_maps, 2, "segmentation maps")
            if len(maps) != len(pixel_values):
                raise ValueError(
                    f"got {len(maps)} segmentation maps for {len(pixel_values)} images; pass one per image"
                )
            labels = [process(map_to_chw(m), opts, is_label=True)[0].astype(np.int64) for m in maps]
            data["labels"] = collate("labels", labels, return_tensors)
        return data

    preprocess = __call__

    # -- post-processing ----------------------------------------------------------------------

    def post_process_depth_estimation(self, outputs: Any, target_sizes: Any = None) -> list[dict[str, np.ndarray]]:
        """``outputs.predicted_depth`` ((B, H, W), mx or NumPy) -> ``[{"predicted_depth": (h, w) float32}]``.

        Each map is resized to its ``target_sizes`` entry ((height, width); ``None`` or a
        ``None`` entry keeps the model's size) by bicubic interpolation, align_corners=False,
        with PyTorch's cubic kernel, as transformers does. Unlike transformers (which squeezes
        the result, so a target of height 1 loses an axis), each map is always 2-D.
        """
        return [{"predicted_depth": depth} for depth in depth_maps(outputs, target_sizes)]

    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: Any = None, return_segmentation_scores: bool = False
    ) -> list[np.ndarray] | list[BatchFeature]:
        """``outputs.logits`` ((B, C, h, w), mx or NumPy) -> a list of (H, W) int64 class maps.

        Logits are resized bilinearly (align_corners=False) to each ``target_sizes`` entry
        ((height, width); ``None`` keeps the logits' size), then arg-maxed over classes.
        With ``return_segmentation_scores=True``, each item is instead a :class:`BatchFeature`
        with ``segmentation`` ((H, W) int64) and ``segmentation_scores`` (the resized raw logits,
        (C, H, W) float32, not probabilities), as transformers returns.
        """
        if not return_segmentation_scores:
            return class_maps(outputs, target_sizes)
        return [
            BatchFeature(segmentation=scores.argmax(axis=0).astype(np.int64), segmentation_scores=scores)
            for scores in class_scores(outputs, target_sizes)
        ]


# The name transformers used before image processors; same class.
DPTFeatureExtractor = DPTImageProcessor

__all__ = [
    "CONFIG_NAME",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "IMAGENET_STANDARD_MEAN",
    "IMAGENET_STANDARD_STD",
    "BatchFeature",
    "DPTFeatureExtractor",
    "DPTImageProcessor",
    "resize_output_size",
    "segment",
]

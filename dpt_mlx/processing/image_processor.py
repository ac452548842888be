"""DPT / Depth Anything image processor: ``DPTImageProcessor``, its config file, ``BatchFeature``.

``DPTImageProcessor`` reproduces transformers' ``DPTImageProcessorPil`` exactly (same Pillow
calls, same NumPy dtypes at every step), so ``pixel_values`` agree with the reference to
float32 rounding. The per-image steps and the option checks are in
:mod:`dpt_mlx.processing.transforms`, the post-processing in :mod:`dpt_mlx.processing.postprocess`;
this module batches them and reads and writes ``preprocessor_config.json``. It needs neither
torch nor transformers; post-processing returns NumPy arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from ..errors import CheckpointError
from ..io.files import atomic_write_text
from ..io.hub import HubOptions, resolve_file
from .postprocess import class_maps, class_scores, depth_maps, segment
from .transforms import (
    DEFAULTS,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPTION_NAMES,
    flatten_inputs,
    image_to_chw,
    map_to_chw,
    process,
    resize_output_size,
    validate_options,
)

CONFIG_NAME = "preprocessor_config.json"

_RETURN_TENSORS = ("np", "mlx", None)
# Keys written by older transformers versions, renamed since.
_LEGACY_KEYS = {"reduce_labels": "do_reduce_labels"}


class BatchFeature(dict):
    """A dict whose keys are also attributes: ``out["pixel_values"]`` or ``out.pixel_values``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self):
        return list(super().__dir__()) + [k for k in self if isinstance(k, str)]


def _collate(name: str, arrays: list[np.ndarray], return_tensors: str | None):
    if return_tensors is None:
        return arrays
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise ValueError(
            f"cannot stack {name} of different shapes {shapes} into one array; pass return_tensors=None for a "
            "list, or make the sizes equal (do_resize=True with keep_aspect_ratio=False)"
        )
    stacked = np.stack(arrays)
    return mx.array(stacked) if return_tensors == "mlx" else stacked


class DPTImageProcessor:
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

    model_input_names = ["pixel_values"]

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
        given = dict(locals())
        options = {name: given[name] if given[name] is not None else DEFAULTS[name] for name in OPTION_NAMES}
        for name, value in validate_options(options).items():
            setattr(self, name, value)

    # -- configuration ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict, in the layout of transformers' preprocessor_config.json."""
        out = {name: getattr(self, name) for name in OPTION_NAMES}
        out["size"] = dict(out["size"])
        for name in ("image_mean", "image_std"):
            out[name] = list(out[name]) if isinstance(out[name], list) else out[name]
        out["image_processor_type"] = "DPTImageProcessor"
        return out

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> DPTImageProcessor:
        """Build from a preprocessor_config.json dict. Unknown keys are ignored; older layouts
        (``size`` as an int, ``feature_extractor_type``, ``reduce_labels``) are understood."""
        config = dict(config)
        for old, new in _LEGACY_KEYS.items():
            if old in config:
                config.setdefault(new, config.pop(old))
        unknown = sorted(set(overrides) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown DPTImageProcessor options {unknown}; valid ones are {list(OPTION_NAMES)}")
        config.update(overrides)
        return cls(**{name: config[name] for name in OPTION_NAMES if name in config})

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        **overrides: Any,
    ) -> DPTImageProcessor:
        """Read ``preprocessor_config.json`` from a local directory (or that file itself), or from
        a Hugging Face Hub repo. ``overrides`` replace values from the file."""
        path = resolve_file(path_or_repo_id, CONFIG_NAME, HubOptions(revision, token, cache_dir, local_files_only))
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(
                f"cannot read {path}: {err}; re-download or re-save the preprocessor config"
            ) from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{path} does not hold a JSON object; it is not a preprocessor config")
        try:
            return cls.from_dict(config, **overrides)
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from None

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write ``preprocessor_config.json`` (readable by transformers too); returns its path in a list."""
        if os.path.isfile(save_directory):
            raise ValueError(f"{save_directory} is a file; save_pretrained needs a directory")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return [path]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"

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
        if return_tensors not in _RETURN_TENSORS:
            raise ValueError(f"return_tensors={return_tensors!r} is invalid; use 'np', 'mlx' or None")
        unknown = sorted(set(overrides) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown DPTImageProcessor options {unknown}; valid ones are {list(OPTION_NAMES)}")
        opts = {name: getattr(self, name) for name in OPTION_NAMES}
        opts.update({k: v for k, v in overrides.items() if v is not None})
        opts = validate_options(opts)

        images = flatten_inputs(images, 3, "images")
        if not images:
            raise ValueError("no images given")
        convert_rgb = opts["do_convert_rgb"] is not False
        pixel_values = [
            process(image_to_chw(image, convert_rgb), opts, is_label=False).astype(np.float32, copy=False)
            for image in images
        ]
        data = BatchFeature(pixel_values=_collate("pixel_values", pixel_values, return_tensors))

        if segmentation_maps is not None:
            maps = flatten_inputs(segmentation_maps, 2, "segmentation maps")
            if len(maps) != len(images):
                raise ValueError(f"got {len(maps)} segmentation maps for {len(images)} images; pass one per image")
            labels = [process(map_to_chw(m), opts, is_label=True)[0].astype(np.int64) for m in maps]
            data["labels"] = _collate("labels", labels, return_tensors)
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

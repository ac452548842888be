"""Depth Pro image processor: ``DepthProImageProcessor``, in NumPy.

It reproduces transformers' ``DepthProImageProcessor``, which normalises **before** it resizes.
Per image (channels first):

1. to RGB (as :mod:`dpt_mlx.processing.transforms`; an RGBA array is blended onto white as
   torchvision does it: in float32 in [0, 1], then back to its integer type by truncating
   ``x * (max + 1 - 0.001)``);
2. rescale and normalise in one step, in float32: ``(x - mean / rescale_factor) / (std /
   rescale_factor)`` with both divided statistics float32 (``x * rescale_factor`` without
   ``do_normalize``, ``(x - mean) / std`` without ``do_rescale``);
3. ``do_resize``: to ``size`` (1536x1536) as ``torch.nn.functional.interpolate`` does on float32
   (bilinear for ``resample=2``, bicubic for 3; align_corners=False, no antialiasing, sampling
   positions in float32); an image already of that size is kept as it is.

Post-processing turns the model's canonical inverse depth into metric depth: for an image given a
target size (height, width), the focal length in pixels of that width is
``0.5 * width / tan(0.5 * field_of_view)`` (the model's estimate, or a known focal length given
instead), the map is multiplied by ``width / focal_length`` and resized to the target size (the
``resample`` filter); every map is then inverted after clamping to [1e-4, 1e4]. Without a target
size the map is only clamped and inverted (no focal length).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from ..ops import interpolation_matrix
from .postprocess import check_target_sizes, predicted_depth
from .processor_base import BatchFeature, ImageProcessorBase, collate
from .transforms import (
    DEFAULTS,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    as_numpy,
    flatten_inputs,
    image_to_chw,
    validate_options,
)

# The options, with the reference's defaults (``DepthProImageProcessor`` class attributes).
DEPTH_PRO_DEFAULTS: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 1536, "width": 1536},
    "resample": 2,  # PIL.Image.BILINEAR
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(IMAGENET_STANDARD_MEAN),
    "image_std": list(IMAGENET_STANDARD_STD),
    "do_convert_rgb": None,
}
_MODES = {2: "bilinear", 3: "bicubic"}
DEPTH_RANGE = (1e-4, 1e4)  # the reference clamps the inverse depth to this before inverting it
_ALPHA_EPS = 1e-3  # torchvision's float -> integer conversion multiplies by max + 1 - this


def validate_depth_pro_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check Depth Pro's options and return them normalised (as :func:`validate_options` does DPT's)."""
    checked = validate_options({**DEFAULTS, **options})
    out = {name: checked[name] for name in DEPTH_PRO_DEFAULTS}
    if out["resample"] not in _MODES:
        raise ValueError(f"resample={out['resample']!r} is invalid; Depth Pro resizes with 2 (bilinear) or 3 (bicubic)")
    return out


def _blend_onto_white(chw: np.ndarray) -> np.ndarray:
    """(4, H, W) RGBA -> (3, H, W) of the same dtype, as torchvision's ``to_dtype`` round trip blends it."""
    integer = np.issubdtype(chw.dtype, np.integer)
    if not integer and (chw.min() < 0.0 or chw.max() > 1.0):
        raise ValueError(
            f"an RGBA float image must lie in [0, 1], got [{chw.min()}, {chw.max()}]; scale it or pass uint8"
        )
    top = float(np.iinfo(chw.dtype).max) if integer else 1.0
    x = chw.astype(np.float32) * np.float32(1 / top) if integer else chw.astype(np.float32)
    rgb = x[:3] * x[3:] + (np.float32(1) - x[3:])
    if integer:
        return (rgb * np.float32(top + 1 - _ALPHA_EPS)).astype(chw.dtype)
    return rgb.astype(chw.dtype)


def to_rgb_chw(image: Any, convert_rgb: bool) -> np.ndarray:
    """One image -> (C, H, W); arrays with alpha are blended as the reference's torchvision path does."""
    if isinstance(image, Image.Image) or not convert_rgb:
        return image_to_chw(image, convert_rgb)
    chw = image_to_chw(image, False)
    if chw.shape[0] == 4:
        return _blend_onto_white(chw)
    return np.repeat(chw, 3, axis=0) if chw.shape[0] == 1 else chw


def _statistic(value: float | list[float], channels: int, name: str) -> np.ndarray:
    values = value if isinstance(value, list) else [value] * channels
    if len(values) != channels:
        raise ValueError(
            f"{name} has {len(values)} values but the image has {channels} channels; "
            "use do_convert_rgb=True or give one value per channel"
        )
    return np.array(values, dtype=np.float32)[:, None, None]


def rescale_and_normalize(chw: np.ndarray, opts: Mapping[str, Any]) -> np.ndarray:
    """Step 2 of the module docstring, in float32."""
    factor = opts["rescale_factor"]
    if opts["do_normalize"]:
        mean = _statistic(opts["image_mean"], chw.shape[0], "image_mean")
        std = _statistic(opts["image_std"], chw.shape[0], "image_std")
        if opts["do_rescale"]:  # the reference folds the rescale into the statistics
            mean, std = mean * np.float32(1.0 / factor), std * np.float32(1.0 / factor)
        return (chw.astype(np.float32) - mean) / std
    if opts["do_rescale"]:
        return chw.astype(np.float32) * np.float32(factor)
    return chw.astype(np.float32)


@lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(n_out, taps) input indices and float32 weights of one axis resized like ``F.interpolate``."""
    m = interpolation_matrix(n_in, n_out, mode, False, float32_positions=True)
    taps = max(1, int((m != 0).sum(axis=1).max()))
    index = np.zeros((n_out, taps), np.int64)
    weight = np.zeros((n_out, taps), np.float32)
    for row in range(n_out):
        cols = np.nonzero(m[row])[0]
        index[row, : len(cols)] = cols
        weight[row, : len(cols)] = m[row, cols]
    return index, weight


def resize(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """(..., H, W) float32 -> (..., h, w) as ``F.interpolate(size, mode, align_corners=False)`` on float32,
    a few taps per output pixel (the width first, then the height)."""
    height, width = int(size[0]), int(size[1])
    if x.shape[-1] != width:
        index, weight = _taps(x.shape[-1], width, mode)
        x = sum(x[..., index[:, k]] * weight[:, k] for k in range(index.shape[1]))
    if x.shape[-2] != height:
        index, weight = _taps(x.shape[-2], height, mode)
        x = sum(x[..., index[:, k], :] * weight[:, k, None] for k in range(index.shape[1]))
    return x.astype(np.float32, copy=False)


def process(chw: np.ndarray, opts: Mapping[str, Any]) -> np.ndarray:
    """One (C, H, W) image through the steps the validated options switch on (module docstring)."""
    chw = rescale_and_normalize(chw, opts)
    if opts["do_resize"]:
        size = (opts["size"]["height"], opts["size"]["width"])
        if chw.shape[1:] != size:
            chw = resize(chw, size, _MODES[opts["resample"]])
    return chw


def _positive(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
        and value > 0
    )


def check_focal_lengths(focal_lengths: Any, batch: int) -> list[float | None]:
    """One known focal length in pixels (a positive number) or ``None`` per image; ``None`` -> all ``None``."""
    if focal_lengths is None:
        return [None] * batch
    if hasattr(focal_lengths, "__array__"):
        focal_lengths = as_numpy(focal_lengths).tolist()
    if not isinstance(focal_lengths, Sequence) or isinstance(focal_lengths, str) or len(focal_lengths) != batch:
        raise ValueError(f"focal_lengths must be a list of {batch} values (pixels, or None), one per depth map")
    for value in focal_lengths:
        if value is not None and not _positive(value):
            raise ValueError(f"focal length {value!r} is invalid; use a positive number of pixels")
    return [None if v is None else float(v) for v in focal_lengths]


def _fov_values(outputs: Any, batch: int) -> list[np.float32 | None]:
    fov = outputs.get("field_of_view") if isinstance(outputs, Mapping) else getattr(outputs, "field_of_view", None)
    if fov is None:
        return [None] * batch
    fov = as_numpy(fov).astype(np.float32).reshape(-1)
    if len(fov) != batch:
        raise ValueError(f"outputs.field_of_view has {len(fov)} values for {batch} depth maps; give one per map")
    if not np.isfinite(fov).all():
        raise ValueError("outputs.field_of_view contains NaN or inf")
    return [np.float32(v) for v in fov]


def focal_from_fov(fov_degrees: np.float32, width: int) -> np.float32:
    """``0.5 * width / tan(0.5 * fov)``, in float32 as the reference computes it."""
    half = np.float32(0.5) * (np.float32(fov_degrees) * np.float32(math.pi / 180))
    return np.float32(1) / np.tan(half) * np.float32(0.5 * width)


def fov_from_focal(focal_length: float, width: int) -> np.float32:
    """The horizontal field of view in degrees that a focal length of ``focal_length`` pixels gives an image
    ``width`` pixels wide."""
    return np.float32(math.degrees(2 * math.atan(0.5 * width / focal_length)))


class DepthProImageProcessor(ImageProcessorBase):
    """Prepares images for Depth Pro and turns its output into metric depth maps.

    Options and defaults are those of transformers' ``DepthProImageProcessor``: ``do_resize`` (True),
    ``size`` (1536x1536; an int means a square), ``resample`` (2 bilinear, or 3 bicubic),
    ``do_rescale`` (True), ``rescale_factor`` (1/255), ``do_normalize`` (True), ``image_mean`` /
    ``image_std`` (0.5 each) and ``do_convert_rgb`` (None, which converts like True: where
    transformers would not convert, a grey or RGBA image makes it fail). ``None`` for an option
    means its default; invalid values raise ``ValueError`` naming the option.

    With neither ``do_rescale`` nor ``do_normalize``, an integer image is resized in float32, where
    transformers resizes it as uint8 (rounding inside torchvision).
    """

    processor_type = "DepthProImageProcessor"
    _defaults = DEPTH_PRO_DEFAULTS
    _validate = staticmethod(validate_depth_pro_options)

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

        Returns a :class:`BatchFeature` with ``pixel_values``, float32 (B, 3, H, W): NumPy for
        ``return_tensors="np"``, mx.array for ``"mlx"``, a list of (3, H, W) arrays for ``None``.
        ``overrides``: any option, for this call only.
        """
        opts = self._call_options(return_tensors, overrides)
        images = flatten_inputs(images, 3, "images")
        if not images:
            raise ValueError("no images given")
        convert_rgb = opts["do_convert_rgb"] is not False
        pixel_values = [process(to_rgb_chw(image, convert_rgb), opts) for image in images]
        return BatchFeature(pixel_values=collate("pixel_values", pixel_values, return_tensors))

    preprocess = __call__

    def post_process_depth_estimation(
        self, outputs: Any, target_sizes: Any = None, focal_lengths: Any = None
    ) -> list[dict[str, Any]]:
        """``outputs.predicted_depth`` ((B, H, W), canonical inverse depth) and ``outputs.field_of_view``
        ((B,) degrees, or None) -> per image ``{"predicted_depth": float32 map, "field_of_view",
        "focal_length"}`` as the reference returns them (module docstring): the field of view as given
        (a float32 scalar, or None), the focal length in pixels of the target width (None without a
        target size or a field of view). A map whose target size has a side of 1 loses that axis, as
        the reference's ``squeeze`` drops it.

        ``focal_lengths`` (an extension): a known focal length in pixels of the target width per image
        (or None), used instead of the model's estimate; it needs that image's target size, and the
        field of view returned is the one it implies.
        """
        depth = predicted_depth(outputs)
        batch = len(depth)
        targets = check_target_sizes(target_sizes, batch, "depth maps")
        known = check_focal_lengths(focal_lengths, batch)
        fovs = _fov_values(outputs, batch)
        results = []
        for one, fov, target, focal in zip(depth, fovs, targets, known):
            if focal is not None and target is None:
                raise ValueError("a known focal length needs the image's target size (its width in pixels)")
            focal_length = None
            if target is not None:
                width = target[1]
                if focal is not None:
                    focal_length, fov = np.float32(focal), fov_from_focal(focal, width)
                elif fov is not None:
                    focal_length = focal_from_fov(fov, width)
                if focal_length is not None:
                    one = one * np.float32(width) / focal_length
                one = np.squeeze(resize(one, target, _MODES[self.resample]))
            one = np.float32(1) / np.clip(one, *DEPTH_RANGE).astype(np.float32)
            results.append({"predicted_depth": one, "field_of_view": fov, "focal_length": focal_length})
        return results


__all__ = [
    "DEPTH_PRO_DEFAULTS",
    "DepthProImageProcessor",
    "check_focal_lengths",
    "focal_from_fov",
    "fov_from_focal",
    "validate_depth_pro_options",
]

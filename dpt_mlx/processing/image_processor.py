"""DPT / Depth Anything image processor in NumPy and Pillow, plus post-processing.

``DPTImageProcessor`` reproduces transformers' ``DPTImageProcessorPil`` exactly (same
Pillow calls, same NumPy dtypes at every step), so ``pixel_values`` agree with the
reference to float32 rounding. Per image, in this order:

1. to RGB (grayscale repeated, transparency composited onto white), channels first;
2. segmentation maps only: ``do_reduce_labels`` (0 -> 255, others - 1, 254 -> 255);
3. resize with Pillow on **uint8** data (a float image in [0, 1] is scaled by 255 and
   truncated to uint8 first, then divided by 255 again after the resize), to the size
   that ``keep_aspect_ratio`` / ``ensure_multiple_of`` give (Python ``round``, half to even);
   segmentation maps are resized with the same ``resample`` filter as the images;
4. ``do_rescale``: ``x * rescale_factor`` in float64, stored as float32. This is applied
   to float inputs too, as in the reference: pass ``do_rescale=False`` for images that
   are already in [0, 1];
5. ``do_normalize``: ``(x - mean) / std`` in float32;
6. ``do_pad`` (only when ``size_divisor`` is set): zero-pad each side to the next
   multiple of ``size_divisor``, centred (the extra pixel, if odd, goes at the bottom /
   right). Padding comes after normalisation, so padded pixels are 0 in normalised units
   (and label 0 in ``labels``, even with ``do_reduce_labels``).

The processor needs neither torch nor transformers. Post-processing returns NumPy arrays.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import mlx.core as mx
import numpy as np
from PIL import Image

from ..errors import CheckpointError
from ..io.files import atomic_write_text
from ..io.hub import HubOptions, resolve_file
from ..ops import interpolate_np, interpolation_matrix

CONFIG_NAME = "preprocessor_config.json"

IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# Pillow's resampling filter codes (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming, ...).
_RESAMPLE_CODES = frozenset(int(r) for r in Image.Resampling)
_RETURN_TENSORS = ("np", "mlx", None)

# The options, with the reference's defaults (``DPTImageProcessorPil`` class attributes).
_DEFAULTS: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 384, "width": 384},
    "resample": 3,  # PIL.Image.BICUBIC
    "keep_aspect_ratio": False,
    "ensure_multiple_of": 1,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(IMAGENET_STANDARD_MEAN),
    "image_std": list(IMAGENET_STANDARD_STD),
    "do_pad": False,
    "size_divisor": None,
    "do_reduce_labels": False,
    "do_convert_rgb": None,
}
_OPTION_NAMES = tuple(_DEFAULTS)
_BOOL_OPTIONS = ("do_resize", "keep_aspect_ratio", "do_rescale", "do_normalize", "do_pad", "do_reduce_labels")
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


# ----------------------------------------------------------------------------------------------
# Option validation


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not _is_bool(value) and math.isfinite(float(value))


def _size_dict(size: Any) -> dict[str, int]:
    """int -> square; (height, width) -> dict; {"height", "width"} -> itself. Positive ints only."""
    if _is_int(size):
        height = width = size
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        height, width = size
    elif isinstance(size, Mapping) and "height" in size and "width" in size:
        extra = {k for k, v in size.items() if k not in ("height", "width") and v is not None}
        if extra:
            raise ValueError(f"size={dict(size)!r}: DPT resizes to a height and width only; drop {sorted(extra)}")
        height, width = size["height"], size["width"]
    else:
        raise ValueError(f"size={size!r} is invalid; use an int or {{'height': H, 'width': W}}")
    if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
        raise ValueError(f"size={size!r} is invalid; height and width must be positive integers")
    return {"height": int(height), "width": int(width)}


def _mean_std(name: str, value: Any) -> float | list[float]:
    if _is_real(value):
        values = [float(value)]
        out: float | list[float] = float(value)
    elif isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0 and all(_is_real(v) for v in value):
        values = [float(v) for v in value]
        out = values
    else:
        raise ValueError(f"{name}={value!r} is invalid; use a number or a list of numbers (one per channel)")
    if name == "image_std" and any(v == 0 for v in values):
        raise ValueError(f"image_std={value!r} is invalid; standard deviations must be non-zero")
    return out


def _validate(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check every option and return them normalised (size as a dict, resample as an int, ...)."""
    out = dict(options)
    for name in _BOOL_OPTIONS:
        if not _is_bool(out[name]):
            raise ValueError(f"{name}={out[name]!r} is invalid; use True or False")
        out[name] = bool(out[name])
    if out["do_convert_rgb"] is not None and not _is_bool(out["do_convert_rgb"]):
        raise ValueError(f"do_convert_rgb={out['do_convert_rgb']!r} is invalid; use True, False or None")
    out["size"] = _size_dict(out["size"])
    resample = out["resample"]
    if not (_is_int(resample) and int(resample) in _RESAMPLE_CODES):
        raise ValueError(f"resample={resample!r} is invalid; use a Pillow filter code {sorted(_RESAMPLE_CODES)}")
    out["resample"] = int(resample)
    multiple = out["ensure_multiple_of"]
    if not (_is_int(multiple) and multiple >= 1):
        raise ValueError(f"ensure_multiple_of={multiple!r} is invalid; use a positive integer")
    out["ensure_multiple_of"] = int(multiple)
    if not _is_real(out["rescale_factor"]):
        raise ValueError(f"rescale_factor={out['rescale_factor']!r} is invalid; use a finite number")
    out["rescale_factor"] = float(out["rescale_factor"])
    out["image_mean"] = _mean_std("image_mean", out["image_mean"])
    out["image_std"] = _mean_std("image_std", out["image_std"])
    divisor = out["size_divisor"]
    if divisor is not None:
        if not (_is_int(divisor) and divisor >= 1):
            raise ValueError(f"size_divisor={divisor!r} is invalid; use a positive integer or None")
        out["size_divisor"] = int(divisor)
    return out


# ----------------------------------------------------------------------------------------------
# Inputs -> channels-first arrays


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, mx.array):
        if mx.issubdtype(x.dtype, mx.floating) and x.dtype != mx.float64:
            x = x.astype(mx.float32)  # NumPy has no bfloat16
        return np.array(x)
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__array__"):
        return np.asarray(x)
    raise TypeError(f"expected a PIL image, a NumPy array or an mx.array, got {type(x).__name__}")


def _flatten(inputs: Any, expected_ndims: int, what: str) -> list:
    """One input, a batch array, a list or a list of lists -> a flat list of single inputs."""
    if isinstance(inputs, Image.Image):
        return [inputs]
    if isinstance(inputs, (list, tuple)):
        flat = []
        for item in inputs:
            flat.extend(_flatten(item, expected_ndims, what))
        return flat
    array = _as_numpy(inputs)
    if array.ndim == expected_ndims or (what == "images" and array.ndim == 2):
        return [array]
    if array.ndim == expected_ndims + 1:
        return list(array)
    raise ValueError(f"cannot read {what} from an array of shape {array.shape}")


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8; transparency is composited onto white, as transformers does."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def _array_to_rgb(chw: np.ndarray) -> np.ndarray:
    """(1|3|4, H, W) -> (3, H, W), same dtype; RGBA is blended onto white."""
    channels = chw.shape[0]
    if channels == 1:
        return np.repeat(chw, 3, axis=0)
    if channels == 4:
        integer = np.issubdtype(chw.dtype, np.integer)
        if not integer and (chw.min() < 0.0 or chw.max() > 1.0):
            raise ValueError(
                f"an RGBA float image must lie in [0, 1], got [{chw.min()}, {chw.max()}]; scale it or pass uint8"
            )
        white = 255 if integer else 1.0
        alpha = chw[3:4] / white
        blended = alpha * chw[:3] + (1 - alpha) * white
        return np.round(blended).astype(chw.dtype) if integer else blended.astype(chw.dtype)
    return chw


def _channel_axis(array: np.ndarray) -> int:
    """Channels first if dim 0 is 1, 3 or 4 (ambiguous shapes count as first), else last."""
    if array.shape[0] in (1, 3, 4):
        return 0
    if array.shape[-1] in (1, 3, 4):
        return 2
    raise ValueError(f"cannot find the channel axis of an image of shape {array.shape}; expected 1, 3 or 4 channels")


def _image_to_chw(image: Any, convert_rgb: bool) -> np.ndarray:
    if isinstance(image, Image.Image):
        array = _pil_to_rgb(image) if convert_rgb else np.array(image)
        return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    array = _as_numpy(image)
    if array.ndim == 2:  # (H, W) grayscale
        array = array[None]
    array = np.moveaxis(array, _channel_axis(array), 0)
    return _array_to_rgb(array) if convert_rgb else array


def _map_to_chw(seg_map: Any) -> np.ndarray:
    array = np.array(seg_map) if isinstance(seg_map, Image.Image) else _as_numpy(seg_map)
    if array.ndim != 2:
        raise ValueError(f"a segmentation map must be 2-D (height, width), got shape {array.shape}")
    return array[None]


# ----------------------------------------------------------------------------------------------
# The per-image steps (channels first throughout)


def resize_output_size(
    height: int, width: int, size: Mapping[str, int], keep_aspect_ratio: bool, multiple: int
) -> tuple[int, int]:
    """The (height, width) DPT resizes an image to: fit ``size``, optionally keeping the aspect
    ratio by scaling as little as possible, then round each side to a multiple (half to even)."""
    scale_height = size["height"] / height
    scale_width = size["width"] / width
    if keep_aspect_ratio:
        if abs(1 - scale_width) < abs(1 - scale_height):
            scale_height = scale_width
        else:
            scale_width = scale_height
    new_height = round(scale_height * height / multiple) * multiple
    new_width = round(scale_width * width / multiple) * multiple
    return int(new_height), int(new_width)


def _rescale(array: np.ndarray, scale: float) -> np.ndarray:
    return (array.astype(np.float64) * scale).astype(np.float32)


def _needs_255_scaling(array: np.ndarray) -> bool:
    """Whether an array must be multiplied by 255 before it becomes a uint8 Pillow image."""
    if array.dtype == np.uint8:
        return False
    if np.allclose(array, array.astype(int)):
        if array.min() >= 0 and array.max() <= 255:
            return False
        raise ValueError(f"image values must lie in [0, 255], got [{array.min()}, {array.max()}]")
    if array.min() >= 0 and array.max() <= 1:
        return True
    raise ValueError(
        f"float image values must lie in [0, 1] (or be integers in [0, 255]), got [{array.min()}, {array.max()}]"
    )


def _pil_resize(chw: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """Resize through a uint8 Pillow image exactly as transformers' ``image_transforms.resize``."""
    if height < 1 or width < 1:
        raise ValueError(
            f"cannot resize an image of size {chw.shape[1:]} to {(height, width)}; it is too small for "
            "ensure_multiple_of, so lower ensure_multiple_of or enlarge the image"
        )
    hwc = np.moveaxis(chw, 0, -1)
    if hwc.shape[-1] == 1:
        hwc = hwc[..., 0]
    scaled = _needs_255_scaling(hwc)
    if scaled:
        hwc = _rescale(hwc, 255)
    pil = Image.fromarray(np.ascontiguousarray(hwc.astype(np.uint8)))
    out = np.array(pil.resize((width, height), resample=resample))
    out = np.moveaxis(out[..., None] if out.ndim == 2 else out, -1, 0)
    return _rescale(out, 1 / 255) if scaled else out


def _normalize(chw: np.ndarray, mean: float | list[float], std: float | list[float]) -> np.ndarray:
    if not np.issubdtype(chw.dtype, np.floating):
        chw = chw.astype(np.float32)
    channels = chw.shape[0]
    stats = []
    for name, value in (("image_mean", mean), ("image_std", std)):
        if isinstance(value, list):
            if len(value) != channels:
                raise ValueError(
                    f"{name} has {len(value)} values but the image has {channels} channels; "
                    "use do_convert_rgb=True or give one value per channel"
                )
        else:
            value = [value] * channels
        stats.append(np.array(value, dtype=chw.dtype)[:, None, None])
    return (chw - stats[0]) / stats[1]


def _center_pad(chw: np.ndarray, divisor: int) -> np.ndarray:
    pads = [(0, 0)]
    for length in chw.shape[1:]:
        total = math.ceil(length / divisor) * divisor - length
        pads.append((total // 2, total - total // 2))
    return np.pad(chw, pads, mode="constant", constant_values=0)


def _reduce_labels(labels: np.ndarray) -> np.ndarray:
    labels = labels.copy()  # transformers modifies the caller's array in place; we do not
    labels[labels == 0] = 255
    labels = labels - 1
    labels[labels == 254] = 255
    return labels


def _process(chw: np.ndarray, opts: Mapping[str, Any], is_label: bool) -> np.ndarray:
    if is_label and opts["do_reduce_labels"]:
        chw = _reduce_labels(chw)
    if opts["do_resize"]:
        height, width = resize_output_size(
            chw.shape[1], chw.shape[2], opts["size"], opts["keep_aspect_ratio"], opts["ensure_multiple_of"]
        )
        chw = _pil_resize(chw, height, width, opts["resample"])
    if not is_label:
        if opts["do_rescale"]:
            chw = _rescale(chw, opts["rescale_factor"])
        if opts["do_normalize"]:
            chw = _normalize(chw, opts["image_mean"], opts["image_std"])
    if opts["do_pad"] and opts["size_divisor"] is not None:
        chw = _center_pad(chw, opts["size_divisor"])
    return chw


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


# ----------------------------------------------------------------------------------------------
# Post-processing helpers


def _output_field(outputs: Any, name: str) -> Any:
    value = outputs.get(name) if isinstance(outputs, Mapping) else getattr(outputs, name, None)
    if value is None:
        raise ValueError(f"outputs has no {name!r}; pass the model's output object")
    return value


def _float_numpy(x: Any) -> np.ndarray:
    array = _as_numpy(x)
    return array.astype(np.float32, copy=array.dtype != np.float32)


def _target_sizes(target_sizes: Any, batch: int, what: str) -> list[tuple[int, int] | None]:
    if target_sizes is None:
        return [None] * batch
    if isinstance(target_sizes, (np.ndarray, mx.array)) or hasattr(target_sizes, "__array__"):
        target_sizes = _as_numpy(target_sizes).tolist()
    target_sizes = list(target_sizes)
    if len(target_sizes) != batch:
        raise ValueError(
            f"got {len(target_sizes)} target sizes for a batch of {batch} {what}; pass one (height, width) per image"
        )
    sizes: list[tuple[int, int] | None] = []
    for size in target_sizes:
        if size is None:
            sizes.append(None)
            continue
        if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
            raise ValueError(f"target size {size!r} is invalid; use (height, width) with positive integers")
        sizes.append((int(size[0]), int(size[1])))
    return sizes


# ----------------------------------------------------------------------------------------------


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
        options = {name: given[name] if given[name] is not None else _DEFAULTS[name] for name in _OPTION_NAMES}
        for name, value in _validate(options).items():
            setattr(self, name, value)

    # -- configuration ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict, in the layout of transformers' preprocessor_config.json."""
        out = {name: getattr(self, name) for name in _OPTION_NAMES}
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
        unknown = sorted(set(overrides) - set(_OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown DPTImageProcessor options {unknown}; valid ones are {list(_OPTION_NAMES)}")
        config.update(overrides)
        return cls(**{name: config[name] for name in _OPTION_NAMES if name in config})

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
        or float in [0, 1]), an (N, ...) array, an mx.array, or a list of these.
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
        unknown = sorted(set(overrides) - set(_OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown DPTImageProcessor options {unknown}; valid ones are {list(_OPTION_NAMES)}")
        opts = {name: getattr(self, name) for name in _OPTION_NAMES}
        opts.update({k: v for k, v in overrides.items() if v is not None})
        opts = _validate(opts)

        images = _flatten(images, 3, "images")
        if not images:
            raise ValueError("no images given")
        convert_rgb = opts["do_convert_rgb"] is not False
        pixel_values = [
            _process(_image_to_chw(image, convert_rgb), opts, is_label=False).astype(np.float32, copy=False)
            for image in images
        ]
        data = BatchFeature(pixel_values=_collate("pixel_values", pixel_values, return_tensors))

        if segmentation_maps is not None:
            maps = _flatten(segmentation_maps, 2, "segmentation maps")
            if len(maps) != len(images):
                raise ValueError(f"got {len(maps)} segmentation maps for {len(images)} images; pass one per image")
            labels = [_process(_map_to_chw(m), opts, is_label=True)[0].astype(np.int64) for m in maps]
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
        depth = _float_numpy(_output_field(outputs, "predicted_depth"))
        if depth.ndim == 4 and depth.shape[1] == 1:
            depth = depth[:, 0]
        if depth.ndim != 3:
            raise ValueError(f"predicted_depth must have shape (batch, height, width), got {depth.shape}")
        results = []
        for one, size in zip(depth, _target_sizes(target_sizes, len(depth), "depth maps")):
            if size is not None:
                one = interpolate_np(one, size, "bicubic", align_corners=False)
            results.append({"predicted_depth": np.array(one, dtype=np.float32)})
        return results

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
        logits = _float_numpy(_output_field(outputs, "logits"))
        if logits.ndim != 4:
            raise ValueError(f"logits must have shape (batch, classes, height, width), got {logits.shape}")
        results: list = []
        for scores, size in zip(logits, _target_sizes(target_sizes, len(logits), "logits")):
            size = scores.shape[-2:] if size is None else size
            if not return_segmentation_scores:
                results.append(segment(scores, size))
                continue
            scores = np.array(interpolate_np(scores, size, "bilinear", align_corners=False), dtype=np.float32)
            results.append(BatchFeature(segmentation=scores.argmax(axis=0).astype(np.int64), segmentation_scores=scores))
        return results


# Segmentation logits are resized to the target size before the argmax in bands of output rows
# holding at most this many bytes of resized logits.
_BAND_BYTES = 64 * 2**20


def segment(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits -> (H, W) int64 class map: bilinear resize (align_corners=False) then argmax.

    The same maths as transformers' ``post_process_semantic_segmentation``, done as two 2-D
    matrix products per band of output rows, so the (C, H, W) resized logits are never held
    at once: fast, and bounded memory for large photos.
    """
    channels, h, w = logits.shape
    height, width = int(size[0]), int(size[1])
    wh = interpolation_matrix(h, height, "bilinear", False).astype(np.float32)
    ww = interpolation_matrix(w, width, "bilinear", False).astype(np.float32)
    rows = np.ascontiguousarray(np.asarray(logits, dtype=np.float32).transpose(1, 2, 0)).reshape(h, w * channels)
    out = np.empty((height, width), dtype=np.int64)
    band = max(1, _BAND_BYTES // (4 * channels * max(width, w)))
    for top in range(0, height, band):
        a = wh[top:top + band] @ rows  # (b, w*C): resized along the height
        b = a.shape[0]
        a = np.ascontiguousarray(a.reshape(b, w, channels).transpose(1, 0, 2)).reshape(w, b * channels)
        scores = (ww @ a).reshape(width, b, channels)  # resized along the width
        out[top:top + b] = scores.argmax(axis=-1).T
    return out


# The name transformers used before image processors; same class.
DPTFeatureExtractor = DPTImageProcessor

__all__ = ["BatchFeature", "DPTFeatureExtractor", "DPTImageProcessor", "resize_output_size"]

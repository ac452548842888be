"""The DPT image processor's options and per-image steps, in NumPy and Pillow.

Each step reproduces transformers' ``DPTImageProcessorPil`` exactly (same Pillow calls, same
NumPy dtypes), on channels-first (C, H, W) arrays. :func:`process` applies them to one
image or segmentation map, in this order:

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

:func:`validate_options` checks and normalises the options first.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import mlx.core as mx
import numpy as np
from PIL import Image

IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# Pillow's resampling filter codes (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming, ...).
_RESAMPLE_CODES = frozenset(int(r) for r in Image.Resampling)

# The options, with the reference's defaults (``DPTImageProcessorPil`` class attributes).
DEFAULTS: dict[str, Any] = {
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
OPTION_NAMES = tuple(DEFAULTS)
_BOOL_OPTIONS = ("do_resize", "keep_aspect_ratio", "do_rescale", "do_normalize", "do_pad", "do_reduce_labels")


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


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
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


def as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, mx.array):
        if mx.issubdtype(x.dtype, mx.floating) and x.dtype != mx.float64:
            x = x.astype(mx.float32)  # NumPy has no bfloat16
        return np.array(x)
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__array__"):
        return np.asarray(x)
    raise TypeError(f"expected a PIL image, a NumPy array or an mx.array, got {type(x).__name__}")


def check_image_array(array: np.ndarray, channels_first: bool, what: str = "image") -> np.ndarray:
    """``array`` if it can be an image: real numbers (bool, integer or float), at least one pixel,
    and no NaN or inf; else a one-line ValueError. Its spatial axes are the two last
    (``channels_first``) or the two first of a 3-D array, the two of a 2-D one."""
    if not (array.dtype == np.bool_ or (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array))):
        raise ValueError(f"{what} arrays must hold real numbers (integers or floats), got dtype {array.dtype}")
    if array.ndim in (2, 3):
        height, width = array.shape[-2:] if channels_first or array.ndim == 2 else array.shape[:2]
        if height == 0 or width == 0:
            raise ValueError(f"the {what} is empty ({width}x{height} pixels)")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            kind = "NaN" if np.isnan(array).any() else "inf"
            raise ValueError(f"the {what} contains {kind} ({int(bad.sum())} values); its values must be finite")
    return array


def flatten_inputs(inputs: Any, expected_ndims: int, what: str) -> list:
    """One input, a batch array, a list or a list of lists -> a flat list of single inputs."""
    if isinstance(inputs, Image.Image):
        return [inputs]
    if isinstance(inputs, (list, tuple)):
        flat = []
        for item in inputs:
            flat.extend(flatten_inputs(item, expected_ndims, what))
        return flat
    array = as_numpy(inputs)
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


def image_to_chw(image: Any, convert_rgb: bool) -> np.ndarray:
    """One image (PIL, or an (H, W) / HWC / CHW array) -> (C, H, W); an empty image, or one with
    NaN, inf or values that are not real numbers, is a ValueError."""
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"the image is empty ({image.width}x{image.height} pixels)")
        array = _pil_to_rgb(image) if convert_rgb else np.array(image)
        array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        return check_image_array(array, channels_first=True)
    array = as_numpy(image)
    if array.ndim == 2:  # (H, W) grayscale
        array = array[None]
    array = np.moveaxis(array, _channel_axis(array), 0)
    check_image_array(array, channels_first=True)
    return _array_to_rgb(array) if convert_rgb else array


def map_to_chw(seg_map: Any) -> np.ndarray:
    array = np.array(seg_map) if isinstance(seg_map, Image.Image) else as_numpy(seg_map)
    if array.ndim != 2:
        raise ValueError(f"a segmentation map must be 2-D (height, width), got shape {array.shape}")
    return check_image_array(array, channels_first=True, what="segmentation map")[None]


# ----------------------------------------------------------------------------------------------
# The per-image steps (channels first throughout)


def resize_output_size(
    height: int, width: int, size: Mapping[str, int], keep_aspect_ratio: bool, multiple: int
) -> tuple[int, int]:
    """The (height, width) DPT resizes an image to: fit ``size``, optionally keeping the aspect
    ratio by scaling as little as possible, then round each side to a multiple (half to even)."""
    if height < 1 or width < 1:
        raise ValueError(f"the image is empty ({width}x{height} pixels)")
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


def rescale(array: np.ndarray, scale: float) -> np.ndarray:
    """``array * scale`` computed in float64 and stored as float32, as transformers' ``rescale``."""
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
        hwc = rescale(hwc, 255)
    pil = Image.fromarray(np.ascontiguousarray(hwc.astype(np.uint8)))
    out = np.array(pil.resize((width, height), resample=resample))
    out = np.moveaxis(out[..., None] if out.ndim == 2 else out, -1, 0)
    return rescale(out, 1 / 255) if scaled else out


def normalize(chw: np.ndarray, mean: float | list[float], std: float | list[float]) -> np.ndarray:
    """``(chw - mean) / std`` per channel of a (C, H, W) array, in its float dtype (float32 for
    integers), as transformers' ``normalize``; a list needs one value per channel."""
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


def center_pad(chw: np.ndarray, divisor: int, fill: float = 0) -> np.ndarray:
    """Pad (C, H, W) with ``fill`` to multiples of ``divisor`` in H and W, centred (an odd extra
    row or column goes at the bottom / right)."""
    pads = [(0, 0)]
    for length in chw.shape[1:]:
        total = math.ceil(length / divisor) * divisor - length
        pads.append((total // 2, total - total // 2))
    return np.pad(chw, pads, mode="constant", constant_values=fill)


def reduce_labels(labels: np.ndarray) -> np.ndarray:
    """transformers' ``do_reduce_labels``: 0 (background) -> 255, other ids - 1, 254 -> 255; a new array."""
    labels = labels.copy()  # transformers modifies the caller's array in place; we do not
    labels[labels == 0] = 255
    labels = labels - 1
    labels[labels == 254] = 255
    return labels


def process(chw: np.ndarray, opts: Mapping[str, Any], is_label: bool) -> np.ndarray:
    """One (C, H, W) image (or (1, H, W) label map, ``is_label``) through the steps the validated
    options ``opts`` switch on, in the order of this module's docstring."""
    if is_label and opts["do_reduce_labels"]:
        chw = reduce_labels(chw)
    if opts["do_resize"]:
        height, width = resize_output_size(
            chw.shape[1], chw.shape[2], opts["size"], opts["keep_aspect_ratio"], opts["ensure_multiple_of"]
        )
        chw = _pil_resize(chw, height, width, opts["resample"])
    if not is_label:
        if opts["do_rescale"]:
            chw = rescale(chw, opts["rescale_factor"])
        if opts["do_normalize"]:
            chw = normalize(chw, opts["image_mean"], opts["image_std"])
    if opts["do_pad"] and opts["size_divisor"] is not None:
        chw = center_pad(chw, opts["size_divisor"])
    return chw


__all__ = [
    "DEFAULTS",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "IMAGENET_STANDARD_MEAN",
    "IMAGENET_STANDARD_STD",
    "OPTION_NAMES",
    "as_numpy",
    "center_pad",
    "check_image_array",
    "flatten_inputs",
    "image_to_chw",
    "map_to_chw",
    "normalize",
    "process",
    "reduce_labels",
    "rescale",
    "resize_output_size",
    "validate_options",
]

"""Reading a metric depth prompt (an iPhone LiDAR map, a depth sensor's frame) from a file.

Prompt Depth Anything takes a low-resolution depth map in metres beside the photo. Files hold it
in one of two conventions, told apart by the file:

- ``.npy`` and floating-point TIFFs (Pillow mode ``F``): metres;
- 16-bit (or 8-bit) integer PNGs and TIFFs: millimetres, as ARKit / PromptDA exports them.

``scale`` overrides the convention (metres per stored unit). Every problem is a one-line
ImageError naming the file: the map must be 2-D, at least 2x2, finite, non-negative and not all
zero.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image

from ..errors import ImageError

PROMPT_EXTENSIONS = (".npy", ".png", ".tif", ".tiff")
MILLIMETRES = 0.001
MAX_PROMPT_PIXELS = 4096 * 4096  # a depth prompt is low resolution; refuse what would exhaust memory


def _read_array(path: str) -> tuple[np.ndarray, float]:
    """The stored values and the metres per unit their convention implies."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            array = np.load(path, allow_pickle=False, mmap_mode="r")
        except ValueError as e:  # an object array (needs pickle) or a malformed header
            raise ImageError(f"{path}: cannot read the depth prompt: {str(e).splitlines()[0]}") from None
        if array.dtype.kind not in "fiub":
            raise ImageError(f"{path}: a depth prompt must hold numbers, got dtype {array.dtype}")
        if array.size > MAX_PROMPT_PIXELS:
            raise ImageError(f"{path}: the depth prompt has {array.size} values; at most {MAX_PROMPT_PIXELS}")
        return np.array(array, dtype=np.float64), 1.0
    if ext not in PROMPT_EXTENSIONS:
        raise ImageError(f"{path}: a depth prompt must be {', '.join(PROMPT_EXTENSIONS)}, got {ext or 'no extension'}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if image.width * image.height > MAX_PROMPT_PIXELS:
                raise ImageError(
                    f"{path}: the depth prompt is {image.width}x{image.height}; at most {MAX_PROMPT_PIXELS} pixels"
                )
            if image.mode not in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
                raise ImageError(
                    f"{path}: a depth prompt must be a one-channel image (16-bit, 32-bit or float), "
                    f"got mode {image.mode}"
                )
            array = np.array(image)
    return array.astype(np.float64), (1.0 if image.mode == "F" else MILLIMETRES)


def read_prompt_depth(path: str | os.PathLike, scale: float | None = None) -> np.ndarray:
    """The (H, W) float32 prompt in metres stored in ``path`` (see the module docstring)."""
    path = os.fspath(path)
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise ImageError(f"the depth prompt scale must be a positive number, got {scale!r}")
    try:
        array, implied = _read_array(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such depth prompt file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not a depth prompt file") from None
    except (OSError, Image.DecompressionBombWarning, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot read the depth prompt: {str(e).splitlines()[0] if str(e) else e}") from None
    return check_prompt_depth(array, path) * np.float32(implied if scale is None else scale)


def check_prompt_depth(array, what: str = "the depth prompt") -> np.ndarray:
    """``array`` as (H, W) float32 if it is a usable depth map (2-D after dropping unit axes,
    at least 2x2, finite, non-negative, not all zero); else a one-line ImageError."""
    array = np.asarray(array)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:2])
    if array.ndim != 2:
        raise ImageError(f"{what}: a depth prompt must be a 2-D (height, width) map, got shape {array.shape}")
    if min(array.shape) < 2:
        raise ImageError(f"{what}: a depth prompt must be at least 2x2, got {array.shape[0]}x{array.shape[1]}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ImageError(f"{what}: the depth prompt contains NaN or inf; fill its holes first")
    if (array < 0).any():
        raise ImageError(f"{what}: the depth prompt has negative values; depth is a distance (>= 0)")
    if not array.max() > 0:
        raise ImageError(f"{what}: the depth prompt is all zero")
    return array

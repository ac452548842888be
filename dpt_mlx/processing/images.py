"""Reading images for inference and training: files, URLs, encoded bytes, PIL images or arrays -> upright 8-bit RGB.

:func:`load_image` follows transformers' ``load_image`` (http(s) URLs fetched, EXIF orientation
applied, then ``convert("RGB")``) and turns problems with a file into a one-line :class:`ImageError`;
:func:`list_images` lists the images in a folder (or below it). HEIC/HEIF files are read with
pillow-heif when it is installed (``pip install "dpt_mlx[heic]"``).
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageError, first_line
from .transforms import as_numpy, check_image_array

HEIF_EXTENSIONS = (".heic", ".heif")
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pnm",
    *HEIF_EXTENSIONS,
)
MAX_DOWNLOAD = 50 * 2**20  # bytes: a larger URL is refused
URL_TIMEOUT = 30.0  # seconds


def is_url(source: Any) -> bool:
    """Whether ``source`` is an http:// or https:// URL string."""
    return isinstance(source, str) and source[:8].lower().startswith(("http://", "https://"))


def url_name(url: str) -> str:
    """A file name for a URL input: its last path component, sanitised (never hidden, never empty)."""
    parts = urllib.parse.urlsplit(url)
    last = urllib.parse.unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", last).lstrip("._")
    return name or re.sub(r"[^A-Za-z0-9.-]+", "_", parts.hostname or "").strip("._") or "image"


def _heif_opener(source: Any, required: bool) -> None:
    """Register pillow-heif's opener with Pillow; without pillow-heif an ImageError if ``required``."""
    try:
        import pillow_heif
    except ImportError:
        if required:
            raise ImageError(
                f'{source}: reading HEIC/HEIF images needs pillow-heif: pip install "dpt_mlx[heic]"'
            ) from None
        return
    if not getattr(pillow_heif, "_dpt_mlx_registered", False):
        pillow_heif.register_heif_opener()
        pillow_heif._dpt_mlx_registered = True


def _fetch(url: str) -> io.BytesIO:
    """The bytes at ``url`` (at most MAX_DOWNLOAD), in memory; a one-line ImageError when that fails."""
    request = urllib.request.Request(url, headers={"User-Agent": "dpt_mlx"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as response:
            data = response.read(MAX_DOWNLOAD + 1)
    except urllib.error.HTTPError as e:
        raise ImageError(f"cannot fetch {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, BaseException):
            reason = getattr(reason, "strerror", None) or first_line(reason)
        raise ImageError(f"cannot fetch {url}: {reason}") from None
    except (OSError, ValueError) as e:  # timeouts, resets, malformed URLs
        raise ImageError(f"cannot fetch {url}: {first_line(e)}") from None
    if len(data) > MAX_DOWNLOAD:
        raise ImageError(f"cannot fetch {url}: larger than {MAX_DOWNLOAD // 2**20} MB")
    return io.BytesIO(data)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit grayscale images -> "L" (``convert("RGB")`` would clip them to white).

    A float ("F") image with NaN or inf is a ValueError."""
    if image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float64) / 257.0
    elif image.mode in ("I", "F"):
        array = check_image_array(np.asarray(image, dtype=np.float64), channels_first=True)
        high = array.max() if array.size else 0
        if image.mode == "F" and high <= 1.0:
            array = array * 255.0
        elif high > 255:
            array = array / (65535.0 if high <= 65535 else high) * 255.0
    else:
        return image
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))


def _decode(file: Any, source: Any) -> Image.Image:
    """Open and decode ``file`` (a path or a binary file object), EXIF orientation applied, 8-bit;
    a one-line ImageError naming ``source`` when it cannot be read."""
    try:
        with warnings.catch_warnings():  # a large image below Pillow's bomb limit is read (a warning is not one line)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                opened.load()  # decode now: a truncated file fails here, not later
                image = ImageOps.exif_transpose(opened)
    except PermissionError:
        raise ImageError(f"cannot read {source}: permission denied") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{source} is too large to open safely ({e})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{source} is not an image Pillow can read (corrupt file or unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = first_line(e)
        raise ImageError(f"cannot decode {source}: {reason}; the file is corrupt or incomplete") from None
    try:
        return _to_8bit(image)
    except ValueError as e:
        raise ImageError(f"{source}: {e}") from None


def decode_image(data: bytes | bytearray | memoryview, name: Any = "image bytes") -> Image.Image:
    """An encoded image file's bytes (JPEG, PNG, ...; HEIC with pillow-heif) -> an upright RGB PIL image,
    as :func:`load_image` reads the file; ``name`` (the file's path or URI) names it in errors."""
    _heif_opener(name, required=False)
    image = _decode(io.BytesIO(bytes(data)), name)
    if image.width == 0 or image.height == 0:
        raise ValueError(f"the image is empty ({image.width}x{image.height} pixels)")
    return image.convert("RGB")


def load_image(source: Any) -> Image.Image:
    """A path, http(s) URL, encoded bytes, PIL image or array (HWC / HW; uint8, or float in [0, 1]) -> an
    upright RGB PIL image.

    Like transformers' ``load_image``: a URL is fetched, the EXIF orientation is applied and the
    image is converted with ``convert("RGB")`` (grayscale is repeated, an alpha channel is dropped).
    Problems with a file, URL or bytes raise :class:`ImageError` with a one-line message.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(source)
    if isinstance(source, (str, os.PathLike)):
        if is_url(source):
            _heif_opener(source, required=False)
            path = _fetch(source)
        else:
            path = Path(os.path.expanduser(os.fspath(source)))
            _check_path(path, source)
            if path.suffix.lower() in HEIF_EXTENSIONS:
                _heif_opener(source, required=True)
        image = _decode(path, source)
    elif isinstance(source, Image.Image):
        image = _to_8bit(ImageOps.exif_transpose(source))
    elif isinstance(source, (np.ndarray, mx.array)) or hasattr(source, "__array__"):
        image = Image.fromarray(_array_to_uint8(as_numpy(source)))
    else:
        raise TypeError(f"expected an image path, encoded bytes, a PIL image or an array, got {type(source).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"the image is empty ({image.width}x{image.height} pixels)")
    return image.convert("RGB")


def _check_path(path: Path, source: Any) -> None:
    """An ImageError unless ``path`` names something that can be opened as a file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(f"{source} is a symbolic link to a missing file ({os.readlink(path)})") from None
        raise ImageError(f"no such image file: {source}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError(f"{source} is a symbolic link loop") from None
        raise ImageError(f"cannot read {source}: {(e.strerror or first_line(e)).lower()}") from None
    if stat.S_ISDIR(mode):
        raise ImageError(f"{source} is a directory, not an image (use --input-dir for a folder)")
    if stat.S_ISREG(mode) and path.stat().st_size == 0:
        raise ImageError(f"{source} is empty (0 bytes), not an image")


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an image array (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    check_image_array(array, channels_first=False)
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating) and array.size and array.min() >= 0 and array.max() <= 1:
        return np.round(array * 255).astype(np.uint8)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"image values must lie in [0, 255] (or [0, 1] for floats), got [{array.min()}, {array.max()}]"
        )
    return np.round(array).astype(np.uint8)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def list_images(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files (by extension, case-insensitive) in ``directory``, sorted; hidden files skipped.

    ``recursive``: every image below ``directory`` too, sorted by relative path; hidden folders are
    skipped and symbolic links to folders are not followed (so a link loop cannot hang the listing).
    """
    directory = Path(directory)
    if not recursive:
        return sorted(p for p in directory.iterdir() if _is_image(p))

    def fail(error: OSError) -> None:
        raise error

    found = []
    for root, dirs, files in os.walk(directory, onerror=fail, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(p for p in (Path(root) / f for f in sorted(files)) if _is_image(p))
    return found


__all__ = ["HEIF_EXTENSIONS", "IMAGE_EXTENSIONS", "decode_image", "is_url", "list_images", "load_image", "url_name"]

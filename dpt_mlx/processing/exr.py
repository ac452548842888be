"""Depth maps as OpenEXR images: one float32 channel ``Z`` holding the depth exactly as the model
predicts it (metres for metric models, relative values otherwise; no normalisation), ZIP
compressed (lossless), with what the values are in the header as string attributes.

Written and read with the Academy Software Foundation's ``OpenEXR`` Python bindings (PyPI
``OpenEXR`` >= 3.3: wheels for Linux, macOS and Windows, the library itself inside, and a plain
``OpenEXR.File`` API). imageio's EXR support goes through the FreeImage plugin, whose library
imageio downloads at run time rather than installing it, so it is not used.
"""

from __future__ import annotations

import os

import numpy as np

EXR_EXTRA = 'pip install "dpt_mlx[exr]"'
CHANNEL = "Z"  # the channel name compositing tools (Nuke, After Effects' EXR plug-ins) read depth from


def require_openexr():
    """The OpenEXR module, or ImportError with the install command."""
    try:
        import OpenEXR
    except ImportError:
        raise ImportError(f"writing EXR depth maps needs OpenEXR: {EXR_EXTRA}") from None
    return OpenEXR


def save_exr(
    depth: np.ndarray, path: str | os.PathLike, attributes: dict[str, str] | None = None, overwrite: bool = True
) -> None:
    """Write ``depth`` (H, W) as a float32 EXR with channel ``Z`` and the string ``attributes`` in its
    header, atomically; ``overwrite=False``: FileExistsError rather than replacing a file of that name."""
    from ..io.files import atomic_write

    openexr = require_openexr()
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"expected a depth map of shape (H, W), got shape {depth.shape}")
    header = {"compression": openexr.ZIP_COMPRESSION, "type": openexr.scanlineimage}
    header.update({str(k): str(v) for k, v in (attributes or {}).items()})
    image = openexr.File(header, {CHANNEL: depth})
    atomic_write(path, image.write, overwrite=overwrite)


def read_exr(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """The ``Z`` channel of an EXR written by :func:`save_exr` as float32 (H, W), and its header."""
    openexr = require_openexr()
    image = openexr.File(os.fspath(path), separate_channels=True)
    channels = image.channels()
    if CHANNEL not in channels:
        raise ValueError(f"{path} has no {CHANNEL} channel (it has {', '.join(channels) or 'none'})")
    return np.asarray(channels[CHANNEL].pixels, dtype=np.float32), image.header()

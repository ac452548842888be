"""Video frames in and out, one at a time, and depth normalisation that holds still over a video.

Decoding and encoding use PyAV (the optional ``video`` extra); :func:`require_av` turns its absence
into one line that says what to install. Nothing here holds more than one frame (the encoder) or the
first ``warmup`` frames' depth (the stabiliser) in memory.

H.264 in yuv420p needs even sides: a frame of odd width or height is padded by repeating its last
column / row, so such a video comes out one pixel wider / taller (:func:`even_size`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from ..errors import UsageError
from .visualize import colormap_lut

INSTALL = 'video needs PyAV: pip install "dpt_mlx[video]"'


def require_av():
    """The ``av`` module, or a UsageError that says how to install it."""
    try:
        import av
    except ImportError:
        raise UsageError(INSTALL) from None
    return av


# ----------------------------------------------------------------------------------------------
# Decoding


class VideoReader:
    """The frames of a video's first video stream, as (PIL RGB image, time in seconds), decoded lazily.

    ``size`` is (height, width); ``rate`` the stream's average frame rate (a Fraction); ``frames``
    the count the container states (0 when it does not say).
    """

    def __init__(self, path: str | os.PathLike):
        av = require_av()
        try:
            self.container = av.open(os.fspath(path))
        except (av.FFmpegError, OSError) as e:
            raise UsageError(f"cannot read video {path}: {e}") from None
        if not self.container.streams.video:
            self.container.close()
            raise UsageError(f"{path} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        ctx = self.stream.codec_context
        self.size = (ctx.height, ctx.width)
        self.rate = Fraction(self.stream.average_rate or self.stream.guessed_rate or 25)
        self.frames = int(self.stream.frames or 0)

    def __iter__(self) -> Iterator[tuple[object, float]]:
        for i, frame in enumerate(self.container.decode(self.stream)):
            time = float(frame.time) if frame.time is not None else i / float(self.rate)
            yield frame.to_image(), time  # RGB

    def close(self) -> None:
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------------------
# Encoding


def even_size(height: int, width: int) -> tuple[int, int]:
    """The size H.264 / yuv420p can hold: each side rounded up to even."""
    return height + height % 2, width + width % 2


def pad_even(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (even H, even W, 3), repeating the last row / column where a side is odd."""
    h, w = rgb.shape[:2]
    eh, ew = even_size(h, w)
    if (eh, ew) == (h, w):
        return rgb
    return np.pad(rgb, ((0, eh - h), (0, ew - w), (0, 0)), mode="edge")


class VideoWriter:
    """H.264 (libx264, yuv420p) frames into an .mp4 file object or path, at a constant ``rate``.

    ``crf`` 18 (visually lossless for colour maps). Frame k gets pts k in a 1/rate time base.
    """

    def __init__(self, target, size: tuple[int, int], rate: Fraction, crf: int = 18):
        av = require_av()
        self.container = av.open(target, mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=rate)
        height, width = even_size(*size)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.count = 0
        self._av = av

    def write(self, rgb: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_even(rgb)), format="rgb24")
        frame.pts = self.count
        self.count += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away
            pass


def colorize(unit: np.ndarray, colormap: str) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 through ``colormap`` (as visualize.colorize_depth)."""
    index = np.round(np.clip(unit, 0.0, 1.0) * 255).astype(np.uint8)
    return colormap_lut(colormap)[index]


# ----------------------------------------------------------------------------------------------
# Normalisation


def fit_scale_shift(depth: np.ndarray, reference: np.ndarray, step: int = 4) -> tuple[float, float]:
    """Least-squares (s, t) minimising ||s * depth + t - reference||² (on every ``step``-th pixel)."""
    x = depth[::step, ::step].astype(np.float64).ravel()
    y = reference[::step, ::step].astype(np.float64).ravel()
    xm, ym = x.mean(), y.mean()
    var = ((x - xm) ** 2).mean()
    if not var > 0:
        return 1.0, float(ym - xm)
    s = ((x - xm) * (y - ym)).mean() / var
    return float(s), float(ym - s * xm)


class Stabilizer:
    """Per-frame depth -> values in [0, 1] that do not flicker.

    Each frame is aligned by least squares (scale and shift) to a reference, the exponential moving
    average (weight ``momentum`` for the new frame) of the aligned frames before it; the first frame
    is its own reference. The normalisation range is the min / max of the first ``warmup`` aligned
    frames (held back until then), extended when a later frame goes outside it, so the video stays
    one pass. :meth:`push` returns the frames that are ready, in order; :meth:`flush` the rest.
    """

    def __init__(self, momentum: float = 0.2, warmup: int = 16):
        self.momentum, self.warmup = momentum, warmup
        self.reference: np.ndarray | None = None
        self.low = self.high = None
        self.held: list[np.ndarray] = []

    def align(self, depth: np.ndarray) -> np.ndarray:
        depth = np.asarray(depth, dtype=np.float32)
        if self.reference is None:
            aligned = depth
            self.reference = depth.astype(np.float32, copy=True)
        else:
            s, t = fit_scale_shift(depth, self.reference)
            aligned = (depth * s + t).astype(np.float32)
            self.reference += self.momentum * (aligned - self.reference)
        return aligned

    def _extend(self, aligned: np.ndarray) -> None:
        low, high = float(aligned.min()), float(aligned.max())
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)

    def _unit(self, aligned: np.ndarray) -> np.ndarray:
        span = self.high - self.low
        return (aligned - self.low) / span if span > 0 else np.zeros_like(aligned)

    def push(self, depth: np.ndarray) -> list[np.ndarray]:
        aligned = self.align(depth)
        self._extend(aligned)
        if self.held is not None:
            self.held.append(aligned)
            if len(self.held) < self.warmup:
                return []
            return self.flush()
        return [self._unit(aligned)]

    def flush(self) -> list[np.ndarray]:
        held, self.held = self.held or [], None
        return [self._unit(a) for a in held]


def flicker(units: Iterator[np.ndarray]) -> float:
    """Mean absolute frame-to-frame change of normalised ([0, 1]) depth frames."""
    previous, total, count = None, 0.0, 0
    for unit in units:
        unit = np.asarray(unit, dtype=np.float64)
        if previous is not None:
            total += float(np.abs(unit - previous).mean())
            count += 1
        previous = unit
    return total / count if count else 0.0

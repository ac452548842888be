"""Video frames in and out, one at a time, and depth normalisation that holds still over a video.

Decoding and encoding use PyAV (the optional ``video`` extra); :func:`require_av` turns its absence
into one line that says what to install. Nothing here holds more than one frame (the encoder) or the
first ``warmup`` frames' depth (the stabiliser) in memory.

Frames are read as a player shows them: a clip stored with a display rotation (phones store portrait
clips as landscape frames with a 90-degree display matrix) is turned upright, mirrored where the matrix
says so, as ffplay / ffmpeg's autorotate do, so depth is computed on the upright picture and written
upright (the depth mp4 carries no display matrix; its frames are the upright ones). A stream that
changes resolution mid-way has its later frames scaled to the first frame's size when the shape is
the same, and is refused when the shape changes. A video that cannot be decoded whole (a corrupt or
truncated packet, a decoder error, a stream that stops short of the duration its container states) is
an error, raised when the reader gets there: a video is never half-processed without a word.

Each depth frame keeps its source frame's presentation time (variable frame rates stay variable),
written in a 1/90000 s time base; :func:`mux_audio` copies the source's first audio stream into the
finished mp4 as it is (no re-encoding).

H.264 in yuv420p needs even sides: a frame of odd width or height is padded by repeating its last
column / row, so such a video comes out one pixel wider / taller (:func:`even_size`).
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from ..errors import UsageError
from .visualize import colormap_lut

INSTALL = 'video needs PyAV: pip install "dpt_mlx[video]"'
TIME_BASE = Fraction(1, 90000)  # the depth mp4's timestamps: MPEG's 90 kHz clock
ASPECT_TOLERANCE = 0.01  # a resolution change within 1 % of the first frame's shape is scaled, not refused
# containers whose stated stream duration comes from their index, not a bitrate estimate
_INDEXED = ("mov", "mp4", "matroska", "webm")


def require_av():
    """The ``av`` module, or a UsageError that says how to install it."""
    try:
        import av
    except ImportError:
        raise UsageError(INSTALL) from None
    return av


# ----------------------------------------------------------------------------------------------
# Orientation


def display_matrix(frame) -> np.ndarray | None:
    """The frame's display matrix (9 int32, FFmpeg's 16.16 fixed-point layout), or None without one."""
    for data in frame.side_data:
        if data.type.name == "DISPLAYMATRIX":
            return np.frombuffer(bytes(data), dtype="<i4", count=9)
    return None


def upright(rgb: np.ndarray, rotation: float, matrix: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) decoded -> as displayed, following ffplay's autorotate.

    ``rotation`` is PyAV's ``frame.rotation``: the counter-clockwise angle of the display matrix (a
    phone's portrait clip says -90: turn the stored frame 90 degrees clockwise). ``matrix`` decides
    the mirrored cases. Angles that are not a multiple of 90 degrees are refused.
    """
    theta = -round(rotation) % 360  # clockwise, as ffplay's get_rotation
    m = matrix if matrix is not None else np.array([1, 0, 0, 0, 1, 0, 0, 0, 1])
    if theta == 90:  # transpose=clock, or cclock_flip (a plain transpose) when mirrored
        return rgb.swapaxes(0, 1) if m[3] > 0 else np.rot90(rgb, -1)
    if theta == 180:  # hflip and / or vflip: both is the rotation
        rgb = rgb[:, ::-1] if m[0] < 0 else rgb
        return rgb[::-1] if m[4] < 0 else rgb
    if theta == 270:  # transpose=cclock, or clock_flip (an anti-transpose) when mirrored
        return np.rot90(rgb, -1)[::-1] if m[3] < 0 else np.rot90(rgb, 1)
    if theta == 0:
        return rgb[::-1] if m[4] < 0 else rgb
    raise UsageError(
        f"the video is displayed rotated by {theta} degrees; only multiples of 90 are supported (re-encode it upright)"
    )


# ----------------------------------------------------------------------------------------------
# Decoding


def _duration_tag(text: str | None) -> float | None:
    """Matroska's per-track DURATION tag ("00:00:02.000000000") in seconds, or None."""
    match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", (text or "").strip())
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


class VideoReader:
    """The frames of a video's first video stream, upright, as (PIL RGB image, time in seconds), decoded lazily.

    The first frame is decoded on opening: ``size`` is its (height, width) as displayed (after any
    rotation; every later frame is brought to it or refused); ``rotation`` the clockwise turn applied
    to it (0, 90, 180, 270); ``rate`` the stream's average frame rate (a Fraction); ``frames`` the
    count the container states (0 when it does not say); ``audio`` the first audio stream's codec
    name, or None; ``resized`` how many frames were scaled to ``size`` so far. Any problem with the
    video (unreadable, no video stream, no frames, a corrupt packet or frame, a decoder error, a
    stream that ends before its stated duration) is a UsageError naming the file.
    """

    def __init__(self, path: str | os.PathLike):
        self._av = av = require_av()
        self.path = os.fspath(path)
        try:
            self.container = av.open(self.path)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise UsageError(f"cannot read video {path}: {_reason(e)} (not a video, or truncated?)") from None
        try:
            self._open()
        except BaseException:
            self.container.close()
            raise

    def _open(self) -> None:
        if not self.container.streams.video:
            raise UsageError(f"{self.path} has no video stream")
        self.stream = stream = self.container.streams.video[0]
        if stream.codec_context is None:
            raise UsageError(
                f"cannot read video {self.path}: its video stream has no decodable codec (truncated or damaged?)"
            )
        stream.thread_type = "AUTO"
        self.rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
        self.frames = int(stream.frames or 0)
        audio = self.container.streams.audio
        self.audio = audio[0].codec_context.name if audio and audio[0].codec_context is not None else None
        self.resized, self.rotation = 0, 0
        self.size: tuple[int, int] | None = None
        self._frames = self._decode()
        first = next(self._frames, None)
        if first is None:
            raise UsageError(f"{self.path} has no frames")
        self._first = first

    def _damaged(self, count: int, what: str) -> UsageError:
        return UsageError(f"{self.path} is damaged or truncated: {what} after {count} good frames")

    def _decode(self) -> Iterator[tuple[object, float]]:
        """(upright RGB image, seconds) for every frame, checking the stream as it goes."""
        from PIL import Image

        av, count, time, step = self._av, 0, None, 1 / float(self.rate)
        try:
            for packet in self.container.demux(self.stream):
                if packet.is_corrupt:
                    raise self._damaged(count, "a corrupt packet")
                for frame in packet.decode():
                    if frame.is_corrupt:
                        raise self._damaged(count, "a corrupt frame")
                    time = float(frame.time) if frame.time is not None else (0.0 if time is None else time + step)
                    if frame.duration and frame.time_base:
                        step = float(frame.duration * frame.time_base)
                    yield Image.fromarray(self._fit(self._upright(frame), count)), time
                    count += 1
        except av.FFmpegError as e:
            raise self._damaged(count, f"a decoding error ({_reason(e)})") from None
        if count:
            self._check_end(time + step, count)

    def _upright(self, frame) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24")
        rotation = frame.rotation
        if self.size is None:
            self.rotation = -round(rotation) % 360
        return np.ascontiguousarray(upright(rgb, rotation, display_matrix(frame)))

    def _fit(self, rgb: np.ndarray, index: int) -> np.ndarray:
        """The first frame sets the size; a later frame of another size is scaled to it (same shape) or refused."""
        height, width = rgb.shape[:2]
        if self.size is None:
            self.size = (height, width)
            return rgb
        if (height, width) == self.size:
            return rgb
        h0, w0 = self.size
        if abs(width / height - w0 / h0) > ASPECT_TOLERANCE * (w0 / h0):
            raise UsageError(
                f"{self.path} changes shape at frame {index}: {width}x{height} after {w0}x{h0}; "
                "re-encode it at one size"
            )
        from PIL import Image

        self.resized += 1
        return np.asarray(Image.fromarray(rgb).resize((w0, h0), Image.BICUBIC))

    def _check_end(self, end: float, count: int) -> None:
        """A stream that stops short of the duration its container's index states was cut off."""
        stated = self.stated_end()
        if stated is not None and end < stated - max(0.5, 3 / float(self.rate)):
            raise self._damaged(count, f"the video stops at {end:.2f} s of the {stated:.2f} s its container states")

    def stated_end(self) -> float | None:
        """Where the video stream ends by its container's index (mp4 / mov / Matroska), in seconds, or None."""
        if not any(name in self.container.format.name.split(",") for name in _INDEXED):
            return None
        stream = self.stream
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if stream.duration:  # mp4 / mov: the track's length, from its first frame
            return start + float(stream.duration * stream.time_base)
        return _duration_tag(stream.metadata.get("DURATION"))  # Matroska: where the track ends

    def __iter__(self) -> Iterator[tuple[object, float]]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._frames

    def close(self) -> None:
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _reason(e: BaseException) -> str:
    """An FFmpeg / OS error's message without its errno and file name."""
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


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
    """H.264 (libx264, yuv420p) frames into an .mp4 file object or path, each at its own time.

    ``crf`` 18 (visually lossless for colour maps). Frame times are written in ``TIME_BASE`` (1/90000 s),
    so a variable-rate source keeps its timing; ``rate`` (the source's average) guides the encoder's
    rate control and is the spacing used for frames written without a time. Times that do not increase
    are nudged one tick past the previous frame (a muxer refuses them).
    """

    def __init__(self, target, size: tuple[int, int], rate: Fraction, crf: int = 18):
        av = require_av()
        self.container = av.open(target, mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=rate)
        height, width = even_size(*size)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.stream.codec_context.time_base = self.stream.time_base = TIME_BASE
        self.rate, self.count, self.last = Fraction(rate), 0, None
        self._av = av

    def write(self, rgb: np.ndarray, seconds: float | None = None) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_even(rgb)), format="rgb24")
        seconds = self.count / self.rate if seconds is None else seconds
        pts = round(seconds / TIME_BASE)
        if self.last is not None and pts <= self.last:
            pts = self.last + 1
        frame.pts, frame.time_base = pts, TIME_BASE
        self.last = pts
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


def mux_audio(video: str, source: str, target: str) -> str | None:
    """``video``'s video stream and ``source``'s first audio stream, packets copied as they are, into
    the mp4 ``target``, interleaved by time. Returns None when done, or (target then unusable) why the
    audio could not be copied: a codec mp4 cannot hold, or a muxer error."""
    av = require_av()
    with av.open(video) as picture, av.open(source) as sound:
        audio = sound.streams.audio[0]
        name = audio.codec_context.name if audio.codec_context is not None else "unknown"
        try:
            with av.open(target, mode="w", format="mp4") as out:
                video_in = picture.streams.video[0]
                outs = {"video": out.add_stream_from_template(video_in), "audio": out.add_stream_from_template(audio)}

                def timed(container, stream, order):
                    for packet in container.demux(stream):
                        if packet.dts is not None:  # not the end-of-stream marker
                            yield float(packet.dts * packet.time_base), order, packet

                for _, _, packet in heapq.merge(
                    timed(picture, video_in, 0), timed(sound, audio, 1), key=lambda item: item[:2]
                ):
                    packet.stream = outs[packet.stream.type]
                    out.mux(packet)
        except av.FFmpegError as e:  # before ValueError: some FFmpeg errors are ValueErrors too
            return f"its {name} audio could not be copied ({_reason(e)})"
        except ValueError:  # add_stream_from_template: the format has no tag for the codec
            return f"mp4 cannot hold its {name} audio"
    return None


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

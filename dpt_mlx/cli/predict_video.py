"""The predict command's video path: ``--video in.mp4`` -> in_depth.mp4 / in_depth.npz / in_depth16/.

One pass, as a stream: frames are decoded, batched (``--batch-size``), predicted, post-processed to the
frame size and handed to each output at once, so memory holds one batch of frames, not the video.
Every output is written under a hidden temporary name beside its target and published only when the
whole video is done (publish-or-fail without ``--overwrite``, as io/files.atomic_write); an interrupted
or failed run removes them, leaving nothing.

- mp4: H.264 yuv420p of the colour-mapped depth: the input's frames, each at its source frame's time
  (a variable frame rate stays variable), upright at the displayed size (a clip with a display
  rotation, as phones record portrait, is turned as a player shows it, and the mp4 holds the turned
  frames, with no rotation of its own; odd sides padded to even, see processing/video.py); per-frame
  min-max normalised, or with ``--stabilize`` aligned to a running reference and normalised with one
  range for the video. The input's first audio stream is copied in as it is (its packets, not
  re-encoded) unless ``--no-audio``; audio that mp4 cannot hold is left out, with a note.
- npz: ``depth`` float32 (T, H, W), upright, and ``times`` float64 (T,) seconds. Frames are appended to
  a temporary raw file as they come and copied into the archive at the end (a few MB of RAM at most).
- png16: a folder of 16-bit frames ``frame_000000.png`` with depth_min / depth_max text chunks, as
  the image path's png16, written into a hidden temporary folder that is renamed at the end.

A video that does not decode whole (unreadable, no frames, a corrupt or truncated stream, a decoder
error part-way) is an error (exit 2) and publishes nothing, not the frames that did decode: an output
is the whole video or nothing. The outputs are published together or not at all: Ctrl-C / SIGTERM wait
during the few renames, and when one name was taken meanwhile (two runs into one output: the first to
finish publishes) the ones already published are taken back and the run exits 2 naming the file.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DPTError, UsageError
from ..io import files
from ..io.files import TEMP_SUFFIX, discard, remove_stale_temps, signals_deferred, temp_beside, umask_mode
from .console import EXIT_ERROR, EXIT_OK, Console, interrupt_name, interrupt_status

VIDEO_FORMATS = ("mp4", "npz", "png16")
SUFFIXES = {"mp4": "_depth.mp4", "npz": "_depth.npz", "png16": "_depth16"}
_CHUNK = 16 * 2**20  # bytes copied at a time into the npz


class Mp4Output:
    def __init__(self, target: Path, reader, args):
        from ..processing.video import Stabilizer, VideoWriter

        self.target, self.colormap = target, args.colormap
        self.source = reader.path if reader.audio and not getattr(args, "no_audio", False) else None
        self.notes: list[str] = []
        self.tmp, self.muxed, self.writer = temp_beside(target), None, None
        try:
            self.writer = VideoWriter(self.tmp, reader.size, reader.rate)
        except BaseException:
            discard(self.tmp)
            raise
        self.stabilizer = Stabilizer() if args.stabilize else None
        self.pending: list[float] = []  # times of the frames the stabiliser holds back

    def _encode(self, units) -> None:
        from ..processing.video import colorize

        for unit in units:
            self.writer.write(colorize(unit, self.colormap), self.pending.pop(0))

    def write(self, depth: np.ndarray, seconds: float) -> None:
        from ..processing.visualize import normalize_depth

        self.pending.append(seconds)
        self._encode(self.stabilizer.push(depth) if self.stabilizer else [normalize_depth(depth)[0]])

    def complete(self) -> None:
        from ..processing.video import mux_audio

        if self.stabilizer:
            self._encode(self.stabilizer.flush())
        self.writer.close()
        if self.source:
            self.muxed = temp_beside(self.target)
            note = mux_audio(self.tmp, self.source, self.muxed)
            if note:
                self.notes.append(f"{self.target.name} written without audio: {note}")
                discard(self.muxed)
                self.muxed = None
            else:
                discard(self.tmp)
                self.tmp, self.muxed = self.muxed, None

    def publish(self, overwrite: bool) -> None:
        files.publish(self.tmp, self.target, overwrite)

    def unpublish(self) -> None:
        discard(self.target)

    def discard(self) -> None:
        if self.writer:
            self.writer.abort()
        discard(self.tmp)
        discard(self.muxed)


class NpzOutput:
    def __init__(self, target: Path, reader, args):
        self.target, self.size = target, reader.size
        self.raw_path, self.tmp = temp_beside(target), None
        try:
            self.raw = open(self.raw_path, "wb")
        except BaseException:
            discard(self.raw_path)
            raise
        self.times: list[float] = []

    def write(self, depth: np.ndarray, seconds: float) -> None:
        self.raw.write(np.ascontiguousarray(depth, dtype=np.float32).tobytes())
        self.times.append(seconds)

    def complete(self) -> None:
        self.raw.close()
        self.tmp = temp_beside(self.target)
        shape = (len(self.times), *self.size)
        with zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("depth.npy", "w", force_zip64=True) as f, open(self.raw_path, "rb") as raw:
                header = {"descr": "<f4", "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(f, header)
                shutil.copyfileobj(raw, f, _CHUNK)
            with archive.open("times.npy", "w") as f:
                np.save(f, np.asarray(self.times, dtype=np.float64))
        discard(self.raw_path)

    def publish(self, overwrite: bool) -> None:
        files.publish(self.tmp, self.target, overwrite)

    def unpublish(self) -> None:
        discard(self.target)

    def discard(self) -> None:
        self.raw.close()
        discard(self.raw_path)
        discard(self.tmp)


class Png16Output:
    def __init__(self, target: Path, reader, args):
        self.target, self.source = target, args.model
        self.tmp = tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
        self.count = 0

    def write(self, depth: np.ndarray, seconds: float) -> None:
        from ..processing import visualize as V

        image, low, high = V.depth_png16(depth)
        text = {
            "Software": "dpt_mlx",
            "model": self.source,
            "depth_min": repr(low),
            "depth_max": repr(high),
            "time": repr(seconds),
            "description": "min-max normalised per frame: depth = value / 65535 * (depth_max - depth_min) + depth_min",
        }
        V.save_png(image, Path(self.tmp) / f"frame_{self.count:06d}.png", text)
        self.count += 1

    def complete(self) -> None:
        os.chmod(self.tmp, umask_mode(0o777))

    def publish(self, overwrite: bool) -> None:
        old = None
        if self.target.exists():
            if not overwrite:
                raise FileExistsError(17, "appeared while this run was writing it", str(self.target))
            old = tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.", suffix=TEMP_SUFFIX)
            os.replace(self.target, old)  # renames the old folder onto the (empty) reservation
        try:
            os.rename(self.tmp, self.target)  # fails if a non-empty folder of that name appeared meanwhile
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            raise FileExistsError(errno.EEXIST, "appeared while this run was writing it", str(self.target)) from None
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def unpublish(self) -> None:
        shutil.rmtree(self.target, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


OUTPUTS = {"mp4": Mp4Output, "npz": NpzOutput, "png16": Png16Output}


def _check(args) -> tuple[Path, list[str]]:
    """The video and the formats asked for; UsageError for options that do not go with --video."""
    if args.image or args.input_dir or args.image_list:
        raise UsageError("--video cannot be combined with --image, --input-dir or --image-list; run them separately")
    for flag, given in (
        ("--output", args.output),
        ("--overlay", args.overlay),
        ("--skip-existing", args.skip_existing),
        ("--recursive", args.recursive),
        ("--focal-length", args.focal_length),
        ("--fov", args.fov),
    ):
        if given:
            raise UsageError(
                f"{flag} is not supported with --video" + ("; use --output-dir" if flag == "--output" else "")
            )
    formats = list(dict.fromkeys(f for group in (args.format or [["mp4"]]) for f in group))
    bad = [f for f in formats if f not in VIDEO_FORMATS]
    if bad:
        raise UsageError(f"--format {','.join(bad)} is not a video format; use {', '.join(VIDEO_FORMATS)}")
    path = Path(os.path.expanduser(args.video))
    if path.is_dir():
        raise UsageError(f"{args.video} is a folder, not a video file")
    if not path.is_file():
        raise UsageError(f"no such video file: {args.video}")
    return path, formats


def _targets(args, path: Path, formats: list[str], made: list[Path]) -> dict[str, Path]:
    """The output paths; the folders this creates for them are added to ``made`` (deepest first)."""
    directory = Path(os.path.expanduser(args.output_dir)) if args.output_dir else path.parent
    made += [d for d in (directory, *directory.parents) if not os.path.lexists(d)]
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--output-dir {directory} is a file, not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    targets = {f: directory / f"{path.stem}{SUFFIXES[f]}" for f in formats}
    for target in targets.values():
        if target.resolve() == path.resolve():
            raise UsageError(f"{target} is the input video; choose another --output-dir")
        if target.exists() and not args.overwrite:
            raise UsageError(f"{target} exists; use --overwrite to replace it")
    return targets


def _predictor(args, console: Console):
    import warnings

    from ..predictor import load_predictor

    if args.quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        warnings.filterwarnings("ignore", category=RuntimeWarning)
    start = time.perf_counter()
    predictor = load_predictor(args.model, dtype=args.dtype, flip=args.flip_tta)
    for note in predictor.notes:
        console.detail(note)
    if predictor.task != "depth-estimation":
        raise UsageError(f"--video needs a depth model; {args.model} does segmentation")
    return predictor, time.perf_counter() - start


def stream(reader, predictor, outputs: list, batch_size: int, console: Console) -> int:
    """Every frame of ``reader`` through the model into ``outputs``, ``batch_size`` frames a pass."""
    pixels, times, done = [], [], 0

    def flush():
        nonlocal done
        for depth, seconds in zip(predictor.forward(np.stack(pixels), [reader.size] * len(pixels)), times):
            for output in outputs:
                output.write(depth, seconds)
            done += 1
            console.advance()
        pixels.clear()
        times.clear()

    for image, seconds in reader:
        pixels.append(predictor.preprocess(image))
        times.append(seconds)
        if len(pixels) >= batch_size:
            flush()
    if pixels:
        flush()
    return done


def run_video(args) -> int:
    """The whole --video run; returns the exit status."""
    from ..processing.video import VideoReader, require_av

    console = Console(args.quiet, args.verbose)
    outputs: list = []
    reader, made = None, []
    try:
        path, formats = _check(args)
        require_av()
        reader = VideoReader(path)  # decodes the first frame: an unreadable video fails before anything else
        targets = _targets(args, path, formats, made)
        stale = remove_stale_temps(targets.values())
        if stale:
            console.detail(f"removed {stale} temporary file(s) or folder(s) left by an earlier, killed run")
        predictor, load_seconds = _predictor(args, console)
        console = Console(args.quiet, args.verbose, total=reader.frames, unit="frame")
        for f in formats:
            outputs.append(OUTPUTS[f](targets[f], reader, args))
        start = time.perf_counter()
        frames = stream(reader, predictor, outputs, args.batch_size, console)
        for output in outputs:
            output.complete()
        publish(outputs, args.overwrite)
        seconds = time.perf_counter() - start
    except KeyboardInterrupt as e:
        console.bar.close()
        _discard(outputs, made)
        console.error(f"{interrupt_name(e)}; no output written")
        return interrupt_status(e)
    except (DPTError, FileExistsError, OSError, ValueError) as e:
        _discard(outputs, made)
        if isinstance(e, FileExistsError) and e.filename:
            e = f"{e.filename} appeared while this run was writing it (another run?); use --overwrite to replace it"
        elif isinstance(e, OSError) and e.filename and e.strerror:
            name = Path(e.filename)  # a hidden temporary name means no file could be made in its folder
            e = (
                f"cannot write in {name.parent}: {e.strerror}"
                if name.name.startswith(".") and name.name.endswith(TEMP_SUFFIX)
                else f"{name}: {e.strerror}"
            )
        console.error(str(e) + ("; no output written" if outputs else ""))
        return EXIT_ERROR
    except BaseException:
        _discard(outputs, made)
        raise
    finally:
        if reader is not None:
            reader.close()
    height, width = reader.size
    console.info(f"{path} -> {', '.join(str(t) for t in targets.values())}")
    for output in outputs:
        for note in getattr(output, "notes", ()):
            console.info(note)
    if reader.rotation:
        console.info(f"frames turned {reader.rotation} degrees clockwise (the video's display rotation)")
    if reader.resized:
        console.info(f"{reader.resized} frames scaled to {width}x{height} (the video changes resolution)")
    console.info(
        f"{frames} frames {width}x{height} at {float(reader.rate):.6g} fps in {seconds + load_seconds:.2f} s "
        f"(model load {load_seconds:.2f} s, {seconds / frames:.3f} s/frame)"
        + ("; mp4 stabilised" if args.stabilize and "mp4" in formats else "")
    )
    sys.stdout.flush()
    return EXIT_OK


def publish(outputs: list, overwrite: bool) -> None:
    """Publish every finished output, or none: signals wait until all are out, and when one cannot be
    published (its name appeared meanwhile: another run) or a signal came, those already published are
    taken back before the error goes on."""
    published = []
    try:
        with signals_deferred():
            for output in outputs:
                output.publish(overwrite)
                published.append(output)
    except BaseException:
        for output in published:
            output.unpublish()
        raise


def _discard(outputs: list, made: list[Path]) -> None:
    """Remove every output's temporary files and the (still empty) folders made for them; a second
    interruption while doing so does not stop it."""
    for output in outputs:
        while True:
            try:
                output.discard()
                break
            except KeyboardInterrupt:
                continue
    for directory in made:
        try:
            directory.rmdir()
        except OSError:  # not empty (something else was put there), or gone
            break

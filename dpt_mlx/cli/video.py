"""The predict command's video path: ``--video in.mp4`` -> in_depth.mp4 / in_depth.npz / in_depth16/
(the writers: processing/writers.py).

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

import os
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import DPTError, UsageError
from ..io.files import TEMP_SUFFIX, remove_stale_temps
from ..processing.writers import VIDEO_OUTPUTS, VIDEO_SUFFIXES, OutputOptions, discard_outputs, publish_together
from .console import EXIT_ERROR, EXIT_OK, Console

VIDEO_FORMATS = tuple(VIDEO_SUFFIXES)


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
    targets = {f: directory / f"{path.stem}{VIDEO_SUFFIXES[f]}" for f in formats}
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


def run_video(args, options: OutputOptions) -> int:
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
            outputs.append(VIDEO_OUTPUTS[f](targets[f], reader, options, predictor.source))
        start = time.perf_counter()
        frames = stream(reader, predictor, outputs, args.batch_size, console)
        for output in outputs:
            output.complete()
        publish_together(outputs, args.overwrite)
        seconds = time.perf_counter() - start
    except KeyboardInterrupt as e:
        discard_outputs(outputs, made)
        e.add_note("(no output written)")
        raise
    except (DPTError, FileExistsError, OSError, ValueError) as e:
        discard_outputs(outputs, made)
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
        discard_outputs(outputs, made)
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

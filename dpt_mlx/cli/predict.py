"""The command line: depth maps or segmentation maps for images, with a DPT / Depth Anything model.

    python -m dpt_mlx.generate --image photo.jpg                       # photo_depth.png (inferno)
    python -m dpt_mlx.generate --image a.jpg b.png --format png16,npy
    python -m dpt_mlx.generate --input-dir photos/ --output-dir out/ --batch-size 4
    python -m dpt_mlx.generate --model Intel/dpt-large-ade --image room.jpg --overlay

Exit status: 0 everything written (or skipped with --skip-existing); 1 some images failed (each is
reported, the others are written); 2 nothing was done (a usage error, a bad model, or every image
failed); 130 / 143 interrupted by Ctrl-C / SIGTERM (finished outputs are kept, no temporary files).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from ..errors import DPTError, UsageError
from ..io.checkpoint import DTYPES
from ..io.files import remove_stale_temps, remove_unchanged, temp_files
from ..processing.visualize import COLORMAPS
from .console import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SOME_FAILED,
    ArgumentParser,
    Console,
    command,
    format_list,
    interrupt_name,
    interrupt_status,
    positive_int,
    program,
)
from .predict_outputs import OutputOptions, Plan, collect_inputs, depth_kind, plan
from .predict_points import add_point_options, check_points
from .predict_prompt import add_prompt_options, assign_prompts
from .predict_runner import Runner

DEFAULT_MODEL = "Intel/dpt-large"
FORMATS = ("png", "png16", "npy", "ply")
VIDEO_FORMATS = ("mp4", "npz")  # with png16: --video's formats (cli/predict_video.py)

DESCRIPTION = """\
Predict depth (DPT, Depth Anything) or semantic segmentation (DPT-ADE) for images with MLX.
The task follows from the model: a depth checkpoint writes depth maps, a segmentation
checkpoint writes class maps. Outputs have the input image's size.

Depth: DPT predicts relative inverse depth (larger = closer, no units). PNG outputs are
min-max normalised per image, so brightness/colours are comparable within an image only;
the min and max are stored in the PNG's text chunks (depth_min, depth_max) and printed with
--verbose. Use --format npy for the raw float32 values.

Segmentation: a palette PNG whose pixel values are class ids (ADE20K colours for 150-label
models), the classes present with their share of the pixels, and with --overlay the
colours blended over the photo."""

EPILOG = """\
outputs (default: beside each input, or in --output-dir):
  depth:         <name>_depth.png (colour map), <name>_depth16.png (16-bit gray),
                 <name>_depth.npy (float32), <name>_depth_overlay.png,
                 <name>_points.ply (point cloud, metric depth only)
  segmentation:  <name>_seg.png (palette, values = class ids), <name>_seg.npy (class ids),
                 <name>_seg_overlay.png
  Existing files are kept (that image fails) unless --overwrite; an input is never overwritten.
  With --skip-existing an image whose outputs all exist is skipped, and one with only some of
  them (an interrupted run) is done again, replacing those.
  Files are written under a hidden temporary name and published only if the name is still free
  (or replaced, with --overwrite), so an interrupted run leaves no partial file and two runs into
  one folder never replace each other's files; the one that finds a file already written reports
  it. Temporary files a killed run left behind are removed by the next run into that folder.
  --input-dir skips hidden files and files named like these outputs.

progress: a progress bar is drawn on stderr for more than one image when stderr is a terminal
  (not with --quiet). Results and the timing summary go to stdout, errors to stderr.

exit status: 0 all written (or skipped); 1 some images failed (reported, the rest written);
  2 nothing done (usage error, unusable model, every image failed); 130 Ctrl-C; 143 SIGTERM.

examples:
  python -m dpt_mlx.generate --image photo.jpg
  python -m dpt_mlx.generate --image photo.jpg --format npy --output depth.npy
  python -m dpt_mlx.generate --input-dir photos --output-dir depth --colormap turbo --batch-size 4
  python -m dpt_mlx.generate --model Intel/dpt-large-ade --image room.jpg --overlay --alpha 0.6"""


# ----------------------------------------------------------------------------------------------
# Arguments


# the image formats, and --video's beside them (cli/predict_video.py checks which go with which)
_formats = format_list(FORMATS + VIDEO_FORMATS, shown=FORMATS, note="--video: mp4, npz, png16; ")


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return value


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The options; a usage error is one line (pointing to --help) and exits 2, as in every command."""
    p = ArgumentParser(
        prog=program("python -m dpt_mlx.generate", "dpt-mlx"),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = p.add_argument_group("inputs")
    inputs.add_argument(
        "--image",
        "-i",
        metavar="PATH",
        nargs="+",
        action="extend",
        default=[],
        help="image file(s) or http(s) URLs; repeat or list several",
    )
    inputs.add_argument(
        "--input-dir",
        metavar="DIR",
        action="append",
        default=[],
        help="every image in DIR (.jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm .pgm .pnm "
        ".heic .heif; not recursive without --recursive)",
    )
    inputs.add_argument(
        "--recursive",
        action="store_true",
        help="--input-dir: also the images in its subfolders (hidden ones skipped, folder links "
        "not followed); outputs keep the folder structure under --output-dir",
    )
    inputs.add_argument(
        "--image-list",
        metavar="FILE",
        action="append",
        default=[],
        help="a text file of image paths or URLs, one a line (# comments and blank lines "
        "ignored; relative to the file's folder); - reads stdin",
    )
    inputs.add_argument(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        help="Hugging Face Hub repo id or local checkpoint directory (transformers or converted); "
        f"default {DEFAULT_MODEL}. Depth or segmentation follows from the checkpoint",
    )
    inputs.add_argument(
        "--video", metavar="PATH", help="a video: writes <name>_depth.mp4 (--format mp4, npz, png16); depth models only"
    )

    outputs = p.add_argument_group("outputs")
    where = outputs.add_mutually_exclusive_group()
    where.add_argument(
        "--output", "-o", metavar="FILE", help="output file, for one image and one output kind (.png or .npy)"
    )
    where.add_argument(
        "--output-dir",
        "-d",
        metavar="DIR",
        help="directory for the outputs (created if needed); default: beside each input",
    )
    outputs.add_argument(
        "--format",
        "-f",
        type=_formats,
        action="append",
        metavar="FMT",
        help="png (default: colour-mapped depth / palette class map), png16 (16-bit grayscale "
        "depth, mode I;16), npy (float32 depth / class ids at the input size), ply (3D point "
        "cloud of metric depth); comma-separated or repeated for several",
    )
    outputs.add_argument(
        "--colormap",
        "-c",
        choices=COLORMAPS,
        default="inferno",
        metavar="NAME",
        help=f"depth colours for png and overlay: {', '.join(COLORMAPS)} (default inferno; "
        "gray writes an 8-bit grayscale PNG)",
    )
    outputs.add_argument(
        "--overlay", action="store_true", help="also write the depth colours or class colours blended over the photo"
    )
    outputs.add_argument(
        "--alpha", type=_alpha, default=0.5, metavar="A", help="opacity of the colours in --overlay, 0..1 (default 0.5)"
    )
    outputs.add_argument(
        "--stabilize",
        action="store_true",
        help="--video mp4: align each frame's depth to the previous ones and use one "
        "normalisation range for the video (less flicker)",
    )
    outputs.add_argument(
        "--no-audio",
        action="store_true",
        help="--video mp4: leave out the input's audio (by default its first audio track is copied as it is)",
    )
    existing = outputs.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing output files")
    existing.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip an image whose requested outputs all exist; an image with only some "
        "of them is done again, replacing those",
    )

    add_point_options(p)
    add_prompt_options(p)

    run = p.add_argument_group("running")
    run.add_argument(
        "--batch-size",
        "-b",
        type=positive_int,
        default=1,
        metavar="N",
        help="images per forward pass; images are batched when they have the same size after preprocessing (default 1)",
    )
    run.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="compute dtype (default: the checkpoint's)")
    run.add_argument(
        "--flip-tta",
        action="store_true",
        help="also predict each image mirrored left-right and average the two (test-time "
        "augmentation, as ZoeDepth's evaluation does): twice the model time per image",
    )
    run.add_argument("--version", action="version", version=f"dpt_mlx {_version()}")
    talk = run.add_mutually_exclusive_group()
    talk.add_argument("--quiet", "-q", action="store_true", help="print errors only")
    talk.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="more detail: model, preprocessing, per-image timing and value ranges; tracebacks on errors",
    )
    return p


# ----------------------------------------------------------------------------------------------
# Running


def _load(args, console: Console):
    """The predictor for --model, and the seconds it took to load; --verbose describes it."""
    from ..predictor import load_predictor

    if args.quiet:  # errors only: no download bars, no warnings (blas_info() keeps the BLAS notes)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        warnings.filterwarnings("ignore", category=RuntimeWarning)
    start = time.perf_counter()
    predictor = load_predictor(args.model, dtype=args.dtype, flip=args.flip_tta)
    seconds = time.perf_counter() - start
    for note in predictor.notes:
        console.detail(note)
    config = predictor.config
    console.detail(
        f"model {args.model}: {type(predictor.model).__name__} ({predictor.task}), "
        f"{getattr(config, 'backbone_type', getattr(config, 'model_type', '?'))} backbone, "
        f"dtype {str(predictor.model.dtype).replace('mlx.core.', '')}, loaded in {seconds:.2f} s"
    )
    processor = predictor.image_processor
    console.detail(
        f"preprocessing: size {processor.size}, keep_aspect_ratio={processor.keep_aspect_ratio}, "
        f"ensure_multiple_of={processor.ensure_multiple_of}"
    )
    return predictor, seconds


def _summary(runner: Runner, work: Plan, predictor, seconds: float, load_seconds: float) -> str:
    per_image = seconds / max(1, runner.written + runner.failed)
    plural = "s" if runner.written != 1 else ""
    summary = (
        f"{runner.written} image{plural} written in {seconds + load_seconds:.2f} s "
        f"(model load {load_seconds:.2f} s, {per_image:.2f} s/image)"
    )
    if work.skipped:
        summary += f"; {_skipped(work)}"
    if predictor.task == "depth-estimation":
        summary += f"; depth is {depth_kind(predictor.config, bool(runner.args.prompt_depth))}"
        if getattr(runner.args, "depth_kind", None):
            summary += f" (taken as {runner.args.depth_kind}: --depth-kind)"
        if any(k in ("png", "png16", "overlay") for k, _ in work.jobs[0].outputs):
            summary += ", PNGs are min-max normalised per image"
        if predictor.flip:
            summary += "; flip-averaged (two forward passes per image)"
    return summary


def _skipped(work: Plan) -> str:
    return f"{len(work.skipped)} image{'s' if len(work.skipped) != 1 else ''} skipped (all outputs exist)"


@command  # SIGTERM / SIGHUP as Ctrl-C; a closed stdout ends quietly
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here
    if args.video:
        if args.prompt_depth:
            parser.error("--prompt-depth is for images, not --video")
        from .predict_video import run_video

        return run_video(args)
    if not args.image and not args.input_dir and not args.image_list:
        parser.error("give at least one --image, an --input-dir, an --image-list or a --video")
    if args.stabilize or args.no_audio or any(f in VIDEO_FORMATS for group in args.format or [] for f in group):
        parser.error("--stabilize, --no-audio and --format mp4 / npz are for --video")
    console = Console(args.quiet, args.verbose)
    try:
        paths = collect_inputs(args, console)
        if args.output and len(paths) != 1:
            raise UsageError(f"--output names one file but there are {len(paths)} images; use --output-dir")
        predictor, load_seconds = _load(args, console)
        task = "depth" if predictor.task == "depth-estimation" else "segmentation"
        if task == "segmentation" and args.colormap != "inferno":
            console.detail("--colormap applies to depth only; segmentation uses the model's palette")
        options = OutputOptions.from_args(args)
        check_points(args, options, predictor)
        work = plan(options, paths, task)
        work.rejected += assign_prompts(args, work.jobs, predictor)
        stale = remove_stale_temps(work.targets())
        if stale:
            console.detail(f"removed {stale} temporary file(s) left by an earlier, killed run")
        leftovers = temp_files(work.targets())  # younger ones: removed at the end if nobody writes them
    except DPTError as e:  # UsageError included
        console.error(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP
        print(f"\n{interrupt_name(e)}", file=sys.stderr)
        return interrupt_status(e)

    todo = len(work.jobs) + len(work.rejected)
    console = Console(args.quiet, args.verbose, total=todo)
    runner = Runner(args, options, predictor, console)
    for reason in work.rejected:
        runner.fail(None, reason)
    start = time.perf_counter()
    try:
        runner.run(work.jobs)
    except KeyboardInterrupt as e:
        console.bar.close()
        console.error(
            f"{interrupt_name(e)} after {runner.written} of {todo} images "
            "(finished outputs kept, no partial files left; --skip-existing continues)"
        )
        return interrupt_status(e)
    seconds = time.perf_counter() - start
    stale = remove_unchanged(leftovers)
    if stale:
        console.detail(f"removed {stale} temporary file(s) left by an earlier, killed run")

    if runner.written:
        console.info(_summary(runner, work, predictor, seconds, load_seconds))
    elif work.skipped:
        console.info(_skipped(work))
    if runner.failed:
        if len(paths) > 1:
            console.error(
                f"{runner.failed} of {len(paths)} images failed (see above)"
                + ("; the others were written" if runner.written else "")
            )
        return EXIT_SOME_FAILED if runner.written or work.skipped else EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

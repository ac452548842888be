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
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..configs import camera_depth, predicts_metres
from ..errors import ImageError, UsageError
from ..io.checkpoint import DTYPES
from ..io.files import remove_stale_temps, remove_unchanged, temp_files
from ..processing.mesh import DEFAULT_EDGE_THRESHOLD, DEFAULT_MAX_VERTICES
from ..processing.visualize import COLORMAPS
from ..processing.writers import TASK_NAMES, Job, OutputOptions, depth_kind, shown, write_outputs
from .console import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SOME_FAILED,
    ArgumentParser,
    Console,
    command,
    format_list,
    interrupt_note,
    positive_float,
    positive_int,
    program,
)
from .inputs import Plan, assign_prompts, collect_inputs, plan

DEFAULT_MODEL = "Intel/dpt-large"
TASKS = ("depth", "normals", "segmentation")  # what a dense checkpoint (TIPSv2-DPT) writes; --task picks
METRIC_EXAMPLE = "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf"
FORMATS = ("png", "png16", "npy", "exr", "ply", "glb")
VIDEO_FORMATS = ("mp4", "npz")  # with png16: --video's formats (cli/video.py)

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
                 <name>_depth.npy (float32), <name>_depth.exr (float32 OpenEXR),
                 <name>_depth_overlay.png, <name>_points.ply (point cloud) and
                 <name>_mesh.glb (textured mesh; both metric depth only)
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


# the image formats, and --video's beside them (cli/video.py checks which go with which)
_formats = format_list(FORMATS + VIDEO_FORMATS, shown=FORMATS, note="--video: mp4, npz, png16; ")


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return value


def _fov(text: str) -> float:
    value = positive_float(text)
    if value >= 180:
        raise argparse.ArgumentTypeError(f"must be between 0 and 180 degrees, got {text!r}")
    return value


def _edge_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (0 keeps every triangle), got {text!r}")
    return value


def _vertex_budget(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value != 0 and value < 4:
        raise argparse.ArgumentTypeError(f"must be an integer >= 4, or 0 for every pixel, got {text!r}")
    return value or None


def _add_point_options(parser: argparse.ArgumentParser) -> None:
    """The camera (--focal-length / --fov, --no-exif) and --depth-kind, for --format ply and glb and for
    Depth Pro's metric scale; the mesh's options."""
    group = parser.add_argument_group(
        "camera, point clouds and meshes (--format ply, glb; the focal length also scales Depth Pro's depth)"
    )
    camera = group.add_mutually_exclusive_group()
    camera.add_argument(
        "--focal-length",
        type=positive_float,
        metavar="PX",
        help="focal length in pixels of the input image (default: from the photo's EXIF, else Depth "
        "Pro's own estimate, else a 60 degree horizontal field of view)",
    )
    camera.add_argument("--fov", type=_fov, metavar="DEG", help="horizontal field of view in degrees")
    group.add_argument(
        "--no-exif",
        action="store_true",
        help="ignore the photos' EXIF focal length (Depth Pro then uses its own estimate; other models' "
        "point clouds a 60 degree field of view)",
    )
    group.add_argument(
        "--depth-kind",
        choices=("relative", "metric"),
        default=None,
        help="what the model's depth is, where its config cannot say (e.g. DPT-DINOv2 NYU/KITTI "
        "or a fine-tuned checkpoint predict metres: metric); default: from the config",
    )
    group.add_argument(
        "--mesh-edge-threshold",
        type=_edge_threshold,
        metavar="R",
        default=DEFAULT_EDGE_THRESHOLD,
        help="glb: drop the triangles whose depths differ by more than R times the nearest of them "
        "(depth discontinuities: no faces stretched between foreground and background); "
        f"default {DEFAULT_EDGE_THRESHOLD:g}, 0 keeps every triangle",
    )
    group.add_argument(
        "--mesh-max-vertices",
        type=_vertex_budget,
        metavar="N",
        default=DEFAULT_MAX_VERTICES,
        help=f"glb: decimate larger photos on the pixel grid to at most N vertices (default {DEFAULT_MAX_VERTICES:,}: "
        "a 12 MP photo gets every 5th pixel, a GLB of about 25 MB); 0 keeps every pixel",
    )


def _add_prompt_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("depth prompts (Prompt Depth Anything)")
    group.add_argument(
        "--prompt-depth",
        metavar="PATH",
        nargs="+",
        action="extend",
        default=[],
        help="low-resolution metric depth for each image (e.g. iPhone LiDAR): one file per image, "
        "in order, or a folder holding <image name>.npy|.png|.tif; .npy and float TIFF are "
        "metres, integer PNG/TIFF millimetres",
    )
    group.add_argument(
        "--prompt-depth-scale",
        type=positive_float,
        metavar="M",
        default=None,
        help="metres per stored prompt value, overriding the file's convention "
        "(e.g. 0.001 for a millimetre .npy, 1 for a metre PNG)",
    )


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
        "--task",
        type=format_list(TASKS, what="task"),
        metavar="TASK",
        help="depth, normals, segmentation (comma-separated): what a dense checkpoint (TIPSv2-DPT "
        "...ForDensePrediction) writes, default all three: <name>_depth.*, <name>_normals.png (RGB) / "
        ".npy, <name>_seg.*; other checkpoints predict one",
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
        "depth, mode I;16), npy (float32 depth / class ids at the input size), exr (float32 depth, "
        "OpenEXR), ply (3D point cloud of metric depth), glb (textured 3D mesh of metric depth); "
        "comma-separated or repeated for several",
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

    _add_point_options(p)
    _add_prompt_options(p)

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


def output_options(args: argparse.Namespace) -> OutputOptions:
    """What each image gets written and where, from the parsed arguments (``--format`` groups flattened)."""
    return OutputOptions(
        formats=tuple(f for group in (args.format or []) for f in group),
        output=args.output,
        output_dir=args.output_dir,
        input_dirs=tuple(args.input_dir),
        recursive=args.recursive,
        overlay=args.overlay,
        alpha=args.alpha,
        colormap=args.colormap,
        overwrite=args.overwrite,
        skip_existing=args.skip_existing,
        verbose=args.verbose,
        focal_length=args.focal_length,
        fov=args.fov,
        exif=not args.no_exif,
        mesh_edge_threshold=args.mesh_edge_threshold,
        mesh_max_vertices=args.mesh_max_vertices,
        stabilize=args.stabilize,
        audio=not args.no_audio,
    )


def _is_metric(config, depth_kind_arg: str | None, prompted: bool) -> bool:
    """Whether the depth is metric: --depth-kind, else the model (a metric config, ZoeDepth, or
    Prompt Depth Anything given --prompt-depth)."""
    if depth_kind_arg is not None:
        return depth_kind_arg == "metric"
    return predicts_metres(config, prompted=prompted)


def _wants(options: OutputOptions, kind: str) -> bool:
    """Whether the output options' formats (or their --output name) ask for output ``kind``."""
    return kind in options.formats or (
        not options.formats and bool(options.output) and options.output.lower().endswith(f".{kind}")
    )


def _requirement(kind: str):
    """The function that imports what output ``kind`` is written with (ImportError: how to install it)."""
    from ..processing.exr import require_openexr
    from ..processing.mesh import require_trimesh
    from ..processing.points import require_plyfile

    return {"ply": require_plyfile, "glb": require_trimesh, "exr": require_openexr}[kind]


def _tasks(asked: list[str] | None, predictor) -> tuple[str, tuple[str, ...]]:
    """(the planner's task, the tasks a dense prediction writes): --task for a dense checkpoint (default all
    three); elsewhere --task must name what the checkpoint predicts."""
    task = TASK_NAMES.get(predictor.task, "dense")
    asked = tuple(dict.fromkeys(asked or ()))
    if task == "dense":
        return task, asked or TASKS
    if asked and asked != (task,):
        raise UsageError(f"--task {','.join(asked)}: {predictor.source} predicts {task} only")
    return task, ()


def _check_points(args: argparse.Namespace, options: OutputOptions, predictor) -> None:
    """UsageError unless the point cloud, mesh and EXR asked for can be written: a depth model, metric
    camera depth for ply and glb, their library installed (plyfile, trimesh, OpenEXR)."""
    wanted = [kind for kind in ("ply", "glb", "exr") if _wants(options, kind)]
    if not wanted:
        return
    if predictor.task not in ("depth-estimation", "dense-prediction"):
        what = "predicts surface normals" if predictor.task == "normal-estimation" else "does segmentation"
        raise UsageError(f"--format {wanted[0]} is for depth models; this model {what}")
    shapes = [kind for kind in wanted if kind in ("ply", "glb")]
    if shapes and not camera_depth(predictor.config):
        raise UsageError(
            f"--format {shapes[0]} back-projects depth from a camera; CHMv2 predicts canopy heights seen from "
            "above (use npy, exr or png16)"
        )
    if shapes and not _is_metric(predictor.config, args.depth_kind, bool(args.prompt_depth)):
        raise UsageError(
            f"--format {shapes[0]} needs metric depth, but {args.model} predicts relative depth (no scale); "
            f"use a metric model such as {METRIC_EXAMPLE}, or pass --depth-kind metric if this "
            "checkpoint's depth is in metres"
        )
    for kind in wanted:
        try:
            _requirement(kind)()
        except ImportError as e:
            raise UsageError(str(e)) from None


class Runner:
    """Runs the planned jobs with one predictor: reads each image, batches images of the same model-input
    size, runs the model, writes the outputs and reports each image (or its failure); counts them."""

    def __init__(self, options: OutputOptions, predictor, console: Console, batch_size: int = 1, prompt_scale=None):
        self.options, self.predictor, self.console = options, predictor, console
        self.batch_size, self.prompt_scale = batch_size, prompt_scale
        self.written, self.failed = 0, 0
        self.model_seconds = 0.0

    def fail(self, path: Path | None, message: str) -> None:
        """Report one image that could not be done; ``path`` prefixes the message when given."""
        self.failed += 1
        self.console.error(f"{shown(path)}: {message}" if path is not None else message)
        self.console.advance()

    def prepare(self, job: Job) -> bool:
        """Read and preprocess the image of ``job``; False (reported) when it cannot be."""
        from ..processing.depth_prompt import read_prompt_depth
        from ..processing.images import load_image

        try:
            image = load_image(job.path)
        except (ImageError, OSError) as e:
            self.fail(None, str(e))  # load_image's messages name the file
            return False
        try:
            if job.prompt is None:
                job.pixels = self.predictor.preprocess(image)
            else:
                prompt = read_prompt_depth(job.prompt, self.prompt_scale)  # metres
                job.pixels, job.prompt_pixels = self.predictor.preprocess_with_prompt(image, prompt, 1.0)
        except ImageError as e:  # the depth prompt's file
            self.fail(job.path, str(e))
            return False
        except ValueError as e:
            self.fail(job.path, f"cannot preprocess: {e}")
            return False
        job.image, job.size = image, (image.height, image.width)
        return True

    def run_batch(self, batch: list[Job]) -> None:
        """One forward pass over ``batch`` (same input size), then every image's outputs."""
        start = time.perf_counter()
        try:
            prompts = None if batch[0].prompt_pixels is None else np.stack([j.prompt_pixels for j in batch])
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, once per image
                results = self.predictor.forward(
                    np.stack([j.pixels for j in batch]), [j.size for j in batch], prompts, self._focal_lengths(batch)
                )
        except (ValueError, OSError) as e:
            for job in batch:
                self.fail(job.path, f"inference failed: {e}")
            return
        seconds = time.perf_counter() - start
        self.model_seconds += seconds
        for job, camera in zip(batch, self.predictor.cameras):
            if camera is not None and camera.focal_length is not None:
                job.focal = job.focal or (camera.focal_length, "Depth Pro's estimate")
                job.field_of_view = camera.field_of_view
        for job, result in zip(batch, results):
            job.pixels = job.prompt_pixels = None
            if not all(np.isfinite(m).all() for m in (result.values() if isinstance(result, dict) else [result])):
                job.image = None
                self.fail(
                    job.path,
                    "inference failed: the model's output overflowed float32 when resized to the "
                    "image's size (NaN or inf); the checkpoint's weights may be damaged",
                )
                continue
            details = self._write(job, result)
            if details is not None:
                self._report(job, details, seconds / len(batch), len(batch))

    def _focal_lengths(self, batch: list[Job]) -> list[float | None] | None:
        """For a model whose depth takes a focal length (Depth Pro): each image's known one (--focal-length,
        --fov, EXIF), kept in ``job.focal``, or None (the model's estimate); None for other models."""
        if not self.predictor.gives_camera:
            return None
        from ..processing.points import known_focal_length

        o = self.options
        for job in batch:
            height, width = job.size
            job.focal = known_focal_length(job.path, width, height, o.focal_length, o.fov, o.exif)
        return [None if job.focal is None else job.focal[0] for job in batch]

    def _write(self, job: Job, result: np.ndarray) -> list[str] | None:
        """Write the outputs of one image; None (reported) when that fails."""
        try:
            details, error = write_outputs(job, result, self.options, self.predictor)
        finally:
            job.image = None
        if error is not None:
            self.fail(None, error)
        return details

    def _report(self, job: Job, details: list[str], seconds: float, batch_size: int) -> None:
        self.written += 1
        names = ", ".join(shown(t) for _, t in job.outputs)
        self.console.info(f"{shown(job.path)} -> {names}" + (f" ({job.note})" if job.note else ""))
        show = self.console.info if self.predictor.task == "image-segmentation" else self.console.detail
        for line in details:
            show(line)
        self.console.detail(f"    {job.size[1]}x{job.size[0]}, model {seconds:.3f} s/image (batch of {batch_size})")
        self.console.advance()

    def run(self, jobs: Iterable[Job]) -> None:
        """Every job, in batches of --batch-size images whose model inputs have the same shape."""
        size = self.batch_size
        pending: dict[tuple, list[Job]] = {}  # input (and prompt) shapes -> jobs waiting for a batch
        for job in jobs:
            if not self.prepare(job):
                continue
            key = (job.pixels.shape, None if job.prompt_pixels is None else job.prompt_pixels.shape)
            bucket = pending.setdefault(key, [])
            bucket.append(job)
            if len(bucket) >= size:
                self.run_batch(pending.pop(key))
            elif sum(len(b) for b in pending.values()) >= 4 * size:  # bound memory with many shapes
                largest = max(pending, key=lambda k: len(pending[k]))
                self.run_batch(pending.pop(largest))
        for key in list(pending):
            self.run_batch(pending.pop(key))


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
    resize = ", ".join(
        f"{name}={getattr(processor, name)}"
        for name in ("keep_aspect_ratio", "ensure_multiple_of")
        if hasattr(processor, name)
    )
    console.detail(f"preprocessing: size {getattr(processor, 'size', None)}" + (f", {resize}" if resize else ""))
    return predictor, seconds


def _summary(args, runner: Runner, work: Plan, predictor, seconds: float, load_seconds: float) -> str:
    per_image = seconds / max(1, runner.written + runner.failed)
    plural = "s" if runner.written != 1 else ""
    summary = (
        f"{runner.written} image{plural} written in {seconds + load_seconds:.2f} s "
        f"(model load {load_seconds:.2f} s, {per_image:.2f} s/image)"
    )
    if work.skipped:
        summary += f"; {_skipped(work)}"
    depth_kinds = [
        k.split(":")[-1]
        for k, _ in work.jobs[0].outputs
        if predictor.task == "depth-estimation" or k.startswith("depth:")
    ]
    if depth_kinds:
        summary += f"; depth is {depth_kind(predictor.config, bool(args.prompt_depth))}"
        if args.depth_kind:
            summary += f" (taken as {args.depth_kind}: --depth-kind)"
        if any(k in ("png", "png16", "overlay") for k in depth_kinds):
            summary += ", PNGs are min-max normalised per image"
        if predictor.flip:
            summary += "; flip-averaged (two forward passes per image)"
    return summary


def _skipped(work: Plan) -> str:
    return f"{len(work.skipped)} image{'s' if len(work.skipped) != 1 else ''} skipped (all outputs exist)"


@command  # exit statuses, SIGTERM / SIGHUP as Ctrl-C, a closed stdout: cli/console.py
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here
    if args.video:
        if args.prompt_depth:
            parser.error("--prompt-depth is for images, not --video")
        from .video import run_video

        return run_video(args, output_options(args))
    if not args.image and not args.input_dir and not args.image_list:
        parser.error("give at least one --image, an --input-dir, an --image-list or a --video")
    if args.stabilize or args.no_audio or any(f in VIDEO_FORMATS for group in args.format or [] for f in group):
        parser.error("--stabilize, --no-audio and --format mp4 / npz are for --video")
    console = Console(args.quiet, args.verbose)
    options = output_options(args)
    paths = collect_inputs(args.image, args.input_dir, args.image_list, options, console)
    if args.output and len(paths) != 1:
        raise UsageError(f"--output names one file but there are {len(paths)} images; use --output-dir")
    predictor, load_seconds = _load(args, console)
    task, tasks = _tasks(args.task, predictor)
    if task == "segmentation" and args.colormap != "inferno":
        console.detail("--colormap applies to depth only; segmentation uses the model's palette")
    _check_points(args, options, predictor)
    work = plan(options, paths, task, camera=predictor.gives_camera, tasks=tasks)
    work.rejected += assign_prompts(args.prompt_depth, args.input_dir, work.jobs, predictor)
    stale = remove_stale_temps(work.targets())
    if stale:
        console.detail(f"removed {stale} temporary file(s) left by an earlier, killed run")
    leftovers = temp_files(work.targets())  # younger ones: removed at the end if nobody writes them

    todo = len(work.jobs) + len(work.rejected)
    console = Console(args.quiet, args.verbose, total=todo)
    runner = Runner(options, predictor, console, args.batch_size, args.prompt_depth_scale)
    for reason in work.rejected:
        runner.fail(None, reason)
    start = time.perf_counter()
    progress = f"of {todo} images (finished outputs kept, no partial files left; --skip-existing continues)"
    with interrupt_note(lambda: f"after {runner.written} {progress}"):
        runner.run(work.jobs)
    seconds = time.perf_counter() - start
    stale = remove_unchanged(leftovers)
    if stale:
        console.detail(f"removed {stale} temporary file(s) left by an earlier, killed run")

    if runner.written:
        console.info(_summary(args, runner, work, predictor, seconds, load_seconds))
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

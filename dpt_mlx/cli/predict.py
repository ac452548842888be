"""The command line: depth maps or segmentation maps for images, with a DPT / Depth Anything model.

    python -m dpt_mlx.generate --image photo.jpg                       # photo_depth.png (inferno)
    python -m dpt_mlx.generate --image a.jpg b.png --format png16,npy
    python -m dpt_mlx.generate --input-dir photos/ --output-dir out/ --batch-size 4
    python -m dpt_mlx.generate --model Intel/dpt-large-ade --image room.jpg --overlay

Exit status: 0 everything written; 1 some images failed (each is reported, the others are
written); 2 nothing was done (a usage error, a bad model, or every image failed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2
DEFAULT_MODEL = "Intel/dpt-large"
FORMATS = ("png", "png16", "npy")
COLORMAPS = ("inferno", "magma", "viridis", "plasma", "turbo", "gray")
DTYPES = ("float32", "float16", "bfloat16")
MIN_SHARE = 0.005  # segmentation: classes under this share of the pixels are summed up in one line

# (task, output kind) -> file name suffix; "overlay" is the --overlay picture.
SUFFIXES = {
    ("depth", "png"): "_depth.png",
    ("depth", "png16"): "_depth16.png",
    ("depth", "npy"): "_depth.npy",
    ("depth", "overlay"): "_depth_overlay.png",
    ("segmentation", "png"): "_seg.png",
    ("segmentation", "npy"): "_seg.npy",
    ("segmentation", "overlay"): "_seg_overlay.png",
}
OUTPUT_SUFFIXES = tuple(sorted({s for s in SUFFIXES.values() if s.endswith(".png")}))

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
                 <name>_depth.npy (float32), <name>_depth_overlay.png
  segmentation:  <name>_seg.png (palette, values = class ids), <name>_seg.npy (class ids),
                 <name>_seg_overlay.png
  Existing files are kept (that image fails) unless --overwrite; an input is never overwritten.
  Files are written under a temporary name and renamed, so an interrupted run leaves no partial file.
  --input-dir skips hidden files and files named like these outputs.

progress: a progress bar is drawn on stderr for more than one image when stderr is a terminal
  (not with --quiet). Results and the timing summary go to stdout, errors to stderr.

exit status: 0 all written; 1 some images failed (reported, the rest written);
  2 nothing done (usage error, unusable model, every image failed).

examples:
  python -m dpt_mlx.generate --image photo.jpg
  python -m dpt_mlx.generate --image photo.jpg --format npy --output depth.npy
  python -m dpt_mlx.generate --input-dir photos --output-dir depth --colormap turbo --batch-size 4
  python -m dpt_mlx.generate --model Intel/dpt-large-ade --image room.jpg --overlay --alpha 0.6"""


class UsageError(Exception):
    """A bad combination of options: one line, exit status 2."""


# ----------------------------------------------------------------------------------------------
# Arguments


def _formats(text: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"invalid format {text!r}; choose from {', '.join(FORMATS)} (comma-separated)")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


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
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    p = argparse.ArgumentParser(
        prog="dpt-mlx" if script.startswith("dpt-mlx") else "python -m dpt_mlx.generate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = p.add_argument_group("inputs")
    inputs.add_argument("--image", "-i", metavar="PATH", nargs="+", action="extend", default=[],
                        help="image file(s); repeat or list several")
    inputs.add_argument("--input-dir", metavar="DIR", action="append", default=[],
                        help="every image in DIR (.jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm .pgm .pnm; "
                             "not recursive)")
    inputs.add_argument("--model", "-m", default=DEFAULT_MODEL,
                        help="Hugging Face Hub repo id or local checkpoint directory (transformers or converted); "
                             f"default {DEFAULT_MODEL}. Depth or segmentation follows from the checkpoint")

    outputs = p.add_argument_group("outputs")
    where = outputs.add_mutually_exclusive_group()
    where.add_argument("--output", "-o", metavar="FILE",
                       help="output file, for one image and one output kind (.png or .npy)")
    where.add_argument("--output-dir", "-d", metavar="DIR",
                       help="directory for the outputs (created if needed); default: beside each input")
    outputs.add_argument("--format", "-f", type=_formats, action="append", metavar="FMT",
                         help="png (default: colour-mapped depth / palette class map), png16 (16-bit grayscale "
                              "depth, mode I;16), npy (float32 depth / class ids at the input size); "
                              "comma-separated or repeated for several")
    outputs.add_argument("--colormap", "-c", choices=COLORMAPS, default="inferno", metavar="NAME",
                         help=f"depth colours for png and overlay: {', '.join(COLORMAPS)} (default inferno; "
                              "gray writes an 8-bit grayscale PNG)")
    outputs.add_argument("--overlay", action="store_true",
                         help="also write the depth colours or class colours blended over the photo")
    outputs.add_argument("--alpha", type=_alpha, default=0.5, metavar="A",
                         help="opacity of the colours in --overlay, 0..1 (default 0.5)")
    outputs.add_argument("--overwrite", action="store_true", help="replace existing output files")

    run = p.add_argument_group("running")
    run.add_argument("--batch-size", "-b", type=_positive_int, default=1, metavar="N",
                     help="images per forward pass; images are batched when they have the same size after "
                          "preprocessing (default 1)")
    run.add_argument("--dtype", choices=DTYPES, default=None,
                     help="compute dtype (default: the checkpoint's)")
    run.add_argument("--version", action="version", version=f"dpt_mlx {_version()}")
    talk = run.add_mutually_exclusive_group()
    talk.add_argument("--quiet", "-q", action="store_true", help="print errors only")
    talk.add_argument("--verbose", "-v", action="store_true",
                      help="more detail: model, preprocessing, per-image timing and value ranges; tracebacks on errors")
    return p


# ----------------------------------------------------------------------------------------------
# Console


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


class Console:
    """stdout for results, stderr for errors and the progress bar (redrawn around every line)."""

    def __init__(self, quiet: bool, verbose: bool, total: int):
        self.quiet, self.verbose = quiet, verbose
        self.total, self.done = total, 0
        self.bar = not quiet and total > 1 and sys.stderr.isatty()
        self.start = time.perf_counter()

    def _clear(self) -> None:
        if self.bar and self.done < self.total:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def _draw(self) -> None:
        if not self.bar:
            return
        width = max(10, min(40, shutil.get_terminal_size((80, 20)).columns - 40))
        filled = int(width * self.done / self.total)
        elapsed = time.perf_counter() - self.start
        rate = f"{elapsed / self.done:.2f} s/img" if self.done else ""
        eta = f"ETA {elapsed / self.done * (self.total - self.done):.0f}s" if self.done else ""
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {rate} {eta}"
        sys.stderr.write("\r\033[K" + line.rstrip())
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def info(self, message: str) -> None:
        if not self.quiet:
            self._clear()
            print(message, flush=True)
            self._draw()

    def detail(self, message: str) -> None:
        if self.verbose:
            self.info(message)

    def error(self, message: str) -> None:
        self._clear()
        if self.verbose and sys.exc_info()[0] is not None:
            traceback.print_exc()
        print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)
        self._draw()

    def advance(self) -> None:
        self.done += 1
        self._draw()


# ----------------------------------------------------------------------------------------------
# Planning


@dataclass
class Job:
    path: Path
    outputs: list[tuple[str, Path]] = field(default_factory=list)
    image: object = None
    size: tuple[int, int] = (0, 0)
    pixels: np.ndarray | None = None


def _collect_inputs(args, console: Console) -> list[Path]:
    paths: list[Path] = []
    for name in args.image:
        path = Path(os.path.expanduser(name))
        if not path.exists():
            raise UsageError(f"no such image file: {name}")
        if path.is_dir():
            raise UsageError(f"{name} is a directory; use --input-dir {name}")
        if not os.access(path, os.R_OK):
            raise UsageError(f"cannot read {name}: permission denied")
        paths.append(path)
    for name in args.input_dir:
        directory = Path(os.path.expanduser(name))
        if not directory.is_dir():
            raise UsageError(f"--input-dir {name} is not a directory")
        from ..pipelines import IMAGE_EXTENSIONS, list_images

        try:
            found = list_images(directory)
        except OSError as e:
            raise UsageError(f"cannot list {name}: {e.strerror or e}") from None
        ours = [p for p in found if p.name.endswith(OUTPUT_SUFFIXES)]
        if ours:
            console.detail(f"skipping {len(ours)} file(s) in {name} named like dpt-mlx outputs "
                           f"({', '.join(OUTPUT_SUFFIXES)})")
        found = [p for p in found if p not in ours]
        if not found:
            raise UsageError(f"no images in {name} (looked for {' '.join(IMAGE_EXTENSIONS)})")
        paths.extend(found)
    seen, unique = set(), []
    for p in paths:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _kinds(args, task: str) -> list[str]:
    formats = [f for group in (args.format or []) for f in group]
    if not formats:
        formats = ["npy"] if args.output and args.output.lower().endswith(".npy") else ["png"]
    kinds = list(dict.fromkeys(formats))
    if task == "segmentation" and "png16" in kinds:
        raise UsageError("--format png16 is for depth models; this model does segmentation (use png or npy)")
    if args.overlay:
        kinds.append("overlay")
    return kinds


def _plan(args, paths: list[Path], task: str, console: Console) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Output paths per input; returns the jobs to run and (input, reason) for those that cannot."""
    kinds = _kinds(args, task)
    if args.output:
        if len(paths) != 1:
            raise UsageError(f"--output names one file but there are {len(paths)} images; use --output-dir")
        if len(kinds) != 1:
            raise UsageError(f"--output names one file but {len(kinds)} outputs were asked for "
                             f"({', '.join(kinds)}); use --output-dir")
        want = ".npy" if kinds[0] == "npy" else ".png"
        if Path(args.output).suffix.lower() != want:
            raise UsageError(f"--output {args.output}: a {kinds[0]} output needs a {want} file name")
    out_dir = Path(os.path.expanduser(args.output_dir)) if args.output_dir else None
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"--output-dir {args.output_dir} exists and is not a directory")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create --output-dir {args.output_dir}: {e.strerror or e}") from None
    if args.output:
        parent = Path(os.path.expanduser(args.output)).parent
        if not parent.is_dir():
            raise UsageError(f"the directory of --output {args.output} does not exist")

    inputs = {os.path.realpath(p) for p in paths}
    claimed: dict[str, Path] = {}
    jobs, rejected = [], []
    for path in paths:
        job, reason = Job(path), None
        for kind in kinds:
            if args.output:
                target = Path(os.path.expanduser(args.output))
            else:
                target = (out_dir or path.parent) / (path.stem + SUFFIXES[(task, kind)])
            real = os.path.realpath(target)
            if real in inputs:
                reason = f"{target} is an input image; refusing to overwrite it"
            elif real in claimed:
                reason = f"{target} would also be written for {claimed[real]}; rename one of them"
            elif target.is_dir():
                reason = f"{target} is a directory"
            elif target.exists() and not args.overwrite:
                reason = f"{target} exists; pass --overwrite to replace it"
            if reason:
                break
            job.outputs.append((kind, target))
        if reason:
            rejected.append((path, reason))
            continue
        for _, target in job.outputs:
            claimed[os.path.realpath(target)] = path
        jobs.append(job)
    return jobs, rejected


# ----------------------------------------------------------------------------------------------
# Writing


def _depth_kind(config) -> str:
    if getattr(config, "depth_estimation_type", "relative") == "metric":
        return "metric depth (larger = farther)"
    return "relative inverse depth (larger = closer)"


def _write_depth(job: Job, depth: np.ndarray, args, predictor) -> list[str]:
    from ..processing import visualize as V

    low, high = float(np.nanmin(depth)), float(np.nanmax(depth))
    text = {
        "Software": "dpt_mlx",
        "model": predictor.source,
        "depth_min": repr(low),
        "depth_max": repr(high),
        "description": f"{_depth_kind(predictor.config)}, min-max normalised per image: "
                       "depth = value / max_value * (depth_max - depth_min) + depth_min",
    }
    for kind, target in job.outputs:
        if kind == "png":
            V.save_png(V.colorize_depth(depth, args.colormap), target, text)
        elif kind == "png16":
            image, _, _ = V.depth_png16(depth)
            V.save_png(image, target, text)
        elif kind == "npy":
            V.save_npy(depth.astype(np.float32), target)
        elif kind == "overlay":
            colors = V.colorize_depth(depth, args.colormap).convert("RGB")
            V.save_png(V.overlay(job.image, colors, args.alpha), target)
    return [f"    depth range {low:.6g} .. {high:.6g}"]


def _write_segmentation(job: Job, classes: np.ndarray, args, predictor) -> list[str]:
    from ..processing import visualize as V

    num_labels = predictor.num_labels
    for kind, target in job.outputs:
        if kind == "png":
            text = {"Software": "dpt_mlx", "model": predictor.source}
            V.save_png(V.class_map_image(classes, num_labels), target, text)
        elif kind == "npy":
            dtype = np.uint8 if num_labels <= 256 else np.int32
            V.save_npy(classes.astype(dtype), target)
        elif kind == "overlay":
            V.save_png(V.overlay(job.image, V.color_classes(classes, num_labels), args.alpha), target)
    rows = V.class_shares(classes, predictor.id2label)
    shown = rows if args.verbose else [r for r in rows if r[2] >= MIN_SHARE] or rows[:1]
    lines = [f"    {share * 100:5.1f}%  {name} ({i})" for i, name, share in shown]
    if len(shown) < len(rows):
        rest = sum(r[2] for r in rows[len(shown):])
        lines.append(f"    {rest * 100:5.1f}%  {len(rows) - len(shown)} more classes under "
                     f"{MIN_SHARE * 100:g}% each (--verbose lists them)")
    return lines


# ----------------------------------------------------------------------------------------------
# Running


class Runner:
    def __init__(self, args, predictor, console: Console):
        self.args, self.predictor, self.console = args, predictor, console
        self.written, self.failed = 0, 0
        self.model_seconds = 0.0

    def fail(self, path: Path | None, message: str) -> None:
        """Report one image that could not be done; ``path`` prefixes the message when given."""
        self.failed += 1
        self.console.error(f"{path}: {message}" if path is not None else message)
        self.console.advance()

    def prepare(self, job: Job) -> bool:
        from ..errors import ImageError
        from ..pipelines import load_image

        try:
            image = load_image(job.path)
        except (ImageError, OSError) as e:
            self.fail(None, str(e))  # load_image's messages name the file
            return False
        try:
            job.pixels = self.predictor.preprocess(image)
        except ValueError as e:
            self.fail(job.path, f"cannot preprocess: {e}")
            return False
        job.image, job.size = image, (image.height, image.width)
        return True

    def run_batch(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        try:
            results = self.predictor.forward(np.stack([j.pixels for j in batch]), [j.size for j in batch])
        except (ValueError, OSError) as e:
            for job in batch:
                self.fail(job.path, f"inference failed: {e}")
            return
        seconds = time.perf_counter() - start
        self.model_seconds += seconds
        write = _write_depth if self.predictor.task == "depth-estimation" else _write_segmentation
        for job, result in zip(batch, results):
            job.pixels = None
            try:
                for _, target in job.outputs:
                    if target.exists() and not self.args.overwrite:
                        raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
                details = write(job, result, self.args, self.predictor)
            except FileExistsError as e:
                self.fail(None, str(e))
                continue
            except (ValueError, OSError) as e:
                self.fail(job.path, f"cannot write output: {getattr(e, 'strerror', None) or e}")
                continue
            finally:
                job.image = None
            self.written += 1
            names = ", ".join(str(t) for _, t in job.outputs)
            self.console.info(f"{job.path} -> {names}")
            if self.predictor.task == "image-segmentation":
                for line in details:
                    self.console.info(line)
            else:
                for line in details:
                    self.console.detail(line)
            self.console.detail(f"    {job.size[1]}x{job.size[0]}, model {seconds / len(batch):.3f} s/image "
                                f"(batch of {len(batch)})")
            self.console.advance()

    def run(self, jobs: list[Job]) -> None:
        size = self.args.batch_size
        pending: dict[tuple, list[Job]] = {}
        for job in jobs:
            if not self.prepare(job):
                continue
            bucket = pending.setdefault(job.pixels.shape, [])
            bucket.append(job)
            if len(bucket) >= size:
                self.run_batch(pending.pop(job.pixels.shape))
            elif sum(len(b) for b in pending.values()) >= 4 * size:  # bound memory with many shapes
                largest = max(pending, key=lambda k: len(pending[k]))
                self.run_batch(pending.pop(largest))
        for key in list(pending):
            self.run_batch(pending.pop(key))


def _load(args, console: Console):
    from ..pipelines import load_predictor

    if args.quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    start = time.perf_counter()
    predictor = load_predictor(args.model, dtype=args.dtype)
    seconds = time.perf_counter() - start
    for note in predictor.notes:
        console.detail(note)
    config = predictor.config
    console.detail(f"model {args.model}: {type(predictor.model).__name__} ({predictor.task}), "
                   f"{getattr(config, 'backbone_type', getattr(config, 'model_type', '?'))} backbone, "
                   f"dtype {str(predictor.model.dtype).replace('mlx.core.', '')}, loaded in {seconds:.2f} s")
    processor = predictor.image_processor
    console.detail(f"preprocessing: size {processor.size}, keep_aspect_ratio={processor.keep_aspect_ratio}, "
                   f"ensure_multiple_of={processor.ensure_multiple_of}")
    return predictor, seconds


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here
    if not args.image and not args.input_dir:
        parser.error("give at least one --image or an --input-dir")
    console = Console(args.quiet, args.verbose, total=0)
    from ..errors import DPTError

    try:
        paths = _collect_inputs(args, console)
        if args.output and len(paths) != 1:
            raise UsageError(f"--output names one file but there are {len(paths)} images; use --output-dir")
        predictor, load_seconds = _load(args, console)
        task = "depth" if predictor.task == "depth-estimation" else "segmentation"
        if task == "segmentation" and args.colormap != "inferno":
            console.detail("--colormap applies to depth only; segmentation uses the model's palette")
        jobs, rejected = _plan(args, paths, task, console)
    except (UsageError, DPTError) as e:
        console.error(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130

    console = Console(args.quiet, args.verbose, total=len(paths))
    runner = Runner(args, predictor, console)
    for _, reason in rejected:
        runner.fail(None, reason)
    start = time.perf_counter()
    try:
        runner.run(jobs)
    except KeyboardInterrupt:
        console.error(f"interrupted after {runner.written} of {len(paths)} images (no partial files left)")
        return 130
    seconds = time.perf_counter() - start

    if runner.written:
        per_image = seconds / max(1, runner.written + runner.failed)
        plural = "s" if runner.written != 1 else ""
        summary = (f"{runner.written} image{plural} written in {seconds + load_seconds:.2f} s "
                   f"(model load {load_seconds:.2f} s, {per_image:.2f} s/image)")
        if task == "depth":
            summary += f"; depth is {_depth_kind(predictor.config)}"
            if any(k in ("png", "png16", "overlay") for k, _ in jobs[0].outputs):
                summary += ", PNGs are min-max normalised per image"
        console.info(summary)
    if runner.failed:
        if len(paths) > 1:
            console.error(f"{runner.failed} of {len(paths)} images failed (see above)"
                          + ("; the others were written" if runner.written else ""))
        return EXIT_SOME_FAILED if runner.written else EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

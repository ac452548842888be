"""The predict command's files: which images to read, which output files each one gets, and writing them.

Planning refuses, before the model runs, every output that would overwrite an input, an existing
file (without ``--overwrite``) or another image's output; with ``--skip-existing`` an image whose
outputs all exist is skipped, and the existing outputs of one that has only some are replaced.
Writing goes through dpt_mlx.processing.visualize, whose writers publish a finished temporary file
only where the name is free (io/files.atomic_write), unless that file may be replaced: a file that
appeared in the meantime (another run) is reported for that image, never clobbered.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..processing.images import is_url, url_name
from .console import Console

CLASH = "{} appeared while this run was writing it (another run?); use --overwrite to replace it"
MIN_SHARE = 0.005  # segmentation: classes under this share of the pixels are summed up in one line

# (task, output kind) -> file name suffix; "overlay" is the --overlay picture.
SUFFIXES = {
    ("depth", "png"): "_depth.png",
    ("depth", "png16"): "_depth16.png",
    ("depth", "npy"): "_depth.npy",
    ("depth", "overlay"): "_depth_overlay.png",
    ("depth", "ply"): "_points.ply",
    ("segmentation", "png"): "_seg.png",
    ("segmentation", "npy"): "_seg.npy",
    ("segmentation", "overlay"): "_seg_overlay.png",
}
OUTPUT_SUFFIXES = tuple(sorted({s for s in SUFFIXES.values() if s.endswith(".png")}))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def shown(path) -> str:
    """``path`` for a line of output: control characters (a newline in a file name) escaped, so that
    each image keeps one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(path))


@dataclass(frozen=True)
class OutputOptions:
    """What each image gets written and where, made once from a command's arguments
    (:meth:`from_args`) or by a caller of its own (the Ray writer)."""

    formats: tuple[str, ...] = ()  # --format, in order; empty: png (or what --output's suffix names)
    output: str | None = None  # --output FILE: one image, one output
    output_dir: str | None = None  # --output-dir; None: beside each input
    output_dir_flag: str = "--output-dir"  # how the command calls it, for its messages
    input_dirs: tuple[str, ...] = ()  # --input-dir folders: with recursive, mirrored below output_dir
    recursive: bool = False
    overlay: bool = False
    alpha: float = 0.5
    colormap: str = "inferno"
    overwrite: bool = False
    skip_existing: bool = False
    verbose: bool = False  # every class of a segmentation map, not only the larger ones
    focal_length: float | None = None  # the point clouds' camera
    fov: float | None = None

    @classmethod
    def from_args(cls, args) -> OutputOptions:
        """The predict command's options (``--format`` groups flattened)."""
        return cls(
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
        )


@dataclass
class Job:
    """One input image: its output files, and while it is in flight the photo and the model input."""

    path: Path  # or an http(s) URL string
    outputs: list[tuple[str, Path]] = field(default_factory=list)  # (output kind, file)
    replace: set[Path] = field(default_factory=set)  # outputs that may be replaced (--skip-existing: a partial image)
    image: object = None  # the PIL image, for overlays
    size: tuple[int, int] = (0, 0)  # (H, W) of the photo: the outputs' size
    pixels: np.ndarray | None = None  # the preprocessed (3, H', W') model input
    note: str = ""  # said on the image's line (the point cloud's camera)
    published: list[Path] = field(default_factory=list)  # outputs written so far (while writing)
    prompt: Path | None = None  # --prompt-depth: the image's depth prompt file
    prompt_pixels: np.ndarray | None = None  # the (1, h, w) prompt in metres, while in flight


@dataclass
class Plan:
    """The images to run, and the reasons the others cannot be (each reported as a failed image)."""

    jobs: list[Job]
    rejected: list[str]
    skipped: list[Path] = field(default_factory=list)  # --skip-existing: images whose outputs all exist
    kept: list[Path] = field(default_factory=list)  # the outputs of the skipped images

    def targets(self) -> list[Path]:
        """Every output file this run writes or keeps."""
        return [t for job in self.jobs for _, t in job.outputs] + self.kept


# ----------------------------------------------------------------------------------------------
# Inputs


def _image_file(name: str) -> Path | str:
    if is_url(name):
        return name
    path = Path(os.path.expanduser(name))
    if not path.exists():
        raise UsageError(f"no such image file: {name}")
    if path.is_dir():
        raise UsageError(f"{name} is a directory; use --input-dir {name}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"cannot read {name}: permission denied")
    return path


def directory_images(name: str, console: Console, recursive: bool = False) -> list[Path]:
    from ..processing.images import IMAGE_EXTENSIONS, list_images

    directory = Path(os.path.expanduser(name))
    if not directory.is_dir():
        raise UsageError(f"--input-dir {name} is not a directory")
    try:
        found = list_images(directory, recursive=recursive)
    except OSError as e:
        raise UsageError(f"cannot list {name}: {e.strerror or e}") from None
    ours = [p for p in found if p.name.endswith(OUTPUT_SUFFIXES)]
    if ours:
        console.detail(
            f"skipping {len(ours)} file(s) in {name} named like dpt-mlx outputs ({', '.join(OUTPUT_SUFFIXES)})"
        )
    found = [p for p in found if p not in ours]
    if not found:
        raise UsageError(f"no images in {name} (looked for {' '.join(IMAGE_EXTENSIONS)})")
    return found


def _list_file(name: str) -> list[Path | str]:
    """The paths and URLs an --image-list names (``-``: stdin), relative ones taken from its folder.

    They are not checked here: a missing file fails as that image (reported, the others written)."""
    try:
        if name == "-":
            text, base = sys.stdin.read(), Path()
        else:
            path = Path(os.path.expanduser(name))
            text, base = path.read_text(encoding="utf-8"), path.parent
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read --image-list {name}: {getattr(e, 'strerror', None) or e}") from None
    lines = [line.strip() for line in text.splitlines()]
    entries = [
        line if is_url(line) else base / os.path.expanduser(line) for line in lines if line and not line.startswith("#")
    ]
    if not entries:
        raise UsageError(f"--image-list {name} names no images")
    return entries


def collect_inputs(args, console: Console) -> list[Path | str]:
    """The --image files and URLs, the images in each --input-dir and each --image-list, each once."""
    paths = [_image_file(name) for name in args.image]
    for name in args.input_dir:
        paths.extend(directory_images(name, console, getattr(args, "recursive", False)))
    for name in getattr(args, "image_list", []):
        paths.extend(_list_file(name))
    urls = [p for p in paths if is_url(p)]
    if urls and not args.output_dir and not args.output:
        raise UsageError(f"{urls[0]}: a URL input needs --output-dir (or --output) for its outputs")
    unique = {}
    for p in paths:
        unique.setdefault(p if is_url(p) else os.path.realpath(p), p)
    return list(unique.values())


# ----------------------------------------------------------------------------------------------
# Planning


def _kinds(options: OutputOptions, task: str) -> list[str]:
    formats = list(options.formats)
    if not formats:
        suffix = Path(options.output).suffix.lower() if options.output else ""
        formats = [{".npy": "npy", ".ply": "ply"}.get(suffix, "png")]
    kinds = list(dict.fromkeys(formats))
    for depth_only in ("png16", "ply"):
        if task == "segmentation" and depth_only in kinds:
            raise UsageError(
                f"--format {depth_only} is for depth models; this model does segmentation (use png or npy)"
            )
    if options.overlay:
        kinds.append("overlay")
    return kinds


def _check_output_file(options: OutputOptions, paths: list[Path], kinds: list[str]) -> None:
    if len(paths) != 1:
        raise UsageError(f"--output names one file but there are {len(paths)} images; use --output-dir")
    if len(kinds) != 1:
        raise UsageError(
            f"--output names one file but {len(kinds)} outputs were asked for ({', '.join(kinds)}); use --output-dir"
        )
    want = {"npy": ".npy", "ply": ".ply"}.get(kinds[0], ".png")
    if Path(options.output).suffix.lower() != want:
        raise UsageError(f"--output {options.output}: a {kinds[0]} output needs a {want} file name")


def _output_dir(options: OutputOptions) -> Path | None:
    """The --output-dir, created; checks that the directory of --output exists."""
    out_dir = Path(os.path.expanduser(options.output_dir)) if options.output_dir else None
    flag, name = options.output_dir_flag, options.output_dir
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"{flag} {name} exists and is not a directory")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create {flag} {name}: {e.strerror or e}") from None
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write in {flag} {name}: permission denied")
    if options.output:
        parent = Path(os.path.expanduser(options.output)).parent
        if not parent.is_dir():
            raise UsageError(f"the directory of --output {options.output} does not exist")
    return out_dir


def may_replace(options: OutputOptions, job: Job, target: Path) -> bool:
    """Whether writing ``target`` of ``job`` may replace a file of that name."""
    return options.overwrite or target in job.replace


def _refusal(target: Path, inputs: set[str], claimed: dict[str, Path], overwrite: bool) -> str | None:
    """Why ``target`` cannot be written, or None (``overwrite``: an existing file may be replaced)."""
    real = os.path.realpath(target)
    if real in inputs:
        return f"{target} is an input image; refusing to overwrite it"
    if real in claimed:
        return f"{target} would also be written for {claimed[real]}; rename one of them"
    if target.is_dir():
        return f"{target} is a directory"
    if target.exists() and not overwrite:
        return f"{target} exists; pass --overwrite to replace it"
    return None


def _subfolder(options: OutputOptions, path: Path) -> Path:
    """--recursive: the folder of ``path`` below the --input-dir it was found in (mirrored in --output-dir)."""
    if options.recursive:
        for name in options.input_dirs:
            try:
                return path.parent.relative_to(Path(os.path.expanduser(name)))
            except ValueError:
                pass
    return Path()


def _target(options: OutputOptions, out_dir: Path | None, path: Path | str, suffix: str) -> Path:
    if options.output:
        return Path(os.path.expanduser(options.output))
    if is_url(path):  # collect_inputs made sure that there is an --output-dir
        return out_dir / (Path(url_name(path)).stem + suffix)
    return (out_dir / _subfolder(options, path) if out_dir else path.parent) / (path.stem + suffix)


def plan(options: OutputOptions, paths: list[Path | str], task: str) -> Plan:
    """The output files of every input (``task`` is "depth" or "segmentation")."""
    kinds = _kinds(options, task)
    if options.output:
        _check_output_file(options, paths, kinds)
    out_dir = _output_dir(options)
    inputs = {os.path.realpath(p) for p in paths if not is_url(p)}
    claimed: dict[str, Path] = {}  # realpath of an output -> the input it is written for
    skip = options.skip_existing
    result = Plan([], [])
    for path in paths:
        job, reason = Job(path), None
        for kind in kinds:
            target = _target(options, out_dir, path, SUFFIXES[(task, kind)])
            reason = _refusal(target, inputs, claimed, options.overwrite or skip)
            if reason:
                break
            job.outputs.append((kind, target))
        if reason:
            result.rejected.append(reason)
            continue
        if skip:
            job.replace = {t for _, t in job.outputs if t.is_file()}
            if len(job.replace) == len(job.outputs):
                result.skipped.append(path)
                result.kept += [t for _, t in job.outputs]
                continue
        for _, target in job.outputs:
            claimed[os.path.realpath(target)] = path
        result.jobs.append(job)
    return result


# ----------------------------------------------------------------------------------------------
# Writing


def depth_kind(config, prompted: bool = False) -> str:
    """What a depth model's values are, for the summary and the PNG text chunks."""
    from ..predictor import predicts_metres

    if predicts_metres(config, prompted):
        return "metric depth in metres (larger = farther)"
    if getattr(config, "model_type", None) == "prompt_depth_anything":
        return "relative depth (no depth prompt given, so no scale)"
    return "relative inverse depth (larger = closer)"


def write_depth(job: Job, depth: np.ndarray, options: OutputOptions, predictor) -> list[str]:
    """Write the depth outputs of ``job``; returns the lines that describe them (for --verbose)."""
    from ..processing import visualize as V

    low, high = float(np.nanmin(depth)), float(np.nanmax(depth))
    text = {
        "Software": "dpt_mlx",
        "model": predictor.source,
        "depth_min": repr(low),
        "depth_max": repr(high),
        "description": f"{depth_kind(predictor.config, job.prompt is not None)}, min-max normalised per image: "
        "depth = value / max_value * (depth_max - depth_min) + depth_min",
    }
    for kind, target in job.outputs:
        replace = may_replace(options, job, target)
        if kind == "png":
            V.save_png(V.colorize_depth(depth, options.colormap), target, text, overwrite=replace)
        elif kind == "png16":
            image, _, _ = V.depth_png16(depth)
            V.save_png(image, target, text, overwrite=replace)
        elif kind == "npy":
            V.save_npy(depth.astype(np.float32), target, overwrite=replace)
        elif kind == "overlay":
            colors = V.colorize_depth(depth, options.colormap).convert("RGB")
            V.save_png(V.overlay(job.image, colors, options.alpha), target, overwrite=replace)
        elif kind == "ply":
            from .predict_points import write_points

            job.note = write_points(job, depth, target, options, predictor, overwrite=replace)
        job.published.append(target)
    return [f"    depth range {low:.6g} .. {high:.6g}"]


def _class_lines(classes: np.ndarray, id2label: dict, verbose: bool) -> list[str]:
    """The classes present, largest first; without ``verbose`` the small ones summed in one line."""
    from ..processing import visualize as V

    rows = V.class_shares(classes, id2label)
    shown = rows if verbose else [r for r in rows if r[2] >= MIN_SHARE] or rows[:1]
    lines = [f"    {share * 100:5.1f}%  {name} ({i})" for i, name, share in shown]
    if len(shown) < len(rows):
        rest = sum(r[2] for r in rows[len(shown) :])
        lines.append(
            f"    {rest * 100:5.1f}%  {len(rows) - len(shown)} more classes under "
            f"{MIN_SHARE * 100:g}% each (--verbose lists them)"
        )
    return lines


def write_segmentation(job: Job, classes: np.ndarray, options: OutputOptions, predictor) -> list[str]:
    """Write the segmentation outputs of ``job``; returns the lines listing its classes."""
    from ..processing import visualize as V

    num_labels = predictor.num_labels
    for kind, target in job.outputs:
        replace = may_replace(options, job, target)
        if kind == "png":
            text = {"Software": "dpt_mlx", "model": predictor.source}
            V.save_png(V.class_map_image(classes, num_labels), target, text, overwrite=replace)
        elif kind == "npy":
            V.save_npy(classes.astype(V.class_id_dtype(num_labels)), target, overwrite=replace)
        elif kind == "overlay":
            colors = V.color_classes(classes, num_labels)
            V.save_png(V.overlay(job.image, colors, options.alpha), target, overwrite=replace)
        job.published.append(target)
    return _class_lines(classes, predictor.id2label, options.verbose)


def write_outputs(
    job: Job, result: np.ndarray, options: OutputOptions, predictor
) -> tuple[list[str] | None, str | None]:
    """Write every output of ``job`` (depth or class map ``result``), creating mirrored subfolders.

    Returns the lines that describe them and None, or None and the one-line reason nothing more was
    written. An output that did not exist when the run was planned is published only if its name is
    still free (another run may have written it since): the image then fails with a clash, and the
    file is left as the other run wrote it. Any other failure (a full disk, an interruption) removes
    the outputs this image had already created, so that an image is either written or not.
    """
    write = write_depth if predictor.task == "depth-estimation" else write_segmentation
    existed: set[Path] = set()
    job.published = []
    try:
        for _, target in job.outputs:
            target.parent.mkdir(parents=True, exist_ok=True)  # --recursive: a mirrored subfolder
            if target.exists():
                if not may_replace(options, job, target):
                    raise FileExistsError(CLASH.format(target))  # cheap early check; the writer decides
                existed.add(target)
        return write(job, result, options, predictor), None
    except FileExistsError as e:
        return None, CLASH.format(shown(e.filename)) if e.filename else str(e)
    except (ValueError, OSError) as e:
        _remove_created(job, existed)
        what = shown(e.filename) if getattr(e, "filename", None) else "output"
        return None, f"{shown(job.path)}: cannot write {what}: {getattr(e, 'strerror', None) or e}"
    except BaseException:  # Ctrl-C, SIGTERM
        _remove_created(job, existed)
        raise


def _remove_created(job: Job, existed: set[Path]) -> None:
    """Remove the outputs of ``job`` that this run created (a replaced file cannot be restored: kept)."""
    for target in job.published:
        if target not in existed:
            try:
                target.unlink()
            except OSError:
                pass
    job.published = []

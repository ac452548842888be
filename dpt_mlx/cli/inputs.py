"""Which images a command reads and which files each one gets, decided before the model runs.

``collect_inputs`` (the predict command's --image, --input-dir, --image-list) and
``collect_batch_inputs`` (the batch command's folder, glob pattern or ``pyarrow.fs`` URI) find the
images; hidden files and files named like dpt-mlx outputs are left out of folders. ``plan`` gives
each image its output files and refuses, before anything is computed, every output that would
overwrite an input, an existing file (without ``--overwrite``) or another image's output; with
``--skip-existing`` an image whose outputs all exist is skipped, and the existing outputs of one
that has only some are replaced. ``assign_prompts`` pairs images with their depth prompts
(``--prompt-depth``: one file per image, in order, or a folder of files named like the images).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import UsageError, first_line
from ..processing.depth_prompt import PROMPT_EXTENSIONS
from ..processing.images import IMAGE_EXTENSIONS, is_url, list_images, url_name
from ..processing.writers import OUTPUT_SUFFIXES, SUFFIXES, Job, OutputOptions
from ..ray import is_uri
from .console import Console


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
# Images


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
    """The images in folder ``name`` (below it too with ``recursive``), less files named like outputs."""
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


def collect_inputs(
    images: list[str], input_dirs: list[str], image_lists: list[str], options: OutputOptions, console: Console
) -> list[Path | str]:
    """The --image files and URLs, the images in each --input-dir and each --image-list, each once."""
    paths = [_image_file(name) for name in images]
    for name in input_dirs:
        paths.extend(directory_images(name, console, options.recursive))
    for name in image_lists:
        paths.extend(_list_file(name))
    urls = [p for p in paths if is_url(p)]
    if urls and not options.output_dir and not options.output:
        raise UsageError(f"{urls[0]}: a URL input needs --output-dir (or --output) for its outputs")
    unique = {}
    for p in paths:
        unique.setdefault(p if is_url(p) else os.path.realpath(p), p)
    return list(unique.values())


@dataclass
class Inputs:
    """The images: where each one's outputs are named from (``paths``), what the workers open
    (``sources``, in ``filesystem`` when it is set) and what messages call them (``names``)."""

    paths: list = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    base: str = ""  # the folder the outputs' subfolders are taken relative to
    mirror: bool = False  # whether subfolders below ``base`` are kept
    filesystem: object = None


def _is_image_name(relative: PurePosixPath) -> bool:
    """Whether a file (by its path below the input's base) is an input: an image, not hidden, not an output."""
    return (
        relative.suffix.lower() in IMAGE_EXTENSIONS
        and not relative.name.endswith(OUTPUT_SUFFIXES)
        and not any(part.startswith(".") for part in relative.parts)
    )


def _uri_inputs(uri: str, recursive: bool) -> Inputs:
    """The images a ``pyarrow.fs`` URI names (a file, or a folder's files), listed once on the driver."""
    try:
        from pyarrow import fs

        filesystem, root = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
        if info.type == fs.FileType.NotFound:
            raise UsageError(f"--input {uri} does not exist")
        if info.type == fs.FileType.File:
            files, base, uri_base = [root], str(PurePosixPath(root).parent), uri.rsplit("/", 1)[0]
        else:
            found = filesystem.get_file_info(fs.FileSelector(root, recursive=recursive))
            files, base, uri_base = sorted(i.path for i in found if i.type == fs.FileType.File), root, uri.rstrip("/")
    except (OSError, ValueError, ImportError) as e:
        raise UsageError(f"cannot list --input {uri}: {first_line(e)}") from None
    inputs = Inputs(base=base, mirror=recursive, filesystem=filesystem)
    for path in files:
        relative = PurePosixPath(path).relative_to(base)
        if _is_image_name(relative):
            inputs.paths.append(PurePosixPath(path))
            inputs.sources.append(path)
            inputs.names.append(f"{uri_base}/{relative}")
    if not inputs.paths:
        raise UsageError(f"no images in {uri} (looked for {' '.join(IMAGE_EXTENSIONS)})")
    return inputs


def _glob_base(pattern: str) -> str:
    """The folder of a glob pattern above its first wildcard."""
    parts = Path(pattern).parts
    static = parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    return str(Path(*static)) if static else "."


def collect_batch_inputs(text: str, recursive: bool, console: Console) -> Inputs:
    """The images the batch command's --input names; a UsageError when it names none."""
    if is_uri(text):
        return _uri_inputs(text, recursive)
    expanded = os.path.expanduser(text)
    if os.path.isdir(expanded):
        paths = directory_images(expanded, console, recursive)
        base, mirror = expanded, recursive
    elif glob.has_magic(expanded):
        base, mirror = _glob_base(expanded), True
        paths = sorted(
            Path(p)
            for p in glob.glob(expanded, recursive=recursive)
            if os.path.isfile(p) and _is_image_name(PurePosixPath(Path(p).relative_to(base).as_posix()))
        )
        if not paths:
            raise UsageError(f"--input {text} matches no images (looked for {' '.join(IMAGE_EXTENSIONS)})")
    elif os.path.isfile(expanded):
        paths, base, mirror = [Path(expanded)], os.path.dirname(expanded) or ".", False
    else:
        raise UsageError(f"--input {text}: no such folder or file")
    return Inputs(paths=paths, sources=[str(p) for p in paths], names=[str(p) for p in paths], base=base, mirror=mirror)


# ----------------------------------------------------------------------------------------------
# Outputs


_BY_SUFFIX = {".npy": "npy", ".ply": "ply", ".glb": "glb", ".exr": "exr"}  # --output's name -> its format


def _kinds(options: OutputOptions, task: str) -> list[str]:
    """The output kinds of one task ("depth", "normals", "segmentation"); UsageError for a format it has not."""
    formats = list(options.formats)
    if not formats:
        suffix = Path(options.output).suffix.lower() if options.output else ""
        formats = [_BY_SUFFIX.get(suffix, "png")]
    kinds = list(dict.fromkeys(formats))
    for kind in kinds:
        if (task, kind) not in SUFFIXES:
            what = {"segmentation": "does segmentation", "normals": "predicts surface normals"}[task]
            raise UsageError(f"--format {kind} is for depth models; this model {what} (use png or npy)")
    if options.overlay:
        if task == "normals":
            raise UsageError("--overlay is for depth and segmentation; this model predicts surface normals")
        kinds.append("overlay")
    return kinds


def _dense_kinds(options: OutputOptions, tasks: tuple[str, ...]) -> list[str]:
    """A dense prediction's output kinds, ``"<task>:<kind>"``: each format for every task that has it."""
    kinds = []
    for task in tasks:
        narrowed = dataclasses.replace(
            options,
            formats=tuple(f for f in options.formats if (task, f) in SUFFIXES),
            overlay=options.overlay and task != "normals",
        )
        if options.formats and not narrowed.formats:
            continue
        kinds += [f"{task}:{kind}" for kind in _kinds(narrowed, task)]
    unused = [f for f in options.formats if not any(k.endswith(f":{f}") for k in kinds)]
    if unused:
        raise UsageError(f"--format {unused[0]} is not written for --task {','.join(tasks)}")
    return kinds


def _check_output_file(options: OutputOptions, paths: list[Path], kinds: list[str]) -> None:
    if len(paths) != 1:
        raise UsageError(f"--output names one file but there are {len(paths)} images; use --output-dir")
    if len(kinds) != 1:
        raise UsageError(
            f"--output names one file but {len(kinds)} outputs were asked for ({', '.join(kinds)}); use --output-dir"
        )
    kind = kinds[0].split(":")[-1]  # a dense prediction's "<task>:<kind>"
    want = {k: suffix for suffix, k in _BY_SUFFIX.items()}.get(kind, ".png")
    if Path(options.output).suffix.lower() != want:
        raise UsageError(f"--output {options.output}: --format {kind} needs a {want} file name")


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
    if options.output:  # the one output, and a sidecar beside it with its own suffix
        output = Path(os.path.expanduser(options.output))
        return output.with_suffix(".json") if suffix.endswith(".json") else output
    if is_url(path):  # collect_inputs made sure that there is an --output-dir
        return out_dir / (Path(url_name(path)).stem + suffix)
    return (out_dir / _subfolder(options, path) if out_dir else path.parent) / (path.stem + suffix)


def plan(
    options: OutputOptions, paths: list[Path | str], task: str, camera: bool = False, tasks: tuple[str, ...] = ()
) -> Plan:
    """The output files of every input (``task`` is "depth", "normals", "segmentation", or "dense": the
    ``tasks`` of a dense prediction); with ``camera`` (a model that gives one: Depth Pro) an npy output
    gets a JSON sidecar with the camera beside it."""
    kinds = _dense_kinds(options, tasks) if task == "dense" else _kinds(options, task)
    if options.output:
        _check_output_file(options, paths, kinds)
    if camera and "npy" in kinds:
        kinds.append("camera")
    out_dir = _output_dir(options)
    inputs = {os.path.realpath(p) for p in paths if not is_url(p)}
    claimed: dict[str, Path] = {}  # realpath of an output -> the input it is written for
    skip = options.skip_existing
    result = Plan([], [])
    for path in paths:
        job, reason = Job(path), None
        for kind in kinds:
            key = tuple(kind.split(":", 1)) if task == "dense" else (task, kind)
            target = _target(options, out_dir, path, SUFFIXES[key])
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
# Depth prompts


def _in_folder(folder: Path, image: Path, root: Path | None) -> Path | None:
    """The prompt file for ``image`` in ``folder`` (mirroring ``image``'s place under ``root``)."""
    sub = image.parent.relative_to(root) if root is not None and image.is_relative_to(root) else Path()
    for ext in PROMPT_EXTENSIONS:
        candidate = folder / sub / f"{image.stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def assign_prompts(prompt_depth: list[str], input_dirs: list[str], jobs: list[Job], predictor) -> list[str]:
    """Set each job's ``prompt`` from the --prompt-depth files or folder; returns the reasons of the
    jobs that have none (removed from ``jobs``). UsageError when the option cannot apply at all."""
    given = [Path(p).expanduser() for p in prompt_depth]
    if not given:
        return []
    if not predictor.takes_prompt:
        raise UsageError(
            f"--prompt-depth is for Prompt Depth Anything models; {predictor.source} takes no depth prompt"
        )
    folder = given[0] if len(given) == 1 and given[0].is_dir() else None
    if folder is None:
        missing = [str(p) for p in given if not p.is_file()]
        if missing:
            raise UsageError(f"--prompt-depth: no such file: {missing[0]}")
        if len(given) != len(jobs):
            raise UsageError(
                f"--prompt-depth names {len(given)} file(s) for {len(jobs)} image(s); give one per "
                "image, in order, or a folder of prompts named like the images"
            )
        for job, path in zip(jobs, given):
            job.prompt = path
        return []
    roots = [Path(d).expanduser() for d in input_dirs]
    rejected, kept = [], []
    for job in jobs:
        image = Path(job.path)
        root = next((r for r in roots if image.is_relative_to(r)), None)
        job.prompt = _in_folder(folder, image, root)
        if job.prompt is None:
            rejected.append(
                f"{job.path}: no depth prompt for it in {folder} (looked for {image.stem}{'|'.join(PROMPT_EXTENSIONS)})"
            )
        else:
            kept.append(job)
    jobs[:] = kept
    return rejected

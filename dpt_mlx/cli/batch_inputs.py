"""The batch command's inputs: the images a folder, a glob pattern or a ``pyarrow.fs`` URI names.

Hidden files and folders and files named like dpt-mlx outputs are left out, as ``dpt-mlx --input-dir``
does. Each image keeps the path its outputs are named from (its folder below the input's base is
mirrored in the output folder) and the name the workers open it by.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import UsageError, first_line
from ..processing.images import IMAGE_EXTENSIONS
from ..ray import is_uri
from .console import Console
from .predict_outputs import OUTPUT_SUFFIXES, directory_images


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


def collect(args, console: Console) -> Inputs:
    """The images --input names; a UsageError when it names none."""
    text = args.input
    if is_uri(text):
        return _uri_inputs(text, args.recursive)
    expanded = os.path.expanduser(text)
    if os.path.isdir(expanded):
        paths = directory_images(expanded, console, args.recursive)
        base, mirror = expanded, args.recursive
    elif glob.has_magic(expanded):
        base, mirror = _glob_base(expanded), True
        paths = sorted(
            Path(p)
            for p in glob.glob(expanded, recursive=args.recursive)
            if os.path.isfile(p) and _is_image_name(PurePosixPath(Path(p).relative_to(base).as_posix()))
        )
        if not paths:
            raise UsageError(f"--input {text} matches no images (looked for {' '.join(IMAGE_EXTENSIONS)})")
    elif os.path.isfile(expanded):
        paths, base, mirror = [Path(expanded)], os.path.dirname(expanded) or ".", False
    else:
        raise UsageError(f"--input {text}: no such folder or file")
    return Inputs(paths=paths, sources=[str(p) for p in paths], names=[str(p) for p in paths], base=base, mirror=mirror)

"""The predict command's depth prompts (Prompt Depth Anything): the options and which prompt file
belongs to which image.

``--prompt-depth`` names one file per image (in the order the images are given), or one folder
in which each image's prompt is the file with the image's name and a prompt extension
(``IMG_0001.jpg`` -> ``IMG_0001.png`` or ``IMG_0001.npy``; with ``--recursive``, under the same
subfolder). Values: see dpt_mlx.processing.depth_prompt (``.npy`` / float TIFF in metres, integer
PNG / TIFF in millimetres); ``--prompt-depth-scale`` gives the metres per stored unit instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..processing.depth_prompt import PROMPT_EXTENSIONS
from .predict_points import _positive_float


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
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
        type=_positive_float,
        metavar="M",
        default=None,
        help="metres per stored prompt value, overriding the file's convention "
        "(e.g. 0.001 for a millimetre .npy, 1 for a metre PNG)",
    )


def _in_folder(folder: Path, image: Path, root: Path | None) -> Path | None:
    """The prompt file for ``image`` in ``folder`` (mirroring ``image``'s place under ``root``)."""
    sub = image.parent.relative_to(root) if root is not None and image.is_relative_to(root) else Path()
    for ext in PROMPT_EXTENSIONS:
        candidate = folder / sub / f"{image.stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def assign_prompts(args, jobs, predictor) -> list[str]:
    """Set each job's ``prompt`` from --prompt-depth; returns the reasons of the jobs that have
    none (removed from ``jobs``). UsageError when the option cannot apply at all."""
    given = [Path(p).expanduser() for p in args.prompt_depth]
    if not given:
        return []
    if not predictor.takes_prompt:
        raise UsageError(f"--prompt-depth is for Prompt Depth Anything models; {args.model} takes no depth prompt")
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
    roots = [Path(d).expanduser() for d in args.input_dir]
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

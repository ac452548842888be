"""The predict command's point clouds (--format ply): the options, which depth may be made 3D, and the
writer that back-projects one image's post-processed depth (the npy output's array) with its colours."""

from __future__ import annotations

import argparse

import numpy as np

from ..errors import UsageError

METRIC_EXAMPLE = "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _fov(text: str) -> float:
    value = _positive_float(text)
    if value >= 180:
        raise argparse.ArgumentTypeError(f"must be between 0 and 180 degrees, got {text!r}")
    return value


def add_point_options(parser: argparse.ArgumentParser) -> None:
    """--focal-length / --fov (one of them) and --depth-kind, for --format ply."""
    group = parser.add_argument_group("point clouds (--format ply)")
    camera = group.add_mutually_exclusive_group()
    camera.add_argument(
        "--focal-length",
        type=_positive_float,
        metavar="PX",
        help="focal length in pixels of the input image (default: from the photo's EXIF, "
        "else a 60 degree horizontal field of view)",
    )
    camera.add_argument("--fov", type=_fov, metavar="DEG", help="horizontal field of view in degrees")
    group.add_argument(
        "--depth-kind",
        choices=("relative", "metric"),
        default=None,
        help="what the model's depth is, where its config cannot say (e.g. DPT-DINOv2 NYU/KITTI "
        "or a fine-tuned checkpoint predict metres: metric); default: from the config",
    )


def is_metric(config, args) -> bool:
    """Whether the depth is metric: --depth-kind, else the model (a metric config, ZoeDepth, or
    Prompt Depth Anything given --prompt-depth)."""
    from ..predictor import predicts_metres

    kind = getattr(args, "depth_kind", None)
    if kind is not None:
        return kind == "metric"
    return predicts_metres(config, prompted=bool(getattr(args, "prompt_depth", None)))


def wants_points(options) -> bool:
    """Whether the output options' formats (or their --output name) ask for a point cloud."""
    return "ply" in options.formats or (
        not options.formats and bool(options.output) and options.output.lower().endswith(".ply")
    )


def check_points(args, options, predictor) -> None:
    """UsageError unless --format ply can be written by this model (metric depth, plyfile installed)."""
    if not wants_points(options):
        return
    if predictor.task != "depth-estimation":
        raise UsageError("--format ply is for depth models; this model does segmentation")
    if not is_metric(predictor.config, args):
        raise UsageError(
            f"--format ply needs metric depth, but {args.model} predicts relative depth (no scale); "
            f"use a metric model such as {METRIC_EXAMPLE}, or pass --depth-kind metric if this "
            "checkpoint's depth is in metres"
        )
    from ..processing.points import require_plyfile

    try:
        require_plyfile()
    except ImportError as e:
        raise UsageError(str(e)) from None


def write_points(job, depth: np.ndarray, target, options, predictor, overwrite: bool) -> str:
    """Write ``job``'s point cloud to ``target``; returns the note on its camera for the image's line."""
    from ..processing import points as P

    h, w = depth.shape
    camera = P.camera_intrinsics(job.path, w, focal_length=options.focal_length, fov=options.fov, height=h)
    xyz, rgb = P.depth_to_points(depth, camera, image=job.image)
    comments = [
        f"dpt_mlx {predictor.source}",
        "OpenCV camera: +x right, +y down, +z forward; units of the depth (metres for metric models)",
        f"fx {camera.fx!r} fy {camera.fy!r} cx {camera.cx!r} cy {camera.cy!r} ({camera.source})",
    ]
    P.save_ply(xyz, target, rgb, comments=comments, overwrite=overwrite)
    return f"{len(xyz)} points, {camera.describe()}"

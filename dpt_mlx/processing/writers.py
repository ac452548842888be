"""Writing what a model predicted: one writer per output kind, for images and for videos.

The predict command, its --video path, the Ray workers and the app all write through this module.
Every file goes through io/files' atomic writer: a finished temporary file is published only where
the name is free, unless that file may be replaced (``--overwrite``, or an output of the same image
left by an interrupted run with ``--skip-existing``); a file that appeared in the meantime (another
run) is reported for that image, never clobbered, and an image is either written whole or not at all.

Images: ``<name>_depth.png`` (colour map), ``_depth16.png``, ``_depth.npy``, ``_depth.exr``,
``_depth_overlay.png``, ``_points.ply`` and ``_mesh.glb`` (metric depth), ``_seg.png`` / ``_seg.npy`` /
``_seg_overlay.png``. Videos: ``_depth.mp4``, ``_depth.npz``, ``_depth16/`` (see :class:`Mp4Output`,
:class:`NpzOutput`, :class:`Png16Output`), each written beside its target under a hidden name and
published together when the whole video is done.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import files
from ..io.files import TEMP_SUFFIX, discard, signals_deferred, temp_beside, umask_mode
from .mesh import DEFAULT_EDGE_THRESHOLD, DEFAULT_MAX_VERTICES

CLASH = "{} appeared while this run was writing it (another run?); use --overwrite to replace it"
MIN_SHARE = 0.005  # segmentation: classes under this share of the pixels are summed up in one line

# (task, output kind) -> file name suffix; "overlay" is the --overlay picture.
SUFFIXES = {
    ("depth", "png"): "_depth.png",
    ("depth", "png16"): "_depth16.png",
    ("depth", "npy"): "_depth.npy",
    ("depth", "overlay"): "_depth_overlay.png",
    ("depth", "ply"): "_points.ply",
    ("depth", "exr"): "_depth.exr",
    ("depth", "glb"): "_mesh.glb",
    ("depth", "camera"): "_depth.json",  # beside the npy of a model that gives a camera (Depth Pro)
    ("normals", "png"): "_normals.png",  # RGB: each component from [-1, 1] to 0..255
    ("normals", "npy"): "_normals.npy",  # float32 (H, W, 3), as the pipeline gives them
    ("segmentation", "png"): "_seg.png",
    ("segmentation", "npy"): "_seg.npy",
    ("segmentation", "overlay"): "_seg_overlay.png",
}
VIDEO_SUFFIXES = {"mp4": "_depth.mp4", "npz": "_depth.npz", "png16": "_depth16"}
OUTPUT_SUFFIXES = tuple(sorted({s for s in SUFFIXES.values() if s.endswith(".png")}))
_CHUNK = 16 * 2**20  # bytes copied at a time into a video's npz
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def shown(path) -> str:
    """``path`` for a line of output: control characters (a newline in a file name) escaped, so that
    each image keeps one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(path))


@dataclass(frozen=True)
class OutputOptions:
    """What each image (or video) gets written and where: made once from a command's arguments, or by
    a caller of its own (the Ray writer)."""

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
    focal_length: float | None = None  # the point clouds' and meshes' camera (camera_for)
    fov: float | None = None
    exif: bool = True  # the photo's EXIF focal length, when neither of those is given (--no-exif: not)
    mesh_edge_threshold: float = DEFAULT_EDGE_THRESHOLD  # glb: drop triangles across larger relative depth jumps
    mesh_max_vertices: int | None = DEFAULT_MAX_VERTICES  # glb: decimate the grid to at most this many vertices
    stabilize: bool = False  # video: one depth range for the whole mp4 (processing/video.Stabilizer)
    audio: bool = True  # video: copy the input's audio into the mp4


@dataclass
class Job:
    """One input image: its output files, and while it is in flight the photo and the model input."""

    path: Path  # or an http(s) URL string
    outputs: list[tuple[str, Path]] = field(default_factory=list)  # (output kind, file)
    replace: set[Path] = field(default_factory=set)  # outputs that may be replaced (--skip-existing: a partial image)
    image: object = None  # the PIL image, for overlays
    size: tuple[int, int] = (0, 0)  # (H, W) of the photo: the outputs' size
    pixels: np.ndarray | None = None  # the preprocessed (3, H', W') model input
    note: str = ""  # said on the image's line (the point cloud's or mesh's camera)
    published: list[Path] = field(default_factory=list)  # outputs written so far (while writing)
    prompt: Path | None = None  # --prompt-depth: the image's depth prompt file
    prompt_pixels: np.ndarray | None = None  # the (1, h, w) prompt in metres, while in flight
    focal: tuple[float, str] | None = None  # Depth Pro: the focal length (px) its depth was made with, and from what
    field_of_view: float | None = None  # Depth Pro: the horizontal field of view (degrees) of that focal length
    normals: np.ndarray | None = None  # a dense model's surface normals (H, W, 3): the 3D outputs' vertex normals


def may_replace(options: OutputOptions, job: Job, target: Path) -> bool:
    """Whether writing ``target`` of ``job`` may replace a file of that name."""
    return options.overwrite or target in job.replace


# ----------------------------------------------------------------------------------------------
# Images


def depth_kind(config, prompted: bool = False) -> str:
    """What a depth model's values are, for the summary and the PNG text chunks."""
    from ..configs import predicts_metres

    if getattr(config, "model_type", None) == "chmv2":
        return "canopy height in metres (larger = taller)"
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
        **camera_fields(job),
    }
    shapes, camera = [], None  # what the ply / glb hold, and their camera (one for both: camera_for)
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
        elif kind == "exr":
            write_exr(job, depth, target, predictor, overwrite=replace)
        elif kind == "camera":
            write_camera(job, depth, target, predictor, overwrite=replace)
        elif kind == "ply":
            shape, camera = write_points(job, depth, target, options, predictor, overwrite=replace)
            shapes.append(shape)
        elif kind == "glb":
            shape, camera = write_mesh(job, depth, target, options, predictor, overwrite=replace)
            shapes.append(shape)
        job.published.append(target)
    if camera is not None:
        job.note = f"{', '.join(shapes)}, {camera.describe()}"
        if job.field_of_view is not None:
            job.note += f" (field of view {job.field_of_view:.4g}°)"
    else:
        job.note = camera_line(job)
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


def write_normals(job: Job, normals: np.ndarray, options: OutputOptions, predictor) -> list[str]:
    """Write the normal-map outputs of ``job`` ((H, W, 3), as the pipeline gives them); returns no lines."""
    from ..processing import visualize as V

    for kind, target in job.outputs:
        replace = may_replace(options, job, target)
        if kind == "png":
            text = {
                "Software": "dpt_mlx",
                "model": predictor.source,
                "description": "surface normals: RGB = (normal + 1) / 2 * 255 per component, as the model "
                "predicts them (x, y, z in the channels' order)",
            }
            V.save_png(V.normals_image(normals), target, text, overwrite=replace)
        elif kind == "npy":
            V.save_npy(normals.astype(np.float32), target, overwrite=replace)
        job.published.append(target)
    return []


def write_dense(job: Job, result: dict, options: OutputOptions, predictor) -> list[str]:
    """Write the outputs of a dense prediction (``result``: depth, normals, segmentation), each with its
    task's writer; ``job.outputs`` kinds are ``"<task>:<kind>"``."""
    lines, notes = [], []
    for task, write in WRITERS.items():
        outputs = [(kind.split(":", 1)[1], t) for kind, t in job.outputs if kind.split(":", 1)[0] == task]
        if not outputs:
            continue
        part = dataclasses.replace(job, outputs=outputs, published=[], note="", normals=result.get("normals"))
        try:
            lines += write(part, result[task], options, predictor)
        finally:
            job.published += part.published
        notes += [part.note] if part.note else []
    job.note = "; ".join(notes)
    return lines


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
    write = write_dense if predictor.task == "dense-prediction" else WRITERS[TASK_NAMES[predictor.task]]
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


# the writer of each task ("depth", "normals", "segmentation") and the predictor's task names for them
WRITERS = {"depth": write_depth, "normals": write_normals, "segmentation": write_segmentation}
TASK_NAMES = {
    "depth-estimation": "depth",
    "normal-estimation": "normals",
    "image-segmentation": "segmentation",
}


def _remove_created(job: Job, existed: set[Path]) -> None:
    """Remove the outputs of ``job`` that this run created (a replaced file cannot be restored: kept)."""
    for target in job.published:
        if target not in existed:
            try:
                target.unlink()
            except OSError:
                pass
    job.published = []


def camera_for(job: Job, depth: np.ndarray, options: OutputOptions):
    """The camera that ``job``'s 3D outputs (point cloud, mesh) and the app's measurements back-project
    with: a ``CameraIntrinsics`` in pixels of ``depth`` (the photo's size). Its focal length: the one the
    depth was made with (Depth Pro: ``job.focal``), else --focal-length, else --fov, else the photo's
    EXIF (unless --no-exif), else the default field of view (points.camera_intrinsics); its ``source``
    says which, for the image's line."""
    from ..processing import points as P

    h, w = depth.shape
    if job.focal is not None:
        return P.CameraIntrinsics(job.focal[0], job.focal[0], w / 2.0, h / 2.0, job.focal[1])
    return P.camera_intrinsics(
        job.path, w, focal_length=options.focal_length, fov=options.fov, height=h, exif=options.exif
    )


def camera_fields(job: Job) -> dict[str, str]:
    """Depth Pro's camera for the PNG text chunks and the EXR header: {} for other models."""
    if job.focal is None:
        return {}
    fields = {"focal_length": repr(job.focal[0]), "focal_length_source": job.focal[1]}
    if job.field_of_view is not None:
        fields["field_of_view"] = repr(job.field_of_view)
    return fields


def camera_line(job: Job) -> str:
    """Depth Pro's camera for the image's line: "" for other models."""
    if job.focal is None:
        return ""
    fov = f"field of view {job.field_of_view:.4g}°, " if job.field_of_view is not None else ""
    return f"{fov}focal length {job.focal[0]:.6g} px from {job.focal[1]}"


def write_camera(job: Job, depth: np.ndarray, target: Path, predictor, overwrite: bool) -> None:
    """The npy's sidecar: what the depth means and the camera it was made with, as JSON."""
    from ..io.files import atomic_write_text

    h, w = depth.shape
    record = {
        "model": predictor.source,
        "depth": depth_kind(predictor.config, job.prompt is not None),
        "width": w,
        "height": h,
        "field_of_view": job.field_of_view,
        "focal_length": None if job.focal is None else job.focal[0],
        "focal_length_source": None if job.focal is None else job.focal[1],
    }
    atomic_write_text(target, json.dumps(record, indent=2) + "\n", overwrite=overwrite)


def write_exr(job, depth: np.ndarray, target, predictor, overwrite: bool) -> None:
    """Write ``job``'s depth as a float32 EXR (channel Z, the values as predicted), what they are in its header."""
    from ..processing.exr import save_exr

    attributes = {
        "software": "dpt_mlx",
        "model": predictor.source,
        "depth": depth_kind(predictor.config, job.prompt is not None),
        **camera_fields(job),
    }
    save_exr(depth, target, attributes, overwrite=overwrite)


def write_mesh(job, depth: np.ndarray, target, options, predictor, overwrite: bool):
    """Write ``job``'s textured mesh to ``target`` as GLB; returns (what it holds, its camera) for the image's line."""
    from ..processing import mesh as M
    from ..processing.points import camera_normals

    camera = camera_for(job, depth, options)
    mesh = M.depth_to_mesh(
        depth,
        image=job.image,
        focal_length=camera,
        edge_threshold=options.mesh_edge_threshold,
        max_vertices=options.mesh_max_vertices,
        normals=None if job.normals is None else camera_normals(job.normals),
    )
    extras = {
        "generator": "dpt_mlx",
        "model": predictor.source,
        "depth": depth_kind(predictor.config, job.prompt is not None),
        "camera": M.camera_note(camera),
    }
    M.save_glb(mesh, target, extras, overwrite=overwrite)
    step = mesh.metadata["grid_step"]
    grid = f" (a grid step of {step} pixels)" if step > 1 else ""
    normals = " with the model's normals" if job.normals is not None else ""
    return f"mesh of {len(mesh.vertices)} vertices{grid}, {len(mesh.faces)} triangles{normals}", camera


def write_points(job, depth: np.ndarray, target, options, predictor, overwrite: bool):
    """Write ``job``'s point cloud to ``target``; returns (what it holds, its camera) for the image's line."""
    from ..processing import points as P

    camera = camera_for(job, depth, options)
    xyz, rgb = P.depth_to_points(depth, camera, image=job.image)
    comments = [
        f"dpt_mlx {predictor.source}",
        "OpenCV camera: +x right, +y down, +z forward; units of the depth (metres for metric models)",
        f"fx {camera.fx!r} fy {camera.fy!r} cx {camera.cx!r} cy {camera.cy!r} ({camera.source})",
    ]
    normals = None
    if job.normals is not None:
        normals = P.camera_normals(job.normals[P.valid_pixels(depth)])
        comments.append("nx ny nz: the model's surface normals, unit vectors out of the surface")
    P.save_ply(xyz, target, rgb, comments=comments, overwrite=overwrite, normals=normals)
    return f"{len(xyz)} points" + (" with normals" if normals is not None else ""), camera


# ----------------------------------------------------------------------------------------------
# Videos


class Mp4Output:
    """The colour-mapped depth as H.264, the input's audio copied in (``options.audio``)."""

    def __init__(self, target: Path, reader, options: OutputOptions, source: str):
        from ..processing.video import Stabilizer, VideoWriter

        self.target, self.colormap = target, options.colormap
        self.source = reader.path if reader.audio and options.audio else None
        self.notes: list[str] = []
        self.tmp, self.muxed, self.writer = temp_beside(target), None, None
        try:
            self.writer = VideoWriter(self.tmp, reader.size, reader.rate)
        except BaseException:
            discard(self.tmp)
            raise
        self.stabilizer = Stabilizer() if options.stabilize else None
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
    """``depth`` (T, H, W) float32 and ``times`` (T,) seconds, streamed through a raw temporary file."""

    def __init__(self, target: Path, reader, options: OutputOptions, source: str):
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
    """A folder of 16-bit frames with their depth range in text chunks, renamed into place at the end."""

    def __init__(self, target: Path, reader, options: OutputOptions, source: str):
        self.target, self.source = target, source
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


VIDEO_OUTPUTS = {"mp4": Mp4Output, "npz": NpzOutput, "png16": Png16Output}


def publish_together(outputs: list, overwrite: bool) -> None:
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


def discard_outputs(outputs: list, made: list[Path]) -> None:
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

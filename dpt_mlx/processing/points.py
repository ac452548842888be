"""3D export: depth maps back-projected to point clouds through a pinhole camera, written as PLY.

Camera convention (OpenCV): the camera at the origin, +x right, +y down, +z forward (the depth).
Pixel (u, v) (column, row) is taken at its centre:

    X = (u + 0.5 - cx) * Z / fx,    Y = (v + 0.5 - cy) * Z / fy,    Z = depth[v, u]

with cx = W / 2, cy = H / 2 unless given, and fx = fy = the focal length in pixels of the depth
map's size. Only metric depth makes a true-to-scale cloud; relative depth has no scale (and DPT's
is inverse depth), so its "points" are not a shape.

Surface normals (TIPSv2-DPT's) come in the model's own frame, which its authors' examples on indoor
photos show to be the camera's with every axis reversed: a floor is +y, a wall facing the camera +z,
a wall on the left of the photo facing right -x. :func:`camera_normals` turns them into this
module's OpenCV camera frame, pointing out of the surface (toward the camera's side), as the PLY's
``nx ny nz`` and the meshes' vertex normals hold them.

The focal length comes, in this order, from an explicit value, a horizontal field of view, the
photo's EXIF (FocalLengthIn35mmFilm; else FocalLength with the focal-plane resolution), or a
default 60 degree horizontal field of view (see :func:`camera_intrinsics`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_FOV = 60.0  # degrees, horizontal: the focal length when nothing else says
FULL_FRAME_WIDTH_MM = 36.0  # the 35 mm film frame's longer side
EXIF_IFD = 0x8769
TAG_ORIENTATION = 0x0112
TAG_FOCAL_LENGTH = 0x920A  # mm
TAG_FOCAL_35MM = 0xA405  # mm, as on a 36 x 24 mm frame
TAG_FOCAL_PLANE_X_RESOLUTION = 0xA20E  # sensor pixels per unit, along the stored image's width
TAG_FOCAL_PLANE_UNIT = 0xA210  # 2 inch (default), 3 cm, 4 mm, 5 micrometre
TAG_PIXEL_X_DIMENSION = 0xA002  # the stored image's width the camera recorded
_UNIT_MM = {1: 25.4, 2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}

PLY_EXTRA = 'pip install "dpt_mlx[3d]"'


@dataclass(frozen=True)
class CameraIntrinsics:
    """A pinhole camera in pixels of the depth map: focal lengths, principal point, and where fx came from."""

    fx: float
    fy: float
    cx: float
    cy: float
    source: str

    def describe(self) -> str:
        focal = f"fx = fy = {self.fx:.6g} px" if self.fx == self.fy else f"fx {self.fx:.6g} px, fy {self.fy:.6g} px"
        return f"{focal}, centre ({self.cx:.6g}, {self.cy:.6g}) from {self.source}"


def focal_from_fov(fov: float, width: int) -> float:
    """The focal length in pixels of an image ``width`` pixels wide with horizontal field of view ``fov`` degrees."""
    fov = float(fov)
    if not 0.0 < fov < 180.0:
        raise ValueError(f"the field of view must be between 0 and 180 degrees, got {fov:g}")
    return (width / 2.0) / math.tan(math.radians(fov) / 2.0)


def _positive(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _exif(image: Any):
    """(the EXIF tags of IFD0 and the Exif IFD merged, the stored (width, height)), or (None, None)."""
    from PIL import Image

    try:
        if isinstance(image, (str, os.PathLike)):
            with Image.open(os.path.expanduser(os.fspath(image))) as opened:  # no decode: only the header
                exif, size = opened.getexif(), opened.size
        elif isinstance(image, Image.Image):
            exif, size = image.getexif(), image.size
        else:
            return None, None
        tags = dict(exif)
        tags.update(exif.get_ifd(EXIF_IFD))
    except (OSError, ValueError, SyntaxError):
        return None, None
    return tags, size


def _focal_from_exif(tags: dict, stored: tuple[int, int], width: int, height: int) -> tuple[float, str] | None:
    f35 = _positive(tags.get(TAG_FOCAL_35MM))
    if f35 is not None:  # on the 36 mm side of a full frame: scaled to the longer side of the image
        return f35 / FULL_FRAME_WIDTH_MM * max(width, height), "EXIF FocalLengthIn35mmFilm"
    focal_mm = _positive(tags.get(TAG_FOCAL_LENGTH))
    x_resolution = _positive(tags.get(TAG_FOCAL_PLANE_X_RESOLUTION))
    unit = _UNIT_MM.get(int(tags.get(TAG_FOCAL_PLANE_UNIT, 2) or 2))
    if focal_mm is None or x_resolution is None or unit is None:
        return None
    stored_width = _positive(tags.get(TAG_PIXEL_X_DIMENSION)) or stored[0]
    sensor_width_mm = stored_width / x_resolution * unit
    # The sensor's x is the stored image's width: after an EXIF rotation by 90 degrees, the depth map's height.
    across = height if tags.get(TAG_ORIENTATION) in (5, 6, 7, 8) else width
    return focal_mm / sensor_width_mm * across, "EXIF FocalLength + sensor size"


def known_focal_length(
    image: Any,
    width: int,
    height: int,
    focal_length: float | None = None,
    fov: float | None = None,
    exif: bool = True,
) -> tuple[float, str] | None:
    """(focal length in pixels of a ``width`` x ``height`` map, where it came from) when something
    other than a model says it: ``focal_length``, else ``fov`` (horizontal, degrees), else (with
    ``exif``) the photo's EXIF focal length; None when none of them does."""
    if focal_length is not None and fov is not None:
        raise ValueError("give a focal length or a field of view, not both")
    if focal_length is not None:
        if _positive(focal_length) is None:
            raise ValueError(f"the focal length must be a positive number of pixels, got {focal_length}")
        return float(focal_length), "--focal-length"
    if fov is not None:
        return focal_from_fov(fov, width), "--fov"
    if not exif:
        return None
    tags, stored = _exif(image)
    return _focal_from_exif(tags, stored, width, height) if tags else None


def camera_intrinsics(
    image: Any,
    width: int,
    focal_length: float | None = None,
    fov: float | None = None,
    height: int | None = None,
    exif: bool = True,
    estimate: tuple[float, str] | None = None,
) -> CameraIntrinsics:
    """The camera for a depth map ``width`` x ``height`` pixels made from ``image`` (a path or PIL image).

    The focal length, in pixels of that size: ``focal_length`` itself; else from ``fov`` (horizontal,
    degrees); else (with ``exif``) EXIF FocalLengthIn35mmFilm f35 as ``f35 / 36 * longer side`` (36 mm
    being a full frame's longer side), or EXIF FocalLength with FocalPlaneXResolution /
    FocalPlaneResolutionUnit (the sensor's width); else ``estimate`` (a model's: (pixels, its name));
    else a 60 degree horizontal field of view. ``height`` defaults to the photo's aspect ratio at
    ``width``. The principal point is the centre.
    """
    if height is None:
        stored = _exif(image)[1] if focal_length is None and fov is None else None
        height = _height(image, width, stored)
    found = known_focal_length(image, width, height, focal_length, fov, exif) or estimate
    if found is None:
        found = focal_from_fov(DEFAULT_FOV, width), f"default ({DEFAULT_FOV:g}° horizontal field of view)"
    fx, source = found
    return CameraIntrinsics(fx, fx, width / 2.0, height / 2.0, source)


def _height(image: Any, width: int, stored: tuple[int, int] | None) -> int:
    from PIL import Image, ImageOps

    if isinstance(image, Image.Image):
        size = ImageOps.exif_transpose(image).size
    elif isinstance(image, (str, os.PathLike)):
        with Image.open(os.path.expanduser(os.fspath(image))) as opened:
            size = opened.size[::-1] if opened.getexif().get(TAG_ORIENTATION) in (5, 6, 7, 8) else opened.size
    else:
        raise ValueError("give the height of the depth map when there is no image")
    return max(1, round(width * size[1] / size[0]))


def pinhole(
    shape: tuple[int, int], focal_length=None, fov: float | None = None, principal_point=None
) -> CameraIntrinsics:
    """The camera of a depth map of ``shape`` (H, W), from the arguments :func:`depth_to_points` takes.

    ``focal_length``: a number (fx = fy), an (fx, fy) pair, or a :class:`CameraIntrinsics` (its
    principal point too); or ``fov``, the horizontal field of view in degrees; with neither, 60
    degrees. ``principal_point`` (cx, cy) defaults to (W/2, H/2). ValueError for both, or a focal
    length that is not positive.
    """
    h, w = shape
    if isinstance(focal_length, CameraIntrinsics):
        if fov is not None:
            raise ValueError("give a focal length or a field of view, not both")
        fx, fy, source = focal_length.fx, focal_length.fy, focal_length.source
        principal_point = principal_point or (focal_length.cx, focal_length.cy)
    elif focal_length is not None:
        if fov is not None:
            raise ValueError("give a focal length or a field of view, not both")
        fx, fy = (focal_length, focal_length) if np.ndim(focal_length) == 0 else tuple(focal_length)
        source = "focal_length"
    else:
        fx = fy = focal_from_fov(DEFAULT_FOV if fov is None else fov, w)
        source = "fov" if fov is not None else f"default ({DEFAULT_FOV:g}° horizontal field of view)"
    if _positive(fx) is None or _positive(fy) is None:
        raise ValueError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
    cx, cy = (w / 2.0, h / 2.0) if principal_point is None else map(float, principal_point)
    return CameraIntrinsics(float(fx), float(fy), cx, cy, source)


def back_project(z: np.ndarray, rows: np.ndarray, cols: np.ndarray, camera: CameraIntrinsics) -> np.ndarray:
    """The (N, 3) float32 OpenCV-camera points of depths ``z`` (N,) at pixels (``rows``, ``cols``), each
    taken at its centre: X = (u + 0.5 - cx) Z / fx, Y = (v + 0.5 - cy) Z / fy."""
    z = np.asarray(z, dtype=np.float64)
    x = (cols + 0.5 - camera.cx) * z / camera.fx
    y = (rows + 0.5 - camera.cy) * z / camera.fy
    return np.stack([x, y, z], axis=1).astype(np.float32)


def valid_pixels(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the pixels of ``depth`` that make points (finite depth > 0), row-major."""
    z = np.asarray(depth, dtype=np.float64)
    return np.nonzero(np.isfinite(z) & (z > 0))


def camera_normals(normals) -> np.ndarray:
    """A model's surface normals (..., 3) as float32 unit vectors in the OpenCV camera frame, pointing
    out of the surface: the model's frame has every axis reversed (module docstring). Zero-length
    or non-finite normals give zero vectors."""
    n = -np.asarray(normals, dtype=np.float64)
    if n.shape[-1:] != (3,):
        raise ValueError(f"expected normals of shape (..., 3), got shape {n.shape}")
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    ok = np.isfinite(length) & (length > 1e-12)
    return np.where(ok, n / np.where(ok, length, 1.0), 0.0).astype(np.float32)


def depth_to_points(depth, focal_length=None, fov: float | None = None, image=None, principal_point=None):
    """Back-project a depth map (H, W) to an (N, 3) float32 XYZ cloud, one point per valid pixel.

    Valid pixels have finite depth > 0; points come in row-major pixel order. ``focal_length`` is
    in pixels of the depth map: a number (fx = fy), an (fx, fy) pair, or a
    :class:`CameraIntrinsics` (its principal point too); or give ``fov``, the horizontal field of
    view in degrees; with neither, 60 degrees. ``principal_point`` (cx, cy) defaults to (W/2, H/2).
    With ``image`` (a PIL image or an (H, W, 3) array of the depth map's size) returns
    ``(points, colors)``, colors (N, 3) uint8 RGB.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"expected a depth map of shape (H, W), got shape {depth.shape}")
    h, w = depth.shape
    camera = pinhole((h, w), focal_length, fov, principal_point)
    v, u = valid_pixels(depth)
    points = back_project(depth[v, u], v, u, camera)
    if image is None:
        return points
    rgb = _rgb(image)
    if rgb.shape[:2] != (h, w):
        raise ValueError(f"the image is {rgb.shape[1]}x{rgb.shape[0]} but the depth map is {w}x{h}")
    return points, np.ascontiguousarray(rgb[v, u])


def _rgb(image) -> np.ndarray:
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float64) * (255 if array.max() <= 1 else 1)), 0, 255)
    return array[..., :3].astype(np.uint8)


def require_plyfile():
    """The plyfile module, or ImportError with the install command."""
    try:
        import plyfile
    except ImportError:
        raise ImportError(f"writing PLY point clouds needs plyfile: {PLY_EXTRA}") from None
    return plyfile


def save_ply(
    points: np.ndarray,
    path: str | os.PathLike,
    colors: np.ndarray | None = None,
    comments: list[str] | None = None,
    overwrite: bool = True,
    normals: np.ndarray | None = None,
) -> None:
    """Write a binary little-endian PLY (vertex x y z float32, with ``normals`` nx ny nz float32, with
    ``colors`` red green blue uchar) atomically; ``overwrite=False``: FileExistsError rather than
    replacing a file of that name (io/files.atomic_write)."""
    from ..io.files import atomic_write

    plyfile = require_plyfile()
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float32).reshape(-1, 3)
        if len(normals) != len(points):
            raise ValueError(f"{len(normals)} normals for {len(points)} points")
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(len(points), dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = points[:, 0], points[:, 1], points[:, 2]
    if normals is not None:
        vertex["nx"], vertex["ny"], vertex["nz"] = normals[:, 0], normals[:, 1], normals[:, 2]
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        vertex["red"], vertex["green"], vertex["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    comments = [c.replace("°", " degree").encode("ascii", "replace").decode() for c in comments or []]  # PLY: ASCII
    data = plyfile.PlyData(
        [plyfile.PlyElement.describe(vertex, "vertex")], text=False, byte_order="<", comments=comments
    )
    atomic_write(path, data.write, overwrite=overwrite)

"""3D meshes: a depth map's pixel grid back-projected through a pinhole camera, triangulated, textured
with the photo, written as binary glTF (GLB) with trimesh.

The vertices are pixels of the depth map, taken at their centres with the camera of
:mod:`dpt_mlx.processing.points` (the point clouds' camera). Large maps are decimated on the grid:
every ``step``-th row and column (and the last), the smallest step that keeps the vertex count
within ``max_vertices`` (default 500,000: a 12 MP photo gets every 5th pixel, about 490,000
vertices and 980,000 triangles, a GLB of about 25 MB). Each 2 x 2 block of grid vertices makes
two triangles. A triangle is dropped where a vertex has no valid depth (not finite, or <= 0) and
where it spans a depth discontinuity: its depths differ by more than ``edge_threshold`` times the
nearest of them, ``(max z - min z) / min z > edge_threshold`` (default 0.04; 0 keeps every
triangle), so that foreground and background are not joined by long stretched faces. Vertices no
triangle uses are removed.

Texture: the photo as a JPEG inside the GLB (trimesh encodes it at Pillow's default quality, 75), its
longer side at most ``MAX_TEXTURE`` pixels; each vertex's UV is its pixel's centre. The material is unlit
(KHR_materials_unlit, with a rough, non-metallic fallback), so viewers show the photo's colours
as they are, and double-sided.

Vertex normals: given surface normals (a normals model's, in the point clouds' OpenCV camera frame:
points.camera_normals), each vertex takes its pixel's, turned to the mesh's axes, and the GLB stores
them (NORMAL); without them the GLB has none and viewers shade the triangles as they are.

Axes: glTF's (OpenGL's camera): +x right, +y up, the camera at the origin looking down -z, so a
point of the PLY's OpenCV camera (x, y, z) is (x, -y, -z) here; the units are the depth's (metres
for metric models, which is glTF's unit).
"""

from __future__ import annotations

import math
import os

import numpy as np

from .points import CameraIntrinsics, _rgb, back_project, pinhole

DEFAULT_EDGE_THRESHOLD = 0.04  # relative depth jump across a triangle above which it is dropped
DEFAULT_MAX_VERTICES = 500_000  # the vertex budget: larger depth maps are decimated on the grid
MAX_TEXTURE = 4096  # the texture's longer side, in pixels: what every WebGL viewer can show
MESH_EXTRA = 'pip install "dpt_mlx[3d]"'
CONVENTIONS = ("opengl", "opencv")


def require_trimesh():
    """The trimesh module, or ImportError with the install command."""
    try:
        import trimesh
    except ImportError:
        raise ImportError(f"writing GLB meshes needs trimesh: {MESH_EXTRA}") from None
    return trimesh


def grid_step(height: int, width: int, max_vertices: int) -> int:
    """The smallest step (every ``step``-th row and column, and the last) that gives at most ``max_vertices``
    grid vertices for a ``height`` x ``width`` map; ValueError if ``max_vertices`` < 4."""
    if max_vertices < 4:
        raise ValueError(f"the vertex budget must be at least 4, got {max_vertices}")
    step = max(1, math.ceil(math.sqrt(height * width / max_vertices)))
    while len(_samples(height, step)) * len(_samples(width, step)) > max_vertices:
        step += 1
    return step


def _samples(n: int, step: int) -> np.ndarray:
    """0, step, 2 step, ... and n - 1: the rows (or columns) a grid of that step keeps."""
    kept = np.arange(0, n, step)
    return kept if kept[-1] == n - 1 else np.append(kept, n - 1)


def _check_threshold(edge_threshold: float) -> float:
    value = float(edge_threshold)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"the edge threshold must be a number >= 0 (0: keep every triangle), got {edge_threshold}")
    return value


def grid_faces(valid: np.ndarray, z: np.ndarray, edge_threshold: float) -> np.ndarray:
    """The (F, 3) triangles of a grid of ``valid`` (h, w) vertices with depths ``z`` (indices row-major),
    counter-clockwise seen from the camera, without those at invalid vertices or depth jumps."""
    trimesh = require_trimesh()
    h, w = valid.shape
    index = np.arange(h * w).reshape(h, w)
    top_left, top_right = index[:-1, :-1].ravel(), index[:-1, 1:].ravel()
    bottom_left, bottom_right = index[1:, :-1].ravel(), index[1:, 1:].ravel()
    # (top left, bottom left, bottom right, top right) -> two triangles, each counter-clockwise on screen
    quads = np.stack([top_left, bottom_left, bottom_right, top_right], axis=1)
    faces = trimesh.geometry.triangulate_quads(quads)
    if len(faces) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    keep = valid.ravel()[faces].all(axis=1)
    if edge_threshold > 0:
        corners = np.where(valid.ravel(), z.ravel(), np.nan)[faces]
        with np.errstate(invalid="ignore"):
            low, high = corners.min(axis=1), corners.max(axis=1)
            keep &= (high - low) <= edge_threshold * low
    return faces[keep]


def texture_image(image, max_side: int = MAX_TEXTURE):
    """The photo as the mesh's texture: an RGB PIL image, the longer side at most ``max_side``, marked
    JPEG (trimesh's glTF export writes an image of that format as a JPEG, any other as a PNG, which
    for a photo is several times larger)."""
    from PIL import Image

    photo = Image.fromarray(_rgb(image))
    if max(photo.size) > max_side:
        scale = max_side / max(photo.size)
        photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))), Image.LANCZOS)
    photo.format = "JPEG"
    return photo


def _grid_mesh(vertices, faces, grid_rows, grid_cols, size: tuple[int, int], image=None, vertex_normals=None):
    """The trimesh of grid ``vertices`` (one per (``grid_rows``, ``grid_cols``) pixel) and ``faces``, less the
    vertices no face uses; textured with ``image`` (each vertex's UV its pixel's centre), with
    ``vertex_normals`` when given."""
    trimesh = require_trimesh()
    h, w = size
    used = np.zeros(len(vertices), dtype=bool)
    used[faces] = True
    index = np.cumsum(used) - 1  # old vertex -> new (trimesh's own removal would drop given normals)
    faces = index[faces]
    visual = None
    if image is not None:
        # trimesh's UVs have v up (it flips them for glTF): the image's top row is v = 1
        uv = np.stack([(grid_cols.ravel() + 0.5) / w, 1.0 - (grid_rows.ravel() + 0.5) / h], axis=1)[used]
        material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=texture_image(image), metallicFactor=0.0, roughnessFactor=1.0, doubleSided=True
        )
        visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(
        vertices=vertices[used],
        faces=faces,
        visual=visual,
        vertex_normals=None if vertex_normals is None else vertex_normals[used],
        process=False,
    )


def depth_to_mesh(
    depth,
    image=None,
    focal_length=None,
    fov: float | None = None,
    principal_point=None,
    edge_threshold: float = DEFAULT_EDGE_THRESHOLD,
    max_vertices: int | None = DEFAULT_MAX_VERTICES,
    convention: str = "opengl",
    normals=None,
):
    """A depth map (H, W) as a triangle mesh: a ``trimesh.Trimesh``, textured with ``image`` when given.

    The camera is that of :func:`dpt_mlx.depth_to_points` (``focal_length``: pixels, a number, an
    (fx, fy) pair or a :class:`~dpt_mlx.processing.points.CameraIntrinsics`; or ``fov`` in degrees;
    default 60 degrees; ``principal_point`` default the centre). ``edge_threshold``: triangles whose
    depths differ by more than this times the nearest are dropped (0 keeps all); ``max_vertices``:
    the grid is decimated to at most this many vertices (None: every pixel). ``image``: a PIL image
    or an (H, W, 3) array of the depth map's size, mapped by UV (a vertex's UV is its pixel's
    centre). ``convention``: ``"opengl"`` (glTF: +y up, the camera looking down -z) or ``"opencv"``
    (the PLY's: +y down, +z forward). ``normals``: (H, W, 3) unit surface normals in the OpenCV camera
    frame (:func:`dpt_mlx.processing.points.camera_normals`), the vertices' normals. The mesh's
    ``metadata`` holds the camera and the axes.
    """
    require_trimesh()  # before any work: the install line
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"expected a depth map of shape (H, W), got shape {depth.shape}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    edge_threshold = _check_threshold(edge_threshold)
    h, w = depth.shape
    camera = pinhole((h, w), focal_length, fov, principal_point)
    step = 1 if max_vertices is None else grid_step(h, w, int(max_vertices))
    rows, cols = _samples(h, step), _samples(w, step)
    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")  # (h', w') each
    z = depth[np.ix_(rows, cols)].astype(np.float64)
    valid = np.isfinite(z) & (z > 0)
    vertices = back_project(np.where(valid, z, 0.0).ravel(), grid_rows.ravel(), grid_cols.ravel(), camera)
    if convention == "opengl":
        vertices[:, 1:] *= -1  # the same rotation for every point: faces keep their winding
    faces = grid_faces(valid, z, edge_threshold)
    vertex_normals = None
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float32)
        if normals.shape != (h, w, 3):
            raise ValueError(f"expected normals of shape {(h, w, 3)} (the depth map's), got {normals.shape}")
        vertex_normals = normals[np.ix_(rows, cols)].reshape(-1, 3).copy()
        if convention == "opengl":
            vertex_normals[:, 1:] *= -1  # the vertices' rotation

    if image is not None:
        image = _rgb(image)
        if image.shape[:2] != (h, w):
            raise ValueError(f"the image is {image.shape[1]}x{image.shape[0]} but the depth map is {w}x{h}")
    mesh = _grid_mesh(vertices, faces, grid_rows, grid_cols, (h, w), image, vertex_normals)
    mesh.metadata.update(
        {
            "camera": {"fx": camera.fx, "fy": camera.fy, "cx": camera.cx, "cy": camera.cy, "width": w, "height": h},
            "axes": "glTF/OpenGL: +x right, +y up, camera looking down -z"
            if convention == "opengl"
            else "OpenCV: +x right, +y down, +z forward",
            "grid_step": step,
            "edge_threshold": edge_threshold,
        }
    )
    return mesh


def relief_mesh(values, image=None, larger_is_closer: bool = True, height: float = 0.25, max_vertices=200_000):
    """A relief of a relative depth map, for a preview: the photo's plane (its width 1) raised toward the
    viewer by up to ``height`` where the depth is nearest. Not a true shape: relative depth has no
    scale (and inverse depth is not proportional to depth). glTF axes, as :func:`depth_to_mesh`."""
    require_trimesh()  # before any work: the install line
    values = np.asarray(values, dtype=np.float64)
    h, w = values.shape
    finite = np.isfinite(values)
    low, high = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 0.0)
    near = (values - low) / (high - low) if high > low else np.zeros_like(values)
    near = near if larger_is_closer else 1.0 - near
    step = grid_step(h, w, max_vertices)
    rows, cols = _samples(h, step), _samples(w, step)
    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
    raised = near[np.ix_(rows, cols)]
    valid = np.isfinite(raised)
    x = (grid_cols + 0.5 - w / 2.0) / w
    y = -(grid_rows + 0.5 - h / 2.0) / w
    vertices = np.stack([x, y, np.where(valid, raised, 0.0) * height], axis=-1).reshape(-1, 3)
    faces = grid_faces(valid, np.ones_like(raised), 0.0)
    mesh = _grid_mesh(vertices, faces, grid_rows, grid_cols, (h, w), image)
    mesh.metadata["relief"] = "relative depth: a preview, not a true shape"
    return mesh


def _unlit(tree: dict) -> None:
    """trimesh's glTF tree post-processor: every material unlit (KHR_materials_unlit)."""
    materials = tree.get("materials") or []
    for material in materials:
        material.setdefault("extensions", {})["KHR_materials_unlit"] = {}
    if materials:
        used = tree.setdefault("extensionsUsed", [])
        if "KHR_materials_unlit" not in used:
            used.append("KHR_materials_unlit")


def glb_bytes(mesh, extras: dict | None = None) -> bytes:
    """The mesh as GLB bytes: unlit material, ``extras`` (JSON values) in the scene's extras."""
    scene = mesh.scene()
    if extras:
        scene.metadata.update(extras)
    return scene.export(file_type="glb", tree_postprocessor=_unlit)


def save_glb(mesh, path: str | os.PathLike, extras: dict | None = None, overwrite: bool = True) -> None:
    """Write ``mesh`` as a GLB atomically; ``overwrite=False``: FileExistsError rather than replacing a
    file of that name (io/files.atomic_write)."""
    from ..io.files import atomic_write

    data = glb_bytes(mesh, extras)
    atomic_write(path, lambda f: f.write(data), overwrite=overwrite)


def camera_note(camera: CameraIntrinsics) -> dict:
    """The camera as JSON values, for a GLB's extras."""
    return {"fx": camera.fx, "fy": camera.fy, "cx": camera.cx, "cy": camera.cy, "source": camera.source}

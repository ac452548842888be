"""Meshes (dpt_mlx.processing.mesh, dpt_mlx.depth_to_mesh) and EXR depth (dpt_mlx.processing.exr): the
vertices against a per-pixel back-projection, the faces against a per-quad reference (invalid depth
and depth jumps removed, nothing else), winding, decimation, UVs and texture through a GLB file,
EXR round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from depth3d import PHOTO, glb_mesh
from PIL import Image

from dpt_mlx import depth_to_mesh, depth_to_points
from dpt_mlx.processing.exr import read_exr, save_exr
from dpt_mlx.processing.mesh import DEFAULT_MAX_VERTICES, grid_step, save_glb


def _scene(h=24, w=32, seed=0):
    """A slanted plane (smooth, 1-3 m) with a box 40% nearer in front, and a few invalid pixels."""
    rows, cols = np.mgrid[0:h, 0:w]
    depth = 1.0 + 2.0 * rows / h + 0.01 * np.random.default_rng(seed).standard_normal((h, w))
    depth[6:14, 8:20] *= 0.6
    depth[0, 0], depth[3, 5], depth[20, 30], depth[10, 2] = np.nan, 0.0, -1.0, np.inf
    return depth.astype(np.float32)


def _photo(h=24, w=32, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_faces(depth, threshold):
    """Every grid triangle (as sets of (row, col) pixels) with valid corners and a jump within threshold."""
    h, w = depth.shape
    kept = set()
    for v in range(h - 1):
        for u in range(w - 1):
            a, b, c, d = (v, u), (v + 1, u), (v + 1, u + 1), (v, u + 1)  # tl, bl, br, tr
            for tri in ((a, b, c), (c, d, a)):
                z = [float(depth[p]) for p in tri]
                if not all(math.isfinite(x) and x > 0 for x in z):
                    continue
                if threshold and max(z) - min(z) > threshold * min(z):
                    continue
                kept.add(frozenset(tri))
    return kept


def _pixels(mesh, fx, fy, cx, cy):
    """The (row, col) pixel of every vertex (glTF axes), found by projecting it back."""
    z = -mesh.vertices[:, 2].astype(np.float64)
    cols = mesh.vertices[:, 0] * fx / z + cx - 0.5
    rows = -mesh.vertices[:, 1] * fy / z + cy - 0.5
    rows_i, cols_i = np.round(rows).astype(int), np.round(cols).astype(int)
    np.testing.assert_allclose(rows, rows_i, atol=1e-3)
    np.testing.assert_allclose(cols, cols_i, atol=1e-3)
    return rows_i, cols_i


def test_vertices_are_back_projected_pixels_in_gltf_axes():
    depth = _scene()
    mesh = depth_to_mesh(depth, focal_length=(30.0, 28.0), principal_point=(15.0, 11.0), max_vertices=None)
    rows, cols = _pixels(mesh, 30.0, 28.0, 15.0, 11.0)
    for (x, y, z), v, u in zip(mesh.vertices.astype(np.float64), rows, cols):
        d = float(depth[v, u])
        assert math.isfinite(d) and d > 0
        want = ((u + 0.5 - 15.0) * d / 30.0, (v + 0.5 - 11.0) * d / 28.0, d)
        assert (x, -y, -z) == pytest.approx(want, rel=1e-6, abs=1e-6)
    # the OpenCV convention: the PLY's points, in the same row-major order
    opencv = depth_to_mesh(depth, focal_length=(30.0, 28.0), principal_point=(15.0, 11.0), convention="opencv")
    points = depth_to_points(depth, focal_length=(30.0, 28.0), principal_point=(15.0, 11.0))
    lookup = {tuple(p) for p in points.tolist()}
    assert all(tuple(v) in lookup for v in opencv.vertices.astype(np.float32).tolist())


@pytest.mark.parametrize("threshold", [0.04, 0.2, 0.0])
def test_faces_are_the_grid_less_invalid_depth_and_depth_jumps(threshold):
    depth = _scene()
    mesh = depth_to_mesh(depth, focal_length=30.0, edge_threshold=threshold, max_vertices=None)
    rows, cols = _pixels(mesh, 30.0, 30.0, 16.0, 12.0)
    pixel = list(zip(rows.tolist(), cols.tolist()))
    got = {frozenset(pixel[i] for i in face) for face in mesh.faces}
    want = _reference_faces(depth, threshold)
    assert len(got) == len(mesh.faces)  # no face twice
    assert got == want
    # the box's outline is a jump of 40%: cut by the default, kept with no threshold
    z = -mesh.vertices[:, 2][mesh.faces]
    jumps = (z.max(axis=1) - z.min(axis=1)) / z.min(axis=1)
    if threshold:
        assert jumps.max() <= threshold
    else:
        assert jumps.max() > 0.3


def test_faces_face_the_camera():
    mesh = depth_to_mesh(_scene(), focal_length=30.0, edge_threshold=0)
    towards_camera = np.einsum("ij,ij->i", mesh.face_normals, -mesh.triangles_center)
    assert (towards_camera > 0).all()


def test_decimation_keeps_the_budget_and_the_corners():
    assert grid_step(3024, 4032, DEFAULT_MAX_VERTICES) == 5  # a 12 MP photo: every 5th pixel
    for h, w, budget in [(3024, 4032, DEFAULT_MAX_VERTICES), (31, 45, 100), (7, 1000, 50), (100, 100, 10_000)]:
        step = grid_step(h, w, budget)
        count = (len(range(0, h, step)) + ((h - 1) % step != 0)) * (len(range(0, w, step)) + ((w - 1) % step != 0))
        assert count <= budget
        if step > 1:  # the step before would have been over the budget
            s = step - 1
            assert (len(range(0, h, s)) + ((h - 1) % s != 0)) * (len(range(0, w, s)) + ((w - 1) % s != 0)) > budget
    depth = np.full((31, 45), 2.0, np.float32)
    mesh = depth_to_mesh(depth, focal_length=40.0, max_vertices=100)
    assert len(mesh.vertices) <= 100 and mesh.metadata["grid_step"] == grid_step(31, 45, 100)
    rows, cols = _pixels(mesh, 40.0, 40.0, 22.5, 15.5)
    assert {0, 30} <= set(rows.tolist()) and {0, 44} <= set(cols.tolist())  # the whole photo is covered
    with pytest.raises(ValueError, match="at least 4"):
        depth_to_mesh(depth, focal_length=40.0, max_vertices=3)


def test_uvs_and_texture_through_a_glb(tmp_path):
    depth = _scene(120, 160)
    photo = np.asarray(Image.open(PHOTO).convert("RGB").resize((160, 120), Image.LANCZOS))
    mesh = depth_to_mesh(depth, image=photo, focal_length=150.0, max_vertices=None)
    save_glb(mesh, tmp_path / "m.glb", {"note": "test"})
    loaded, tree = glb_mesh(tmp_path / "m.glb")
    assert tree["scenes"][0]["extras"]["note"] == "test"
    assert tree["materials"][0]["extensions"] == {"KHR_materials_unlit": {}}
    assert tree["images"][0]["mimeType"] == "image/jpeg"
    np.testing.assert_array_equal(loaded.vertices, mesh.vertices)
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    rows, cols = _pixels(loaded, 150.0, 150.0, 80.0, 60.0)
    uv = loaded.visual.uv  # trimesh's: v up
    np.testing.assert_allclose(uv[:, 0], (cols + 0.5) / 160, atol=1e-6)
    np.testing.assert_allclose(uv[:, 1], 1 - (rows + 0.5) / 120, atol=1e-6)
    texture = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64)
    assert texture.shape == photo.shape
    assert np.abs(texture - photo).mean() < 8  # a JPEG of the photo
    assert np.abs(texture - photo[::-1]).mean() > 30  # not upside down
    with pytest.raises(FileExistsError):
        save_glb(mesh, tmp_path / "m.glb", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.glb"]  # no temporary file left


def test_large_photos_get_a_smaller_texture():
    photo = np.zeros((10, 5000, 3), np.uint8)
    mesh = depth_to_mesh(np.ones((10, 5000), np.float32), image=photo, focal_length=100.0)
    assert mesh.visual.material.baseColorTexture.size == (4096, 8)


def test_bad_arguments():
    depth = _scene()
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="edge threshold"):
            depth_to_mesh(depth, focal_length=30.0, edge_threshold=bad)
    with pytest.raises(ValueError, match="convention"):
        depth_to_mesh(depth, focal_length=30.0, convention="directx")
    with pytest.raises(ValueError, match="not both"):
        depth_to_mesh(depth, focal_length=30.0, fov=60)
    with pytest.raises(ValueError, match="image is 31x24"):
        depth_to_mesh(depth, image=np.zeros((24, 31, 3), np.uint8), focal_length=30.0)
    with pytest.raises(ValueError, match="shape"):
        depth_to_mesh(depth[None], focal_length=30.0)


def test_exr_round_trip_is_exact(tmp_path):
    depth = _scene() * np.float32(1.2345678)
    save_exr(depth, tmp_path / "d.exr", {"depth": "metric depth in metres", "model": "m"})
    back, header = read_exr(tmp_path / "d.exr")
    assert back.dtype == np.float32 and back.shape == depth.shape
    assert np.array_equal(back, depth, equal_nan=True)
    assert back.tobytes() == depth.tobytes()  # bit for bit, NaN and inf included
    assert header["depth"] == "metric depth in metres" and header["model"] == "m"
    with pytest.raises(FileExistsError):
        save_exr(depth, tmp_path / "d.exr", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.exr"]

"""--format glb and exr on the command line, on tiny Depth Anything checkpoints: the mesh is the
back-projection of the same run's npy (every vertex a pixel, no face across a depth jump, every other
face there, the photo as texture), the EXR is the npy bit for bit; relative and segmentation models,
bad option values, missing libraries and failed writes are one-line errors."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import OpenEXR
import pytest
from depth3d import checkpoints_3d, glb_mesh, pixel_of

from dpt_mlx import depth_to_points
from dpt_mlx.cli.predict import main
from dpt_mlx.processing.images import load_image
from dpt_mlx.processing.mesh import DEFAULT_EDGE_THRESHOLD


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return checkpoints_3d(tmp_path_factory.mktemp("mesh-ckpt"), photo_size=(80, 60))


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _grid_faces(depth, threshold):
    """Every triangle of the full pixel grid whose corners have valid depth within the threshold, as pixel sets."""
    h, w = depth.shape
    kept = set()
    for v in range(h - 1):
        for u in range(w - 1):
            a, b, c, d = (v, u), (v + 1, u), (v + 1, u + 1), (v, u + 1)
            for tri in ((a, b, c), (c, d, a)):
                z = np.array([depth[p] for p in tri], dtype=np.float64)
                if np.isfinite(z).all() and (z > 0).all() and z.max() - z.min() <= threshold * z.min():
                    kept.add(frozenset(tri))
    return kept


@pytest.mark.timeout(300)
def test_glb_and_exr_are_the_npy(ckpt, tmp_path, capsys):
    args = ["--model", ckpt["metric"], "--image", ckpt["photo"], "--format", "glb,exr,npy"]
    code, out, err = _run(args + ["--focal-length", 500, "--output-dir", tmp_path], capsys)
    assert code == 0, err
    assert "mesh of " in out and "fx = fy = 500 px, centre (40, 30) from --focal-length" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo_depth.exr", "photo_depth.npy", "photo_mesh.glb"]
    depth = np.load(tmp_path / "photo_depth.npy")
    assert depth.shape == (60, 80) and depth.dtype == np.float32

    # the EXR: the npy's float32 values bit for bit, and what they are in the header
    exr = OpenEXR.File(str(tmp_path / "photo_depth.exr"), separate_channels=True)
    z = exr.channels()["Z"].pixels
    assert z.dtype == np.float32 and z.tobytes() == depth.tobytes()
    header = exr.header()
    assert header["depth"] == "metric depth in metres (larger = farther)"
    assert header["model"] == str(ckpt["metric"]) and header["software"] == "dpt_mlx"

    # the GLB: every vertex is a pixel of the npy back-projected with the run's camera (glTF axes)
    mesh, tree = glb_mesh(tmp_path / "photo_mesh.glb")
    camera = tree["scenes"][0]["extras"]["camera"]
    assert camera == {"fx": 500.0, "fy": 500.0, "cx": 40.0, "cy": 30.0, "source": "--focal-length"}
    rows, cols = pixel_of(mesh.vertices, 500.0, 500.0, 40.0, 30.0)
    rows_i, cols_i = np.round(rows).astype(int), np.round(cols).astype(int)
    np.testing.assert_allclose(rows, rows_i, atol=1e-3)
    np.testing.assert_allclose(cols, cols_i, atol=1e-3)
    cloud = depth_to_points(depth, focal_length=500)  # OpenCV axes, row-major over valid pixels
    flat = rows_i * 80 + cols_i
    want = cloud[flat] * np.array([1, -1, -1], np.float32)  # every pixel is valid here
    np.testing.assert_array_equal(mesh.vertices.astype(np.float32), want)
    assert len(mesh.vertices) == len(set(flat.tolist()))

    # faces: none across a depth jump above the default threshold, and every other triangle there
    pixel = list(zip(rows_i.tolist(), cols_i.tolist()))
    faces = {frozenset(pixel[i] for i in face) for face in mesh.faces}
    assert faces == _grid_faces(depth, DEFAULT_EDGE_THRESHOLD)
    corner = depth[rows_i[mesh.faces], cols_i[mesh.faces]].astype(np.float64)
    assert ((corner.max(1) - corner.min(1)) / corner.min(1)).max() <= DEFAULT_EDGE_THRESHOLD
    assert 0.5 * 2 * 79 * 59 < len(faces) < 2 * 79 * 59  # some were cut, most kept

    # the texture is the photo, mapped by pixel centres
    photo = np.asarray(load_image(ckpt["photo"]), dtype=np.float64)
    texture = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64)
    assert texture.shape == photo.shape and np.abs(texture - photo).mean() < 8
    np.testing.assert_allclose(mesh.visual.uv[:, 0], (cols_i + 0.5) / 80, atol=1e-6)
    np.testing.assert_allclose(mesh.visual.uv[:, 1], 1 - (rows_i + 0.5) / 60, atol=1e-6)

    # the options: a looser threshold keeps more faces, a vertex budget decimates
    more = tmp_path / "more"
    code, out, err = _run(args + ["--mesh-edge-threshold", 10, "--mesh-max-vertices", 1000, "-d", more], capsys)
    assert code == 0, err
    assert "a grid step of 3 pixels" in out and "default (60° horizontal field of view)" in out
    loose, _ = glb_mesh(more / "photo_mesh.glb")
    # every 3rd row and column and the last: 21 x 28 vertices, 20 x 27 quads, no face cut at R = 10
    assert len(loose.vertices) == 21 * 28 and len(loose.faces) == 2 * 20 * 27
    assert np.load(more / "photo_depth.npy").tobytes() == depth.tobytes()


def test_relative_and_segmentation_models_are_refused(ckpt, tmp_path, capsys):
    base = ["--image", ckpt["photo"], "--output-dir", tmp_path]
    code, out, err = _run(["--model", ckpt["relative"], "--format", "glb", *base], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--format glb needs metric depth" in err and "--depth-kind metric" in err
    code, out, err = _run(["--model", ckpt["seg"], "--format", "exr", *base], capsys)
    assert code == 2 and err.strip() == "error: --format exr is for depth models; this model does segmentation"
    assert list(tmp_path.iterdir()) == []
    # relative depth as EXR is fine: the values as predicted, the header says what they are
    code, _, err = _run(["--model", ckpt["relative"], "--format", "exr,npy", *base], capsys)
    assert code == 0, err
    depth = np.load(tmp_path / "photo_depth.npy")
    exr = OpenEXR.File(str(tmp_path / "photo_depth.exr"), separate_channels=True)
    assert exr.channels()["Z"].pixels.tobytes() == depth.tobytes()
    assert exr.header()["depth"] == "relative inverse depth (larger = closer)"
    # --depth-kind metric lets a relative checkpoint make a mesh
    code, out, err = _run(["--model", ckpt["relative"], "--format", "glb", "--depth-kind", "metric", *base], capsys)
    assert code == 0 and "mesh of" in out, err


@pytest.mark.parametrize(
    "bad",
    [
        ["--mesh-edge-threshold", "-0.1"],
        ["--mesh-edge-threshold", "nan"],
        ["--mesh-edge-threshold", "inf"],
        ["--mesh-edge-threshold", "x"],
        ["--mesh-max-vertices", "3"],
        ["--mesh-max-vertices", "-1"],
        ["--mesh-max-vertices", "1e6"],
        ["--format", "glb,gltf"],
    ],
)
def test_bad_option_values_are_usage_errors(ckpt, bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--model", str(ckpt["metric"]), "--image", str(ckpt["photo"]), "--format", "glb", *bad])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "error:" in err


def test_output_file_missing_libraries_and_failed_writes(ckpt, tmp_path, capsys, monkeypatch):
    base = ["--model", ckpt["metric"], "--image", ckpt["photo"]]
    single = tmp_path / "single"
    single.mkdir()
    for name in ("m.glb", "d.exr"):  # --output's name picks the format, as for .npy and .ply
        code, _, err = _run([*base, "--output", single / name], capsys)
        assert code == 0, err
    assert sorted(p.name for p in single.iterdir()) == ["d.exr", "m.glb"]
    assert glb_mesh(single / "m.glb")[0].vertices.shape[1] == 3
    code, _, err = _run([*base, "--format", "exr", "--output", tmp_path / "x.png"], capsys)
    assert code == 2 and "--format exr needs a .exr file name" in err and len(err.strip().splitlines()) == 1
    shutil.rmtree(single)
    for module, kind, extra in (("trimesh", "glb", "dpt_mlx[3d]"), ("OpenEXR", "exr", "dpt_mlx[exr]")):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)  # import -> ImportError
            code, _, err = _run([*base, "--format", kind, "-d", tmp_path], capsys)
        assert code == 2 and f'pip install "{extra}"' in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []

    # a write that fails half way leaves nothing: no partial GLB, and the image's other outputs removed
    import dpt_mlx.processing.mesh as M

    def full_disk(mesh, extras=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(M, "glb_bytes", full_disk)
    code, _, err = _run([*base, "--format", "npy,glb", "-d", tmp_path], capsys)
    assert code == 2 and "no space left on device" in err.lower() and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []

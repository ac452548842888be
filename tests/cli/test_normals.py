"""Surface normals as an output (TIPSv2-DPT): the normal-estimation and dense-prediction pipelines equal
transformers' processor + model + post-processing, and the command line writes <name>_normals.png (RGB) and
.npy (unit vectors) beside depth and class maps, as --task picks for a dense checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from helpers import photo
from model_configs import tipsv2_reference
from PIL import Image

import dpt_mlx
from dpt_mlx.cli.predict import main


@pytest.fixture(scope="module")
def reference(depth_pro_reference):
    # transformers' TIPSv2-DPT processor, torchvision stood in where absent (as for Depth Pro's)
    from transformers.models.tipsv2_dpt.image_processing_tipsv2_dpt import Tipsv2DptImageProcessor

    return Tipsv2DptImageProcessor(size={"height": 56, "width": 56})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, reference):
    root = tmp_path_factory.mktemp("tipsv2")
    made = {}
    for name, cls in (
        ("normals", transformers.Tipsv2DptForNormalEstimation),
        ("dense", transformers.Tipsv2DptForDensePrediction),
    ):
        ref = tipsv2_reference(cls, seed=2)
        ref.save_pretrained(root / name)
        reference.save_pretrained(root / name)
        made[name] = (root / name, ref)
    return made


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "room.png"
    Image.fromarray(photo(45, 61, seed=4)).save(path)
    return path


def _reference(reference, ref, path):
    """transformers on the photo: each head post-processed to the photo's size."""
    picture = Image.open(path).convert("RGB")
    size = [(picture.height, picture.width)]
    with torch.no_grad():
        out = ref(**reference(picture, return_tensors="pt"))
    result = {"normals": reference.post_process_normal_estimation(out, target_sizes=size)[0]["normals"].numpy()}
    if hasattr(out, "segmentation_logits"):
        result["depth"] = reference.post_process_depth_estimation(out, target_sizes=size)[0]["predicted_depth"].numpy()
        result["segmentation"] = reference.post_process_semantic_segmentation(out, target_sizes=size)[0].numpy()
    result["normals"] = result["normals"].transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    return result


@pytest.mark.parity
def test_pipelines_equal_transformers(checkpoints, reference, image):
    root, ref = checkpoints["normals"]
    want = _reference(reference, ref, image)
    got = dpt_mlx.pipeline("normal-estimation", model=str(root))(str(image))
    assert got["normals"].shape == (45, 61, 3) and got["normals_image"].mode == "RGB"
    np.testing.assert_allclose(got["normals"], want["normals"], atol=1e-4)
    assert np.linalg.norm(got["normals"], axis=-1).max() <= 1 + 1e-5  # unit at the model's size, then resized
    root, ref = checkpoints["dense"]
    want = _reference(reference, ref, image)
    got = dpt_mlx.pipeline("dense-prediction", model=str(root))(str(image))
    np.testing.assert_allclose(got["normals"], want["normals"], atol=1e-4)
    np.testing.assert_allclose(got["predicted_depth"], want["depth"], rtol=1e-4, atol=1e-4 * np.ptp(want["depth"]))
    assert (got["segmentation"] == want["segmentation"]).mean() > 0.999
    with pytest.raises(dpt_mlx.CheckpointError, match="dense-prediction model"):
        dpt_mlx.pipeline("depth-estimation", model=str(root))
    with pytest.raises(ValueError, match="normals"):
        dpt_mlx.pipeline("dense-prediction", model=str(root), flip_tta=True)


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_command_line_writes_what_task_picks(checkpoints, image, tmp_path, capsys):
    root = checkpoints["dense"][0]
    pipe = dpt_mlx.pipeline("dense-prediction", model=str(root))(str(image))
    code, out, err = _run(["--model", root, "--image", image, "-f", "png,npy", "-d", tmp_path / "all"], capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert names == [
        f"room_{n}" for n in ("depth.npy", "depth.png", "normals.npy", "normals.png", "seg.npy", "seg.png")
    ]
    normals = np.load(tmp_path / "all" / "room_normals.npy")
    assert normals.dtype == np.float32 and np.array_equal(normals, pipe["normals"])
    picture = np.asarray(Image.open(tmp_path / "all" / "room_normals.png"))
    assert picture.shape == (45, 61, 3)
    assert np.abs(picture.astype(float) / 127.5 - 1 - normals).max() <= 0.5 / 127.5 + 1e-6
    assert np.array_equal(np.load(tmp_path / "all" / "room_depth.npy"), pipe["predicted_depth"])
    assert np.array_equal(np.load(tmp_path / "all" / "room_seg.npy"), pipe["segmentation"])
    assert "metres" in out
    # --task narrows it; a format only depth has goes to depth only
    code, _, err = _run(["--model", root, "--image", image, "--task", "normals", "-d", tmp_path / "n"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["room_normals.png"]
    code, _, err = _run(["--model", root, "--image", image, "-f", "png16,npy", "-d", tmp_path / "d"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "room_depth.npy",
        "room_depth16.png",
        "room_normals.npy",
        "room_seg.npy",
    ]


def test_normals_checkpoint_and_bad_requests_are_one_line(checkpoints, image, tmp_path, capsys):
    root = checkpoints["normals"][0]
    code, _, err = _run(["--model", root, "--image", image, "-f", "npy", "-d", tmp_path / "n"], capsys)
    assert code == 0, err and (tmp_path / "n" / "room_normals.npy").is_file()
    for extra, message in (
        (["-f", "png16"], "this model predicts surface normals"),
        (["-f", "ply"], "this model predicts surface normals"),
        (["--task", "depth"], "predicts normals only"),
    ):
        code, out, err = _run(["--model", root, "--image", image, "-d", tmp_path / "x", *extra], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    from dpt_mlx.ray import DepthPredictor

    with pytest.raises(ValueError, match="predicts normal-estimation"):  # the Ray stage adds one map column
        DepthPredictor(str(root))
    dense = checkpoints["dense"][0]
    code, _, err = _run(["--model", dense, "--image", image, "--task", "normals", "-f", "png16"], capsys)
    assert code == 2 and "--format png16 is not written for --task normals" in err
    with pytest.raises(SystemExit) as e:
        main(["--model", str(dense), "--image", str(image), "--task", "shapes"])
    assert e.value.code == 2 and "invalid task 'shapes'" in capsys.readouterr().err


def test_camera_normals_turn_the_models_frame_into_the_point_clouds():
    from dpt_mlx.processing.points import camera_normals

    # the model's frame: a floor +y, a wall facing the camera +z, a wall on the photo's left facing right -x
    model = np.array([[0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, 0, 0], [0, 3, 4]], np.float32)
    # OpenCV camera: +y down, +z forward: up is -y, toward the camera -z, facing right +x
    want = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0], [0, 0, 0], [0, -0.6, -0.8]], np.float32)
    np.testing.assert_allclose(camera_normals(model), want, atol=1e-7)
    assert camera_normals(np.full((2, 2, 3), np.nan)).tolist() == np.zeros((2, 2, 3)).tolist()


def test_point_cloud_and_mesh_carry_the_models_normals(checkpoints, image, tmp_path, capsys):
    import json
    import struct

    import plyfile

    from dpt_mlx.processing.points import camera_normals

    root = checkpoints["dense"][0]
    out = tmp_path / "3d"
    code, printed, err = _run(
        [
            "--model",
            root,
            "--image",
            image,
            "-f",
            "npy,ply,glb",
            "--mesh-max-vertices",
            "0",
            "--mesh-edge-threshold",
            "0",
            "-d",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    assert "points with normals" in printed and "with the model's normals" in printed
    depth, normals = np.load(out / "room_depth.npy"), np.load(out / "room_normals.npy")
    valid = np.isfinite(depth) & (depth > 0)
    want = camera_normals(normals[valid])  # row-major, as the points
    vertex = plyfile.PlyData.read(str(out / "room_points.ply"))["vertex"]
    got = np.stack([vertex["nx"], vertex["ny"], vertex["nz"]], axis=1)
    assert got.shape == want.shape and np.array_equal(got, want)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    # the GLB stores a NORMAL per vertex: the pixel's normal in glTF's axes (y and z reversed)
    data = (out / "room_mesh.glb").read_bytes()
    length = struct.unpack("<I", data[12:16])[0]
    tree = json.loads(data[20 : 20 + length])
    assert "NORMAL" in tree["meshes"][0]["primitives"][0]["attributes"]
    import trimesh

    mesh = next(iter(trimesh.load(str(out / "room_mesh.glb"), process=False).geometry.values()))
    h, w = depth.shape
    uv = np.asarray(mesh.visual.uv, dtype=np.float64)  # each vertex's pixel centre
    cols, rows = np.round(uv[:, 0] * w - 0.5).astype(int), np.round((1 - uv[:, 1]) * h - 0.5).astype(int)
    assert len(mesh.vertices) == valid.sum()  # every pixel, none dropped
    seen = camera_normals(normals)[rows, cols] * np.array([1, -1, -1], np.float32)
    np.testing.assert_allclose(np.asarray(mesh.vertex_normals), seen, atol=1e-4)

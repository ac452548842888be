"""dpt_mlx.pipeline: the one-call API, against transformers' own pipelines on tiny checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from helpers import TINY_DPT as TINY
from helpers import perturb, rel_err, tiny_dpt
from PIL import Image

import dpt_mlx
from dpt_mlx import pipeline
from dpt_mlx.errors import ImageError
from dpt_mlx.pipelines import DEFAULT_MODELS, load_image
from dpt_mlx.processing.image_processor import DPTImageProcessor
from dpt_mlx.processing.postprocess import segment

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "images" / "coffee.jpg"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    processor = transformers.DPTImageProcessorPil(size={"height": 32, "width": 32})
    depth = tiny_dpt(seed=4)
    with torch.no_grad():  # keep the depth above the head's final ReLU, so that it varies over the image
        depth.head.head[4].bias.fill_(1.0)
    depth.save_pretrained(str(root / "depth"))
    processor.save_pretrained(str(root / "depth"))
    config = transformers.DPTConfig(**TINY, id2label={0: "wall", 1: "floor", 2: "table", 3: "cup", 4: "plate"})
    seg = perturb(transformers.DPTForSemanticSegmentation(config), seed=5)
    seg.save_pretrained(str(root / "seg"))
    processor.save_pretrained(str(root / "seg"))
    return {"depth": root / "depth", "seg": root / "seg"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    photo = Image.open(PHOTO)
    paths = {"rgb": root / "coffee.jpg", "gray": root / "gray.png", "rgba": root / "small.png"}
    shutil.copy(PHOTO, paths["rgb"])
    photo.convert("L").crop((5, 5, 128, 90)).save(paths["gray"])
    photo.convert("RGBA").resize((45, 31)).save(paths["rgba"])
    return paths


@pytest.mark.parity
def test_depth_pipeline_matches_transformers(ckpt, images):
    ours = pipeline("depth-estimation", model=str(ckpt["depth"]))
    theirs = transformers.pipeline("depth-estimation", model=str(ckpt["depth"]))
    for name, path in images.items():
        result = ours(str(path))
        reference = theirs(str(path))
        with Image.open(path) as photo:
            size = photo.size
        depth = result["predicted_depth"]
        assert isinstance(depth, np.ndarray) and depth.dtype == np.float32 and depth.shape == size[::-1]
        assert rel_err(depth, reference["predicted_depth"]) < 1e-4, name
        assert result["depth"].mode == "L" and result["depth"].size == size
        # same normalisation as transformers: (d - min) / (max - min) * 255, truncated to uint8
        diff = np.abs(np.asarray(result["depth"], dtype=int) - np.asarray(reference["depth"], dtype=int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, name


@pytest.mark.parity
def test_segmentation_pipeline_matches_transformers(ckpt, images):
    ours = pipeline("image-segmentation", model=str(ckpt["seg"]))
    theirs = transformers.pipeline("image-segmentation", model=str(ckpt["seg"]))
    result = ours(str(images["rgb"]))
    reference = theirs(str(images["rgb"]))
    assert [r["label"] for r in result] == [r["label"] for r in reference]
    for mine, ref in zip(result, reference):
        assert mine["score"] is None and mine["mask"].mode == "L" and mine["mask"].size == (600, 400)
        a, b = np.asarray(mine["mask"]), np.asarray(ref["mask"])
        assert set(np.unique(a)) <= {0, 255}
        assert (a != b).mean() < 1e-3
    total = sum(np.asarray(r["mask"]) // 255 for r in result)
    assert (total == 1).all()  # the masks partition the image


@pytest.mark.parity
def test_flip_tta_on_segmentation_averages_mirrored_logits(ckpt, images):
    """flip_tta for segmentation: the class map of the mean of the logits and the mirrored logits of the
    mirrored image, as one would write it with transformers."""
    ref = transformers.DPTForSemanticSegmentation.from_pretrained(str(ckpt["seg"])).eval()
    processor = transformers.DPTImageProcessorPil.from_pretrained(str(ckpt["seg"]))
    image = Image.open(images["rgb"]).convert("RGB")
    x = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = (ref(x).logits + torch.flip(ref(torch.flip(x, dims=[-1])).logits, dims=[-1])) / 2
    expected = segment(logits[0].numpy(), (image.height, image.width))
    ours = pipeline("image-segmentation", model=str(ckpt["seg"]), flip_tta=True)
    plain = pipeline("image-segmentation", model=str(ckpt["seg"]))
    got = ours.predictor.predict([image])[0]
    assert (got != expected).mean() < 1e-3
    assert (got != plain.predictor.predict([image])[0]).mean() > 1e-3  # the mirrored pass changed something


def test_inputs_paths_pil_arrays_and_lists(ckpt, images):
    depth = pipeline("depth", model=ckpt["depth"])  # "depth" is an alias; a Path works too
    photo = Image.open(images["gray"])
    one = depth(images["gray"])
    assert isinstance(one, dict) and set(one) == {"predicted_depth", "depth"}
    from_pil = depth(photo)
    from_array = depth(np.asarray(photo))  # (H, W) uint8 grayscale
    from_float = depth(np.asarray(photo.convert("RGB"), dtype=np.float32) / 255)  # (H, W, 3) in [0, 1]
    for other in (from_pil, from_array, from_float):
        assert rel_err(other["predicted_depth"], one["predicted_depth"]) < 1e-5
    many = depth([images["rgb"], photo, images["rgba"]], batch_size=2)
    assert isinstance(many, list) and [m["predicted_depth"].shape for m in many] == [(400, 600), (85, 123), (31, 45)]
    assert rel_err(many[1]["predicted_depth"], one["predicted_depth"]) < 1e-5

    seg = pipeline("image-segmentation", model=ckpt["seg"])
    out = seg([images["gray"], images["rgba"]])
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(x, list) for x in out)
    assert {x["label"] for x in out[1]} <= {"wall", "floor", "table", "cup", "plate"}
    assert out[1][0]["mask"].size == (45, 31)


def test_loaded_model_and_processor(ckpt, images):
    model = dpt_mlx.load_model(ckpt["depth"])
    processor = DPTImageProcessor.from_pretrained(ckpt["depth"])
    from_objects = pipeline("depth-estimation", model=model, image_processor=processor)
    from_path = pipeline("depth-estimation", model=str(ckpt["depth"]))
    a = from_objects(images["rgba"])["predicted_depth"]
    b = from_path(images["rgba"])["predicted_depth"]
    assert np.array_equal(a, b)
    # a loaded model without a processor gets the defaults for its type (square image_size, mean/std 0.5)
    assert np.array_equal(pipeline("depth-estimation", model=model)(images["rgba"])["predicted_depth"], a)


def test_float16(ckpt, images):
    half = pipeline("depth-estimation", model=str(ckpt["depth"]), dtype="float16")
    full = pipeline("depth-estimation", model=str(ckpt["depth"]))
    assert half.model.dtype == mx.float16
    a = half(images["rgba"])["predicted_depth"]
    b = full(images["rgba"])["predicted_depth"]
    assert a.dtype == np.float32 and rel_err(a, b) < 2e-2


def test_task_errors(ckpt):
    with pytest.raises(ValueError, match="depth-estimation, image-segmentation"):
        pipeline("object-detection", model=str(ckpt["depth"]))
    with pytest.raises(dpt_mlx.DPTError, match="depth-estimation model"):
        pipeline("image-segmentation", model=str(ckpt["depth"]))
    with pytest.raises(dpt_mlx.DPTError, match="image-segmentation model"):
        pipeline("depth-estimation", model=str(ckpt["seg"]))


def test_default_models(monkeypatch):
    import huggingface_hub.constants

    assert DEFAULT_MODELS == {
        "depth-estimation": "Intel/dpt-large",
        "image-segmentation": "Intel/dpt-large-ade",
        "dense-prediction": "google/tipsv2-b14-dpt",
    }
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-dpt-mlx-cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", "/nonexistent-dpt-mlx-cache")
    for task, name in DEFAULT_MODELS.items():
        with pytest.raises(dpt_mlx.CheckpointError, match=name):
            pipeline(task)
    with pytest.raises(ValueError, match="give the normal-estimation checkpoint"):
        pipeline("normals")


def test_load_image(tmp_path):
    photo = Image.open(PHOTO)
    # EXIF orientation is applied (6 = rotate 90 degrees clockwise to display)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    photo.save(rotated, exif=exif)
    upright = load_image(rotated)
    assert upright.size == (400, 600) and upright.mode == "RGB"
    # 16-bit grayscale is scaled to 8 bits, not clipped to white
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 9), 32896, dtype=np.uint16)).save(deep)
    assert np.asarray(load_image(deep))[0, 0].tolist() == [128, 128, 128]
    # problems are one-line ImageErrors (DPTError, ValueError)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    (tmp_path / "cut.jpg").write_bytes(PHOTO.read_bytes()[:4000])
    for path, words in (
        (tmp_path / "missing.jpg", "no such image file"),
        (tmp_path / "bad.jpg", "not an image"),
        (tmp_path / "cut.jpg", "corrupt or incomplete"),
        (tmp_path, "is a directory"),
    ):
        with pytest.raises(ImageError, match=words) as info:
            load_image(path)
        assert "\n" not in str(info.value) and isinstance(info.value, dpt_mlx.DPTError)


def test_banded_segmentation_equals_resize_then_argmax(monkeypatch):

    import dpt_mlx.processing.postprocess as module
    from dpt_mlx.ops import interpolate_np

    logits = np.random.default_rng(0).standard_normal((7, 12, 17)).astype(np.float32)
    reference = interpolate_np(logits, (50, 41), "bilinear", align_corners=False).argmax(axis=0)
    assert np.array_equal(segment(logits, (50, 41)), reference)
    monkeypatch.setattr(module, "_BAND_BYTES", 7 * 41 * 4 * 3)  # three rows per band
    assert np.array_equal(segment(logits, (50, 41)), reference)

"""Bad inputs give one-line errors, never a plausible-looking result: NaN and empty images, broken
checkpoints (NaN weights, unreadable files), broken symbolic links, targets without a valid pixel,
bad target sizes and non-finite model outputs in post-processing.

Checkpoints are tiny random dpt_mlx models saved in tmp_path (no network, no torch needed).
"""

from __future__ import annotations

import errno
import os
import types
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from PIL import Image

import dpt_mlx
from dpt_mlx import pipeline
from dpt_mlx.cli.predict import main as predict_main
from dpt_mlx.errors import CheckpointError, ImageError
from dpt_mlx.io import checkpoint
from dpt_mlx.models import losses
from dpt_mlx.pipelines import depth_image, load_image
from dpt_mlx.processing.image_processor import DPTImageProcessor
from dpt_mlx.processing.postprocess import check_target_sizes, segment
from dpt_mlx.training.data import (
    DEPTH,
    SEGMENTATION,
    Batches,
    DataError,
    Sample,
    TargetReader,
)
from dpt_mlx.training.metrics import depth_metrics, evaluate

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    image_size=32,
    backbone_out_indices=[0, 1, 1, 1],
    neck_hidden_sizes=[8, 16, 16, 32],
    fusion_hidden_size=16,
)


def _tiny_depth_model(nan: bool = False):
    model = dpt_mlx.DPTForDepthEstimation(dpt_mlx.DPTConfig(**TINY))
    if nan:  # a damaged checkpoint: one NaN in the last convolution's bias makes every output NaN
        name, bias = [(k, v) for k, v in tree_flatten(model.parameters()) if k.endswith("bias")][-1]
        model.load_weights([(name, mx.full(bias.shape, float("nan")))], strict=False)
    model.eval()
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    _tiny_depth_model().save_pretrained(root / "good")
    _tiny_depth_model(nan=True).save_pretrained(root / "nan")
    return {"good": root / "good", "nan": root / "nan"}


@pytest.fixture(scope="module")
def depth(ckpt):
    return pipeline("depth-estimation", model=str(ckpt["good"]))


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------
# Images: NaN, inf, empty, odd types


NAN_IMAGE = np.full((8, 9, 3), 0.5, dtype=np.float32)
NAN_IMAGE[2, 3, 1] = np.nan


@pytest.mark.parametrize("do_resize", [True, False])
def test_processor_rejects_nan_like_inf(do_resize):
    processor = DPTImageProcessor(size=16, do_resize=do_resize)
    for image in (NAN_IMAGE, mx.array(NAN_IMAGE), np.moveaxis(NAN_IMAGE, -1, 0)):
        with pytest.raises(ValueError, match="contains NaN") as info:
            processor(image)
        _one_line(info)
    with pytest.raises(ValueError, match="contains inf"):
        processor(np.where(np.isnan(NAN_IMAGE), np.inf, NAN_IMAGE))
    with pytest.raises(ValueError, match="segmentation map contains NaN"):
        processor(np.full((8, 9), 0.5), segmentation_maps=NAN_IMAGE[..., 1])


def test_pipeline_and_load_image_reject_nan(depth):
    with pytest.raises(ValueError, match="contains NaN"):
        load_image(NAN_IMAGE)
    with pytest.raises(ValueError, match="contains NaN"):
        depth(NAN_IMAGE)


def test_float_tiff_with_nan_fails_in_the_command_line(ckpt, tmp_path, capsys):
    path = tmp_path / "float.tif"
    Image.fromarray(NAN_IMAGE[..., 1]).save(path)  # mode "F"
    with pytest.raises(ImageError, match="float.tif: the image contains NaN"):
        load_image(path)
    code = predict_main(["--model", str(ckpt["good"]), "--image", str(path), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "contains NaN" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 7, 3), (5, 0), (3, 0, 0)])
def test_empty_image_is_a_value_error(depth, shape):
    empty = np.zeros(shape, dtype=np.uint8)
    for call in (DPTImageProcessor(), load_image, depth):
        with pytest.raises(ValueError, match=r"the image is empty \(\d+x\d+ pixels\)") as info:
            call(empty)
        _one_line(info)
    if shape == (0, 0, 3):
        assert "(0x0 pixels)" in str(info.value)
    with pytest.raises(ValueError, match="empty"):
        DPTImageProcessor()(Image.new("RGB", (0, 0)))
    with pytest.raises(ValueError, match="empty"):
        dpt_mlx.processing.image_processor.resize_output_size(0, 0, {"height": 8, "width": 8}, False, 1)


@pytest.mark.parametrize("dtype", ["<U1", object, np.complex64])
def test_arrays_that_are_not_real_numbers_are_rejected(dtype):
    array = np.ones((4, 5, 3)).astype(dtype)
    for call in (DPTImageProcessor(), load_image):
        with pytest.raises(ValueError, match="real numbers"):
            call(array)


def test_bfloat16_mlx_image_is_loaded(depth):
    image = mx.full((6, 7, 3), 0.5, dtype=mx.bfloat16)
    assert load_image(image).size == (7, 6)
    assert depth(image)["predicted_depth"].shape == (6, 7)


def test_batch_size_zero_is_rejected(depth, ckpt):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            depth(np.zeros((8, 8, 3), dtype=np.uint8), batch_size=bad)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline("depth-estimation", model=str(ckpt["good"]), batch_size=0)


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints


def test_nan_weights_raise_in_pipeline_and_fail_in_the_command_line(ckpt, tmp_path, capsys):
    photo = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    broken = pipeline("depth-estimation", model=_tiny_depth_model(nan=True))
    with pytest.raises(ValueError, match=r"output for 1 of 1 image\(s\) contains NaN or inf.*damaged") as info:
        broken(photo)
    _one_line(info)
    with pytest.raises(ValueError, match=r"output for 2 of 2 image\(s\)"):
        broken([photo, photo], batch_size=2)

    paths = []
    for name in ("a.png", "b.png"):
        paths.append(tmp_path / name)
        Image.fromarray(photo).save(paths[-1])
    out = tmp_path / "out"
    code = predict_main(
        ["--model", str(ckpt["nan"]), "--image", *map(str, paths), "--output-dir", str(out), "--format", "png,npy"]
    )
    err = capsys.readouterr().err
    assert code == 2, err  # every image failed
    assert err.count("inference failed") == 2 and "NaN" in err and "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []  # nothing written


def test_unreadable_weights_say_permission_denied(ckpt, monkeypatch):
    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(checkpoint, "open", denied, raising=False)  # as chmod 000 does for a non-root user
    with pytest.raises(CheckpointError, match=r"model.safetensors: permission denied$") as info:
        checkpoint.read_weights(ckpt["good"])
    _one_line(info)
    monkeypatch.undo()
    monkeypatch.setattr(checkpoint.mx, "load", denied)  # the same from MLX's reader
    with pytest.raises(CheckpointError, match="permission denied"):
        dpt_mlx.load_model(ckpt["good"])


def test_symbolic_link_loops_and_dangling_links(ckpt, tmp_path):
    loop_a, loop_b = tmp_path / "loop_a.png", tmp_path / "loop_b.png"
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    with pytest.raises(ImageError, match="loop_a.png is a symbolic link loop") as info:
        load_image(loop_a)
    _one_line(info)
    dangling = tmp_path / "dangling.png"
    os.symlink(tmp_path / "gone.png", dangling)
    with pytest.raises(ImageError, match="dangling.png is a symbolic link to a missing file"):
        load_image(dangling)
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "missing.png")

    looped = tmp_path / "looped_ckpt"
    looped.mkdir()
    (looped / "config.json").write_bytes((ckpt["good"] / "config.json").read_bytes())
    os.symlink(looped / "model.safetensors", looped / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors: too many levels of symbolic links"):
        dpt_mlx.load_model(looped)


# ----------------------------------------------------------------------------------------------
# Post-processing: target sizes and non-finite outputs


@pytest.mark.parametrize(
    "sizes, words",
    [
        ([(10.5, 20)], "positive integers"),
        ([(True, 20)], "positive integers"),
        ([(0, 20)], "positive integers"),
        ([("10", "20")], "positive integers"),
        ([(10, 20, 3)], "positive integers"),
        ([7], "positive integers"),
        ((10, 20), r"in a list, \[\(height, width\)\]"),
        (7, "list of \\(height, width\\) pairs"),
        ("ab", "list of \\(height, width\\) pairs"),
    ],
)
def test_bad_target_sizes(sizes, words):
    with pytest.raises(ValueError, match=words) as info:
        check_target_sizes(sizes, 1, "depth maps")
    _one_line(info)


def test_target_sizes_as_arrays_and_tensors():
    import torch

    want = [(12, 17)]
    assert check_target_sizes(np.array([[12, 17]]), 1, "x") == want
    assert check_target_sizes(torch.tensor([[12, 17]]), 1, "x") == want
    assert check_target_sizes([torch.tensor([12, 17])], 1, "x") == want
    assert check_target_sizes([(np.int64(12), 17)], 1, "x") == want
    with pytest.raises(ValueError, match="positive integers"):
        check_target_sizes(np.array([[12.5, 17.0]]), 1, "x")


def test_non_finite_model_outputs_are_rejected_in_post_processing():
    processor = DPTImageProcessor()
    depth = np.ones((2, 8, 8), dtype=np.float32)
    depth[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match=r"predicted_depth contains NaN or inf \(in 1 of 2 images\)"):
        processor.post_process_depth_estimation(types.SimpleNamespace(predicted_depth=depth))
    logits = np.zeros((1, 3, 8, 8), dtype=np.float32)
    logits[0, 1, 2, 2] = np.inf
    outputs = types.SimpleNamespace(logits=logits)
    for scores in (False, True):
        with pytest.raises(ValueError, match="logits contains NaN or inf"):
            processor.post_process_semantic_segmentation(outputs, return_segmentation_scores=scores)
    with pytest.raises(ValueError, match="NaN or inf"):
        segment(logits[0], (16, 16))
    with pytest.raises(ValueError, match="positive integers"):
        segment(np.zeros((3, 8, 8), np.float32), (0, 16))
    with pytest.raises(ValueError, match="NaN or inf"):
        depth_image(depth[1])
    with pytest.raises(ValueError, match="2-D"):
        depth_image(np.zeros((0, 4), dtype=np.float32))


# ----------------------------------------------------------------------------------------------
# Training: targets without a valid pixel, metrics over empty masks, labels out of range


def _write_image(path: Path, size=(16, 16)) -> Path:
    Image.fromarray(np.full(size + (3,), 128, dtype=np.uint8)).save(path)
    return path


def test_depth_target_without_a_valid_pixel_is_a_data_error(tmp_path):
    image = _write_image(tmp_path / "a.png")
    reader = TargetReader(
        DEPTH,
        DPTImageProcessor(size=8),
        disparity=True,
        normalize=True,
        target="depth",
        depth_scale=1.0,
        ignore_index=255,
    )
    for name, values in (
        ("zeros.npy", np.zeros((16, 16))),
        ("nan.npy", np.full((16, 16), np.nan)),
        ("negative.npy", -np.ones((16, 16))),
    ):
        np.save(tmp_path / name, values.astype(np.float32))
        with pytest.raises(DataError, match=f"{name} has no valid depth pixel") as info:
            reader.read(Sample("a", image, tmp_path / name, (16, 16)))
        _one_line(info)
    np.save(tmp_path / "one.npy", np.pad(np.ones((1, 1), np.float32), ((0, 15), (0, 15))))
    assert reader.read(Sample("a", image, tmp_path / "one.npy", (16, 16))).shape == (8, 8)


def test_mask_without_a_labelled_pixel_is_a_data_error(tmp_path):
    image = _write_image(tmp_path / "a.png")
    Image.fromarray(np.full((16, 16), 255, dtype=np.uint8)).save(tmp_path / "ignored.png")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / "background.png")
    reader = TargetReader(SEGMENTATION, DPTImageProcessor(size=8), False, False, "depth", 1.0, 255, num_labels=3)
    with pytest.raises(DataError, match="ignored.png has no labelled pixel"):
        reader.read(Sample("a", image, tmp_path / "ignored.png", (16, 16)))
    assert (reader.read(Sample("a", image, tmp_path / "background.png", (16, 16))) == 0).all()
    reduce = TargetReader(
        SEGMENTATION, DPTImageProcessor(size=8, do_reduce_labels=True), False, False, "depth", 1.0, 255, num_labels=3
    )
    with pytest.raises(DataError, match="background.png has no labelled pixel.*do_reduce_labels"):
        reduce.read(Sample("a", image, tmp_path / "background.png", (16, 16)))


class _ConstantDepthModel:
    """Stands in for a depth model in evaluate(): predicts 1 everywhere, loss 0."""

    def eval(self):
        return self

    def __call__(self, pixel_values, labels=None, **kwargs):
        return types.SimpleNamespace(loss=mx.array(0.0), predicted_depth=mx.ones(pixel_values.shape[:1] + (8, 8)))


def test_validation_without_a_scorable_image_is_not_reported_silently(tmp_path):
    (tmp_path / "images").mkdir()
    image = _write_image(tmp_path / "images" / "a.png")
    target = np.zeros((16, 16), dtype=np.float32)
    target[0, 0] = 2.0  # valid in the file, but no pixel centre of the 8x8 grid lands on it
    np.save(tmp_path / "a.npy", target)
    processor = DPTImageProcessor(size=8)
    reader = TargetReader(DEPTH, processor, False, False, "depth", 1.0, 255)
    batches = Batches([Sample("a", image, tmp_path / "a.npy", (16, 16))], processor, reader, 1)
    with pytest.raises(DataError, match="none of the 1 validation images has two valid depth pixels"):
        evaluate(_ConstantDepthModel(), batches, "silog")
    with pytest.raises(ValueError, match="same shape"):
        depth_metrics(np.ones((4, 4)), np.ones((4, 5)), align=False, disparity=False)


def test_segmentation_loss_rejects_labels_outside_the_classes():
    logits = mx.zeros((1, 3, 4, 4))
    with pytest.raises(ValueError, match="outside"):
        losses.semantic_segmentation_loss(logits, mx.full((1, 4, 4), 3, dtype=mx.int32))
    with pytest.raises(ValueError, match="integer class ids"):
        losses.semantic_segmentation_loss(logits, mx.zeros((1, 4, 4)))
    assert float(losses.semantic_segmentation_loss(logits, mx.full((1, 4, 4), 2, dtype=mx.int32))) > 0

"""DPTImageProcessor against transformers' DPTImageProcessorPil (the PIL backend it ports).

Images are synthesised in helpers.py (smooth gradients, shapes, texture and noise, like a
photo), so the tests need no files and no network.
"""

import json
import types

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import INPUTS, photo, smooth
from PIL import Image
from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil
from transformers.models.prompt_depth_anything.image_processing_pil_prompt_depth_anything import (
    PromptDepthAnythingImageProcessorPil,
)

from dpt_mlx.errors import CheckpointError
from dpt_mlx.processing.image_processor import BatchFeature, DPTFeatureExtractor, DPTImageProcessor
from dpt_mlx.processing.prompt_depth_processor import PromptDepthAnythingImageProcessor

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Configs as the hub checkpoints ship them (from memory of the real preprocessor_config.json
# files; values not listed are the class defaults).
CONFIGS = {
    # Intel/dpt-large (and dpt-large-ade): an old DPTFeatureExtractor file, size as a bare int,
    # bilinear resampling, mean/std 0.5, no aspect ratio kept.
    "dpt-large": {"size": 384, "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
    # Intel/dpt-hybrid-midas style: aspect ratio kept, sides rounded to multiples of 32.
    "dpt-hybrid-midas": {"size": 384, "resample": 3, "keep_aspect_ratio": True, "ensure_multiple_of": 32},
    # facebook/dpt-dinov2-small-nyu: no resize, no rescale, mean/std on the 0..255 scale, centre
    # padding to multiples of the patch size 14.
    "dpt-dinov2": {
        "do_resize": False,
        "do_rescale": False,
        "do_pad": True,
        "size_divisor": 14,
        "resample": 2,
        "image_mean": [123.675, 116.28, 103.53],
        "image_std": [58.395, 57.12, 57.375],
    },
    # LiheYoung/depth-anything-small-hf (and the V2 repos).
    "depth-anything": {
        "size": {"height": 518, "width": 518},
        "keep_aspect_ratio": True,
        "ensure_multiple_of": 14,
        "resample": 3,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
    },
}


def reference(config, **extra):
    # transformers leaves do_convert_rgb unset by default and then fails on non-RGB images;
    # ours converts them, like the reference does with do_convert_rgb=True.
    return DPTImageProcessorPil(**{"do_convert_rgb": True, **config, **extra})


def ref_pixels(config, images, **kwargs):
    return reference(config)(images, return_tensors="np", **kwargs)["pixel_values"]


def label_map(height, width, seed=0, classes=150):
    """A blocky (height, width) uint8 label map with a 0 (background) region."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, classes, (height // 16 + 1, width // 16 + 1))
    labels = np.kron(blocks, np.ones((16, 16), dtype=np.int64))[:height, :width]
    labels[: height // 5, : width // 4] = 0
    return labels.astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# pixel_values


@pytest.mark.parity
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("input_name", sorted(INPUTS))
def test_pixel_values_match_reference(config_name, input_name):
    config = CONFIGS[config_name]
    expected = ref_pixels(config, INPUTS[input_name]())
    ours = DPTImageProcessor(**config)(INPUTS[input_name]())["pixel_values"]
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


@pytest.mark.parity
@pytest.mark.parametrize("resample", [0, 1, 2, 3, 4, 5])
def test_every_resample_filter(resample):
    image = Image.fromarray(photo(211, 157, seed=11))
    config = {"size": {"height": 160, "width": 300}, "resample": resample}
    np.testing.assert_allclose(
        DPTImageProcessor(**config)(image).pixel_values, ref_pixels(config, image), rtol=0, atol=1e-5
    )


@pytest.mark.parity
def test_defaults_and_rounding_half_to_even():
    # 50 x 70 to size 70 keeping the aspect ratio: the width already fits (scale 1), so the
    # sides are 50 / 4 = 12.5 and 70 / 4 = 17.5 multiples of 4; Python's round goes to even.
    image = photo(50, 70, seed=12)
    for config in ({}, {"size": 70, "keep_aspect_ratio": True, "ensure_multiple_of": 4}):
        ours = DPTImageProcessor(**config)(image).pixel_values
        np.testing.assert_allclose(ours, ref_pixels(config, image), rtol=0, atol=1e-5)
    ours = DPTImageProcessor(size=70, keep_aspect_ratio=True, ensure_multiple_of=4)(image).pixel_values
    assert ours.shape[-2:] == (48, 72)  # round(12.5) = 12, round(17.5) = 18


@pytest.mark.parity
def test_batch_of_mixed_inputs_stacks_when_sizes_agree():
    config = CONFIGS["dpt-large"]
    images = [factory() for factory in INPUTS.values()]
    expected = ref_pixels(config, [factory() for factory in INPUTS.values()])
    ours = DPTImageProcessor(**config)(images)
    assert ours.pixel_values.shape == (len(images), 3, 384, 384)
    np.testing.assert_allclose(ours.pixel_values, expected, rtol=0, atol=1e-5)
    as_mlx = DPTImageProcessor(**config)(images, return_tensors="mlx").pixel_values
    assert isinstance(as_mlx, mx.array) and as_mlx.dtype == mx.float32
    np.testing.assert_array_equal(np.array(as_mlx), ours.pixel_values)


@pytest.mark.parity
@pytest.mark.parametrize("config_name", ["depth-anything", "dpt-dinov2"])
def test_batch_of_different_sizes_is_a_list_like_the_reference(config_name):
    config = CONFIGS[config_name]
    images = [photo(333, 517), photo(200, 120, seed=1), photo(97, 97, seed=2)]
    expected = reference(config)(images)["pixel_values"]  # a list: the reference does not pad
    assert isinstance(expected, list)
    ours = DPTImageProcessor(**config)(images, return_tensors=None).pixel_values
    assert isinstance(ours, list) and len(ours) == len(expected)
    assert len({e.shape for e in expected}) == 3
    for mine, theirs in zip(ours, expected):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="different shapes"):
        DPTImageProcessor(**config)(images, return_tensors="np")
    with pytest.raises(ValueError, match="different shapes"):
        DPTImageProcessor(**config)(images, return_tensors="mlx")


@pytest.mark.parity
def test_call_overrides_and_batch_arrays():
    processor = DPTImageProcessor(**CONFIGS["dpt-large"])
    batch = np.stack([photo(120, 90, seed=s) for s in range(3)])  # (N, H, W, C)
    overrides = {"size": {"height": 100, "width": 140}, "do_normalize": False, "resample": 3}
    expected = ref_pixels(CONFIGS["dpt-large"], list(batch), **overrides)
    np.testing.assert_allclose(processor(batch, **overrides).pixel_values, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(processor(mx.array(batch), **overrides).pixel_values, expected, rtol=0, atol=1e-5)
    assert processor.size == {"height": 384, "width": 384}  # overrides are per call


def test_output_is_attribute_dict():
    out = DPTImageProcessor()(photo(40, 30))
    assert isinstance(out, BatchFeature) and isinstance(out, dict)
    assert out.pixel_values is out["pixel_values"]
    with pytest.raises(AttributeError):
        _ = out.labels


# ----------------------------------------------------------------------------------------------
# labels


@pytest.mark.parity
@pytest.mark.parametrize("config_name", ["dpt-large", "dpt-dinov2", "depth-anything"])
@pytest.mark.parametrize("reduce_labels", [False, True])
def test_labels_match_reference(config_name, reduce_labels):
    config = {**CONFIGS[config_name], "do_reduce_labels": reduce_labels}
    images = [photo(333, 517), photo(240, 200, seed=1)]
    maps = [Image.fromarray(label_map(333, 517)), label_map(240, 200, seed=1).astype(np.int32)]
    maps_for_reference = [Image.fromarray(label_map(333, 517)), label_map(240, 200, seed=1).astype(np.int32)]
    expected = reference(config)(images, segmentation_maps=maps_for_reference)
    ours = DPTImageProcessor(**config)(images, segmentation_maps=maps, return_tensors=None)
    assert len(ours.labels) == 2
    for mine, theirs in zip(ours.labels, expected["labels"]):
        assert mine.dtype == np.int64 and mine.shape == theirs.shape
        np.testing.assert_array_equal(mine, theirs)
    for mine, theirs in zip(ours.pixel_values, expected["pixel_values"]):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-5)
    # The reference reduces labels in place in the caller's array; we leave it alone.
    np.testing.assert_array_equal(maps[1], label_map(240, 200, seed=1))


@pytest.mark.parity
def test_stacked_labels_and_palette_maps():
    config = {**CONFIGS["dpt-large"], "do_reduce_labels": True}
    palette_map = Image.fromarray(label_map(100, 130, seed=2)).convert("P")  # indices are the labels
    expected = reference(config)(photo(100, 130), segmentation_maps=palette_map, return_tensors="np")
    ours = DPTImageProcessor(**config)(photo(100, 130), segmentation_maps=palette_map, return_tensors="mlx")
    assert ours.labels.dtype == mx.int64 and ours.labels.shape == (1, 384, 384)
    np.testing.assert_array_equal(np.array(ours.labels), expected["labels"])


# ----------------------------------------------------------------------------------------------
# configuration files


def _assert_same_processing(ours, theirs):
    images = [INPUTS["rgb_pil_333x517"](), INPUTS["gray_pil"]()]
    theirs.do_convert_rgb = True
    expected = theirs(images, return_tensors=None)["pixel_values"]
    got = ours(images, return_tensors=None)["pixel_values"]
    for mine, ref in zip(got, expected):
        assert mine.shape == ref.shape
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-5)


@pytest.mark.parity
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_from_pretrained_reads_reference_save(tmp_path, config_name):
    DPTImageProcessorPil(**CONFIGS[config_name]).save_pretrained(tmp_path)
    ours = DPTImageProcessor.from_pretrained(tmp_path)
    _assert_same_processing(ours, DPTImageProcessorPil.from_pretrained(tmp_path))


@pytest.mark.parity
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_reference_reads_our_save(tmp_path, config_name):
    ours = DPTImageProcessor(**CONFIGS[config_name])
    (path,) = ours.save_pretrained(tmp_path / "saved")
    saved = json.loads(open(path).read())
    assert saved["image_processor_type"] == "DPTImageProcessor"
    assert saved == ours.to_dict()
    theirs = DPTImageProcessorPil.from_pretrained(tmp_path / "saved")
    _assert_same_processing(DPTImageProcessor.from_pretrained(tmp_path / "saved"), theirs)
    _assert_same_processing(ours, DPTImageProcessorPil.from_pretrained(tmp_path / "saved"))


@pytest.mark.parity
def test_old_feature_extractor_file(tmp_path):
    old = {  # the layout of Intel/dpt-large's file, plus keys DPT does not use
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "DPTFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "size": 384,
        "ensure_multiple_of": 1,
        "keep_aspect_ratio": False,
        "size_divisor": None,
        "processor_class": "DPTProcessor",
        "crop_size": 224,
        "reduce_labels": True,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(old))
    ours = DPTFeatureExtractor.from_pretrained(tmp_path)
    assert DPTFeatureExtractor is DPTImageProcessor
    assert ours.size == {"height": 384, "width": 384} and ours.resample == 2 and ours.do_reduce_labels
    _assert_same_processing(ours, DPTImageProcessorPil.from_pretrained(tmp_path))
    # A file path works as well as its directory; keyword overrides win over the file.
    assert DPTImageProcessor.from_pretrained(tmp_path / "preprocessor_config.json", size=100).size["height"] == 100


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        DPTImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        DPTImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": -3}))
    with pytest.raises(CheckpointError, match="size"):
        DPTImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError):
        DPTImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        DPTImageProcessor.from_pretrained(str(tmp_path / "missing" / "deeper" / "x y"))


def test_from_pretrained_hub_path(tmp_path, monkeypatch):
    import huggingface_hub

    DPTImageProcessor(**CONFIGS["depth-anything"]).save_pretrained(tmp_path)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("revision")))
        if repo_id != "owner/model":
            raise FileNotFoundError(repo_id)
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    loaded = DPTImageProcessor.from_pretrained("owner/model", revision="abc")
    assert calls == [("owner/model", "preprocessor_config.json", "abc")]
    assert loaded.to_dict() == DPTImageProcessor(**CONFIGS["depth-anything"]).to_dict()
    with pytest.raises(CheckpointError, match="Hugging Face Hub"):
        DPTImageProcessor.from_pretrained("owner/other")


@pytest.mark.parametrize(
    "option, value",
    [
        ("size", -1),
        ("size", {"shortest_edge": 384}),
        ("size", [384]),
        ("resample", 42),
        ("resample", "bicubic"),
        ("ensure_multiple_of", 0),
        ("ensure_multiple_of", 1.5),
        ("do_resize", "yes"),
        ("rescale_factor", "1/255"),
        ("image_mean", "imagenet"),
        ("image_std", [0.5, 0.0, 0.5]),
        ("size_divisor", 0),
        ("do_convert_rgb", 1),
    ],
)
def test_invalid_options_name_themselves(option, value):
    with pytest.raises(ValueError, match=option):
        DPTImageProcessor(**{option: value})
    with pytest.raises(ValueError, match=option):
        DPTImageProcessor()(photo(20, 20), **{option: value})


def test_bad_call_arguments():
    processor = DPTImageProcessor()
    with pytest.raises(ValueError, match="return_tensors"):
        processor(photo(20, 20), return_tensors="pt")
    with pytest.raises(TypeError, match="unknown"):
        processor(photo(20, 20), do_flip=True)
    with pytest.raises(ValueError, match="segmentation maps"):
        processor([photo(20, 20)] * 2, segmentation_maps=label_map(20, 20))
    with pytest.raises(ValueError, match="channel"):
        processor(np.zeros((20, 20, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="image_mean"):
        processor(Image.new("L", (20, 20)), do_convert_rgb=False)


# ----------------------------------------------------------------------------------------------
# post-processing


TARGETS = [
    None,
    [(160, 230), (121, 97)],  # larger, non-square, and an odd size
    [(20, 31), (37, 53)],  # smaller, and the prediction's own size
]


@pytest.mark.parity
@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("as_mlx", [False, True])
@pytest.mark.parametrize(
    "processors",
    [
        (DPTImageProcessor, DPTImageProcessorPil),
        (PromptDepthAnythingImageProcessor, PromptDepthAnythingImageProcessorPil),
    ],
    ids=["dpt", "prompt-depth-anything"],
)
def test_post_process_depth(targets, as_mlx, processors):
    ours_cls, theirs_cls = processors
    depth = np.abs(smooth((2, 37, 53), seed=0)) * 10
    theirs = theirs_cls().post_process_depth_estimation(
        types.SimpleNamespace(predicted_depth=torch.from_numpy(depth)), target_sizes=targets
    )
    ours = ours_cls().post_process_depth_estimation(
        types.SimpleNamespace(predicted_depth=mx.array(depth) if as_mlx else depth), target_sizes=targets
    )
    assert len(ours) == 2
    for mine, ref in zip(ours, theirs):
        mine, ref = mine["predicted_depth"], ref["predicted_depth"].numpy()
        assert isinstance(mine, np.ndarray) and mine.dtype == np.float32 and mine.shape == ref.shape
        assert np.abs(mine - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parity
@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("as_mlx", [False, True])
def test_post_process_semantic_segmentation(targets, as_mlx):
    logits = smooth((2, 6, 37, 53), seed=1) * 3
    outputs_ref = types.SimpleNamespace(logits=torch.from_numpy(logits))
    outputs = types.SimpleNamespace(logits=mx.array(logits) if as_mlx else logits)
    theirs = DPTImageProcessorPil().post_process_semantic_segmentation(outputs_ref, target_sizes=targets)
    ours = DPTImageProcessor().post_process_semantic_segmentation(outputs, target_sizes=targets)
    for mine, ref in zip(ours, theirs):
        assert isinstance(mine, np.ndarray) and mine.dtype == np.int64 and mine.shape == tuple(ref.shape)
        assert (mine == ref.numpy()).mean() >= 0.999
        assert len(np.unique(mine)) > 1  # a map of one class would make the comparison vacuous

    theirs = DPTImageProcessorPil().post_process_semantic_segmentation(
        outputs_ref, target_sizes=targets, return_segmentation_scores=True
    )
    ours = DPTImageProcessor().post_process_semantic_segmentation(
        outputs, target_sizes=targets, return_segmentation_scores=True
    )
    for mine, ref in zip(ours, theirs):
        assert (mine.segmentation == ref.segmentation.numpy()).mean() >= 0.999
        scores = ref.segmentation_scores.numpy()
        assert mine["segmentation_scores"].shape == scores.shape
        np.testing.assert_allclose(mine.segmentation_scores, scores, rtol=0, atol=1e-4 * np.abs(scores).max())


def test_post_process_errors():
    processor = DPTImageProcessor()
    depth = types.SimpleNamespace(predicted_depth=np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_depth_estimation(depth, target_sizes=[(4, 4)])
    with pytest.raises(ValueError, match="logits"):
        processor.post_process_semantic_segmentation(depth)
    logits = types.SimpleNamespace(logits=np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_semantic_segmentation(logits, target_sizes=[(4, 4), (5, 5)])
    # A (B, 1, H, W) depth and a target of height 1 still give 2-D maps.
    depth = types.SimpleNamespace(predicted_depth=np.ones((1, 1, 8, 8), dtype=np.float32))
    assert processor.post_process_depth_estimation(depth, target_sizes=[(1, 5)])[0]["predicted_depth"].shape == (1, 5)

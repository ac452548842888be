"""ZoeDepthImageProcessor against transformers' ZoeDepthImageProcessorPil (the PIL backend it ports)."""

import json
import types

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers.models.zoedepth.image_processing_pil_zoedepth as reference_module
from helpers import INPUTS, TorchvisionResize, photo, smooth
from PIL import Image
from transformers.models.zoedepth.image_processing_pil_zoedepth import ZoeDepthImageProcessorPil

from dpt_mlx.errors import CheckpointError
from dpt_mlx.processing.zoedepth_processor import ZoeDepthImageProcessor, padding

# Intel/zoedepth-nyu, -kitti and -nyu-kitti ship the class defaults of the original processor,
# whose ensure_multiple_of was 32 (transformers' class default is now 1/32).
HUB = {
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "ensure_multiple_of": 32,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "ZoeDepthImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "keep_aspect_ratio": True,
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 384, "width": 512},
}
CONFIGS = {
    "hub": {k: v for k, v in HUB.items() if k != "image_processor_type"},
    "class-defaults": {},
    "bicubic-stretched": {"resample": 3, "keep_aspect_ratio": False, "ensure_multiple_of": 32},
    "no-pad": {"do_pad": False, "ensure_multiple_of": 32, "size": 256},
    "no-resize": {"do_resize": False, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    "no-normalize": {"do_normalize": False, "size": {"height": 200, "width": 150}},
}
TINY = {
    "1x1": lambda: photo(1, 1),
    "2x3": lambda: photo(2, 3, seed=1),
    "5x1_pil": lambda: Image.fromarray(photo(5, 1, seed=2)),
}


def reference(config):
    # transformers converts to RGB only when asked; ours converts unless do_convert_rgb=False.
    return ZoeDepthImageProcessorPil(**{"do_convert_rgb": True, **config})


def assert_pixels_equal(ours, theirs):
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs):
        mine, ref = np.asarray(mine), np.asarray(ref)
        assert mine.dtype == np.float32 and mine.shape == ref.shape
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-5)


# Every input with the hub's options; a few (odd, portrait, tiny, one-channel) with the others.
CASES = [("hub", name) for name in sorted({**INPUTS, **TINY})] + [
    (config, name)
    for config in sorted(set(CONFIGS) - {"hub"})
    for name in ("rgb_pil_portrait", "numpy_hw1_uint8", "2x3", "rgba_pil")
]


@pytest.mark.parity
@pytest.mark.parametrize("config_name, input_name", CASES)
def test_pixel_values_match_reference(config_name, input_name):
    factory = {**INPUTS, **TINY}[input_name]
    config = CONFIGS[config_name]
    expected = reference(config)(factory(), return_tensors="np")["pixel_values"]
    ours = ZoeDepthImageProcessor(**config)(factory())["pixel_values"]
    assert ours.ndim == 4
    assert_pixels_equal(ours, expected)


@pytest.mark.parity
def test_float_images_without_rescale():
    images = [photo(97, 131, seed=3).astype(np.float32) / 255, photo(333, 517, seed=4) / 255.0]
    for config in ({"do_rescale": False}, {"do_rescale": False, "do_pad": False, "resample": 3}):
        expected = reference(config)(images, return_tensors=None)["pixel_values"]
        assert_pixels_equal(ZoeDepthImageProcessor(**config)(images, return_tensors=None)["pixel_values"], expected)


@pytest.mark.parity
def test_batches_and_overrides():
    images = [Image.fromarray(photo(333, 517)), photo(480, 270, seed=1), Image.fromarray(photo(97, 131, seed=2))]
    processor = ZoeDepthImageProcessor(**CONFIGS["hub"])
    # Different aspect ratios give different sizes: a list.
    expected = reference(CONFIGS["hub"])(images, return_tensors=None)["pixel_values"]
    assert len({e.shape for e in expected}) > 1
    assert_pixels_equal(processor(images, return_tensors=None)["pixel_values"], expected)
    with pytest.raises(ValueError, match="return_tensors=None"):
        processor(images)
    # Per-call overrides, as the reference takes them, stacked into one batch.
    overrides = {"keep_aspect_ratio": False, "resample": 3, "size": {"height": 160, "width": 224}}
    expected = reference(CONFIGS["hub"])(images, return_tensors="np", **overrides)["pixel_values"]
    ours = processor(images, return_tensors="mlx", **overrides)["pixel_values"]
    assert isinstance(ours, mx.array) and ours.shape == (3, 3, 160, 224)
    assert_pixels_equal(np.array(ours), expected)
    assert processor.keep_aspect_ratio and processor.resample == 2  # overrides last one call
    stacked = np.stack([photo(120, 90, seed=s) for s in range(2)])  # an (N, H, W, 3) array is a batch
    expected = reference(CONFIGS["hub"])(list(stacked), return_tensors="np")["pixel_values"]
    assert_pixels_equal(processor(stacked)["pixel_values"], expected)


def test_padding_rule():
    # int(sqrt(side / 2) * 3) on each side, reflected without repeating the edge.
    assert padding(480, 640) == (46, 53) and padding(1, 1) == (2, 2) and padding(97, 131) == (20, 24)
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    out = ZoeDepthImageProcessor(do_resize=False, do_normalize=False)(image)["pixel_values"][0]
    pad_h, pad_w = padding(5, 7)
    assert out.shape == (3, 5 + 2 * pad_h, 7 + 2 * pad_w)
    np.testing.assert_allclose(out[:, pad_h:-pad_h, pad_w:-pad_w], image.transpose(2, 0, 1) / 255, atol=1e-7)
    np.testing.assert_array_equal(out[:, pad_h - 1], out[:, pad_h + 1])  # the row above the image mirrors row 1


# ----------------------------------------------------------------------------------------------
# post-processing


@pytest.fixture
def zoe_reference(monkeypatch):
    if not hasattr(reference_module, "tvF"):
        monkeypatch.setattr(reference_module, "tvF", TorchvisionResize, raising=False)
    return ZoeDepthImageProcessorPil


def _outputs(depth, as_mlx=False):
    return types.SimpleNamespace(predicted_depth=mx.array(depth) if as_mlx else depth)


def _assert_maps_equal(ours, theirs):
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs):
        mine, ref = mine["predicted_depth"], ref["predicted_depth"].numpy()
        assert isinstance(mine, np.ndarray) and mine.dtype == np.float32 and mine.shape == ref.shape
        assert np.abs(mine - ref).max() <= 1e-5 * np.abs(ref).max()


DEPTH = np.abs(smooth((2, 48, 64), seed=0)) * 10 + 0.5
FLIPPED = np.abs(smooth((2, 48, 64), seed=1)) * 10 + 0.5
POST_CASES = {
    "sources": dict(source_sizes=[(333, 517), (97, 131)]),
    "sources-targets": dict(source_sizes=[(333, 517), (97, 131)], target_sizes=[(160, 230), (121, 97)]),
    "flip-sources": dict(source_sizes=[(480, 640), (97, 131)], flipped=True),
    "flip-no-removal": dict(source_sizes=[(480, 640), (97, 131)], flipped=True, do_remove_padding=False),
    "no-removal-targets": dict(do_remove_padding=False, target_sizes=[(37, 53), None]),
    "no-removal-nothing": dict(do_remove_padding=False),
    "source-none-entry": dict(source_sizes=[None, (97, 131)], target_sizes=[(20, 31), None]),
    "flip-targets-as-array": dict(do_remove_padding=False, flipped=True, target_sizes=np.array([[50, 70], [48, 64]])),
}


@pytest.mark.parity
@pytest.mark.parametrize("case", sorted(POST_CASES))
@pytest.mark.parametrize("as_mlx", [False, True])
def test_post_process_matches_reference(zoe_reference, case, as_mlx):
    kwargs = dict(POST_CASES[case])
    flipped = kwargs.pop("flipped", False)
    theirs = zoe_reference().post_process_depth_estimation(
        _outputs(torch.from_numpy(DEPTH)),
        outputs_flipped=_outputs(torch.from_numpy(FLIPPED)) if flipped else None,
        **kwargs,
    )
    ours = ZoeDepthImageProcessor().post_process_depth_estimation(
        _outputs(DEPTH, as_mlx), outputs_flipped=_outputs(FLIPPED, as_mlx) if flipped else None, **kwargs
    )
    _assert_maps_equal(ours, theirs)


@pytest.mark.parity
def test_post_process_without_padding_by_default(zoe_reference):
    # A processor that does not pad does not remove padding unless asked: no source sizes needed.
    theirs = zoe_reference(do_pad=False).post_process_depth_estimation(_outputs(torch.from_numpy(DEPTH)))
    ours = ZoeDepthImageProcessor(do_pad=False).post_process_depth_estimation(_outputs(DEPTH))
    _assert_maps_equal(ours, theirs)
    np.testing.assert_array_equal(ours[1]["predicted_depth"], DEPTH[1])
    sources = [(100, 90), (61, 77)]
    theirs = zoe_reference(do_pad=False).post_process_depth_estimation(
        _outputs(torch.from_numpy(DEPTH)), source_sizes=sources
    )
    ours = ZoeDepthImageProcessor(do_pad=False).post_process_depth_estimation(_outputs(DEPTH), source_sizes=sources)
    _assert_maps_equal(ours, theirs)
    assert ours[0]["predicted_depth"].shape == (100, 90)


def test_flip_averaging_and_padding_removal():
    # A map that is the mirror of its flip averages to itself; removal crops exactly the padding.
    depth = np.abs(smooth((1, 40, 52), seed=2)) + 1
    same = ZoeDepthImageProcessor().post_process_depth_estimation(
        _outputs(depth), outputs_flipped=_outputs(depth[..., ::-1].copy()), do_remove_padding=False
    )
    np.testing.assert_array_equal(same[0]["predicted_depth"], depth[0])
    source = (100, 130)
    pad_h, pad_w = padding(*source)
    full = (source[0] + 2 * pad_h, source[1] + 2 * pad_w)
    big = ZoeDepthImageProcessor().post_process_depth_estimation(
        _outputs(depth), source_sizes=[full], do_remove_padding=False
    )[0]["predicted_depth"]
    cropped = ZoeDepthImageProcessor().post_process_depth_estimation(_outputs(depth), source_sizes=[source])
    np.testing.assert_array_equal(cropped[0]["predicted_depth"], big[pad_h:-pad_h, pad_w:-pad_w])


# ----------------------------------------------------------------------------------------------
# configuration files


def _assert_same_processing(ours, theirs):
    images = [INPUTS["rgb_pil_333x517"](), INPUTS["gray_pil"]()]
    theirs.do_convert_rgb = True
    assert_pixels_equal(
        ours(images, return_tensors=None)["pixel_values"], theirs(images, return_tensors=None)["pixel_values"]
    )


@pytest.mark.parity
@pytest.mark.parametrize("config_name", ["hub", "class-defaults", "bicubic-stretched"])
def test_from_pretrained_reads_reference_save(tmp_path, config_name):
    ZoeDepthImageProcessorPil(**CONFIGS[config_name]).save_pretrained(tmp_path)
    ours = ZoeDepthImageProcessor.from_pretrained(tmp_path)
    _assert_same_processing(ours, ZoeDepthImageProcessorPil.from_pretrained(tmp_path))


@pytest.mark.parity
def test_hub_file_and_round_trip(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(HUB))
    ours = ZoeDepthImageProcessor.from_pretrained(tmp_path)
    assert ours.ensure_multiple_of == 32 and ours.size == {"height": 384, "width": 512} and ours.do_pad
    _assert_same_processing(ours, ZoeDepthImageProcessorPil.from_pretrained(tmp_path))
    (path,) = ours.save_pretrained(tmp_path / "saved")
    saved = json.loads(open(path).read())
    assert saved["image_processor_type"] == "ZoeDepthImageProcessor" and saved == ours.to_dict()
    assert ZoeDepthImageProcessor.from_pretrained(tmp_path / "saved").to_dict() == ours.to_dict()
    _assert_same_processing(ours, ZoeDepthImageProcessorPil.from_pretrained(tmp_path / "saved"))
    assert ZoeDepthImageProcessor.from_pretrained(path, resample=3).resample == 3


def test_defaults_are_the_reference_class_attributes():
    ours = ZoeDepthImageProcessor().to_dict()
    for name, value in ours.items():
        if name not in ("image_processor_type", "do_convert_rgb"):
            ref = getattr(ZoeDepthImageProcessorPil(), name)
            assert (dict(ref) if name == "size" else list(ref) if name.startswith("image_") else ref) == value, name


# ----------------------------------------------------------------------------------------------
# bad input


def _one_line(info):
    assert "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "option, value",
    [
        ("resample", 0),
        ("resample", 42),
        ("ensure_multiple_of", 0),
        ("ensure_multiple_of", -32),
        ("ensure_multiple_of", "32"),
        ("ensure_multiple_of", True),
        ("size", -1),
        ("do_pad", "yes"),
        ("image_std", [0.5, 0.0, 0.5]),
        ("rescale_factor", float("nan")),
    ],
)
def test_invalid_options_name_themselves(option, value):
    with pytest.raises(ValueError, match=option) as info:
        ZoeDepthImageProcessor(**{option: value})
    _one_line(info)
    with pytest.raises(ValueError, match=option):
        ZoeDepthImageProcessor()(photo(20, 20), **{option: value})


def test_bad_calls():
    processor = ZoeDepthImageProcessor(**CONFIGS["hub"])
    with pytest.raises(ValueError, match="return_tensors"):
        processor(photo(20, 20), return_tensors="pt")
    with pytest.raises(TypeError, match="unknown"):
        processor(photo(20, 20), size_divisor=14)
    with pytest.raises(TypeError, match="unknown"):
        ZoeDepthImageProcessor.from_dict({}, do_reduce_labels=True)
    with pytest.raises(ValueError, match="ensure_multiple_of") as info:
        processor(photo(3, 3), size=8)  # 3x3 padded to 7x7, to 8x8, rounded to a multiple of 32: 0
    _one_line(info)
    with pytest.raises(ValueError, match="NaN"):
        processor(np.full((8, 8, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="no images"):
        processor([])


def test_bad_post_process_arguments():
    processor = ZoeDepthImageProcessor()
    outputs = _outputs(DEPTH)
    cases = [
        (dict(outputs_flipped=_outputs(DEPTH[:, :, :-1]), do_remove_padding=False), "outputs_flipped"),
        (dict(), "source_sizes"),
        (dict(source_sizes=[(10, 10)]), "source sizes"),
        (dict(source_sizes=[(10, 10), (0, 4)]), "source size"),
        (dict(do_remove_padding=False, target_sizes=[(10, 10)]), "target sizes"),
        (dict(do_remove_padding="no"), "do_remove_padding"),
        (dict(outputs_flipped=_outputs(np.full_like(DEPTH, np.nan)), do_remove_padding=False), "NaN"),
    ]
    for kwargs, words in cases:
        with pytest.raises(ValueError, match=words) as info:
            processor.post_process_depth_estimation(outputs, **kwargs)
        _one_line(info)
    with pytest.raises(ValueError, match="predicted_depth"):
        processor.post_process_depth_estimation(types.SimpleNamespace(logits=DEPTH), do_remove_padding=False)


def test_from_pretrained_errors(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**HUB, "resample": 0}))
    with pytest.raises(CheckpointError, match="resample"):
        ZoeDepthImageProcessor.from_pretrained(tmp_path)

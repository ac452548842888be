"""PromptDepthAnythingImageProcessor against transformers' PromptDepthAnythingImageProcessorPil."""

import json
import types

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import INPUTS, photo, smooth
from PIL import Image
from transformers.models.prompt_depth_anything.image_processing_pil_prompt_depth_anything import (
    PromptDepthAnythingImageProcessorPil,
)

from dpt_mlx.errors import CheckpointError
from dpt_mlx.processing.prompt_depth_processor import PromptDepthAnythingImageProcessor

# depth-anything/prompt-depth-anything-vits-hf (and -vitl-hf) as they ship it.
HUB = {
    "do_normalize": True,
    "do_pad": False,
    "do_rescale": True,
    "do_resize": True,
    "ensure_multiple_of": 14,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "PromptDepthAnythingImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "keep_aspect_ratio": True,
    "prompt_scale_to_meter": 0.001,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 756, "width": 756},
    "size_divisor": None,
}
CONFIGS = {
    "hub": {k: v for k, v in HUB.items() if k != "image_processor_type"},
    "class-defaults": {},
    "padded": {"do_resize": False, "do_pad": True, "size_divisor": 14},
    "bilinear-pad-after-resize": {
        "size": {"height": 190, "width": 250},
        "resample": 2,
        "do_pad": True,
        "size_divisor": 32,
    },
}
# The reference never converts to RGB, so it is given RGB images only; tiny ones too.
RGB_INPUTS = {
    **{
        name: INPUTS[name]
        for name in (
            "rgb_pil_333x517",
            "rgb_pil_portrait",
            "numpy_hwc_uint8",
            "numpy_chw_float",
            "numpy_hwc_float64",
            "numpy_hwc_float_fractional",
        )
    },
    # PIL: a (1, 1, 3) array reads as one channel of 1x3 pixels in the reference, as any (1, H, W).
    "1x1": lambda: Image.fromarray(photo(1, 1)),
    "2x3": lambda: photo(2, 3, seed=1),
}


def assert_arrays_equal(ours, theirs, atol=1e-5):
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs):
        mine, ref = np.asarray(mine), np.asarray(ref)
        assert mine.dtype == np.float32 and mine.shape == ref.shape
        np.testing.assert_allclose(mine, ref, rtol=0, atol=atol)


def metres(height, width, seed=0):
    """A positive float32 depth map in metres, 0.3 m to ~5 m."""
    return (np.abs(smooth((height, width), seed)) * 2 + 0.3).astype(np.float32)


@pytest.mark.parity
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("input_name", sorted(RGB_INPUTS))
def test_pixel_values_match_reference(config_name, input_name):
    config = CONFIGS[config_name]
    expected = PromptDepthAnythingImageProcessorPil(**config)(RGB_INPUTS[input_name](), return_tensors="np")
    ours = PromptDepthAnythingImageProcessor(**config)(RGB_INPUTS[input_name]())
    assert set(ours) == {"pixel_values"}
    assert_arrays_equal(ours["pixel_values"], expected["pixel_values"])


@pytest.mark.parity
def test_non_rgb_images_are_converted():
    # transformers fails on these (it never converts); ours converts them as DPT's processor does.
    gray = INPUTS["gray_pil"]()
    rgba = INPUTS["rgba_pil"]()
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    as_rgb = [gray.convert("RGB"), Image.alpha_composite(white, rgba).convert("RGB")]
    expected = PromptDepthAnythingImageProcessorPil(**CONFIGS["hub"])(as_rgb, return_tensors=None)["pixel_values"]
    ours = PromptDepthAnythingImageProcessor(**CONFIGS["hub"])([gray, rgba], return_tensors=None)["pixel_values"]
    assert_arrays_equal(ours, expected)
    kept = PromptDepthAnythingImageProcessor(do_convert_rgb=False, image_mean=0.5, image_std=0.5)(gray)
    assert kept["pixel_values"].shape == (1, 1, 384, 384)


PROMPTS = {
    # (prompt factory, prompt_scale_to_meter)
    "float32_metres": (lambda: metres(48, 64), 1.0),
    "float64_metres_odd": (lambda: metres(37, 53, seed=1).astype(np.float64), 1.0),
    "uint16_mm_png": (lambda: Image.fromarray((metres(60, 80, seed=2) * 1000).astype(np.uint16)), None),
    "uint16_mm_array": (lambda: (metres(192, 256, seed=3) * 1000).astype(np.uint16), None),
    "int32_mm_pil_I": (lambda: Image.fromarray((metres(30, 40, seed=4) * 1000).astype(np.int32)), None),
    "float_pil_F_cm": (lambda: Image.fromarray(metres(24, 32, seed=5) * 100), 0.01),
    "constant_uint16": (lambda: np.full((12, 16), 1500, dtype=np.uint16), None),
    "constant_float32": (lambda: np.full((12, 16), 2.5, dtype=np.float32), 1.0),
    "mlx_metres": (lambda: mx.array(metres(20, 30, seed=6)), 1.0),
}


@pytest.mark.parity
@pytest.mark.parametrize("prompt_name", sorted(PROMPTS))
def test_prompt_depth_matches_reference(prompt_name):
    factory, scale = PROMPTS[prompt_name]
    image = photo(120, 160)

    def ref_prompt():
        prompt = factory()
        return torch.from_numpy(np.array(prompt)) if isinstance(prompt, mx.array) else prompt

    unit = {} if scale is None else {"prompt_scale_to_meter": scale}  # None: the processor's (millimetres)
    expected = PromptDepthAnythingImageProcessorPil(**CONFIGS["hub"])(
        image, prompt_depth=ref_prompt(), return_tensors="np", **unit
    )
    ours = PromptDepthAnythingImageProcessor(**CONFIGS["hub"])(image, prompt_depth=factory(), **unit)
    prompt = ours["prompt_depth"]
    assert prompt.ndim == 4 and prompt.shape[:2] == (1, 1)
    assert_arrays_equal(prompt, expected["prompt_depth"], atol=0)
    assert_arrays_equal(ours["pixel_values"], expected["pixel_values"])
    if prompt_name.startswith("constant"):  # the first row is nudged so that min < max
        assert prompt[0, 0, 0, 0] > prompt[0, 0, 1, 0] and prompt[0, 0, 1:].min() == prompt[0, 0, 1:].max()


@pytest.mark.parity
def test_prompt_batches():
    images = [photo(120, 160), photo(97, 131, seed=1)]
    prompts = [
        (metres(48, 64) * 1000).astype(np.uint16),
        Image.fromarray((metres(30, 41, seed=1) * 1000).astype(np.uint16)),
    ]
    reference = PromptDepthAnythingImageProcessorPil(**CONFIGS["hub"])
    processor = PromptDepthAnythingImageProcessor(**CONFIGS["hub"])
    expected = reference(images, prompt_depth=prompts, return_tensors=None)
    ours = processor(images, prompt_depth=prompts, return_tensors=None)
    assert_arrays_equal(ours["prompt_depth"], expected["prompt_depth"], atol=0)
    assert_arrays_equal(ours["pixel_values"], expected["pixel_values"])
    with pytest.raises(ValueError, match="return_tensors=None"):
        processor(images, prompt_depth=prompts, size=100, keep_aspect_ratio=False)
    # A (B, h, w) array is a batch of prompts; same sizes stack into (B, 1, h, w).
    stacked = np.stack([metres(40, 50, seed=s) for s in range(2)])
    expected = reference(
        images, prompt_depth=stacked, return_tensors="np", keep_aspect_ratio=False, prompt_scale_to_meter=1.0
    )
    ours = processor(
        images, prompt_depth=stacked, return_tensors="mlx", keep_aspect_ratio=False, prompt_scale_to_meter=1.0
    )
    assert isinstance(ours["prompt_depth"], mx.array) and ours["prompt_depth"].shape == (2, 1, 40, 50)
    assert_arrays_equal(np.array(ours["prompt_depth"]), expected["prompt_depth"], atol=0)
    assert_arrays_equal(np.array(ours["pixel_values"]), expected["pixel_values"])
    assert processor.prompt_scale_to_meter == 0.001 and processor.keep_aspect_ratio  # overrides last one call


# ----------------------------------------------------------------------------------------------
# configuration files


def _assert_same_processing(ours, theirs):
    images = [INPUTS["rgb_pil_333x517"](), INPUTS["numpy_hwc_uint8"]()]
    prompts = [(metres(48, 64) * 1000).astype(np.uint16), metres(30, 41, seed=1) * 1000]
    expected = theirs(images, prompt_depth=prompts, return_tensors=None)
    got = ours(images, prompt_depth=prompts, return_tensors=None)
    assert_arrays_equal(got["pixel_values"], expected["pixel_values"])
    assert_arrays_equal(got["prompt_depth"], expected["prompt_depth"], atol=0)


@pytest.mark.parity
@pytest.mark.parametrize("config_name", ["hub", "class-defaults", "padded"])
def test_from_pretrained_reads_reference_save(tmp_path, config_name):
    PromptDepthAnythingImageProcessorPil(**CONFIGS[config_name]).save_pretrained(tmp_path)
    ours = PromptDepthAnythingImageProcessor.from_pretrained(tmp_path)
    _assert_same_processing(ours, PromptDepthAnythingImageProcessorPil.from_pretrained(tmp_path))


@pytest.mark.parity
def test_hub_file_and_round_trip(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(HUB))
    ours = PromptDepthAnythingImageProcessor.from_pretrained(tmp_path)
    assert ours.size == {"height": 756, "width": 756} and ours.ensure_multiple_of == 14
    _assert_same_processing(ours, PromptDepthAnythingImageProcessorPil.from_pretrained(tmp_path))
    (path,) = ours.save_pretrained(tmp_path / "saved")
    saved = json.loads(open(path).read())
    assert saved["image_processor_type"] == "PromptDepthAnythingImageProcessor" and saved == ours.to_dict()
    assert saved["prompt_scale_to_meter"] == 0.001
    assert PromptDepthAnythingImageProcessor.from_pretrained(tmp_path / "saved").to_dict() == ours.to_dict()
    _assert_same_processing(ours, PromptDepthAnythingImageProcessorPil.from_pretrained(tmp_path / "saved"))
    assert PromptDepthAnythingImageProcessor.from_pretrained(path, prompt_scale_to_meter=1).prompt_scale_to_meter == 1


def test_defaults_are_the_reference_class_attributes():
    reference = PromptDepthAnythingImageProcessorPil()
    for name, value in PromptDepthAnythingImageProcessor().to_dict().items():
        if name not in ("image_processor_type", "do_convert_rgb"):
            ref = getattr(reference, name)
            assert (dict(ref) if name == "size" else list(ref) if name.startswith("image_") else ref) == value, name


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "prompt, words",
    [
        (np.zeros((1, 1, 12, 16)), "prompt depth from an array of shape"),
        (Image.fromarray(photo(12, 16)), "one channel"),
        (Image.fromarray(photo(12, 16)).convert("LA"), "one channel"),
        (np.full((12, 16), np.nan, dtype=np.float32), "NaN"),
        (np.full((12, 16), np.inf), "inf"),
        (np.zeros((0, 16), dtype=np.uint16), "empty"),
        (np.zeros((12, 16), dtype=np.complex64), "real numbers"),
        ([metres(12, 16), metres(12, 16)], "2 prompt depths for 1 images"),
        (np.stack([metres(12, 16)] * 3), "3 prompt depths for 1 images"),
    ],
)
def test_bad_prompts(prompt, words):
    with pytest.raises(ValueError, match=words) as info:
        PromptDepthAnythingImageProcessor()(photo(20, 20), prompt_depth=prompt)
    assert "\n" not in str(info.value)


def test_negative_prompts_are_accepted_as_the_reference_does():
    prompt = metres(12, 16) - 1
    expected = PromptDepthAnythingImageProcessorPil()(photo(20, 20), prompt_depth=prompt, return_tensors="np")
    ours = PromptDepthAnythingImageProcessor()(photo(20, 20), prompt_depth=prompt)
    assert prompt.min() < 0
    np.testing.assert_array_equal(ours["prompt_depth"], expected["prompt_depth"])


@pytest.mark.parametrize(
    "option, value",
    [
        ("prompt_scale_to_meter", 0),
        ("prompt_scale_to_meter", -0.001),
        ("prompt_scale_to_meter", "mm"),
        ("prompt_scale_to_meter", float("inf")),
        ("ensure_multiple_of", 0),
        ("size", {"shortest_edge": 518}),
        ("resample", 42),
        ("size_divisor", 0),
        ("image_mean", "imagenet"),
    ],
)
def test_invalid_options_name_themselves(option, value):
    with pytest.raises(ValueError, match=option) as info:
        PromptDepthAnythingImageProcessor(**{option: value})
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=option):
        PromptDepthAnythingImageProcessor()(photo(20, 20), **{option: value})


def test_bad_calls(tmp_path):
    processor = PromptDepthAnythingImageProcessor()
    with pytest.raises(ValueError, match="return_tensors"):
        processor(photo(20, 20), return_tensors="pt")
    with pytest.raises(TypeError, match="unknown"):
        processor(photo(20, 20), do_reduce_labels=True)
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_depth_estimation(
            types.SimpleNamespace(predicted_depth=np.ones((2, 8, 8), np.float32)), target_sizes=[(4, 4)]
        )
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**HUB, "prompt_scale_to_meter": -1}))
    with pytest.raises(CheckpointError, match="prompt_scale_to_meter"):
        PromptDepthAnythingImageProcessor.from_pretrained(tmp_path)

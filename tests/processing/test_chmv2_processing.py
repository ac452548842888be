"""CHMv2ImageProcessor against transformers' CHMv2ImageProcessor (no resize; satellite mean and std; centred
padding to a multiple of 16), its post-processing (bilinear, align_corners=True, the padding kept), and the
depth-estimation pipeline on a CHMv2 checkpoint against transformers' pipeline: heights at the image's size.

transformers' CHMv2 processor runs on torchvision. Where torchvision is not installed (it cannot be beside the
CPU build of torch this project pins), the few torchvision functions that the reference calls are provided by
tests/depth_pro_reference.py as torchvision 0.2x computes them on these inputs; the reference's own code does the
rest (its RGB conversion, its fused rescale and normalisation, its padding amounts, its post-processing).
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
import transformers
from helpers import INPUTS, photo, smooth
from model_configs import chmv2_config, chmv2_reference
from PIL import Image

import dpt_mlx
from dpt_mlx.errors import CheckpointError
from dpt_mlx.processing.auto import default_processor, load_processor
from dpt_mlx.processing.chmv2_processor import CHMv2ImageProcessor

TOL = 1e-4


@pytest.fixture(scope="module")
def reference(depth_pro_reference):
    """transformers' CHMv2ImageProcessor class, on tests/depth_pro_reference.py's torchvision stand-in where
    torchvision is absent (imported afresh, so that it binds the stand-in)."""
    patch = pytest.MonkeyPatch()
    patch.delitem(sys.modules, "transformers.models.chmv2.image_processing_chmv2", raising=False)
    from transformers.models.chmv2.image_processing_chmv2 import CHMv2ImageProcessor as Reference

    yield Reference
    patch.undo()


# The reference's defaults (the hub's preprocessor_config.json), and variations of it.
CONFIGS = {
    "hub": {},
    "divisor-14": {"size_divisor": 14},
    "no-pad": {"do_pad": False},
    "imagenet": {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    "no-normalize": {"do_normalize": False},
    "no-rescale": {"do_rescale": False},
    "neither": {"do_rescale": False, "do_normalize": False},
}
TINY = {
    "1x1": lambda: photo(1, 1),
    "2x3": lambda: photo(2, 3, seed=1),
    "15x17": lambda: Image.fromarray(photo(15, 17, seed=2)),
    "32x48_multiple": lambda: Image.fromarray(photo(32, 48, seed=3)),  # no padding
    "33x49": lambda: photo(33, 49, seed=4),  # 15 rows and columns of padding: 7 before, 8 after
}
IMAGES = {**INPUTS, **TINY}
# Every input at the hub's options; a few (odd, portrait, tiny, one-channel, RGBA, float) at the others.
CASES = [("hub", name) for name in sorted(IMAGES)] + [
    (config, name)
    for config in sorted(set(CONFIGS) - {"hub"})
    for name in ("rgb_pil_portrait", "numpy_hw1_uint8", "numpy_rgba_uint8", "2x3", "33x49", "numpy_hwc_float64")
]


@pytest.mark.parity
@pytest.mark.parametrize("config_name, input_name", CASES)
def test_pixel_values_match_reference(reference, config_name, input_name):
    config = CONFIGS[config_name]
    # transformers converts to RGB only when asked; ours converts unless do_convert_rgb=False.
    expected = reference(do_convert_rgb=True, **config)(IMAGES[input_name](), return_tensors="pt")["pixel_values"]
    expected = expected.numpy()
    ours = CHMv2ImageProcessor(**config)(IMAGES[input_name]())["pixel_values"]
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-6 * max(1.0, float(np.abs(expected).max())))


def test_padding_is_centred_and_zero():
    image = photo(33, 18, seed=5)
    out = CHMv2ImageProcessor()(image)["pixel_values"][0]
    assert out.shape == (3, 48, 32)  # sides rounded up to 16
    top, left = (48 - 33) // 2, (32 - 18) // 2  # 7 and 7: the odd extra row goes at the bottom
    inside = np.zeros(out.shape, bool)
    inside[:, top : top + 33, left : left + 18] = True
    assert (out[~inside] == 0).all() and (out[inside] != 0).mean() > 0.99
    unpadded = CHMv2ImageProcessor(do_pad=False)(image)["pixel_values"][0]
    np.testing.assert_array_equal(out[:, top : top + 33, left : left + 18], unpadded)


def test_batches_and_return_types():
    processor = CHMv2ImageProcessor()
    same = [photo(20, 30, seed=s) for s in (1, 2)]
    out = processor(same)["pixel_values"]
    assert out.shape == (2, 3, 32, 32) and out.dtype == np.float32
    assert processor(same, return_tensors="mlx")["pixel_values"].shape == (2, 3, 32, 32)
    mixed = [photo(20, 30), photo(40, 20)]
    listed = processor(mixed, return_tensors=None)["pixel_values"]
    assert [a.shape for a in listed] == [(3, 32, 32), (3, 48, 32)]
    with pytest.raises(ValueError, match="return_tensors=None"):
        processor(mixed)


def test_defaults_and_config_round_trip(reference, tmp_path):
    ours, theirs = CHMv2ImageProcessor(), reference()
    for name in ("do_resize", "do_rescale", "rescale_factor", "do_normalize", "do_pad", "size_divisor"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.image_mean == list(theirs.image_mean) and ours.image_std == list(theirs.image_std)
    assert ours.keep_aspect_ratio == theirs.keep_aspect_ratio and ours.ensure_multiple_of == theirs.ensure_multiple_of
    theirs.save_pretrained(tmp_path)  # transformers' file reads back, names our class, and holds what ours writes
    config = dpt_mlx.CHMv2Config()  # the hub's
    loaded, note = load_processor(tmp_path, config)
    assert type(loaded) is CHMv2ImageProcessor and note is None and loaded.to_dict() == ours.to_dict()
    written = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert {k: v for k, v in ours.to_dict().items() if k != "do_convert_rgb"} == written
    ours.save_pretrained(tmp_path / "ours")  # and ours reads back into the reference
    again = reference.from_pretrained(tmp_path / "ours")
    assert again.size_divisor == 16 and list(again.image_std) == ours.image_std
    processor, note = default_processor(config)  # no preprocessor config: the reference's defaults
    assert type(processor) is CHMv2ImageProcessor and processor.to_dict() == ours.to_dict() and "16" in note


@pytest.mark.parametrize(
    "options, match",
    [
        ({"do_resize": True}, "do_resize"),
        ({"size_divisor": 0}, "size_divisor"),
        ({"image_std": [0.2, 0, 0.1]}, "image_std"),
        ({"do_pad": "yes"}, "do_pad"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, options, match):
    with pytest.raises(ValueError, match=match) as info:
        CHMv2ImageProcessor(**options)
    assert "\n" not in str(info.value)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "CHMv2ImageProcessor", **options})
    )
    with pytest.raises(CheckpointError, match=match):
        load_processor(tmp_path, None)


# ----------------------------------------------------------------------------------------------
# Post-processing


def heights(batch=3, height=48, width=64, seed=0) -> np.ndarray:
    """Canopy-height-like maps: 0 to 40 m, smooth, with noise."""
    return np.clip(20 + 12 * smooth((batch, height, width), seed), 0, 40).astype(np.float32)


def _reference_outputs(depth):
    from transformers.modeling_outputs import DepthEstimatorOutput

    return DepthEstimatorOutput(predicted_depth=torch.from_numpy(depth))


TARGETS = {
    "none": None,
    "image-sizes": [(45, 61), (100, 75), (48, 64)],  # smaller (the padding), larger, the same
    "with-none": [(33, 17), None, (200, 300)],
    "one-row": [(1, 64), (48, 1), (2, 2)],
}


@pytest.mark.parity
@pytest.mark.parametrize("as_array", [False, True], ids=["list", "array"])
@pytest.mark.parametrize("targets", list(TARGETS.values()), ids=list(TARGETS))
def test_post_processing_matches_reference(reference, targets, as_array):
    """With and without target sizes; ours also takes them as an array (the reference fails on a tensor)."""
    depth = heights()
    expected = reference().post_process_depth_estimation(_reference_outputs(depth), target_sizes=targets)
    given = np.array(targets) if as_array and targets is not None and None not in targets else targets
    ours = CHMv2ImageProcessor().post_process_depth_estimation(types.SimpleNamespace(predicted_depth=depth), given)
    assert len(ours) == len(expected) == 3
    for got, want, size in zip(ours, expected, targets or [None] * 3):
        want = want["predicted_depth"].numpy()
        got = got["predicted_depth"]
        assert got.dtype == np.float32 and got.shape == (size or depth.shape[1:])  # always 2-D
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=2e-6 * 40)


def test_post_processing_checks():
    processor = CHMv2ImageProcessor()
    outputs = types.SimpleNamespace(predicted_depth=heights(2))
    with pytest.raises(ValueError, match="2 depth maps"):
        processor.post_process_depth_estimation(outputs, [(10, 10)])
    with pytest.raises(ValueError, match="target size"):
        processor.post_process_depth_estimation(outputs, [(10, 0), (4, 4)])
    same = processor.post_process_depth_estimation(outputs)
    assert all(np.array_equal(d["predicted_depth"], m) for d, m in zip(same, outputs.predicted_depth))


# ----------------------------------------------------------------------------------------------
# The pipeline


def tiny_chmv2(seed: int = 3) -> torch.nn.Module:
    """A perturbed tiny transformers CHMv2 (the hub's backbone switches, 32 wide, patch 4) whose bin logits
    vary over the image (model_configs.chmv2_reference)."""
    return chmv2_reference(chmv2_config(), seed=seed)


@pytest.fixture(scope="module")
def chmv2(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("chmv2")
    ref = tiny_chmv2()
    ref.save_pretrained(root)
    processor = reference()
    processor.save_pretrained(root)
    return root, ref, processor


def close(ours, theirs, tol=TOL) -> bool:
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape
    span = float(theirs.max() - theirs.min())
    assert span > 1.0  # metres of canopy, not a constant map
    return float(np.abs(ours - theirs).max()) <= tol * span


@pytest.mark.parity
def test_pipeline_matches_transformers_pipeline(chmv2):
    root, ref, processor = chmv2
    theirs = transformers.pipeline("depth-estimation", model=ref, image_processor=processor)
    ours = dpt_mlx.pipeline("depth-estimation", model=str(root))
    assert ours.predictor.metric() and not ours.predictor.notes  # heights in metres; its preprocessor config
    images = [Image.fromarray(photo(h, w, seed=h)) for h, w in ((75, 101), (64, 48), (37, 90))]
    got = ours(images, batch_size=2)
    for image, out in zip(images, got):
        expected = theirs(image)
        want = expected["predicted_depth"].numpy()
        assert out["predicted_depth"].shape == want.shape == (image.height, image.width)
        assert close(out["predicted_depth"], want)
        assert out["depth"].size == image.size and out["depth"].mode == "L"
        pictured = np.asarray(out["depth"], dtype=np.int16) - np.asarray(expected["depth"], dtype=np.int16)
        assert np.abs(pictured).max() <= 1  # truncation to uint8 may differ by one level


def test_pipeline_without_preprocessor_config_uses_the_defaults(chmv2, tmp_path):
    root, ref, _ = chmv2
    ref.save_pretrained(tmp_path)  # no preprocessor_config.json
    pipe = dpt_mlx.pipeline("depth-estimation", model=str(tmp_path))
    assert type(pipe.image_processor) is CHMv2ImageProcessor and "chmv2" in pipe.predictor.notes[0]
    image = Image.fromarray(photo(40, 50, seed=1))
    with_file = dpt_mlx.pipeline("depth-estimation", model=str(root))(image)["predicted_depth"]
    assert np.array_equal(pipe(image)["predicted_depth"], with_file)

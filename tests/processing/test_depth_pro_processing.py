"""DepthProImageProcessor against transformers' DepthProImageProcessor (normalise, then resize), its
post-processing (field of view -> focal length -> metric depth), and the depth-estimation pipeline on a Depth
Pro checkpoint: its camera outputs and a known focal length.

transformers' Depth Pro processor runs on torchvision; where it is absent, tests/depth_pro_reference.py stands in
for the few functions the reference calls (the ``depth_pro_reference`` fixture).
"""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
import transformers
from helpers import INPUTS, TINY_DPT, photo, smooth
from model_configs import DEPTH_PRO_VARIANTS, depth_pro_config, make_depth_pro
from PIL import Image, ImageOps

import dpt_mlx
from dpt_mlx.errors import CheckpointError
from dpt_mlx.processing.auto import default_processor, load_processor
from dpt_mlx.processing.depth_pro_processor import DepthProImageProcessor


@pytest.fixture(scope="module")
def reference(depth_pro_reference):
    return depth_pro_reference


# The hub's preprocessor_config.json (apple/DepthPro-hf), and variations of it.
CONFIGS = {
    "hub": {},
    "bicubic-small": {"resample": 3, "size": {"height": 200, "width": 150}},
    "imagenet": {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "size": 96},
    "no-normalize": {"do_normalize": False, "size": {"height": 64, "width": 80}},
    "no-rescale": {"do_rescale": False, "size": 64},
    "no-resize": {"do_resize": False},
}
TINY = {
    "1x1": lambda: photo(1, 1),
    "2x3": lambda: photo(2, 3, seed=1),
    "1536_square": lambda: Image.fromarray(photo(1536, 1536, seed=11)),  # already the model's size: not resized
}
# Every input at the hub's options; a few (odd, portrait, tiny, one-channel, RGBA) at the others.
CASES = [("hub", name) for name in sorted({**INPUTS, **TINY})] + [
    (config, name)
    for config in sorted(set(CONFIGS) - {"hub"})
    for name in ("rgb_pil_portrait", "numpy_hw1_uint8", "numpy_rgba_uint8", "2x3", "rgba_pil")
]


@pytest.mark.parity
@pytest.mark.parametrize("config_name, input_name", CASES)
def test_pixel_values_match_reference(reference, config_name, input_name):
    factory = {**INPUTS, **TINY}[input_name]
    config = CONFIGS[config_name]
    # transformers converts to RGB only when asked; ours converts unless do_convert_rgb=False.
    expected = reference(do_convert_rgb=True, **config)(factory(), return_tensors="pt")["pixel_values"].numpy()
    ours = DepthProImageProcessor(**config)(factory())["pixel_values"]
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-6 * max(1.0, float(np.abs(expected).max())))


def test_defaults_and_config_round_trip(reference, tmp_path):
    ours, theirs = DepthProImageProcessor(), reference()
    for name in ("do_resize", "do_rescale", "do_normalize", "rescale_factor"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.size == dict(theirs.size) == {"height": 1536, "width": 1536}
    assert ours.resample == int(theirs.resample) and ours.image_mean == list(theirs.image_mean)
    theirs.save_pretrained(tmp_path)  # transformers' file reads back, and names our class
    config = dpt_mlx.DepthProConfig()
    loaded, note = load_processor(tmp_path, config)
    assert type(loaded) is DepthProImageProcessor and note is None and loaded.size == ours.size
    processor, note = default_processor(config)  # no preprocessor config: the model's own size
    assert type(processor) is DepthProImageProcessor and processor.size == ours.size and "1536" in note
    (tmp_path / "preprocessor_config.json").write_text('{"image_processor_type": "DepthProImageProcessorFast"}')
    assert type(load_processor(tmp_path, config)[0]) is DepthProImageProcessor  # transformers 4's fast class


@pytest.mark.parametrize(
    "options, match",
    [({"resample": 1}, "resample"), ({"size": {"height": 0, "width": 3}}, "size"), ({"image_std": 0}, "image_std")],
)
def test_bad_options_are_one_line_errors(tmp_path, options, match):
    with pytest.raises(ValueError, match=match) as info:
        DepthProImageProcessor(**options)
    assert "\n" not in str(info.value)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "DepthProImageProcessor", **options})
    )
    with pytest.raises(CheckpointError, match=match):
        load_processor(tmp_path, dpt_mlx.DepthProConfig())


# ----------------------------------------------------------------------------------------------
# Post-processing


def outputs(batch=3, height=40, width=56, fov=True, seed=0):
    """Canonical inverse depth around 0.05 (20 m at a focal length of the width) and fields of view of 40-90 degrees."""
    depth = 0.05 + 0.02 * smooth((batch, height, width), seed)
    depth[0, :3, :3] = -0.01  # below the clamp
    field = np.random.default_rng(seed).uniform(40, 90, batch).astype(np.float32) if fov else None
    return depth.astype(np.float32), field


def _reference_outputs(depth, field):
    from transformers.models.depth_pro.modeling_depth_pro import DepthProDepthEstimatorOutput

    return DepthProDepthEstimatorOutput(
        predicted_depth=torch.from_numpy(depth), field_of_view=None if field is None else torch.from_numpy(field)
    )


def _ours(depth, field):
    return types.SimpleNamespace(predicted_depth=depth, field_of_view=field)


@pytest.mark.parity
@pytest.mark.parametrize("resample", [2, 3])
@pytest.mark.parametrize("fov", [True, False], ids=["fov", "no-fov"])
@pytest.mark.parametrize("targets", [None, [(40, 56), (61, 83), (17, 30)], [(90, 45), None, (1, 9)]])
def test_post_processing_matches_reference(reference, resample, fov, targets):
    depth, field = outputs(fov=fov)
    theirs = reference(resample=resample).post_process_depth_estimation(_reference_outputs(depth, field), targets)
    ours = DepthProImageProcessor(resample=resample).post_process_depth_estimation(_ours(depth, field), targets)
    assert len(ours) == len(theirs) == 3
    for mine, ref in zip(ours, theirs):
        want = ref["predicted_depth"].numpy()
        assert mine["predicted_depth"].dtype == np.float32 and mine["predicted_depth"].shape == want.shape
        # compared as inverse depth, where the resize happens: a bicubic overshoot to near 0 magnifies the
        # rounding of its sums in the depth
        np.testing.assert_allclose(1 / mine["predicted_depth"], 1 / want, rtol=2e-6, atol=1e-8)
        for key in ("field_of_view", "focal_length"):
            if ref[key] is None:
                assert mine[key] is None, key
            else:
                assert math.isclose(float(mine[key]), float(ref[key]), rel_tol=1e-6), key
    assert float(ours[0]["predicted_depth"].max()) == pytest.approx(1e4)  # the clamped corner


def test_post_processing_errors():
    processor = DepthProImageProcessor()
    depth, field = outputs()
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_depth_estimation(_ours(depth, field), [(4, 4)])
    with pytest.raises(ValueError, match="focal length needs"):
        processor.post_process_depth_estimation(_ours(depth, field), None, focal_lengths=[100.0, None, None])
    with pytest.raises(ValueError, match="focal length -1"):
        processor.post_process_depth_estimation(_ours(depth, field), [(4, 4)] * 3, focal_lengths=[-1, None, None])
    with pytest.raises(ValueError, match="field_of_view"):
        processor.post_process_depth_estimation(_ours(depth, field[:2]), [(4, 4)] * 3)


def test_known_focal_length_is_the_reference_with_the_field_of_view_it_implies(reference):
    """A known focal length f replaces the model's estimate: the depth is the reference's for the field of view
    2 atan(W / 2f), whose focal length is f again."""
    depth, field = outputs()
    targets, known = [(40, 56), (61, 83), (30, 17)], [500.0, None, 12.5]
    implied = field.copy()
    for i, f in enumerate(known):
        if f is not None:
            implied[i] = math.degrees(2 * math.atan(0.5 * targets[i][1] / f))
    theirs = reference().post_process_depth_estimation(_reference_outputs(depth, implied), targets)
    ours = DepthProImageProcessor().post_process_depth_estimation(_ours(depth, field), targets, focal_lengths=known)
    for i, (mine, ref) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(mine["predicted_depth"], ref["predicted_depth"].numpy(), rtol=1e-5)
        assert math.isclose(float(mine["focal_length"]), known[i] or float(ref["focal_length"]), rel_tol=1e-5)
        assert math.isclose(float(mine["field_of_view"]), float(implied[i]), rel_tol=1e-6)
    # metric depth is proportional to the focal length: twice the focal length, twice as far
    doubled = DepthProImageProcessor().post_process_depth_estimation(
        _ours(depth, field), targets, focal_lengths=[1000.0, None, 25.0]
    )
    inside = ours[0]["predicted_depth"] < 1e3
    np.testing.assert_allclose(doubled[0]["predicted_depth"][inside], 2 * ours[0]["predicted_depth"][inside], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The pipeline on a Depth Pro checkpoint

PIPELINE_SIZE = 64  # the "two-scales" checkpoint's input: patch_size 32 / 0.5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, reference):
    root = tmp_path_factory.mktemp("depth_pro_pipeline")
    x = np.random.default_rng(0).standard_normal((2, 3, PIPELINE_SIZE, PIPELINE_SIZE)).astype(np.float32)
    ref = make_depth_pro(root, depth_pro_config(**DEPTH_PRO_VARIANTS["two-scales"]), x, seed=3)
    processor = reference(size={"height": PIPELINE_SIZE, "width": PIPELINE_SIZE})
    processor.save_pretrained(root)
    return root, ref, processor


def reference_pipeline(checkpoint, image, fov=None):
    """transformers: its processor, model and post-processing at the image's size (``fov`` replaces the model's)."""
    _, ref, processor = checkpoint
    with torch.no_grad():
        out = ref(**processor(images=image, return_tensors="pt", do_convert_rgb=True))
    if fov is not None:
        out.field_of_view = torch.tensor([fov], dtype=torch.float32)
    return processor.post_process_depth_estimation(out, target_sizes=[(image.height, image.width)])[0]


@pytest.mark.parity
def test_pipeline_returns_the_camera(checkpoint):
    root = checkpoint[0]
    pipe = dpt_mlx.pipeline("depth-estimation", model=str(root))
    assert pipe.predictor.metric() and pipe.predictor.gives_camera
    images = [Image.fromarray(photo(75, 101, seed=20)), Image.fromarray(photo(120, 90, seed=21)).convert("L")]
    results = pipe(images, batch_size=2)
    for image, out in zip(images, results):
        want = reference_pipeline(checkpoint, image)
        assert set(out) == {"predicted_depth", "depth", "field_of_view", "focal_length"}
        assert out["predicted_depth"].shape == (image.height, image.width)
        np.testing.assert_allclose(out["predicted_depth"], want["predicted_depth"].numpy(), rtol=1e-4)
        assert math.isclose(out["field_of_view"], float(want["field_of_view"]), rel_tol=1e-4)
        assert math.isclose(out["focal_length"], float(want["focal_length"]), rel_tol=1e-4)
    assert results[0]["field_of_view"] != results[1]["field_of_view"]
    assert pipe.predictor.cameras[1].focal_length == results[1]["focal_length"]
    # flip test-time augmentation averages the field of view of the image and of its mirror image too
    flipped = dpt_mlx.pipeline("depth-estimation", model=str(root), flip_tta=True)(images[0])
    mirrored = pipe(ImageOps.mirror(images[0]))
    mean = (results[0]["field_of_view"] + mirrored["field_of_view"]) / 2
    assert flipped["field_of_view"] == pytest.approx(mean, rel=1e-5) and mean != results[0]["field_of_view"]


@pytest.mark.parity
def test_pipeline_with_a_known_focal_length(checkpoint):
    root = checkpoint[0]
    image = Image.fromarray(photo(80, 110, seed=22))
    pipe = dpt_mlx.pipeline("depth-estimation", model=str(root))
    estimated = pipe(image)
    focal = 2.5 * estimated["focal_length"]
    out = pipe(image, focal_length=focal)
    implied = math.degrees(2 * math.atan(0.5 * image.width / focal))
    want = reference_pipeline(checkpoint, image, fov=implied)  # transformers, given the field of view f implies
    assert out["focal_length"] == pytest.approx(focal, rel=1e-6) and out["field_of_view"] == pytest.approx(implied)
    assert float(want["focal_length"]) == pytest.approx(focal, rel=1e-5)
    np.testing.assert_allclose(out["predicted_depth"], want["predicted_depth"].numpy(), rtol=1e-4)
    near = estimated["predicted_depth"] < 1e3
    np.testing.assert_allclose(out["predicted_depth"][near], 2.5 * estimated["predicted_depth"][near], rtol=1e-4)
    both = pipe([image, image], focal_length=[focal, None])
    assert both[1]["focal_length"] == pytest.approx(estimated["focal_length"], rel=1e-6)
    with pytest.raises(ValueError, match="focal length"):
        pipe(image, focal_length=0)


def test_focal_length_is_refused_for_other_models(tmp_path):
    torch.manual_seed(0)
    transformers.DPTForDepthEstimation(transformers.DPTConfig(**TINY_DPT)).save_pretrained(tmp_path)
    pipe = dpt_mlx.pipeline("depth-estimation", model=str(tmp_path))
    image = Image.fromarray(photo(32, 32))
    assert set(pipe(image)) == {"predicted_depth", "depth"} and pipe.predictor.cameras == [None]
    with pytest.raises(ValueError, match="Depth Pro"):
        pipe(image, focal_length=100.0)

"""The TIPSv2-DPT image processor against transformers' ``Tipsv2DptImageProcessor``.

transformers' processor runs on torchvision; where it is absent, tests/depth_pro_reference.py stands in for the few
functions the reference calls (the ``depth_pro_reference`` fixture): its resize is PyTorch's
``interpolate(antialias=True)``, which torchvision's tensor resize calls.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from helpers import INPUTS, photo, smooth
from PIL import Image

from dpt_mlx.processing.tipsv2_processor import Tipsv2DptImageProcessor, antialiased_resize

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def reference(request):
    # imported before torchvision is stood in: transformers' import checks fail on a stand-in module
    from transformers.models.tipsv2_dpt.image_processing_tipsv2_dpt import Tipsv2DptImageProcessor as Reference

    request.getfixturevalue("depth_pro_reference")
    return Reference


CONFIGS = {
    "hub": {},
    "small-nonsquare": {"size": {"height": 40, "width": 72}},  # downsamples
    "large": {"size": {"height": 600, "width": 700}},  # upsamples
    "no-resize": {"do_resize": False},
}
CASES = [("hub", name) for name in sorted(INPUTS)] + [
    (config, name)
    for config in ("small-nonsquare", "large", "no-resize")
    for name in ("rgb_pil_portrait", "numpy_hwc_uint8", "gray_pil", "rgba_pil")
]


@pytest.mark.parity
@pytest.mark.parametrize("config_name, input_name", CASES)
def test_pixel_values_match_reference(reference, config_name, input_name):
    """uint8 images go through PyTorch's fixed-point uint8 kernel (emulated bit for bit), float ones through its
    float32 kernel (equal within float32 rounding)."""
    config = CONFIGS[config_name]
    image = INPUTS[input_name]()
    expected = reference(**config)(image, return_tensors="pt")["pixel_values"].numpy()
    ours = Tipsv2DptImageProcessor(**config)(image)["pixel_values"]
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parity
@pytest.mark.parametrize("size", [(448, 448), (31, 90), (600, 700)])
def test_float_resize_is_torch_antialias(size):
    """On float images the resize equals PyTorch's antialiased bilinear interpolate within float32 rounding."""
    x = np.random.default_rng(0).random((3, 333, 517)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=False, antialias=True
    )[0].numpy()
    np.testing.assert_allclose(antialiased_resize(x, size), expected, rtol=0, atol=2e-6)


def test_defaults_are_the_reference(reference):
    ours = Tipsv2DptImageProcessor()
    ref = reference()
    assert ours.size == {"height": 448, "width": 448} and ref.size["height"] == 448
    assert (ours.do_rescale, ours.do_normalize, ours.resample) == (True, False, 2)
    pixels = ours(Image.fromarray(photo(100, 80)))["pixel_values"]
    assert pixels.shape == (1, 3, 448, 448) and 0 <= pixels.min() and pixels.max() <= 1
    with pytest.raises(ValueError, match="resample"):
        Tipsv2DptImageProcessor(resample=3)


def _outputs(batch=2, h=16, w=24, classes=5):
    return types.SimpleNamespace(
        predicted_depth=np.abs(smooth((batch, h, w), 1)) + 0.5,
        normals=smooth((batch, 3, h, w), 2),
        segmentation_logits=smooth((batch, classes, h, w), 3),
        logits=smooth((batch, classes, h, w), 3),
    )


def _torch(out):
    return types.SimpleNamespace(**{k: torch.from_numpy(v) for k, v in vars(out).items()})


@pytest.mark.parity
@pytest.mark.parametrize("targets", [None, [(37, 50), (16, 24)]])
def test_post_processing_matches_reference(reference, targets):
    out = _outputs()
    ours, ref = Tipsv2DptImageProcessor(), reference()
    for got, expected in zip(
        ours.post_process_depth_estimation(out, targets), ref.post_process_depth_estimation(_torch(out), targets)
    ):
        np.testing.assert_allclose(got["predicted_depth"], expected["predicted_depth"].numpy(), atol=1e-5)
    for got, expected in zip(
        ours.post_process_normal_estimation(out, targets), ref.post_process_normal_estimation(_torch(out), targets)
    ):
        np.testing.assert_allclose(got["normals"], expected["normals"].numpy(), atol=1e-5)
    for got, expected in zip(
        ours.post_process_semantic_segmentation(out, targets),
        ref.post_process_semantic_segmentation(_torch(out), targets),
    ):
        np.testing.assert_array_equal(got, expected.numpy())
    scored = ours.post_process_semantic_segmentation(out, targets, return_segmentation_scores=True)
    expected = ref.post_process_semantic_segmentation(_torch(out), targets, return_segmentation_scores=True)
    for got, want in zip(scored, expected):
        np.testing.assert_allclose(got["segmentation_scores"], want.segmentation_scores.numpy(), atol=1e-5)
        np.testing.assert_array_equal(got["segmentation"], want.segmentation.numpy())


def test_post_processing_reads_task_model_logits():
    out = _outputs()
    del out.segmentation_logits
    maps = Tipsv2DptImageProcessor().post_process_semantic_segmentation(out)
    assert [m.shape for m in maps] == [(16, 24), (16, 24)]
    with pytest.raises(ValueError, match="target sizes"):
        Tipsv2DptImageProcessor().post_process_depth_estimation(out, [(3, 4)])

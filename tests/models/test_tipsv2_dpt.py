"""TIPSv2-DPT (google/tipsv2-*14-dpt): parity with transformers on tiny perturbed checkpoints shaped like the
hub's (B/14 and g/14's SwiGLU at reduced width), each task class, and the checkpoint layouts."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from helpers import TOL, pixels, rel_err
from model_configs import tipsv2_config
from model_configs import tipsv2_reference as reference
from safetensors.numpy import load_file, save_file

import dpt_mlx
from dpt_mlx.backbones.tipsv2 import antialias_matrix
from dpt_mlx.configs.load import config_from_dict
from dpt_mlx.models.tipsv2_dpt import (
    Tipsv2DptForDensePrediction,
    Tipsv2DptForDepthEstimation,
    Tipsv2DptForNormalEstimation,
    Tipsv2DptForSemanticSegmentation,
)

pytestmark = pytest.mark.timeout(240)

# (H, W): the config's 4x4 grid (image_size 56), non-square with a larger grid, and one not a multiple of 14
# whose grid is smaller than the position grid (so the antialiased resize downsamples).
SHAPES = [(56, 56), (42, 70), (45, 31)]


# g/14: SwiGLU, 40 layers (reduced to 8 here), two registers to check that the readout skips them all
GIANT = dict(num_hidden_layers=8, out_indices=[2, 4, 6, 8], use_swiglu_ffn=True, num_register_tokens=2)
CONFIGS = [pytest.param({}, id="b14"), pytest.param(GIANT, id="g14-swiglu")]


def run_reference(ref, x, **kwargs):
    with torch.no_grad():
        return ref(torch.from_numpy(x), **kwargs)


@pytest.mark.parity
@pytest.mark.parametrize("overrides", CONFIGS)
def test_dense_prediction(tmp_path, overrides):
    """All three decoders on one pass, square and non-square, batch 2, hidden states and attentions."""
    ref = reference(transformers.Tipsv2DptForDensePrediction, 0, **overrides)
    ref.save_pretrained(tmp_path)
    ours = dpt_mlx.load_model(tmp_path)
    assert type(ours) is Tipsv2DptForDensePrediction
    for h, w in SHAPES:
        x = pixels(2, h, w, seed=h + w)
        expected = run_reference(ref, x, output_hidden_states=True, output_attentions=True)
        got = ours(x, output_hidden_states=True, output_attentions=True)
        assert rel_err(got.predicted_depth, expected.predicted_depth) <= TOL
        assert rel_err(got.normals, expected.normals) <= TOL
        assert rel_err(got.segmentation_logits, expected.segmentation_logits) <= TOL
        assert len(got.hidden_states) == len(expected.hidden_states)
        for a, b in zip(got.hidden_states + got.attentions, expected.hidden_states + expected.attentions):
            assert rel_err(a, b) <= TOL
    assert ours(pixels(1, 28, 28)).hidden_states is None


@pytest.mark.parity
@pytest.mark.parametrize(
    ("ref_cls", "ours_cls", "field"),
    [
        (transformers.Tipsv2DptForDepthEstimation, Tipsv2DptForDepthEstimation, "predicted_depth"),
        (transformers.Tipsv2DptForNormalEstimation, Tipsv2DptForNormalEstimation, "normals"),
        (transformers.Tipsv2DptForSemanticSegmentation, Tipsv2DptForSemanticSegmentation, "logits"),
    ],
    ids=["depth", "normals", "segmentation"],
)
def test_task_models(tmp_path, ref_cls, ours_cls, field):
    """Each task class from its own checkpoint (what transformers saves for it), square and non-square."""
    ref = reference(ref_cls, 1)
    ref.save_pretrained(tmp_path)
    ours = dpt_mlx.load_model(tmp_path)
    assert type(ours) is ours_cls
    for h, w in SHAPES[:2]:
        x = pixels(2, h, w, seed=h)
        assert rel_err(getattr(ours(x), field), getattr(run_reference(ref, x), field)) <= TOL


@pytest.mark.parity
def test_task_models_read_the_dense_checkpoint(tmp_path):
    """The hub ships one checkpoint with all three decoders: each task class reads its own and leaves the
    others out, as the reference does; the outputs equal the dense model's."""
    ref = reference(transformers.Tipsv2DptForDensePrediction, 2)
    ref.save_pretrained(tmp_path)
    x = pixels(2, 42, 56, seed=5)
    expected = run_reference(ref, x)
    for cls, got_field, ref_field in [
        (Tipsv2DptForDepthEstimation, "predicted_depth", "predicted_depth"),
        (Tipsv2DptForNormalEstimation, "normals", "normals"),
        (Tipsv2DptForSemanticSegmentation, "logits", "segmentation_logits"),
    ]:
        got = getattr(cls.from_pretrained(tmp_path)(x), got_field)
        assert rel_err(got, getattr(expected, ref_field)) <= TOL


@pytest.mark.parity
def test_in_memory_layout_loads(tmp_path):
    """A checkpoint in transformers' in-memory names (``state_dict()``: split q/k/v, ``neck.*``) loads too."""
    ref = reference(transformers.Tipsv2DptForDepthEstimation, 3, **GIANT)
    ref.save_pretrained(tmp_path)
    save_file({k: v.detach().numpy() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    assert any(".attention.q_proj." in k for k in load_file(str(tmp_path / "model.safetensors")))
    x = pixels(2, 56, 42, seed=6)
    got = Tipsv2DptForDepthEstimation.from_pretrained(tmp_path)(x).predicted_depth
    assert rel_err(got, run_reference(ref, x).predicted_depth) <= TOL


@pytest.mark.parity
def test_mlx_checkpoint_round_trip(tmp_path):
    ref = reference(transformers.Tipsv2DptForDensePrediction, 4)
    ref.save_pretrained(tmp_path / "ref")
    ours = dpt_mlx.load_model(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "mlx")
    again = dpt_mlx.load_model(tmp_path / "mlx")
    x = pixels(1, 42, 42)
    for field in ("predicted_depth", "normals", "segmentation_logits"):
        assert np.array_equal(np.array(getattr(ours(x), field)), np.array(getattr(again(x), field)))


@pytest.mark.parametrize(("n_in", "n_out"), [(4, 3), (4, 6), (32, 5), (7, 7), (5, 17), (448, 37)])
def test_antialias_matrix_is_pytorch(n_in, n_out):
    x = np.random.default_rng(n_in).standard_normal((1, 2, n_in, 3)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(n_out, 3), mode="bilinear", align_corners=False, antialias=True
    )
    got = np.einsum("oi,bcij->bcoj", antialias_matrix(n_in, n_out), x)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-5)


def test_segmentation_loss_and_refused_labels(tmp_path):
    ref = reference(transformers.Tipsv2DptForSemanticSegmentation, 5)
    ref.save_pretrained(tmp_path)
    ours = dpt_mlx.load_model(tmp_path)
    x = pixels(2, 28, 42)
    labels = np.random.default_rng(0).integers(0, 7, (2, 20, 30))
    labels[0, :3] = 255
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), labels=torch.from_numpy(labels)).loss
    got = ours(x, labels=mx.array(labels)).loss
    assert abs(float(got) - float(expected)) <= 1e-4 * abs(float(expected))
    depth = Tipsv2DptForDepthEstimation(config_from_dict(tipsv2_config().to_dict()))
    with pytest.raises(NotImplementedError):
        depth(x, labels=np.zeros((2, 16, 24), np.float32))


def test_config_reads_the_reference_and_checks():
    config = config_from_dict(tipsv2_config(**GIANT).to_dict())
    assert config.num_labels == 7 and config.predicts_metres
    assert config.vision_config().use_swiglu_ffn and config.vision_config().num_register_tokens == 2
    default = config_from_dict({"model_type": "tipsv2_dpt"})
    assert default.vision_config().out_indices == [3, 6, 9, 12] and default.neck_hidden_sizes == [96, 192, 384, 768]
    with pytest.raises(ValueError, match="neck_hidden_sizes"):
        config_from_dict({**tipsv2_config().to_dict(), "neck_hidden_sizes": [6, 12, 24]})
    with pytest.raises(ValueError, match="max_depth"):
        config_from_dict({**tipsv2_config().to_dict(), "max_depth": 0.0})

"""Parity of the ViT DPT models with transformers on tiny perturbed checkpoints."""

import numpy as np
import pytest
import torch
import transformers
from helpers import TOL, keep_depth_positive, perturb, pixels, rel_err
from model_configs import PATCH, tiny_config

import dpt_mlx
from dpt_mlx.io.convert import convert

pytestmark = pytest.mark.parity


def make(cls, tmp_path, seed=0, **overrides):
    torch.manual_seed(seed)
    ref = perturb(cls(tiny_config(**overrides)), seed=seed)
    if cls is transformers.DPTForDepthEstimation:
        keep_depth_positive(ref)
    ref.save_pretrained(tmp_path)
    return ref


def ref_true_grid(ref, x):
    """The reference pipeline with the neck reshaping on the true (H/p, W/p) grid.

    transformers' ViT path reshapes tokens with sqrt(sequence length), so it cannot run
    non-square inputs; its own neck accepts the grid, which the original DPT code uses.
    """
    cfg = ref.config
    with torch.no_grad():
        out = ref.dpt(torch.from_numpy(x), output_hidden_states=True)
        feats = [f for i, f in enumerate(out.hidden_states[1:]) if i in cfg.backbone_out_indices]
        fused = ref.neck(feats, x.shape[2] // PATCH, x.shape[3] // PATCH)
        if isinstance(ref, transformers.DPTForSemanticSegmentation):
            aux = ref.auxiliary_head(fused[-1]) if ref.auxiliary_head is not None else None
            return ref.head(fused), aux
        return ref.head(fused), None


@pytest.mark.parametrize("readout", ["project", "add", "ignore"])
def test_depth_each_readout_batch2(tmp_path, readout):
    ref = make(transformers.DPTForDepthEstimation, tmp_path, readout_type=readout)
    ours = dpt_mlx.DPTForDepthEstimation.from_pretrained(tmp_path)
    x = pixels(2, 32, 32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
    got = ours(x, output_hidden_states=True, output_attentions=True)
    assert rel_err(got.predicted_depth, expected.predicted_depth) <= TOL
    assert len(got.hidden_states) == len(expected.hidden_states) == 5
    for a, b in zip(got.hidden_states, expected.hidden_states):
        assert rel_err(a, b) <= TOL
    assert len(got.attentions) == len(expected.attentions)
    for a, b in zip(got.attentions, expected.attentions):
        assert rel_err(a, b) <= TOL


@pytest.mark.parametrize("readout", ["project", "add", "ignore"])
def test_depth_non_square(tmp_path, readout):
    ref = make(transformers.DPTForDepthEstimation, tmp_path, readout_type=readout, seed=1)
    ours = dpt_mlx.DPTForDepthEstimation.from_pretrained(tmp_path)
    x = pixels(1, 32, 56, seed=1)
    expected, _ = ref_true_grid(ref, x)
    got = ours(x).predicted_depth
    assert rel_err(got, expected) <= TOL


def test_reference_cannot_run_non_square(tmp_path):
    """Documents why the non-square tests call the reference's neck with the true grid."""
    ref = make(transformers.DPTForDepthEstimation, tmp_path)
    with pytest.raises(RuntimeError):
        with torch.no_grad():
            ref(torch.from_numpy(pixels(1, 32, 56)))


def test_size_other_than_config_image_size(tmp_path):
    ref = make(transformers.DPTForDepthEstimation, tmp_path, seed=2)
    ours = dpt_mlx.DPTForDepthEstimation.from_pretrained(tmp_path)
    x = pixels(1, 48, 48, seed=2)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).predicted_depth
    assert rel_err(ours(x).predicted_depth, expected) <= TOL


def test_add_projection_with_batch_norm_residuals(tmp_path):
    ref = make(
        transformers.DPTForDepthEstimation,
        tmp_path,
        seed=3,
        add_projection=True,
        fusion_hidden_size=256,
        use_batch_norm_in_fusion_residual=True,
        readout_type="project",
        reassemble_factors=[4, 2, 1, 0.25],
    )
    ours = dpt_mlx.DPTForDepthEstimation.from_pretrained(tmp_path)
    x = pixels(2, 32, 40, seed=3)
    expected, _ = ref_true_grid(ref, x)
    assert rel_err(ours(x).predicted_depth, expected) <= TOL
    x = pixels(1, 32, 32, seed=4)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).predicted_depth
    assert rel_err(ours(x).predicted_depth, expected) <= TOL


@pytest.mark.parametrize("aux", [True, False])
def test_segmentation(tmp_path, aux):
    ref = make(
        transformers.DPTForSemanticSegmentation,
        tmp_path,
        seed=5,
        use_auxiliary_head=aux,
        use_batch_norm_in_fusion_residual=aux,
        head_in_index=-1 if aux else -2,
    )
    ours = dpt_mlx.DPTForSemanticSegmentation.from_pretrained(tmp_path)
    x = pixels(2, 32, 32, seed=5)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))
    got = ours(x)
    assert got.logits.shape == tuple(expected.logits.shape)
    assert rel_err(got.logits, expected.logits) <= TOL
    expected_logits, expected_aux = ref_true_grid(ref, x)
    assert rel_err(got.logits, expected_logits) <= TOL
    if aux:
        assert rel_err(got.auxiliary_logits, expected_aux) <= TOL
    else:
        assert got.auxiliary_logits is None
    x = pixels(1, 24, 40, seed=6)
    expected_logits, expected_aux = ref_true_grid(ref, x)
    got = ours(x)
    assert rel_err(got.logits, expected_logits) <= TOL
    if aux:
        assert rel_err(got.auxiliary_logits, expected_aux) <= TOL


def test_dpt_model_outputs(tmp_path):
    ref = make(transformers.DPTModel, tmp_path, seed=7, pooler_output_size=24, pooler_act="tanh")
    ours = dpt_mlx.DPTModel.from_pretrained(tmp_path)
    assert ours.pooler is not None
    x = pixels(2, 40, 24, seed=7)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
    got = ours(x, output_hidden_states=True, output_attentions=True)
    assert rel_err(got.last_hidden_state, expected.last_hidden_state) <= TOL
    assert rel_err(got.pooler_output, expected.pooler_output) <= TOL
    for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert rel_err(a, b) <= TOL
    for a, b in zip(got.attentions, expected.attentions, strict=True):
        assert rel_err(a, b) <= TOL


def test_dpt_model_from_task_checkpoint(tmp_path):
    ref = make(transformers.DPTForDepthEstimation, tmp_path, seed=8)
    ours = dpt_mlx.DPTModel.from_pretrained(tmp_path)
    assert ours.pooler is None
    x = pixels(1, 32, 32, seed=8)
    with torch.no_grad():
        expected = ref.dpt(torch.from_numpy(x)).last_hidden_state
    assert rel_err(ours(x).last_hidden_state, expected) <= TOL


def test_load_model_picks_task(tmp_path):
    make(transformers.DPTForSemanticSegmentation, tmp_path / "seg")
    make(transformers.DPTForDepthEstimation, tmp_path / "depth")
    assert isinstance(dpt_mlx.load_model(tmp_path / "seg"), dpt_mlx.DPTForSemanticSegmentation)
    assert isinstance(dpt_mlx.load_model(tmp_path / "depth"), dpt_mlx.DPTForDepthEstimation)


def test_eval_mode_after_loading(tmp_path):
    make(transformers.DPTForSemanticSegmentation, tmp_path, use_batch_norm_in_fusion_residual=True)
    ours = dpt_mlx.DPTForSemanticSegmentation.from_pretrained(tmp_path)
    assert not ours.training
    assert all(not m.training for _, m in ours.named_modules())


def test_numpy_and_mlx_inputs_agree(tmp_path):
    import mlx.core as mx

    make(transformers.DPTForDepthEstimation, tmp_path)
    ours = dpt_mlx.DPTForDepthEstimation.from_pretrained(tmp_path)
    x = pixels(1, 32, 32)
    np.testing.assert_array_equal(np.array(ours(x).predicted_depth), np.array(ours(mx.array(x)).predicted_depth))
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        ours(x[:, :2])


def test_sharded_checkpoint(tmp_path):
    torch.manual_seed(0)
    ref = keep_depth_positive(perturb(transformers.DPTForDepthEstimation(tiny_config())))
    ref.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = dpt_mlx.DPTForDepthEstimation.from_pretrained(tmp_path)
    x = pixels(1, 32, 32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).predicted_depth
    assert rel_err(ours(x).predicted_depth, expected) <= TOL


@pytest.mark.parametrize("cls", [transformers.DPTForDepthEstimation, transformers.DPTForSemanticSegmentation])
def test_converted_checkpoint_matches_reference(tmp_path, cls):
    ref = make(cls, tmp_path / "hf", seed=9, use_batch_norm_in_fusion_residual=True)
    (tmp_path / "hf" / "preprocessor_config.json").write_text('{"image_processor_type": "DPTImageProcessor"}')
    out = convert(tmp_path / "hf", tmp_path / "mlx")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    ours = dpt_mlx.load_model(out)
    assert type(ours).__name__ == cls.__name__
    x = pixels(2, 32, 48, seed=9)
    expected = ref_true_grid(ref, x)[0]
    key = "predicted_depth" if cls is transformers.DPTForDepthEstimation else "logits"
    assert rel_err(ours(x)[key], expected) <= TOL

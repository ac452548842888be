"""CHMv2 (facebook/dinov3-vitl16-chmv2-dpt-head): parity with transformers' CHMv2ForDepthEstimation on tiny
perturbed checkpoints loaded through ``dpt_mlx.load_model`` (square and non-square inputs, batch 2, every
readout, bins and normalisation strategy), the bins-to-height stage on its own, and the config checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from helpers import TOL, pixels, rel_err
from model_configs import chmv2_config
from model_configs import chmv2_reference as reference
from transformers.models.chmv2.modeling_chmv2 import CHMv2FeaturesToDepth as ReferenceFeaturesToDepth

import dpt_mlx
from dpt_mlx.configs.chmv2 import CHMV2_BACKBONE_DEFAULTS, CHMv2Config
from dpt_mlx.configs.load import config_from_dict
from dpt_mlx.errors import CheckpointError, UnsupportedModelError
from dpt_mlx.models.chmv2 import CHMv2FeaturesToDepth, CHMv2ForDepthEstimation, bin_centres

# (H, W): the config grid (4x4 at image_size 16), larger non-square both ways, and odd grids not a multiple of
# the patch (the coarsest reassembled map then rounds up, and the fusion resizes the skip maps).
SHAPES = [(16, 16), (32, 48), (48, 20), (30, 23)]
STRATEGIES = [
    (b, n) for b in ("linear", "log", "chmv2_mixlog") for n in ("linear", "softmax", "sigmoid", "chmv2_mixlog")
]


def saved(ref, path: Path) -> CHMv2ForDepthEstimation:
    """Ours, loaded from the reference's ``save_pretrained`` files through dpt_mlx's own loading path."""
    ref.save_pretrained(path)
    model = dpt_mlx.load_model(path)
    assert type(model) is CHMv2ForDepthEstimation
    return model


def range_err(ours, ref) -> float:
    """max|ours - ref| / (max(ref) - min(ref)): the error against the spread of the heights."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref.detach().numpy() if hasattr(ref, "detach") else ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    span = float(ref.max() - ref.min())
    assert span > 0
    return float(np.abs(ours - ref).max()) / span


def assert_heights_close(got, expected, tol: float = TOL):
    assert rel_err(got, expected) <= tol
    assert range_err(got, expected) <= tol


@pytest.fixture(scope="module")
def hub_shaped(tmp_path_factory):
    ref = reference(chmv2_config())
    return ref, saved(ref, tmp_path_factory.mktemp("chmv2") / "hub")


# --------------------------------------------------------------------------------- the model


@pytest.mark.parity
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_model_matches_reference(hub_shaped, shape):
    ref, ours = hub_shaped
    h, w = shape
    x = pixels(2, h, w, seed=h + w)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
    got = ours(x, output_hidden_states=True, output_attentions=True)
    # the heights cover metres, not a near-constant map: the comparison sees the bins stage
    assert float(expected.predicted_depth.max() - expected.predicted_depth.min()) > 1.0
    assert_heights_close(got.predicted_depth, expected.predicted_depth)
    assert got.predicted_depth.dtype == mx.float32 and got.loss is None
    assert len(got.hidden_states) == len(expected.hidden_states) == 5
    for a, b in zip(got.hidden_states, expected.hidden_states):
        assert rel_err(a, b) <= TOL
    assert len(got.attentions) == len(expected.attentions) == 4
    for a, b in zip(got.attentions, expected.attentions):
        assert rel_err(a, b) <= TOL
    # without probabilities the attention goes through the shared SDPA module (the CPU layer's)
    plain = ours(mx.array(x))
    assert plain.hidden_states is None and plain.attentions is None
    assert_heights_close(plain.predicted_depth, expected.predicted_depth)


VARIANTS = {
    "readout-add": dict(readout_type="add"),
    "readout-ignore": dict(readout_type="ignore"),
    "linear-bins-linear-norm": dict(bins_strategy="linear", norm_strategy="linear", max_depth=40.0),
    "log-bins-softmax": dict(bins_strategy="log", norm_strategy="softmax", min_depth=0.5),
    "mixlog-bins-sigmoid": dict(norm_strategy="sigmoid", number_output_channels=24),
    "one-bin": dict(number_output_channels=1, min_depth=0.25),
    # the top-level patch size feeds nothing the reference computes with: the backbone's grid counts
    "top-level-patch-16": dict(patch_size=16),
    "factors-and-widths": dict(
        reassemble_factors=[2, 1, 0.5, 0.25], post_process_channels=[4, 8, 12, 16], fusion_hidden_size=6
    ),
}


@pytest.mark.parity
@pytest.mark.parametrize("overrides", list(VARIANTS.values()), ids=list(VARIANTS))
def test_config_variants_match_reference(tmp_path, overrides):
    ref = reference(chmv2_config(**overrides), seed=5)
    ours = saved(ref, tmp_path)
    for h, w in [(16, 16), (30, 23)]:
        x = pixels(2, h, w, seed=h * w)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x)).predicted_depth
        assert_heights_close(ours(x).predicted_depth, expected)


@pytest.mark.parity
def test_dinov3_gated_backbone(tmp_path):
    """The switches other DINOv3 checkpoints have (SwiGLU, a small layer scale, another rope base)."""
    backbone = dict(use_gated_mlp=True, hidden_act="silu", layerscale_value=0.1, rope_theta=37.0, num_register_tokens=1)
    ref = reference(chmv2_config(backbone))
    ours = saved(ref, tmp_path)
    x = pixels(2, 32, 24, seed=7)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).predicted_depth
    assert_heights_close(ours(x).predicted_depth, expected)


def test_dpt_mlx_checkpoint_round_trip(hub_shaped, tmp_path):
    """Saved by dpt_mlx (MLX layout) and loaded back: the same heights, bit for bit; the config reads back."""
    _, ours = hub_shaped
    ours.save_pretrained(tmp_path)
    again = dpt_mlx.load_model(tmp_path)
    x = pixels(1, 32, 16, seed=9)
    assert np.array_equal(np.array(again(x).predicted_depth), np.array(ours(x).predicted_depth))
    assert again.config == ours.config
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["CHMv2ForDepthEstimation"]


def test_half_precision(tmp_path):
    """In float16 and bfloat16 the heights are no farther from float32's than the reference's own in that
    dtype (the spread logits make this tiny model far more sensitive to rounding than the hub's)."""
    ref = reference(chmv2_config())
    ref.save_pretrained(tmp_path)
    x = pixels(1, 32, 32, seed=11)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).predicted_depth
    for dtype in (torch.float16, torch.bfloat16):
        with torch.no_grad():
            theirs = copy.deepcopy(ref).to(dtype)(torch.from_numpy(x).to(dtype)).predicted_depth.float()
        got = dpt_mlx.load_model(tmp_path, dtype=str(dtype))(x).predicted_depth
        assert got.dtype == mx.float32  # the bins stage runs in float32
        assert range_err(got, expected) <= 1.5 * range_err(theirs, expected)


def test_labels_are_refused(hub_shaped):
    with pytest.raises(NotImplementedError, match="no training loss"):
        hub_shaped[1](pixels(1, 16, 16), labels=np.zeros((1, 64, 64), np.float32))


# -------------------------------------------------------------------------- bins to heights


def logits(batch: int, bins: int, height: int, width: int, seed: int) -> np.ndarray:
    """Bin logits of several scales, positive and negative, with a pixel whose logits are all negative
    (every ReLU'd weight 0: the mixlog shift alone decides) and one with a single dominant bin."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, bins, height, width)) * rng.uniform(0.1, 5, (batch, 1, height, width))
    x[0, :, 0, 0] = -np.abs(x[0, :, 0, 0]) - 0.1
    x[-1, :, -1, -1] = -1.0
    x[-1, bins // 3, -1, -1] = 30.0
    return x.astype(np.float32)


@pytest.mark.parity
@pytest.mark.parametrize("strategies", STRATEGIES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("bins", [1, 2, 7, 256])
def test_features_to_depth_matches_reference(strategies, bins):
    bins_strategy, norm_strategy = strategies
    config = dict(
        number_output_channels=bins,
        min_depth=0.001,
        max_depth=96.0,
        bins_strategy=bins_strategy,
        norm_strategy=norm_strategy,
    )
    ref = ReferenceFeaturesToDepth(transformers.CHMv2Config(**config))
    ours = CHMv2FeaturesToDepth(
        CHMv2Config(backbone_config=dict(CHMV2_BACKBONE_DEFAULTS, num_hidden_layers=24), **config)
    )
    x = logits(2, bins, 5, 6, seed=bins)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))[:, 0]
    got = ours(mx.array(x.transpose(0, 2, 3, 1)))
    assert got.shape == expected.shape and got.dtype == mx.float32
    assert np.abs(np.array(got) - expected.numpy()).max() <= 1e-5 * float(expected.abs().max())
    assert range_err(got, expected) <= TOL


def test_bin_centres_match_reference():
    ref = ReferenceFeaturesToDepth(transformers.CHMv2Config())
    for n in (2, 5, 256):
        expected = ref._create_mixlog_bins(n, torch.device("cpu")).numpy()
        got = bin_centres(n, "chmv2_mixlog", 0.001, 96.0)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=0)
        assert got[0] == np.float32(0.001) and abs(got[-1] - 12.0) <= 1e-5  # max_depth / 8
    linear = bin_centres(4, "linear", 1.0, 4.0)
    np.testing.assert_allclose(bin_centres(3, "log", 1.0, 100.0), [1.0, 10.0, 100.0], rtol=1e-6)
    assert linear.tolist() == [1.0, 2.0, 3.0, 4.0]


# ---------------------------------------------------------------------------------- config


def test_config_defaults_and_fields_are_the_reference():
    ref, ours = transformers.CHMv2Config(), CHMv2Config()
    for name, value in ours.to_dict().items():
        if name == "backbone_config":
            theirs = ref.backbone_config.to_dict()
            assert all(theirs[k] == v for k, v in value.items() if k != "model_type"), value
        elif name != "architectures":
            assert getattr(ref, name) == value, name
    assert ours.architectures == ["CHMv2ForDepthEstimation"] and ours.predicts_metres
    # the hub's file, as transformers writes it: its unknown keys ignored, its backbone read
    data = json.loads(chmv2_config(readout_type="add").to_json_string())
    read = config_from_dict(data)
    assert type(read) is CHMv2Config and read.readout_type == "add"
    assert read.backbone_config["num_register_tokens"] == 4 and read.neck_hidden_sizes == [8, 16, 24, 32]
    nulls = config_from_dict({**data, "reassemble_factors": None, "post_process_channels": None})
    assert nulls.reassemble_factors == [4, 2, 1, 0.5] and nulls.post_process_channels == [128, 256, 512, 1024]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(bins_strategy="cubic"), "bins_strategy='cubic'"),
        (dict(norm_strategy="max"), "norm_strategy='max'"),
        (dict(readout_type="concat"), "readout_type='concat'"),
        (dict(min_depth=0.0), "min_depth=0.0"),
        (dict(min_depth=-1.0), "min_depth=-1.0"),
        (dict(max_depth=0.0005), "max_depth=0.0005"),
        (dict(number_output_channels=0), "number_output_channels=0"),
        (dict(fusion_hidden_size=1), "fusion_hidden_size=1"),
        (dict(post_process_channels=[8, 16, 24]), r"post_process_channels \(3 values\)"),
        (dict(post_process_channels=[8, 16, 24], reassemble_factors=[4, 2, 1]), "4 feature maps .* 3 stages"),
        (dict(reassemble_factors=[4, 2, 1, 0.3]), "0.3"),
        (dict(reassemble_factors=[4, 2, 1]), "reassemble_factors"),
        (dict(head_hidden_size="8"), "head_hidden_size"),
        (dict(backbone_config=dict(model_type="dinov3_vit", hidden_size=30)), "backbone_config: hidden_size"),
        (dict(backbone_config=dict(model_type="dinov3_vit", return_class_token=False)), "return_class_token"),
    ],
)
def test_config_rejects_bad_values(change, message):
    with pytest.raises(ValueError, match=message) as info:
        CHMv2Config.from_dict(change)
    assert "\n" not in str(info.value)


def test_config_backbone_must_be_dinov3():
    with pytest.raises(UnsupportedModelError, match="dinov2"):
        CHMv2Config(backbone_config={"model_type": "dinov2"})


def test_bad_config_file_is_one_checkpoint_error(tmp_path):
    data = json.loads(chmv2_config().to_json_string())
    (tmp_path / "config.json").write_text(json.dumps({**data, "norm_strategy": "max"}))
    with pytest.raises(CheckpointError, match="norm_strategy='max'") as info:
        dpt_mlx.load_model(tmp_path)
    assert "\n" not in str(info.value)

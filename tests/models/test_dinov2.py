"""The DINOv2 backbone and DPT on it (facebook/dpt-dinov2-*): parity with transformers on tiny
perturbed checkpoints, and the backbone dispatch."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from helpers import TOL, perturb, pixels, rel_err

import dpt_mlx
from dpt_mlx.backbones import build_backbone
from dpt_mlx.backbones.dinov2 import Dinov2Backbone, Dinov2Config
from dpt_mlx.configs.dpt import DPTConfig
from dpt_mlx.configs.load import config_from_dict
from dpt_mlx.io import weights as W
from dpt_mlx.io.checkpoint import load_strict, read_weights

PATCH = 14
# (H, W): the config grid (3x3 at image_size 42), smaller and larger, non-square, not a multiple of 14.
SHAPES = [(42, 42), (28, 28), (28, 42), (71, 57)]


def dinov2_config(**overrides) -> transformers.Dinov2Config:
    kwargs = dict(
        hidden_size=24,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=42,
        patch_size=PATCH,
        reshape_hidden_states=False,
    )
    kwargs.update(overrides)
    return transformers.Dinov2Config(**kwargs)


def dpt_dinov2_config(**backbone_overrides) -> transformers.DPTConfig:
    """facebook/dpt-dinov2-small-nyu's shape at reduced width, as its conversion script builds it:
    Dinov2 with out_indices [3, 6, 9, 12], apply_layernorm=False, reshape_hidden_states=False; DPT with
    use_bias_in_fusion_residual=False, add_projection=True (so fusion_hidden_size stays 256) and
    the DPTConfig defaults otherwise (readout "project", reassemble_factors [4, 2, 1, 0.5])."""
    backbone = dict(num_hidden_layers=12, out_indices=[3, 6, 9, 12], apply_layernorm=False)
    backbone.update(backbone_overrides)
    return transformers.DPTConfig(
        backbone_config=dinov2_config(**backbone),
        neck_hidden_sizes=[6, 12, 24, 24],
        use_bias_in_fusion_residual=False,
        add_projection=True,
    )


def eager(model):
    model.set_attn_implementation("eager")  # SDPA returns no attention probabilities
    return model


def mostly_positive_depth(ref, x):
    """A random head can end below zero everywhere, and ReLU then makes every output 0, which
    would match anything: flip the last conv so that most of the depth map is positive."""
    last = ref.head.head[4]
    with torch.no_grad():
        if (ref(torch.from_numpy(x)).predicted_depth > 0).float().mean() < 0.5:
            last.weight.neg_()
            last.bias.neg_()
    return ref


def assert_close_all(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert rel_err(a, b) <= TOL


def load_backbone(tmp_path: Path, ref) -> Dinov2Backbone:
    ref.save_pretrained(tmp_path)
    ours = Dinov2Backbone(Dinov2Config.from_dict(ref.config.to_dict()))
    weights, _ = read_weights(tmp_path)
    load_strict(ours, W.sanitize(ours, weights))
    ours.eval()
    return ours


# ------------------------------------------------------------------------------------ backbone


@pytest.mark.parity
@pytest.mark.parametrize(
    "overrides",
    [
        dict(reshape_hidden_states=True, apply_layernorm=True, out_features=["stem", "stage2", "stage4"]),
        dict(reshape_hidden_states=False, apply_layernorm=False, out_indices=[-3, -1], use_swiglu_ffn=True),
    ],
    ids=["maps-layernorm", "tokens-swiglu"],
)
def test_backbone_feature_maps(tmp_path, overrides):
    torch.manual_seed(0)
    ref = perturb(eager(transformers.Dinov2Backbone(dinov2_config(**overrides))), seed=1)
    ours = load_backbone(tmp_path, ref)
    assert ours.out_indices == [i % 5 for i in ref.config.out_indices]
    for h, w in SHAPES:
        x = pixels(2, h, w, seed=h + w)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
        got = ours(mx.array(x).transpose(0, 2, 3, 1), output_attentions=True)
        maps = [np.array(f) for f in got.features]
        if ref.config.reshape_hidden_states:  # ours are NHWC, the reference's NCHW
            maps = [m.transpose(0, 3, 1, 2) for m in maps]
        assert_close_all(maps, expected.feature_maps)
        assert_close_all(got.hidden_states, expected.hidden_states)
        assert_close_all(got.attentions, expected.attentions)


@pytest.mark.parity
def test_position_embeddings_bicubic(tmp_path):
    """The resized position grid alone (downsampled, upsampled, non-square): bicubic in float32."""
    torch.manual_seed(0)
    ref = perturb(transformers.Dinov2Backbone(dinov2_config(num_hidden_layers=1)), seed=2)
    ours = load_backbone(tmp_path, ref)
    for h, w in [(28, 42), (140, 98), (70, 126)]:
        x = pixels(1, h, w)
        with torch.no_grad():
            expected = ref.embeddings(torch.from_numpy(x))
        got = ours.embeddings(mx.array(x).transpose(0, 2, 3, 1))
        assert rel_err(got, expected) <= 1e-5


def test_config_out_features_alignment():
    """out_features / out_indices are derived from each other exactly as transformers does."""
    cases = [
        dict(),
        dict(out_indices=[3, 6, 9, 12]),
        dict(out_features=["stage9", "stage12"]),
        dict(out_indices=[-4, -1]),
        dict(out_features=["stem"], out_indices=[0]),
    ]
    for kwargs in cases:
        ref = transformers.Dinov2Config(**kwargs)
        ours = Dinov2Config.from_dict(ref.to_dict())
        assert ours.out_features == ref.out_features
        assert ours.out_indices == [i % 13 for i in ref.out_indices]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(out_features=["stage13"]), "stage13"),
        (dict(out_indices=[14]), "14"),
        (dict(out_indices=[6, 3]), "order"),
        (dict(out_features=["stage3"], out_indices=[4]), "different"),
        (dict(hidden_act="nope"), "nope"),
        (dict(hidden_size=10, num_attention_heads=3), "num_attention_heads"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Dinov2Config(**kwargs)


# ------------------------------------------------------------------------------- DPT + DINOv2


@pytest.mark.parity
@pytest.mark.parametrize(
    "backbone_overrides",
    [
        dict(),  # small / base: 12 layers, out_indices [3, 6, 9, 12]
        dict(num_hidden_layers=40, out_indices=[10, 20, 30, 40], use_swiglu_ffn=True, apply_layernorm=True),  # giant
    ],
    ids=["small-nyu", "giant-swiglu-layernorm"],
)
def test_dpt_dinov2_depth(tmp_path, backbone_overrides):
    torch.manual_seed(0)
    ref = perturb(eager(transformers.DPTForDepthEstimation(dpt_dinov2_config(**backbone_overrides))), seed=3)
    mostly_positive_depth(ref, pixels(1, 42, 42))
    ref.save_pretrained(tmp_path)
    ours = dpt_mlx.load_model(tmp_path)
    assert type(ours) is dpt_mlx.DPTForDepthEstimation
    for h, w in [(42, 42), (28, 42), (57, 29)]:  # fusion_hidden_size is 256: keep the maps small
        x = pixels(2, h, w, seed=h)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
        got = ours(x, output_hidden_states=True, output_attentions=True)
        assert float((expected.predicted_depth > 0).float().mean()) > 0.5
        assert rel_err(got.predicted_depth, expected.predicted_depth) <= TOL
        assert_close_all(got.hidden_states, expected.hidden_states)
        assert_close_all(got.attentions, expected.attentions)
    assert ours(pixels(1, 28, 28)).hidden_states is None


def test_unknown_backbone_type_is_unsupported():
    # the config already refuses it, when it is read
    with pytest.raises(dpt_mlx.UnsupportedModelError, match=r"'convnext'.*supported: .*dinov2"):
        DPTConfig(backbone_config={"model_type": "convnext", "hidden_size": 32})

    class Unknown:
        backbone_type = "convnext"

    with pytest.raises(dpt_mlx.UnsupportedModelError, match=r"'convnext'.*supported: .*dinov2"):
        build_backbone(Unknown())


def test_segmentation_with_backbone_config_is_unsupported():
    config = config_from_dict(dpt_dinov2_config().to_dict())
    with pytest.raises(dpt_mlx.UnsupportedModelError, match="DPTForSemanticSegmentation"):
        dpt_mlx.DPTForSemanticSegmentation(config)


def test_reshaped_backbone_for_dpt_is_rejected():
    data = transformers.DPTConfig(backbone_config=dinov2_config(reshape_hidden_states=True)).to_dict()
    with pytest.raises(ValueError, match="reshape_hidden_states"):
        config_from_dict(data)

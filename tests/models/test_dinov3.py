"""The DINOv3 ViT backbone (CHMv2's, facebook/dinov3-vitl16-chmv2-dpt-head): parity with transformers'
DINOv3ViTModel, DINOv3ViTBackbone and CHMv2's reassemble stage on tiny perturbed checkpoints, the
rotary embeddings on their own, and the config checks."""

import math
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from helpers import TOL, perturb, pixels, rel_err

from dpt_mlx import cpu
from dpt_mlx.backbones.dinov3 import (
    Dinov3ViTBackbone,
    Dinov3ViTConfig,
    Dinov3ViTModel,
    Dinov3ViTNeckBackbone,
    Dinov3ViTRopePositionEmbedding,
)
from dpt_mlx.errors import UnsupportedModelError
from dpt_mlx.io import weights as W
from dpt_mlx.io.checkpoint import load_strict, read_weights
from dpt_mlx.models.neck import ReassembleStage

PATCH = 4
# (H, W): the config grid (4x4 at image_size 16), larger non-square both ways, not a multiple of the patch.
SHAPES = [(16, 16), (32, 48), (48, 20), (30, 23)]


# The rows proposed for io/weights.py (RENAMES and DROP), applied here to the in-memory state_dict:
# transformers 5 keeps the layers under ``model.layer.N`` in memory (its save writes ``layer.N``),
# and ``rope_embeddings.inv_freq`` is a non-persistent buffer recomputed from ``rope_theta``.
def dinov3_config(**overrides) -> transformers.DINOv3ViTConfig:
    kwargs = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=16,
        patch_size=PATCH,
    )
    kwargs.update(overrides)
    return transformers.DINOv3ViTConfig(**kwargs)


def reference(cls, config, seed: int):
    """A perturbed eager reference. ``inv_freq`` is a buffer derived from ``rope_theta`` that checkpoints
    do not carry (transformers recomputes it at load): it gets its formula value back."""
    torch.manual_seed(0)
    ref = perturb(cls(config), seed=seed)
    rope = ref.rope_embeddings
    with torch.no_grad():
        rope.inv_freq.copy_(1 / rope.base ** torch.arange(0, 1, 4 / rope.head_dim, dtype=torch.float32))
    ref.set_attn_implementation("eager")  # SDPA returns no attention probabilities
    return ref


def finish(ours):
    ours.eval()
    return cpu.accelerate(ours)  # what the loader does (a no-op with DPT_MLX_FAST_KERNELS=0)


def from_state_dict(cls, ref):
    """Ours, loaded from the reference's in-memory state_dict (``model.layer.N`` keys, the rotary
    frequencies) through the weight table."""
    ours = cls(Dinov3ViTConfig.from_dict(ref.config.to_dict()))
    state = {key: mx.array(value.numpy()) for key, value in ref.state_dict().items()}
    load_strict(ours, W.sanitize(ours, state))
    return finish(ours)


def from_checkpoint(cls, ref, tmp_path: Path, config: Dinov3ViTConfig | None = None, prefix: str = ""):
    """Ours, loaded from the reference's ``save_pretrained`` files (keys under ``prefix``) as they are."""
    ref.save_pretrained(tmp_path)
    ours = cls(config or Dinov3ViTConfig.from_dict(ref.config.to_dict()))
    weights, _ = read_weights(tmp_path)
    weights = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    load_strict(ours, W.sanitize(ours, weights))
    return finish(ours)


def nhwc(x: np.ndarray) -> mx.array:
    return mx.array(x).transpose(0, 2, 3, 1)


def assert_close_all(got, expected, tol=TOL):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert rel_err(a, b) <= tol


# --------------------------------------------------------------------------------- the model

MODEL_CASES = {
    "plain": dict(),
    # CHMv2's / the ViT-7B's switches: registers, key bias, SwiGLU, a small layer scale, another rope base
    "registers-gated": dict(
        num_register_tokens=4,
        key_bias=True,
        use_gated_mlp=True,
        hidden_act="silu",
        layerscale_value=0.1,
        rope_theta=37.0,
        layer_norm_eps=1e-6,
    ),
    "registers-no-biases": dict(num_register_tokens=1, query_bias=False, value_bias=False, mlp_bias=False),
}


@pytest.mark.parity
@pytest.mark.parametrize("overrides", list(MODEL_CASES.values()), ids=list(MODEL_CASES))
def test_model(overrides):
    ref = reference(transformers.DINOv3ViTModel, dinov3_config(**overrides), seed=1)
    ours = from_state_dict(Dinov3ViTModel, ref)
    for h, w in SHAPES:
        x = pixels(2, h, w, seed=h + w)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
        got = ours(nhwc(x), output_hidden_states=True, output_attentions=True)
        assert rel_err(got.last_hidden_state, expected.last_hidden_state) <= TOL
        assert rel_err(got.pooler_output, expected.pooler_output) <= TOL
        assert_close_all(got.hidden_states, expected.hidden_states)
        assert_close_all(got.attentions, expected.attentions)
        # without probabilities the attention goes through the shared SDPA module (the CPU layer's)
        assert rel_err(ours(nhwc(x)).last_hidden_state, expected.last_hidden_state) <= TOL


# ------------------------------------------------------------------------------ the backbone

BACKBONE_CASES = {
    # CHMv2's: NCHW maps of normed states, every stage's CLS token
    "maps-layernorm-cls": dict(
        num_register_tokens=4, out_indices=[1, 2, 3, 4], reshape_hidden_states=True, return_class_token=True
    ),
    # un-normed stem and middle stage; the last stage is normed all the same
    "tokens-no-layernorm": dict(
        out_indices=[0, 2, -1], reshape_hidden_states=False, apply_layernorm=False, use_gated_mlp=True
    ),
    "maps-no-layernorm-one-stage": dict(
        num_register_tokens=2, out_features=["stage3"], apply_layernorm=False, return_class_token=True
    ),
}


@pytest.mark.parity
@pytest.mark.parametrize("overrides", list(BACKBONE_CASES.values()), ids=list(BACKBONE_CASES))
def test_backbone(tmp_path, overrides):
    ref = reference(transformers.DINOv3ViTBackbone, dinov3_config(**overrides), seed=2)
    ours = from_checkpoint(Dinov3ViTBackbone, ref, tmp_path)
    assert ours.out_indices == [i % 5 for i in ref.config.out_indices]
    for h, w in SHAPES:
        x = pixels(2, h, w, seed=h * w)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
        got = ours(nhwc(x), output_attentions=True)
        assert got.grid == (h // PATCH, w // PATCH)
        maps = [np.array(f) for f in got.features]
        if ref.config.reshape_hidden_states:  # ours are NHWC, the reference's NCHW
            maps = [m.transpose(0, 3, 1, 2) for m in maps]
        assert_close_all(maps, expected.feature_maps)
        if expected.cls_tokens is None:
            assert got.cls_tokens is None
        else:
            assert_close_all(got.cls_tokens, expected.cls_tokens)
        assert_close_all(got.hidden_states, expected.hidden_states)
        assert_close_all(got.attentions, expected.attentions)


# ------------------------------------------------------------------------- CHMv2's use of it


def chmv2_config(readout_type: str) -> transformers.CHMv2Config:
    """facebook/dinov3-vitl16-chmv2-dpt-head's shape at tiny width (its backbone_config's switches)."""
    backbone = dinov3_config(
        num_register_tokens=4,
        key_bias=True,
        layer_norm_eps=1e-6,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=True,
        apply_layernorm=True,
        return_class_token=True,
    )
    return transformers.CHMv2Config(
        backbone_config=backbone,
        patch_size=PATCH,
        post_process_channels=[8, 16, 24, 32],
        fusion_hidden_size=8,
        head_hidden_size=8,
        number_output_channels=8,
        readout_type=readout_type,
    )


@pytest.mark.parity
@pytest.mark.parametrize("readout_type", ["project", "add"])
def test_chmv2_reassemble(tmp_path, readout_type):
    """What CHMv2 reads from its backbone ((map, CLS token) pairs), as the DPT neck's reassemble stage
    reads it from the neck backbone (CLS-first token sequences): the same reassembled maps."""
    config = chmv2_config(readout_type)
    torch.manual_seed(0)
    ref = perturb(transformers.CHMv2ForDepthEstimation(config), seed=3)
    rope = ref.backbone.rope_embeddings
    with torch.no_grad():
        rope.inv_freq.copy_(1 / rope.base ** torch.arange(0, 1, 4 / rope.head_dim, dtype=torch.float32))
    model_config = SimpleNamespace(
        model_type="chmv2",
        backbone_config=config.backbone_config.to_dict(),
        post_process_channels=config.post_process_channels,
    )
    ours = from_checkpoint(
        Dinov3ViTNeckBackbone, ref, tmp_path, Dinov3ViTConfig.from_chmv2(model_config), prefix="backbone."
    )
    neck_config = SimpleNamespace(
        readout_type=readout_type,
        neck_ignore_stages=[],
        neck_hidden_sizes=config.post_process_channels,
        reassemble_factors=config.reassemble_factors,
        hidden_act="gelu",  # CHMv2's readout projection is Linear + nn.GELU()
    )
    reassemble = ReassembleStage(neck_config, config.backbone_config.hidden_size)
    weights, _ = read_weights(tmp_path)
    prefix = "head.reassemble_stage."
    weights = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    load_strict(reassemble, W.sanitize(reassemble, weights))
    for h, w in [(16, 16), (32, 24)]:
        x = pixels(2, h, w, seed=h)
        with torch.no_grad():
            out = ref.backbone(torch.from_numpy(x))
            expected = ref.head.reassemble_stage(list(zip(out.feature_maps, out.cls_tokens)), h // PATCH, w // PATCH)
        feats = ours(nhwc(x))
        assert [f.shape for f in feats.features] == [(2, 1 + (h // PATCH) * (w // PATCH), 32)] * 4
        got = [np.array(m).transpose(0, 3, 1, 2) for m in reassemble(feats.features, feats.grid)]
        assert_close_all(got, expected)


def test_chmv2_backbone_config_checks():
    good = dict(model_type="dinov3_vit", out_indices=[6, 12, 18, 24], num_hidden_layers=24, return_class_token=True)

    def chmv2(stages=4, **backbone):
        return SimpleNamespace(
            model_type="chmv2", backbone_config={**good, **backbone}, post_process_channels=[1] * stages
        )

    assert Dinov3ViTConfig.from_chmv2(chmv2()).out_indices == [6, 12, 18, 24]
    with pytest.raises(UnsupportedModelError, match="CHMv2 checkpoints only"):
        Dinov3ViTConfig.from_chmv2(SimpleNamespace(model_type="dpt", backbone_config=good))
    with pytest.raises(ValueError, match="reshape_hidden_states=true and return_class_token=true"):
        Dinov3ViTConfig.from_chmv2(chmv2(return_class_token=False))
    with pytest.raises(ValueError, match="reshape_hidden_states=true"):
        Dinov3ViTConfig.from_chmv2(chmv2(reshape_hidden_states=False))
    with pytest.raises(ValueError, match="4 feature maps .* 3 stages"):
        Dinov3ViTConfig.from_chmv2(chmv2(stages=3))


# ------------------------------------------------------------------------- rotary embeddings


@pytest.mark.parity
def test_rope_matches_reference():
    """cos and sin of every patch, for grids smaller, larger and other than the config's, two rope bases."""
    for theta in (100.0, 7.5):
        config = dinov3_config(rope_theta=theta, hidden_size=64, num_attention_heads=2)
        ref = transformers.DINOv3ViTModel(config).rope_embeddings.eval()
        ours = Dinov3ViTRopePositionEmbedding(Dinov3ViTConfig.from_dict(config.to_dict())).eval()
        for gh, gw in [(4, 4), (1, 7), (9, 3), (24, 24)]:
            with torch.no_grad():
                cos, sin = ref(torch.zeros(1, 3, gh * PATCH, gw * PATCH))
            got_cos, got_sin = ours((gh, gw), mx.float32)
            assert np.abs(np.array(got_cos) - cos.numpy()).max() <= 1e-6
            assert np.abs(np.array(got_sin) - sin.numpy()).max() <= 1e-6


def test_rope_training_rescales_coordinates():
    """In training the reference multiplies the patch coordinates by one log-uniform factor in
    [1/rescale, rescale] (pos_embed_rescale, 2 by default); at inference, and with every knob null,
    they are the plain centres."""
    config = Dinov3ViTConfig(hidden_size=64, num_attention_heads=2)
    rope = Dinov3ViTRopePositionEmbedding(config)
    plain = rope.eval()((4, 6), mx.float32)  # even: no centre at 0
    # the lowest frequency's angles stay below pi even rescaled 2x: atan2 reads them back unwrapped
    low = config.head_dim // 4 - 1

    def angles(cos_sin):
        cos, sin = (np.array(a)[:, [low, low + config.head_dim // 4]] for a in cos_sin)
        return np.arctan2(sin, cos)

    mx.random.seed(0)
    factors = []
    for _ in range(8):
        ratio = angles(rope.train()((4, 6), mx.float32)) / angles(plain)
        assert np.allclose(ratio, ratio[0, 0], rtol=1e-4)  # one factor for every patch and both axes
        factors.append(ratio[0, 0])
    assert all(0.5 - 1e-6 <= f <= 2 + 1e-6 for f in factors) and np.std(factors) > 0.05
    off = Dinov3ViTRopePositionEmbedding(Dinov3ViTConfig(pos_embed_rescale=None)).train()
    on = Dinov3ViTRopePositionEmbedding(Dinov3ViTConfig(pos_embed_rescale=None))
    assert all(np.array_equal(a, b) for a, b in zip(off((3, 5), mx.float32), on.eval()((3, 5), mx.float32)))
    assert math.isclose(float(np.abs(np.array(plain[0])).max()), 1.0, abs_tol=1e-6)


# ---------------------------------------------------------------------------------- config


def test_config_defaults_and_fields_are_the_reference():
    ref = transformers.DINOv3ViTConfig()
    ours = Dinov3ViTConfig()
    for name, value in ours.to_dict().items():
        if name != "return_class_token":  # read by the reference's backbone, not one of its fields
            assert getattr(ref, name) == value, name
    data = transformers.DINOv3ViTConfig(out_indices=[-3, -1], num_register_tokens=4).to_dict()
    assert "stage_names" in data and "architectures" in data  # unknown to ours: ignored
    read = Dinov3ViTConfig.from_dict(data)
    assert read.out_indices == [10, 12] and read.out_features == ["stage10", "stage12"]
    assert read.num_register_tokens == 4 and not read.return_class_token


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=30, num_attention_heads=4), "num_attention_heads"),
        (dict(hidden_size=40, num_attention_heads=4), "multiple of 4"),
        (dict(hidden_act="nope"), "nope"),
        (dict(num_register_tokens=-1), "num_register_tokens=-1"),
        (dict(rope_theta=0.0), "rope_theta=0.0"),
        (dict(pos_embed_rescale=0), "pos_embed_rescale=0"),
        (dict(patch_size=[16, 16, 3]), "patch_size"),
        (dict(out_indices=[13]), "13"),
        (dict(out_indices=[6, 3]), "order"),
        (dict(use_gated_mlp="yes"), "use_gated_mlp"),
        (dict(model_type="dinov2"), "dinov2"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        Dinov3ViTConfig.from_dict(kwargs)
    assert "\n" not in str(info.value)

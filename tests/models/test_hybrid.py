"""DPT-Hybrid (BiT backbone + ViT) parity against transformers on tiny perturbed checkpoints.

The tiny configs keep Intel/dpt-hybrid-midas's structure (bottleneck BiT, SAME padding, dynamic
stem padding, three stages feeding stages 0-1 of the neck, project readout, reassemble factors
[1, 1, 1, 0.5]) at small widths and depths.

The reference's hybrid forward only runs at ``config.image_size``: DPTModel never passes
``interpolate_pos_encoding`` to its embeddings, its neck reshapes hybrid tokens to a square
sqrt(N) grid, and off multiples of 16 its position embeddings (H // 16) miss the BiT grid
(ceil(H / 16)). Other sizes are compared against the reference's own modules with exactly those
three spots patched (``reference_grid``); nothing else of the reference changes.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from unittest import mock

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from helpers import TOL, perturb, pixels, rel_err

import dpt_mlx
from dpt_mlx.backbones.bit import BitBackbone, BitConfig
from dpt_mlx.configs.dpt import DPTConfig
from dpt_mlx.configs.load import load_config
from dpt_mlx.io.weights import sanitize

IMAGE = 64  # config.image_size of the tiny models: a 4x4 token grid

# Intel/dpt-hybrid-midas's backbone_config (from memory of the hub config; the same as transformers'
# DPTConfig default for is_hybrid=True), at tiny widths and depths.
BOTTLENECK = {
    "model_type": "bit",
    "layer_type": "bottleneck",
    "global_padding": "same",
    "embedding_dynamic_padding": True,
    "depths": [1, 1, 2],
    "out_features": ["stage1", "stage2", "stage3"],
    "embedding_size": 8,
    "hidden_sizes": [16, 32, 64],
    "num_groups": 4,
}
# transformers' BitConfig defaults for padding and layer type: static padding, ConstantPad2d in the stem.
PREACTIVATION = dict(BOTTLENECK, layer_type="preactivation", global_padding=None, embedding_dynamic_padding=False)


def hybrid_config(backbone_config, **kwargs) -> transformers.DPTConfig:
    return transformers.DPTConfig(
        is_hybrid=True,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=IMAGE,
        patch_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        readout_type="project",
        neck_hidden_sizes=[16, 32, 32, 32],
        reassemble_factors=[1, 1, 1, 0.5],
        fusion_hidden_size=16,
        backbone_featmap_shape=[1, 64, IMAGE // 16, IMAGE // 16],
        backbone_config=dict(backbone_config),
        use_batch_norm_in_fusion_residual=True,
        num_labels=5,
        **kwargs,
    )


@functools.cache
def _pair(kind: str, layer: str, seed: int = 0):
    """(reference, ours) for a head kind and BiT layer type, saved and reloaded through from_pretrained."""
    cfg = hybrid_config(BOTTLENECK if layer == "bottleneck" else PREACTIVATION)
    ref_cls, our_cls = {
        "depth": (transformers.DPTForDepthEstimation, dpt_mlx.DPTForDepthEstimation),
        "segmentation": (transformers.DPTForSemanticSegmentation, dpt_mlx.DPTForSemanticSegmentation),
    }[kind]
    torch.manual_seed(seed)
    ref = perturb(ref_cls(cfg), seed)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = our_cls.from_pretrained(d)
    return ref, ours


@contextlib.contextmanager
def reference_grid(ref, x: torch.Tensor):
    """Let the reference run at any size, with the true token grid (the BiT output map's size).

    Patches: the embeddings' size check (``interpolate_pos_encoding=True``), the position-embedding
    resize target (H // 16 in the reference; the true grid is ceil(H / 16), equal on multiples of 16)
    and the neck's grid (None, i.e. square, for hybrids in the reference).
    """
    emb = ref.dpt.embeddings
    with torch.no_grad():
        gh, gw = emb.backbone(x).feature_maps[-1].shape[-2:]
    neck_forward, resize = ref.neck.forward, emb._resize_pos_embed
    with (
        mock.patch.object(emb, "forward", functools.partial(emb.forward, interpolate_pos_encoding=True)),
        mock.patch.object(emb, "_resize_pos_embed", lambda posemb, h, w: resize(posemb, gh, gw)),
        mock.patch.object(ref.neck, "forward", lambda hidden_states, *a, **k: neck_forward(hidden_states, gh, gw)),
    ):
        yield gh, gw


def run_both(ref, ours, x: np.ndarray):
    with torch.no_grad():
        r = ref(torch.from_numpy(x), output_hidden_states=True)
    return r, ours(x, output_hidden_states=True)


def check_hidden_states(o, r):
    assert len(o.hidden_states) == len(r.hidden_states) == 5  # embeddings + 4 layers
    for a, b in zip(o.hidden_states, r.hidden_states):
        assert rel_err(a, b) <= TOL


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parity
@pytest.mark.parametrize("layer", ["bottleneck", "preactivation"])
def test_depth_at_image_size(layer):
    """The reference called as is: batch 2 at config.image_size."""
    ref, ours = _pair("depth", layer)
    r, o = run_both(ref, ours, pixels(2, IMAGE, IMAGE, seed=1))
    assert rel_err(o.predicted_depth, r.predicted_depth) <= TOL
    check_hidden_states(o, r)


@pytest.mark.parity
@pytest.mark.parametrize(
    "layer, size",
    [
        ("bottleneck", (96, 96)),
        ("bottleneck", (64, 96)),
        ("bottleneck", (112, 48)),
        ("bottleneck", (50, 70)),
        ("preactivation", (64, 96)),
        ("preactivation", (50, 70)),
    ],
)
def test_depth_other_sizes(layer, size):
    """Square off image_size, non-square, and not multiples of 16 (true grid ceil(H/16), e.g. 4x5 for 50x70)."""
    ref, ours = _pair("depth", layer)
    x = pixels(2, *size, seed=2)
    with reference_grid(ref, torch.from_numpy(x)) as grid:
        r, o = run_both(ref, ours, x)
    assert ours.dpt.embeddings.token_grid(*size) == tuple(grid)
    assert rel_err(o.predicted_depth, r.predicted_depth) <= TOL
    check_hidden_states(o, r)


@pytest.mark.parity
@pytest.mark.parametrize("size", [(IMAGE, IMAGE), (64, 96)])
def test_segmentation(size):
    ref, ours = _pair("segmentation", "bottleneck")
    x = pixels(2, *size, seed=3)
    aux = []  # the reference computes auxiliary logits but does not return them
    hook = ref.auxiliary_head.register_forward_hook(lambda module, args, out: aux.append(out))
    try:
        with reference_grid(ref, torch.from_numpy(x)) if size != (IMAGE, IMAGE) else contextlib.nullcontext():
            r, o = run_both(ref, ours, x)
    finally:
        hook.remove()
    assert rel_err(o.logits, r.logits) <= TOL
    assert rel_err(o.auxiliary_logits, aux[0]) <= TOL
    check_hidden_states(o, r)


@pytest.mark.parity
def test_model_embeddings_and_feature_maps():
    """DPTModel (with pooler) and the hybrid embeddings' BiT maps against the reference's intermediate_activations."""
    ref_full, _ = _pair("depth", "bottleneck")
    cfg = ref_full.config
    torch.manual_seed(0)
    ref = perturb(transformers.DPTModel(cfg), 4)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = dpt_mlx.DPTModel.from_pretrained(d)
    x = pixels(2, IMAGE, IMAGE, seed=5)
    with torch.no_grad():
        r = ref(torch.from_numpy(x))
    o = ours(x)
    assert rel_err(o.last_hidden_state, r.last_hidden_state) <= TOL
    assert rel_err(o.pooler_output, r.pooler_output) <= TOL
    _, _, maps = ours.embeddings(mx.array(x).transpose(0, 2, 3, 1))
    for a, b in zip(maps, r.intermediate_activations, strict=True):
        assert rel_err(np.array(a).transpose(0, 3, 1, 2), b) <= TOL


# The BiT backbone alone, over the padding modes and strides the BitConfig allows.
BIT_CASES = {
    "same-dynamic": BOTTLENECK,
    "preact-static": PREACTIVATION,
    # the stem's one-pixel zero padding comes before its GroupNorm, so the zeros count in its statistics
    "bottleneck-static": dict(BOTTLENECK, global_padding=None, embedding_dynamic_padding=False),
    "preact-same": dict(PREACTIVATION, global_padding="SAME", embedding_dynamic_padding=True),
    # output_stride 8: the third stage dilates instead of striding (the second 3x3 conv with dilation 2)
    "dilated": dict(BOTTLENECK, output_stride=8, depths=[1, 1, 2]),
}


@pytest.mark.parity
@pytest.mark.parametrize("case", list(BIT_CASES))
@pytest.mark.parametrize("size", [(64, 64), (45, 78)])
def test_bit_backbone(case, size):
    data = {k: v for k, v in BIT_CASES[case].items() if k != "model_type"}
    ref = perturb(transformers.BitBackbone(transformers.BitConfig(**data)), 6)
    ours = BitBackbone(BitConfig.from_dict(BIT_CASES[case]))
    weights = {k: mx.array(v.numpy()) for k, v in ref.state_dict().items() if not k.startswith("bit.norm.")}
    ours.load_weights(list(sanitize(ours, weights).items()), strict=True)
    x = pixels(2, *size, seed=7)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).feature_maps
    got = ours(mx.array(x).transpose(0, 2, 3, 1))
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        assert rel_err(np.array(a).transpose(0, 3, 1, 2), b) <= TOL
    assert (ours.out_size(size[0]), ours.out_size(size[1])) == tuple(expected[-1].shape[-2:])


# ---------------------------------------------------------------------------------------------- config


def test_default_hybrid_backbone_matches_reference():
    ref = transformers.DPTConfig(is_hybrid=True).backbone_config
    ours = DPTConfig(is_hybrid=True).bit_config
    for name in (
        "layer_type",
        "global_padding",
        "depths",
        "hidden_sizes",
        "embedding_size",
        "num_groups",
        "embedding_dynamic_padding",
        "output_stride",
        "width_factor",
        "hidden_act",
        "out_features",
        "out_indices",
    ):
        assert getattr(ours, name) == getattr(ref, name), name


def test_hybrid_config_roundtrip(tmp_path):
    hybrid_config(BOTTLENECK).save_pretrained(tmp_path)
    cfg = load_config(tmp_path / "config.json")
    assert cfg.is_hybrid and cfg.bit_config.layer_type == "bottleneck" and cfg.bit_config.global_padding == "SAME"
    assert DPTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"layer_type": "basic"}, "layer_type"),
        ({"global_padding": "reflect"}, "global_padding"),
        ({"global_padding": "valid"}, "global_padding"),  # breaks the reference's residual adds
        ({"out_features": ["stage1", "stage2"]}, "out_features"),
        ({"out_features": ["stage9"]}, "stage9"),
    ],
)
def test_invalid_backbone_config(bad, match):
    with pytest.raises(ValueError, match=match):
        DPTConfig(is_hybrid=True, backbone_config=dict(BOTTLENECK, **bad))


def test_featmap_channels_must_match_backbone():
    cfg = DPTConfig.from_dict(dict(hybrid_config(BOTTLENECK).to_dict(), backbone_featmap_shape=[1, 32, 4, 4]))
    with pytest.raises(ValueError, match="backbone_featmap_shape"):
        dpt_mlx.DPTModel(cfg)


def test_token_grid_is_ceil():
    ours = dpt_mlx.DPTModel(DPTConfig.from_dict(hybrid_config(BOTTLENECK).to_dict()))
    assert ours.embeddings.patch_size == 16
    assert ours.embeddings.token_grid(384, 384) == (24, 24)
    assert ours.embeddings.token_grid(50, 70) == (4, 5)
    tokens, grid, maps = ours.embeddings(mx.zeros((1, 50, 70, 3)))
    assert grid == (4, 5) and tokens.shape == (1, 1 + 4 * 5, 32) and maps[1].shape[1:3] == (7, 9)

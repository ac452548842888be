"""Depth Anything V1 / V2 (relative and metric): parity with transformers on tiny perturbed checkpoints
shaped like the hub's, and the config."""

import json

import numpy as np
import pytest
import torch
import transformers
from helpers import TOL, open_final_relu, perturb, pixels, rel_err
from model_configs import depth_anything_config

import dpt_mlx
from dpt_mlx.configs.dpt import DepthAnythingConfig
from dpt_mlx.configs.load import config_from_dict

# The hub checkpoints at reduced width: same layer count, out_indices and flags as the -small-hf
# configs (Dinov2 12 layers, image_size 518 -> 42 here, apply_layernorm default True,
# reshape_hidden_states False; reassemble_factors [4, 2, 1, 0.5], head_hidden_size 32).
#   V1  LiheYoung/depth-anything-small-hf:                 out_indices [9, 10, 11, 12], relative
#   V2  depth-anything/Depth-Anything-V2-Small-hf:         out_indices [3, 6, 9, 12],   relative
#   V2  depth-anything/Depth-Anything-V2-Metric-Indoor-*:  metric, max_depth 20 (Outdoor: 80)
# Hidden 384 -> 24, neck_hidden_sizes [48, 96, 192, 384] -> [6, 12, 24, 24], fusion 64 -> 16.
VARIANTS = {
    "v1-relative": dict(out_indices=[9, 10, 11, 12]),
    "v2-relative": dict(out_indices=[3, 6, 9, 12]),
    "v2-metric-indoor": dict(out_indices=[3, 6, 9, 12], depth_estimation_type="metric", max_depth=20),
    "v2-metric-outdoor-swiglu": dict(
        out_indices=[3, 6, 9, 12],
        depth_estimation_type="metric",
        max_depth=80,
        use_swiglu_ffn=True,
        layerscale_value=0.1,
    ),
}
# (H, W): the config grid (3x3), smaller non-square, larger and not a multiple of 14 (output 56x28).
SHAPES = [(42, 42), (28, 42), (57, 29)]


def make(tmp_path, variant, seed=0):
    torch.manual_seed(seed)
    ref = transformers.DepthAnythingForDepthEstimation(depth_anything_config(**VARIANTS[variant]))
    ref.set_attn_implementation("eager")  # SDPA returns no attention probabilities
    ref = perturb(ref, seed=seed)
    if ref.config.depth_estimation_type == "relative":
        with torch.no_grad():  # keep the final ReLU open on most pixels
            ref.head.conv3.bias.fill_(1.0)
    ref.save_pretrained(tmp_path)
    return ref


@pytest.mark.parity
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_depth_anything_parity(tmp_path, variant):
    ref = make(tmp_path, variant)
    ours = dpt_mlx.load_model(tmp_path)
    assert type(ours) is dpt_mlx.DepthAnythingForDepthEstimation
    for h, w in SHAPES:
        x = pixels(2, h, w, seed=h)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
        got = ours(x, output_hidden_states=True, output_attentions=True)
        depth = expected.predicted_depth
        assert depth.shape == (2, h // 14 * 14, w // 14 * 14)
        # Guard against a vacuous match: ReLU not all zero, sigmoid not saturated.
        assert float((depth > 0).float().mean()) > 0.5 and float(depth.std()) > 1e-3 * float(depth.abs().max())
        assert rel_err(got.predicted_depth, depth) <= TOL
        assert len(got.hidden_states) == len(expected.hidden_states) == 13
        for a, b in zip(got.hidden_states, expected.hidden_states):
            assert rel_err(a, b) <= TOL
        for a, b in zip(got.attentions, expected.attentions, strict=True):
            assert rel_err(a, b) <= TOL
    out = ours(pixels(1, 28, 28))
    assert out.hidden_states is None and out.attentions is None


@pytest.mark.parity
def test_null_max_depth_and_mlx_round_trip(tmp_path):
    """Relative checkpoints converted by transformers 4.x carry "max_depth": null, meaning 1; and a
    checkpoint re-saved by dpt_mlx (MLX layout) loads back to the same outputs."""
    ref = make(tmp_path / "ref", "v1-relative", seed=1)
    path = tmp_path / "ref" / "config.json"
    data = json.loads(path.read_text())
    data["max_depth"] = None
    path.write_text(json.dumps(data))
    ours = dpt_mlx.DepthAnythingForDepthEstimation.from_pretrained(tmp_path / "ref")
    x = pixels(1, 28, 42)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).predicted_depth
    assert rel_err(ours(x).predicted_depth, expected) <= TOL
    ours.save_pretrained(tmp_path / "mlx")
    again = dpt_mlx.load_model(tmp_path / "mlx")
    assert np.array_equal(np.array(again(x).predicted_depth), np.array(ours(x).predicted_depth))


def test_config_defaults_match_reference():
    ref = transformers.DepthAnythingConfig()
    ours = DepthAnythingConfig()
    for name in (
        "patch_size",
        "reassemble_hidden_size",
        "fusion_hidden_size",
        "head_in_index",
        "head_hidden_size",
        "depth_estimation_type",
        "max_depth",
    ):
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.reassemble_factors == list(ref.reassemble_factors)
    assert ours.neck_hidden_sizes == list(ref.neck_hidden_sizes)
    backbone = ref.backbone_config
    for key, value in ours.backbone_config.items():
        assert getattr(backbone, key) == value, key
    # A config that round-trips through transformers' JSON reads back the same.
    assert config_from_dict(ref.to_dict()).backbone_config["out_indices"] == [9, 10, 11, 12]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth_estimation_type="absolute"), "absolute"),
        (dict(max_depth=-1), "max_depth"),
        (dict(reassemble_factors=[4, 2, 1]), "reassemble_factors"),
        (dict(reassemble_factors=[4, 2, 1, 0.3]), "0.3"),
        (dict(head_in_index=4), "head_in_index"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DepthAnythingConfig(**kwargs)


def test_model_rejects_inconsistent_backbone():
    backbone = {
        "model_type": "dinov2",
        "hidden_size": 32,
        "num_attention_heads": 2,
        "num_hidden_layers": 4,
        "out_indices": [1, 2, 3, 4],
        "reshape_hidden_states": False,
    }
    with pytest.raises(ValueError, match="reassemble_hidden_size"):
        dpt_mlx.DepthAnythingForDepthEstimation(DepthAnythingConfig(backbone_config=backbone))
    backbone["out_indices"] = [2, 4]
    with pytest.raises(ValueError, match="feature maps"):
        dpt_mlx.DepthAnythingForDepthEstimation(
            DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32)
        )
    with pytest.raises(dpt_mlx.UnsupportedModelError, match="'beit2'"):
        dpt_mlx.DepthAnythingForDepthEstimation(DepthAnythingConfig(backbone_config={"model_type": "beit2"}))


# Distill-Any-Depth (xingyang1/Distill-Any-Depth-{Small,Base,Large}-hf) are Depth Anything checkpoints
# (model_type depth_anything, relative, head_hidden_size 32, reassemble_factors [4, 2, 1, 0.5]). Their
# shapes, from the authors' code (Westlake-AGI-Lab/Distill-Any-Depth, tools/testers/infer.py model_kwargs and
# the intermediate_layer_idx of depth_anything_v2/dpt.py and modeling/archs/dam/dam.py; out_indices = idx + 1):
#   Small: DINOv2 ViT-S/14 (384 wide, 12 layers, 6 heads), out_indices [3, 6, 9, 12], neck [48, 96, 192, 384],
#          fusion 64 -- built here at full size
#   Base:  DINOv2 ViT-B/14 (768, 12 layers, 12 heads), out_indices [3, 6, 9, 12], neck [96, 192, 384, 768],
#          fusion 128 -- here 48 wide, neck [6, 12, 24, 48], fusion 16
#   Large: DINOv2 ViT-L/14 (1024, 24 layers, 16 heads), out_indices [5, 12, 18, 24], neck [256, 512, 1024, 1024],
#          fusion 256 -- here 32 wide, neck [8, 16, 32, 32], fusion 16
# Every one keeps its layer count, out_indices, the neck's last width equal to the backbone's, and image_size 518.
DISTILL_ANY_DEPTH = {
    "small": dict(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        out_indices=[3, 6, 9, 12],
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
    ),
    "base": dict(
        hidden_size=48,
        num_hidden_layers=12,
        num_attention_heads=4,
        out_indices=[3, 6, 9, 12],
        neck_hidden_sizes=[6, 12, 24, 48],
        fusion_hidden_size=16,
    ),
    "large": dict(
        hidden_size=32,
        num_hidden_layers=24,
        num_attention_heads=2,
        out_indices=[5, 12, 18, 24],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
    ),
}


@pytest.mark.parity
@pytest.mark.parametrize("size", list(DISTILL_ANY_DEPTH))
def test_distill_any_depth_shapes_load_and_match(tmp_path, size):
    shape = dict(DISTILL_ANY_DEPTH[size])
    neck, fusion = shape.pop("neck_hidden_sizes"), shape.pop("fusion_hidden_size")
    backbone = transformers.Dinov2Config(
        **shape, intermediate_size=4 * shape["hidden_size"], image_size=518, patch_size=14, reshape_hidden_states=False
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=shape["hidden_size"],
        neck_hidden_sizes=neck,
        fusion_hidden_size=fusion,
        head_hidden_size=32,
        depth_estimation_type="relative",
    )
    torch.manual_seed(0)
    ref = transformers.DepthAnythingForDepthEstimation(config)
    ref.set_attn_implementation("eager")
    ref = perturb(ref, scale=0.02 if size == "small" else 0.1)  # at full width 0.1 would swamp the init
    ref = open_final_relu(ref, pixels(2, 42, 56))
    ref.save_pretrained(tmp_path)
    ours = dpt_mlx.load_model(tmp_path)
    assert type(ours) is dpt_mlx.DepthAnythingForDepthEstimation
    for h, w in [(42, 42), (42, 56)]:
        x = pixels(2, h, w, seed=w)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x), output_hidden_states=True)
        got = ours(x, output_hidden_states=True)
        depth = expected.predicted_depth
        assert float((depth > 0).float().mean()) > 0.5 and float(depth.std()) > 1e-3 * float(depth.abs().max())
        assert rel_err(got.predicted_depth, depth) <= TOL
        assert len(got.hidden_states) == len(expected.hidden_states) == shape["num_hidden_layers"] + 1
        assert rel_err(got.hidden_states[-1], expected.hidden_states[-1]) <= TOL

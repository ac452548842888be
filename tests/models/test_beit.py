"""Parity of DPT with a BEiT backbone (DPT-BEiT) with transformers, on tiny perturbed checkpoints."""

import pytest
import torch
import transformers
from helpers import TOL, perturb, pixels, rel_err

import dpt_mlx
from dpt_mlx.errors import UnsupportedModelError

pytestmark = pytest.mark.parity

PATCH = 8
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def beit_dict(**overrides):
    """Shaped like Intel/dpt-beit-large-512's backbone_config at reduced width: per-layer relative position
    bias, layer scale 0.1, mean pooling (no final norm), token outputs; 4 layers, every one an output
    (the hub's is 24 layers with outputs stage6/12/18/24)."""
    backbone = dict(
        model_type="beit",
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        image_size=32,
        patch_size=PATCH,
        use_relative_position_bias=True,
        layer_scale_init_value=0.1,
        reshape_hidden_states=False,
        out_features=STAGES,
    )
    backbone.update(overrides)
    return backbone


def make(tmp_path, seed=0, **overrides):
    config = transformers.DPTConfig(
        backbone_config=beit_dict(**overrides),
        hidden_size=32,
        num_attention_heads=4,
        neck_hidden_sizes=[8, 16, 24, 32],
        fusion_hidden_size=16,
        readout_type="project",
    )
    config._attn_implementation = "eager"  # SDPA returns no attention probabilities
    config.backbone_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    ref = perturb(transformers.DPTForDepthEstimation(config), seed=seed)
    ref.save_pretrained(tmp_path)
    return ref, dpt_mlx.DPTForDepthEstimation.from_pretrained(tmp_path)


def check(ref, ours, batch, height, width, seed=0):
    x = pixels(batch, height, width, seed=seed)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
    # without attention probabilities asked for, the CPU path gathers the bias inside its kernel
    assert rel_err(ours(x).predicted_depth, expected.predicted_depth) <= TOL
    got = ours(x, output_hidden_states=True, output_attentions=True)
    assert rel_err(got.predicted_depth, expected.predicted_depth) <= TOL
    layers = ref.config.backbone_config.num_hidden_layers
    assert len(got.hidden_states) == len(expected.hidden_states) == layers + 1
    for a, b in zip(got.hidden_states, expected.hidden_states):
        assert rel_err(a, b) <= TOL
    assert len(got.attentions) == len(expected.attentions) == layers
    for a, b in zip(got.attentions, expected.attentions):
        assert rel_err(a, b) <= TOL


@pytest.fixture(scope="module")
def hub_like(tmp_path_factory):
    return make(tmp_path_factory.mktemp("beit"))


# The relative position bias table is resized bilinearly for every grid other than the config's (4x4):
# larger, smaller, non-square, and a size that is not a multiple of the patch (the patch conv floors it).
@pytest.mark.parametrize("size", [(32, 32), (48, 40), (24, 56), (44, 36)])
def test_depth_per_layer_bias_batch2(hub_like, size):
    check(*hub_like, 2, *size)


@pytest.mark.parametrize(
    "variant",
    [
        # a shared table only, absolute position embeddings (resized bicubically), no layer scale, a final
        # norm that feeds no feature (use_mean_pooling=False), a mask token that loads but is unused
        dict(
            use_relative_position_bias=False,
            use_shared_relative_position_bias=True,
            layer_scale_init_value=0.0,
            use_absolute_position_embeddings=True,
            use_mean_pooling=False,
            use_mask_token=True,
        ),
        # shared and per-layer tables together, outputs at a subset of layers
        dict(
            use_shared_relative_position_bias=True,
            num_hidden_layers=6,
            out_features=["stage2", "stage3", "stage5", "stage6"],
        ),
        # a non-square config grid (4x6): the reference lays the table out as (width, height) before resizing
        dict(image_size=[32, 48]),
    ],
    ids=["shared-abs", "shared+per-layer", "non-square-config"],
)
@pytest.mark.parametrize("size", [(32, 32), (40, 48)])
def test_depth_bias_variants(tmp_path, variant, size):
    ref, ours = make(tmp_path, seed=1, **variant)
    check(ref, ours, 2, *size, seed=1)


def dpt_config(**backbone):
    return dpt_mlx.DPTConfig.from_dict(
        dict(
            backbone_config=beit_dict(**backbone),
            hidden_size=32,
            num_attention_heads=4,
            neck_hidden_sizes=[8, 16, 24, 32],
        )
    )


def test_backbone_shape_and_hidden_size():
    model = dpt_mlx.DPTForDepthEstimation(dpt_config())
    assert model.backbone.hidden_size == 32
    assert model.neck.reassemble_stage is not None


@pytest.mark.parametrize(
    "backbone, error",
    [
        (dict(reshape_hidden_states=True), UnsupportedModelError),  # the DPT neck needs token sequences
        (dict(add_fpn=True, out_indices=[1, 2, 3, 4], out_features=None), UnsupportedModelError),
        (dict(out_features=["stage1", "stage2"]), ValueError),  # 2 features for a 4-stage neck
        (dict(out_features=["stage9"]), ValueError),
    ],
)
def test_unusable_configs_fail_clearly(backbone, error):
    with pytest.raises(error):
        dpt_mlx.DPTForDepthEstimation(dpt_config(**backbone))


def test_hub_layout_with_index_buffers(tmp_path):
    """Hub DPT-BEiT checkpoints (converted with transformers 4.x) also store each layer's relative_position_index."""
    from safetensors.torch import load_file, save_file

    ref, _ = make(tmp_path, seed=2)
    weights = load_file(tmp_path / "model.safetensors")
    for i in range(ref.config.backbone_config.num_hidden_layers):
        prefix = f"backbone.encoder.layer.{i}.attention.attention.relative_position_bias."
        assert prefix + "relative_position_bias_table" in weights
        weights[prefix + "relative_position_index"] = torch.zeros(17, 17, dtype=torch.long)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours = dpt_mlx.DPTForDepthEstimation.from_pretrained(tmp_path)
    x = pixels(1, 40, 32, seed=2)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).predicted_depth
    assert rel_err(ours(x).predicted_depth, expected) <= TOL

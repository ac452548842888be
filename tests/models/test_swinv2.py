"""Parity of DPT with a Swinv2 backbone (DPT-SwinV2) with transformers, on tiny perturbed checkpoints."""

import pytest
import torch
import transformers
from helpers import TOL, perturb, pixels, rel_err
from transformers.models.swinv2.modeling_swinv2 import Swinv2SelfAttention

import dpt_mlx
from dpt_mlx.errors import UnsupportedModelError

pytestmark = pytest.mark.parity

STAGES = ["stage1", "stage2", "stage3", "stage4"]
NECK = [16, 32, 64, 128]

# Shaped like Intel/dpt-swinv2-tiny-256 at reduced width: the hub's 64x64 patch grid with window 16 becomes
# 16x16 with window 4, so again stage 3's resolution equals the window (no shift) and stage 4's window is
# clamped to its resolution; pretrained windows 0; depths (2,2,6,2) -> (2,2,2,2).
TINY = dict(image_size=64, window_size=4, pretrained_window_sizes=[0, 0, 0, 0])
# Shaped like dpt-swinv2-{base,large}-384: pretrained windows set (hub (12,12,12,6) for window 24).
BASE = dict(image_size=64, window_size=8, pretrained_window_sizes=[4, 4, 4, 2])


def swinv2_dict(**overrides):
    backbone = dict(
        model_type="swinv2",
        patch_size=4,
        embed_dim=16,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 2, 4],
        out_features=STAGES,
    )
    backbone.update(overrides)
    return backbone


def make(tmp_path, seed=0, neck=NECK, **overrides):
    config = transformers.DPTConfig(
        backbone_config=swinv2_dict(**overrides),
        neck_hidden_sizes=neck,
        reassemble_factors=[4, 2, 1, 0.5][: len(neck)],
        fusion_hidden_size=16,
    )
    torch.manual_seed(seed)
    ref = perturb(transformers.DPTForDepthEstimation(config), seed=seed)
    with torch.no_grad():  # non-persistent buffers: not in the checkpoint, rebuilt from the config on load
        for module in ref.modules():
            if isinstance(module, Swinv2SelfAttention):
                module.relative_coords_table.copy_(module.create_coords_table_and_index()[0])
    ref.save_pretrained(tmp_path)
    return ref, dpt_mlx.DPTForDepthEstimation.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {
        name: make(tmp_path_factory.mktemp(name), seed=i, **cfg)
        for i, (name, cfg) in enumerate([("tiny", TINY), ("base", BASE)])
    }


# 64x64 is the config's size; 78x50 is a multiple of neither the patch (4) nor the window, so the input,
# every stage's windows and the patch merging pad; 40x72 is non-square.
@pytest.mark.parametrize("size", [(64, 64), (78, 50), (40, 72)])
@pytest.mark.parametrize("name", ["tiny", "base"])
def test_depth_batch2(checkpoints, name, size):
    ref, ours = checkpoints[name]
    x = pixels(2, *size)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
    got = ours(x, output_hidden_states=True, output_attentions=True)
    assert rel_err(got.predicted_depth, expected.predicted_depth) <= TOL
    assert len(got.hidden_states) == len(expected.hidden_states) == 5  # embeddings + 4 stages, (B, H*W, C)
    for a, b in zip(got.hidden_states, expected.hidden_states):
        assert rel_err(a, b) <= TOL
    assert len(got.attentions) == len(expected.attentions) == 4  # the last block of each stage
    for a, b in zip(got.attentions, expected.attentions):
        assert rel_err(a, b) <= TOL


def test_stem_and_subset_of_stages(tmp_path):
    # the patch embeddings ("stem") as a feature map, three maps for a three-stage neck
    ref, ours = make(tmp_path, seed=3, neck=[16, 32, 64], out_features=["stem", "stage2", "stage3"], **TINY)
    x = pixels(1, 52, 60, seed=3)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).predicted_depth
    assert rel_err(ours(x).predicted_depth, expected) <= TOL


def dpt_config(neck=NECK, **backbone):
    return dpt_mlx.DPTConfig.from_dict(dict(backbone_config=swinv2_dict(**TINY, **backbone), neck_hidden_sizes=neck))


def test_no_reassemble_stage():
    model = dpt_mlx.DPTForDepthEstimation(dpt_config())
    assert model.neck.reassemble_stage is None
    assert model.backbone.hidden_size == 128


@pytest.mark.parametrize(
    "backbone, neck, error",
    [
        # transformers adds (1, N+1, C) embeddings to N tokens: it cannot run this either
        (dict(use_absolute_embeddings=True), NECK, UnsupportedModelError),
        (dict(), [16, 32, 64, 64], ValueError),  # stage 4 has 128 channels
        (dict(out_features=["stage5"]), NECK, ValueError),
    ],
)
def test_unusable_configs_fail_clearly(backbone, neck, error):
    with pytest.raises(error):
        dpt_mlx.DPTForDepthEstimation(dpt_config(neck, **backbone))

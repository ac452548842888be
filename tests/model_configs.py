"""Tiny configs and perturbed checkpoints shaped like the hub's, shared by the tests of several
modules (the reference's classes from transformers)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import torch
import transformers
from helpers import open_final_relu, perturb, pixels
from transformers.models.swinv2.modeling_swinv2 import Swinv2SelfAttention
from transformers.models.tipsv2_dpt.modeling_tipsv2_dpt import Tipsv2DptFeaturesToDepth

PATCH = 8


def tiny_config(**overrides):
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        image_size=32,
        patch_size=PATCH,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 24, 32],
        fusion_hidden_size=16,
        num_labels=5,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    kwargs.update(overrides)
    config = transformers.DPTConfig(**kwargs)
    config._attn_implementation = "eager"  # SDPA returns no attention probabilities
    return config


def depth_anything_config(out_indices, depth_estimation_type="relative", max_depth=1, **backbone_overrides):
    backbone = transformers.Dinov2Config(
        hidden_size=24,
        num_hidden_layers=12,
        num_attention_heads=2,
        image_size=42,
        patch_size=14,
        out_indices=out_indices,
        reshape_hidden_states=False,
        **backbone_overrides,
    )
    return transformers.DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=24,
        neck_hidden_sizes=[6, 12, 24, 24],
        fusion_hidden_size=16,
        head_hidden_size=32,
        depth_estimation_type=depth_estimation_type,
        max_depth=max_depth,
    )


# The hub checkpoints at reduced width, with their layer count, out_indices and flags (transformers'
# convert_prompt_depth_anything_to_hf.py: Dinov2Config of facebook/dinov2-small / -large, apply_layernorm,
# reshape_hidden_states False; depth_estimation_type "metric", max_depth null; reassemble_factors
# [4, 2, 1, 0.5], head_hidden_size 32):
#   depth-anything/prompt-depth-anything-vits-hf (and -vits-transparent-hf): 12 layers, out_indices
#       [3, 6, 9, 12], hidden 384 -> 24, neck [48, 96, 192, 384] -> [6, 12, 24, 24], fusion 64 -> 16
#   depth-anything/prompt-depth-anything-vitl-hf: 24 layers, out_indices [5, 12, 18, 24], hidden 1024 -> 32,
#       neck [256, 512, 1024, 1024] -> [8, 16, 32, 32], fusion 256 -> 16, image_size 518 as on the hub
# "relative" is the reference config's default (a ReLU head); no released checkpoint uses it.
PDA_VARIANTS = {
    "vits": dict(hidden=24, layers=12, out_indices=[3, 6, 9, 12], neck=[6, 12, 24, 24], image_size=42),
    "vitl": dict(hidden=32, layers=24, out_indices=[5, 12, 18, 24], neck=[8, 16, 32, 32], image_size=518),
    "vits-relative": dict(
        hidden=24,
        layers=12,
        out_indices=[3, 6, 9, 12],
        neck=[6, 12, 24, 24],
        image_size=42,
        depth_estimation_type="relative",
        max_depth=1,
    ),
}


def pda_config(hidden, layers, out_indices, neck, image_size, depth_estimation_type="metric", max_depth=None):
    backbone = transformers.Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=4 * hidden,
        image_size=image_size,
        patch_size=14,
        out_indices=out_indices,
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return transformers.PromptDepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=hidden,
        neck_hidden_sizes=neck,
        fusion_hidden_size=16,
        head_hidden_size=32,
        depth_estimation_type=depth_estimation_type,
        max_depth=max_depth,
    )


def spread_head(ref, x, prompt, spread=1.5):
    """Rescale the head's last conv so its pre-activation has mean 0 and std ``spread`` on this input: the
    sigmoid neither saturates nor stays linear around 0.5, and the ReLU passes about half the pixels."""
    conv, seen = ref.head.conv3, []
    hook = conv.register_forward_hook(lambda mod, inp, out: seen.append(out))
    with torch.no_grad():
        ref(torch.from_numpy(x), prompt_depth=torch.from_numpy(prompt))
        hook.remove()
        z = seen[0]
        a = spread / float(z.std())
        conv.weight.mul_(a)
        conv.bias.copy_(a * (conv.bias - float(z.mean())))
    return ref


# The hub checkpoints (transformers' convert_zoedepth_to_hf.py) at reduced width: BEiT-L with per-layer
# relative position bias, layer scale 0.1, token outputs every quarter of the layers (24 layers, stage6/12/18/24
# -> 8 layers, stage2/4/6/8), image 384 / patch 16 (grid 24) -> 32 / 8 (grid 4); neck [256, 512, 1024, 1024] ->
# [8, 16, 32, 32], fusion and bottleneck 256 -> 16, relative features 32 -> 8, bin embedding 128 -> 16; the
# hub's 64 bins and attractors [16, 8, 4, 1]. The patch transformer of nyu-kitti keeps its 4 layers, 128 width
# (the domain classifier requires it) and 4 heads; its intermediate 1024 -> 64.
NYU = {"n_bins": 64, "min_depth": 0.001, "max_depth": 10.0, "name": "nyu"}


KITTI = {"n_bins": 64, "min_depth": 0.001, "max_depth": 80.0, "name": "kitti"}


MULTI = dict(
    bin_configurations=[NYU, KITTI],
    num_patch_transformer_layers=4,
    patch_transformer_hidden_size=128,
    patch_transformer_intermediate_size=64,
    patch_transformer_num_attention_heads=4,
)


ZOE_VARIANTS = {
    "nyu": dict(bin_centers_type="softplus", bin_configurations=[NYU]),  # Intel/zoedepth-nyu
    "kitti": dict(bin_centers_type="normed", bin_configurations=[KITTI]),  # Intel/zoedepth-kitti
    "nyu-kitti": dict(bin_centers_type="softplus", **MULTI),  # Intel/zoedepth-nyu-kitti
    "nyu-kitti-normed": dict(bin_centers_type="normed", **MULTI),
}


HEAD_SCALE = 3.0  # perturbed random heads give a near-constant depth; this makes it vary across the image


def zoe_beit_dict(**overrides):
    backbone = dict(
        model_type="beit",
        hidden_size=32,
        num_hidden_layers=8,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        use_relative_position_bias=True,
        layer_scale_init_value=0.1,
        reshape_hidden_states=False,
        out_features=["stage2", "stage4", "stage6", "stage8"],
    )
    backbone.update(overrides)
    return backbone


def zoe_config(backbone=None, **overrides):
    kwargs = dict(
        backbone_config=backbone or zoe_beit_dict(),
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        bottleneck_features=16,
        num_relative_features=8,
        bin_embedding_dim=16,
    )
    kwargs.update(overrides)
    return transformers.ZoeDepthConfig(**kwargs)


def make_zoedepth(path, config, seed=0, x=None) -> torch.nn.Module:
    """A perturbed reference (heads scaled, relative depth ReLU open on most pixels of ``x``), saved in ``path``."""
    torch.manual_seed(seed)
    ref = transformers.ZoeDepthForDepthEstimation(config)
    ref.set_attn_implementation("eager")  # SDPA returns no attention probabilities
    ref = perturb(ref, seed=seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            # the bins path only: scaled, the domain classifier's logits would amplify float32 rounding
            if name.startswith(("metric_head.", "relative_head.")) and ".patch_transformer." not in name:
                p.mul_(HEAD_SCALE)
        for module in ref.modules():  # non-persistent buffers, rebuilt from the config on load
            if isinstance(module, Swinv2SelfAttention):
                module.relative_coords_table.copy_(module.create_coords_table_and_index()[0])
    seen = []
    hook = ref.relative_head.conv3.register_forward_hook(lambda mod, inp, out: seen.append(out))  # before its ReLU
    with torch.no_grad():
        ref(torch.from_numpy(pixels(2, 32, 32) if x is None else x))
        hook.remove()
        ref.relative_head.conv3.bias.sub_(torch.quantile(seen[0].flatten(), 0.1))  # relative depth > 0 on ~90%
    ref.save_pretrained(path)
    return ref


def precision_dpt_config(**overrides) -> transformers.DPTConfig:
    kwargs = dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 32, 64, 64],
        fusion_hidden_size=32,
        num_labels=5,
        layer_norm_eps=1e-12,
    )
    kwargs.update(overrides)
    return transformers.DPTConfig(**kwargs)


def precision_depth_anything_config() -> transformers.DepthAnythingConfig:
    backbone = transformers.Dinov2Config(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=42,
        patch_size=14,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    return transformers.DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=64,
        neck_hidden_sizes=[16, 32, 64, 64],
        fusion_hidden_size=32,
        head_hidden_size=16,
    )


# kind -> (reference class, config, input size)
PRECISION_KINDS = {
    "dpt": (
        transformers.DPTForDepthEstimation,
        lambda: precision_dpt_config(),
        (32, 32),
    ),  # the reference's DPT: square
    "dpt-segmentation-bn": (
        transformers.DPTForSemanticSegmentation,
        lambda: precision_dpt_config(use_batch_norm_in_fusion_residual=True),
        (32, 32),
    ),
    "depth-anything": (transformers.DepthAnythingForDepthEstimation, precision_depth_anything_config, (42, 56)),
}


def build_precision_checkpoint(tmp_path, kind: str, seed: int = 0):
    """Save a perturbed tiny reference checkpoint; return (directory, input pixels)."""
    cls, config, (h, w) = PRECISION_KINDS[kind]
    torch.manual_seed(seed)
    ref = perturb(cls(config()), seed=seed)
    x = pixels(2, h, w, seed=seed)
    if kind != "dpt-segmentation-bn":
        open_final_relu(ref, x)
    path = tmp_path / kind
    ref.save_pretrained(path)
    return path, x


def model_output(model, x) -> mx.array:
    out = model(x)
    return out.logits if "logits" in out else out.predicted_depth


# ----------------------------------------------------------------------------------------------
# Depth Pro

# apple/DepthPro-hf (transformers' convert_depth_pro_weights_to_hf.py): the same DINOv2 for the patch, image
# and field-of-view encoders (24 layers, 1024 wide, 16 heads, patch 16, image 384 = patch_size, no mask
# token), hooks [11, 5], scaled images [0.25, 0.5, 1] with overlaps [0, 0.5, 0.25], the field-of-view model on.
# At reduced width: hidden 1024 -> 32 (4 heads), 12 layers (the hooks need them), patch_size 384 -> 64 with
# DINOv2 patch 16 -> 16 (a 4x4 token grid instead of 24x24, so the merge crop is capped at grid // 4 = 1),
# fusion 256 -> 16, scaled_images_feature_dims [1024, 1024, 512] -> [32, 32, 16], intermediate_feature_dims
# [256, 256] -> [16, 16] (= fusion: the last projection is the identity, as on the hub).
# The other variants switch what the hub's does not: a merge crop below its cap (token grid 8), the
# intermediate layers merged from patches of two scales, three ratios that do not halve, no field-of-view
# head, BatchNorm in the fusion units without biases, a mask token, no hooks, one field-of-view layer.
DEPTH_PRO_VARIANTS = {
    "hub": dict(
        encoder=dict(num_hidden_layers=12, patch_size=16, use_mask_token=False),
        patch_size=64,
        intermediate_hook_ids=[11, 5],
        intermediate_feature_dims=[16, 16],
        scaled_images_feature_dims=[32, 32, 16],
        use_fov_model=True,
    ),
    "no-fov-bn": dict(
        encoder=dict(num_hidden_layers=4, patch_size=4),
        patch_size=32,
        intermediate_hook_ids=[3],
        intermediate_feature_dims=[8],
        scaled_images_ratios=[0.5, 0.75, 1],
        scaled_images_overlap_ratios=[0.0, 0.5, 0.0],
        scaled_images_feature_dims=[16, 8, 8],
        merge_padding_value=1,
        use_batch_norm_in_fusion_residual=True,
        use_bias_in_fusion_residual=False,
        use_fov_model=False,
    ),
    "two-scales": dict(
        encoder=dict(num_hidden_layers=2, patch_size=8, use_mask_token=False),
        patch_size=32,
        intermediate_hook_ids=[],
        intermediate_feature_dims=[],
        scaled_images_ratios=[0.5, 1],
        scaled_images_overlap_ratios=[0.25, 0.5],
        scaled_images_feature_dims=[16, 16],
        num_fov_head_layers=1,
        use_fov_model=True,
    ),
}


def depth_pro_config(encoder, **overrides) -> transformers.DepthProConfig:
    """A tiny Depth Pro config: one DINOv2 shape (``encoder`` on a 32-wide, 4-head base) for all three encoders."""
    sub = dict(model_type="dinov2", hidden_size=32, num_attention_heads=4, **encoder)
    kwargs = dict(
        fusion_hidden_size=16,
        image_model_config=dict(sub),
        patch_model_config=dict(sub),
        fov_model_config=dict(sub),
    )
    kwargs.update(overrides)
    return transformers.DepthProConfig(**kwargs)


def _open_relus(model, convs, x, share: float = 0.9) -> None:
    """Shift each conv's bias so that the ReLU after it passes ``share`` of its outputs on ``x`` (in order)."""
    seen = []
    for conv in convs:
        seen.clear()  # copies: the reference's ReLUs after these convs work in place
        hook = conv.register_forward_hook(lambda mod, inp, out: seen.append(out.clone()))
        with torch.no_grad():
            model(torch.from_numpy(x))
            hook.remove()
            conv.bias.sub_(torch.quantile(seen[0].flatten(), 1 - share))


def make_depth_pro(path, config, x, seed=0) -> torch.nn.Module:
    """A perturbed reference whose depth ReLU and field-of-view ReLUs are open on most of ``x``, saved in ``path``."""
    torch.manual_seed(seed)
    ref = transformers.DepthProForDepthEstimation(config)
    ref.set_attn_implementation("eager")  # SDPA returns no attention probabilities
    ref = perturb(ref, seed=seed)
    if ref.fov_model is not None:
        convs = [m for m in ref.fov_model.head.layers if isinstance(m, torch.nn.Conv2d)][:-1]
        _open_relus(ref, [ref.fov_model.conv, *convs], x)
    open_final_relu(ref, x)
    ref.save_pretrained(path)
    return ref


# ----------------------------------------------------------------------------------------------
# CHMv2 (facebook/dinov3-vitl16-chmv2-dpt-head)

CHMV2_PATCH = 4


def chmv2_config(backbone=None, **overrides) -> transformers.CHMv2Config:
    """The hub checkpoint's shape at reduced width: its backbone_config's switches (4 registers, key bias,
    layer_norm_eps 1e-6, normed maps with their CLS tokens from every quarter of the layers: 24 layers at
    6/12/18/24 -> 4 at 1/2/3/4), image 416 / patch 16 -> 16 / 4; its head (channels [128, 256, 512, 1024]
    -> [8, 16, 24, 32], fusion 256 -> 8, head 128 -> 8, 256 bins -> 16) and its mixlog bins from 0.001 to
    96 m."""
    kwargs = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=16,
        patch_size=CHMV2_PATCH,
        num_register_tokens=4,
        key_bias=True,
        layer_norm_eps=1e-6,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=True,
        apply_layernorm=True,
        return_class_token=True,
    )
    kwargs.update(backbone or {})
    settings = dict(
        patch_size=CHMV2_PATCH,
        post_process_channels=[8, 16, 24, 32],
        fusion_hidden_size=8,
        head_hidden_size=8,
        number_output_channels=16,
    )
    settings.update(overrides)
    return transformers.CHMv2Config(backbone_config=transformers.DINOv3ViTConfig(**kwargs), **settings)


def spread_chmv2_logits(ref, x: np.ndarray, spread: float = 2.0):
    """Rescale each output channel of the head's last conv to mean 0 and std ``spread`` over this input:
    a perturbed head's logits barely vary over the image, so every pixel would weigh the bins alike and
    the heights would be nearly constant. Spread, the ReLU cuts about half of them and the winning bins
    differ from pixel to pixel."""
    conv, seen = ref.head.conv_depth.head[4], []
    hook = conv.register_forward_hook(lambda mod, inp, out: seen.append(out))
    with torch.no_grad():
        ref(torch.from_numpy(x))
        hook.remove()
        z = seen[0]
        mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
        scale = spread / std
        conv.weight.mul_(scale[:, None, None, None])
        conv.bias.copy_(scale * (conv.bias - mean))
    return ref


def chmv2_reference(config, seed: int = 3):
    """A perturbed eager reference. ``inv_freq`` is a buffer derived from ``rope_theta`` that checkpoints do
    not carry (transformers recomputes it at load): it gets its formula value back."""
    torch.manual_seed(0)
    ref = perturb(transformers.CHMv2ForDepthEstimation(config), seed=seed)
    rope = ref.backbone.rope_embeddings
    with torch.no_grad():
        rope.inv_freq.copy_(1 / rope.base ** torch.arange(0, 1, 4 / rope.head_dim, dtype=torch.float32))
    ref.set_attn_implementation("eager")  # SDPA returns no attention probabilities
    if config.number_output_channels > 1:
        spread_chmv2_logits(ref, pixels(2, 32, 48, seed=seed))
    return ref


# ----------------------------------------------------------------------------------------------
# TIPSv2-DPT (google/tipsv2-b14-dpt)


def tipsv2_config(num_labels: int = 7, **backbone_overrides) -> transformers.Tipsv2DptConfig:
    """google/tipsv2-b14-dpt's shape at reduced width: 12 layers, out_indices [3, 6, 9, 12], one register,
    LayerNorm on the features; neck [96, 192, 384, 768] / 256 scaled down; a few depth bins and classes."""
    backbone = dict(
        model_type="tipsv2_vision_model",
        hidden_size=24,
        num_hidden_layers=12,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        out_indices=[3, 6, 9, 12],
        apply_layernorm=True,
        reshape_hidden_states=False,
        num_register_tokens=1,
    )
    backbone.update(backbone_overrides)
    return transformers.Tipsv2DptConfig(
        backbone_config=backbone,
        neck_hidden_sizes=[6, 12, 24, 48],
        fusion_hidden_size=16,
        num_depth_bins=12,
        num_labels=num_labels,
    )


def tipsv2_reference(cls, seed: int, **overrides):
    """A perturbed eager transformers TIPSv2-DPT ``cls`` (one of its four classes) of the tiny config."""
    torch.manual_seed(seed)
    model = cls(tipsv2_config(**overrides))
    model.set_attn_implementation("eager")  # SDPA returns no attention probabilities
    perturb(model, seed=seed)
    with torch.no_grad():  # the depth bin centres are a non-persistent buffer: not in the checkpoint, keep them
        for module in model.modules():
            if isinstance(module, Tipsv2DptFeaturesToDepth):
                module.bin_centers.copy_(torch.linspace(module.min_depth, module.max_depth, len(module.bin_centers)))
    return model

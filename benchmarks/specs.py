"""The benchmark's models: the configs of released checkpoints (not downloaded), built with transformers,
and the input size each checkpoint's image processor produces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ModelSpec:
    """A released checkpoint's shape: how to build its transformers config and the input size."""

    name: str
    checkpoint: str  # the hub checkpoint whose config this mirrors (not downloaded)
    input_size: tuple[int, int]  # (H, W) that the checkpoint's image processor produces
    input_note: str
    config: Callable[[], object] = field(repr=False)
    prompt_size: tuple[int, int] | None = None  # (h, w) of the depth prompt (Prompt Depth Anything)
    default: bool = True  # in the command's default list (the slow ones are run by name)
    folder_run: bool = True  # --folder-run applies (transformers' pipeline can run its image processor here)


def _dinov2(out_indices, apply_layernorm):
    import transformers

    return transformers.Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        out_indices=out_indices,
        apply_layernorm=apply_layernorm,
        reshape_hidden_states=False,
    )


def _dpt_large():
    import transformers

    return transformers.DPTConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        image_size=384,
        patch_size=16,
        backbone_out_indices=[5, 11, 17, 23],
        neck_hidden_sizes=[256, 512, 1024, 1024],
        readout_type="project",
        layer_norm_eps=1e-12,
        fusion_hidden_size=256,
    )


def _dpt_hybrid():
    import transformers

    return transformers.DPTConfig(
        is_hybrid=True,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=384,
        patch_size=16,
        backbone_out_indices=[2, 5, 8, 11],
        neck_hidden_sizes=[256, 512, 768, 768],
        reassemble_factors=[1, 1, 1, 0.5],
        readout_type="project",
        backbone_featmap_shape=[1, 1024, 24, 24],
        neck_ignore_stages=[0, 1],
        layer_norm_eps=1e-12,
    )


def _dpt_dinov2_small():
    import transformers

    return transformers.DPTConfig(
        backbone_config=_dinov2([3, 6, 9, 12], apply_layernorm=True),
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=256,
        add_projection=True,
        use_bias_in_fusion_residual=False,
        readout_type="project",
        reassemble_factors=[4, 2, 1, 0.5],
    )


def _depth_anything_small():
    import transformers

    return transformers.DepthAnythingConfig(
        backbone_config=_dinov2([9, 10, 11, 12], apply_layernorm=True),
        reassemble_hidden_size=384,
        patch_size=14,
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_hidden_size=32,
    )


def _depth_anything_v2_large():
    import transformers

    backbone = transformers.Dinov2Config(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        out_indices=[5, 12, 18, 24],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return transformers.DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=1024,
        patch_size=14,
        neck_hidden_sizes=[256, 512, 1024, 1024],
        fusion_hidden_size=256,
        head_hidden_size=32,
    )


def _dpt_beit_large_512():
    import transformers

    beit = transformers.BeitConfig(
        image_size=512,
        num_hidden_layers=24,
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        use_relative_position_bias=True,
        use_absolute_position_embeddings=False,
        layer_scale_init_value=0.1,
        reshape_hidden_states=False,
        out_features=["stage6", "stage12", "stage18", "stage24"],
    )
    return transformers.DPTConfig(backbone_config=beit, neck_hidden_sizes=[256, 512, 1024, 1024])


def _zoedepth_nyu_kitti():
    import transformers

    beit = transformers.BeitConfig(
        image_size=384,
        num_hidden_layers=24,
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        use_relative_position_bias=True,
        reshape_hidden_states=False,
        out_features=["stage6", "stage12", "stage18", "stage24"],
    )
    return transformers.ZoeDepthConfig(
        backbone_config=beit,
        neck_hidden_sizes=[256, 512, 1024, 1024],
        bin_centers_type="softplus",
        bin_configurations=[
            {"name": "nyu", "n_bins": 64, "min_depth": 0.001, "max_depth": 10.0},
            {"name": "kitti", "n_bins": 64, "min_depth": 0.001, "max_depth": 80.0},
        ],
        num_patch_transformer_layers=4,
        patch_transformer_hidden_size=128,
        patch_transformer_intermediate_size=1024,
        patch_transformer_num_attention_heads=4,
    )


def _prompt_depth_anything_vits():
    import transformers

    return transformers.PromptDepthAnythingConfig(
        backbone_config=_dinov2([2, 5, 8, 11], apply_layernorm=True),
        reassemble_hidden_size=384,
        patch_size=14,
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_hidden_size=32,
        depth_estimation_type="metric",
        max_depth=1,
    )


def _depth_pro():
    import transformers

    # transformers' convert_depth_pro_weights_to_hf.py: one DINOv2-L/16 at 384 pixels (no mask token) for the
    # patch, image and field-of-view encoders; every other field the config's default (apple/DepthPro-hf)
    encoder = {
        "model_type": "dinov2",
        "num_hidden_layers": 24,
        "patch_size": 16,
        "hidden_size": 1024,
        "num_attention_heads": 16,
        "image_size": 384,
        "use_mask_token": False,
    }
    return transformers.DepthProConfig(
        image_model_config=dict(encoder),
        patch_model_config=dict(encoder),
        fov_model_config=dict(encoder),
        use_fov_model=True,
    )


MODELS = {
    spec.name: spec
    for spec in [
        ModelSpec("dpt-large", "Intel/dpt-large", (384, 384), "DPTImageProcessor: resize to 384x384", _dpt_large),
        ModelSpec(
            "dpt-hybrid",
            "Intel/dpt-hybrid-midas",
            (384, 384),
            "384x384 (the reference runs hybrids at image_size only)",
            _dpt_hybrid,
        ),
        ModelSpec(
            "dpt-dinov2-small",
            "facebook/dpt-dinov2-small-nyu",
            (490, 644),
            "a 640x480 photo: no resize, padded to a multiple of 14",
            _dpt_dinov2_small,
        ),
        ModelSpec(
            "depth-anything-small", "LiheYoung/depth-anything-small-hf", (518, 518), "518x518", _depth_anything_small
        ),
        ModelSpec(
            "depth-anything-v2-large",
            "depth-anything/Depth-Anything-V2-Large-hf",
            (518, 518),
            "518x518",
            _depth_anything_v2_large,
        ),
        ModelSpec(
            "dpt-beit-large-512",
            "Intel/dpt-beit-large-512",
            (512, 512),
            "DPTImageProcessor: resize to 512x512",
            _dpt_beit_large_512,
        ),
        ModelSpec(
            "zoedepth-nyu-kitti",
            "Intel/zoedepth-nyu-kitti",
            (384, 512),
            "ZoeDepthImageProcessor: a 4:3 photo, reflect-padded, resized to 384x512",
            _zoedepth_nyu_kitti,
        ),
        ModelSpec(
            "prompt-depth-anything-vits",
            "depth-anything/prompt-depth-anything-vits-hf",
            (518, 686),
            "a 3:4 photo at 518 px, multiple of 14, with a 192x256 LiDAR-sized prompt",
            _prompt_depth_anything_vits,
            prompt_size=(192, 256),
        ),
        # Not in the default list: three ViT-L encoders (37 passes of 577 tokens an image) take minutes a
        # forward pass on a small CPU, and transformers' Depth Pro image processor needs torchvision.
        ModelSpec(
            "depth-pro",
            "apple/DepthPro-hf",
            (1536, 1536),
            "DepthProImageProcessor: normalised, then resized to 1536x1536",
            _depth_pro,
            default=False,
            folder_run=False,
        ),
    ]
}
DEFAULT_MODELS = [name for name, spec in MODELS.items() if spec.default]

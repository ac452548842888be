"""``CHMv2Config``: transformers' CHMv2 configuration (facebook/dinov3-vitl16-chmv2-dpt-head).

CHMv2 is Meta's canopy height model: a DINOv3 ViT-L/16 backbone, DPT's reassemble and fusion
stages, and a head whose bins logits become heights in metres (the "mixlog" bins, see
dpt_mlx/models/chmv2.py). The shared neck reads this config through the DPT names it expects
(``neck_hidden_sizes`` for ``post_process_channels``, ...), given as properties below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedModelError
from .base import BackboneHostConfig
from .dpt import READOUT_TYPES, check_backbone, check_neck

# The DINOv3 ViT-L/16 backbone when a config has none (transformers' CHMv2Config.sub_configs_defaults;
# other fields: DINOv3ViTConfig's). The hub checkpoint's backbone is this one.
CHMV2_BACKBONE_DEFAULTS = {
    "model_type": "dinov3_vit",
    "image_size": 416,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "num_register_tokens": 4,
    "key_bias": True,
    "out_indices": [6, 12, 18, 24],
    "reshape_hidden_states": True,
    "apply_layernorm": True,
    "layer_norm_eps": 1e-6,
    "return_class_token": True,
}
BINS_STRATEGIES = ("linear", "log", "chmv2_mixlog")
NORM_STRATEGIES = ("linear", "softmax", "sigmoid", "chmv2_mixlog")
LOG_BINS = ("log", "chmv2_mixlog")  # strategies that take the log of min_depth
MIXLOG_SCALE = 8.0  # the mixlog bins end at max_depth / 8 and their heights are scaled back by 8 (reference)


@dataclass
class CHMv2Config(BackboneHostConfig):
    """``transformers.CHMv2Config``: the same fields, defaults and meaning.

    ``number_output_channels`` is the number of height bins; ``bins_strategy`` places their
    centres between ``min_depth`` and ``max_depth`` (metres) and ``norm_strategy`` turns the
    head's logits into weights over them. ``patch_size`` is kept for fidelity: the reference
    derives a patch grid from it that its reassemble stage never reads (each stage arrives as a
    map of the backbone's own grid), so the backbone's ``patch_size`` is the one that counts.
    """

    model_type: str = "chmv2"
    backbone_config: dict[str, Any] | None = None
    patch_size: int = 16
    initializer_range: float = 0.02
    reassemble_factors: list[float] | None = None
    post_process_channels: list[int] | None = None
    fusion_hidden_size: int = 256
    head_hidden_size: int = 128
    number_output_channels: int = 256
    readout_type: str = "project"
    min_depth: float = 0.001
    max_depth: float = 96.0
    bins_strategy: str = "chmv2_mixlog"
    norm_strategy: str = "chmv2_mixlog"
    architectures: list[str] | None = None

    POSITIVE = frozenset(
        {
            "patch_size",
            "reassemble_factors",
            "post_process_channels",
            "fusion_hidden_size",
            "head_hidden_size",
            "number_output_channels",
            "max_depth",
        }
    )
    NON_NEGATIVE = frozenset({"initializer_range", "min_depth"})

    def __post_init__(self):
        if self.reassemble_factors is None:  # the reference fills these nulls in __post_init__
            self.reassemble_factors = [4, 2, 1, 0.5]
        if self.post_process_channels is None:
            self.post_process_channels = [128, 256, 512, 1024]
        super().__post_init__()
        self.backbone_config = dict(self.backbone_config or CHMV2_BACKBONE_DEFAULTS)
        if not self.architectures:  # the one model class of this model_type
            self.architectures = ["CHMv2ForDepthEstimation"]
        self.reassemble_factors = list(self.reassemble_factors)
        self.post_process_channels = list(self.post_process_channels)
        self.validate()
        check_neck(self)
        if self.backbone_type != "dinov3_vit":
            raise UnsupportedModelError(
                f"CHMv2 with a {self.backbone_type!r} backbone_config is not supported; "
                "its backbone is a dinov3_vit (as in transformers)"
            )
        check_backbone(self)

    def validate(self) -> None:
        if self.model_type != "chmv2":
            raise ValueError(f"model_type={self.model_type!r} is not 'chmv2'")
        if len(self.reassemble_factors) != len(self.post_process_channels):
            raise ValueError(
                f"reassemble_factors ({len(self.reassemble_factors)} values) and post_process_channels "
                f"({len(self.post_process_channels)} values) must have the same length"
            )
        if self.readout_type not in READOUT_TYPES:
            raise ValueError(f"readout_type={self.readout_type!r} is not one of {', '.join(READOUT_TYPES)}")
        for name, value, allowed in (
            ("bins_strategy", self.bins_strategy, BINS_STRATEGIES),
            ("norm_strategy", self.norm_strategy, NORM_STRATEGIES),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        if self.bins_strategy in LOG_BINS and self.min_depth <= 0:
            raise ValueError(
                f"min_depth={self.min_depth!r} is invalid: bins_strategy={self.bins_strategy!r} takes its log, "
                "so it must be positive"
            )
        if self.max_depth <= self.min_depth:
            raise ValueError(f"max_depth={self.max_depth!r} is invalid: it must be above min_depth={self.min_depth!r}")
        if self.fusion_hidden_size < 2:
            raise ValueError(
                f"fusion_hidden_size={self.fusion_hidden_size} is invalid: the head halves it, so it must be at least 2"
            )

    @property
    def predicts_metres(self) -> bool:
        """CHMv2's predicted depth is canopy height in metres."""
        return True

    # What the shared DPT neck (dpt_mlx/models/neck.py) reads, under DPT's names: the readout projection
    # is Linear + nn.GELU() (exact GELU), the residual units are biased convolutions without BatchNorm.
    neck_hidden_sizes = property(lambda self: self.post_process_channels)
    neck_ignore_stages = property(lambda self: [])
    head_in_index = property(lambda self: -1)
    hidden_act = property(lambda self: "gelu")
    use_batch_norm_in_fusion_residual = property(lambda self: False)
    use_bias_in_residual = property(lambda self: True)


__all__ = ["BINS_STRATEGIES", "CHMV2_BACKBONE_DEFAULTS", "MIXLOG_SCALE", "NORM_STRATEGIES", "CHMv2Config"]

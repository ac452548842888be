"""``Tipsv2DptConfig``: transformers' TIPSv2-DPT configuration (google/tipsv2-{b,l,so400m,g}14-dpt).

One TIPSv2 vision encoder (a DINOv2-with-registers ViT, dpt_mlx/backbones/tipsv2.py) and up to
three DPT decoders: metric depth over ``num_depth_bins`` linear bins from ``min_depth`` to
``max_depth`` metres, surface normals, and ``num_labels``-class segmentation (ADE20K's 150 on the
hub). The shared DPT neck (dpt_mlx/models/neck.py) reads this config through the DPT names it
expects, given as properties below: readout "project" with ``readout_activation``, bias-free
residual convolutions without BatchNorm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..backbones.tipsv2 import Tipsv2VisionConfig
from .base import BackboneHostConfig, check_act
from .dpt import MAX_LABELS, check_neck, in_backbone_config

# The backbone when a config has none: transformers' sub_configs_defaults (other fields: Tipsv2VisionConfig's).
TIPSV2_BACKBONE_DEFAULTS = {
    "model_type": "tipsv2_vision_model",
    "out_indices": [3, 6, 9, 12],
    "apply_layernorm": True,
    "reshape_hidden_states": False,
}


@dataclass
class Tipsv2DptConfig(BackboneHostConfig):
    """``transformers.Tipsv2DptConfig``: the same fields, defaults and meaning."""

    model_type: str = "tipsv2_dpt"
    backbone_config: dict[str, Any] | None = None
    neck_hidden_sizes: list[int] | None = None
    fusion_hidden_size: int = 256
    reassemble_factors: list[float] | None = None
    readout_activation: str = "gelu_pytorch_tanh"
    num_depth_bins: int = 256
    min_depth: float = 0.001
    max_depth: float = 10.0
    depth_decoder_activation: str = "relu"
    semantic_loss_ignore_index: int = 255
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    architectures: list[str] | None = None

    POSITIVE = frozenset({"neck_hidden_sizes", "fusion_hidden_size", "reassemble_factors", "num_depth_bins"})
    NON_NEGATIVE = frozenset({"min_depth"})

    def __post_init__(self):
        if self.neck_hidden_sizes is None:  # the reference fills these nulls in __post_init__
            self.neck_hidden_sizes = [96, 192, 384, 768]
        if self.reassemble_factors is None:
            self.reassemble_factors = [4, 2, 1, 0.5]
        super().__post_init__()
        if self.model_type != "tipsv2_dpt":
            raise ValueError(f"model_type={self.model_type!r} is not 'tipsv2_dpt'")
        self.backbone_config = dict(self.backbone_config or TIPSV2_BACKBONE_DEFAULTS)
        self.neck_hidden_sizes = list(self.neck_hidden_sizes)
        self.reassemble_factors = list(self.reassemble_factors)
        self.id2label = {int(k): v for k, v in self.id2label.items()}
        if not self.id2label:
            raise ValueError("id2label is empty: the segmentation decoder needs at least one class")
        check_act("readout_activation", self.readout_activation)
        check_act("depth_decoder_activation", self.depth_decoder_activation)
        if self.max_depth <= self.min_depth:
            raise ValueError(f"max_depth={self.max_depth!r} is invalid: it must be above min_depth={self.min_depth!r}")
        check_neck(self)
        backbone = in_backbone_config(self.vision_config)
        if len(backbone.out_indices) != len(self.neck_hidden_sizes):
            raise ValueError(
                f"the TIPSv2 backbone returns {len(backbone.out_indices)} feature maps "
                f"({', '.join(backbone.out_features)}) but neck_hidden_sizes has {len(self.neck_hidden_sizes)} "
                "entries; they must match"
            )
        if backbone.reshape_hidden_states:
            raise ValueError("backbone_config: reshape_hidden_states must be false (the neck reads token sequences)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        # transformers builds id2label from num_labels when a config gives only the count.
        if isinstance(data, dict) and "num_labels" in data and not data.get("id2label"):
            n = data["num_labels"]
            if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_LABELS:
                raise ValueError(f"num_labels={n!r} is invalid: expected an integer from 1 to {MAX_LABELS}")
            data = {**data, "id2label": {i: f"LABEL_{i}" for i in range(n)}}
        return super().from_dict(data)

    def vision_config(self) -> Tipsv2VisionConfig:
        """The backbone's own config (``backbone_config``, with the reference's defaults for what it omits)."""
        return Tipsv2VisionConfig.from_dict(self.backbone_config)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = {v: int(k) for k, v in self.id2label.items()}
        return out

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    @property
    def predicts_metres(self) -> bool:
        """The depth decoder predicts metric depth (bins up to ``max_depth`` metres)."""
        return True

    # What the shared DPT neck (dpt_mlx/models/neck.py) reads, under DPT's names.
    readout_type = property(lambda self: "project")
    hidden_act = property(lambda self: self.readout_activation)  # the readout projection's activation
    neck_ignore_stages = property(lambda self: [])
    head_in_index = property(lambda self: -1)
    use_batch_norm_in_fusion_residual = property(lambda self: False)
    use_bias_in_residual = property(lambda self: False)


__all__ = ["TIPSV2_BACKBONE_DEFAULTS", "Tipsv2DptConfig"]

"""DPT, Depth Anything and Prompt Depth Anything configs, and the backbone and neck checks they share.

The dataclasses carry the reference's field names and defaults so that a config written
by transformers reads back unchanged. ``from_dict`` ignores keys it does not know (the
many generic ``PretrainedConfig`` fields) and validates the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..backbones import backbone_spec
from ..backbones.bit import HYBRID_BIT_DEFAULTS, BitConfig
from ..errors import UnsupportedModelError
from .base import BackboneHostConfig, BaseConfig, check_act, pair

READOUT_TYPES = ("ignore", "add", "project")
MAX_LABELS = 65536  # a bound for a num_labels given without id2label (the labels are made one by one)


def in_backbone_config(build: Callable[[], Any]):
    """``build()``, its ValueError prefixed with ``backbone_config:`` (its type kept)."""
    try:
        return build()
    except ValueError as e:
        raise type(e)(f"backbone_config: {e}") from None


def check_backbone(config):
    """The backbone's own config (``backbone_spec(config).config``), built at config load so that a
    bad ``backbone_config`` fails there and not when the model is built."""
    own_vit = config.backbone_config is None or getattr(config, "is_hybrid", False)  # from the config's own fields
    if not own_vit and config.backbone_type in ("vit", "hybrid"):
        raise UnsupportedModelError(
            f"backbone_config model_type {config.backbone_type!r} is not supported; use beit, dinov2 or swinv2"
        )
    spec = backbone_spec(config)  # UnsupportedModelError for an unknown model_type
    return spec.config(config) if own_vit else in_backbone_config(lambda: spec.config(config))


def check_neck(config, reassemble: bool = True) -> None:
    """The neck fields shared by DPT and Depth Anything configs: lengths, factors, head index."""
    if reassemble:
        if len(config.reassemble_factors) != len(config.neck_hidden_sizes):
            raise ValueError(
                f"reassemble_factors ({len(config.reassemble_factors)} values) and neck_hidden_sizes "
                f"({len(config.neck_hidden_sizes)} values) must have the same length"
            )
        for f in config.reassemble_factors:
            inverse = 1 / f if f > 0 else math.inf
            if not math.isfinite(inverse) or (f > 1 and f != int(f)) or (f < 1 and inverse != int(inverse)):
                raise ValueError(
                    f"reassemble factor {f} in reassemble_factors={config.reassemble_factors} must be "
                    "a positive integer or 1/integer"
                )
    n = len(config.neck_hidden_sizes)
    if not -n <= config.head_in_index < n:
        raise ValueError(f"head_in_index={config.head_in_index} out of range for {n} neck stages")


@dataclass
class DPTConfig(BaseConfig):
    """``transformers.DPTConfig``: the same fields, defaults and meaning (dpt-large style ViT)."""

    model_type: str = "dpt"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: int | list[int] = 384
    patch_size: int | list[int] = 16
    num_channels: int = 3
    is_hybrid: bool = False
    qkv_bias: bool = True
    backbone_out_indices: list[int] | None = (2, 5, 8, 11)
    readout_type: str = "project"
    reassemble_factors: list[float] = (4, 2, 1, 0.5)
    neck_hidden_sizes: list[int] = (96, 192, 384, 768)
    fusion_hidden_size: int = 256
    head_in_index: int = -1
    use_batch_norm_in_fusion_residual: bool = False
    use_bias_in_fusion_residual: bool | None = None
    add_projection: bool = False
    use_auxiliary_head: bool = True
    auxiliary_loss_weight: float = 0.4
    semantic_loss_ignore_index: int = 255
    semantic_classifier_dropout: float = 0.1
    backbone_featmap_shape: list[int] | None = (1, 1024, 24, 24)
    neck_ignore_stages: list[int] = (0, 1)
    backbone_config: dict[str, Any] | None = None
    backbone: str | None = None
    pooler_output_size: int | None = None
    pooler_act: str = "tanh"
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    architectures: list[str] | None = None

    POSITIVE = frozenset(
        {
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "layer_norm_eps",
            "image_size",
            "patch_size",
            "num_channels",
            "neck_hidden_sizes",
            "fusion_hidden_size",
            "backbone_featmap_shape",
            "pooler_output_size",
        }
    )
    NON_NEGATIVE = frozenset(
        {
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "initializer_range",
            "auxiliary_loss_weight",
            "semantic_classifier_dropout",
            "neck_ignore_stages",
        }
    )

    # Hub configs store these fields as null when the backbone lives elsewhere: null means this default.
    NULL_DEFAULTS = {
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": 1e-12,
        "image_size": 384,
        "patch_size": 16,
        "num_channels": 3,
        "qkv_bias": True,
        "use_auxiliary_head": True,
        "use_batch_norm_in_fusion_residual": False,
        "id2label": {},
    }

    def __post_init__(self):
        for name, default in self.NULL_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, dict(default) if isinstance(default, dict) else default)
        if self.pooler_output_size in (None, 0):  # transformers: ``pooler_output_size or hidden_size``
            self.pooler_output_size = self.hidden_size
        super().__post_init__()
        self.id2label = {int(k): v for k, v in self.id2label.items()}
        if self.backbone is not None and self.backbone_config is None:
            raise UnsupportedModelError(
                f"backbone {self.backbone!r} (a timm or named backbone) is not supported; "
                "use a checkpoint with a backbone_config"
            )
        if not self.is_hybrid:
            self.backbone_featmap_shape = None
            self.neck_ignore_stages = []
        elif self.readout_type != "project":
            raise ValueError("readout_type must be 'project' for DPT-Hybrid (is_hybrid=True)")
        if self.is_hybrid:  # DPT-Hybrid: validate the BiT backbone (defaults as in the reference when absent)
            self.backbone_config = dict(HYBRID_BIT_DEFAULTS if self.backbone_config is None else self.backbone_config)
            self.backbone_config.setdefault("model_type", "bit")
            bit = in_backbone_config(lambda: BitConfig.from_dict(self.backbone_config))
            if len(bit.out_features) != 3:
                raise ValueError(f"backbone_config: DPT-Hybrid needs 3 BiT out_features, got {bit.out_features}")
        if self.backbone_config is not None and not self.is_hybrid:
            self.backbone_out_indices = None
        for name in (
            "backbone_out_indices",
            "reassemble_factors",
            "neck_hidden_sizes",
            "backbone_featmap_shape",
            "neck_ignore_stages",
        ):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, list(value))
        self.validate()
        check_backbone(self)

    def validate(self) -> None:
        if self.readout_type not in READOUT_TYPES:
            raise ValueError(f"readout_type={self.readout_type!r} is not one of {', '.join(READOUT_TYPES)}")
        check_act("hidden_act", self.hidden_act)
        check_act("pooler_act", self.pooler_act)
        own_vit = self.backbone_type in ("vit", "hybrid")  # else the ViT fields are unused
        if own_vit and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )
        # Hierarchical backbones (Swinv2) skip the reassemble stage and its factors.
        check_neck(self, reassemble=self.backbone_type != "swinv2")
        if self.backbone_out_indices is not None:
            if len(self.backbone_out_indices) != len(self.neck_hidden_sizes):
                raise ValueError(
                    f"backbone_out_indices ({len(self.backbone_out_indices)} values) and neck_hidden_sizes "
                    f"({len(self.neck_hidden_sizes)} values) must have the same length"
                )
            bad = [i for i in self.backbone_out_indices if not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(
                    f"backbone_out_indices {bad} out of range for num_hidden_layers={self.num_hidden_layers}"
                )
        if self.add_projection and self.fusion_hidden_size != 256:
            # The reference hard-codes a 256-channel projection conv in the depth head.
            raise ValueError("add_projection=True requires fusion_hidden_size=256, as in the reference")
        pair(self.image_size, "image_size")
        pair(self.patch_size, "patch_size")

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        # transformers builds id2label from num_labels when a config gives only the count.
        if isinstance(data, dict) and "num_labels" in data and not data.get("id2label"):
            n = data["num_labels"]
            if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_LABELS:
                raise ValueError(f"num_labels={n!r} is invalid: expected an integer from 1 to {MAX_LABELS}")
            data = {**data, "id2label": {i: f"LABEL_{i}" for i in range(n)}}
        return super().from_dict(data)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    @property
    def backbone_type(self) -> str:
        """Which backbone computes the features: 'vit', 'hybrid', or a backbone_config model_type."""
        if self.is_hybrid:
            return "hybrid"
        if self.backbone_config is not None:
            return str(self.backbone_config.get("model_type", "unknown"))
        return "vit"

    @property
    def bit_config(self) -> BitConfig:
        """The BiT backbone config of DPT-Hybrid (``backbone_config`` stays the raw dict)."""
        return BitConfig.from_dict(self.backbone_config or {})

    @property
    def use_bias_in_residual(self) -> bool:
        if self.use_bias_in_fusion_residual is not None:
            return bool(self.use_bias_in_fusion_residual)
        return not self.use_batch_norm_in_fusion_residual

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = {v: int(k) for k, v in self.id2label.items()}
        return out


# Depth Anything's DINOv2 backbone when a config has no ``backbone_config``
# (transformers' DepthAnythingConfig.sub_configs_defaults["backbone_config"]; other fields: Dinov2Config's).
DEPTH_ANYTHING_BACKBONE_DEFAULTS = {
    "model_type": "dinov2",
    "image_size": 518,
    "hidden_size": 384,
    "num_attention_heads": 6,
    "out_indices": [9, 10, 11, 12],
    "reshape_hidden_states": False,
}


@dataclass
class DepthAnythingConfig(BackboneHostConfig):
    """``transformers.DepthAnythingConfig`` (V1 and V2): the same fields and defaults (depth-anything-small)."""

    model_type: str = "depth_anything"
    backbone_config: dict[str, Any] | None = None
    backbone: str | None = None
    patch_size: int = 14
    initializer_range: float = 0.02
    reassemble_hidden_size: int = 384
    reassemble_factors: list[float] = (4, 2, 1, 0.5)
    neck_hidden_sizes: list[int] = (48, 96, 192, 384)
    fusion_hidden_size: int = 64
    head_in_index: int = -1
    head_hidden_size: int = 32
    depth_estimation_type: str = "relative"
    max_depth: float | None = 1
    architectures: list[str] | None = None

    POSITIVE = frozenset(
        {
            "patch_size",
            "reassemble_hidden_size",
            "neck_hidden_sizes",
            "fusion_hidden_size",
            "head_hidden_size",
            "max_depth",
        }
    )
    NON_NEGATIVE = frozenset({"initializer_range"})

    def __post_init__(self):
        super().__post_init__()
        if self.backbone is not None and self.backbone_config is None:
            raise UnsupportedModelError(
                f"backbone {self.backbone!r} (a timm or named backbone) is not supported; "
                "use a checkpoint with a backbone_config"
            )
        self.backbone_config = dict(self.backbone_config or DEPTH_ANYTHING_BACKBONE_DEFAULTS)
        # transformers < 5 stored ``max_depth if max_depth else 1``; relative checkpoints converted
        # then carry "max_depth": null, which 5.x would multiply by. The head always scales by it.
        if self.max_depth is None:
            self.max_depth = 1
        if not self.architectures:  # the one model class of this model_type
            self.architectures = ["DepthAnythingForDepthEstimation"]
        self.reassemble_factors, self.neck_hidden_sizes = list(self.reassemble_factors), list(self.neck_hidden_sizes)
        if self.depth_estimation_type not in ("relative", "metric"):
            raise ValueError(f"depth_estimation_type={self.depth_estimation_type!r} is not one of relative, metric")
        check_neck(self)
        backbone = check_backbone(self)
        if backbone.hidden_size != self.reassemble_hidden_size:
            raise ValueError(
                f"reassemble_hidden_size={self.reassemble_hidden_size} must equal the backbone's "
                f"hidden_size={backbone.hidden_size}"
            )

    # What the shared DPT neck (dpt_mlx/neck.py) reads: Depth Anything reassembles without the
    # CLS token (readout "ignore"), and its residual units have biases and no BatchNorm.
    readout_type = property(lambda self: "ignore")
    neck_ignore_stages = property(lambda self: [])
    use_batch_norm_in_fusion_residual = property(lambda self: False)
    use_bias_in_residual = property(lambda self: True)


@dataclass
class PromptDepthAnythingConfig(DepthAnythingConfig):
    """``transformers.PromptDepthAnythingConfig``: Depth Anything's fields and defaults.

    The hub checkpoints (depth-anything/prompt-depth-anything-vits-hf, -vits-transparent-hf,
    -vitl-hf) are "metric" (a sigmoid head) with "max_depth": null; the model never scales by
    ``max_depth``. Given a prompt depth map, the model predicts depth in the prompt's unit (metres).
    """

    model_type: str = "prompt_depth_anything"

    def __post_init__(self):
        if not self.architectures:  # the one model class of this model_type
            self.architectures = ["PromptDepthAnythingForDepthEstimation"]
        super().__post_init__()

    @property
    def predicts_metres(self) -> bool:
        """True: with a prompt (in metres, e.g. LiDAR) the predicted depth is in metres."""
        return True

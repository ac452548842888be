"""``build_backbone(config)``: the backbone of a DPT / Depth Anything config, as ``AutoBackbone`` does.

Every backbone is built the same way, ``Backbone(its own config)``, and called the same way,
``backbone(x_nhwc, output_attentions=False) -> BackboneFeatures`` (features for the neck, the
patch grid, all hidden states, attentions); it has ``.hidden_size``. To add one, write its
module (config dataclass + backbone class) and add a line to ``BACKBONES``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import mlx.nn as nn

from ..errors import UnsupportedModelError
from .beit import BeitBackbone, BeitConfig
from .dinov2 import Dinov2Backbone, Dinov2Config
from .dinov3 import Dinov3ViTConfig, Dinov3ViTNeckBackbone
from .swinv2 import Swinv2Backbone, Swinv2Config
from .tipsv2 import Tipsv2VisionBackbone
from .vit import ViTBackbone, ViTConfig


class BackboneSpec(NamedTuple):
    config: Callable  # model config -> the backbone's config
    backbone: type[nn.Module]
    reassemble: bool  # token sequences the neck reassembles into maps (False: NHWC maps already)


def _check_feature_count(kind: str, backbone, config) -> None:
    """A token backbone must give the neck one feature per ``neck_hidden_sizes`` entry."""
    if len(backbone.out_indices) != len(config.neck_hidden_sizes):
        raise ValueError(
            f"the {kind} backbone returns {len(backbone.out_indices)} feature maps "
            f"({', '.join(backbone.out_features)}) but neck_hidden_sizes has {len(config.neck_hidden_sizes)} "
            "entries; they must match"
        )


def _dinov2_config(config) -> Dinov2Config:
    backbone = Dinov2Config.from_dict(config.backbone_config)
    if backbone.reshape_hidden_states:
        # The DPT / Depth Anything necks read CLS + patch token sequences; the reference would fail too.
        raise ValueError(
            "a DINOv2 backbone_config for DPT or Depth Anything needs reshape_hidden_states=false "
            "(the neck reads token sequences)"
        )
    _check_feature_count("DINOv2", backbone, config)
    return backbone


def _beit_config(config) -> BeitConfig:
    beit = BeitConfig.from_dict(config.backbone_config)
    _check_feature_count("BEiT", beit, config)
    return beit


def _swinv2_config(config) -> Swinv2Config:
    swin = Swinv2Config.from_dict(config.backbone_config)
    channels = [swin.embed_dim] + swin.dims
    got = [channels[i] for i in swin.out_indices]
    if got != list(config.neck_hidden_sizes):
        raise ValueError(
            f"the Swinv2 backbone's out_features ({', '.join(swin.out_features)}) have {got} channels but "
            f"neck_hidden_sizes is {list(config.neck_hidden_sizes)}; they must match"
        )
    return swin


# config.backbone_type -> how to build it
BACKBONES: dict[str, BackboneSpec] = {
    "vit": BackboneSpec(ViTConfig.from_dpt, ViTBackbone, reassemble=True),
    "hybrid": BackboneSpec(ViTConfig.from_dpt, ViTBackbone, reassemble=True),  # BiT embeddings, then ViT
    "dinov2": BackboneSpec(_dinov2_config, Dinov2Backbone, reassemble=True),
    "beit": BackboneSpec(_beit_config, BeitBackbone, reassemble=True),
    "swinv2": BackboneSpec(_swinv2_config, Swinv2Backbone, reassemble=False),
    # CHMv2 only: its (map, CLS token) pairs as CLS-first token sequences, which the reassemble stage reads
    "dinov3_vit": BackboneSpec(Dinov3ViTConfig.from_chmv2, Dinov3ViTNeckBackbone, reassemble=True),
    # TIPSv2-DPT only: CLS + patch token sequences per stage (registers left out), read by the reassemble stage
    "tipsv2_vision_model": BackboneSpec(lambda config: config.vision_config(), Tipsv2VisionBackbone, reassemble=True),
}


def backbone_spec(config) -> BackboneSpec:
    kind = config.backbone_type
    if kind not in BACKBONES:
        raise UnsupportedModelError(
            f"backbone model_type {kind!r} is not supported; supported: {', '.join(sorted(BACKBONES))}"
        )
    return BACKBONES[kind]


def build_backbone(config) -> nn.Module:
    """The backbone module a DPT / Depth Anything config names (``config.backbone_type``)."""
    spec = backbone_spec(config)
    return spec.backbone(spec.config(config))


__all__ = ["BACKBONES", "BackboneSpec", "backbone_spec", "build_backbone"]

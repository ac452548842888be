"""``build_backbone(config)``: the backbone named by ``config.backbone_config["model_type"]``.

What ``load_backbone`` / ``AutoBackbone`` does in transformers, for the backbones that DPT and
Depth Anything checkpoints use. A backbone is a module with ``.hidden_size``, called as
``backbone(x_nhwc, output_attentions=False) -> BackboneFeatures``. To add one, write a builder
that imports its module lazily and add a line to ``BACKBONES``.
"""

from __future__ import annotations

from typing import Callable

import mlx.nn as nn

from .errors import UnsupportedModelError


def _dinov2(config) -> nn.Module:
    from .dinov2 import Dinov2Backbone, Dinov2Config

    backbone_config = Dinov2Config.from_dict(config.backbone_config)
    if backbone_config.reshape_hidden_states:
        # The DPT / Depth Anything necks read CLS + patch token sequences; the reference would fail too.
        raise ValueError(
            "a DINOv2 backbone_config for DPT or Depth Anything needs reshape_hidden_states=false "
            "(the neck reads token sequences)"
        )
    return Dinov2Backbone(backbone_config)


def _beit(config) -> nn.Module:
    from .beit import BeitBackbone

    return BeitBackbone(config)  # token sequences (B, 1 + N, C): the neck reassembles them


def _swinv2(config) -> nn.Module:
    from .swinv2 import Swinv2Backbone

    return Swinv2Backbone(config)  # NHWC maps: the neck has no reassemble stage


# backbone_config["model_type"] -> builder(config) -> backbone module
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "dinov2": _dinov2,
    "beit": _beit,
    "swinv2": _swinv2,
}


def build_backbone(config) -> nn.Module:
    """The backbone of a DPT / Depth Anything config whose ``backbone_type`` names a backbone_config."""
    kind = config.backbone_type
    if kind not in BACKBONES:
        raise UnsupportedModelError(
            f"backbone model_type {kind!r} is not supported; supported: {', '.join(sorted(BACKBONES))}"
        )
    return BACKBONES[kind](config)

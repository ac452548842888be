"""Checks that several model configs share: the backbone's own config, the neck's fields."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .backbones import backbone_spec
from .errors import UnsupportedModelError


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


def json_type(value) -> str:
    return "null" if value is None else type(value).__name__

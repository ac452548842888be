"""What the models return: transformers' output classes, and what a backbone hands the neck."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import mlx.core as mx


@dataclass
class ModelOutput:
    """Attribute and key access (``out.logits`` or ``out["logits"]``), like transformers' ModelOutput."""

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str) or key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    last_hidden_state: mx.array | None = None
    pooler_output: mx.array | None = None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None


@dataclass
class DepthEstimatorOutput(ModelOutput):
    loss: mx.array | None = None
    predicted_depth: mx.array | None = None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None


@dataclass
class ZoeDepthDepthEstimatorOutput(ModelOutput):
    """``DepthEstimatorOutput`` with ``domain_logits`` (B, 2): the multi-domain ZoeDepth's classifier (else None)."""

    loss: mx.array | None = None
    predicted_depth: mx.array | None = None
    domain_logits: mx.array | None = None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None


@dataclass
class DepthProDepthEstimatorOutput(ModelOutput):
    """``DepthEstimatorOutput`` with ``field_of_view`` (B,): Depth Pro's estimate in degrees, when the
    model has its field-of-view head (else None). ``predicted_depth`` is canonical inverse depth."""

    loss: mx.array | None = None
    predicted_depth: mx.array | None = None
    field_of_view: mx.array | None = None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None


@dataclass
class SemanticSegmenterOutput(ModelOutput):
    loss: mx.array | None = None
    logits: mx.array | None = None
    auxiliary_logits: mx.array | None = None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None


@dataclass
class BackboneFeatures:
    """What a backbone hands the neck: NHWC maps or token sequences, and the patch grid."""

    features: list[mx.array]
    grid: tuple[int, int] | None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None

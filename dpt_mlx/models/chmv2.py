"""CHMv2 (facebook/dinov3-vitl16-chmv2-dpt-head): Meta's canopy height model. A DINOv3 ViT backbone,
DPT's neck, an upsampling conv head that gives logits over height bins, and the stage that turns
those logits into a height in metres per pixel (``CHMv2FeaturesToDepth``, the "mixlog" bins).

The neck is DPT's (dpt_mlx/models/neck.py): each backbone stage arrives as its CLS token and patch
tokens (``Dinov3ViTNeckBackbone``), which the reassemble stage reads as CHMv2's does (readout
"project": GELU(Linear([token, CLS]))); the fusion layers upsample 2x, and resize a skip map that
does not match (bilinear, align_corners=False), as CHMv2's do. Its one difference, that the first
fusion layer has no skip input and so no ``residual_layer1``, is :class:`CHMv2Neck`'s.

The checkpoints keep the neck under ``head.`` (``head.reassemble_stage``, ``head.convs``,
``head.fusion_layers``) and the conv head as a ModuleList (``head.conv_depth.head.{0,2,4}``); the
weight table (dpt_mlx/io/weights.py) maps them to ``neck.*`` and ``head.conv1/2/3``. Everything
inside runs channels-last; the public call takes (B, 3, H, W) pixels and returns (B, H', W') heights.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..backbones import build_backbone
from ..configs.chmv2 import MIXLOG_SCALE, CHMv2Config
from ..layers import Resize
from ..outputs import DepthEstimatorOutput
from .base import PreTrainedModel
from .neck import DPTNeck

# The reference's constants of the mixlog normalisation.
MIXLOG_MAX_SHIFT = 1e-4  # the shift that makes the smallest logit positive is clamped to [0, this]
MIXLOG_EPS_SHIFT = 1e-8  # ... and this is added to it
MIXLOG_EPS = 1e-12  # the floor of the denominator, the bin centres and the height
LINEAR_NORM_EPS = 0.1  # norm_strategy "linear": added to every ReLU'd logit


class CHMv2Neck(DPTNeck):
    """DPT's neck (reassemble, 3x3 convs to the fusion width, 2x fusion) without the first fusion
    layer's ``residual_layer1``: the reference builds none there (DPT's first layer has an unused one)."""

    def __init__(self, config: CHMv2Config, hidden_size: int):
        super().__init__(config, hidden_size)
        del self.fusion_stage.layers[0].residual_layer1  # never called: the first layer gets no skip map


class CHMv2UpsampleConvHead(nn.Module):
    """conv3x3 (C -> C/2), 2x upsample (bilinear, align_corners=True), conv3x3 (-> head_hidden_size), ReLU,
    conv1x1 (-> number_output_channels): (B, h, w, C) -> (B, 2h, 2w, bins) logits, no final activation."""

    def __init__(self, config: CHMv2Config):
        super().__init__()
        features = config.fusion_hidden_size
        self.conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features // 2, config.head_hidden_size, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(config.head_hidden_size, config.number_output_channels, kernel_size=1)
        self.resample = Resize()

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv1(x)
        x = self.resample(x, (2 * x.shape[1], 2 * x.shape[2]), "bilinear", align_corners=True)
        return self.conv3(nn.relu(self.conv2(x)))


def bin_centres(n_bins: int, strategy: str, min_depth: float, max_depth: float) -> np.ndarray:
    """(n_bins,) float32 bin centres in metres, as the reference places them (computed in float64).

    "linear": evenly from ``min_depth`` to ``max_depth``; "log": evenly in log; "chmv2_mixlog": from
    ``min_depth`` to ``max_depth / 8``, log-spaced at the low end blending linearly into linear
    spacing at the high end (weights 1 -> 0 on the log bins).
    """
    if strategy == "linear":
        return np.linspace(min_depth, max_depth, n_bins).astype(np.float32)
    if strategy == "log":
        return np.exp(np.linspace(np.log(min_depth), np.log(max_depth), n_bins)).astype(np.float32)
    top = max_depth / MIXLOG_SCALE
    linear = np.linspace(min_depth, top, n_bins)
    log = np.exp(np.linspace(np.log(min_depth), np.log(top), n_bins))
    weight = np.linspace(1.0, 0.0, n_bins)
    return (weight * log + (1.0 - weight) * linear).astype(np.float32)


class CHMv2FeaturesToDepth(nn.Module):
    """Bin logits (B, H, W, n) -> heights (B, H, W) in metres, float32 (computed in float32 whatever the
    model's dtype), as the reference's ``CHMv2FeaturesToDepth``.

    With one bin: ``relu(x) + min_depth``. Otherwise weights over the ``bins_strategy`` centres,
    summed: "linear" ``(relu(x) + 0.1)`` normalised, "softmax", "sigmoid" normalised, or
    "chmv2_mixlog": ``relu(x)`` shifted by ``clamp(-min, 0, 1e-4) + 1e-8``, normalised (the sum's
    NaN and inf read as 1, floored at 1e-12), times the centres (floored at 1e-12), summed, floored
    at 1e-12, times 8 (the mixlog centres end at ``max_depth / 8``).
    """

    def __init__(self, config: CHMv2Config):
        super().__init__()
        self.min_depth = float(config.min_depth)
        self.norm_strategy = config.norm_strategy
        n = config.number_output_channels
        centres = bin_centres(n, config.bins_strategy, config.min_depth, config.max_depth) if n > 1 else None
        self._bins = None if centres is None else mx.array(centres)

    def __call__(self, x: mx.array) -> mx.array:
        x = x.astype(mx.float32)
        if self._bins is None:
            return (nn.relu(x) + self.min_depth)[..., 0]
        if self.norm_strategy == "chmv2_mixlog":
            return self._mixlog(x)
        if self.norm_strategy == "linear":
            weights = nn.relu(x) + LINEAR_NORM_EPS
            weights = weights / weights.sum(axis=-1, keepdims=True)
        elif self.norm_strategy == "softmax":
            weights = mx.softmax(x, axis=-1)
        else:  # sigmoid
            weights = mx.sigmoid(x)
            weights = weights / weights.sum(axis=-1, keepdims=True)
        return weights @ self._bins  # (B, H, W, n) @ (n,): the weighted sum over the bins

    def _mixlog(self, x: mx.array) -> mx.array:
        logits = nn.relu(x)
        shift = mx.clip(-logits.min(axis=-1, keepdims=True), 0.0, MIXLOG_MAX_SHIFT) + MIXLOG_EPS_SHIFT
        logits = logits + shift
        denom = mx.nan_to_num(logits.sum(axis=-1, keepdims=True), nan=1.0, posinf=1.0, neginf=1.0)
        weights = logits / mx.maximum(denom, MIXLOG_EPS)
        height = weights @ mx.maximum(self._bins, MIXLOG_EPS)  # (B, H, W, n) @ (n,)
        return mx.maximum(height, MIXLOG_EPS) * MIXLOG_SCALE


class CHMv2ForDepthEstimation(PreTrainedModel):
    """``CHMv2ForDepthEstimation``: ``model(pixel_values)`` (B, 3, H, W) -> ``predicted_depth`` (B, H', W'),
    canopy height in metres. With the hub's reassemble factors (4, 2, 1, 0.5), H' = 32 * ceil(gh / 2) for
    the backbone's patch grid gh = H // patch: H itself for the hub's 16-pixel patches when H is a
    multiple of 32; likewise W'. ``hidden_states`` / ``attentions`` are the backbone's (embeddings and
    every layer), as the reference returns them."""

    config_class = CHMv2Config
    head_kind = "depth"

    def __init__(self, config: CHMv2Config):
        super().__init__()
        if not isinstance(config, CHMv2Config):
            raise TypeError(f"CHMv2ForDepthEstimation needs a CHMv2Config, got {type(config).__name__}")
        self.config = config
        self.backbone = build_backbone(config)  # Dinov3ViTNeckBackbone: CLS-first token sequences per stage
        self.neck = CHMv2Neck(config, self.backbone.hidden_size)
        self.head = CHMv2UpsampleConvHead(config)
        self.features_to_depth = CHMv2FeaturesToDepth(config)

    def __call__(self, pixel_values, labels=None, output_hidden_states: bool = False, output_attentions: bool = False):
        """``labels`` are refused: the reference implements no CHMv2 loss."""
        if labels is not None:
            raise NotImplementedError("CHMv2 has no training loss (nor in transformers); call it without labels")
        feats = self.backbone(self._prepare(pixel_values), output_attentions=output_attentions)
        # The backbone's grid: the reference's reassemble stage reads each map's own shape (its
        # top-level patch_size only feeds a branch that pairs of (map, CLS token) never take).
        fused = self.neck(feats.features, feats.grid)
        height = self.features_to_depth(self.head(fused[-1]))
        return DepthEstimatorOutput(
            predicted_depth=height,
            hidden_states=tuple(feats.hidden_states) if output_hidden_states else None,
            attentions=tuple(feats.attentions) if output_attentions else None,
        )


__all__ = ["CHMv2FeaturesToDepth", "CHMv2ForDepthEstimation", "CHMv2Neck", "CHMv2UpsampleConvHead", "bin_centres"]

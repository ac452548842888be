"""Prediction heads on the fused NHWC features."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..layers import BatchNorm, Dropout, Resize


class DepthEstimationHead(nn.Module):
    """conv3x3 (C -> C/2), 2x upsample, conv3x3 (-> 32), ReLU, conv1x1 (-> 1), ReLU.

    With ``add_projection`` a 3x3 conv + ReLU comes first. Returns (B, H, W) depth.
    """

    def __init__(self, config):
        super().__init__()
        features = config.fusion_hidden_size
        self.head_in_index = config.head_in_index
        self.projection = nn.Conv2d(256, 256, kernel_size=3, padding=1) if config.add_projection else None
        self.conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features // 2, 32, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(32, 1, kernel_size=1)
        self.resample = Resize()

    def __call__(self, hidden_states: list[mx.array]) -> mx.array:
        x = hidden_states[self.head_in_index]
        if self.projection is not None:
            x = nn.relu(self.projection(x))
        x = self.conv1(x)
        x = self.resample(x, (2 * x.shape[1], 2 * x.shape[2]), "bilinear", align_corners=True)
        x = nn.relu(self.conv3(nn.relu(self.conv2(x))))
        return x[..., 0]


class SemanticSegmentationHead(nn.Module):
    """conv3x3 (no bias), BatchNorm, ReLU, dropout, 1x1 classifier; optional 2x upsample (main head)."""

    def __init__(self, config, dropout: float, upsample: bool):
        super().__init__()
        features = config.fusion_hidden_size
        self.upsample = upsample
        self.conv = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=False)
        self.batch_norm = BatchNorm(features)
        self.dropout = Dropout(dropout)
        self.classifier = nn.Conv2d(features, config.num_labels, kernel_size=1)
        self.resample = Resize()

    def __call__(self, x: mx.array) -> mx.array:
        """(B, h, w, C) -> (B, h', w', num_labels) logits."""
        x = self.classifier(self.dropout(nn.relu(self.batch_norm(self.conv(x)))))
        if not self.upsample:
            return x
        return self.resample(x, (2 * x.shape[1], 2 * x.shape[2]), "bilinear", align_corners=True)

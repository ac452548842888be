"""Depth Anything (V1 and V2): a DINOv2 backbone, the DPT neck, and its own depth head.

The neck is DPT's (dpt_mlx/models/neck.py) with three differences that the config and one flag
express: the CLS token is dropped before reassembling (readout "ignore"), the residual
units are plain biased convolutions, and each fusion layer resizes its output to the next
feature map's size (``upsample_to_next``) instead of upsampling 2x.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..backbones import build_backbone
from ..configs.dpt import DepthAnythingConfig
from ..layers import Resize
from ..outputs import DepthEstimatorOutput
from .base import PreTrainedModel
from .losses import model_depth_loss
from .neck import DPTNeck


class DepthAnythingDepthEstimationHead(nn.Module):
    """conv3x3 (C -> C/2), resize to the patch grid times the patch size (bilinear, align_corners=True),
    conv3x3 (-> head_hidden_size), ReLU, conv1x1 (-> 1), then ReLU (relative) or sigmoid (metric),
    times ``max_depth`` (also for relative depth, where it is 1 on every released checkpoint).
    ``max_depth`` given here replaces the config's (Prompt Depth Anything's head does not scale: 1).
    """

    def __init__(self, config: DepthAnythingConfig, max_depth: float | None = None):
        super().__init__()
        features = config.fusion_hidden_size
        self.head_in_index = config.head_in_index
        self.patch_size = config.patch_size
        self.metric = config.depth_estimation_type == "metric"
        self.max_depth = float(config.max_depth if max_depth is None else max_depth)
        self.conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features // 2, config.head_hidden_size, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(config.head_hidden_size, 1, kernel_size=1)
        self.resample = Resize()

    def __call__(self, hidden_states: list[mx.array], grid: tuple[int, int]) -> mx.array:
        """Fused NHWC maps -> (B, gh * patch, gw * patch) depth."""
        x = self.conv1(hidden_states[self.head_in_index])
        x = self.resample(x, (grid[0] * self.patch_size, grid[1] * self.patch_size), "bilinear", align_corners=True)
        x = self.conv3(nn.relu(self.conv2(x)))
        x = mx.sigmoid(x) if self.metric else nn.relu(x)
        return (x * self.max_depth)[..., 0]


class DepthAnythingForDepthEstimation(PreTrainedModel):
    """``DepthAnythingForDepthEstimation``: ``model(pixel_values)`` (B, 3, H, W) -> ``predicted_depth``
    (B, H', W') with H' = (H // patch) * patch, W' likewise."""

    config_class = DepthAnythingConfig
    head_kind = "depth"

    def __init__(self, config: DepthAnythingConfig):
        super().__init__()
        if not isinstance(config, DepthAnythingConfig):
            raise TypeError(f"DepthAnythingForDepthEstimation needs a DepthAnythingConfig, got {type(config).__name__}")
        self.config = config
        self.backbone = build_backbone(config)  # its size and outputs match the neck: checked by the config
        self.neck = DPTNeck(config, config.reassemble_hidden_size, upsample_to_next=True)
        self.head = DepthAnythingDepthEstimationHead(config)

    def __call__(
        self,
        pixel_values,
        labels=None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        loss_type: str | None = None,
    ):
        """``labels`` (B, H, W) give ``loss`` (the reference raises NotImplementedError): "silog" for
        metric checkpoints (labels in metres), "ssi" for relative ones (labels are disparities);
        ``loss_type`` overrides. See dpt_mlx.losses."""
        x = self._prepare(pixel_values)
        feats = self.backbone(x, output_attentions=output_attentions)
        # The reference takes the grid from the top-level patch_size, not the backbone's.
        grid = (x.shape[1] // self.config.patch_size, x.shape[2] // self.config.patch_size)
        fused = self.neck(feats.features, grid)
        depth = self.head(fused, grid)
        return DepthEstimatorOutput(
            loss=model_depth_loss(self.config, depth, labels, loss_type),
            predicted_depth=depth,
            hidden_states=feats.hidden_states if output_hidden_states else None,
            attentions=feats.attentions if output_attentions else None,
        )

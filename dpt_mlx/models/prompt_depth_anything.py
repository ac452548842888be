"""Prompt Depth Anything: Depth Anything whose fusion layers also read a low-resolution depth map.

Lin et al., "Prompting Depth Anything for 4K Resolution Accurate Metric Depth Estimation" (CVPR 2025).
The prompt is a metric depth map such as an iPhone LiDAR's (192x256), at any resolution. The
backbone, neck and head are Depth Anything's (dpt_mlx/models/depth_anything.py); as in
transformers' ``PromptDepthAnythingForDepthEstimation``:

- the prompt is normalised per image by its own minimum and maximum to [0, 1];
- every fusion layer resizes it to its map (bilinear, align_corners=False) and adds the features of
  its ``prompt_depth_layer`` after the second residual unit (dpt_mlx/models/neck.py);
- the head (sigmoid for the hub's "metric" checkpoints) does not multiply by ``max_depth``, and its
  output is mapped back to the prompt's range, ``depth * (max - min) + min``: metres.

Without a prompt the fusion layers skip it and the head's output is returned as it is (in (0, 1) for
the "metric" checkpoints: relative depth, not metres), as the reference does.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..backbones import build_backbone
from ..configs.dpt import PromptDepthAnythingConfig
from ..outputs import DepthEstimatorOutput
from .base import PreTrainedModel
from .depth_anything import DepthAnythingDepthEstimationHead
from .losses import SILOG, model_depth_loss
from .neck import DPTNeck


class PromptDepthAnythingForDepthEstimation(PreTrainedModel):
    """``PromptDepthAnythingForDepthEstimation``: ``model(pixel_values, prompt_depth)`` with pixel values
    (B, 3, H, W) and prompt depth (B, 1, h, w) -> ``predicted_depth`` (B, H', W'), H' = (H // patch) * patch,
    W' likewise; in the prompt's unit when a prompt is given."""

    config_class = PromptDepthAnythingConfig
    head_kind = "depth"

    def __init__(self, config: PromptDepthAnythingConfig):
        super().__init__()
        if not isinstance(config, PromptDepthAnythingConfig):
            raise TypeError(
                f"PromptDepthAnythingForDepthEstimation needs a PromptDepthAnythingConfig, got {type(config).__name__}"
            )
        self.config = config
        self.backbone = build_backbone(config)
        self.neck = DPTNeck(config, config.reassemble_hidden_size, upsample_to_next=True, prompt_depth=True)
        self.head = DepthAnythingDepthEstimationHead(config, max_depth=1.0)

    def __call__(
        self,
        pixel_values,
        prompt_depth=None,
        labels=None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        loss_type: str | None = None,
    ):
        """``labels`` (B, H, W) are depths in the prediction's unit (metres with a prompt); they give
        ``loss`` ("silog" unless ``loss_type`` says otherwise; the reference raises NotImplementedError)."""
        x = self._prepare(pixel_values)
        prompt = low = high = None
        if prompt_depth is not None:
            prompt, low, high = self._normalise_prompt(prompt_depth, x.shape[0])
        feats = self.backbone(x, output_attentions=output_attentions)
        grid = (x.shape[1] // self.config.patch_size, x.shape[2] // self.config.patch_size)
        depth = self.head(self.neck(feats.features, grid, prompt), grid)
        if prompt is not None:
            depth = (depth.astype(mx.float32) * (high - low) + low).astype(depth.dtype)
        return DepthEstimatorOutput(
            loss=model_depth_loss(self.config, depth, labels, loss_type or SILOG),
            predicted_depth=depth,
            hidden_states=feats.hidden_states if output_hidden_states else None,
            attentions=feats.attentions if output_attentions else None,
        )

    def _normalise_prompt(self, prompt_depth, batch: int) -> tuple[mx.array, mx.array, mx.array]:
        """(B, 1, h, w) NumPy/MLX -> the (B, h, w, 1) map scaled to [0, 1] per image (model dtype), and each
        image's minimum and maximum, (B, 1, 1) float32."""
        if not isinstance(prompt_depth, mx.array):
            prompt_depth = mx.array(np.asarray(prompt_depth, dtype=np.float32))
        if prompt_depth.ndim != 4 or tuple(prompt_depth.shape[:2]) != (batch, 1) or 0 in prompt_depth.shape:
            raise ValueError(
                f"prompt_depth must have shape ({batch}, 1, height, width) for {batch} image(s), "
                f"got {tuple(prompt_depth.shape)}"
            )
        prompt = prompt_depth.astype(mx.float32).reshape(batch, *prompt_depth.shape[2:], 1)  # one channel: NCHW -> NHWC
        low = prompt.min(axis=(1, 2, 3), keepdims=True)
        high = prompt.max(axis=(1, 2, 3), keepdims=True)
        # The reference divides by (max - min) regardless and returns NaN; say why instead.
        if not (mx.all(high > low) & mx.all(mx.isfinite(prompt))).item():
            raise ValueError(
                "prompt_depth must be finite and vary within each image (its min and max set the output's range)"
            )
        return ((prompt - low) / (high - low)).astype(self.dtype), low[..., 0], high[..., 0]

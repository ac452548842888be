"""DPT neck: the reassemble stage (tokens -> image-like maps) and the fusion stage.

Everything here is channels-last: maps are (B, H, W, C).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..layers import PreActResidualLayer, Resize, activation


class ReadoutProject(nn.Module):
    """Concatenate the CLS token to every patch token and project back: GELU(Linear(2C -> C))."""

    def __init__(self, hidden_size: int, act: str):
        super().__init__()
        self.dense = nn.Linear(2 * hidden_size, hidden_size)
        self.act = activation(act)

    def __call__(self, tokens: mx.array, cls: mx.array) -> mx.array:
        readout = mx.broadcast_to(cls[:, None, :], tokens.shape)
        return self.act(self.dense(mx.concatenate([tokens, readout], axis=-1)))


class ReassembleLayer(nn.Module):
    """1x1 projection to ``channels``, then resize by ``factor``: >1 transposed conv, 1 identity, <1 strided conv."""

    def __init__(self, hidden_size: int, channels: int, factor: float):
        super().__init__()
        self.projection = nn.Conv2d(hidden_size, channels, kernel_size=1)
        if factor > 1:
            k = int(factor)
            self.resize = nn.ConvTranspose2d(channels, channels, kernel_size=k, stride=k)
        elif factor == 1:
            self.resize = nn.Identity()
        else:
            self.resize = nn.Conv2d(channels, channels, kernel_size=3, stride=int(1 / factor), padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        return self.resize(self.projection(x))


class ReassembleStage(nn.Module):
    """Token sequences (B, 1 + gh*gw, C) -> maps (B, gh', gw', C_i) at the stages' resolutions.

    Stages listed in ``ignore_stages`` (the BiT feature maps of DPT-Hybrid) pass through untouched.
    """

    def __init__(self, config, hidden_size: int):
        super().__init__()
        self.readout_type = config.readout_type
        self.ignore_stages = set(config.neck_ignore_stages)
        self.layers = [
            nn.Identity() if i in self.ignore_stages else ReassembleLayer(hidden_size, channels, factor)
            for i, (channels, factor) in enumerate(zip(config.neck_hidden_sizes, config.reassemble_factors))
        ]
        if self.readout_type == "project":
            self.readout_projects = [
                nn.Identity() if i in self.ignore_stages else ReadoutProject(hidden_size, config.hidden_act)
                for i in range(len(config.neck_hidden_sizes))
            ]

    def __call__(self, hidden_states: list[mx.array], grid: tuple[int, int]) -> list[mx.array]:
        gh, gw = grid
        out = []
        for i, x in enumerate(hidden_states):
            if i in self.ignore_stages:
                out.append(x)
                continue
            cls, tokens = x[:, 0], x[:, 1:]
            if self.readout_type == "project":
                tokens = self.readout_projects[i](tokens, cls)
            elif self.readout_type == "add":
                tokens = tokens + cls[:, None, :]
            b, n, c = tokens.shape
            if n != gh * gw:
                raise ValueError(f"stage {i} has {n} tokens, expected a {gh}x{gw} grid")
            out.append(self.layers[i](tokens.reshape(b, gh, gw, c)))
        return out


class PromptDepthLayer(nn.Module):
    """conv3x3 (1 -> C), ReLU, conv3x3, ReLU, conv3x3: a depth map's features, added in a fusion layer."""

    def __init__(self, channels: int):
        super().__init__()
        self.convolution1 = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.convolution2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.convolution3 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def __call__(self, depth: mx.array) -> mx.array:
        return self.convolution3(nn.relu(self.convolution2(nn.relu(self.convolution1(depth)))))


class FeatureFusionLayer(nn.Module):
    """Add the (resized) skip features, refine, upsample 2x (bilinear, align_corners=True), project.

    With ``prompt_depth`` (Prompt Depth Anything) it also has a ``prompt_depth_layer``: a (B, h, w, 1)
    depth map given to the call is resized to the refined map's size (bilinear, align_corners=False)
    and its features are added before the upsampling.
    """

    def __init__(self, config, align_corners: bool = True, prompt_depth: bool = False):
        super().__init__()
        channels = config.fusion_hidden_size
        bn, bias = bool(config.use_batch_norm_in_fusion_residual), config.use_bias_in_residual
        self.align_corners = align_corners
        self.projection = nn.Conv2d(channels, channels, kernel_size=1)
        self.resample = Resize()
        self.residual_layer1 = PreActResidualLayer(channels, bn, bias)
        self.residual_layer2 = PreActResidualLayer(channels, bn, bias)
        if prompt_depth:
            self.prompt_depth_layer = PromptDepthLayer(channels)

    def __call__(
        self,
        x: mx.array,
        residual: mx.array | None = None,
        size: tuple[int, int] | None = None,
        prompt_depth: mx.array | None = None,
    ):
        if residual is not None:
            if residual.shape != x.shape:
                residual = self.resample(residual, x.shape[1:3], "bilinear", align_corners=False)
            x = x + self.residual_layer1(residual)
        x = self.residual_layer2(x)
        if prompt_depth is not None:
            depth = self.resample(prompt_depth, x.shape[1:3], "bilinear", align_corners=False)
            x = x + self.prompt_depth_layer(depth)
        size = (2 * x.shape[1], 2 * x.shape[2]) if size is None else size
        x = self.resample(x, size, "bilinear", self.align_corners)
        return self.projection(x)


class FeatureFusionStage(nn.Module):
    """Fuse from the coarsest map to the finest.

    Each layer upsamples its output 2x (DPT); with ``upsample_to_next`` (Depth Anything) it resizes
    it to the next (finer) map's size instead, and only the last layer upsamples 2x. With
    ``prompt_depth`` every layer takes the same prompt depth map (see FeatureFusionLayer).
    """

    def __init__(self, config, upsample_to_next: bool = False, prompt_depth: bool = False):
        super().__init__()
        self.upsample_to_next = upsample_to_next
        self.layers = [FeatureFusionLayer(config, prompt_depth=prompt_depth) for _ in config.neck_hidden_sizes]

    def __call__(self, features: list[mx.array], prompt_depth: mx.array | None = None) -> list[mx.array]:
        """Returns the fused maps, coarsest first."""
        features = features[::-1]
        fused, out = None, []
        for i, (x, layer) in enumerate(zip(features, self.layers)):
            size = features[i + 1].shape[1:3] if self.upsample_to_next and i + 1 < len(features) else None
            if fused is None:
                fused = layer(x, size=size, prompt_depth=prompt_depth)
            else:
                fused = layer(fused, x, size=size, prompt_depth=prompt_depth)
            out.append(fused)
        return out


class DPTNeck(nn.Module):
    """Reassemble (unless the backbone is hierarchical), 3x3 convs to fusion width, fuse (with a prompt
    depth map in every fusion layer when built with ``prompt_depth``)."""

    def __init__(
        self,
        config,
        hidden_size: int,
        reassemble: bool = True,
        upsample_to_next: bool = False,
        prompt_depth: bool = False,
    ):
        super().__init__()
        self.num_stages = len(config.neck_hidden_sizes)
        self.reassemble_stage = ReassembleStage(config, hidden_size) if reassemble else None
        self.convs = [
            nn.Conv2d(c, config.fusion_hidden_size, kernel_size=3, padding=1, bias=False)
            for c in config.neck_hidden_sizes
        ]
        self.fusion_stage = FeatureFusionStage(config, upsample_to_next, prompt_depth)

    def __call__(
        self, hidden_states: list[mx.array], grid: tuple[int, int] | None = None, prompt_depth: mx.array | None = None
    ) -> list[mx.array]:
        if len(hidden_states) != self.num_stages:
            raise ValueError(f"the neck expects {self.num_stages} feature maps, got {len(hidden_states)}")
        if self.reassemble_stage is not None:
            hidden_states = self.reassemble_stage(hidden_states, grid)
        features = [conv(x) for conv, x in zip(self.convs, hidden_states)]
        return self.fusion_stage(features, prompt_depth)

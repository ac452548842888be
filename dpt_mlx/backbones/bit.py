"""BiT (ResNetV2) backbone and the DPT-Hybrid embeddings built on it.

Everything is channels-last: maps are (B, H, W, C). Module names follow transformers'
``BitBackbone`` / ``DPTViTHybridEmbeddings`` so checkpoint keys load without renames.

Reference subtleties kept here:

- every convolution is weight-standardised per output channel (biased variance, eps 1e-8 in
  all of BiT's convolutions) before it is applied;
- ``global_padding="SAME"`` is TensorFlow's SAME: static symmetric padding where the
  kernel allows it (stride 1, even total), else padding computed from the input size, with the
  odd pixel on the bottom/right;
- the stem max-pool's dynamic padding pads with zeros, not -inf, and without SAME padding
  the stem pads by one pixel *before* its GroupNorm, so the zeros count in the statistics;
- GroupNorm groups contiguous channels, as PyTorch does (``pytorch_compatible=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..configs.base import BaseConfig, align_out_features, check_act, pair, stage_names
from ..errors import UnsupportedModelError
from ..layers import activation
from .transformer import resize_position_embeddings, with_cls_token

# DPT-Hybrid's BiT backbone when a config has ``is_hybrid`` and no ``backbone_config``
# (transformers' DPTConfig.sub_configs_defaults["backbone_config"]).
HYBRID_BIT_DEFAULTS = {
    "model_type": "bit",
    "global_padding": "same",
    "layer_type": "bottleneck",
    "depths": [3, 4, 9],
    "out_features": ["stage1", "stage2", "stage3"],
    "embedding_dynamic_padding": True,
}


@dataclass
class BitConfig(BaseConfig):
    """``transformers.BitConfig`` (the ResNetV2 backbone of DPT-Hybrid): the same fields and defaults."""

    model_type: str = "bit"
    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: list[int] = (256, 512, 1024, 2048)
    depths: list[int] = (3, 4, 6, 3)
    layer_type: str = "preactivation"
    hidden_act: str = "relu"
    global_padding: str | None = None
    num_groups: int = 32
    drop_path_rate: float = 0.0
    embedding_dynamic_padding: bool = False
    output_stride: int = 32
    width_factor: int = 1
    out_features: list[str] | None = None
    out_indices: list[int] | None = None

    POSITIVE = frozenset(
        {"num_channels", "embedding_size", "hidden_sizes", "depths", "num_groups", "output_stride", "width_factor"}
    )
    NON_NEGATIVE = frozenset({"drop_path_rate"})

    def __post_init__(self):
        super().__post_init__()
        if self.model_type != "bit":
            raise UnsupportedModelError(
                f"DPT-Hybrid backbone model_type {self.model_type!r} is not supported; only 'bit' is"
            )
        self.hidden_sizes, self.depths = list(self.hidden_sizes), list(self.depths)
        if self.global_padding is not None:
            self.global_padding = self.global_padding.upper()
        if self.layer_type not in ("preactivation", "bottleneck"):
            raise ValueError(f"layer_type={self.layer_type!r} is not one of preactivation, bottleneck")
        if self.global_padding not in (None, "SAME"):
            # transformers accepts "VALID" too, but its unpadded 3x3 convs then cannot add to the residual
            raise ValueError(f"global_padding={self.global_padding!r} is not one of None, 'SAME'")
        check_act("hidden_act", self.hidden_act)
        if len(self.hidden_sizes) < len(self.depths):
            raise ValueError(f"hidden_sizes {self.hidden_sizes} has fewer entries than depths {self.depths}")
        self.out_features, self.out_indices = align_out_features(self.stage_names, self.out_features, self.out_indices)

    @property
    def stage_names(self) -> list[str]:
        return stage_names(len(self.depths))


def make_div(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` (never down by more than 10%)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def padding_value(padding: str | None, kernel_size: int, stride: int = 1, dilation: int = 1) -> tuple[int, bool]:
    """(static padding, dynamic?) for a ``global_padding`` mode, as transformers' ``get_padding_value``."""
    symmetric = ((stride - 1) + dilation * (kernel_size - 1)) // 2
    if padding is None:
        return symmetric, False
    padding = padding.lower()
    if padding == "same":
        if stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0:
            return symmetric, False
        return 0, True
    if padding == "valid":
        return 0, False
    return symmetric, False


def same_padding(size: int, kernel_size: int, stride: int, dilation: int) -> int:
    """Total TF-SAME padding of one axis of length ``size``."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)


def pad_same(x: mx.array, kernel_size: int, stride: int, dilation: int = 1, value: float = 0.0) -> mx.array:
    """Dynamic SAME padding of an NHWC map: half before, the rest (one more when odd) after."""
    ph = same_padding(x.shape[1], kernel_size, stride, dilation)
    pw = same_padding(x.shape[2], kernel_size, stride, dilation)
    if ph == 0 and pw == 0:
        return x
    return mx.pad(x, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)], constant_values=value)


def conv_out_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int, dynamic: bool) -> int:
    """Output length of one axis of a convolution or pooling with the padding rules above."""
    size += same_padding(size, kernel_size, stride, dilation) if dynamic else 2 * padding
    return (size - dilation * (kernel_size - 1) - 1) // stride + 1


class WeightStandardizedConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardised per output channel: (w - mean) / sqrt(var + eps)."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding="SAME",
        dilation=1,
        groups=1,
        bias=False,
        eps=1e-6,
    ):
        static, dynamic = padding_value(padding, kernel_size, stride, dilation)
        # ints only: kernel_size, stride and dilation are square here
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=static,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.kernel = kernel_size
        self.dynamic = dynamic
        self.eps = eps

    def out_size(self, size: int) -> int:
        return conv_out_size(size, self.kernel, self.stride[0], self.padding[0], self.dilation, self.dynamic)

    def standardized_weight(self, dtype) -> mx.array:
        """The kernel standardised per output channel (statistics in float32), in ``dtype``."""
        w = self.weight.astype(mx.float32)  # (O, kH, kW, I): statistics over all but O
        mean = w.mean(axis=(1, 2, 3), keepdims=True)
        var = w.var(axis=(1, 2, 3), keepdims=True)
        return ((w - mean) * mx.rsqrt(var + self.eps)).astype(dtype)

    def __call__(self, x: mx.array) -> mx.array:
        if self.dynamic:
            x = pad_same(x, self.kernel, self.stride[0], self.dilation)
        w = self.standardized_weight(x.dtype)
        y = mx.conv2d(x, w, self.stride, self.padding, self.dilation, self.groups)
        return y + self.bias if "bias" in self else y


class GroupNormActivation(nn.GroupNorm):
    """PyTorch-grouped GroupNorm followed by the activation (or none)."""

    def __init__(self, config: BitConfig, channels: int, eps: float = 1e-5, apply_activation: bool = True):
        super().__init__(config.num_groups, channels, eps=eps, affine=True, pytorch_compatible=True)
        self.act = activation(config.hidden_act) if apply_activation else None

    def __call__(self, x: mx.array) -> mx.array:
        x = super().__call__(x)
        return self.act(x) if self.act is not None else x


class MaxPool2d(nn.Module):
    """Max-pool with optional dynamic SAME padding (padded with zeros, as the reference does)."""

    def __init__(self, kernel_size: int, stride: int, dynamic_padding: bool):
        super().__init__()
        self.kernel = kernel_size
        self.stride = stride
        self.dynamic = dynamic_padding
        self.pool = nn.MaxPool2d(kernel_size, stride=stride, padding=0)

    def out_size(self, size: int) -> int:
        return conv_out_size(size, self.kernel, self.stride, 0, 1, self.dynamic)

    def __call__(self, x: mx.array) -> mx.array:
        if self.dynamic:
            x = pad_same(x, self.kernel, self.stride)
        return self.pool(x)


class BitEmbeddings(nn.Module):
    """The stem: 7x7/2 weight-standardised conv, [pad 1], [GroupNorm + act], 3x3/2 max-pool."""

    def __init__(self, config: BitConfig):
        super().__init__()
        self.convolution = WeightStandardizedConv2d(
            config.num_channels,
            config.embedding_size,
            kernel_size=7,
            stride=2,
            eps=1e-8,
            padding=config.global_padding,
        )
        self.pooler = MaxPool2d(3, 2, dynamic_padding=config.embedding_dynamic_padding)
        self.pad = config.global_padding != "SAME"  # ConstantPad2d(1) when not TF-SAME
        self.norm = GroupNormActivation(config, config.embedding_size) if config.layer_type != "preactivation" else None

    def out_size(self, size: int) -> int:
        return self.pooler.out_size(self.convolution.out_size(size) + (2 if self.pad else 0))

    def __call__(self, x: mx.array) -> mx.array:
        x = self.convolution(x)
        if self.pad:
            x = mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
        if self.norm is not None:
            x = self.norm(x)
        return self.pooler(x)


class BitDownsampleConv(nn.Module):
    """The projection shortcut: 1x1 (strided) conv, GroupNorm without activation unless pre-activation."""

    def __init__(self, config: BitConfig, in_channels: int, out_channels: int, stride: int, preact: bool):
        super().__init__()
        self.conv = WeightStandardizedConv2d(
            in_channels, out_channels, 1, stride=stride, eps=1e-8, padding=config.global_padding
        )
        self.norm = None if preact else GroupNormActivation(config, out_channels, apply_activation=False)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv(x)
        return self.norm(x) if self.norm is not None else x


class BitPreActivationBottleneckLayer(nn.Module):
    """Pre-activation (v2) bottleneck: norm-act before each conv, the stride on the 3x3 conv."""

    def __init__(
        self, config, in_channels, out_channels, stride=1, dilation=1, first_dilation=None, is_first_layer=False
    ):
        super().__init__()
        mid = make_div(out_channels * 0.25)
        self.downsample = (
            BitDownsampleConv(config, in_channels, out_channels, stride, preact=True) if is_first_layer else None
        )
        pad = config.global_padding
        self.norm1 = GroupNormActivation(config, in_channels)
        self.conv1 = WeightStandardizedConv2d(in_channels, mid, 1, eps=1e-8, padding=pad)
        self.norm2 = GroupNormActivation(config, mid)
        # The reference passes no dilation to this conv.
        self.conv2 = WeightStandardizedConv2d(mid, mid, 3, stride=stride, eps=1e-8, padding=pad)
        self.norm3 = GroupNormActivation(config, mid)
        self.conv3 = WeightStandardizedConv2d(mid, out_channels, 1, eps=1e-8, padding=pad)

    def __call__(self, x: mx.array) -> mx.array:
        preact = self.norm1(x)
        shortcut = self.downsample(preact) if self.downsample is not None else x
        h = self.conv1(preact)
        h = self.conv2(self.norm2(h))
        h = self.conv3(self.norm3(h))
        return h + shortcut


class BitBottleneckLayer(nn.Module):
    """Non-pre-activation bottleneck (ResNet v1.5 style), the layer of DPT-Hybrid."""

    def __init__(
        self, config, in_channels, out_channels, stride=1, dilation=1, first_dilation=None, is_first_layer=False
    ):
        super().__init__()
        first_dilation = first_dilation or dilation
        mid = make_div(out_channels * 0.25)
        self.downsample = (
            BitDownsampleConv(config, in_channels, out_channels, stride, preact=False) if is_first_layer else None
        )
        pad = config.global_padding
        self.conv1 = WeightStandardizedConv2d(in_channels, mid, 1, eps=1e-8, padding=pad)
        self.norm1 = GroupNormActivation(config, mid)
        self.conv2 = WeightStandardizedConv2d(
            mid, mid, 3, stride=stride, dilation=first_dilation, eps=1e-8, padding=pad
        )
        self.norm2 = GroupNormActivation(config, mid)
        self.conv3 = WeightStandardizedConv2d(mid, out_channels, 1, eps=1e-8, padding=pad)
        self.norm3 = GroupNormActivation(config, out_channels, apply_activation=False)
        self.act = activation(config.hidden_act)

    def __call__(self, x: mx.array) -> mx.array:
        shortcut = self.downsample(x) if self.downsample is not None else x
        h = self.norm1(self.conv1(x))
        h = self.norm2(self.conv2(h))
        h = self.norm3(self.conv3(h))
        return self.act(h + shortcut)


class BitStage(nn.Module):
    def __init__(self, config: BitConfig, in_channels: int, out_channels: int, stride: int, dilation: int, depth: int):
        super().__init__()
        layer_cls = BitBottleneckLayer if config.layer_type == "bottleneck" else BitPreActivationBottleneckLayer
        first_dilation = 1 if dilation in (1, 2) else 2
        self.layers = []
        for i in range(depth):
            self.layers.append(
                layer_cls(
                    config,
                    in_channels,
                    out_channels,
                    stride=stride if i == 0 else 1,
                    dilation=dilation,
                    first_dilation=first_dilation,
                    is_first_layer=i == 0,
                )
            )
            in_channels, first_dilation = out_channels, dilation

    def out_size(self, size: int) -> int:
        return self.layers[0].conv2.out_size(size)

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class BitEncoder(nn.Module):
    def __init__(self, config: BitConfig):
        super().__init__()
        in_channels, current_stride, dilation = config.embedding_size, 4, 1
        self.stages = []
        for i, (depth, hidden) in enumerate(zip(config.depths, config.hidden_sizes)):
            out_channels = make_div(hidden * config.width_factor)
            stride = 1 if i == 0 else 2
            if current_stride >= config.output_stride:  # past output_stride: dilate instead of striding
                dilation *= stride
                stride = 1
            self.stages.append(BitStage(config, in_channels, out_channels, stride, dilation, depth))
            in_channels = out_channels
            current_stride *= stride


class BitModel(nn.Module):
    def __init__(self, config: BitConfig):
        super().__init__()
        self.embedder = BitEmbeddings(config)
        self.encoder = BitEncoder(config)
        # BitModel's final norm (pre-activation only) never reaches the backbone's feature maps;
        # weights.py drops it.


class BitBackbone(nn.Module):
    """BiT as a backbone: the NHWC outputs of the ``out_features`` stages."""

    def __init__(self, config: BitConfig):
        super().__init__()
        self.bit = BitModel(config)
        self.out_indices = list(config.out_indices)
        self.channels = [
            config.embedding_size if i == 0 else make_div(config.hidden_sizes[i - 1] * config.width_factor)
            for i in self.out_indices
        ]

    def out_size(self, size: int) -> int:
        """Length of one axis of the last output map for an input axis of length ``size``."""
        size = self.bit.embedder.out_size(size)
        for stage in self.bit.encoder.stages[: max(self.out_indices)]:
            size = stage.out_size(size)
        return size

    def __call__(self, x: mx.array) -> list[mx.array]:
        x = self.bit.embedder(x)
        hidden_states = [x]
        for stage in self.bit.encoder.stages[: max(self.out_indices)]:  # later stages feed nothing
            x = stage(x)
            hidden_states.append(x)
        return [hidden_states[i] for i in self.out_indices]


class HybridEmbeddings(nn.Module):
    """DPT-Hybrid embeddings: BiT feature maps -> 1x1 projection -> CLS + tokens + resized position embeddings.

    Called on NHWC pixels; returns the tokens (B, 1 + gh * gw, hidden) and the first two BiT
    feature maps (NHWC) for the neck. The position embeddings (trained on the
    ``image_size / patch_size`` grid) are resized to the true token grid, so any input size works.
    """

    def __init__(self, config):
        super().__init__()
        bit = config.bit
        gh, gw = (i // p for i, p in zip(pair(config.image_size), pair(config.patch_size)))
        num_patches = gh * gw
        self.backbone = BitBackbone(bit)
        # The reference sizes the projection from backbone_featmap_shape[1], not from the backbone.
        feature_dim = config.backbone_featmap_shape[1] if config.backbone_featmap_shape else self.backbone.channels[-1]
        if feature_dim != self.backbone.channels[-1]:
            raise ValueError(
                f"backbone_featmap_shape[1]={feature_dim} does not match the BiT backbone's last stage "
                f"({self.backbone.channels[-1]} channels)"
            )
        # Pixels per token: the stem's 4 times the strides of the stages that feed the last map
        # (the 1x1 projection keeps the BiT grid). 16 for DPT-Hybrid.
        stages = self.backbone.bit.encoder.stages[: max(bit.out_indices)]
        self.patch_size = 4 * math.prod(stage.layers[0].conv2.stride[0] for stage in stages)
        self.projection = nn.Conv2d(feature_dim, config.hidden_size, kernel_size=1)
        self.cls_token = mx.zeros((1, 1, config.hidden_size))
        self.position_embeddings = mx.zeros((1, num_patches + 1, config.hidden_size))

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The (gh, gw) token grid for an input of ``height`` x ``width`` pixels.

        With SAME padding this is ceil(H / 16) x ceil(W / 16), not floor: the reference resizes its
        position embeddings to H // 16 and fails on sizes that are not multiples of 16.
        """
        return self.backbone.out_size(height), self.backbone.out_size(width)

    def __call__(self, x: mx.array) -> tuple[mx.array, tuple[int, int], list[mx.array]]:
        """(B, H, W, 3) -> (tokens (B, 1 + gh * gw, hidden), the (gh, gw) grid, [stage-1 map, stage-2 map])."""
        maps = self.backbone(x)
        emb = self.projection(maps[-1])
        b, gh, gw, c = emb.shape
        emb = with_cls_token(self.cls_token, emb.reshape(b, gh * gw, c))
        pos = resize_position_embeddings(self.position_embeddings, (gh, gw)).astype(emb.dtype)
        return emb + pos, (gh, gw), maps[:2]

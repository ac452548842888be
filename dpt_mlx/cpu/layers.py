"""Drop-in layers for MLX's CPU backend: each has the parameters of the layer it replaces, computes
through the compiled kernels (:mod:`dpt_mlx.cpu.native`) on the CPU, and runs the replaced layer's
own code on any other device.

:func:`fast_layer` says which layer stands in for a given one; :func:`dpt_mlx.cpu.accelerate`
applies it to a whole model without changing any parameter path. Where a model chains a product
and cheap operations (a linear layer and its activation, a convolution and its ReLUs and
residual), the standing-in layer fuses them into the product's epilogue.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .. import layers
from ..backbones import beit, bit, dinov2, swinv2, transformer, vit
from ..ops import interpolation_matrix
from .memory import before_pass
from .native import kernels


def on_cpu() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _act_name(module: nn.Module) -> str | None:
    """The kernels' name of an activation module, or None when they have none for it."""
    if isinstance(module, layers.GELU):
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if isinstance(module, nn.ReLU):
        return "relu"
    return None


def _weight(layer: nn.Module) -> mx.array:
    """A linear layer's (out, in) weight; a quantised layer's is dequantised for this call only."""
    if isinstance(layer, nn.QuantizedLinear):
        return mx.dequantize(layer["weight"], layer["scales"], layer.get("biases"), group_size=layer.group_size,
                             bits=layer.bits, mode=layer.mode)
    return layer["weight"]


def linear(layer: nn.Module, x: mx.array, act: str = "none", residual=None, scale=None) -> mx.array:
    """``residual + scale * act(layer(x))`` through the kernels (``layer`` plain or quantised)."""
    return kernels().linear(x, _weight(layer), layer.get("bias"), scale, residual, act)


def _moved(layer: nn.Module, cls: type) -> nn.Module:
    """``layer``'s arrays and attributes (no copies) in a module of class ``cls``."""
    fast = cls.__new__(cls)
    dict.update(fast, layer)
    fast.__dict__.update(layer.__dict__)
    return fast


# ------------------------------------------------------------------------ single layers


class Linear(nn.Linear):
    """A linear layer whose bias is added in the product's epilogue (float32 compute)."""

    def __call__(self, x: mx.array) -> mx.array:
        return linear(self, x) if on_cpu() else super().__call__(x)


class QuantizedLinear(nn.QuantizedLinear):
    """A quantised linear layer: its weight is dequantised for the call and multiplied by the
    kernels' BLAS (MLX's CPU ``quantized_matmul`` runs at a few GFLOP/s); the packed weight stays
    the only resident copy."""

    def __call__(self, x: mx.array) -> mx.array:
        return linear(self, x) if on_cpu() else super().__call__(x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm over rows on every thread."""

    def __call__(self, x: mx.array) -> mx.array:
        if not on_cpu():
            return super().__call__(x)
        return kernels().layer_norm(x, self.get("weight"), self.get("bias"), self.eps)


class GELU(layers.GELU):
    def __call__(self, x: mx.array) -> mx.array:
        return kernels().activation(x, _act_name(self)) if on_cpu() else super().__call__(x)


class Attention(layers.ScaledDotProductAttention):
    """Fused attention (scores, online softmax and values per block of queries, on every thread);
    an additive mask is the kernel's bias. The result is laid out (B, N, H, D) in memory, so the
    caller's transpose back to tokens costs nothing."""

    def __call__(self, q, k, v, scale, mask=None):
        if not on_cpu() or (mask is not None and mask.dtype == mx.bool_):
            return super().__call__(q, k, v, scale, mask)
        return kernels().attention(q, k, v, scale, mask)


class Conv2d(nn.Conv2d):
    """A convolution (groups 1) as blocked im2col products with the bias in the epilogue."""

    def __call__(self, x: mx.array) -> mx.array:
        if not on_cpu() or self.groups != 1:
            return super().__call__(x)
        return conv(self, x)


def conv(layer: nn.Conv2d, x: mx.array, pre_relu: bool = False, act: str = "none", residual=None) -> mx.array:
    """``residual + act(layer(relu(x) if pre_relu else x))`` through the kernels."""
    return kernels().conv2d(x, layer["weight"], layer.get("bias"), _pair(layer.stride), _pair(layer.padding),
                            _pair(layer.dilation), pre_relu, act, residual)


class WeightStandardizedConv2d(bit.WeightStandardizedConv2d):
    """BiT's convolution: the kernel standardised per output channel (in MLX ops, on the small
    weight), then the convolution through the kernels."""

    def __call__(self, x: mx.array) -> mx.array:
        if not on_cpu() or self.groups != 1:
            return super().__call__(x)
        if self.dynamic:
            x = bit.pad_same(x, self.kernel, self.stride[0], self.dilation)
        w = self.weight.astype(mx.float32)  # (O, kH, kW, I): statistics over all but O
        w = (w - w.mean(axis=(1, 2, 3), keepdims=True)) * mx.rsqrt(w.var(axis=(1, 2, 3), keepdims=True) + self.eps)
        return kernels().conv2d(x, w.astype(x.dtype), self.get("bias"), _pair(self.stride), _pair(self.padding),
                                _pair(self.dilation), False, "none", None)


class GroupNormActivation(bit.GroupNormActivation):
    """BiT's GroupNorm (groups of contiguous channels) with its ReLU, in one pass after the statistics."""

    def __call__(self, x: mx.array) -> mx.array:
        act = "none" if self.act is None else _act_name(self.act)
        if not on_cpu() or act is None or not self.pytorch_compatible:
            return super().__call__(x)
        return kernels().group_norm(x, self.get("weight"), self.get("bias"), self.num_groups, self.eps, act)


class PatchConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution whose stride equals its square kernel (no padding): every input
    pixel writes its own k x k block, so it is one product and a scatter."""

    @staticmethod
    def applies(layer: nn.ConvTranspose2d) -> bool:
        k = tuple(layer.weight.shape[1:3])
        return (_pair(layer.stride) == k and k[0] == k[1] and _pair(layer.padding) == (0, 0)
                and _pair(layer.dilation) == (1, 1) and _pair(layer.output_padding) == (0, 0)
                and getattr(layer, "groups", 1) == 1)

    def __call__(self, x: mx.array) -> mx.array:
        if not on_cpu():
            return super().__call__(x)
        return kernels().conv_transpose_patch(x, self["weight"], self.get("bias"))


@lru_cache(maxsize=256)
def _taps(n_in: int, n_out: int, mode: str, align_corners: bool) -> tuple[mx.array, mx.array]:
    """The (n_out, taps) input positions and weights of one resized axis (PyTorch's sampling, from
    :func:`dpt_mlx.ops.interpolation_matrix`); unused taps have weight 0."""
    m = interpolation_matrix(n_in, n_out, mode, align_corners)
    taps = max(1, int((m != 0).sum(axis=1).max()))
    index = np.zeros((n_out, taps), np.int32)
    weight = np.zeros((n_out, taps), np.float32)
    for row in range(n_out):
        cols = np.nonzero(m[row])[0]
        index[row, : len(cols)] = cols
        weight[row, : len(cols)] = m[row, cols]
    return mx.array(index), mx.array(weight)


class Resize(layers.Resize):
    """Separable resizes on every thread, a few taps per output pixel instead of a dense product."""

    def __call__(self, x, size, mode="bilinear", align_corners=False):
        if not on_cpu():
            return super().__call__(x, size, mode, align_corners)
        _, h, w, _ = x.shape
        rows = _taps(h, int(size[0]), mode, bool(align_corners))
        cols = _taps(w, int(size[1]), mode, bool(align_corners))
        return kernels().resize(x, *rows, *cols)


# ------------------------------------------------------------------------ fused blocks


class Intermediate(transformer.Intermediate):
    """``act(dense(x))`` with the activation in the product's epilogue."""

    def __call__(self, x):
        act = _act_name(self.act)
        return linear(self.dense, x, act) if on_cpu() and act else super().__call__(x)


class Swinv2Intermediate(swinv2.Swinv2Intermediate):
    def __call__(self, x):
        act = _act_name(self.act)
        return linear(self.dense, x, act) if on_cpu() and act else super().__call__(x)


class Dinov2MLP(dinov2.MLP):
    """``fc2(act(fc1(x)))`` with the activation in fc1's epilogue."""

    def __call__(self, x):
        act = _act_name(self.act)
        if not (on_cpu() and act):
            return super().__call__(x)
        return linear(self.fc2, linear(self.fc1, x, act))


class PreActResidualLayer(layers.PreActResidualLayer):
    """``x + conv2(relu(conv1(relu(x))))``: both ReLUs applied while the convolutions gather their
    input and the residual added in the second one's epilogue (without BatchNorm)."""

    def __call__(self, x):
        if not on_cpu() or self.use_batch_norm:
            return super().__call__(x)
        h = conv(self.convolution1, x, pre_relu=True)
        return conv(self.convolution2, h, pre_relu=True, residual=x)


class ViTLayer(vit.ViTLayer):
    """A ViT block with both residual adds in the epilogues of the products before them (and the
    MLP's activation in its first product)."""

    def __call__(self, x, output_attentions=False):
        act = _act_name(self.intermediate.act)
        if not on_cpu() or self.training or act is None:
            return super().__call__(x, output_attentions)
        core, probs = self.attention.attention(self.layernorm_before(x), output_attentions=output_attentions)
        x = linear(self.attention.output.dense, core, residual=x)
        h = linear(self.intermediate.dense, self.layernorm_after(x), act)
        return linear(self.output.dense, h, residual=x), probs


class BeitLayer(beit.BeitLayer):
    """A BEiT block with the layer scales and residual adds in the epilogues of the products."""

    def __call__(self, x, grid, shared_bias=None, output_attentions=False):
        act = _act_name(self.intermediate.act)
        if not on_cpu() or self.training or act is None:
            return super().__call__(x, grid, shared_bias, output_attentions)
        core, probs = self.attention.attention(self.layernorm_before(x), grid, shared_bias, output_attentions)
        scale1 = self["lambda_1"] if self.use_layer_scale else None
        scale2 = self["lambda_2"] if self.use_layer_scale else None
        x = linear(self.attention.output.dense, core, residual=x, scale=scale1)
        h = linear(self.intermediate.dense, self.layernorm_after(x), act)
        return linear(self.output.dense, h, residual=x, scale=scale2), probs


class Dinov2Layer(dinov2.Dinov2Layer):
    """A DINOv2 block with the layer scales and residual adds in the epilogues of the products."""

    def __call__(self, x, output_attentions=False):
        act = _act_name(self.mlp.act) if isinstance(self.mlp, dinov2.MLP) else None
        if not on_cpu() or self.training or act is None:
            return super().__call__(x, output_attentions)
        core, probs = self.attention.attention(self.norm1(x), output_attentions=output_attentions)
        x = linear(self.attention.output.dense, core, residual=x, scale=self.layer_scale1.lambda1)
        h = linear(self.mlp.fc1, self.norm2(x), act)
        return linear(self.mlp.fc2, h, residual=x, scale=self.layer_scale2.lambda1), probs


# ------------------------------------------------------------------------ fused model blocks
#
# Mixins for blocks of the models (found by their qualified name, so this module does not import
# the model package, which imports the loader that imports this one): the block's own computation
# with the ReLUs in the convolutions' epilogues, its parent's (the model's) code off the CPU.


class _DPTDepthHead:
    """DPT's depth head: projection+ReLU, conv1, 2x resize, conv2+ReLU, conv3+ReLU, fused."""

    def __call__(self, hidden_states):
        if not on_cpu():
            return super().__call__(hidden_states)
        x = hidden_states[self.head_in_index]
        if self.projection is not None:
            x = conv(self.projection, x, act="relu")
        x = conv(self.conv1, x)
        x = self.resample(x, (2 * x.shape[1], 2 * x.shape[2]), "bilinear", align_corners=True)
        return conv(self.conv3, conv(self.conv2, x, act="relu"), act="relu")[..., 0]


class _DepthAnythingHead:
    """Depth Anything's head: conv1, resize to the patch grid's pixels, conv2+ReLU, conv3 (+ReLU
    for relative depth), fused."""

    def __call__(self, hidden_states, grid):
        if not on_cpu():
            return super().__call__(hidden_states, grid)
        x = conv(self.conv1, hidden_states[self.head_in_index])
        x = self.resample(x, (grid[0] * self.patch_size, grid[1] * self.patch_size), "bilinear", align_corners=True)
        x = conv(self.conv3, conv(self.conv2, x, act="relu"), act="none" if self.metric else "relu")
        x = mx.sigmoid(x) if self.metric else x
        return (x * self.max_depth)[..., 0]


class _ZoeDepthRelativeHead:
    def __call__(self, hidden_states):
        if not on_cpu():
            return super().__call__(hidden_states)
        x = hidden_states[self.head_in_index]
        if self.projection is not None:
            x = conv(self.projection, x, act="relu")
        x = conv(self.conv1, x)
        x = self.resample(x, (2 * x.shape[1], 2 * x.shape[2]), "bilinear", align_corners=True)
        features = conv(self.conv2, x, act="relu")
        return conv(self.conv3, features, act="relu")[..., 0], features


class _FeatureFusionLayer:
    """A DPT fusion layer whose 1x1 projection runs before the resize instead of after: both are
    linear and a resize's weights sum to one, so the result is the same (to float32 rounding) at a
    quarter of the projection's cost when the resize doubles the map."""

    def __call__(self, x, residual=None, size=None, prompt_depth=None):
        if not on_cpu():
            return super().__call__(x, residual, size, prompt_depth)
        if residual is not None:
            if residual.shape != x.shape:
                residual = self.resample(residual, x.shape[1:3], "bilinear", align_corners=False)
            x = x + self.residual_layer1(residual)
        x = self.residual_layer2(x)
        if prompt_depth is not None:
            depth = self.resample(prompt_depth, x.shape[1:3], "bilinear", align_corners=False)
            x = x + self.prompt_depth_layer(depth)
        size = (2 * x.shape[1], 2 * x.shape[2]) if size is None else size
        if size[0] * size[1] >= x.shape[1] * x.shape[2]:
            return self.resample(conv(self.projection, x), size, "bilinear", self.align_corners)
        return conv(self.projection, self.resample(x, size, "bilinear", self.align_corners))


_MIXINS = {
    "dpt_mlx.models.heads.DepthEstimationHead": _DPTDepthHead,
    "dpt_mlx.models.depth_anything.DepthAnythingDepthEstimationHead": _DepthAnythingHead,
    "dpt_mlx.models.zoedepth.ZoeDepthRelativeDepthEstimationHead": _ZoeDepthRelativeHead,
    "dpt_mlx.models.neck.FeatureFusionLayer": _FeatureFusionLayer,
}


class _CachePolicy:
    """A model's neck that first sizes MLX's CPU buffer cache (:func:`dpt_mlx.cpu.memory.before_pass`)."""

    def __call__(self, *args, **kwargs):
        if on_cpu():
            before_pass()
        return super().__call__(*args, **kwargs)


def with_cache_policy(neck: nn.Module) -> nn.Module:
    """``neck`` (its arrays, already swapped) in a class that applies the cache policy first."""
    if isinstance(neck, _CachePolicy):
        return neck
    return _moved(neck, _with_mixin(type(neck), _CachePolicy))


@lru_cache(maxsize=None)
def _with_mixin(cls: type, mixin: type) -> type:
    """``cls`` with ``mixin``'s call in front (the CPU layer of a model block)."""
    return type(cls.__name__, (mixin, cls), {"__module__": __name__, "__doc__": mixin.__doc__})


_FUSED = {
    vit.ViTLayer: ViTLayer,
    dinov2.Dinov2Layer: Dinov2Layer,
    beit.BeitLayer: BeitLayer,
    transformer.Intermediate: Intermediate,
    swinv2.Swinv2Intermediate: Swinv2Intermediate,
    dinov2.MLP: Dinov2MLP,
    layers.PreActResidualLayer: PreActResidualLayer,
}
_SINGLE = {
    nn.Linear: Linear,
    nn.QuantizedLinear: QuantizedLinear,
    nn.LayerNorm: LayerNorm,
    layers.GELU: GELU,
    layers.ScaledDotProductAttention: Attention,
    layers.Resize: Resize,
    bit.WeightStandardizedConv2d: WeightStandardizedConv2d,
    bit.GroupNormActivation: GroupNormActivation,
}


def fast_layer(layer: nn.Module) -> nn.Module:
    """The CPU layer that stands in for ``layer`` (the same arrays), or ``layer`` itself."""
    kind = type(layer)
    mixin = _MIXINS.get(f"{kind.__module__}.{kind.__qualname__}")
    if mixin is not None:
        return _moved(layer, _with_mixin(kind, mixin))
    if kind in _FUSED:
        return _moved(layer, _FUSED[kind])
    if kind in _SINGLE:
        return _moved(layer, _SINGLE[kind])
    if kind is nn.Conv2d:
        return _moved(layer, Conv2d)
    if kind is nn.ConvTranspose2d and PatchConvTranspose2d.applies(layer):
        return _moved(layer, PatchConvTranspose2d)
    return layer


FAST_LAYERS = (Linear, QuantizedLinear, LayerNorm, GELU, Attention, Conv2d, PatchConvTranspose2d, Resize,
               WeightStandardizedConv2d, GroupNormActivation,
               Intermediate, Swinv2Intermediate, Dinov2MLP, PreActResidualLayer, ViTLayer, Dinov2Layer, BeitLayer,
               *_MIXINS.values())

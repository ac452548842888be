"""Drop-in layers for MLX's CPU backend: each has the parameters of the layer it replaces, computes
through the compiled kernels (:mod:`dpt_mlx.cpu.native`) on the CPU, and runs the replaced layer's
own code on any other device. The fused layers of whole model blocks are in :mod:`dpt_mlx.cpu.blocks`.

:data:`SINGLE` says which layer stands in for which; :func:`dpt_mlx.cpu.blocks.fast_layer` applies
it, and :func:`dpt_mlx.cpu.accelerate` to a whole model, without changing any parameter path.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .. import layers
from ..backbones import bit
from ..ops import interpolation_matrix
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
        return mx.dequantize(
            layer["weight"],
            layer["scales"],
            layer.get("biases"),
            group_size=layer.group_size,
            bits=layer.bits,
            mode=layer.mode,
        )
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
    return kernels().conv2d(
        x,
        layer["weight"],
        layer.get("bias"),
        _pair(layer.stride),
        _pair(layer.padding),
        _pair(layer.dilation),
        pre_relu,
        act,
        residual,
    )


class _Standardized:
    """The standardised kernel of one weight array (held as a plain attribute, not a parameter)."""

    def __init__(self, weight: mx.array, standardized: mx.array):
        self.weight, self.standardized = weight, standardized


class WeightStandardizedConv2d(bit.WeightStandardizedConv2d):
    """BiT's convolution: the kernel standardised per output channel (in MLX ops), then the
    convolution through the kernels. In inference the standardised kernel is kept for as long as
    the layer holds the same weight array (MLX arrays never change in place: loading, casting or
    updating weights puts a new array there), instead of re-reading every weight each pass. SAME
    padding that is the same on both sides is the kernel's own, not a padded copy of the input."""

    def _standardized(self, dtype) -> mx.array:
        held = self.__dict__.get("_held")
        if held is not None and held.weight is self.weight and held.standardized.dtype == dtype:
            return held.standardized
        w = self.standardized_weight(dtype)
        if not self.training:
            self.__dict__["_held"] = _Standardized(self.weight, w)
        return w

    def __call__(self, x: mx.array) -> mx.array:
        if not on_cpu() or self.groups != 1:
            return super().__call__(x)
        padding = _pair(self.padding)
        if self.dynamic:
            ph = bit.same_padding(x.shape[1], self.kernel, self.stride[0], self.dilation)
            pw = bit.same_padding(x.shape[2], self.kernel, self.stride[0], self.dilation)
            if ph % 2 or pw % 2:
                x = bit.pad_same(x, self.kernel, self.stride[0], self.dilation)
            else:
                padding = (ph // 2, pw // 2)
        return kernels().conv2d(
            x,
            self._standardized(x.dtype),
            self.get("bias"),
            _pair(self.stride),
            padding,
            _pair(self.dilation),
            False,
            "none",
            None,
        )


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
        return (
            _pair(layer.stride) == k
            and k[0] == k[1]
            and _pair(layer.padding) == (0, 0)
            and _pair(layer.dilation) == (1, 1)
            and _pair(layer.output_padding) == (0, 0)
            and getattr(layer, "groups", 1) == 1
        )

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


# which CPU layer stands in for which MLX layer, when the types match exactly
SINGLE = {
    nn.Linear: Linear,
    nn.QuantizedLinear: QuantizedLinear,
    nn.LayerNorm: LayerNorm,
    layers.GELU: GELU,
    layers.ScaledDotProductAttention: Attention,
    layers.Resize: Resize,
    bit.WeightStandardizedConv2d: WeightStandardizedConv2d,
    bit.GroupNormActivation: GroupNormActivation,
}

SINGLE_LAYERS = (
    Linear,
    QuantizedLinear,
    LayerNorm,
    GELU,
    Attention,
    Conv2d,
    PatchConvTranspose2d,
    Resize,
    WeightStandardizedConv2d,
    GroupNormActivation,
)

"""Drop-in layers for MLX's CPU backend: the same parameters as the MLX layer each one replaces,
a faster CPU computation, and the MLX layer's own computation on any other device.

:func:`fast_layer` says which layer replaces a given one; dpt_mlx.cpu.accelerate applies it to a
whole model without changing any parameter path.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .. import layers
from . import kernels

_HALF = (mx.float16, mx.bfloat16)


def on_cpu() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class GELU(nn.GELU):
    """Exact GELU through :func:`kernels.gelu` (a rational erf, several times faster on the CPU)."""

    def __call__(self, x: mx.array) -> mx.array:
        return kernels.gelu(x) if on_cpu() else super().__call__(x)


class Attention(layers.ScaledDotProductAttention):
    """Attention with BLAS scores and a softmax on every core (:func:`kernels.attention`)."""

    def __call__(self, q, k, v, scale, mask=None):
        return kernels.attention(q, k, v, scale, mask) if on_cpu() else super().__call__(q, k, v, scale, mask)


class Conv2d(nn.Conv2d):
    """Stride-1 convolutions on large maps as per-tap matrix products (:func:`kernels.conv2d_stride1`)."""

    MIN_PIXELS = 1024  # below this MLX's own conv is as fast

    def __call__(self, x: mx.array) -> mx.array:
        if not (on_cpu() and self.groups == 1 and _pair(self.stride) == (1, 1) and _pair(self.dilation) == (1, 1)
                and x.shape[1] * x.shape[2] >= self.MIN_PIXELS):
            return super().__call__(x)
        f32 = mx.float32
        y = kernels.conv2d_stride1(x.astype(f32), self.weight.astype(f32), self.get("bias"), _pair(self.padding))
        return y.astype(x.dtype)


class PatchConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution whose stride equals its kernel (and no padding), as one matmul.

    Each input pixel then writes its own k x k output block, so the layer is
    ``(B*H*W, I) @ (I, O*k*k)`` and a reshape; MLX's CPU conv_transpose2d is a naive loop.
    """

    @staticmethod
    def applies(layer: nn.ConvTranspose2d) -> bool:
        k = tuple(layer.weight.shape[1:3])
        return (_pair(layer.stride) == k and k[0] == k[1] and _pair(layer.padding) == (0, 0)
                and _pair(layer.dilation) == (1, 1) and _pair(layer.output_padding) == (0, 0))

    def __call__(self, x: mx.array) -> mx.array:
        if not on_cpu():
            return super().__call__(x)
        b, h, w, _ = x.shape
        o, k, _, i = self.weight.shape
        y = kernels.matmul(x.reshape(-1, i), self.weight.reshape(o * k * k, i).T)  # (B*H*W, O*k*k)
        y = y.reshape(b, h, w, o, k, k).transpose(0, 1, 4, 2, 5, 3).reshape(b, h * k, w * k, o)
        return y + self.bias if "bias" in self else y


class Linear(nn.Linear):
    """A float16/bfloat16 linear layer multiplied in float32 (MLX's CPU half matmul has no BLAS).

    The weight stays in half precision (that is the memory saving); the product is accumulated
    in float32 and rounded back, as GPU half-precision GEMMs do.
    """

    def __call__(self, x: mx.array) -> mx.array:
        if not (on_cpu() and x.dtype in _HALF):
            return super().__call__(x)
        y = x.astype(mx.float32) @ self["weight"].astype(mx.float32).T
        if "bias" in self:
            y = y + self["bias"]
        return y.astype(x.dtype)


class QuantizedLinear(nn.QuantizedLinear):
    """Dequantize one layer's weight at a time and multiply in float32 with BLAS (MLX's CPU
    ``quantized_matmul`` runs at a few GFLOP/s); the packed weights stay the only resident copy."""

    def __call__(self, x: mx.array) -> mx.array:
        if not on_cpu():
            return super().__call__(x)
        w = mx.dequantize(self["weight"], self["scales"], self.get("biases"), group_size=self.group_size,
                          bits=self.bits, mode=self.mode)
        y = x.astype(mx.float32) @ w.astype(mx.float32).T
        if "bias" in self:
            y = y + self["bias"]
        return y.astype(x.dtype)


def _moved(layer: nn.Module, cls: type) -> nn.Module:
    """``layer``'s arrays and attributes (no copies) in a module of class ``cls``."""
    fast = cls.__new__(cls)
    dict.update(fast, layer)
    fast.__dict__.update(layer.__dict__)
    return fast


def fast_layer(layer: nn.Module) -> nn.Module:
    """The CPU layer that stands in for ``layer`` (the same arrays), or ``layer`` itself."""
    kind = type(layer)
    if kind is nn.GELU and layer._approx == "none":
        return _moved(layer, GELU)
    if kind is layers.ScaledDotProductAttention:
        return _moved(layer, Attention)
    if kind is nn.Conv2d:
        return _moved(layer, Conv2d)
    if kind is nn.ConvTranspose2d and PatchConvTranspose2d.applies(layer):
        return _moved(layer, PatchConvTranspose2d)
    if kind is nn.Linear and layer.weight.dtype in _HALF:
        return _moved(layer, Linear)
    if kind is nn.QuantizedLinear:
        return _moved(layer, QuantizedLinear)
    return layer


FAST_LAYERS = (GELU, Attention, Conv2d, PatchConvTranspose2d, Linear, QuantizedLinear)

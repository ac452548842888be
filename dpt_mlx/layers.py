"""Small layers every model and backbone shares, in plain MLX: activations, attention, resizing,
BatchNorm, the pre-activation residual unit of the DPT necks.

Activations, attention and resizing are modules (without parameters) rather than functions so
that a backend-specific layer can stand in for them without changing any parameter path
(see dpt_mlx.cpu).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .ops import interpolate

_HALF = (mx.float16, mx.bfloat16)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``."""

    def __call__(self, x: mx.array) -> mx.array:
        return x * mx.sigmoid(1.702 * x)


class GELU(nn.Module):
    """GELU with the exact erf (``approximate="none"``, PyTorch's default) or the tanh formula."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def __call__(self, x: mx.array) -> mx.array:
        return nn.gelu(x) if self.approximate == "none" else nn.gelu_approx(x)


class Dropout(nn.Dropout):
    """MLX's dropout, with its rate ``p`` kept where the models can read it (whether a layer's
    dropout is active decides how attention is computed and whether a layer may be recomputed)."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.p = p

    @property
    def active(self) -> bool:
        return self.training and self.p > 0


def dropout_active(module: nn.Module) -> bool:
    """Whether any dropout inside ``module`` would drop something now (a dropout whose rate is
    not known counts as active)."""
    return any(
        isinstance(m, nn.Dropout) and (m.active if isinstance(m, Dropout) else m.training)
        for _, m in module.named_modules()
    )


# transformers' ACT2FN names -> the MLX module computing the same function
_ACTIVATIONS = {
    "gelu": GELU,  # exact erf GELU, PyTorch's default
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu_new": lambda: GELU("tanh"),
    "gelu_fast": lambda: GELU("tanh"),
    "gelu_pytorch_tanh": lambda: GELU("tanh"),
    "quick_gelu": QuickGELU,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    """The module for transformers' activation ``name``."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}")
    return _ACTIVATIONS[name]()


class ScaledDotProductAttention(nn.Module):
    """``softmax(q @ k^T * scale + mask) @ v`` for (B, heads, N, d) arrays; ``mask`` is additive."""

    def __call__(self, q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)


class Resize(nn.Module):
    """:func:`dpt_mlx.ops.interpolate` (NHWC, PyTorch's sampling) as a module without parameters."""

    def __call__(
        self, x: mx.array, size: tuple[int, int], mode: str = "bilinear", align_corners: bool = False
    ) -> mx.array:
        return interpolate(x, size, mode, align_corners)


class BatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` whose inference on float16/bfloat16 inputs runs in float32.

    ``running_var`` can exceed float16's range (65504) in a trained network and ``var + eps``
    loses its low bits in half precision, so the statistics stay float32 (``cast_model`` keeps
    them) and the affine map ``x * scale + shift`` is folded and applied in float32.
    """

    def __call__(self, x: mx.array) -> mx.array:
        if self.training or x.dtype not in _HALF or not self.track_running_stats:
            return super().__call__(x)
        f32 = mx.float32
        scale = mx.rsqrt(self.running_var.astype(f32) + self.eps)
        shift = -self.running_mean.astype(f32) * scale
        if "weight" in self:
            scale = scale * self.weight.astype(f32)
            shift = shift * self.weight.astype(f32) + self.bias.astype(f32)
        return (x.astype(f32) * scale + shift).astype(x.dtype)


class PreActResidualLayer(nn.Module):
    """x + conv(relu(bn?(conv(relu(x))))): the pre-activation residual unit of the fusion blocks."""

    def __init__(self, channels: int, use_batch_norm: bool, bias: bool):
        super().__init__()
        self.use_batch_norm = use_batch_norm
        self.convolution1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=bias)
        self.convolution2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=bias)
        if use_batch_norm:
            self.batch_norm1 = BatchNorm(channels)
            self.batch_norm2 = BatchNorm(channels)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.convolution1(nn.relu(x))
        if self.use_batch_norm:
            h = self.batch_norm1(h)
        h = self.convolution2(nn.relu(h))
        if self.use_batch_norm:
            h = self.batch_norm2(h)
        return h + x

"""The pieces of ZoeDepth's metric bins module, channels-last: (B, H, W, C) maps, bins on the last axis.

A seed regressor predicts bin centres on the bottleneck; four attractor layers move them, one per
fused map (coarse to fine); a conditional log-binomial softmax gives each pixel a distribution over
the bins, and the depth is its expectation. The multi-domain model adds a small patch transformer
and a classifier that choose the bins head.

Reference subtleties kept here (transformers' modeling_zoedepth):

- the attractors always use the inverse attractor ``dx / (1 + 300 dx^2)``: ``attractor_alpha`` and
  ``attractor_gamma`` are stored but never passed on;
- "normed" attractors predict ``2 * n`` channels and use the even ones only (a bug of the original
  repository that the weights depend on); their bin centres are scaled to (min, max), sorted, clipped;
- every resize is bilinear with ``align_corners=True``;
- the patch transformer prepends a zero token, adds a sinusoidal encoding laid out ``[sin | cos]``
  (not interleaved), and runs its first four post-norm layers.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..backbones.transformer import SelfAttention
from ..layers import Dropout, Resize

INV_ATTRACTOR_ALPHA = 300.0  # inv_attractor's default alpha (and gamma 2), the values the reference uses
P_EPS = 1e-4  # the conditional log-binomial's epsilon for probabilities and temperatures


@lru_cache(maxsize=32)
def _log_binomial_table(n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k, K - 1 - k and Stirling's log C(K-1, k) for k = 0..K-1, in float32 as the reference computes them."""
    f32, eps = np.float32, np.float32(1e-7)
    k = np.arange(n_classes).astype(f32)
    n = f32(n_classes - 1) + eps
    kk = k + eps
    log_binom = n * np.log(n) - kk * np.log(kk) - (n - kk) * np.log(n - kk + eps)
    return k, f32(n_classes - 1) - k, log_binom.astype(f32)


def log_binomial_softmax(p: mx.array, temperature: mx.array, n_classes: int, eps: float = 1e-4) -> mx.array:
    """(B, H, W, 1) probabilities and temperatures -> (B, H, W, K) softmax of log Binomial(K-1, p) / t (float32)."""
    k, rest, log_binom = (mx.array(a) for a in _log_binomial_table(n_classes))
    p = p.astype(mx.float32)
    y = log_binom + k * mx.log(mx.clip(p, eps, 1.0)) + rest * mx.log(mx.clip(1 - p, eps, 1.0))
    return mx.softmax(y / temperature.astype(mx.float32), axis=-1)


class ConditionalMLP(nn.Module):
    """The Sequential(conv1x1, GELU, conv1x1 -> 4, Softplus) of the conditional log-binomial."""

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(hidden, 4, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        return nn.softplus(self.conv2(self.act(self.conv1(x))))


class ConditionalLogBinomialSoftmax(nn.Module):
    """Per-pixel MLP on [main | condition] -> (p, temperature), then the log-binomial softmax over ``n_classes``."""

    def __init__(self, config, in_features: int, condition_dim: int, n_classes: int, bottleneck_factor: int = 2):
        super().__init__()
        self.n_classes = n_classes
        self.min_temp, self.max_temp = config.min_temp, config.max_temp
        self.mlp = ConditionalMLP(in_features + condition_dim, (in_features + condition_dim) // bottleneck_factor)

    def __call__(self, main: mx.array, condition: mx.array) -> mx.array:
        out = self.mlp(mx.concatenate([main, condition], axis=-1)).astype(mx.float32) + P_EPS  # (B, H, W, 4)
        p = out[..., 0:1] / (out[..., 0:1] + out[..., 1:2])
        t = out[..., 2:3] / (out[..., 2:3] + out[..., 3:4])
        t = (self.max_temp - self.min_temp) * t + self.min_temp
        return log_binomial_softmax(p, t, self.n_classes)


class SeedBinRegressor(nn.Module):
    """conv1x1, ReLU, conv1x1 -> n_bins, then ReLU ("normed": centres of normalised widths in (min, max))
    or Softplus (unbounded centres). Returns (normalised widths or centres, centres)."""

    def __init__(self, config, n_bins: int, mlp_dim: int, min_depth: float, max_depth: float):
        super().__init__()
        self.normed = config.bin_centers_type == "normed"
        self.min_depth, self.max_depth = min_depth, max_depth
        self.conv1 = nn.Conv2d(config.bottleneck_features, mlp_dim, kernel_size=1)
        self.conv2 = nn.Conv2d(mlp_dim, n_bins, kernel_size=1)

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        x = self.conv2(nn.relu(self.conv1(x)))
        if not self.normed:
            centers = nn.softplus(x)
            return centers, centers
        x = nn.relu(x) + 1e-3
        widths_normed = x / x.sum(axis=-1, keepdims=True)
        widths = (self.max_depth - self.min_depth) * widths_normed
        start = mx.full((*widths.shape[:-1], 1), self.min_depth, dtype=widths.dtype)
        edges = mx.cumsum(mx.concatenate([start, widths], axis=-1), axis=-1)
        return widths_normed, 0.5 * (edges[..., :-1] + edges[..., 1:])


class Projector(nn.Module):
    """conv1x1, ReLU, conv1x1: features -> bin embeddings."""

    def __init__(self, in_features: int, out_features: int, mlp_dim: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, mlp_dim, kernel_size=1)
        self.conv2 = nn.Conv2d(mlp_dim, out_features, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv2(nn.relu(self.conv1(x)))


def inv_attractor(dx: mx.array) -> mx.array:
    """dx / (1 + alpha * dx^2): the shift towards an attractor (a square, not a power: dx is signed)."""
    return dx / (1 + INV_ATTRACTOR_ALPHA * mx.square(dx))


class AttractorLayer(nn.Module):
    """Moves the previous bins towards attractor points predicted from the bin embedding.

    ``normed=True`` is the reference's ZoeDepthAttractorLayer (bins in [0, 1], centres scaled to
    (min, max), sorted and clipped); ``normed=False`` its ZoeDepthAttractorLayerUnnormed.
    """

    def __init__(self, config, n_attractors: int, min_depth: float, max_depth: float, normed: bool):
        super().__init__()
        dim = config.bin_embedding_dim
        self.normed, self.mean = normed, config.attractor_kind == "mean"
        self.n_attractors = n_attractors
        self.min_depth, self.max_depth = min_depth, max_depth
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=1)
        self.conv2 = nn.Conv2d(dim, n_attractors * (2 if normed else 1), kernel_size=1)
        self.resample = Resize()

    def __call__(self, x: mx.array, prev_bin: mx.array, prev_embedding: mx.array) -> tuple[mx.array, mx.array]:
        """(B, h, w, D) embedding, previous bins (B, h', w', n) and embedding -> (new bins, bin centres)."""
        x = x + self.resample(prev_embedding, x.shape[1:3], "bilinear", align_corners=True)
        a = self.conv2(nn.relu(self.conv1(x)))
        if self.normed:
            b, h, w, _ = a.shape
            a = (nn.relu(a) + 1e-3).reshape(b, h, w, self.n_attractors, 2)[..., 0]  # the even channels
        else:
            a = nn.softplus(a)
        centers = self.resample(prev_bin, a.shape[1:3], "bilinear", align_corners=True)
        delta = inv_attractor(a[..., 0:1] - centers)
        for i in range(1, self.n_attractors):  # one attractor at a time, as the reference's memory-efficient path
            delta = delta + inv_attractor(a[..., i : i + 1] - centers)
        if self.mean:
            delta = delta / self.n_attractors
        new = centers + delta
        if not self.normed:
            return new, new
        scaled = mx.sort((self.max_depth - self.min_depth) * new + self.min_depth, axis=-1)
        return new, mx.clip(scaled, self.min_depth, self.max_depth)


@lru_cache(maxsize=16)
def _positional_encoding(length: int, dim: int) -> np.ndarray:
    """(length, dim) sinusoidal encoding, [sin | cos] halves, in float32 as the reference computes it."""
    f32 = np.float32
    position = np.arange(length, dtype=f32)[:, None]
    div = np.exp(np.arange(0, dim, 2, dtype=f32)[None] * (-np.log(f32(10000.0)) / f32(dim))).astype(f32)
    angle = (position * div).astype(f32)
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1).astype(f32)


class PatchSelfAttention(SelfAttention):
    """Multi-head attention with query/key/value and an ``out_proj`` (scores scaled by 1/sqrt(head dim))."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__(hidden_size, num_heads, True, dropout)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.out_proj(super().__call__(x)[0])


class PatchTransformerLayer(nn.Module):
    """A post-norm encoder layer: norm1(x + attn(x)), then norm2(x + linear2(relu(linear1(x)))); dropout 0.1."""

    def __init__(self, config, dropout: float = 0.1):
        super().__init__()
        hidden, inner = config.patch_transformer_hidden_size, config.patch_transformer_intermediate_size
        self.self_attn = PatchSelfAttention(hidden, config.patch_transformer_num_attention_heads, dropout)
        self.linear1 = nn.Linear(hidden, inner)
        self.linear2 = nn.Linear(inner, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.norm1(x + self.dropout1(self.self_attn(x)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(nn.relu(self.linear1(x))))))


class PatchTransformerEncoder(nn.Module):
    """1x1 conv to tokens, a zero token first, sinusoidal positions, the first 4 layers: (B, 1 + h*w, D)."""

    def __init__(self, config, layers_run: int = 4):
        super().__init__()
        self.layers_run = layers_run
        self.embedding_convPxP = nn.Conv2d(
            config.bottleneck_features, config.patch_transformer_hidden_size, kernel_size=1
        )
        self.transformer_encoder = [PatchTransformerLayer(config) for _ in range(config.num_patch_transformer_layers)]

    def __call__(self, x: mx.array) -> mx.array:
        x = self.embedding_convPxP(x)
        b, h, w, d = x.shape
        x = mx.concatenate([mx.zeros((b, 1, d), dtype=x.dtype), x.reshape(b, h * w, d)], axis=1)
        x = x + mx.array(_positional_encoding(h * w + 1, d)).astype(x.dtype)
        for layer in self.transformer_encoder[: self.layers_run]:
            x = layer(x)
        return x


class MLPClassifier(nn.Module):
    """linear1, ReLU, linear2: the domain logits."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear1 = nn.Linear(in_features, in_features)
        self.linear2 = nn.Linear(in_features, out_features)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear2(nn.relu(self.linear1(x)))

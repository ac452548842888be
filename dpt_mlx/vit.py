"""The ViT backbone of DPT: patch embeddings, CLS token, resized position embeddings, encoder.

Token sequences are (B, 1 + gh * gw, C), CLS first, patches in row-major order of the
(gh, gw) = (H / p, W / p) grid, exactly as the reference lays them out.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from . import kernels
from .ops import interpolate


def activation(name: str):
    """The transformers ``ACT2FN`` function for ``name``."""
    table = {
        "gelu": kernels.gelu,  # nn.gelu, with a fast CPU path
        "relu": nn.relu,
        "silu": nn.silu,
        "swish": nn.silu,
        "gelu_new": nn.gelu_approx,
        "gelu_fast": nn.gelu_approx,
        "gelu_pytorch_tanh": nn.gelu_approx,
        "quick_gelu": lambda x: x * mx.sigmoid(1.702 * x),
        "tanh": mx.tanh,
    }
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}")
    return table[name]


def resize_position_embeddings(
    posemb: mx.array, grid: tuple[int, int], start_index: int = 1, mode: str = "bilinear"
) -> mx.array:
    """Resize (1, start + n*n, C) position embeddings to a (gh, gw) grid (``mode``, align_corners=False, in float32)."""
    tokens, posgrid = posemb[:, :start_index], posemb[0, start_index:]
    old = int(math.sqrt(posgrid.shape[0]))
    if (old, old) == tuple(grid):
        return posemb
    posgrid = posgrid.reshape(1, old, old, -1)  # NHWC
    posgrid = interpolate(posgrid.astype(mx.float32), grid, mode, align_corners=False).astype(posemb.dtype)
    posgrid = posgrid.reshape(1, grid[0] * grid[1], -1)
    return mx.concatenate([tokens, posgrid], axis=1)


class PatchEmbeddings(nn.Module):
    def __init__(self, num_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.projection = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, H, W, 3) NHWC -> (B, gh * gw, C)."""
        x = self.projection(x)
        b, gh, gw, c = x.shape
        return x.reshape(b, gh * gw, c)


class ViTEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        patch = int(config.patch_size if not isinstance(config.patch_size, (list, tuple)) else config.patch_size[0])
        image = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
        num_patches = (image[0] // patch) * (image[1] // patch)
        self.patch_size = patch
        self.cls_token = mx.zeros((1, 1, config.hidden_size))
        self.patch_embeddings = PatchEmbeddings(config.num_channels, config.hidden_size, patch)
        self.position_embeddings = mx.zeros((1, num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, H, W, 3) -> (B, 1 + gh * gw, C)."""
        b, h, w, _ = x.shape
        grid = (h // self.patch_size, w // self.patch_size)
        pos = resize_position_embeddings(self.position_embeddings, grid)
        emb = self.patch_embeddings(x)
        cls = mx.broadcast_to(self.cls_token, (b, 1, emb.shape[-1])).astype(emb.dtype)
        emb = mx.concatenate([cls, emb], axis=1) + pos
        return self.dropout(emb)


class SelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.query = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)

    def __call__(self, x: mx.array, bias: mx.array | None = None, output_attentions: bool = False):
        """(B, N, C) -> (B, N, C), and the (B, heads, N, N) attention probabilities when asked."""
        b, n, _ = x.shape

        def heads(t):
            return t.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        probs = None
        if output_attentions or (self.training and self.dropout._p_1 < 1):  # mlx Dropout keeps 1 - p
            scores = (q * self.scale) @ k.transpose(0, 1, 3, 2)
            if bias is not None:
                scores = scores + bias
            probs = mx.softmax(scores.astype(mx.float32), axis=-1).astype(q.dtype)
            out = self.dropout(probs) @ v
        else:
            out = kernels.attention(q, k, v, scale=self.scale, mask=bias)  # mx.fast sdpa off the CPU
        out = out.transpose(0, 2, 1, 3).reshape(b, n, -1)
        return out, probs


class AttentionOutput(nn.Module):
    def __init__(self, hidden_size: int, dropout: float = 0.0):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def __call__(self, x: mx.array) -> mx.array:
        return self.dropout(self.dense(x))


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = SelfAttention(
            config.hidden_size, config.num_attention_heads, config.qkv_bias, config.attention_probs_dropout_prob
        )
        self.output = AttentionOutput(config.hidden_size, config.hidden_dropout_prob)

    def __call__(self, x, output_attentions=False):
        out, probs = self.attention(x, output_attentions=output_attentions)
        return self.output(out), probs


class Intermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def __call__(self, x):
        return self.act(self.dense(x))


class Output(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def __call__(self, x):
        return self.dropout(self.dense(x))


class ViTLayer(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = Output(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x, output_attentions=False):
        attn, probs = self.attention(self.layernorm_before(x), output_attentions)
        x = x + attn
        x = x + self.output(self.intermediate(self.layernorm_after(x)))
        return x, probs


class ViTEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = [ViTLayer(config) for _ in range(config.num_hidden_layers)]

    def __call__(self, x, output_attentions=False):
        """Returns the final tokens, every layer's input and output (embeddings first), and attentions."""
        hidden_states, attentions = [x], []
        for layer in self.layer:
            x, probs = layer(x, output_attentions)
            hidden_states.append(x)
            attentions.append(probs)
        return x, hidden_states, attentions


class Pooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.pooler_output_size)
        self.act = activation(config.pooler_act)

    def __call__(self, x):
        return self.act(self.dense(x[:, 0]))

"""Pieces the ViT-style backbones (ViT, DINOv2, BEiT) share: patch embedding, position-embedding
resizing, self-attention and the MLP halves of a transformer block.

Token sequences are (B, 1 + gh * gw, C), CLS first, patches in row-major order of the
(gh, gw) patch grid, exactly as the reference lays them out.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from ..configs.base import pair
from ..layers import Dropout, ScaledDotProductAttention, activation, dropout_active
from ..ops import interpolate


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


def with_cls_token(cls_token: mx.array, patches: mx.array) -> mx.array:
    """(1, 1, C) CLS token and (B, N, C) patch tokens -> (B, 1 + N, C)."""
    cls = mx.broadcast_to(cls_token, (patches.shape[0], 1, patches.shape[-1])).astype(patches.dtype)
    return mx.concatenate([cls, patches], axis=1)


class PatchEmbeddings(nn.Module):
    """A stride = kernel = patch convolution: (B, H, W, C_in) NHWC -> (B, gh * gw, C), and the grid."""

    def __init__(self, num_channels: int, hidden_size: int, patch_size):
        super().__init__()
        self.patch_size = pair(patch_size)
        self.projection = nn.Conv2d(num_channels, hidden_size, kernel_size=self.patch_size, stride=self.patch_size)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size[0], width // self.patch_size[1]

    def __call__(self, x: mx.array) -> mx.array:
        x = self.projection(x)
        b, gh, gw, c = x.shape
        return x.reshape(b, gh * gw, c)


def attend(q, k, v, scale: float, sdpa, dropout, output_attentions: bool = False, bias=None):
    """(B, heads, N, d) queries, keys and values -> ((B, N, heads * d), the (B, heads, N, N)
    probabilities or None): the fused ``sdpa`` module, unless the probabilities are asked for or
    ``dropout`` is active; ``bias`` is added to the scores."""
    probs = None
    if output_attentions or dropout.active:
        scores = (q * scale) @ k.transpose(0, 1, 3, 2)
        if bias is not None:
            scores = scores + bias
        probs = mx.softmax(scores.astype(mx.float32), axis=-1).astype(q.dtype)
        out = dropout(probs) @ v
    else:
        out = sdpa(q, k, v, scale=scale, mask=bias)
    b, h, n, d = out.shape
    return out.transpose(0, 2, 1, 3).reshape(b, n, h * d), probs


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value projections (the checkpoints' layout)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        key_bias: bool | None = None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.query = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=qkv_bias if key_bias is None else key_bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.dropout = Dropout(dropout)
        self.sdpa = ScaledDotProductAttention()

    def __call__(self, x: mx.array, bias: mx.array | None = None, output_attentions: bool = False):
        """(B, N, C) -> (B, N, C), and the (B, heads, N, N) attention probabilities when asked."""
        b, n, _ = x.shape

        def heads(t):
            return t.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        return attend(q, k, v, self.scale, self.sdpa, self.dropout, output_attentions, bias)


class AttentionOutput(nn.Module):
    def __init__(self, hidden_size: int, dropout: float = 0.0):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = Dropout(dropout)

    def __call__(self, x: mx.array) -> mx.array:
        return self.dropout(self.dense(x))


class Attention(nn.Module):
    """Self-attention and its output projection (``attention.attention`` / ``attention.output``)."""

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
        self.dropout = Dropout(config.hidden_dropout_prob)

    def __call__(self, x):
        return self.dropout(self.dense(x))


def run_layers(layers, x: mx.array, *args, output_attentions: bool = False, checkpoint: bool = False):
    """Every layer's input and output (embeddings first) and each layer's attention probabilities.

    ``checkpoint``: in training, each layer without active dropout (whose masks would differ when
    it is recomputed) keeps only its input and is recomputed in the backward pass (MLX's
    ``nn.utils.checkpoint``); arrays among ``args`` (BEiT's shared position bias) are inputs of the
    recomputation, so their gradients flow.
    """
    hidden_states, attentions = [x], []
    for layer in layers:
        if checkpoint and layer.training and not output_attentions and not dropout_active(layer):
            x, probs = _checkpointed(layer, x, args), None
        else:
            x, probs = layer(x, *args, output_attentions=output_attentions)
        hidden_states.append(x)
        attentions.append(probs)
    return hidden_states, attentions


def _checkpointed(layer: nn.Module, x: mx.array, args: tuple) -> mx.array:
    slots = [i for i, a in enumerate(args) if isinstance(a, mx.array)]

    def forward(y, *arrays):
        full = list(args)
        for i, a in zip(slots, arrays):
            full[i] = a
        return layer(y, *full)[0]

    return nn.utils.checkpoint(layer, forward)(x, *[args[i] for i in slots])

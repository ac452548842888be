"""The TIPSv2 vision encoder, as TIPSv2-DPT uses it (transformers' ``Tipsv2VisionBackbone``).

A DINOv2-with-registers ViT: CLS token, ``num_register_tokens`` register tokens, then the patch
tokens, row-major over the (gh, gw) = (H // p, W // p) grid. Its differences from DINOv2 (see
dinov2.py): the registers (inserted after the position embeddings, which they do not get), the
position grid resized bilinearly with antialiasing (PyTorch's ``interpolate(..., antialias=True)``,
not bicubic), and attention / MLP modules named as transformers 5 holds them in memory
(``attention.q_proj`` .. ``o_proj``; ``mlp.fc1`` / ``fc2``, or ``mlp.gate_proj`` / ``up_proj`` /
``down_proj`` with SwiGLU). The hub and ``save_pretrained`` write the original layout
(``vision_encoder.blocks.N.attn.qkv`` ...); ``dpt_mlx/models/tipsv2_dpt.py`` maps it onto these names.

For the DPT neck the backbone hands over each selected stage as a CLS-first sequence without the
registers, (B, 1 + gh * gw, C): the TIPSv2-DPT readout reads the CLS token and skips the registers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..configs.base import BaseConfig, align_out_features, check_act, pair, stage_names
from ..layers import Dropout, ScaledDotProductAttention
from ..outputs import BackboneFeatures
from .dinov2 import Dinov2Layer
from .transformer import PatchEmbeddings, attend, run_layers


@lru_cache(maxsize=256)
def antialias_matrix(in_size: int, out_size: int, dtype=np.float32) -> np.ndarray:
    """The (out_size, in_size) float32 matrix of PyTorch's ``interpolate(mode="bilinear",
    align_corners=False, antialias=True)`` along one axis (what torchvision's tensor resize calls).

    Output pixel i is centred at ``scale * (i + 0.5)`` input pixels, ``scale = in / out``; its taps are
    the input pixels j in ``[trunc(centre - support + 0.5), trunc(centre + support + 0.5))`` clipped to
    the axis, weighted by the triangle ``max(0, 1 - |(j + 0.5 - centre) / s|)`` with ``s = max(scale, 1)``
    (the filter widened by the scale when downsampling), ``support = s``, and normalised to sum to 1.
    Upsampling gives plain bilinear weights (edges clamped). The scale, centres and weights are computed
    in ``dtype``: float32 as PyTorch's CPU kernel computes them for float32 tensors (in float64 the centres
    of a large axis move by ~1e-5 pixels, which shows in the output); float64 as it computes the weights
    of its uint8 kernel.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resize an axis of size {in_size} to {out_size}")
    f32 = np.dtype(dtype).type
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1 else f32(1.0)
    invscale = f32(1.0) / scale if scale >= 1 else f32(1.0)
    weights = np.zeros((out_size, in_size), dtype=f32)
    for i in range(out_size):
        centre = f32(float(scale) * (i + 0.5))
        lo = max(int(float(centre - support) + 0.5), 0)  # int(): truncation toward zero, as PyTorch's cast
        hi = min(int(float(centre + support) + 0.5), in_size)
        j = np.arange(lo, hi)
        x = ((j.astype(f32) - centre).astype(np.float64) + 0.5) * float(invscale)
        w = np.maximum(f32(0.0), f32(1.0) - np.abs(x.astype(f32)))
        total = f32(0.0)
        for v in w:  # summed in order, in float32
            total = f32(total + v)
        weights[i, lo:hi] = w / total if total != 0 else w
    return weights


@dataclass
class Tipsv2VisionConfig(BaseConfig):
    """``transformers.Tipsv2VisionConfig``: the same fields and defaults (the B/14 encoder)."""

    model_type: str = "tipsv2_vision_model"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    image_size: int | list[int] = 448
    patch_size: int | list[int] = 14
    num_channels: int = 3
    qkv_bias: bool = True
    layerscale_value: float = 1.0
    drop_path_rate: float = 0.0
    use_swiglu_ffn: bool = False
    num_register_tokens: int = 1
    out_features: list[str] | None = None
    out_indices: list[int] | None = None
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True

    POSITIVE = frozenset(
        {
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "mlp_ratio",
            "layer_norm_eps",
            "image_size",
            "patch_size",
            "num_channels",
        }
    )
    NON_NEGATIVE = frozenset(
        {
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "initializer_range",
            "drop_path_rate",
            "num_register_tokens",
        }
    )

    def __post_init__(self):
        super().__post_init__()
        if self.model_type != "tipsv2_vision_model":
            raise ValueError(f"model_type={self.model_type!r} is not 'tipsv2_vision_model'")
        check_act("hidden_act", self.hidden_act)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )
        pair(self.image_size, "image_size"), pair(self.patch_size, "patch_size")
        self.out_features, self.out_indices = align_out_features(self.stage_names, self.out_features, self.out_indices)

    @property
    def stage_names(self) -> list[str]:
        return stage_names(self.num_hidden_layers)


class Tipsv2Embeddings(nn.Module):
    """CLS + patch embeddings + position embeddings (antialiased-bilinear-resized), then the registers.

    ``mask_token`` is kept as a parameter so that checkpoints load strictly (masked pretraining only).
    """

    def __init__(self, config: Tipsv2VisionConfig):
        super().__init__()
        image = pair(config.image_size)
        self.patch_embeddings = PatchEmbeddings(config.num_channels, config.hidden_size, config.patch_size)
        ph, pw = self.patch_embeddings.patch_size
        num_patches = (image[0] // ph) * (image[1] // pw)
        self.cls_token = mx.zeros((1, 1, config.hidden_size))
        self.mask_token = mx.zeros((1, config.hidden_size))
        self.register_tokens = mx.zeros((1, config.num_register_tokens, config.hidden_size))
        self.position_embeddings = mx.zeros((1, num_patches + 1, config.hidden_size))
        self.dropout = Dropout(config.hidden_dropout_prob)

    def position_grid(self, grid: tuple[int, int], square_input: bool) -> mx.array:
        """(1, 1 + gh * gw, C) position embeddings for the grid.

        As the reference: kept as they are when the patch count matches and the input is square,
        else the (n, n) grid is resized to (gh, gw) in float32, bilinear with antialiasing.
        """
        pos = self.position_embeddings
        n = pos.shape[1] - 1
        if grid[0] * grid[1] == n and square_input:
            return pos
        old = int(n**0.5)
        dtype = pos.dtype
        posgrid = pos[0, 1:].astype(mx.float32).reshape(old, old, -1)  # (n, n, C)
        wh = mx.array(antialias_matrix(old, grid[0]))
        ww = mx.array(antialias_matrix(old, grid[1]))
        posgrid = (wh @ posgrid.reshape(old, -1)).reshape(grid[0], old, -1)  # (gh, n, C)
        posgrid = ww @ posgrid  # (gw, n) @ (gh, n, C) -> (gh, gw, C)
        posgrid = posgrid.reshape(1, grid[0] * grid[1], -1).astype(dtype)
        return mx.concatenate([pos[:, :1], posgrid], axis=1)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, H, W, 3) -> (B, 1 + R + gh * gw, C): CLS, registers, patches."""
        b, h, w, _ = x.shape
        emb = self.patch_embeddings(x)
        grid = self.patch_embeddings.grid(h, w)
        c = emb.shape[-1]
        cls = mx.broadcast_to(self.cls_token, (b, 1, c)).astype(emb.dtype)
        emb = mx.concatenate([cls, emb], axis=1) + self.position_grid(grid, h == w).astype(emb.dtype)
        registers = mx.broadcast_to(self.register_tokens, (b, self.register_tokens.shape[1], c)).astype(emb.dtype)
        emb = mx.concatenate([emb[:, :1], registers, emb[:, 1:]], axis=1)
        return self.dropout(emb)


class Tipsv2Attention(nn.Module):
    """Multi-head self-attention: ``q_proj`` / ``k_proj`` / ``v_proj`` (qkv_bias), ``o_proj`` (biased)."""

    def __init__(self, config: Tipsv2VisionConfig):
        super().__init__()
        size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = size // self.num_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(size, size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(size, size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(size, size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(size, size)
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        self.sdpa = ScaledDotProductAttention()

    def __call__(self, x: mx.array, output_attentions: bool = False):
        """(B, N, C) -> (B, N, C), and the (B, heads, N, N) probabilities when asked."""
        b, n, _ = x.shape

        def heads(t):
            return t.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out, probs = attend(q, k, v, self.scale, self.sdpa, self.dropout, output_attentions)
        return self.o_proj(out), probs


class SwiGLUFFN(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)); hidden width 2/3 of hidden_size * mlp_ratio, rounded up to 8."""

    def __init__(self, config: Tipsv2VisionConfig):
        super().__init__()
        hidden = int(config.hidden_size * config.mlp_ratio)
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.gate_proj = nn.Linear(config.hidden_size, hidden)
        self.up_proj = nn.Linear(config.hidden_size, hidden)
        self.down_proj = nn.Linear(hidden, config.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Tipsv2Layer(Dinov2Layer):
    """DINOv2's block with TIPSv2's attention (``q_proj`` ... ``o_proj``) and SwiGLU (``gate_proj`` /
    ``up_proj`` / ``down_proj``) names."""

    attention_class = Tipsv2Attention
    swiglu_class = SwiGLUFFN


class Tipsv2Encoder(nn.Module):
    def __init__(self, config: Tipsv2VisionConfig):
        super().__init__()
        self.layer = [Tipsv2Layer(config) for _ in range(config.num_hidden_layers)]
        self.gradient_checkpointing = False

    def __call__(self, x: mx.array, output_attentions: bool = False):
        """Every layer's input and output (embeddings first) and the attentions."""
        return run_layers(self.layer, x, output_attentions=output_attentions, checkpoint=self.gradient_checkpointing)


class Tipsv2VisionBackbone(nn.Module):
    """``Tipsv2VisionBackbone`` for a DPT neck: the ``out_features`` stages ("stem" = embeddings).

    Each selected state goes through the final LayerNorm when ``apply_layernorm`` and loses its
    register tokens: the features are (B, 1 + gh * gw, C) CLS-first token sequences, which the
    neck's reassemble stage reads. ``hidden_states`` are the full sequences (registers included),
    as the reference returns them. ``reshape_hidden_states`` must be False (TIPSv2-DPT's setting).
    """

    def __init__(self, config: Tipsv2VisionConfig):
        super().__init__()
        if config.reshape_hidden_states:
            raise ValueError(
                "a TIPSv2 backbone_config for TIPSv2-DPT needs reshape_hidden_states=false (the neck reads token "
                "sequences)"
            )
        self.config = config
        self.hidden_size = config.hidden_size
        self.num_register_tokens = config.num_register_tokens
        self.out_indices = list(config.out_indices)
        self.out_features = list(config.out_features)
        self.embeddings = Tipsv2Embeddings(config)
        self.encoder = Tipsv2Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array, output_attentions: bool = False) -> BackboneFeatures:
        """(B, H, W, 3) NHWC pixels -> BackboneFeatures (CLS + patch tokens per stage; all hidden states)."""
        grid = self.embeddings.patch_embeddings.grid(x.shape[1], x.shape[2])
        hidden_states, attentions = self.encoder(self.embeddings(x), output_attentions)
        skip = 1 + self.num_register_tokens
        features = []
        for i in self.out_indices:
            state = hidden_states[i]
            if self.config.apply_layernorm:
                state = self.layernorm(state)
            features.append(mx.concatenate([state[:, :1], state[:, skip:]], axis=1))
        return BackboneFeatures(features, grid, tuple(hidden_states), tuple(attentions) if output_attentions else None)


__all__ = ["Tipsv2VisionBackbone", "Tipsv2VisionConfig", "antialias_matrix"]

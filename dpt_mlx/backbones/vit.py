"""The ViT backbone of DPT (and of DPT-Hybrid, whose embeddings come from a BiT CNN).

Token sequences are (B, 1 + gh * gw, C), CLS first, patches in row-major order of the
(gh, gw) = (H / p, W / p) grid. Module names follow transformers' ``DPTViT*`` modules, which
DPT checkpoints keep under ``dpt.``: ``embeddings``, ``encoder.layer.N``, ``layernorm``.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..configs.base import BaseConfig, pair
from ..layers import Dropout, activation
from ..outputs import BackboneFeatures
from .bit import BitConfig, HybridEmbeddings
from .transformer import (
    Attention,
    Intermediate,
    Output,
    PatchEmbeddings,
    resize_position_embeddings,
    run_layers,
    with_cls_token,
)


@dataclass
class ViTConfig(BaseConfig):
    """The encoder fields of a ``DPTConfig`` (same names and defaults); ``bit`` makes it DPT-Hybrid."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    image_size: int | list[int] = 384
    patch_size: int | list[int] = 16
    num_channels: int = 3
    qkv_bias: bool = True
    out_indices: list[int] = (2, 5, 8, 11)
    bit: BitConfig | None = None
    backbone_featmap_shape: list[int] | None = None

    POSITIVE = frozenset(
        {
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "layer_norm_eps",
            "image_size",
            "patch_size",
            "num_channels",
            "backbone_featmap_shape",
        }
    )
    NON_NEGATIVE = frozenset({"hidden_dropout_prob", "attention_probs_dropout_prob", "out_indices"})

    @classmethod
    def from_dpt(cls, config) -> ViTConfig:
        """The ViT part of a DPTConfig: its own fields, ``backbone_out_indices``, and BiT for hybrids."""
        names = [n for n in cls.__dataclass_fields__ if n not in ("out_indices", "bit")]
        return cls(
            **{n: getattr(config, n) for n in names},
            out_indices=list(config.backbone_out_indices),
            bit=config.bit_config if config.is_hybrid else None,
        )


class ViTEmbeddings(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        gh, gw = (i // p for i, p in zip(pair(config.image_size), pair(config.patch_size)))
        self.cls_token = mx.zeros((1, 1, config.hidden_size))
        self.patch_embeddings = PatchEmbeddings(config.num_channels, config.hidden_size, config.patch_size)
        self.position_embeddings = mx.zeros((1, gh * gw + 1, config.hidden_size))
        self.dropout = Dropout(config.hidden_dropout_prob)

    def __call__(self, x: mx.array) -> tuple[mx.array, tuple[int, int], list[mx.array]]:
        """(B, H, W, 3) -> tokens (B, 1 + gh * gw, C), the (gh, gw) grid, and no CNN maps."""
        grid = self.patch_embeddings.grid(x.shape[1], x.shape[2])
        emb = with_cls_token(self.cls_token, self.patch_embeddings(x))
        emb = emb + resize_position_embeddings(self.position_embeddings, grid)
        return self.dropout(emb), grid, []


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
        self.gradient_checkpointing = False  # recompute layers in the backward pass (training)

    def __call__(self, x, output_attentions=False):
        """Every layer's input and output (embeddings first), and the attentions."""
        return run_layers(self.layer, x, output_attentions=output_attentions, checkpoint=self.gradient_checkpointing)


class Pooler(nn.Module):
    def __init__(self, hidden_size: int, output_size: int, act: str):
        super().__init__()
        self.dense = nn.Linear(hidden_size, output_size)
        self.act = activation(act)

    def __call__(self, x):
        return self.act(self.dense(x[:, 0]))


class ViTBackbone(nn.Module):
    """ViT (or ViT-Hybrid) encoder: the hidden states at ``out_indices`` as token sequences.

    For DPT-Hybrid the first two features are the BiT stage maps (NHWC), which the neck passes
    through untouched; the rest are the encoder layers at ``out_indices[2:]``. ``layernorm`` is
    the final norm of the checkpoint's encoder: no DPT feature goes through it, DPTModel's
    ``last_hidden_state`` does.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.out_indices = list(config.out_indices)
        self.hidden_size = config.hidden_size
        self.embeddings = HybridEmbeddings(config) if config.bit is not None else ViTEmbeddings(config)
        self.encoder = ViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array, output_attentions: bool = False) -> BackboneFeatures:
        """(B, H, W, 3) NHWC pixels -> BackboneFeatures (hidden states embeddings first, un-normed)."""
        tokens, grid, maps = self.embeddings(x)
        hidden_states, attentions = self.encoder(tokens, output_attentions)
        layers = hidden_states[1:]
        features = list(maps) + [layers[i] for i in self.out_indices[len(maps) :]]
        return BackboneFeatures(features, grid, tuple(hidden_states), tuple(attentions))

"""The DINOv2 backbone, as DPT and Depth Anything use it (transformers' ``Dinov2Backbone``).

Token sequences are (B, 1 + gh * gw, C), CLS first, patches row-major over the
(gh, gw) = (H // p, W // p) grid. Module names follow the checkpoints that transformers
writes (``attention.attention.query``, ``layer_scale1.lambda1``, ``mlp.weights_in`` ...), so
no renames are needed: transformers 5 renames these to ``q_proj``/``gate_proj`` in memory
but writes the original names back when it saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..configs.base import BaseConfig, align_out_features, check_act, pair, stage_names
from ..layers import Dropout, activation
from ..outputs import BackboneFeatures
from .transformer import Attention, PatchEmbeddings, resize_position_embeddings, run_layers, with_cls_token


@dataclass
class Dinov2Config(BaseConfig):
    """``transformers.Dinov2Config``: the same fields and defaults (dinov2-base)."""

    model_type: str = "dinov2"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    image_size: int | list[int] = 224
    patch_size: int | list[int] = 14
    num_channels: int = 3
    qkv_bias: bool = True
    layerscale_value: float = 1.0
    drop_path_rate: float = 0.0
    use_swiglu_ffn: bool = False
    out_features: list[str] | None = None
    out_indices: list[int] | None = None
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True
    use_mask_token: bool = True

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
        {"hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "drop_path_rate"}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.model_type != "dinov2":
            raise ValueError(f"model_type={self.model_type!r} is not 'dinov2'")
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


class Dinov2Embeddings(nn.Module):
    """CLS token + patch embeddings + position embeddings (bicubic-resized to the input's grid).

    ``mask_token`` is kept as a parameter so that checkpoints load strictly (it is only used for
    masked-image pretraining, never at inference).
    """

    def __init__(self, config: Dinov2Config):
        super().__init__()
        image = pair(config.image_size)
        self.patch_embeddings = PatchEmbeddings(config.num_channels, config.hidden_size, config.patch_size)
        ph, pw = self.patch_embeddings.patch_size
        num_patches = (image[0] // ph) * (image[1] // pw)
        self.cls_token = mx.zeros((1, 1, config.hidden_size))
        if config.use_mask_token:
            self.mask_token = mx.zeros((1, config.hidden_size))
        self.position_embeddings = mx.zeros((1, num_patches + 1, config.hidden_size))
        self.dropout = Dropout(config.hidden_dropout_prob)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, H, W, 3) -> (B, 1 + gh * gw, C).

        The reference resizes the position grid with ``F.interpolate(size=(H // p, W // p),
        mode="bicubic", align_corners=False)`` in float32 (no scale_factor, no +0.1 offset in
        this transformers version), and skips it only when the grid already matches.
        """
        emb = self.patch_embeddings(x)
        pos = resize_position_embeddings(
            self.position_embeddings, self.patch_embeddings.grid(x.shape[1], x.shape[2]), mode="bicubic"
        )
        emb = with_cls_token(self.cls_token, emb) + pos.astype(emb.dtype)
        return self.dropout(emb)


class LayerScale(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.lambda1 = config.layerscale_value * mx.ones((config.hidden_size,))

    def __call__(self, x: mx.array) -> mx.array:
        return x * self.lambda1


class MLP(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        hidden = int(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, hidden)
        self.fc2 = nn.Linear(hidden, config.hidden_size)
        self.act = activation(config.hidden_act)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """weights_out(silu(gate) * up) with [gate; up] = weights_in(x), as the checkpoints store it.

    The hidden width is two thirds of ``hidden_size * mlp_ratio``, rounded up to a multiple of 8.
    """

    def __init__(self, config: Dinov2Config):
        super().__init__()
        hidden = int(config.hidden_size * config.mlp_ratio)
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.weights_in = nn.Linear(config.hidden_size, 2 * hidden)
        self.weights_out = nn.Linear(hidden, config.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = mx.split(self.weights_in(x), 2, axis=-1)
        return self.weights_out(nn.silu(gate) * up)


class Dinov2Layer(nn.Module):
    """x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x)). Drop path is the identity at inference."""

    attention_class = Attention  # what a backbone built on this block (TIPSv2) names differently
    swiglu_class = SwiGLUFFN

    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = self.attention_class(config)
        self.layer_scale1 = LayerScale(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = self.swiglu_class(config) if config.use_swiglu_ffn else MLP(config)
        self.layer_scale2 = LayerScale(config)

    def __call__(self, x: mx.array, output_attentions: bool = False):
        attn, probs = self.attention(self.norm1(x), output_attentions)
        x = x + self.layer_scale1(attn)
        x = x + self.layer_scale2(self.mlp(self.norm2(x)))
        return x, probs


class Dinov2Encoder(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.layer = [Dinov2Layer(config) for _ in range(config.num_hidden_layers)]
        self.gradient_checkpointing = False  # recompute layers in the backward pass (training)

    def __call__(self, x: mx.array, output_attentions: bool = False):
        """Returns every layer's input and output (embeddings first) and the attentions."""
        return run_layers(self.layer, x, output_attentions=output_attentions, checkpoint=self.gradient_checkpointing)


class Dinov2Backbone(nn.Module):
    """``Dinov2Backbone``: the hidden states of the ``out_features`` stages ("stem" = embeddings).

    Each selected state goes through the final LayerNorm when ``apply_layernorm``. With
    ``reshape_hidden_states`` it becomes an NHWC map without the CLS token (the reference returns
    NCHW); without, it stays a (B, 1 + gh * gw, C) token sequence, which is what DPT and Depth
    Anything use.
    """

    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.out_indices = list(config.out_indices)
        self.embeddings = Dinov2Embeddings(config)
        self.encoder = Dinov2Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array, output_attentions: bool = False) -> BackboneFeatures:
        """(B, H, W, 3) NHWC pixels -> BackboneFeatures (all hidden states, embeddings first, un-normed)."""
        b, h, w, _ = x.shape
        grid = self.embeddings.patch_embeddings.grid(h, w)
        hidden_states, attentions = self.encoder(self.embeddings(x), output_attentions)
        features = []
        for i in self.out_indices:
            state = hidden_states[i]
            if self.config.apply_layernorm:
                state = self.layernorm(state)
            if self.config.reshape_hidden_states:
                state = state[:, 1:].reshape(b, grid[0], grid[1], -1)
            features.append(state)
        return BackboneFeatures(features, grid, tuple(hidden_states), tuple(attentions) if output_attentions else None)

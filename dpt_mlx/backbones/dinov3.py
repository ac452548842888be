"""The DINOv3 ViT (transformers' ``DINOv3ViTModel`` / ``DINOv3ViTBackbone``), as CHMv2 uses it.

Token sequences are (B, 1 + R + gh * gw, C): the CLS token, R register tokens, then the patches
row-major over the (gh, gw) = (H // p, W // p) grid. Positions are rotary embeddings of each
patch centre's (y, x) in [-1, 1], applied to the patch tokens' queries and keys only; there is no
position table, so any input size works. Module names follow the checkpoints (``embeddings.*``,
``layer.N.attention.q_proj``, ``layer.N.mlp.gate_proj``, ``norm.*``): transformers 5 keeps the layers
under ``model.layer.N`` in memory but writes ``layer.N`` when it saves, as the hub's files have it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..configs.base import BaseConfig, align_out_features, check_act, pair, stage_names
from ..errors import UnsupportedModelError
from ..layers import Dropout, ScaledDotProductAttention, activation
from ..outputs import BackboneFeatures, BaseModelOutputWithPooling
from .dinov2 import LayerScale
from .transformer import attend, run_layers


@dataclass
class Dinov3ViTConfig(BaseConfig):
    """``transformers.DINOv3ViTConfig``: the same fields and defaults (dinov3-vits16).

    ``return_class_token`` is not a field of the reference's class, but its backbone reads it
    (``getattr(config, "return_class_token", False)``) and CHMv2's backbone_config sets it.
    ``pos_embed_shift`` / ``_jitter`` / ``_rescale`` augment the patch coordinates in training only.
    """

    model_type: str = "dinov3_vit"
    patch_size: int | list[int] = 16
    hidden_size: int = 384
    intermediate_size: int = 1536
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    hidden_act: str = "gelu"
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    rope_theta: float = 100.0
    image_size: int | list[int] = 224
    num_channels: int = 3
    query_bias: bool = True
    key_bias: bool = False
    value_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    layerscale_value: float = 1.0
    drop_path_rate: float = 0.0
    use_gated_mlp: bool = False
    num_register_tokens: int = 0
    pos_embed_shift: float | None = None
    pos_embed_jitter: float | None = None
    pos_embed_rescale: float | None = 2.0
    out_features: list[str] | None = None
    out_indices: list[int] | None = None
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True
    return_class_token: bool = False

    POSITIVE = frozenset(
        {
            "patch_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "layer_norm_eps",
            "rope_theta",
            "image_size",
            "num_channels",
            "pos_embed_jitter",
            "pos_embed_rescale",
        }
    )
    NON_NEGATIVE = frozenset(
        {"attention_dropout", "initializer_range", "drop_path_rate", "num_register_tokens", "pos_embed_shift"}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.model_type != "dinov3_vit":
            raise ValueError(f"model_type={self.model_type!r} is not 'dinov3_vit'")
        check_act("hidden_act", self.hidden_act)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )
        if self.head_dim % 4:
            raise ValueError(
                f"hidden_size / num_attention_heads = {self.head_dim} must be a multiple of 4 "
                "(the rotary embeddings give each of y and x a quarter of a head's channels, twice)"
            )
        pair(self.image_size, "image_size"), pair(self.patch_size, "patch_size")
        self.out_features, self.out_indices = align_out_features(self.stage_names, self.out_features, self.out_indices)

    @property
    def stage_names(self) -> list[str]:
        return stage_names(self.num_hidden_layers)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_chmv2(cls, config) -> Dinov3ViTConfig:
        """The backbone of a CHMv2 config (``config.backbone_config``), for :class:`Dinov3ViTNeckBackbone`.

        CHMv2 reads each selected stage as a (NCHW map, CLS token) pair, so its backbone needs
        ``reshape_hidden_states`` and ``return_class_token`` (the hub's config has both; the
        reference fails without them). transformers' DPT and Depth Anything read CLS-first token
        sequences, which this backbone never returns: those models cannot use it.
        """
        if getattr(config, "model_type", None) != "chmv2":
            raise UnsupportedModelError(
                "a dinov3_vit backbone is supported in CHMv2 checkpoints only "
                "(transformers' DPT and Depth Anything cannot read its features)"
            )
        backbone = cls.from_dict(config.backbone_config)
        if not (backbone.reshape_hidden_states and backbone.return_class_token):
            raise ValueError(
                "CHMv2 reads each backbone stage as a feature map and its CLS token: set "
                "reshape_hidden_states=true and return_class_token=true in backbone_config"
            )
        sizes = getattr(config, "neck_hidden_sizes", None) or getattr(config, "post_process_channels", None)
        if sizes is not None and len(sizes) != len(backbone.out_indices):
            raise ValueError(
                f"the DINOv3 backbone returns {len(backbone.out_indices)} feature maps "
                f"({', '.join(backbone.out_features)}) but the neck has {len(sizes)} stages; they must match"
            )
        return backbone


# ------------------------------------------------------------------------------ embeddings


class Dinov3ViTEmbeddings(nn.Module):
    """Patch embeddings after the CLS and register tokens; no position table (positions are rotary).

    ``mask_token`` is kept as a parameter so that checkpoints load strictly (it is only used for
    masked-image pretraining, never at inference). ``register_tokens`` is (1, R, C), R may be 0.
    """

    def __init__(self, config: Dinov3ViTConfig):
        super().__init__()
        c, patch = config.hidden_size, pair(config.patch_size)
        self.cls_token = mx.zeros((1, 1, c))
        self.mask_token = mx.zeros((1, 1, c))
        self.register_tokens = mx.zeros((1, config.num_register_tokens, c))
        self.patch_embeddings = nn.Conv2d(config.num_channels, c, kernel_size=patch, stride=patch)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, H, W, 3) NHWC -> (B, 1 + R + gh * gw, C)."""
        patches = self.patch_embeddings(x)
        b, gh, gw, c = patches.shape
        prefix = mx.concatenate([self.cls_token, self.register_tokens], axis=1).astype(patches.dtype)
        prefix = mx.broadcast_to(prefix, (b, prefix.shape[1], c))
        return mx.concatenate([prefix, patches.reshape(b, gh * gw, c)], axis=1)


def patch_centres(grid: tuple[int, int]) -> mx.array:
    """(gh * gw, 2) float32 (y, x) of each patch centre, row-major, scaled to [-1, 1]."""
    gh, gw = grid
    ys = (mx.arange(gh, dtype=mx.float32) + 0.5) / gh
    xs = (mx.arange(gw, dtype=mx.float32) + 0.5) / gw
    coords = mx.stack([mx.repeat(ys, gw), mx.tile(xs, gh)], axis=-1)
    return 2.0 * coords - 1.0


class Dinov3ViTRopePositionEmbedding(nn.Module):
    """cos and sin of the rotary angles of every patch: (gh * gw, head_dim) each.

    A head's angles are [y * f, x * f, y * f, x * f] (f: the head_dim / 4 frequencies
    ``rope_theta ** -(4 i / head_dim)``, y and x scaled by 2 pi): ``rotate_half`` pairs channel i
    with i + head_dim / 2, which share an angle, so the first quarter of each half turns with y
    and the second with x.
    In training the coordinates are shifted, jittered and rescaled at random as the reference
    does (``pos_embed_*``); at inference they are the plain patch centres.
    """

    def __init__(self, config: Dinov3ViTConfig):
        super().__init__()
        self.config = config
        exponents = mx.arange(config.head_dim // 4, dtype=mx.float32) * (4 / config.head_dim)
        self._inv_freq = 1 / mx.power(mx.array(config.rope_theta, mx.float32), exponents)

    def __call__(self, grid: tuple[int, int], dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
        coords = patch_centres(grid)
        if self.training:
            coords = self._augment(coords)
        angles = 2 * math.pi * coords[:, :, None] * self._inv_freq  # (N, 2, head_dim / 4), float32
        angles = mx.tile(angles.reshape(coords.shape[0], -1), (1, 2))  # (N, head_dim)
        return mx.cos(angles).astype(dtype), mx.sin(angles).astype(dtype)

    def _augment(self, coords: mx.array) -> mx.array:
        c = self.config
        if c.pos_embed_shift is not None:  # + U(-shift, shift), per axis
            coords = coords + mx.random.uniform(-c.pos_embed_shift, c.pos_embed_shift, (1, 2))
        if c.pos_embed_jitter is not None:  # * log-uniform in [1/jitter, jitter], per axis
            r = math.log(c.pos_embed_jitter)
            coords = coords * mx.exp(mx.random.uniform(-r, r, (1, 2)))
        if c.pos_embed_rescale is not None:  # * log-uniform in [1/rescale, rescale], both axes
            r = math.log(c.pos_embed_rescale)
            coords = coords * mx.exp(mx.random.uniform(-r, r, (1,)))
        return coords


def with_prefix(cos: mx.array, sin: mx.array, prefix: int) -> tuple[mx.array, mx.array]:
    """The identity rotation (cos 1, sin 0) for the CLS and register tokens, before the patches':
    the reference rotates only the patch tokens, and ``q * 1 + r * 0`` is ``q`` exactly."""
    dim = cos.shape[-1]
    cos = mx.concatenate([mx.ones((prefix, dim), cos.dtype), cos], axis=0)
    sin = mx.concatenate([mx.zeros((prefix, dim), sin.dtype), sin], axis=0)
    return cos, sin


def rotate(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """x * cos + rotate_half(x) * sin for (B, heads, N, d) ``x`` and (N, d) ``cos`` / ``sin``."""
    x1, x2 = mx.split(x, 2, axis=-1)
    return x * cos + mx.concatenate([-x2, x1], axis=-1) * sin


# -------------------------------------------------------------------------------- the layers


class Dinov3ViTAttention(nn.Module):
    """Self-attention with rotary queries and keys (``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``)."""

    def __init__(self, config: Dinov3ViTConfig):
        super().__init__()
        c = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(c, c, bias=config.query_bias)
        self.k_proj = nn.Linear(c, c, bias=config.key_bias)
        self.v_proj = nn.Linear(c, c, bias=config.value_bias)
        self.o_proj = nn.Linear(c, c, bias=config.proj_bias)
        self.dropout = Dropout(config.attention_dropout)
        self.sdpa = ScaledDotProductAttention()

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, output_attentions: bool = False):
        """(B, N, C) -> (B, N, C), and the (B, heads, N, N) attention probabilities when asked."""
        b, n, _ = x.shape

        def heads(t):
            return t.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

        q = rotate(heads(self.q_proj(x)), cos, sin)
        k = rotate(heads(self.k_proj(x)), cos, sin)
        v = heads(self.v_proj(x))
        out, probs = attend(q, k, v, self.scale, self.sdpa, self.dropout, output_attentions)
        return self.o_proj(out), probs


class Dinov3ViTMLP(nn.Module):
    """down_proj(act(up_proj(x)))."""

    def __init__(self, config: Dinov3ViTConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = activation(config.hidden_act)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(self.act_fn(self.up_proj(x)))


class Dinov3ViTGatedMLP(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)): SwiGLU with ``hidden_act`` "silu" (``use_gated_mlp``)."""

    def __init__(self, config: Dinov3ViTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = activation(config.hidden_act)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Dinov3ViTLayer(nn.Module):
    """x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x)). Drop path is the identity at inference."""

    def __init__(self, config: Dinov3ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Dinov3ViTAttention(config)
        self.layer_scale1 = LayerScale(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Dinov3ViTGatedMLP(config) if config.use_gated_mlp else Dinov3ViTMLP(config)
        self.layer_scale2 = LayerScale(config)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, output_attentions: bool = False):
        attn, probs = self.attention(self.norm1(x), cos, sin, output_attentions)
        x = x + self.layer_scale1(attn)
        x = x + self.layer_scale2(self.mlp(self.norm2(x)))
        return x, probs


# ------------------------------------------------------------------------------ the networks


class Dinov3ViTBase(nn.Module):
    """Embeddings, rotary position embeddings, the layers and the final norm, as the checkpoints name them."""

    def __init__(self, config: Dinov3ViTConfig):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.embeddings = Dinov3ViTEmbeddings(config)
        self.rope_embeddings = Dinov3ViTRopePositionEmbedding(config)
        self.layer = [Dinov3ViTLayer(config) for _ in range(config.num_hidden_layers)]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False  # recompute layers in the backward pass (training)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        ph, pw = pair(self.config.patch_size)
        return height // ph, width // pw

    def encode(self, x: mx.array, output_attentions: bool = False):
        """(B, H, W, 3) NHWC pixels -> every layer's input and output (embeddings first, un-normed),
        the attentions (None each unless asked), and the (gh, gw) patch grid."""
        grid = self.grid(x.shape[1], x.shape[2])
        cos, sin = self.rope_embeddings(grid, x.dtype)
        cos, sin = with_prefix(cos, sin, 1 + self.config.num_register_tokens)
        hidden_states, attentions = run_layers(
            self.layer,
            self.embeddings(x),
            cos,
            sin,
            output_attentions=output_attentions,
            checkpoint=self.gradient_checkpointing,
        )
        return hidden_states, attentions, grid


class Dinov3ViTModel(Dinov3ViTBase):
    """``DINOv3ViTModel``: the normed last hidden state, its CLS token as the pooled output."""

    def __call__(
        self, x: mx.array, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> BaseModelOutputWithPooling:
        """(B, H, W, 3) NHWC pixels -> (B, 1 + R + gh * gw, C) tokens (``hidden_states`` un-normed)."""
        hidden_states, attentions, _ = self.encode(x, output_attentions)
        last = self.norm(hidden_states[-1])
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=last[:, 0],
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


@dataclass
class Dinov3ViTBackboneFeatures(BackboneFeatures):
    """:class:`BackboneFeatures` with ``cls_tokens``: each selected stage's (B, C) CLS token
    (``return_class_token``, else None), as ``DINOv3ViTBackboneOutput`` has them."""

    cls_tokens: tuple[mx.array, ...] | None = None


class Dinov3ViTBackbone(Dinov3ViTBase):
    """``DINOv3ViTBackbone``: the patch tokens of the ``out_features`` stages ("stem" = embeddings).

    Each selected state goes through the final norm when ``apply_layernorm``; the last stage always
    does (the reference norms it for its ``last_hidden_state``, and that normed state is also the
    one it selects). The CLS and register tokens are dropped: with ``reshape_hidden_states`` a
    feature is an NHWC map (the reference returns NCHW), without, (B, gh * gw, C) patch tokens.
    With ``return_class_token`` each selected stage's CLS token comes in ``cls_tokens``.
    """

    def __init__(self, config: Dinov3ViTConfig):
        super().__init__(config)
        self.out_indices = list(config.out_indices)

    def __call__(self, x: mx.array, output_attentions: bool = False) -> Dinov3ViTBackboneFeatures:
        """(B, H, W, 3) NHWC pixels -> features, CLS tokens, all hidden states (embeddings first, un-normed)."""
        b = x.shape[0]
        hidden_states, attentions, grid = self.encode(x, output_attentions)
        prefix, last = 1 + self.config.num_register_tokens, len(hidden_states) - 1
        features, cls_tokens = [], []
        for i in self.out_indices:
            state = hidden_states[i]
            if self.config.apply_layernorm or i == last:
                state = self.norm(state)
            cls_tokens.append(state[:, 0])
            patches = state[:, prefix:]
            if self.config.reshape_hidden_states:
                patches = patches.reshape(b, grid[0], grid[1], -1)
            features.append(patches)
        return Dinov3ViTBackboneFeatures(
            features,
            grid,
            tuple(hidden_states),
            tuple(attentions) if output_attentions else None,
            cls_tokens=tuple(cls_tokens) if self.config.return_class_token else None,
        )


class Dinov3ViTNeckBackbone(Dinov3ViTBackbone):
    """The backbone as the DPT neck reads it (CHMv2): each selected stage's CLS token and patch
    tokens as one (B, 1 + gh * gw, C) sequence, CLS first (the registers dropped).

    That is CHMv2's (map, CLS token) pair in the layout ``models.neck.ReassembleStage`` reassembles:
    its readout ("project": GELU(Linear([token, CLS])), "add", "ignore") and reshape to the grid
    are then CHMv2's. Built from :meth:`Dinov3ViTConfig.from_chmv2`.
    """

    def __call__(self, x: mx.array, output_attentions: bool = False) -> BackboneFeatures:
        feats = super().__call__(x, output_attentions)
        if feats.cls_tokens is None:
            raise ValueError(
                "the DPT neck reads each stage's CLS token: set return_class_token=true in backbone_config"
            )
        b, c = x.shape[0], self.config.hidden_size
        tokens = [
            mx.concatenate([cls[:, None], f.reshape(b, -1, c)], axis=1)
            for f, cls in zip(feats.features, feats.cls_tokens)
        ]
        return BackboneFeatures(tokens, feats.grid, feats.hidden_states, feats.attentions)

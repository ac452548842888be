"""The BEiT backbone of DPT-BEiT (``Intel/dpt-beit-{base,large}-{384,512}``).

Token sequences are (B, 1 + gh * gw, C), CLS first, as in :mod:`dpt_mlx.vit`; the DPT neck
reassembles them on the (H // patch, W // patch) grid. Module names follow the checkpoints
(transformers' ``BeitBackbone`` saves ``backbone.embeddings.*`` and
``backbone.encoder.layer.N.attention.attention.query.*``), so most keys load without renames.

Reference subtleties kept here:

- the relative position bias table is made for the config's patch grid (gh0, gw0) and is
  resized for every input, even one of the config's size (where the resize is the identity):
  its (2*gh0-1) * (2*gw0-1) grid part is resized **bilinearly, align_corners=False** to
  (2*gh-1, 2*gw-1); the three CLS entries are kept. The reference reshapes that part as
  (2*gw0-1, 2*gh0-1) before resizing; kept verbatim (it only matters for non-square configs);
- the index into the table is recomputed from the input's grid (``relative_position_index``
  buffers in old checkpoints are dropped by :mod:`dpt_mlx.weights`);
- a shared table (``use_shared_relative_position_bias``) and per-layer tables
  (``use_relative_position_bias``) add up when both are on;
- absolute position embeddings, when used, are resized **bicubically** (align_corners=False);
- feature maps are the layers' outputs before any final norm: with ``use_mean_pooling=False``
  transformers' ``BeitModel`` has a final LayerNorm that no DPT feature goes through (its keys
  are dropped by :mod:`dpt_mlx.weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..configs.base import BaseConfig, align_out_features, check_act, pair, stage_names
from ..errors import UnsupportedModelError
from ..layers import Dropout
from ..ops import interpolate
from ..outputs import BackboneFeatures
from .transformer import (
    AttentionOutput,
    Intermediate,
    Output,
    PatchEmbeddings,
    SelfAttention,
    resize_position_embeddings,
    run_layers,
    with_cls_token,
)


@dataclass
class BeitConfig(BaseConfig):
    """``transformers.BeitConfig``, the fields a BEiT backbone uses (same names and defaults).

    DPT-BEiT hub configs (as transformers' ``convert_dpt_beit_to_hf.py`` builds them; hub files not fetched):
    base-384: hidden 768, 12 layers, 12 heads, out_features stage3/6/9/12; large-384/512: hidden 1024,
    24 layers, 16 heads, out_features stage6/12/18/24; all patch 16, ``use_relative_position_bias=True``,
    ``layer_scale_init_value=0.1``, ``use_mean_pooling=True``, ``reshape_hidden_states=False``.
    """

    model_type: str = "beit"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    image_size: int | list[int] = 224
    patch_size: int = 16
    num_channels: int = 3
    use_mask_token: bool = False
    use_absolute_position_embeddings: bool = False
    use_relative_position_bias: bool = False
    use_shared_relative_position_bias: bool = False
    layer_scale_init_value: float = 0.1
    use_mean_pooling: bool = True
    add_fpn: bool = False
    reshape_hidden_states: bool = True
    out_features: list[str] | None = None
    out_indices: list[int] | None = None

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
        }
    )
    NON_NEGATIVE = frozenset({"hidden_dropout_prob", "attention_probs_dropout_prob"})

    def __post_init__(self):
        super().__post_init__()
        if self.model_type != "beit":
            raise UnsupportedModelError(f"expected a 'beit' backbone config, got model_type {self.model_type!r}")
        check_act("hidden_act", self.hidden_act)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"backbone hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        self.image_size = list(pair(self.image_size, "image_size"))
        if self.add_fpn:
            raise UnsupportedModelError(
                "a BEiT backbone with add_fpn=True cannot feed DPT's neck (nor can it in "
                "transformers); use a config with add_fpn=false"
            )
        if self.reshape_hidden_states:
            raise UnsupportedModelError(
                "DPT needs BEiT token sequences: set reshape_hidden_states=false in the "
                "backbone config, as the DPT-BEiT checkpoints do"
            )
        self.out_features, self.out_indices = align_out_features(self.stage_names, self.out_features, self.out_indices)

    @property
    def stage_names(self) -> list[str]:
        return stage_names(self.num_hidden_layers)

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid the position tables were made for."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size


@lru_cache(maxsize=16)
def relative_position_index(grid: tuple[int, int]) -> np.ndarray:
    """(N+1, N+1) indices into a table of (2gh-1)(2gw-1) relative offsets + 3 CLS entries (N = gh*gw)."""
    gh, gw = grid
    num_relative = (2 * gh - 1) * (2 * gw - 1) + 3
    coords = np.stack(np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")).reshape(2, -1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)  # (N, N, 2)
    index = np.zeros((gh * gw + 1,) * 2, dtype=np.int32)
    index[1:, 1:] = (rel[..., 0] + gh - 1) * (2 * gw - 1) + (rel[..., 1] + gw - 1)
    index[0, :] = num_relative - 3  # cls to token
    index[:, 0] = num_relative - 2  # token to cls
    index[0, 0] = num_relative - 1  # cls to cls
    return index


@lru_cache(maxsize=16)
def relative_position_index_array(grid: tuple[int, int]) -> mx.array:
    """:func:`relative_position_index` as an (N+1, N+1) int32 MLX array (made once per grid)."""
    return mx.array(relative_position_index(grid))


class RelativePositionBias(nn.Module):
    """A learned table of per-head biases for every relative offset inside the patch grid (+ CLS)."""

    def __init__(self, config: BeitConfig):
        super().__init__()
        gh, gw = config.grid
        self._grid = (gh, gw)
        self.relative_position_bias_table = mx.zeros(((2 * gh - 1) * (2 * gw - 1) + 3, config.num_attention_heads))

    def table(self, grid: tuple[int, int]) -> mx.array:
        """The (R, heads) table for a (gh, gw) patch grid: the learned one, its offsets resized."""
        table = self.relative_position_bias_table
        old_h, old_w = 2 * self._grid[0] - 1, 2 * self._grid[1] - 1
        new_h, new_w = 2 * grid[0] - 1, 2 * grid[1] - 1
        # The reference lays the table out as (old_w, old_h) and resizes it to (new_h, new_w): a
        # resize to the same shape leaves it as it is.
        if (old_w, old_h) == (new_h, new_w):
            return table
        sub = table[: old_h * old_w].reshape(1, old_w, old_h, -1).astype(mx.float32)  # NHWC
        sub = interpolate(sub, (new_h, new_w), "bilinear", align_corners=False).astype(table.dtype)
        return mx.concatenate([sub.reshape(new_h * new_w, -1), table[old_h * old_w :]], axis=0)

    def __call__(self, grid: tuple[int, int]) -> mx.array:
        """The (1, heads, N+1, N+1) additive attention bias for a (gh, gw) patch grid."""
        n = grid[0] * grid[1] + 1
        bias = self.table(grid)[relative_position_index_array(tuple(grid))].reshape(n, n, -1)
        return bias.transpose(2, 0, 1)[None]


class BeitSelfAttention(SelfAttention):
    """Self-attention with a bias-free key projection and an optional per-layer relative position bias."""

    def __init__(self, config: BeitConfig):
        super().__init__(
            config.hidden_size, config.num_attention_heads, True, config.attention_probs_dropout_prob, key_bias=False
        )
        self.relative_position_bias = RelativePositionBias(config) if config.use_relative_position_bias else None

    def __call__(self, x, grid, shared_bias=None, output_attentions=False):
        bias = shared_bias
        if self.relative_position_bias is not None:
            own = self.relative_position_bias(grid)
            bias = own if bias is None else bias + own
        if bias is not None:
            bias = bias.astype(x.dtype)
        return super().__call__(x, bias, output_attentions)


class BeitAttention(nn.Module):
    def __init__(self, config: BeitConfig):
        super().__init__()
        self.attention = BeitSelfAttention(config)
        self.output = AttentionOutput(config.hidden_size, config.hidden_dropout_prob)

    def __call__(self, x, grid, shared_bias=None, output_attentions=False):
        out, probs = self.attention(x, grid, shared_bias, output_attentions)
        return self.output(out), probs


class BeitLayer(nn.Module):
    """Pre-norm block with layer scale: x + lambda_1 * attn(ln(x)), then x + lambda_2 * mlp(ln(x))."""

    def __init__(self, config: BeitConfig):
        super().__init__()
        self.attention = BeitAttention(config)
        self.intermediate = Intermediate(config)
        self.output = Output(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.use_layer_scale = config.layer_scale_init_value > 0
        if self.use_layer_scale:
            self.lambda_1 = mx.full((config.hidden_size,), config.layer_scale_init_value)
            self.lambda_2 = mx.full((config.hidden_size,), config.layer_scale_init_value)

    def __call__(self, x, grid, shared_bias=None, output_attentions=False):
        attn, probs = self.attention(self.layernorm_before(x), grid, shared_bias, output_attentions)
        x = x + (self.lambda_1 * attn if self.use_layer_scale else attn)
        mlp = self.output(self.intermediate(self.layernorm_after(x)))
        x = x + (self.lambda_2 * mlp if self.use_layer_scale else mlp)
        return x, probs


class BeitEncoder(nn.Module):
    def __init__(self, config: BeitConfig):
        super().__init__()
        self.relative_position_bias = RelativePositionBias(config) if config.use_shared_relative_position_bias else None
        self.layer = [BeitLayer(config) for _ in range(config.num_hidden_layers)]
        self.gradient_checkpointing = False  # recompute layers in the backward pass (training)

    def __call__(self, x, grid, output_attentions=False):
        """Returns every layer's input and output (embeddings first) and the attention probabilities."""
        shared = self.relative_position_bias(grid) if self.relative_position_bias is not None else None
        return run_layers(
            self.layer, x, grid, shared, output_attentions=output_attentions, checkpoint=self.gradient_checkpointing
        )


class BeitEmbeddings(nn.Module):
    def __init__(self, config: BeitConfig):
        super().__init__()
        self.cls_token = mx.zeros((1, 1, config.hidden_size))
        if config.use_mask_token:  # masked image modeling only; loaded so that checkpoints load strictly
            self.mask_token = mx.zeros((1, 1, config.hidden_size))
        self.patch_embeddings = PatchEmbeddings(config.num_channels, config.hidden_size, config.patch_size)
        if config.use_absolute_position_embeddings:
            gh, gw = config.grid
            self.position_embeddings = mx.zeros((1, gh * gw + 1, config.hidden_size))
        else:
            self.position_embeddings = None
        self.dropout = Dropout(config.hidden_dropout_prob)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, H, W, 3) -> (B, 1 + gh * gw, C)."""
        emb = with_cls_token(self.cls_token, self.patch_embeddings(x))
        if self.position_embeddings is not None:  # bicubic, as the reference resizes them
            grid = self.patch_embeddings.grid(x.shape[1], x.shape[2])
            emb = emb + resize_position_embeddings(self.position_embeddings, grid, mode="bicubic")
        return self.dropout(emb)


class BeitBackbone(nn.Module):
    """transformers' ``BeitBackbone`` with ``reshape_hidden_states=False``: token sequences at ``out_indices``."""

    def __init__(self, beit: BeitConfig):
        super().__init__()
        self.out_indices = beit.out_indices
        self.hidden_size = beit.hidden_size
        self.embeddings = BeitEmbeddings(beit)
        self.encoder = BeitEncoder(beit)

    def __call__(self, x: mx.array, output_attentions: bool = False) -> BackboneFeatures:
        """NHWC pixels -> the selected hidden states (B, 1 + gh*gw, C), all hidden states, attentions."""
        grid = self.embeddings.patch_embeddings.grid(x.shape[1], x.shape[2])
        hidden_states, attentions = self.encoder(self.embeddings(x), grid, output_attentions)
        features = [hidden_states[i] for i in self.out_indices]
        return BackboneFeatures(features, grid, tuple(hidden_states), tuple(attentions))

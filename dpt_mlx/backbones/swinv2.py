"""The Swin Transformer V2 backbone of DPT-SwinV2 (``Intel/dpt-swinv2-{tiny,base,large}-{256,384}``).

Everything is channels-last: stages work on (B, H, W, C) maps and hand the DPT neck NHWC maps
(the neck has no reassemble stage for this hierarchical backbone). Module names follow
transformers' ``Swinv2Backbone`` checkpoints (``backbone.encoder.layers.S.blocks.B...``); only the
continuous position bias MLP's Sequential indices are renamed (``.0.`` -> ``.fc1.``, ``.2.`` -> ``.fc2.``).

Reference subtleties kept here:

- window size and shift of every block are fixed when the model is built, from the config's
  image size: a stage whose (config) resolution is at most ``window_size`` gets that resolution as
  its window and no shift. The height axis decides, as in the reference;
- inputs that are not a multiple of the patch size are zero-padded bottom/right; inside each
  block the (unnormalised, post-norm) hidden states are zero-padded bottom/right to a multiple of
  the window, attended, and cropped back; the shift mask is built on the padded map; patch merging
  pads odd sizes;
- cosine attention: normalised q and k, a per-head logit scale clamped at log(100) before exp,
  and a continuous position bias ``16 * sigmoid(MLP(log-spaced coords))``; coordinates are
  normalised by ``pretrained_window_size - 1`` when it is set, else ``window - 1``;
- the reference adds the shift mask (0 / -100) twice; so does this code;
- feature maps are the stages' outputs before patch merging, with no extra norm (transformers'
  ``Swinv2Backbone`` has none); ``hidden_states`` are the same, as (B, H*W, C) sequences, the
  patch embeddings first; ``attentions`` hold the last block's probabilities of each stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..configs.base import BaseConfig, align_out_features, check_act, pair, stage_names
from ..errors import UnsupportedModelError
from ..layers import Dropout, ScaledDotProductAttention, activation
from ..outputs import BackboneFeatures

_MASK_VALUE = -100.0  # the reference's shift-mask value


@dataclass
class Swinv2Config(BaseConfig):
    """``transformers.Swinv2Config``, the fields a Swinv2 backbone uses (same names and defaults).

    DPT-SwinV2 hub configs (as transformers' ``convert_dpt_swinv2_to_hf.py`` builds them; hub files not fetched):
    tiny-256: embed_dim 96, depths (2,2,6,2), heads (3,6,12,24), window 16, pretrained windows 0;
    base-384 / large-384: embed_dim 128 / 192, depths (2,2,18,2), heads (4,8,16,32) / (6,12,24,48),
    window 24, pretrained windows (12,12,12,6); all patch 4, out_features stage1..stage4.
    """

    model_type: str = "swinv2"
    image_size: int | list[int] = 224
    patch_size: int | list[int] = 4
    num_channels: int = 3
    embed_dim: int = 96
    depths: list[int] = (2, 2, 6, 2)
    num_heads: list[int] = (3, 6, 12, 24)
    window_size: int = 7
    pretrained_window_sizes: list[int] | None = (0, 0, 0, 0)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    hidden_act: str = "gelu"
    use_absolute_embeddings: bool = False
    layer_norm_eps: float = 1e-5
    out_features: list[str] | None = None
    out_indices: list[int] | None = None

    POSITIVE = frozenset(
        {
            "image_size",
            "patch_size",
            "num_channels",
            "embed_dim",
            "depths",
            "num_heads",
            "window_size",
            "mlp_ratio",
            "layer_norm_eps",
        }
    )
    NON_NEGATIVE = frozenset({"pretrained_window_sizes", "hidden_dropout_prob", "attention_probs_dropout_prob"})

    def __post_init__(self):
        super().__post_init__()
        if self.model_type != "swinv2":
            raise UnsupportedModelError(f"expected a 'swinv2' backbone config, got model_type {self.model_type!r}")
        check_act("hidden_act", self.hidden_act)
        self.depths, self.num_heads = list(self.depths), list(self.num_heads)
        if self.pretrained_window_sizes is None:
            self.pretrained_window_sizes = [0] * len(self.depths)
        self.pretrained_window_sizes = list(self.pretrained_window_sizes)
        if not len(self.depths) == len(self.num_heads) <= len(self.pretrained_window_sizes):
            raise ValueError(
                f"depths {self.depths}, num_heads {self.num_heads} and pretrained_window_sizes "
                f"{self.pretrained_window_sizes} do not describe the same stages"
            )
        for i, heads in enumerate(self.num_heads):
            if self.dims[i] % heads:
                raise ValueError(f"stage {i + 1} width {self.dims[i]} is not a multiple of its {heads} heads")
        if self.use_absolute_embeddings:
            # transformers' Swinv2Backbone adds (1, N+1, C) embeddings to N tokens: it cannot run either.
            raise UnsupportedModelError(
                "Swinv2 with use_absolute_embeddings=True is not supported (transformers "
                "cannot run it as a backbone either)"
            )
        self.image_size = list(pair(self.image_size, "image_size"))
        self.patch_size = list(pair(self.patch_size, "patch_size"))
        self.out_features, self.out_indices = align_out_features(self.stage_names, self.out_features, self.out_indices)

    @property
    def stage_names(self) -> list[str]:
        return stage_names(len(self.depths))

    @property
    def dims(self) -> list[int]:
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    @property
    def hidden_size(self) -> int:
        return self.dims[-1]


@lru_cache(maxsize=64)
def coords_table_and_index(window: int, pretrained_window: int) -> tuple[np.ndarray, np.ndarray]:
    """The log-spaced relative coordinates ((2w-1)^2, 2) and the (w*w, w*w) index into them."""
    rel = np.arange(-(window - 1), window, dtype=np.float32)
    table = np.stack(np.meshgrid(rel, rel, indexing="ij"), axis=-1)  # (2w-1, 2w-1, 2)
    if pretrained_window > 0:
        table = table / np.float32(pretrained_window - 1)
    elif window > 1:
        table = table / np.float32(window - 1)
    table = table * np.float32(8)  # normalise to [-8, 8]
    table = np.sign(table) * np.log2(np.abs(table) + np.float32(1.0)) / np.float32(math.log2(8))
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel_coords = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    index = rel_coords[..., 0] * (2 * window - 1) + rel_coords[..., 1]
    return table.reshape(-1, 2).astype(np.float32), index.astype(np.int32)


@lru_cache(maxsize=64)
def shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """The (num_windows, w*w, w*w) mask (0 / -100) of the shifted windows of a padded (height, width) map."""
    h_region = (np.arange(height) >= height - window).astype(np.int64) + (np.arange(height) >= height - shift)
    w_region = (np.arange(width) >= width - window).astype(np.int64) + (np.arange(width) >= width - shift)
    regions = (h_region[:, None] * 3 + w_region[None, :])[None, :, :, None]  # (1, H, W, 1)
    windows = window_partition(regions, window).reshape(-1, window * window)  # (nW, w*w)
    diff = windows[:, None, :] - windows[:, :, None]
    return np.where(diff != 0, _MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x, window: int):
    """(B, H, W, C) -> (B * H/w * W/w, w, w, C), windows in row-major order, batch first."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_reverse(windows: mx.array, window: int, height: int, width: int) -> mx.array:
    """(B * nW, w, w, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


class ContinuousPositionBiasMLP(nn.Module):
    """Linear(2, 512) -> ReLU -> Linear(512, heads, no bias): a bias per head for each relative offset."""

    def __init__(self, num_heads: int):
        super().__init__()
        self.fc1 = nn.Linear(2, 512)
        self.fc2 = nn.Linear(512, num_heads, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(nn.relu(self.fc1(x)))


class Swinv2SelfAttention(nn.Module):
    def __init__(self, config: Swinv2Config, dim: int, num_heads: int, window: int, pretrained_window: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self._pretrained_window = pretrained_window
        self.logit_scale = mx.full((num_heads, 1, 1), math.log(10.0))
        self.continuous_position_bias_mlp = ContinuousPositionBiasMLP(num_heads)
        self.query = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        self.sdpa = ScaledDotProductAttention()

    def position_bias(self) -> mx.array:
        """(heads, w*w, w*w): 16 * sigmoid of the MLP's bias for each pair of positions in a window."""
        table, index = coords_table_and_index(self.window, self._pretrained_window)
        bias = self.continuous_position_bias_mlp(mx.array(table, dtype=self.logit_scale.dtype))
        n = self.window * self.window
        bias = bias[mx.array(index.reshape(-1))].reshape(n, n, -1).transpose(2, 0, 1)
        return 16 * mx.sigmoid(bias)

    def __call__(self, x: mx.array, mask: mx.array | None, output_attentions: bool = False):
        """Windows (B * nW, N, C) -> (B * nW, N, C); ``mask`` is (nW, N, N) or None."""
        bn, n, _ = x.shape

        def heads(t):
            return t.reshape(bn, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

        def normalize(t):  # F.normalize: t / max(|t|, 1e-12), in float32 (1e-12 is 0 in float16; padded keys are 0)
            t32 = t.astype(mx.float32)
            return (t32 / mx.maximum(mx.linalg.norm(t32, axis=-1, keepdims=True), 1e-12)).astype(t.dtype)

        q, k, v = normalize(heads(self.query(x))), normalize(heads(self.key(x))), heads(self.value(x))
        q = q * mx.exp(mx.minimum(self.logit_scale, math.log(100.0))).astype(q.dtype)
        bias = self.position_bias()[None]  # (1, heads, N, N)
        if mask is not None:
            # The reference adds the mask twice (scores + mask, then + mask again).
            bias = bias + 2 * mask[:, None]  # (nW, heads, N, N)
        bias = bias.astype(q.dtype)
        nw = bias.shape[0]
        probs = None
        if output_attentions or self.dropout.active:
            scores = q @ k.transpose(0, 1, 3, 2)
            scores = (scores.reshape(bn // nw, nw, self.num_heads, n, n) + bias).reshape(bn, self.num_heads, n, n)
            probs = mx.softmax(scores.astype(mx.float32), axis=-1).astype(q.dtype)
            out = self.dropout(probs) @ v
        else:
            # Fold the windows into the head axis so that one (nW * heads, N, N) bias broadcasts over the batch.
            def fold(t):
                return t.reshape(bn // nw, nw * self.num_heads, n, -1)

            out = self.sdpa(fold(q), fold(k), fold(v), scale=1.0, mask=bias.reshape(1, nw * self.num_heads, n, n))
            out = out.reshape(bn, self.num_heads, n, self.head_dim)
        return out.transpose(0, 2, 1, 3).reshape(bn, n, -1), probs


class Swinv2SelfOutput(nn.Module):
    def __init__(self, config: Swinv2Config, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.dropout = Dropout(config.attention_probs_dropout_prob)

    def __call__(self, x: mx.array) -> mx.array:
        return self.dropout(self.dense(x))


class Swinv2Attention(nn.Module):
    def __init__(self, config, dim, num_heads, window, pretrained_window):
        super().__init__()
        self.self = Swinv2SelfAttention(config, dim, num_heads, window, pretrained_window)
        self.output = Swinv2SelfOutput(config, dim)

    def __call__(self, x, mask, output_attentions=False):
        out, probs = self.self(x, mask, output_attentions)
        return self.output(out), probs


class Swinv2Intermediate(nn.Module):
    def __init__(self, config: Swinv2Config, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, int(config.mlp_ratio * dim))
        self.act = activation(config.hidden_act)

    def __call__(self, x):
        return self.act(self.dense(x))


class Swinv2Output(nn.Module):
    def __init__(self, config: Swinv2Config, dim: int):
        super().__init__()
        self.dense = nn.Linear(int(config.mlp_ratio * dim), dim)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def __call__(self, x):
        return self.dropout(self.dense(x))


class Swinv2Layer(nn.Module):
    """Post-norm (shifted) window block: x + ln(attn(x)), then x + ln(mlp(x))."""

    def __init__(self, config, dim, resolution, num_heads, shift, pretrained_window):
        super().__init__()
        # Window and shift are fixed from the config's resolution; the reference decides on the height.
        self.window = min(resolution[0], config.window_size)
        self.shift = 0 if resolution[0] <= self.window else shift
        self.attention = Swinv2Attention(config, dim, num_heads, self.window, pretrained_window)
        self.layernorm_before = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.intermediate = Swinv2Intermediate(config, dim)
        self.output = Swinv2Output(config, dim)
        self.layernorm_after = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array, output_attentions: bool = False):
        """(B, H, W, C) -> (B, H, W, C)."""
        _, h, w, c = x.shape
        ws, s = self.window, self.shift
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        y = mx.pad(x, [(0, 0), (0, pad_h), (0, pad_w), (0, 0)]) if pad_h or pad_w else x
        hp, wp = h + pad_h, w + pad_w
        if s > 0:
            y = mx.roll(y, shift=(-s, -s), axis=(1, 2))
        mask = mx.array(shift_mask(hp, wp, ws, s)) if s > 0 else None
        windows = window_partition(y, ws).reshape(-1, ws * ws, c)
        attn, probs = self.attention(windows, mask, output_attentions)
        y = window_reverse(attn.reshape(-1, ws, ws, c), ws, hp, wp)
        if s > 0:
            y = mx.roll(y, shift=(s, s), axis=(1, 2))
        y = y[:, :h, :w]
        x = x + self.layernorm_before(y)
        x = x + self.layernorm_after(self.output(self.intermediate(x)))
        return x, probs


class Swinv2PatchMerging(nn.Module):
    """2x2 neighbourhoods -> channels (odd sizes zero-padded bottom/right), Linear(4C -> 2C), LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""
        _, h, w, _ = x.shape
        if h % 2 or w % 2:
            x = mx.pad(x, [(0, 0), (0, h % 2), (0, w % 2), (0, 0)])
        x = mx.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        return self.norm(self.reduction(x))


class Swinv2Stage(nn.Module):
    def __init__(self, config: Swinv2Config, index: int, resolution: tuple[int, int]):
        super().__init__()
        dim, heads = config.dims[index], config.num_heads[index]
        pretrained = config.pretrained_window_sizes[index]
        self.blocks = [
            Swinv2Layer(config, dim, resolution, heads, 0 if i % 2 == 0 else config.window_size // 2, pretrained)
            for i in range(config.depths[index])
        ]
        self.downsample = Swinv2PatchMerging(dim) if index < len(config.depths) - 1 else None

    def __call__(self, x, output_attentions=False):
        """Returns (the output, the output before patch merging, the last block's attention probabilities)."""
        probs = None
        for block in self.blocks:
            x, probs = block(x, output_attentions)
        before = x
        if self.downsample is not None:
            x = self.downsample(x)
        return x, before, probs


class Swinv2Encoder(nn.Module):
    def __init__(self, config: Swinv2Config):
        super().__init__()
        gh, gw = config.image_size[0] // config.patch_size[0], config.image_size[1] // config.patch_size[1]
        self.layers = [Swinv2Stage(config, i, (gh // 2**i, gw // 2**i)) for i in range(len(config.depths))]

    def __call__(self, x, output_attentions=False):
        """(B, H, W, C) patch embeddings -> each stage's output before merging, attentions."""
        maps, attentions = [], []
        for stage in self.layers:
            x, before, probs = stage(x, output_attentions)
            maps.append(before)
            attentions.append(probs)
        return maps, attentions


class Swinv2PatchEmbeddings(nn.Module):
    def __init__(self, config: Swinv2Config):
        super().__init__()
        self.patch_size = tuple(config.patch_size)
        self.projection = nn.Conv2d(
            config.num_channels, config.embed_dim, kernel_size=self.patch_size, stride=self.patch_size
        )

    def __call__(self, x: mx.array) -> mx.array:
        """(B, H, W, 3) -> (B, ceil(H/p), ceil(W/p), C): inputs are zero-padded bottom/right to the patch."""
        _, h, w, _ = x.shape
        ph, pw = self.patch_size
        pad_h, pad_w = (ph - h % ph) % ph, (pw - w % pw) % pw
        if pad_h or pad_w:
            x = mx.pad(x, [(0, 0), (0, pad_h), (0, pad_w), (0, 0)])
        return self.projection(x)


class Swinv2Embeddings(nn.Module):
    def __init__(self, config: Swinv2Config):
        super().__init__()
        self.patch_embeddings = Swinv2PatchEmbeddings(config)
        self.norm = nn.LayerNorm(config.embed_dim)  # default eps, not layer_norm_eps, as the reference
        self.dropout = Dropout(config.hidden_dropout_prob)

    def __call__(self, x: mx.array) -> mx.array:
        return self.dropout(self.norm(self.patch_embeddings(x)))


class Swinv2Backbone(nn.Module):
    """transformers' ``Swinv2Backbone``: NHWC feature maps of the stages in ``out_features``."""

    def __init__(self, swin: Swinv2Config):
        super().__init__()
        self.out_indices = swin.out_indices
        self.hidden_size = swin.hidden_size
        self.embeddings = Swinv2Embeddings(swin)
        self.encoder = Swinv2Encoder(swin)

    def __call__(self, x: mx.array, output_attentions: bool = False) -> BackboneFeatures:
        """NHWC pixels -> NHWC maps [stem, stage1, ...][out_indices], hidden states as (B, H*W, C), attentions."""
        emb = self.embeddings(x)
        maps, attentions = self.encoder(emb, output_attentions)
        maps = [emb] + maps
        hidden_states = tuple(m.reshape(m.shape[0], -1, m.shape[-1]) for m in maps)
        return BackboneFeatures([maps[i] for i in self.out_indices], None, hidden_states, tuple(attentions))

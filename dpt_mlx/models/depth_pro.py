"""Depth Pro (apple/DepthPro-hf): three DINOv2 encoders, a multi-scale patch pyramid, a deconvolution
neck and fusion stage, a depth head and an optional field-of-view head.

The image is shrunk by each of ``scaled_images_ratios`` and cut into overlapping ``patch_size``
squares; one DINOv2 (the patch encoder) encodes every square, and the squares' token grids are
merged back into one feature map per scale, the overlaps cropped. A second DINOv2 (the image
encoder) sees the whole image at ``patch_size``. The neck upsamples each map with transposed
convolutions; the fusion stage refines them from the coarsest to the finest, and the head turns the
finest into canonical inverse depth. The field-of-view model (a third DINOv2 and a small
convolutional head) gives the camera's horizontal field of view in degrees, from which
post-processing computes metric depth.

Everything inside is channels-last (B, H, W, C). Reference details kept here, at every input size
the reference accepts:

- the pyramid's resizes use ``F.interpolate(scale_factor=ratio)``: the output side is
  ``floor(side * ratio)`` and the sampling step is ``1 / ratio``, not ``side / output side``;
- patches are taken as ``F.unfold`` takes them (stride ``int(patch_size * (1 - overlap))``, rows of
  patches top to bottom, the leftover at the bottom and right dropped) and merged as a square: the
  first ``s * s`` of a scale's ``n`` patches (``s = int(sqrt(n))``), in that order, tile an
  ``s x s`` grid, whatever the patch grid's own shape; from 4 patches on, each patch loses
  ``min(grid // 4, int(merge_padding_value / ratio))`` token rows and columns on the sides where
  it meets another;
- the intermediate (hooked) layers are merged from the first ``s * s`` patches of the whole
  concatenation (largest scale first), ``s`` taken from the count of all patches;
- the base size of the feature maps is ``side // 2**int(log2(width / grid))`` for both sides.

The patch encoder runs over the patches in passes of at most ``patches_per_pass`` (a module
attribute, :data:`PATCHES_PER_PASS` by default), each evaluated before the next, so memory does not
grow with the number of patches (35 per image at 1536x1536).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import mlx.core as mx
import mlx.nn as nn

from ..backbones.dinov2 import Dinov2Backbone, Dinov2Config
from ..configs.depth_pro import DepthProConfig
from ..layers import PreActResidualLayer, Resize
from ..ops import interpolate
from ..outputs import DepthProDepthEstimatorOutput
from .base import PreTrainedModel

PATCHES_PER_PASS = 4  # patch-encoder inputs per evaluated pass (on the CPU, 4 ViT-L passes of 577 tokens)
HEAD_HIDDEN = 32  # the depth head's last hidden width (fixed in the reference)


def encoder_config(config: Dinov2Config) -> Dinov2Config:
    """A sub-config as ``Dinov2Model`` reads it: the last layer, layer-normed, as a token sequence
    (the backbone fields that a hub config may carry do not apply to the model)."""
    return dataclasses.replace(
        config, out_features=None, out_indices=None, apply_layernorm=True, reshape_hidden_states=False
    )


def token_grid(tokens: mx.array) -> mx.array:
    """(N, L, C) tokens -> (N, s, s, C) with s = int(sqrt(L)): the last s * s tokens (the CLS token dropped)."""
    n, length, c = tokens.shape
    side = int(length**0.5)
    return tokens[:, length - side * side :].reshape(n, side, side, c)


def split_to_patches(x: mx.array, patch: int, overlap: float) -> mx.array:
    """(B, H, W, C) -> (n * B, patch, patch, C): ``F.unfold``'s patches, patch-major (row i of the
    result is patch ``i // B`` of image ``i % B``); the image itself when it is one patch already."""
    b, h, w, c = x.shape
    if h == w == patch:
        return x
    stride = int(patch * (1 - overlap))
    tops = range(0, h - patch + 1, stride)
    lefts = range(0, w - patch + 1, stride)
    patches = [x[:, top : top + patch, left : left + patch] for top in tops for left in lefts]
    return mx.stack(patches).reshape(len(patches) * b, patch, patch, c)


def merge_patches(patches: mx.array, batch: int, padding: int) -> mx.array:
    """(n * B, g, g, C) patch-major grids -> (B, s * g', s * g', C): the first s * s patches of each image
    (s = int(sqrt(n))) as an s x s grid, ``padding`` cropped where patches meet (none below 4 patches,
    at most g // 4); one patch per image is returned as it is."""
    n = patches.shape[0] // batch
    if n == 1:
        return patches
    grid, channels = patches.shape[1], patches.shape[-1]
    side = int(n**0.5)
    padding = 0 if n < 4 else min(grid // 4, padding)
    boxes = patches[: side * side * batch].reshape(side, side, batch, grid, grid, channels)
    if padding == 0:
        merged = boxes.transpose(2, 0, 3, 1, 4, 5)  # (B, row, y, column, x, C)
        return merged.reshape(batch, side * grid, side * grid, channels)
    rows = []
    for i in range(side):
        top, bottom = (padding if i > 0 else 0), grid - (padding if i < side - 1 else 0)
        row = []
        for j in range(side):
            left, right = (padding if j > 0 else 0), grid - (padding if j < side - 1 else 0)
            row.append(boxes[i, j, :, top:bottom, left:right])
        rows.append(mx.concatenate(row, axis=2))
    return mx.concatenate(rows, axis=1)


def base_size(height: int, width: int, grid: int) -> tuple[int, int]:
    """The size of the coarsest feature maps: both sides divided by 2**int(log2(width / grid))."""
    scale = 2 ** int(math.log2(width / grid))
    return height // scale, width // scale


class FeatureMaps(nn.Module):
    """Token sequences of ``batch`` images' patches -> one merged NHWC map per image, resized to ``size``
    (bilinear, align_corners=False): the reference's ``reconstruct_feature_maps``."""

    def __init__(self):
        super().__init__()
        self.resize = Resize()

    def __call__(self, tokens: mx.array, batch: int, padding: int, size: tuple[int, int]) -> mx.array:
        merged = merge_patches(token_grid(tokens), batch, padding)
        return self.resize(merged, size, "bilinear", align_corners=False)


class DepthProPatchEncoder(nn.Module):
    """The patch pyramid through one DINOv2: one map per scaled image (coarsest first), then one per
    intermediate hook, all NHWC."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.ratios = list(config.scaled_images_ratios)
        self.overlaps = list(config.scaled_images_overlap_ratios)
        self.hooks = list(config.intermediate_hook_ids)
        self.merge_padding_value = config.merge_padding_value
        image = config.image_model_config
        self.grid = image.image_size // image.patch_size  # the reference takes it from the image encoder
        self.model = Dinov2Backbone(encoder_config(config.patch_model_config))
        self.maps = FeatureMaps()
        self.patches_per_pass = PATCHES_PER_PASS

    def check_size(self, height: int, width: int) -> None:
        if min(self.ratios) * min(height, width) < self.patch_size:
            raise ValueError(
                f"a {height}x{width} image is too small for Depth Pro: scaled by scaled_images_ratios={self.ratios} "
                f"its sides must stay at least patch_size={self.patch_size} pixels"
            )
        bh, bw = base_size(height, width, self.grid)
        if bh < 1:
            raise ValueError(
                f"a {height}x{width} image is too wide for Depth Pro: its height must be at least 1/{width // bw} "
                "of its width"
            )

    def pyramid(self, x: mx.array) -> tuple[mx.array, list[int]]:
        """(B, H, W, C) -> every scale's patches, largest scale first (as the encoder takes them), and the
        number of patches per image of each scale (smallest scale first)."""
        b, h, w, _ = x.shape
        scales = []
        for ratio, overlap in zip(self.ratios, self.overlaps):
            if ratio != 1:  # F.interpolate(scale_factor=ratio): floor(side * ratio) pixels, 1 / ratio apart
                x_scaled = interpolate(x, (math.floor(h * ratio), math.floor(w * ratio)), step=(1 / ratio, 1 / ratio))
            else:
                x_scaled = x
            scales.append(split_to_patches(x_scaled, self.patch_size, overlap))
        return mx.concatenate(scales[::-1]), [len(s) // b for s in scales]

    def _pass(self, patches: mx.array, hooked: int) -> tuple[mx.array, list[mx.array]]:
        """One pass of the encoder: the normed last layer's tokens, and the hooked layers' tokens of the
        first ``hooked`` patches."""
        out = self.model(patches)
        return out.features[0], [out.hidden_states[i + 1][:hooked] for i in self.hooks]

    def encode(self, patches: mx.array, keep: int) -> tuple[mx.array, list[mx.array]]:
        """The encoder over ``patches`` in evaluated passes of ``patches_per_pass``: the normed last layer
        of every patch, and the hooked layers of the first ``keep`` patches (the only ones merged)."""
        step = max(1, int(self.patches_per_pass))
        last, hooks = [], [[] for _ in self.hooks]
        for start in range(0, len(patches), step):
            tokens, hooked = self._pass(patches[start : start + step], max(0, keep - start))
            mx.eval(tokens, hooked)
            last.append(tokens)
            for store, h in zip(hooks, hooked):
                store.append(h)
        return mx.concatenate(last), [mx.concatenate(h) for h in hooks]

    def __call__(self, x: mx.array) -> list[mx.array]:
        """(B, H, W, C) -> the scaled images' maps (B, bh * 2**i, bw * 2**i, C), then the hooks' maps at the
        largest of those sizes."""
        b, h, w, _ = x.shape
        self.check_size(h, w)
        patches, counts = self.pyramid(x)
        total = sum(counts)
        last, hooks = self.encode(patches, int(total**0.5) ** 2 * b)
        splits = list(itertools.accumulate(c * b for c in counts[::-1]))[:-1]
        per_scale = mx.split(last, splits)[::-1] if splits else [last]  # smallest scale first again
        bh, bw = base_size(h, w, self.grid)
        maps = []
        for i, (tokens, ratio) in enumerate(zip(per_scale, self.ratios)):
            padding = int(self.merge_padding_value * (1 / ratio))
            maps.append(self.maps(tokens, b, padding, (bh * 2**i, bw * 2**i)))
        top = len(self.ratios) - 1
        padding = int(self.merge_padding_value * (1 / self.ratios[-1]))
        for tokens in hooks:  # the first s * s patches of all, s = int(sqrt(total)): what the reference merges
            maps.append(self.maps(tokens, b, padding, (bh * 2**top, bw * 2**top)))
        return maps


class DepthProImageEncoder(nn.Module):
    """The whole image, resized to the encoder's square, through one DINOv2: its map at the base size (NHWC),
    and the encoder's hidden states and attentions (what the reference's model returns)."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        image = config.image_model_config
        self.size = image.image_size
        self.grid = image.image_size // image.patch_size
        self.model = Dinov2Backbone(encoder_config(image))
        self.resize = Resize()
        self.maps = FeatureMaps()

    def __call__(self, x: mx.array, output_attentions: bool = False):
        b, h, w, _ = x.shape
        out = self.model(self.resize(x, (self.size, self.size), "bilinear", align_corners=False), output_attentions)
        features = self.maps(out.features[0], b, 0, base_size(h, w, self.grid))
        return features, out.hidden_states, out.attentions


class DepthProEncoder(nn.Module):
    """Both encoders: [image map, scaled images' maps (coarsest first), hooks' maps], NHWC."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        self.patch_encoder = DepthProPatchEncoder(config)
        self.image_encoder = DepthProImageEncoder(config)

    def __call__(self, x: mx.array, output_attentions: bool = False):
        patch_maps = self.patch_encoder(x)
        image_map, hidden_states, attentions = self.image_encoder(x, output_attentions)
        return [image_map, *patch_maps], hidden_states, attentions


class DepthProFeatureUpsampleBlock(nn.Module):
    """[1x1 projection,] then 2x transposed convolutions (kernel = stride = 2): ``layers`` as in the checkpoint."""

    def __init__(
        self, input_dims: int, intermediate_dims: int, output_dims: int, upsamples: int, proj: bool, bias: bool
    ):
        super().__init__()
        self.layers = [nn.Conv2d(input_dims, intermediate_dims, kernel_size=1, bias=bias)] if proj else []
        for i in range(upsamples):
            channels = intermediate_dims if i == 0 else output_dims
            self.layers.append(nn.ConvTranspose2d(channels, output_dims, kernel_size=2, stride=2, bias=bias))

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class DepthProFeatureUpsample(nn.Module):
    """Each encoder map to its width and resolution: the image map and every scaled image's map 2x, the
    i-th hook's map 2**(2 + i) times."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        image, patch = config.image_model_config.hidden_size, config.patch_model_config.hidden_size
        dims = config.scaled_images_feature_dims
        self.image_block = DepthProFeatureUpsampleBlock(image, image, dims[0], 1, proj=False, bias=True)
        self.scaled_images = [DepthProFeatureUpsampleBlock(patch, d, d, 1, True, False) for d in dims]
        self.intermediate = [
            DepthProFeatureUpsampleBlock(patch, config.fusion_hidden_size if i == 0 else d, d, 2 + i, True, False)
            for i, d in enumerate(config.intermediate_feature_dims)
        ]

    def __call__(self, features: list[mx.array]) -> list[mx.array]:
        blocks = [self.image_block, *self.scaled_images, *self.intermediate]
        return [block(x) for block, x in zip(blocks, features)]


class DepthProFeatureProjection(nn.Module):
    """3x3 convolutions (no bias) to ``fusion_hidden_size``; the last map passes as it is when it has that width."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        dims = list(config.scaled_images_feature_dims) + list(config.intermediate_feature_dims)
        fusion = config.fusion_hidden_size
        self.projections = [
            nn.Identity()
            if i == len(dims) - 1 and d == fusion
            else nn.Conv2d(d, fusion, kernel_size=3, padding=1, bias=False)
            for i, d in enumerate(dims)
        ]

    def __call__(self, features: list[mx.array]) -> list[mx.array]:
        return [projection(x) for projection, x in zip(self.projections, features)]


class DepthProNeck(nn.Module):
    """Upsample every map, fuse the image map into the coarsest scaled image's (1x1 convolution over
    [scaled, image] channels), project all to the fusion width: the global map first."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        dims = config.scaled_images_feature_dims[0]
        self.feature_upsample = DepthProFeatureUpsample(config)
        self.fuse_image_with_low_res = nn.Conv2d(2 * dims, dims, kernel_size=1)
        self.feature_projection = DepthProFeatureProjection(config)

    def __call__(self, features: list[mx.array]) -> list[mx.array]:
        features = self.feature_upsample(features)
        merged = self.fuse_image_with_low_res(mx.concatenate([features[1], features[0]], axis=-1))
        return self.feature_projection([merged, *features[2:]])


class DepthProModel(nn.Module):
    """``DepthProModel``: the encoders and the neck. Returns the neck's maps (NHWC, coarsest first), and
    the image encoder's hidden states and attentions."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        self.encoder = DepthProEncoder(config)
        self.neck = DepthProNeck(config)

    def __call__(self, x: mx.array, output_attentions: bool = False):
        features, hidden_states, attentions = self.encoder(x, output_attentions)
        return self.neck(features), hidden_states, attentions


def _residual_layer(config: DepthProConfig) -> PreActResidualLayer:
    bn = bool(config.use_batch_norm_in_fusion_residual)
    bias = config.use_bias_in_fusion_residual
    return PreActResidualLayer(config.fusion_hidden_size, bn, (not bn) if bias is None else bool(bias))


class DepthProFeatureFusionLayer(nn.Module):
    """[x + residual_layer1(skip),] residual_layer2, [2x transposed convolution,] 1x1 projection."""

    def __init__(self, config: DepthProConfig, deconv: bool = True):
        super().__init__()
        channels = config.fusion_hidden_size
        self.residual_layer1 = _residual_layer(config)
        self.residual_layer2 = _residual_layer(config)
        if deconv:
            self.deconv = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2, bias=False)
        self.projection = nn.Conv2d(channels, channels, kernel_size=1)

    def __call__(self, x: mx.array, residual: mx.array | None = None) -> mx.array:
        if residual is not None:
            x = x + self.residual_layer1(residual)
        x = self.residual_layer2(x)
        if "deconv" in self:
            x = self.deconv(x)
        return self.projection(x)


class DepthProFeatureFusionStage(nn.Module):
    """Fuse the neck's maps from the coarsest to the finest; the last layer does not upsample. Returns
    every fused map."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        layers = len(config.intermediate_hook_ids) + len(config.scaled_images_ratios)
        self.intermediate = [DepthProFeatureFusionLayer(config) for _ in range(layers - 1)]
        self.final = DepthProFeatureFusionLayer(config, deconv=False)

    def __call__(self, features: list[mx.array]) -> list[mx.array]:
        if len(features) != len(self.intermediate) + 1:
            raise ValueError(f"the fusion stage expects {len(self.intermediate) + 1} maps, got {len(features)}")
        fused, out = None, []
        for x, layer in zip(features[:-1], self.intermediate):
            fused = layer(x) if fused is None else layer(fused, x)
            out.append(fused)
        out.append(self.final(fused, features[-1]))
        return out


class DepthProDepthEstimationHead(nn.Module):
    """conv3x3 (C -> C/2), 2x transposed convolution, conv3x3 (-> 32), ReLU, conv1x1 (-> 1), ReLU:
    (B, h, w, C) -> (B, 2h, 2w) canonical inverse depth."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        features = config.fusion_hidden_size
        self.conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.deconv = nn.ConvTranspose2d(features // 2, features // 2, kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(features // 2, HEAD_HIDDEN, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(HEAD_HIDDEN, 1, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        x = nn.relu(self.conv2(self.deconv(self.conv1(x))))
        return nn.relu(self.conv3(x))[..., 0]


class DepthProFovEncoder(nn.Module):
    """The image, resized to the encoder's square, through the field-of-view DINOv2, a linear layer to
    half the fusion width, and merged to the base size (NHWC)."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        fov = config.fov_model_config
        self.size = fov.image_size
        image = config.image_model_config
        self.grid = image.image_size // image.patch_size  # the reference takes it from the image encoder
        self.model = Dinov2Backbone(encoder_config(fov))
        self.neck = nn.Linear(fov.hidden_size, config.fusion_hidden_size // 2)
        self.resize = Resize()
        self.maps = FeatureMaps()

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, _ = x.shape
        tokens = self.model(self.resize(x, (self.size, self.size), "bilinear", align_corners=False)).features[0]
        return self.maps(self.neck(tokens), b, 0, base_size(h, w, self.grid))


class DepthProFovHead(nn.Module):
    """Resize to the encoder's grid, ``num_fov_head_layers`` x (conv3x3 stride 2 halving the width, ReLU),
    then one convolution over the whole remaining map: (B, h, w, C/2) -> (B,)."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        image = config.image_model_config
        self.grid = image.image_size // image.patch_size
        layers, width = config.num_fov_head_layers, config.fusion_hidden_size
        self.convs = [
            nn.Conv2d(math.ceil(width / 2 ** (i + 1)), math.ceil(width / 2 ** (i + 2)), 3, stride=2, padding=1)
            for i in range(layers)
        ]
        kernel = int((self.grid - 1) / 2**layers + 1)
        self.convs.append(nn.Conv2d(math.ceil(width / 2 ** (layers + 1)), 1, kernel_size=kernel))
        self.resize = Resize()

    def __call__(self, x: mx.array) -> mx.array:
        x = self.resize(x, (self.grid, self.grid), "bilinear", align_corners=False)
        for conv in self.convs[:-1]:
            x = nn.relu(conv(x))
        return self.convs[-1](x).reshape(-1)


class DepthProFovModel(nn.Module):
    """The field of view in degrees, (B,): the field-of-view encoder's map plus the global map (a 3x3
    stride-2 convolution to half the fusion width, ReLU), through the head."""

    def __init__(self, config: DepthProConfig):
        super().__init__()
        width = config.fusion_hidden_size
        self.fov_encoder = DepthProFovEncoder(config)
        self.conv = nn.Conv2d(width, width // 2, kernel_size=3, stride=2, padding=1)
        self.head = DepthProFovHead(config)

    def __call__(self, x: mx.array, global_features: mx.array) -> mx.array:
        return self.head(self.fov_encoder(x) + nn.relu(self.conv(global_features)))


class DepthProForDepthEstimation(PreTrainedModel):
    """``DepthProForDepthEstimation``: ``model(pixel_values)`` (B, 3, H, W) -> ``predicted_depth`` (B, H', W'),
    canonical inverse depth (the image processor's post-processing turns it into metres), and with the
    field-of-view model ``field_of_view`` (B,), in degrees. H' = 2**(n + k + 1) * (H // 2**e) for n scaled
    images, k hooks and e = int(log2(W / grid)): 1536 for the hub's 1536x1536 input.

    ``use_fov_model`` given here overrides the config's (the model's config then says what it has).
    """

    config_class = DepthProConfig
    head_kind = "depth"

    def __init__(self, config: DepthProConfig, use_fov_model: bool | None = None):
        super().__init__()
        if not isinstance(config, DepthProConfig):
            raise TypeError(f"DepthProForDepthEstimation needs a DepthProConfig, got {type(config).__name__}")
        if use_fov_model is not None and bool(use_fov_model) != config.use_fov_model:
            config = dataclasses.replace(config, use_fov_model=bool(use_fov_model))
        self.config = config
        self.depth_pro = DepthProModel(config)
        self.fusion_stage = DepthProFeatureFusionStage(config)
        self.head = DepthProDepthEstimationHead(config)
        self.fov_model = DepthProFovModel(config) if config.use_fov_model else None

    @property
    def use_fov_model(self) -> bool:
        return self.config.use_fov_model

    def adapt_checkpoint_keys(self, weights: dict) -> dict:
        """Without the field-of-view model, a checkpoint's ``fov_model.*`` tensors are left out, as the
        reference ignores them."""
        if self.fov_model is not None:
            return weights
        return {k: v for k, v in weights.items() if not k.startswith("fov_model.")}

    def __call__(self, pixel_values, labels=None, output_hidden_states: bool = False, output_attentions: bool = False):
        """``labels`` are refused: the reference implements no Depth Pro loss. ``hidden_states`` /
        ``attentions`` are the image encoder's (embeddings and every layer), as the reference returns."""
        if labels is not None:
            raise NotImplementedError("Depth Pro has no training loss (nor in transformers); call it without labels")
        x = self._prepare(pixel_values)
        features, hidden_states, attentions = self.depth_pro(x, output_attentions)
        fused = self.fusion_stage(features)
        depth = self.head(fused[-1])
        fov = self.fov_model(x, mx.stop_gradient(features[0])) if self.fov_model is not None else None
        return DepthProDepthEstimatorOutput(
            predicted_depth=depth,
            field_of_view=fov,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )

"""Fused CPU layers for blocks of the models: where a model chains products and cheap operations
(a transformer block's residual adds and layer scales, an MLP's activation, a convolution's ReLUs
and residual, a head), one CPU layer computes the block through the kernels with those operations
in the products' epilogues. Each has the arrays of the block it stands in for and runs the
block's own code off the CPU and in training mode. :func:`fast_layer` says which CPU layer stands
in for a given module (this module's blocks, or the single layers of :mod:`dpt_mlx.cpu.layers`).
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx
import mlx.nn as nn

from .. import layers
from ..backbones import beit, bit, dinov2, swinv2, transformer, vit
from .layers import SINGLE, SINGLE_LAYERS, PatchConvTranspose2d, _act_name, _moved, conv, kernels, linear, on_cpu
from .layers import Conv2d as _Conv2d
from .memory import before_pass


class BitBottleneckLayer(bit.BitBottleneckLayer):
    """BiT's bottleneck (DPT-Hybrid) with its residual add and final ReLU in the last GroupNorm."""

    def __call__(self, x: mx.array) -> mx.array:
        act = _act_name(self.act)
        norm = self.norm3
        if not on_cpu() or act is None or norm.act is not None or not norm.pytorch_compatible:
            return super().__call__(x)
        shortcut = self.downsample(x) if self.downsample is not None else x
        h = self.norm2(self.conv2(self.norm1(self.conv1(x))))
        return kernels().group_norm(
            self.conv3(h), norm.get("weight"), norm.get("bias"), norm.num_groups, norm.eps, act, shortcut
        )


# ------------------------------------------------------------------------ fused blocks


class Intermediate(transformer.Intermediate):
    """``act(dense(x))`` with the activation in the product's epilogue."""

    def __call__(self, x):
        act = _act_name(self.act)
        return linear(self.dense, x, act) if on_cpu() and act else super().__call__(x)


class Swinv2Intermediate(swinv2.Swinv2Intermediate):
    def __call__(self, x):
        act = _act_name(self.act)
        return linear(self.dense, x, act) if on_cpu() and act else super().__call__(x)


class Dinov2MLP(dinov2.MLP):
    """``fc2(act(fc1(x)))`` with the activation in fc1's epilogue."""

    def __call__(self, x):
        act = _act_name(self.act)
        if not (on_cpu() and act):
            return super().__call__(x)
        return linear(self.fc2, linear(self.fc1, x, act))


class PreActResidualLayer(layers.PreActResidualLayer):
    """``x + conv2(relu(conv1(relu(x))))``: both ReLUs applied while the convolutions gather their
    input and the residual added in the second one's epilogue (without BatchNorm)."""

    def __call__(self, x):
        if not on_cpu() or self.use_batch_norm:
            return super().__call__(x)
        h = conv(self.convolution1, x, pre_relu=True)
        return conv(self.convolution2, h, pre_relu=True, residual=x)


class ViTLayer(vit.ViTLayer):
    """A ViT block with both residual adds in the epilogues of the products before them (and the
    MLP's activation in its first product)."""

    def __call__(self, x, output_attentions=False):
        act = _act_name(self.intermediate.act)
        if not on_cpu() or self.training or act is None:
            return super().__call__(x, output_attentions)
        core, probs = self.attention.attention(self.layernorm_before(x), output_attentions=output_attentions)
        x = linear(self.attention.output.dense, core, residual=x)
        h = linear(self.intermediate.dense, self.layernorm_after(x), act)
        return linear(self.output.dense, h, residual=x), probs


class BeitLayer(beit.BeitLayer):
    """A BEiT block with the layer scales and residual adds in the epilogues of the products."""

    def __call__(self, x, grid, shared_bias=None, output_attentions=False):
        act = _act_name(self.intermediate.act)
        if not on_cpu() or self.training or act is None:
            return super().__call__(x, grid, shared_bias, output_attentions)
        core, probs = self.attention.attention(self.layernorm_before(x), grid, shared_bias, output_attentions)
        scale1 = self["lambda_1"] if self.use_layer_scale else None
        scale2 = self["lambda_2"] if self.use_layer_scale else None
        x = linear(self.attention.output.dense, core, residual=x, scale=scale1)
        h = linear(self.intermediate.dense, self.layernorm_after(x), act)
        return linear(self.output.dense, h, residual=x, scale=scale2), probs


class BeitSelfAttention(beit.BeitSelfAttention):
    """BEiT's attention with its own relative position bias gathered from the (R, heads) table
    inside the kernel, so the (heads, N, N) bias is never built (the shared bias, when a model has
    one, goes the dense way)."""

    def __call__(self, x, grid, shared_bias=None, output_attentions=False):
        rpb = self.relative_position_bias
        if not on_cpu() or self.training or output_attentions or rpb is None or shared_bias is not None:
            return super().__call__(x, grid, shared_bias, output_attentions)
        b, n, _ = x.shape

        def heads(t):
            return t.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        table = rpb.table(grid).astype(q.dtype)  # rounded as the dense bias is
        out = kernels().attention(q, k, v, self.scale, table, beit.relative_position_index_array(grid))
        return out.transpose(0, 2, 1, 3).reshape(b, n, -1), None


class Dinov2Layer(dinov2.Dinov2Layer):
    """A DINOv2 block with the layer scales and residual adds in the epilogues of the products."""

    def __call__(self, x, output_attentions=False):
        act = _act_name(self.mlp.act) if isinstance(self.mlp, dinov2.MLP) else None
        if not on_cpu() or self.training or act is None:
            return super().__call__(x, output_attentions)
        core, probs = self.attention.attention(self.norm1(x), output_attentions=output_attentions)
        x = linear(self.attention.output.dense, core, residual=x, scale=self.layer_scale1.lambda1)
        h = linear(self.mlp.fc1, self.norm2(x), act)
        return linear(self.mlp.fc2, h, residual=x, scale=self.layer_scale2.lambda1), probs


# ------------------------------------------------------------------------ fused model blocks
#
# Mixins for blocks of the models (found by their qualified name, so this module does not import
# the model package, which imports the loader that imports this one): the block's own computation
# with the ReLUs in the convolutions' epilogues, its parent's (the model's) code off the CPU.


def _upsampled(head, hidden_states) -> mx.array:
    """The start DPT's and ZoeDepth's depth heads share: [projection+ReLU], conv1, 2x resize."""
    x = hidden_states[head.head_in_index]
    if head.projection is not None:
        x = conv(head.projection, x, act="relu")
    x = conv(head.conv1, x)
    return head.resample(x, (2 * x.shape[1], 2 * x.shape[2]), "bilinear", align_corners=True)


class _DPTDepthHead:
    """DPT's depth head: projection+ReLU, conv1, 2x resize, conv2+ReLU, conv3+ReLU, fused."""

    def __call__(self, hidden_states):
        if not on_cpu():
            return super().__call__(hidden_states)
        x = _upsampled(self, hidden_states)
        return conv(self.conv3, conv(self.conv2, x, act="relu"), act="relu")[..., 0]


class _DepthAnythingHead:
    """Depth Anything's head: conv1, resize to the patch grid's pixels, conv2+ReLU, conv3 (+ReLU
    for relative depth), fused."""

    def __call__(self, hidden_states, grid):
        if not on_cpu():
            return super().__call__(hidden_states, grid)
        x = conv(self.conv1, hidden_states[self.head_in_index])
        x = self.resample(x, (grid[0] * self.patch_size, grid[1] * self.patch_size), "bilinear", align_corners=True)
        x = conv(self.conv3, conv(self.conv2, x, act="relu"), act="none" if self.metric else "relu")
        x = mx.sigmoid(x) if self.metric else x
        return (x * self.max_depth)[..., 0]


class _ZoeDepthRelativeHead:
    """ZoeDepth's relative head: DPT's, returning conv2's features too."""

    def __call__(self, hidden_states):
        if not on_cpu():
            return super().__call__(hidden_states)
        features = conv(self.conv2, _upsampled(self, hidden_states), act="relu")
        return conv(self.conv3, features, act="relu")[..., 0], features


class _DepthProHead:
    """Depth Pro's head: conv1, 2x transposed convolution, conv2+ReLU, conv3+ReLU, fused (the two ReLUs
    run on the full-resolution maps)."""

    def __call__(self, x):
        if not on_cpu():
            return super().__call__(x)
        x = self.deconv(conv(self.conv1, x))
        return conv(self.conv3, conv(self.conv2, x, act="relu"), act="relu")[..., 0]


class _FeatureFusionLayer:
    """A DPT fusion layer whose 1x1 projection runs before the resize instead of after: both are
    linear and a resize's weights sum to one, so the result is the same (to float32 rounding) at a
    quarter of the projection's cost when the resize doubles the map."""

    def __call__(self, x, residual=None, size=None, prompt_depth=None):
        if not on_cpu():
            return super().__call__(x, residual, size, prompt_depth)
        if residual is not None:
            if residual.shape != x.shape:
                residual = self.resample(residual, x.shape[1:3], "bilinear", align_corners=False)
            x = x + self.residual_layer1(residual)
        x = self.residual_layer2(x)
        if prompt_depth is not None:
            depth = self.resample(prompt_depth, x.shape[1:3], "bilinear", align_corners=False)
            x = x + self.prompt_depth_layer(depth)
        size = (2 * x.shape[1], 2 * x.shape[2]) if size is None else size
        if size[0] * size[1] >= x.shape[1] * x.shape[2]:
            return self.resample(conv(self.projection, x), size, "bilinear", self.align_corners)
        return conv(self.projection, self.resample(x, size, "bilinear", self.align_corners))


_MIXINS = {
    "dpt_mlx.models.heads.DepthEstimationHead": _DPTDepthHead,
    "dpt_mlx.models.depth_anything.DepthAnythingDepthEstimationHead": _DepthAnythingHead,
    "dpt_mlx.models.zoedepth.ZoeDepthRelativeDepthEstimationHead": _ZoeDepthRelativeHead,
    "dpt_mlx.models.neck.FeatureFusionLayer": _FeatureFusionLayer,
    "dpt_mlx.models.depth_pro.DepthProDepthEstimationHead": _DepthProHead,
}


class _CachePolicy:
    """A model's neck that first sizes MLX's CPU buffer cache (:func:`dpt_mlx.cpu.memory.before_pass`)."""

    def __call__(self, *args, **kwargs):
        if on_cpu():
            before_pass()
        return super().__call__(*args, **kwargs)


def with_cache_policy(neck: nn.Module) -> nn.Module:
    """``neck`` (its arrays, already swapped) in a class that applies the cache policy first."""
    if isinstance(neck, _CachePolicy):
        return neck
    return _moved(neck, _with_mixin(type(neck), _CachePolicy))


@cache
def _with_mixin(cls: type, mixin: type) -> type:
    """``cls`` with ``mixin``'s call in front (the CPU layer of a model block)."""
    return type(cls.__name__, (mixin, cls), {"__module__": __name__, "__doc__": mixin.__doc__})


_FUSED = {
    vit.ViTLayer: ViTLayer,
    dinov2.Dinov2Layer: Dinov2Layer,
    beit.BeitLayer: BeitLayer,
    beit.BeitSelfAttention: BeitSelfAttention,
    bit.BitBottleneckLayer: BitBottleneckLayer,
    transformer.Intermediate: Intermediate,
    swinv2.Swinv2Intermediate: Swinv2Intermediate,
    dinov2.MLP: Dinov2MLP,
    layers.PreActResidualLayer: PreActResidualLayer,
}


def fast_layer(layer: nn.Module) -> nn.Module:
    """The CPU layer that stands in for ``layer`` (the same arrays), or ``layer`` itself."""
    kind = type(layer)
    mixin = _MIXINS.get(f"{kind.__module__}.{kind.__qualname__}")
    if mixin is not None:
        return _moved(layer, _with_mixin(kind, mixin))
    if kind in _FUSED:
        return _moved(layer, _FUSED[kind])
    if kind in SINGLE:
        return _moved(layer, SINGLE[kind])
    if kind is nn.Conv2d:
        return _moved(layer, _Conv2d)
    if kind is nn.ConvTranspose2d and PatchConvTranspose2d.applies(layer):
        return _moved(layer, PatchConvTranspose2d)
    return layer


FAST_LAYERS = (
    *SINGLE_LAYERS,
    Intermediate,
    Swinv2Intermediate,
    Dinov2MLP,
    PreActResidualLayer,
    ViTLayer,
    Dinov2Layer,
    BeitLayer,
    BeitSelfAttention,
    BitBottleneckLayer,
    *_MIXINS.values(),
)

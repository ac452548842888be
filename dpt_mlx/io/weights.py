"""The one table that maps transformers checkpoints onto dpt_mlx modules.

Used by ``from_pretrained`` and by the converter alike. A conversion is: drop buffers the
MLX modules do not keep, rename keys where the reference used ``nn.Sequential`` indices,
and move convolution kernels to MLX's channels-last layout. Whether a kernel belongs to a
convolution or a transposed convolution is read from the module it loads into, never guessed
from its shape: DPT's transposed convolutions are square (in == out, kH == kW), so a wrong
permutation would pass every shape check.
"""

from __future__ import annotations

import re

import mlx.core as mx
import mlx.nn as nn

# Keys of buffers that MLX modules do not have.
DROP = (
    re.compile(r"\.num_batches_tracked$"),  # BatchNorm step counter
    re.compile(r"(^|\.)relative_position_index$"),  # BEiT/Swinv2 index tables: recomputed from the config
    re.compile(r"(^|\.)relative_coords_table$"),  # Swinv2 continuous position table: recomputed
    re.compile(
        r"embeddings\.backbone\.bit\.norm\."
    ),  # DPT-Hybrid pre-activation BiT's final norm: feeds no feature map
    re.compile(r"^backbone\.beit\.layernorm\."),  # BEiT final norm (use_mean_pooling=False): feeds no DPT feature
    re.compile(r"(^|\.)rope_embeddings\.inv_freq$"),  # DINOv3 rotary frequencies: recomputed from rope_theta
    re.compile(
        r"\.log_binomial_transform\.(k_idx|k_minus_1|K_minus_1)$"
    ),  # ZoeDepth bin indices: constants, recomputed
)

# (pattern, replacement) renames, applied in order to every key (a replacement may be a function of the match).
RENAMES = [
    # DPT readout projection: Sequential(Linear, GELU) -> ReadoutProject.dense
    (re.compile(r"readout_projects\.(\d+)\.0\."), r"readout_projects.\1.dense."),
    # DINOv3 ViT layers as transformers 5 holds them in memory (model.layer.N) -> layer.N, as its save and the hub write
    (re.compile(r"^(backbone\.)?model\.layer\.(\d+)\."), r"\1layer.\2."),
    # BEiT shared relative position bias as transformers 5 saves it -> the 4.x / hub layout we follow
    (re.compile(r"^backbone\.beit\.encoder\.relative_position_bias\."), "backbone.encoder.relative_position_bias."),
    # Swinv2 continuous position bias: Sequential(Linear, ReLU, Linear) -> ContinuousPositionBiasMLP.fc1/fc2
    (re.compile(r"\.continuous_position_bias_mlp\.0\."), ".continuous_position_bias_mlp.fc1."),
    (re.compile(r"\.continuous_position_bias_mlp\.2\."), ".continuous_position_bias_mlp.fc2."),
    # ZoeDepth conditional log-binomial (one, or one per domain): Sequential(conv, GELU, conv, Softplus) -> conv1/conv2
    (re.compile(r"(\.conditional_log_binomial\.(?:[^.]+\.)?mlp)\.0\."), r"\1.conv1."),
    (re.compile(r"(\.conditional_log_binomial\.(?:[^.]+\.)?mlp)\.2\."), r"\1.conv2."),
    # CHMv2 keeps DPT's neck inside its head: head.{reassemble_stage, convs, fusion_layers} -> the shared neck's names
    (re.compile(r"^head\.reassemble_stage\."), "neck.reassemble_stage."),
    (re.compile(r"^head\.convs\."), "neck.convs."),
    (re.compile(r"^head\.fusion_layers\."), "neck.fusion_stage.layers."),
    # Depth Pro field-of-view head: ModuleList(conv, ReLU, ..., conv, ReLU, conv) -> convs (the even indices)
    (re.compile(r"^fov_model\.head\.layers\.(\d+)\."), lambda m: f"fov_model.head.convs.{int(m.group(1)) // 2}."),
]

# Renames of the head Sequentials, which differ between the depth and segmentation models.
HEAD_RENAMES = {
    "depth": [
        # Sequential(conv, upsample, conv, relu, conv, relu)
        (re.compile(r"^head\.head\.0\."), "head.conv1."),
        (re.compile(r"^head\.head\.2\."), "head.conv2."),
        (re.compile(r"^head\.head\.4\."), "head.conv3."),
        # Depth Pro: ModuleList(conv, conv-transpose, conv, relu, conv, relu)
        (re.compile(r"^head\.layers\.0\."), "head.conv1."),
        (re.compile(r"^head\.layers\.1\."), "head.deconv."),
        (re.compile(r"^head\.layers\.2\."), "head.conv2."),
        (re.compile(r"^head\.layers\.4\."), "head.conv3."),
        # CHMv2: conv_depth.head = ModuleList(conv, upsample, conv, relu, conv)
        (re.compile(r"^head\.conv_depth\.head\.0\."), "head.conv1."),
        (re.compile(r"^head\.conv_depth\.head\.2\."), "head.conv2."),
        (re.compile(r"^head\.conv_depth\.head\.4\."), "head.conv3."),
    ],
    "segmentation": [
        # Sequential(conv, batchnorm, relu, dropout, conv[, upsample]) for head and auxiliary_head
        (re.compile(r"^(head|auxiliary_head)\.head\.0\."), r"\1.conv."),
        (re.compile(r"^(head|auxiliary_head)\.head\.1\."), r"\1.batch_norm."),
        (re.compile(r"^(head|auxiliary_head)\.head\.4\."), r"\1.classifier."),
    ],
}


def rename_key(key: str, head: str | None = None) -> str:
    for pattern, repl in RENAMES + HEAD_RENAMES.get(head, []):
        key = pattern.sub(repl, key)
    return key


def is_dropped(key: str) -> bool:
    return any(p.search(key) for p in DROP)


def conv_layout(module: nn.Module) -> str | None:
    """'conv' or 'conv_transpose' for the modules whose kernels change layout, else None."""
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "conv_transpose"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    return None


def to_mlx_kernel(w: mx.array, layout: str) -> mx.array:
    """PyTorch kernel -> MLX kernel.

    conv:           (O, I, kH, kW) -> (O, kH, kW, I)
    conv_transpose: (I, O, kH, kW) -> (O, kH, kW, I)

    A row-contiguous copy, not a transposed view: the layers' products then see the same memory
    layout as after a save and reload, so a converted checkpoint computes bit for bit as the model
    it was converted from (BLAS may round a product differently when an operand is a view).
    """
    if layout == "conv":
        return mx.contiguous(mx.moveaxis(w, 1, -1))
    return mx.contiguous(w.transpose(1, *range(2, w.ndim), 0))


def sanitize(model: nn.Module, weights: dict[str, mx.array], head: str | None = None) -> dict[str, mx.array]:
    """Transformers state dict -> dpt_mlx parameters for ``model`` (no strictness check here)."""
    modules = dict(model.named_modules())
    out = {}
    for key, value in weights.items():
        if is_dropped(key):
            continue
        key = rename_key(key, head)
        owner, _, name = key.rpartition(".")
        layout = conv_layout(modules.get(owner)) if name == "weight" else None
        if layout is not None and value.ndim >= 3:
            value = to_mlx_kernel(value, layout)
        out[key] = value
    return out

"""TIPSv2-DPT (google/tipsv2-{b,l,so400m,g}14-dpt): one TIPSv2 encoder, three DPT decoders.

``Tipsv2DptForDepthEstimation`` (metric depth: ``num_depth_bins`` logits, ReLU'd, shifted by
``min_depth``, normalised and summed over linear bin centres), ``Tipsv2DptForNormalEstimation``
(unnormalised (B, 3, H, W) normals), ``Tipsv2DptForSemanticSegmentation`` ((B, num_labels, H, W)
logits) and ``Tipsv2DptForDensePrediction`` (all three on one encoder pass), as transformers has them.

Each decoder is DPT's neck (dpt_mlx/models/neck.py) with TIPSv2's settings (readout "project" with
gelu_pytorch_tanh on CLS + patch tokens, the registers skipped by the backbone; bias-free residual
convolutions; the first fusion layer without ``residual_layer1``), then a 3x3 projection, an
activation (ReLU for depth), and a per-pixel Linear. The outputs are at the fused resolution, 8x
the patch grid for the hub's reassemble factors (4, 2, 1, 0.5) and an even grid (H' = 8 * (H // 14);
an odd grid rounds up at the strided stage). Everything runs channels-last inside; the public call
takes (B, 3, H, W) pixels and returns the reference's layouts.

Checkpoints: the hub and transformers' ``save_pretrained`` write the original layout
(``vision_encoder.blocks.N.attn.qkv``, ``depth_head.reassemble.out_projections.N`` ...), which
:func:`convert_original_keys` maps onto these modules (splitting the fused qkv and SwiGLU ``w12``);
transformers' in-memory names (what ``state_dict()`` holds) load as they are. A task model reads
its own decoder from a checkpoint with all three and leaves the others out, as the reference does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..backbones.tipsv2 import Tipsv2VisionBackbone
from ..configs.tipsv2_dpt import Tipsv2DptConfig
from ..layers import activation
from ..ops import to_nchw
from ..outputs import DepthEstimatorOutput, ModelOutput, SemanticSegmenterOutput
from .base import PreTrainedModel
from .losses import semantic_segmentation_loss
from .neck import DPTNeck

TASKS = ("depth", "normals", "segmentation")

# The original layout's encoder names (after "vision_encoder." -> "backbone.") -> transformers' / ours.
_ENCODER_RENAMES = [
    (re.compile(r"^backbone\.patch_embed\.proj\."), "backbone.embeddings.patch_embeddings.projection."),
    (re.compile(r"^backbone\.(cls_token|mask_token|register_tokens)$"), r"backbone.embeddings.\1"),
    (re.compile(r"^backbone\.pos_embed$"), "backbone.embeddings.position_embeddings"),
    (re.compile(r"^backbone\.norm\."), "backbone.layernorm."),
    (re.compile(r"^backbone\.blocks\.(\d+)\."), r"backbone.encoder.layer.\1."),
    (re.compile(r"\.attn\.proj\."), ".attention.o_proj."),
    (re.compile(r"\.ls([12])\.gamma$"), r".layer_scale\1.lambda1"),
    (re.compile(r"\.mlp\.c_fc\."), ".mlp.fc1."),
    (re.compile(r"\.mlp\.c_proj\."), ".mlp.fc2."),
    (re.compile(r"\.mlp\.w3\."), ".mlp.down_proj."),
]
# Fused tensors of the original layout, split along the output axis: (pattern, the names of the parts).
_SPLITS = [
    (re.compile(r"\.attn\.qkv\.(weight|bias)$"), (".attention.q_proj.", ".attention.k_proj.", ".attention.v_proj.")),
    (re.compile(r"\.mlp\.w12\.(weight|bias)$"), (".mlp.gate_proj.", ".mlp.up_proj.")),
]
# A decoder's original names (after "<task>_head.") -> the neck's and decoder's; {neck} / {dec} are filled per model.
_DECODER_RENAMES = [
    (re.compile(r"^reassemble\.readout_projects\.(\d+)\."), r"{neck}.reassemble_stage.readout_projects.\1.dense."),
    (re.compile(r"^reassemble\.out_projections\.(\d+)\."), r"{neck}.reassemble_stage.layers.\1.projection."),
    (re.compile(r"^reassemble\.resize_layers\.(\d+)\."), r"{neck}.reassemble_stage.layers.\1.resize."),
    (re.compile(r"^fusion_blocks\.(\d+)\.out_conv\."), r"{neck}.fusion_stage.layers.\1.projection."),
    (re.compile(r"^fusion_blocks\.(\d+)\.main_unit\."), r"{neck}.fusion_stage.layers.\1.residual_layer2."),
    (re.compile(r"^fusion_blocks\.(\d+)\.residual_unit\."), r"{neck}.fusion_stage.layers.\1.residual_layer1."),
    (re.compile(r"^convs\."), r"{neck}.convs."),
    (re.compile(r"^project\."), r"{dec}.project."),
]
_RESIDUAL_CONV = re.compile(r"(residual_layer[12])\.conv([12])\.")  # main_unit.conv1 -> residual_layer2.convolution1
# transformers' in-memory readout: ModuleList(Linear, activation) -> ReadoutProject.dense
_READOUT_LAYERS = re.compile(r"\.readout_projects\.(\d+)\.layers\.0\.")


def _convert_encoder_key(key: str, value) -> dict:
    for pattern, repl in _ENCODER_RENAMES:
        key = pattern.sub(repl, key)
    for pattern, parts in _SPLITS:
        match = pattern.search(key)
        if match:
            stem, kind = key[: match.start()], match.group(1)
            chunks = mx.split(value if isinstance(value, mx.array) else mx.array(value), len(parts), axis=0)
            return {f"{stem}{part}{kind}": chunk for part, chunk in zip(parts, chunks)}
    return {key: value}


def convert_original_keys(weights: dict, names: dict[str, tuple[str, str]]) -> dict:
    """The original (hub / ``save_pretrained``) layout -> this package's module names.

    ``names`` maps each task this model has to its (neck, decoder) module names; the decoders of
    other tasks are left out. Keys already in transformers' in-memory layout pass through (their
    readout ``layers.0`` renamed). Idempotent: converted keys match no pattern.
    """
    out = {}
    for key, value in weights.items():
        key = _READOUT_LAYERS.sub(r".readout_projects.\1.dense.", key)
        if key.startswith("vision_encoder."):
            out.update(_convert_encoder_key("backbone." + key[len("vision_encoder.") :], value))
            continue
        task = next((t for t in TASKS if key.startswith(f"{t}_head.")), None)
        if task is None:
            out[key] = value
            continue
        if task not in names:
            continue  # another task's decoder: ignored, as the reference ignores it
        neck, dec = names[task]
        rest = key[len(task) + len("_head.") :]
        if rest.startswith(f"{task}_head."):  # the per-pixel Linear: depth_head.depth_head.weight
            out[f"{dec}.head.{rest[len(task) + len('_head.') :]}"] = value
            continue
        for pattern, repl in _DECODER_RENAMES:
            rest = pattern.sub(repl.replace("{neck}", neck).replace("{dec}", dec), rest)
        out[_RESIDUAL_CONV.sub(r"\1.convolution\2.", rest)] = value
    return out


@dataclass
class Tipsv2DptNormalEstimatorOutput(ModelOutput):
    """``normals`` (B, 3, H, W): unnormalised; the processor's post-processing L2-normalises them."""

    loss: mx.array | None = None
    normals: mx.array | None = None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None


@dataclass
class Tipsv2DptDensePredictorOutput(ModelOutput):
    """Depth (B, H, W) metres, normals (B, 3, H, W) unnormalised, segmentation logits (B, num_labels, H, W)."""

    predicted_depth: mx.array | None = None
    normals: mx.array | None = None
    segmentation_logits: mx.array | None = None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None


class Tipsv2DptNeck(DPTNeck):
    """DPT's neck with TIPSv2's settings (from the config's properties), and no ``residual_layer1`` in the
    first fusion layer: the reference builds none there (it gets no skip map)."""

    def __init__(self, config: Tipsv2DptConfig, hidden_size: int):
        super().__init__(config, hidden_size)
        del self.fusion_stage.layers[0].residual_layer1


class Tipsv2DptDecoder(nn.Module):
    """conv3x3 (biased), activation (or none), per-pixel Linear: (B, h, w, C) -> (B, h, w, out_channels)."""

    def __init__(self, config: Tipsv2DptConfig, out_channels: int, act: str | None = None):
        super().__init__()
        features = config.fusion_hidden_size
        self.project = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.activation = activation(act) if act is not None else nn.Identity()
        self.head = nn.Linear(features, out_channels)

    def __call__(self, x: mx.array) -> mx.array:
        return self.head(self.activation(self.project(x)))


class Tipsv2DptFeaturesToDepth(nn.Module):
    """Bin logits (B, H, W, n) -> depth (B, H, W): ``w = relu(x) + min_depth``, normalised over the bins,
    times the ``linspace(min_depth, max_depth, n)`` centres, summed (in float32)."""

    def __init__(self, config: Tipsv2DptConfig):
        super().__init__()
        self.min_depth = float(config.min_depth)
        centres = np.linspace(config.min_depth, config.max_depth, config.num_depth_bins, dtype=np.float32)
        self._bins = mx.array(centres)

    def __call__(self, x: mx.array) -> mx.array:
        weights = nn.relu(x.astype(mx.float32)) + self.min_depth
        weights = weights / weights.sum(axis=-1, keepdims=True)
        return weights @ self._bins  # (B, H, W, n) @ (n,)


class Tipsv2DptPreTrainedModel(PreTrainedModel):
    """The encoder and the checkpoint layouts every TIPSv2-DPT model shares."""

    config_class = Tipsv2DptConfig
    # task -> (neck, decoder) module names of this class
    decoder_names: dict[str, tuple[str, str]] = {}

    def __init__(self, config: Tipsv2DptConfig):
        super().__init__()
        if not isinstance(config, Tipsv2DptConfig):
            raise TypeError(f"{type(self).__name__} needs a Tipsv2DptConfig, got {type(config).__name__}")
        self.config = config
        self.backbone = Tipsv2VisionBackbone(config.vision_config())

    def adapt_checkpoint_keys(self, weights: dict) -> dict:
        """The original layout (hub, transformers' ``save_pretrained``) -> these modules; see
        :func:`convert_original_keys`."""
        return convert_original_keys(weights, self.decoder_names)

    def _decoder(self, task: str) -> Tipsv2DptDecoder:
        config = self.config
        if task == "depth":
            return Tipsv2DptDecoder(config, config.num_depth_bins, config.depth_decoder_activation)
        return Tipsv2DptDecoder(config, 3 if task == "normals" else config.num_labels)

    def _features(self, pixel_values, output_attentions: bool):
        return self.backbone(self._prepare(pixel_values), output_attentions=output_attentions)

    @staticmethod
    def _extras(feats, output_hidden_states: bool, output_attentions: bool) -> dict:
        return {
            "hidden_states": tuple(feats.hidden_states) if output_hidden_states else None,
            "attentions": tuple(feats.attentions) if output_attentions else None,
        }


class Tipsv2DptForDepthEstimation(Tipsv2DptPreTrainedModel):
    """``model(pixel_values)`` (B, 3, H, W) -> ``predicted_depth`` (B, H', W') in metres."""

    head_kind = "depth"
    decoder_names = {"depth": ("neck", "decoder")}

    def __init__(self, config: Tipsv2DptConfig):
        super().__init__(config)
        self.neck = Tipsv2DptNeck(config, self.backbone.hidden_size)
        self.decoder = self._decoder("depth")
        self.bin_regressor = Tipsv2DptFeaturesToDepth(config)

    def __call__(self, pixel_values, labels=None, output_hidden_states: bool = False, output_attentions: bool = False):
        """``labels`` are refused: the reference implements no loss ("Training is not yet supported")."""
        if labels is not None:
            raise NotImplementedError("TIPSv2-DPT depth has no training loss (nor in transformers)")
        feats = self._features(pixel_values, output_attentions)
        fused = self.neck(feats.features, feats.grid)
        depth = self.bin_regressor(self.decoder(fused[-1]))
        return DepthEstimatorOutput(
            predicted_depth=depth, **self._extras(feats, output_hidden_states, output_attentions)
        )


class Tipsv2DptForNormalEstimation(Tipsv2DptPreTrainedModel):
    """``model(pixel_values)`` (B, 3, H, W) -> ``normals`` (B, 3, H', W'), unnormalised."""

    head_kind = "normals"
    decoder_names = {"normals": ("neck", "decoder")}

    def __init__(self, config: Tipsv2DptConfig):
        super().__init__(config)
        self.neck = Tipsv2DptNeck(config, self.backbone.hidden_size)
        self.decoder = self._decoder("normals")

    def __call__(self, pixel_values, labels=None, output_hidden_states: bool = False, output_attentions: bool = False):
        """``labels`` are refused: the reference implements no loss ("Training is not yet supported")."""
        if labels is not None:
            raise NotImplementedError("TIPSv2-DPT normals have no training loss (nor in transformers)")
        feats = self._features(pixel_values, output_attentions)
        normals = to_nchw(self.decoder(self.neck(feats.features, feats.grid)[-1]))
        return Tipsv2DptNormalEstimatorOutput(
            normals=normals, **self._extras(feats, output_hidden_states, output_attentions)
        )


class Tipsv2DptForSemanticSegmentation(Tipsv2DptPreTrainedModel):
    """``model(pixel_values)`` (B, 3, H, W) -> ``logits`` (B, num_labels, H', W')."""

    head_kind = "segmentation"
    decoder_names = {"segmentation": ("neck", "decoder")}

    def __init__(self, config: Tipsv2DptConfig):
        super().__init__(config)
        self.neck = Tipsv2DptNeck(config, self.backbone.hidden_size)
        self.decoder = self._decoder("segmentation")

    def __call__(self, pixel_values, labels=None, output_hidden_states: bool = False, output_attentions: bool = False):
        """``labels`` (B, H, W) class ids give the reference's loss: the logits upsampled to the labels'
        size (bilinear, align_corners=False), cross-entropy over pixels not ``semantic_loss_ignore_index``."""
        feats = self._features(pixel_values, output_attentions)
        logits = to_nchw(self.decoder(self.neck(feats.features, feats.grid)[-1]))
        loss = None
        if labels is not None:
            loss = semantic_segmentation_loss(logits, labels, None, self.config.semantic_loss_ignore_index)
        return SemanticSegmenterOutput(
            loss=loss, logits=logits, **self._extras(feats, output_hidden_states, output_attentions)
        )


class Tipsv2DptForDensePrediction(Tipsv2DptPreTrainedModel):
    """All three decoders on one encoder pass: depth (B, H', W'), normals (B, 3, H', W'), logits (B, L, H', W')."""

    head_kind = "dense"
    decoder_names = {task: (f"{task}_neck", f"{task}_decoder") for task in TASKS}

    def __init__(self, config: Tipsv2DptConfig):
        super().__init__(config)
        hidden = self.backbone.hidden_size
        self.depth_neck = Tipsv2DptNeck(config, hidden)
        self.depth_decoder = self._decoder("depth")
        self.depth_bin_regressor = Tipsv2DptFeaturesToDepth(config)
        self.normals_neck = Tipsv2DptNeck(config, hidden)
        self.normals_decoder = self._decoder("normals")
        self.segmentation_neck = Tipsv2DptNeck(config, hidden)
        self.segmentation_decoder = self._decoder("segmentation")

    def __call__(self, pixel_values, output_hidden_states: bool = False, output_attentions: bool = False):
        feats = self._features(pixel_values, output_attentions)
        depth = self.depth_bin_regressor(self.depth_decoder(self.depth_neck(feats.features, feats.grid)[-1]))
        normals = self.normals_decoder(self.normals_neck(feats.features, feats.grid)[-1])
        logits = self.segmentation_decoder(self.segmentation_neck(feats.features, feats.grid)[-1])
        return Tipsv2DptDensePredictorOutput(
            predicted_depth=depth,
            normals=to_nchw(normals),
            segmentation_logits=to_nchw(logits),
            **self._extras(feats, output_hidden_states, output_attentions),
        )


__all__ = [
    "Tipsv2DptDecoder",
    "Tipsv2DptDensePredictorOutput",
    "Tipsv2DptFeaturesToDepth",
    "Tipsv2DptForDensePrediction",
    "Tipsv2DptForDepthEstimation",
    "Tipsv2DptForNormalEstimation",
    "Tipsv2DptForSemanticSegmentation",
    "Tipsv2DptNeck",
    "Tipsv2DptNormalEstimatorOutput",
    "Tipsv2DptPreTrainedModel",
    "convert_original_keys",
]

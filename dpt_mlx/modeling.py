"""DPTModel, DPTForDepthEstimation and DPTForSemanticSegmentation.

The public call mirrors transformers: ``model(pixel_values)`` takes (B, 3, H, W) channels-first
pixels (``mx.array`` or NumPy, as the image processor returns them) and returns outputs in the
reference's layouts. Inside, everything runs channels-last.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from .config import DPTConfig
from .heads import DepthEstimationHead, SemanticSegmentationHead
from .losses import check_segmentation_labels, model_depth_loss, semantic_segmentation_loss
from .neck import DPTNeck
from .ops import to_nchw
from .vit import Pooler, ViTEmbeddings, ViTEncoder


@dataclass
class ModelOutput:
    """Attribute and key access (``out.logits`` or ``out["logits"]``), like transformers' ModelOutput."""

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str) or key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    last_hidden_state: mx.array | None = None
    pooler_output: mx.array | None = None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None


@dataclass
class DepthEstimatorOutput(ModelOutput):
    loss: mx.array | None = None
    predicted_depth: mx.array | None = None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None


@dataclass
class SemanticSegmenterOutput(ModelOutput):
    loss: mx.array | None = None
    logits: mx.array | None = None
    auxiliary_logits: mx.array | None = None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None


@dataclass
class BackboneFeatures:
    """What a backbone hands the neck: NHWC maps or token sequences, and the patch grid."""

    features: list[mx.array]
    grid: tuple[int, int] | None
    hidden_states: tuple[mx.array, ...] | None = None
    attentions: tuple[mx.array, ...] | None = None


class PreTrainedModel(nn.Module):
    """``from_pretrained``, ``dtype`` and input preparation shared by the model classes."""

    config_class = DPTConfig

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, dtype: str | mx.Dtype | None = None, **kwargs):
        """Load a transformers or dpt_mlx checkpoint: a local directory or a Hugging Face Hub repo id."""
        from .loading import load_pretrained

        return load_pretrained(path_or_repo_id, model_class=cls, dtype=dtype, **kwargs)

    def save_pretrained(self, path: str) -> None:
        """Write config.json and model.safetensors (MLX layout) into ``path``."""
        from .loading import save_pretrained

        save_pretrained(self, path)

    def train(self, mode: bool = True, freeze_batch_norm: bool = False):
        """Training mode: dropout as configured, BatchNorm on batch statistics with running-stat updates.

        mlx's BatchNorm updates like PyTorch's: ``running = 0.9 * running + 0.1 * batch`` (momentum
        0.1), the running variance from the unbiased (n - 1) batch variance, the normalisation with
        the biased one. ``freeze_batch_norm=True`` keeps every BatchNorm in eval mode (running
        statistics, no updates; its affine weights still train) while the rest trains.
        """
        super().train(mode)
        if mode and freeze_batch_norm:
            for _, module in self.named_modules():
                if isinstance(module, nn.BatchNorm):
                    module.train(False)
        return self

    @property
    def dtype(self) -> mx.Dtype:
        for _, value in tree_flatten(self.parameters()):
            if mx.issubdtype(value.dtype, mx.floating):
                return value.dtype
        return mx.float32

    def _prepare(self, pixel_values) -> mx.array:
        """(B, C, H, W) NumPy/MLX -> (B, H, W, C) mx.array in the model's dtype."""
        if not isinstance(pixel_values, mx.array):
            pixel_values = mx.array(np.asarray(pixel_values, dtype=np.float32))
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        return pixel_values.astype(self.dtype).transpose(0, 2, 3, 1)


class DPTModel(PreTrainedModel):
    """The ViT (or ViT-Hybrid) encoder of DPT with its final LayerNorm and optional pooler."""

    def __init__(self, config: DPTConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        if config.is_hybrid:
            from .bit import HybridEmbeddings

            self.embeddings = HybridEmbeddings(config)
        else:
            self.embeddings = ViTEmbeddings(config)
        self.encoder = ViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = Pooler(config) if add_pooling_layer else None

    def encode(self, x: mx.array, output_attentions: bool = False):
        """NHWC pixels -> (normed last tokens, all hidden states, attentions, hybrid CNN maps)."""
        intermediate = None
        if self.config.is_hybrid:
            emb, intermediate = self.embeddings(x)
        else:
            emb = self.embeddings(x)
        last, hidden_states, attentions = self.encoder(emb, output_attentions)
        return self.layernorm(last), hidden_states, attentions, intermediate

    def __call__(self, pixel_values, output_hidden_states: bool = False, output_attentions: bool = False):
        last, hidden_states, attentions, _ = self.encode(self._prepare(pixel_values), output_attentions)
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=self.pooler(last) if self.pooler is not None else None,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class DPTDensePredictor(PreTrainedModel):
    """Backbone + neck, shared by the depth and segmentation models."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.config = config
        kind = config.backbone_type
        if kind in ("vit", "hybrid"):
            self.dpt = DPTModel(config, add_pooling_layer=False)
            hidden_size = config.hidden_size
        else:
            from .backbones import build_backbone

            self.backbone = build_backbone(config)
            hidden_size = self.backbone.hidden_size
        self.neck = DPTNeck(config, hidden_size, reassemble=kind != "swinv2")

    def backbone_features(self, x: mx.array, output_attentions: bool = False) -> BackboneFeatures:
        if "backbone" in self:
            return self.backbone(x, output_attentions=output_attentions)
        _, hidden_states, attentions, intermediate = self.dpt.encode(x, output_attentions)
        patch = self.dpt.embeddings.patch_size
        grid = (x.shape[1] // patch, x.shape[2] // patch)
        if self.config.is_hybrid:  # the BiT grid is SAME-padded: ceil(H / 16), which // misses off multiples of 16
            grid = self.dpt.embeddings.token_grid(x.shape[1], x.shape[2])
        layers = hidden_states[1:]
        if self.config.is_hybrid:
            features = list(intermediate) + [layers[i] for i in self.config.backbone_out_indices[2:]]
        else:
            features = [layers[i] for i in self.config.backbone_out_indices]
        return BackboneFeatures(features, grid, tuple(hidden_states), tuple(attentions))

    def fused_features(self, pixel_values, output_attentions: bool = False):
        feats = self.backbone_features(self._prepare(pixel_values), output_attentions)
        return self.neck(feats.features, feats.grid), feats


class DPTForDepthEstimation(DPTDensePredictor):
    """DPT with the depth head: ``predicted_depth`` is (B, H, W)."""

    def __init__(self, config: DPTConfig):
        super().__init__(config)
        self.head = DepthEstimationHead(config)

    def __call__(self, pixel_values, labels=None, output_hidden_states: bool = False,
                 output_attentions: bool = False, loss_type: str | None = None):
        """``labels`` (B, H, W), in the prediction's space (disparity for relative depth), give ``loss``:
        ``loss_type`` "ssi" (default; MiDaS scale-and-shift-invariant) or "silog" (default when
        ``config.depth_estimation_type == "metric"``); see dpt_mlx.losses. The reference raises
        NotImplementedError for labels."""
        fused, feats = self.fused_features(pixel_values, output_attentions)
        depth = self.head(fused)
        return DepthEstimatorOutput(
            loss=model_depth_loss(self.config, depth, labels, loss_type),
            predicted_depth=depth,
            hidden_states=feats.hidden_states if output_hidden_states else None,
            attentions=feats.attentions if output_attentions else None,
        )


class DPTForSemanticSegmentation(DPTDensePredictor):
    """DPT with the segmentation head: ``logits`` (B, num_labels, h, w) and ``auxiliary_logits``."""

    def __init__(self, config: DPTConfig):
        if config.backbone_config is not None and not config.is_hybrid:
            # transformers' DPTForSemanticSegmentation ignores backbone_config (it always builds the ViT).
            from .errors import UnsupportedModelError

            raise UnsupportedModelError(
                f"DPTForSemanticSegmentation with a {config.backbone_type} backbone_config is not supported "
                "(transformers builds a plain ViT for it); use DPTForDepthEstimation"
            )
        super().__init__(config)
        self.head = SemanticSegmentationHead(config, config.semantic_classifier_dropout, upsample=True)
        self.auxiliary_head = SemanticSegmentationHead(config, 0.1, upsample=False) if config.use_auxiliary_head else None

    def __call__(self, pixel_values, labels=None, output_hidden_states: bool = False,
                 output_attentions: bool = False):
        """``labels`` (B, H, W) class ids give transformers' ``loss``: logits and auxiliary logits
        upsampled to the labels' size (bilinear, align_corners=False), cross-entropy over pixels
        not equal to ``semantic_loss_ignore_index``, plus ``auxiliary_loss_weight`` times the
        auxiliary term. With ``use_auxiliary_head=False`` the loss is the main term alone (the
        reference fails there on an undefined variable); if every pixel is ignored it is 0 (the
        reference gives NaN)."""
        if labels is not None and self.config.num_labels == 1:
            raise ValueError("The number of labels should be greater than one")
        fused, feats = self.fused_features(pixel_values, output_attentions)
        logits = self.head(fused[self.config.head_in_index])
        aux = self.auxiliary_head(fused[-1]) if self.auxiliary_head is not None else None
        loss = None
        if labels is not None:
            labels = check_segmentation_labels(labels, self.config.num_labels, self.config.semantic_loss_ignore_index)
            loss = semantic_segmentation_loss(
                logits, labels, aux, self.config.semantic_loss_ignore_index, self.config.auxiliary_loss_weight
            )
        return SemanticSegmenterOutput(
            loss=loss,
            logits=to_nchw(logits),
            auxiliary_logits=to_nchw(aux) if aux is not None else None,
            hidden_states=feats.hidden_states if output_hidden_states else None,
            attentions=feats.attentions if output_attentions else None,
        )


MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "DPTModel": DPTModel,
    "DPTForDepthEstimation": DPTForDepthEstimation,
    "DPTForSemanticSegmentation": DPTForSemanticSegmentation,
}

# Depth Anything builds on the classes above, so it is imported (and registered) last.
from .depth_anything import DepthAnythingForDepthEstimation  # noqa: E402

MODEL_CLASSES["DepthAnythingForDepthEstimation"] = DepthAnythingForDepthEstimation

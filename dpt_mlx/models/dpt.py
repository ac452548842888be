"""DPTModel, DPTForDepthEstimation and DPTForSemanticSegmentation.

The public call mirrors transformers: ``model(pixel_values)`` takes (B, 3, H, W) channels-first
pixels (``mx.array`` or NumPy, as the image processor returns them) and returns outputs in the
reference's layouts. Inside, everything runs channels-last.
"""

from __future__ import annotations

from ..backbones import backbone_spec, build_backbone
from ..backbones.vit import Pooler, ViTBackbone, ViTConfig
from ..configs.dpt import DPTConfig
from ..errors import UnsupportedModelError
from ..ops import to_nchw
from ..outputs import BaseModelOutputWithPooling, DepthEstimatorOutput, SemanticSegmenterOutput
from .base import PreTrainedModel
from .heads import DepthEstimationHead, SemanticSegmentationHead
from .losses import check_segmentation_labels, model_depth_loss, semantic_segmentation_loss
from .neck import DPTNeck

# The checkpoints keep the ViT / hybrid encoder under "dpt." and every other backbone under "backbone.".
_DPT_PREFIX_BACKBONES = ("vit", "hybrid")
_BASE_KEYS = ("embeddings.", "encoder.", "layernorm.")


class DPTModel(PreTrainedModel, ViTBackbone):
    """The ViT (or ViT-Hybrid) encoder of DPT with its final LayerNorm and optional pooler."""

    config_class = DPTConfig

    def __init__(self, config: DPTConfig, add_pooling_layer: bool = True):
        ViTBackbone.__init__(self, ViTConfig.from_dpt(config))
        self.config = config
        self.pooler = (
            Pooler(config.hidden_size, config.pooler_output_size, config.pooler_act) if add_pooling_layer else None
        )

    @classmethod
    def build(cls, config, weights: dict) -> DPTModel:
        return cls(config, add_pooling_layer=any(k.startswith(("pooler.", "dpt.pooler.")) for k in weights))

    def adapt_checkpoint_keys(self, weights: dict) -> dict:
        """A task checkpoint's encoder (``dpt.*``) loads into DPTModel."""
        if any(k.startswith("dpt.") for k in weights):
            return {k[4:]: v for k, v in weights.items() if k.startswith("dpt.")}
        return weights

    def __call__(self, pixel_values, output_hidden_states: bool = False, output_attentions: bool = False):
        feats = ViTBackbone.__call__(self, self._prepare(pixel_values), output_attentions)
        last = self.layernorm(feats.hidden_states[-1])
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=self.pooler(last) if self.pooler is not None else None,
            hidden_states=feats.hidden_states if output_hidden_states else None,
            attentions=feats.attentions if output_attentions else None,
        )


class DPTDensePredictor(PreTrainedModel):
    """Backbone + neck, shared by the depth and segmentation models."""

    config_class = DPTConfig

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.config = config
        backbone = build_backbone(config)
        if config.backbone_type in _DPT_PREFIX_BACKBONES:
            self.dpt = backbone
        else:
            self.backbone = backbone
        self.neck = DPTNeck(config, backbone.hidden_size, reassemble=backbone_spec(config).reassemble)

    @property
    def encoder_module(self):
        """The backbone, under the name the checkpoint gives it (``dpt`` or ``backbone``)."""
        return self["dpt"] if "dpt" in self else self["backbone"]

    def adapt_checkpoint_keys(self, weights: dict) -> dict:
        """A base DPTModel checkpoint (no ``dpt.`` prefix) loads into a task model's encoder."""
        if "dpt" in self and not any(k.startswith("dpt.") for k in weights):
            return {("dpt." + k if k.startswith(_BASE_KEYS) else k): v for k, v in weights.items()}
        return weights

    def fused_features(self, pixel_values, output_attentions: bool = False):
        feats = self.encoder_module(self._prepare(pixel_values), output_attentions=output_attentions)
        return self.neck(feats.features, feats.grid), feats


class DPTForDepthEstimation(DPTDensePredictor):
    """DPT with the depth head: ``predicted_depth`` is (B, H, W)."""

    head_kind = "depth"

    def __init__(self, config: DPTConfig):
        super().__init__(config)
        self.head = DepthEstimationHead(config)

    def __call__(
        self,
        pixel_values,
        labels=None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        loss_type: str | None = None,
    ):
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

    head_kind = "segmentation"

    def __init__(self, config: DPTConfig):
        if config.backbone_config is not None and not config.is_hybrid:
            # transformers' DPTForSemanticSegmentation ignores backbone_config (it always builds the ViT).
            raise UnsupportedModelError(
                f"DPTForSemanticSegmentation with a {config.backbone_type} backbone_config is not supported "
                "(transformers builds a plain ViT for it); use DPTForDepthEstimation"
            )
        super().__init__(config)
        self.head = SemanticSegmentationHead(config, config.semantic_classifier_dropout, upsample=True)
        self.auxiliary_head = (
            SemanticSegmentationHead(config, 0.1, upsample=False) if config.use_auxiliary_head else None
        )

    def __call__(self, pixel_values, labels=None, output_hidden_states: bool = False, output_attentions: bool = False):
        """``labels`` (B, H, W) class ids give transformers' ``loss``: logits and auxiliary logits
        upsampled to the labels' size (bilinear, align_corners=False), cross-entropy over pixels
        not equal to ``semantic_loss_ignore_index``, plus ``auxiliary_loss_weight`` times the
        auxiliary term. With ``use_auxiliary_head=False`` the loss is the main term alone (the
        reference fails there on an undefined variable); if every pixel is ignored it is 0 (the
        reference gives NaN)."""
        if labels is not None and self.config.num_labels == 1:
            raise ValueError("The number of labels should be greater than one")
        fused, feats = self.fused_features(pixel_values, output_attentions)
        logits = to_nchw(self.head(fused[self.config.head_in_index]))
        aux = to_nchw(self.auxiliary_head(fused[-1])) if self.auxiliary_head is not None else None
        loss = None
        if labels is not None:
            labels = check_segmentation_labels(labels, self.config.num_labels, self.config.semantic_loss_ignore_index)
            loss = semantic_segmentation_loss(
                logits, labels, aux, self.config.semantic_loss_ignore_index, self.config.auxiliary_loss_weight
            )
        return SemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            auxiliary_logits=aux,
            hidden_states=feats.hidden_states if output_hidden_states else None,
            attentions=feats.attentions if output_attentions else None,
        )

"""The task models: DPT (ViT, hybrid, DINOv2, BEiT, Swinv2 backbones), Depth Anything, Prompt Depth Anything,
ZoeDepth, Depth Pro, CHMv2, TIPSv2-DPT."""

from .base import PreTrainedModel
from .chmv2 import CHMv2ForDepthEstimation
from .depth_anything import DepthAnythingForDepthEstimation
from .depth_pro import DepthProForDepthEstimation
from .dpt import DPTForDepthEstimation, DPTForSemanticSegmentation, DPTModel
from .prompt_depth_anything import PromptDepthAnythingForDepthEstimation
from .registry import MODEL_CLASSES, load_model, model_class_for
from .tipsv2_dpt import (
    Tipsv2DptForDensePrediction,
    Tipsv2DptForDepthEstimation,
    Tipsv2DptForNormalEstimation,
    Tipsv2DptForSemanticSegmentation,
)
from .zoedepth import ZoeDepthForDepthEstimation

__all__ = [
    "MODEL_CLASSES",
    "CHMv2ForDepthEstimation",
    "DPTForDepthEstimation",
    "DPTForSemanticSegmentation",
    "DPTModel",
    "DepthAnythingForDepthEstimation",
    "DepthProForDepthEstimation",
    "PreTrainedModel",
    "PromptDepthAnythingForDepthEstimation",
    "Tipsv2DptForDensePrediction",
    "Tipsv2DptForDepthEstimation",
    "Tipsv2DptForNormalEstimation",
    "Tipsv2DptForSemanticSegmentation",
    "ZoeDepthForDepthEstimation",
    "load_model",
    "model_class_for",
]

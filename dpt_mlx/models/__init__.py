"""The task models: DPT (ViT, hybrid, DINOv2, BEiT, Swinv2 backbones), Depth Anything, Prompt Depth Anything,
ZoeDepth, Depth Pro, CHMv2."""

from .base import PreTrainedModel
from .chmv2 import CHMv2ForDepthEstimation
from .depth_anything import DepthAnythingForDepthEstimation
from .depth_pro import DepthProForDepthEstimation
from .dpt import DPTForDepthEstimation, DPTForSemanticSegmentation, DPTModel
from .prompt_depth_anything import PromptDepthAnythingForDepthEstimation
from .registry import MODEL_CLASSES, load_model, model_class_for
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
    "ZoeDepthForDepthEstimation",
    "load_model",
    "model_class_for",
]

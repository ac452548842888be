"""dpt_mlx: DPT and Depth Anything dense prediction models in MLX, with transformers' API."""

from .config import DepthAnythingConfig, DPTConfig
from .errors import CheckpointError, DPTError, UnsupportedModelError
from .loading import load_model
from .modeling import (
    BaseModelOutputWithPooling,
    DepthEstimatorOutput,
    DPTForDepthEstimation,
    DPTForSemanticSegmentation,
    DPTModel,
    SemanticSegmenterOutput,
)
from .pipelines import pipeline
from .depth_anything import DepthAnythingForDepthEstimation

__version__ = "0.1.0"

__all__ = [
    "BaseModelOutputWithPooling",
    "CheckpointError",
    "DepthAnythingConfig",
    "DepthAnythingForDepthEstimation",
    "DepthEstimatorOutput",
    "DPTConfig",
    "DPTError",
    "DPTForDepthEstimation",
    "DPTForSemanticSegmentation",
    "DPTModel",
    "SemanticSegmenterOutput",
    "UnsupportedModelError",
    "load_model",
    "pipeline",
]

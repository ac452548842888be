"""dpt_mlx: DPT and Depth Anything dense prediction models in MLX, with transformers' API.

Importing dpt_mlx has no side effects: MLX keeps its settings and its BLAS until a model is
loaded on the CPU (see dpt_mlx.cpu).
"""

from .config import DepthAnythingConfig, DPTConfig
from .config_zoedepth import ZoeDepthConfig
from .cpu.blas import blas_info
from .errors import CheckpointError, DPTError, ImageError, UnsupportedModelError
from .models import (DepthAnythingForDepthEstimation, DPTForDepthEstimation, DPTForSemanticSegmentation, DPTModel,
                     load_model)
from .models.zoedepth import ZoeDepthForDepthEstimation
from .outputs import BaseModelOutputWithPooling, DepthEstimatorOutput, SemanticSegmenterOutput
from .outputs import ZoeDepthDepthEstimatorOutput
from .pipelines import pipeline
from .processing.image_processor import DPTFeatureExtractor, DPTImageProcessor
from .processing.points import depth_to_points
from .training.losses import scale_shift_invariant_loss, semantic_segmentation_loss, silog_loss

__version__ = "0.1.0"

__all__ = [
    "BaseModelOutputWithPooling",
    "CheckpointError",
    "DepthAnythingConfig",
    "DepthAnythingForDepthEstimation",
    "DepthEstimatorOutput",
    "DPTConfig",
    "DPTError",
    "DPTFeatureExtractor",
    "DPTImageProcessor",
    "DPTForDepthEstimation",
    "DPTForSemanticSegmentation",
    "DPTModel",
    "SemanticSegmenterOutput",
    "ImageError",
    "blas_info",
    "depth_to_points",
    "UnsupportedModelError",
    "load_model",
    "pipeline",
    "scale_shift_invariant_loss",
    "semantic_segmentation_loss",
    "silog_loss",
    "ZoeDepthConfig",
    "ZoeDepthDepthEstimatorOutput",
    "ZoeDepthForDepthEstimation",
]

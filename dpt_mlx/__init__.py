"""dpt_mlx: DPT and Depth Anything dense prediction models in MLX, with transformers' API."""

# On Linux, point MLX's CPU matmul at an optimized BLAS before anything runs (see _blas).
from . import _blas

_blas.setup()

from ._blas import blas_info  # noqa: E402
from .config import DepthAnythingConfig, DPTConfig
from .errors import CheckpointError, DPTError, ImageError, UnsupportedModelError
from .loading import load_model
from .losses import scale_shift_invariant_loss, semantic_segmentation_loss, silog_loss
from .modeling import (
    BaseModelOutputWithPooling,
    DepthEstimatorOutput,
    DPTForDepthEstimation,
    DPTForSemanticSegmentation,
    DPTModel,
    SemanticSegmenterOutput,
)
from .depth_anything import DepthAnythingForDepthEstimation
from .image_processing import DPTFeatureExtractor, DPTImageProcessor
from .pipelines import pipeline

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
    "UnsupportedModelError",
    "load_model",
    "pipeline",
    "scale_shift_invariant_loss",
    "semantic_segmentation_loss",
    "silog_loss",
]

"""dpt_mlx: DPT, Depth Anything, ZoeDepth, Prompt Depth Anything, Depth Pro, CHMv2 and TIPSv2-DPT in MLX,
with transformers' API.

Importing dpt_mlx has no side effects: MLX keeps its settings and its BLAS until a model is
loaded on the CPU (see dpt_mlx.cpu).
"""

from .configs.chmv2 import CHMv2Config
from .configs.depth_pro import DepthProConfig
from .configs.dpt import DepthAnythingConfig, DPTConfig, PromptDepthAnythingConfig
from .configs.tipsv2_dpt import Tipsv2DptConfig
from .configs.zoedepth import ZoeDepthConfig
from .cpu import blas_info, cpu_info
from .errors import CheckpointError, DPTError, ImageError, UnsupportedModelError
from .models import (
    CHMv2ForDepthEstimation,
    DepthAnythingForDepthEstimation,
    DepthProForDepthEstimation,
    DPTForDepthEstimation,
    DPTForSemanticSegmentation,
    DPTModel,
    PromptDepthAnythingForDepthEstimation,
    Tipsv2DptForDensePrediction,
    Tipsv2DptForDepthEstimation,
    Tipsv2DptForNormalEstimation,
    Tipsv2DptForSemanticSegmentation,
    ZoeDepthForDepthEstimation,
    load_model,
)
from .models.losses import scale_shift_invariant_loss, semantic_segmentation_loss, silog_loss
from .outputs import (
    BaseModelOutputWithPooling,
    DepthEstimatorOutput,
    DepthProDepthEstimatorOutput,
    SemanticSegmenterOutput,
    ZoeDepthDepthEstimatorOutput,
)
from .pipelines import pipeline
from .processing.chmv2_processor import CHMv2ImageProcessor
from .processing.image_processor import DPTFeatureExtractor, DPTImageProcessor
from .processing.mesh import depth_to_mesh
from .processing.points import depth_to_points
from .processing.prompt_depth_processor import PromptDepthAnythingImageProcessor
from .processing.tipsv2_processor import Tipsv2DptImageProcessor
from .processing.zoedepth_processor import ZoeDepthImageProcessor

__version__ = "0.1.0"

__all__ = [
    "BaseModelOutputWithPooling",
    "CheckpointError",
    "CHMv2Config",
    "CHMv2ForDepthEstimation",
    "CHMv2ImageProcessor",
    "DepthAnythingConfig",
    "DepthAnythingForDepthEstimation",
    "DepthEstimatorOutput",
    "DepthProConfig",
    "DepthProDepthEstimatorOutput",
    "DepthProForDepthEstimation",
    "DPTConfig",
    "DPTError",
    "DPTFeatureExtractor",
    "DPTImageProcessor",
    "DPTForDepthEstimation",
    "DPTForSemanticSegmentation",
    "DPTModel",
    "PromptDepthAnythingConfig",
    "PromptDepthAnythingForDepthEstimation",
    "SemanticSegmenterOutput",
    "Tipsv2DptConfig",
    "Tipsv2DptForDensePrediction",
    "Tipsv2DptForDepthEstimation",
    "Tipsv2DptForNormalEstimation",
    "Tipsv2DptForSemanticSegmentation",
    "Tipsv2DptImageProcessor",
    "ImageError",
    "blas_info",
    "cpu_info",
    "depth_to_points",
    "depth_to_mesh",
    "UnsupportedModelError",
    "ZoeDepthImageProcessor",
    "load_model",
    "pipeline",
    "PromptDepthAnythingImageProcessor",
    "scale_shift_invariant_loss",
    "semantic_segmentation_loss",
    "silog_loss",
    "ZoeDepthConfig",
    "ZoeDepthDepthEstimatorOutput",
    "ZoeDepthForDepthEstimation",
]

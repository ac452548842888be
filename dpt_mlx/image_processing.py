"""The image processor's old module path; it lives in dpt_mlx.processing.image_processor."""

from .processing.image_processor import BatchFeature, DPTFeatureExtractor, DPTImageProcessor, resize_output_size

__all__ = ["BatchFeature", "DPTFeatureExtractor", "DPTImageProcessor", "resize_output_size"]

"""Which image processor a checkpoint needs, from its preprocessor_config.json or its model type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import UnsupportedModelError
from .image_processor import DPTImageProcessor
from .processor_base import ImageProcessorBase
from .prompt_depth_processor import PromptDepthAnythingImageProcessor
from .zoedepth_processor import ZoeDepthImageProcessor

# ``image_processor_type`` names, without the backend suffix transformers may add ("Fast" for
# the torchvision classes of transformers 4, "Pil" for the PIL ones of 5, which write the bare
# name); "FeatureExtractor" is the name before image processors.
PROCESSOR_TYPES: dict[str, type[ImageProcessorBase]] = {
    "DPTImageProcessor": DPTImageProcessor,
    "DPTFeatureExtractor": DPTImageProcessor,
    "ZoeDepthImageProcessor": ZoeDepthImageProcessor,
    "PromptDepthAnythingImageProcessor": PromptDepthAnythingImageProcessor,
}
# A model config's ``model_type`` -> its processor, for checkpoints without a preprocessor config.
MODEL_TYPES: dict[str, type[ImageProcessorBase]] = {
    "dpt": DPTImageProcessor,
    "depth_anything": DPTImageProcessor,
    "zoedepth": ZoeDepthImageProcessor,
    "prompt_depth_anything": PromptDepthAnythingImageProcessor,
}
_SUFFIXES = ("Fast", "Pil")


def processor_type_name(preprocessor_config: Mapping[str, Any] | None) -> str | None:
    """The processor class a preprocessor_config.json dict names (``image_processor_type``, else
    ``feature_extractor_type``), without a backend suffix; ``None`` if it names none."""
    if not preprocessor_config:
        return None
    name = preprocessor_config.get("image_processor_type") or preprocessor_config.get("feature_extractor_type")
    if name is None:
        return None
    if not isinstance(name, str):
        raise UnsupportedModelError(f"image_processor_type={name!r} is invalid; it must be a class name")
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in PROCESSOR_TYPES:
            return name[: -len(suffix)]
    return name


def processor_class_for(
    preprocessor_config: Mapping[str, Any] | None = None, model_type: str | None = None
) -> type[ImageProcessorBase]:
    """The image processor class for a checkpoint: the one its preprocessor_config.json dict names,
    else the one of its model config's ``model_type``, else :class:`DPTImageProcessor`.

    A name or model type dpt_mlx has no processor for is an :class:`UnsupportedModelError`.
    """
    name = processor_type_name(preprocessor_config)
    if name is not None:
        if name not in PROCESSOR_TYPES:
            raise UnsupportedModelError(
                f"image_processor_type {name!r} is not supported; supported: {', '.join(sorted(PROCESSOR_TYPES))}"
            )
        return PROCESSOR_TYPES[name]
    if model_type is None:
        return DPTImageProcessor
    if model_type not in MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} has no image processor here; supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    return MODEL_TYPES[model_type]


__all__ = ["MODEL_TYPES", "PROCESSOR_TYPES", "processor_class_for", "processor_type_name"]

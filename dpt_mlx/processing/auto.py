"""Which image processor a checkpoint needs, from its preprocessor_config.json or its model type,
and loading it (with a model type's defaults when the checkpoint has no preprocessor config)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, UnsupportedModelError
from .chmv2_processor import CHMv2ImageProcessor
from .depth_pro_processor import DepthProImageProcessor
from .image_processor import CONFIG_NAME, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, DPTImageProcessor
from .processor_base import ImageProcessorBase
from .prompt_depth_processor import PromptDepthAnythingImageProcessor
from .tipsv2_processor import Tipsv2DptImageProcessor
from .zoedepth_processor import ZoeDepthImageProcessor

# ``image_processor_type`` names, without the backend suffix transformers may add ("Fast" for
# the torchvision classes of transformers 4, "Pil" for the PIL ones of 5, which write the bare
# name); "FeatureExtractor" is the name before image processors.
PROCESSOR_TYPES: dict[str, type[ImageProcessorBase]] = {
    "DPTImageProcessor": DPTImageProcessor,
    "DPTFeatureExtractor": DPTImageProcessor,
    "ZoeDepthImageProcessor": ZoeDepthImageProcessor,
    "PromptDepthAnythingImageProcessor": PromptDepthAnythingImageProcessor,
    "DepthProImageProcessor": DepthProImageProcessor,
    "CHMv2ImageProcessor": CHMv2ImageProcessor,
    "Tipsv2DptImageProcessor": Tipsv2DptImageProcessor,
}
# A model config's ``model_type`` -> its processor, for checkpoints without a preprocessor config.
MODEL_TYPES: dict[str, type[ImageProcessorBase]] = {
    "dpt": DPTImageProcessor,
    "depth_anything": DPTImageProcessor,
    "zoedepth": ZoeDepthImageProcessor,
    "prompt_depth_anything": PromptDepthAnythingImageProcessor,
    "depth_pro": DepthProImageProcessor,
    "chmv2": CHMv2ImageProcessor,
    "tipsv2_dpt": Tipsv2DptImageProcessor,
}
_SUFFIXES = ("Fast", "Pil")
MAX_SIDE = 8192  # pixels: a model input side (or multiple, or divisor) beyond this is a damaged preprocessor config


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


def default_processor(config) -> tuple[Any, str]:
    """Preprocessing for a checkpoint without preprocessor_config.json, and a line saying what it is.

    ZoeDepth gets its own processor's defaults (384x512 kept in aspect, reflect padding); Depth
    Pro its own at the config's input size (1536x1536 on the hub; normalised, then resized); CHMv2
    its own (the image's own size, centre-padded to a multiple of 16, satellite mean/std);
    DINOv2-based models (Depth Anything, Prompt Depth Anything, DPT-DINOv2) get Depth Anything's
    settings: 518 pixels, aspect ratio kept, sides a multiple of 14, ImageNet mean/std. Everything
    else gets DPT's: a square of the config's ``image_size``, bicubic, mean = std = 0.5.
    """
    model_type = getattr(config, "model_type", "dpt")
    backbone = getattr(config, "backbone_type", None)
    backbone_config = getattr(config, "backbone_config", None)
    if isinstance(backbone_config, dict):
        backbone = backbone or backbone_config.get("model_type")
        inner_size = backbone_config.get("image_size")
    else:
        backbone = backbone or getattr(backbone_config, "model_type", None)
        inner_size = getattr(backbone_config, "image_size", None)
    if model_type == "depth_pro":
        side = config.image_size
        processor = DepthProImageProcessor(size={"height": side, "width": side})
        return processor, f"defaults for depth_pro: {side}x{side}, normalised then resized (bilinear), mean/std 0.5"
    if model_type == "chmv2":
        processor = CHMv2ImageProcessor()
        return processor, "defaults for chmv2: the image's own size padded to a multiple of 16, satellite mean/std"
    if model_type == "tipsv2_dpt":
        processor = Tipsv2DptImageProcessor()
        return processor, "defaults for tipsv2_dpt: 448x448, antialiased bilinear, rescaled to [0, 1], not normalised"
    if model_type == "zoedepth":
        processor = ZoeDepthImageProcessor(ensure_multiple_of=32)  # the value the hub checkpoints set
        what = "384x512, aspect ratio kept, multiple of 32, reflect padding, bilinear, mean/std 0.5"
    elif "depth_anything" in model_type or backbone == "dinov2":
        cls = PromptDepthAnythingImageProcessor if model_type == "prompt_depth_anything" else DPTImageProcessor
        processor = cls(
            size={"height": 518, "width": 518},
            keep_aspect_ratio=True,
            ensure_multiple_of=14,
            resample=3,
            image_mean=list(IMAGENET_DEFAULT_MEAN),
            image_std=list(IMAGENET_DEFAULT_STD),
        )
        what = "518 px, aspect ratio kept, multiple of 14, bicubic, ImageNet mean/std"
    else:
        size = getattr(config, "image_size", None) if backbone in (None, "vit", "hybrid") else inner_size
        size = size or getattr(config, "image_size", None) or 384
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        processor = DPTImageProcessor(size={"height": height, "width": width}, resample=3)
        what = f"{height}x{width}, bicubic, mean/std 0.5"
    label = model_type if backbone in (None, "vit") else f"{model_type} ({backbone})"
    return processor, f"defaults for {label}: {what}"


def load_processor(directory: str | os.PathLike | None, config) -> tuple[DPTImageProcessor, str | None]:
    """The checkpoint's preprocessor_config.json if it has one, else :func:`default_processor`.

    Returns the processor and, when defaults were used, a line saying so.
    """
    path = Path(directory) / CONFIG_NAME if directory is not None else None
    if path is not None and (path.exists() or path.is_symlink()):
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
        cls = processor_class_for(saved if isinstance(saved, dict) else None, getattr(config, "model_type", None))
        processor = cls.from_pretrained(directory)
        _check_sizes(processor, path)
        return processor, None
    processor, what = default_processor(config)
    where = f"{directory}" if directory is not None else "the model"
    return processor, f"no {CONFIG_NAME} in {where}; using {what}"


def _check_sizes(processor, path: Path) -> None:
    """A CheckpointError when a saved preprocessor config asks for inputs no model is run at (a
    100000-pixel side would exhaust memory while resizing the first image)."""
    size = processor.size if isinstance(processor.size, dict) else {"size": processor.size}
    values = {f"size[{k!r}]": v for k, v in size.items()}
    for name in ("ensure_multiple_of", "size_divisor"):
        values[name] = getattr(processor, name, None)
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_SIDE:
            raise CheckpointError(f"{path}: {name}={value!r} is invalid: more than {MAX_SIDE} pixels")


__all__ = [
    "MODEL_TYPES",
    "PROCESSOR_TYPES",
    "default_processor",
    "load_processor",
    "processor_class_for",
    "processor_type_name",
]

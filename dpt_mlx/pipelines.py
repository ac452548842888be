"""One-call inference, like transformers' ``pipeline``: images in, depth maps or masks out.

    >>> from dpt_mlx import pipeline
    >>> depth = pipeline("depth-estimation")            # Intel/dpt-large
    >>> out = depth("photo.jpg")
    >>> out["predicted_depth"]                          # float32 (H, W) at the photo's size
    >>> out["depth"].save("depth.png")                  # 8-bit, min-max normalised

    >>> seg = pipeline("image-segmentation")            # Intel/dpt-large-ade
    >>> [(m["label"], m["mask"]) for m in seg("photo.jpg")]

The pieces the command line and training share live here too: :func:`load_predictor` (model +
image processor, with defaults when a checkpoint has no preprocessor config) and
:class:`Predictor` (preprocess, batched forward, post-process to each image's size).
:func:`load_image` and :func:`list_images` are re-exported from :mod:`dpt_mlx.processing.images`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import CheckpointError, ImageError
from .predictor import DEPTH, SEGMENTATION, Predictor, check_batch_size, predicts_metres, task_of  # noqa: F401
from .processing.auto import processor_class_for
from .processing.depth_prompt import read_prompt_depth
from .processing.image_processor import (
    CONFIG_NAME,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    DPTImageProcessor,
)
from .processing.images import (  # noqa: F401  (this module was their home)
    IMAGE_EXTENSIONS,
    _array_to_uint8,
    _to_8bit,
    list_images,
    load_image,
)
from .processing.prompt_depth_processor import PromptDepthAnythingImageProcessor
from .processing.zoedepth_processor import ZoeDepthImageProcessor

DEFAULT_MODELS = {DEPTH: "Intel/dpt-large", SEGMENTATION: "Intel/dpt-large-ade"}
MAX_SIDE = 8192  # pixels: a model input side (or multiple, or divisor) beyond this is a damaged preprocessor config
TASK_ALIASES = {"depth": DEPTH, "segmentation": SEGMENTATION, "semantic-segmentation": SEGMENTATION}

# ----------------------------------------------------------------------------------------------
# Model + processor


def default_processor(config) -> tuple[Any, str]:
    """Preprocessing for a checkpoint without preprocessor_config.json, and a line saying what it is.

    ZoeDepth gets its own processor's defaults (384x512 kept in aspect, reflect padding);
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


def load_predictor(
    model: Any = None, dtype=None, image_processor: Any = None, task: str | None = None, flip: bool = False
) -> Predictor:
    """A :class:`Predictor` for a checkpoint (hub repo id or local directory) or a loaded model;
    ``flip=True`` averages each prediction with that of the mirrored image."""
    from .io.hub import resolve
    from .models import load_model

    note = None
    if model is None:
        model = DEFAULT_MODELS[task or DEPTH]
    if isinstance(model, (str, os.PathLike)):
        directory = resolve(model)
        net = load_model(directory, dtype=dtype)
    else:
        directory, net = None, model
        if dtype is not None:
            from . import cpu
            from .io.checkpoint import cast_model, parse_dtype

            cast_model(net, parse_dtype(dtype))
            cpu.accelerate(net)
    if image_processor is None:
        image_processor, note = load_processor(directory, net.config)
    predictor = Predictor(net, image_processor, flip=flip)
    predictor.notes = [note] if note else []
    predictor.source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    return predictor


# ----------------------------------------------------------------------------------------------
# Pipelines


def depth_image(depth: np.ndarray) -> Image.Image:
    """transformers' depth-estimation pipeline picture: ``(d - min) / (max - min) * 255`` truncated to uint8.

    A constant map (max == min, where transformers would divide by zero) gives an all-black image.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2 or depth.size == 0:
        raise ValueError(f"a depth map must be a non-empty 2-D (height, width) array, got shape {depth.shape}")
    if not np.isfinite(depth).all():
        raise ValueError("the depth map contains NaN or inf; no picture can be made from it")
    low, high = depth.min(), depth.max()
    if not high > low:
        return Image.fromarray(np.zeros(depth.shape, dtype=np.uint8))
    return Image.fromarray(((depth - low) / (high - low) * 255).astype("uint8"))


class _Pipeline:
    task = ""

    def __init__(self, predictor: Predictor, batch_size: int = 1):
        if predictor.task != self.task:
            raise CheckpointError(
                f"{predictor.source} is a {predictor.task} model; use pipeline({predictor.task!r}, ...) "
                f"or pass a checkpoint for {self.task}"
            )
        self.predictor = predictor
        self.model = predictor.model
        self.image_processor = predictor.image_processor
        self.batch_size = check_batch_size(batch_size)

    def __call__(
        self,
        images: Any,
        batch_size: int | None = None,
        prompt_depth: Any = None,
        prompt_scale_to_meter: float | None = None,
    ):
        """``batch_size``: images per forward pass for this call (default the pipeline's).

        ``prompt_depth`` (Prompt Depth Anything): one depth map per image, as its image processor
        takes them (arrays or PIL images, times ``prompt_scale_to_meter``, default the processor's
        0.001: millimetres), or a file path (:func:`dpt_mlx.processing.depth_prompt.read_prompt_depth`:
        ``.npy`` / float TIFF in metres, integer PNG / TIFF in millimetres, unless
        ``prompt_scale_to_meter`` says otherwise).
        """
        batch_size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        single = not isinstance(images, (list, tuple))
        pil = [load_image(x) for x in ([images] if single else images)]
        prompts, scales = None, None
        if prompt_depth is not None:
            given = list(prompt_depth) if isinstance(prompt_depth, (list, tuple)) else [prompt_depth]
            prompts, scales = [], []
            for p in given:
                if isinstance(p, (str, os.PathLike)):  # read in metres
                    prompts.append(read_prompt_depth(p, prompt_scale_to_meter))
                    scales.append(1.0)
                else:
                    prompts.append(p)
                    scales.append(prompt_scale_to_meter)
        maps = self.predictor.predict(pil, batch_size, prompts, scales)
        results = [self.format(m) for m in maps]
        return results[0] if single else results

    def format(self, result: np.ndarray):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.predictor.source!r})"


class DepthEstimationPipeline(_Pipeline):
    """``pipe(image)`` -> ``{"predicted_depth": float32 (H, W), "depth": PIL "L" image}``; a list -> a list.

    ``predicted_depth`` is the model's output resized (bicubic) to the image's size; for DPT and
    relative Depth Anything it is relative inverse depth (larger = closer), for metric models
    (ZoeDepth, metric Depth Anything, Prompt Depth Anything with a prompt) metres.
    ``depth`` is it min-max normalised to 0..255.
    """

    task = DEPTH

    def format(self, result: np.ndarray) -> dict[str, Any]:
        return {"predicted_depth": result, "depth": depth_image(result)}


class ImageSegmentationPipeline(_Pipeline):
    """``pipe(image)`` -> ``[{"score": None, "label": name, "mask": PIL "L" (255 on the class)}, ...]``
    (one entry per class present, by class id); a list of images -> a list of those lists."""

    task = SEGMENTATION

    def format(self, result: np.ndarray) -> list[dict[str, Any]]:
        id2label = self.predictor.id2label
        annotation = []
        for label in np.unique(result):
            mask = Image.fromarray(((result == label) * 255).astype(np.uint8))  # mode "L"
            annotation.append({"score": None, "label": id2label.get(int(label), f"LABEL_{int(label)}"), "mask": mask})
        return annotation


PIPELINES = {DEPTH: DepthEstimationPipeline, SEGMENTATION: ImageSegmentationPipeline}


def pipeline(
    task: str, model: Any = None, dtype=None, image_processor: Any = None, batch_size: int = 1, flip_tta: bool = False
):
    """A callable for ``"depth-estimation"`` or ``"image-segmentation"``.

    ``model``: a Hugging Face Hub repo id, a local checkpoint directory (transformers or converted)
    or a loaded dpt_mlx model; default ``Intel/dpt-large`` (depth) / ``Intel/dpt-large-ade``
    (segmentation). ``dtype``: "float32", "float16" or "bfloat16" (default: the checkpoint's).
    ``image_processor``: default the checkpoint's preprocessor_config.json, else defaults for
    the model type. ``flip_tta``: also predict every image mirrored left-right and average the two
    (test-time augmentation, as ZoeDepth's ``outputs_flipped``; twice the model time).
    """
    name = TASK_ALIASES.get(task, task)
    if name not in PIPELINES:
        raise ValueError(f"unknown task {task!r}; available tasks: {', '.join(PIPELINES)}")
    predictor = load_predictor(
        model if model is not None else DEFAULT_MODELS[name], dtype, image_processor, name, flip=flip_tta
    )
    return PIPELINES[name](predictor, batch_size=batch_size)


__all__ = [
    "DEFAULT_MODELS",
    "IMAGE_EXTENSIONS",
    "DepthEstimationPipeline",
    "ImageError",
    "ImageSegmentationPipeline",
    "Predictor",
    "depth_image",
    "list_images",
    "load_image",
    "load_predictor",
    "pipeline",
]

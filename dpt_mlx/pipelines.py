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

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from PIL import Image

from .errors import CheckpointError, ImageError, UnsupportedModelError
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

DEPTH = "depth-estimation"
SEGMENTATION = "image-segmentation"
DEFAULT_MODELS = {DEPTH: "Intel/dpt-large", SEGMENTATION: "Intel/dpt-large-ade"}
TASK_ALIASES = {"depth": DEPTH, "segmentation": SEGMENTATION, "semantic-segmentation": SEGMENTATION}

# ----------------------------------------------------------------------------------------------
# Model + processor


def task_of(model) -> str:
    """``"depth-estimation"`` or ``"image-segmentation"``, from the model's class."""
    kind = getattr(type(model), "head_kind", None)
    name = type(model).__name__
    if kind == "segmentation" or "SemanticSegmentation" in name:
        return SEGMENTATION
    if kind == "depth" or "DepthEstimation" in name:
        return DEPTH
    raise UnsupportedModelError(
        f"{name} has no depth or segmentation head; use a depth-estimation or semantic-segmentation checkpoint"
    )


def default_processor(config) -> tuple[DPTImageProcessor, str]:
    """Preprocessing for a checkpoint without preprocessor_config.json, and a line saying what it is.

    DINOv2-based models (Depth Anything, DPT-DINOv2) get Depth Anything's settings: 518 pixels,
    aspect ratio kept, sides a multiple of 14, ImageNet mean/std. Everything else gets DPT's:
    a square of the config's ``image_size``, bicubic, mean = std = 0.5.
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
    if "depth_anything" in model_type or backbone == "dinov2":
        processor = DPTImageProcessor(
            size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
            image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD),
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
    if directory is not None and (Path(directory) / CONFIG_NAME).is_file():
        return DPTImageProcessor.from_pretrained(directory), None
    processor, what = default_processor(config)
    where = f"{directory}" if directory is not None else "the model"
    return processor, f"no {CONFIG_NAME} in {where}; using {what}"


def load_predictor(model: Any = None, dtype=None, image_processor: DPTImageProcessor | None = None,
                   task: str | None = None) -> Predictor:
    """A :class:`Predictor` for a checkpoint (hub repo id or local directory) or a loaded model."""
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
    predictor = Predictor(net, image_processor)
    predictor.notes = [note] if note else []
    predictor.source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    return predictor


# ----------------------------------------------------------------------------------------------
# Inference


def _check_batch_size(batch_size: Any) -> int:
    """``batch_size`` if it is an integer >= 1, else ValueError (as the command line rejects it)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


class Predictor:
    """A task model and its image processor: PIL images in, per-image NumPy maps out.

    ``predict`` returns, per image and at the image's own size, the post-processed float32
    depth ((H, W); relative inverse depth for DPT: larger is closer) or the int64 class map.
    """

    def __init__(self, model, image_processor: DPTImageProcessor):
        self.model = model
        self.image_processor = image_processor
        self.task = task_of(model)
        self.config = model.config
        self.notes: list[str] = []
        self.source = type(model).__name__

    @property
    def id2label(self) -> dict[int, str]:
        return dict(getattr(self.config, "id2label", {}) or {})

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """(3, h, w) float32 pixel values of one image."""
        return self.image_processor(image, return_tensors=None)["pixel_values"][0]

    def forward(self, pixel_values: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Run a batch of equal-shape pixel values; post-process each result to its (height, width)."""
        outputs = self.model(mx.array(np.ascontiguousarray(pixel_values)))
        self._check_finite(outputs.predicted_depth if self.task == DEPTH else outputs.logits)
        if self.task == DEPTH:
            done = self.image_processor.post_process_depth_estimation(outputs, target_sizes=list(sizes))
            return [d["predicted_depth"] for d in done]
        return self.image_processor.post_process_semantic_segmentation(outputs, target_sizes=list(sizes))

    def _check_finite(self, output: mx.array) -> None:
        """A ValueError when a model output (batch first) holds NaN or inf: the model is broken, and
        post-processing would turn it into a plausible-looking map."""
        bad = mx.logical_not(mx.isfinite(output)).reshape(output.shape[0], -1).any(axis=1)
        count = int(bad.sum().item())
        if count:
            half = " or float16 overflowed (try dtype float32)" if output.dtype == mx.float16 else ""
            raise ValueError(f"the model's output for {count} of {output.shape[0]} image(s) contains NaN or inf; "
                             f"the checkpoint's weights may be damaged{half}")

    def predict(self, images: Sequence[Image.Image], batch_size: int = 1) -> list[np.ndarray]:
        """All images, batched by equal preprocessed shape, results in input order."""
        _check_batch_size(batch_size)
        pixels = [self.preprocess(image) for image in images]
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(pixels):
            groups.setdefault(p.shape, []).append(i)
        results: list[np.ndarray | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                batch = np.stack([pixels[i] for i in chunk])
                sizes = [(images[i].height, images[i].width) for i in chunk]
                for i, result in zip(chunk, self.forward(batch, sizes)):
                    results[i] = result
        return results  # type: ignore[return-value]


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
        self.batch_size = _check_batch_size(batch_size)

    def __call__(self, images: Any, batch_size: int | None = None):
        """``batch_size``: images per forward pass for this call (default the pipeline's)."""
        batch_size = self.batch_size if batch_size is None else _check_batch_size(batch_size)
        single = not isinstance(images, (list, tuple))
        pil = [load_image(x) for x in ([images] if single else images)]
        maps = self.predictor.predict(pil, batch_size)
        results = [self.format(m) for m in maps]
        return results[0] if single else results

    def format(self, result: np.ndarray):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.predictor.source!r})"


class DepthEstimationPipeline(_Pipeline):
    """``pipe(image)`` -> ``{"predicted_depth": float32 (H, W), "depth": PIL "L" image}``; a list -> a list.

    ``predicted_depth`` is the model's output resized (bicubic) to the image's size; for DPT it is
    relative inverse depth (larger = closer). ``depth`` is it min-max normalised to 0..255.
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


def pipeline(task: str, model: Any = None, dtype=None, image_processor: DPTImageProcessor | None = None,
             batch_size: int = 1):
    """A callable for ``"depth-estimation"`` or ``"image-segmentation"``.

    ``model``: a Hugging Face Hub repo id, a local checkpoint directory (transformers or converted)
    or a loaded dpt_mlx model; default ``Intel/dpt-large`` (depth) / ``Intel/dpt-large-ade``
    (segmentation). ``dtype``: "float32", "float16" or "bfloat16" (default: the checkpoint's).
    ``image_processor``: default the checkpoint's preprocessor_config.json, else defaults for
    the model type.
    """
    name = TASK_ALIASES.get(task, task)
    if name not in PIPELINES:
        raise ValueError(f"unknown task {task!r}; available tasks: {', '.join(PIPELINES)}")
    predictor = load_predictor(model if model is not None else DEFAULT_MODELS[name], dtype, image_processor, name)
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

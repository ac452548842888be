"""One-call inference, like transformers' ``pipeline``: images in, depth maps or masks out.

    >>> from dpt_mlx import pipeline
    >>> depth = pipeline("depth-estimation")            # Intel/dpt-large
    >>> out = depth("photo.jpg")
    >>> out["predicted_depth"]                          # float32 (H, W) at the photo's size
    >>> out["depth"].save("depth.png")                  # 8-bit, min-max normalised

    >>> seg = pipeline("image-segmentation")            # Intel/dpt-large-ade
    >>> [(m["label"], m["mask"]) for m in seg("photo.jpg")]

The pieces it is built on live below it: :class:`~dpt_mlx.predictor.Predictor` and
:func:`~dpt_mlx.predictor.load_predictor` (model + image processor) in :mod:`dpt_mlx.predictor`,
the choice of image processor in :mod:`dpt_mlx.processing.auto`; they, :func:`load_image` and
:func:`list_images` (:mod:`dpt_mlx.processing.images`) can be imported from here too.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from .errors import CheckpointError, ImageError
from .predictor import (  # noqa: F401  (load_predictor and the tasks: also imported from here)
    DEFAULT_MODELS,
    DENSE,
    DEPTH,
    NORMALS,
    SEGMENTATION,
    Camera,
    Predictor,
    check_batch_size,
    load_predictor,
    predicts_metres,
    task_of,
)
from .processing.auto import default_processor, load_processor  # noqa: F401  (also imported from here)
from .processing.depth_prompt import read_prompt_depth
from .processing.images import (  # noqa: F401  (this module was their home)
    IMAGE_EXTENSIONS,
    _array_to_uint8,
    _to_8bit,
    list_images,
    load_image,
)
from .processing.visualize import normals_image  # noqa: F401  (also imported from here)

TASK_ALIASES = {
    "depth": DEPTH,
    "segmentation": SEGMENTATION,
    "semantic-segmentation": SEGMENTATION,
    "normals": NORMALS,
    "dense": DENSE,
}

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
        focal_length: Any = None,
    ):
        """``batch_size``: images per forward pass for this call (default the pipeline's).

        ``prompt_depth`` (Prompt Depth Anything): one depth map per image, as its image processor
        takes them (arrays or PIL images, times ``prompt_scale_to_meter``, default the processor's
        0.001: millimetres), or a file path (:func:`dpt_mlx.processing.depth_prompt.read_prompt_depth`:
        ``.npy`` / float TIFF in metres, integer PNG / TIFF in millimetres, unless
        ``prompt_scale_to_meter`` says otherwise).

        ``focal_length`` (Depth Pro): the camera's known focal length in pixels of the image's width
        (one number for every image, or a list with one per image, None for unknown), used instead of
        the model's estimate to scale the depth.
        """
        batch_size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        single = not isinstance(images, (list, tuple))
        pil = [load_image(x) for x in ([images] if single else images)]
        focal_lengths = None
        if focal_length is not None:
            focal_lengths = list(focal_length) if isinstance(focal_length, (list, tuple)) else [focal_length] * len(pil)
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
        maps = self.predictor.predict(pil, batch_size, prompts, scales, focal_lengths)
        results = [self.format(m, camera) for m, camera in zip(maps, self.predictor.cameras)]
        return results[0] if single else results

    def format(self, result: np.ndarray, camera: Camera | None = None):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.predictor.source!r})"


class DepthEstimationPipeline(_Pipeline):
    """``pipe(image)`` -> ``{"predicted_depth": float32 (H, W), "depth": PIL "L" image}``; a list -> a list.

    ``predicted_depth`` is the model's output resized (bicubic) to the image's size; for DPT and
    relative Depth Anything it is relative inverse depth (larger = closer), for metric models
    (ZoeDepth, metric Depth Anything, Prompt Depth Anything with a prompt, Depth Pro) metres; for CHMv2
    canopy height in metres (its padded map resized to the image, bilinear, as transformers does).
    ``depth`` is it min-max normalised to 0..255.

    Depth Pro's results also hold ``field_of_view`` (degrees) and ``focal_length`` (pixels of the
    image's width), the model's estimates or the ``focal_length`` given and the field of view it
    implies (None without a field-of-view head or a known focal length); transformers' pipeline
    drops them.
    """

    task = DEPTH

    def format(self, result: np.ndarray, camera: Camera | None = None) -> dict[str, Any]:
        out = {"predicted_depth": result, "depth": depth_image(result)}
        if camera is not None:
            out.update(field_of_view=camera.field_of_view, focal_length=camera.focal_length)
        return out


class ImageSegmentationPipeline(_Pipeline):
    """``pipe(image)`` -> ``[{"score": None, "label": name, "mask": PIL "L" (255 on the class)}, ...]``
    (one entry per class present, by class id); a list of images -> a list of those lists."""

    task = SEGMENTATION

    def format(self, result: np.ndarray, camera: Camera | None = None) -> list[dict[str, Any]]:
        id2label = self.predictor.id2label
        annotation = []
        for label in np.unique(result):
            mask = Image.fromarray(((result == label) * 255).astype(np.uint8))  # mode "L"
            annotation.append({"score": None, "label": id2label.get(int(label), f"LABEL_{int(label)}"), "mask": mask})
        return annotation


class NormalEstimationPipeline(_Pipeline):
    """``pipe(image)`` -> ``{"normals": float32 (H, W, 3), "normals_image": PIL RGB}``
    (TIPSv2-DPT's normals head, post-processed as transformers' ``post_process_normal_estimation``:
    unit vectors at the model's resolution, then resized bilinearly to the image, so a little shorter
    where they turn; the picture maps each component from [-1, 1] to 0..255); a list -> a list."""

    task = NORMALS

    def format(self, result: np.ndarray, camera: Camera | None = None) -> dict[str, Any]:
        return {"normals": result, "normals_image": normals_image(result)}


class DensePredictionPipeline(_Pipeline):
    """``pipe(image)`` -> ``{"predicted_depth", "depth", "normals", "normals_image", "segmentation"}``: a
    dense TIPSv2-DPT's three heads from one pass (depth in metres, as the depth pipeline gives it;
    normals as the normals pipeline; ``segmentation`` the (H, W) class ids); a list -> a list."""

    task = DENSE

    def format(self, result: dict, camera: Camera | None = None) -> dict[str, Any]:
        return {
            "predicted_depth": result["depth"],
            "depth": depth_image(result["depth"]),
            "normals": result["normals"],
            "normals_image": normals_image(result["normals"]),
            "segmentation": result["segmentation"],
        }


PIPELINES = {
    DEPTH: DepthEstimationPipeline,
    SEGMENTATION: ImageSegmentationPipeline,
    NORMALS: NormalEstimationPipeline,
    DENSE: DensePredictionPipeline,
}


def pipeline(
    task: str, model: Any = None, dtype=None, image_processor: Any = None, batch_size: int = 1, flip_tta: bool = False
):
    """A callable for ``"depth-estimation"``, ``"image-segmentation"``, ``"normal-estimation"`` or
    ``"dense-prediction"`` (depth, normals and segmentation at once: a dense TIPSv2-DPT checkpoint).

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
    if model is None and name not in DEFAULT_MODELS:
        raise ValueError(f"give the {name} checkpoint: pipeline({name!r}, model=...)")
    predictor = load_predictor(
        model if model is not None else DEFAULT_MODELS[name], dtype, image_processor, name, flip=flip_tta
    )
    return PIPELINES[name](predictor, batch_size=batch_size)


__all__ = [
    "DEFAULT_MODELS",
    "IMAGE_EXTENSIONS",
    "DensePredictionPipeline",
    "DepthEstimationPipeline",
    "ImageError",
    "ImageSegmentationPipeline",
    "NormalEstimationPipeline",
    "Predictor",
    "depth_image",
    "list_images",
    "load_image",
    "load_predictor",
    "pipeline",
]

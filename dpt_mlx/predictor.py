"""``Predictor``: a task model and its image processor, PIL images in, per-image NumPy maps out.

What the pipelines, the command line and the video and batch runners share: preprocessing
(with a depth prompt for Prompt Depth Anything), a batched forward pass, optional flip
test-time augmentation, the NaN check, and post-processing to each image's size (for
ZoeDepth with its padding removal; for Depth Pro with its field of view, or a known focal
length, turned into metric depth, and the camera kept beside the maps in ``Predictor.cameras``).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import mlx.core as mx
import numpy as np
from PIL import Image

from .configs import predicts_metres
from .cpu import images_per_pass
from .errors import UnsupportedModelError
from .processing.auto import load_processor
from .processing.depth_pro_processor import DepthProImageProcessor, check_focal_lengths
from .processing.zoedepth_processor import ZoeDepthImageProcessor

DEPTH = "depth-estimation"
SEGMENTATION = "image-segmentation"
NORMALS = "normal-estimation"  # surface normals (TIPSv2-DPT)
DENSE = "dense-prediction"  # depth, normals and segmentation from one pass (TIPSv2-DPT)
DENSE_FIELDS = ("depth", "normals", "segmentation")  # what a dense prediction holds per image
DEFAULT_MODELS = {
    DEPTH: "Intel/dpt-large",
    SEGMENTATION: "Intel/dpt-large-ade",
    DENSE: "google/tipsv2-b14-dpt",  # depth, normals and segmentation
}


@dataclass(frozen=True)
class Camera:
    """What a model says about the camera of one image (Depth Pro): its horizontal field of view in
    degrees and its focal length in pixels of the image's width (the model's estimate, or the focal
    length it was given and the field of view that implies); None where the model gives none."""

    field_of_view: float | None
    focal_length: float | None


def task_of(model) -> str:
    """``"depth-estimation"``, ``"image-segmentation"``, ``"normal-estimation"`` or ``"dense-prediction"``,
    from the model's class."""
    kind = getattr(type(model), "head_kind", None)
    name = type(model).__name__
    if kind == "normals":
        return NORMALS
    if kind == "dense":
        return DENSE
    if kind == "segmentation" or "SemanticSegmentation" in name:
        return SEGMENTATION
    if kind == "depth" or "DepthEstimation" in name:
        return DEPTH
    raise UnsupportedModelError(
        f"{name} has no depth or segmentation head; use a depth-estimation or semantic-segmentation checkpoint"
    )


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` if it is an integer >= 1, else ValueError (as the command line rejects it)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def takes_prompt(model) -> bool:
    """Whether the model accepts a metric depth prompt (Prompt Depth Anything)."""
    return getattr(model.config, "model_type", None) == "prompt_depth_anything"


def gives_camera(model) -> bool:
    """Whether the model's depth comes with a camera (Depth Pro: field of view and focal length)."""
    return getattr(model.config, "model_type", None) == "depth_pro"


class Predictor:
    """A task model and its image processor: PIL images in, per-image NumPy maps out.

    ``predict`` returns, per image and at the image's own size, the post-processed float32
    depth ((H, W); relative inverse depth for DPT: larger is closer; metres for metric models)
    or the int64 class map. ``flip=True`` also runs every image mirrored left-right and averages
    the two predictions (test-time augmentation: twice the model time; Depth Pro's field of view
    is averaged too).

    ``cameras`` holds, after each ``predict`` or ``forward``, one :class:`Camera` per image of that
    call for a model that gives one (Depth Pro), else one None per image.
    """

    def __init__(self, model, image_processor, flip: bool = False):
        self.model = model
        self.image_processor = image_processor
        self.task = task_of(model)
        self.config = model.config
        self.flip = bool(flip)
        if self.flip and self.task in (NORMALS, DENSE):  # a mirrored normal map is not the mirror image's
            raise ValueError("flip test-time augmentation is for depth and segmentation; this model predicts normals")
        self.notes: list[str] = []
        self.source = type(model).__name__
        self.cameras: list[Camera | None] = []

    @property
    def id2label(self) -> dict[int, str]:
        return dict(getattr(self.config, "id2label", {}) or {})

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def takes_prompt(self) -> bool:
        return takes_prompt(self.model)

    @property
    def gives_camera(self) -> bool:
        return self.task == DEPTH and gives_camera(self.model)

    def metric(self, prompted: bool = False) -> bool:
        return self.task in (DEPTH, DENSE) and predicts_metres(self.config, prompted)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """(3, h, w) float32 pixel values of one image."""
        return self.image_processor(image, return_tensors=None)["pixel_values"][0]

    def preprocess_with_prompt(
        self, image: Image.Image, prompt_depth: Any, prompt_scale: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(3, h, w) pixel values and the (1, h', w') prompt in metres (``prompt_depth`` times
        ``prompt_scale``, default the processor's ``prompt_scale_to_meter``)."""
        if not self.takes_prompt:
            raise ValueError(f"{self.source} takes no prompt_depth; use a Prompt Depth Anything checkpoint")
        options = {} if prompt_scale is None else {"prompt_scale_to_meter": prompt_scale}
        out = self.image_processor(image, prompt_depth=prompt_depth, return_tensors=None, **options)
        return out["pixel_values"][0], np.asarray(out["prompt_depth"][0], dtype=np.float32)

    def forward(
        self,
        pixel_values: np.ndarray,
        sizes: Sequence[tuple[int, int]],
        prompt_depth: np.ndarray | None = None,
        focal_lengths: Sequence[float | None] | None = None,
    ) -> list[np.ndarray]:
        """Run a batch of equal-shape pixel values (and prompts); post-process each result to its
        (height, width). ``focal_lengths`` (Depth Pro): a known focal length in pixels of each image's
        width, or None, used instead of the model's estimate. Sets ``cameras``."""
        n = len(pixel_values)
        known = self._focal_lengths(focal_lengths, n)
        if self.task in (NORMALS, DENSE):
            self.cameras = [None] * n
            return self._forward_fields(pixel_values, sizes)
        x, prompt = pixel_values, prompt_depth
        if self.flip:  # the mirrored batch rides along in the same forward pass (see _run)
            x = np.concatenate([x, x[..., ::-1]])
            prompt = None if prompt is None else np.concatenate([prompt, prompt[..., ::-1]])
        result, fov = self._run(x, prompt)
        self._check_finite(result)
        if fov is not None:
            self._check_finite(fov)
        flipped = None
        if self.flip:
            result, flipped = result[:n], result[n:]
            fov = None if fov is None else (fov[:n] + fov[n:]) / 2
        self.cameras = [None] * n
        if self.task == SEGMENTATION:
            if flipped is not None:
                result = (result + flipped[..., ::-1]) / 2
            return self.image_processor.post_process_semantic_segmentation(
                SimpleNamespace(logits=result), target_sizes=list(sizes)
            )
        if isinstance(self.image_processor, ZoeDepthImageProcessor):  # padding removal needs the source sizes
            done = self.image_processor.post_process_depth_estimation(
                SimpleNamespace(predicted_depth=result),
                source_sizes=list(sizes),
                outputs_flipped=None if flipped is None else SimpleNamespace(predicted_depth=flipped),
            )
            return [d["predicted_depth"] for d in done]
        if flipped is not None:
            result = (result + flipped[..., ::-1]) / 2
        if isinstance(self.image_processor, DepthProImageProcessor):  # metric depth from the camera
            done = self.image_processor.post_process_depth_estimation(
                SimpleNamespace(predicted_depth=result, field_of_view=fov),
                target_sizes=list(sizes),
                focal_lengths=known,
            )
            if self.gives_camera:
                self.cameras = [Camera(_number(d["field_of_view"]), _number(d["focal_length"])) for d in done]
        else:
            done = self.image_processor.post_process_depth_estimation(
                SimpleNamespace(predicted_depth=result), target_sizes=list(sizes)
            )
        return [d["predicted_depth"] for d in done]

    def _forward_fields(self, x: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list:
        """Normals ((H, W, 3) float32 per image: unit at the model's size, then resized) or, for a dense
        model, per image a dict of ``depth`` (H, W), ``normals`` (H, W, 3) and ``segmentation`` (H, W)
        class ids, each post-processed to the image's size as the reference's processor does."""
        step = images_per_pass(len(x), *x.shape[2:4])
        parts = []
        for i in range(0, len(x), step):
            outputs = self.model(mx.array(np.ascontiguousarray(x[i : i + step])))
            fields = {"normals": outputs.normals}
            if self.task == DENSE:
                fields.update(depth=outputs.predicted_depth, segmentation=outputs.segmentation_logits)
            mx.eval(fields)
            for value in fields.values():
                self._check_finite(value)
            parts.append(fields)
        fields = {key: mx.concatenate([part[key] for part in parts]) for key in parts[0]}
        targets = list(sizes)
        processor = self.image_processor
        normals = processor.post_process_normal_estimation(SimpleNamespace(normals=fields["normals"]), targets)
        normals = [np.ascontiguousarray(d["normals"].transpose(1, 2, 0)) for d in normals]
        if self.task == NORMALS:
            return normals
        depth = processor.post_process_depth_estimation(SimpleNamespace(predicted_depth=fields["depth"]), targets)
        classes = processor.post_process_semantic_segmentation(SimpleNamespace(logits=fields["segmentation"]), targets)
        return [
            {"depth": d["predicted_depth"], "normals": n, "segmentation": c} for d, n, c in zip(depth, normals, classes)
        ]

    def _focal_lengths(self, focal_lengths: Sequence[float | None] | None, n: int) -> list[float | None] | None:
        """Checked known focal lengths for ``n`` images, or None; only Depth Pro's depth takes them."""
        if focal_lengths is None or all(f is None for f in focal_lengths):
            return None
        if not (self.gives_camera and isinstance(self.image_processor, DepthProImageProcessor)):
            raise ValueError(
                f"a focal length scales Depth Pro's depth only; {self.source} is not a Depth Pro checkpoint "
                "(with its image processor)"
            )
        return check_focal_lengths(list(focal_lengths), n)

    def _run(self, x: np.ndarray, prompt: np.ndarray | None) -> tuple[mx.array, mx.array | None]:
        """The model's depth or logits for a batch, evaluated, and its field of view (Depth Pro) or None.
        A multi-domain ZoeDepth picks one head for a whole batch (from its domain classifier's vote over
        the batch, as the reference does), so its images run one at a time: an image's depth never
        depends on the images beside it. Elsewhere the batch runs in passes of
        :func:`dpt_mlx.cpu.images_per_pass` images, each evaluated before the next starts (on the CPU,
        so that memory does not grow with the batch)."""
        step = 1 if getattr(self.config, "multi_domain", False) else images_per_pass(len(x), *x.shape[2:4])
        if step < len(x):
            parts = [
                self._run(x[i : i + step], None if prompt is None else prompt[i : i + step])
                for i in range(0, len(x), step)
            ]
            fovs = [fov for _, fov in parts]
            fov = None if fovs[0] is None else mx.concatenate(fovs)
            return mx.concatenate([result for result, _ in parts]), fov
        kwargs = {} if prompt is None else {"prompt_depth": mx.array(np.ascontiguousarray(prompt))}
        outputs = self.model(mx.array(np.ascontiguousarray(x)), **kwargs)
        result = outputs.predicted_depth if self.task == DEPTH else outputs.logits
        fov = getattr(outputs, "field_of_view", None) if self.task == DEPTH else None
        mx.eval(result if fov is None else (result, fov))
        return result, fov

    def _check_finite(self, output: mx.array) -> None:
        """A ValueError when a model output (batch first) holds NaN or inf: the model is broken, and
        post-processing would turn it into a plausible-looking map."""
        bad = mx.logical_not(mx.isfinite(output)).reshape(output.shape[0], -1).any(axis=1)
        count = int(bad.sum().item())
        if count:
            half = " or float16 overflowed (try dtype float32)" if output.dtype == mx.float16 else ""
            raise ValueError(
                f"the model's output for {count} of {output.shape[0]} image(s) contains NaN or inf; "
                f"the checkpoint's weights may be damaged{half}"
            )

    def predict(
        self,
        images: Sequence[Image.Image],
        batch_size: int = 1,
        prompts: Sequence[Any] | None = None,
        prompt_scales: Sequence[float | None] | None = None,
        focal_lengths: Sequence[float | None] | None = None,
    ) -> list[np.ndarray]:
        """All images, batched by equal preprocessed shape, results in input order. ``prompts``: one
        depth prompt per image (Prompt Depth Anything), or None; ``prompt_scales``: metres per prompt
        unit for each (None: the processor's ``prompt_scale_to_meter``); ``focal_lengths`` (Depth Pro):
        a known focal length in pixels of each image's width, or None (the model's estimate). Sets
        ``cameras``, in input order."""
        check_batch_size(batch_size)
        if prompts is not None and len(prompts) != len(images):
            raise ValueError(f"got {len(prompts)} prompt depth map(s) for {len(images)} image(s); give one per image")
        if focal_lengths is not None:
            if len(focal_lengths) != len(images):
                raise ValueError(
                    f"got {len(focal_lengths)} focal length(s) for {len(images)} image(s); give one per image"
                )
            self._focal_lengths(focal_lengths, len(images))  # a bad value fails before any model time
        if prompts is None:
            inputs = [(self.preprocess(image), None) for image in images]
        else:
            scales = list(prompt_scales) if prompt_scales is not None else [None] * len(images)
            inputs = [self.preprocess_with_prompt(image, p, s) for image, p, s in zip(images, prompts, scales)]
        groups: dict[tuple, list[int]] = {}
        for i, (p, q) in enumerate(inputs):
            groups.setdefault((p.shape, None if q is None else q.shape), []).append(i)
        results: list[np.ndarray | None] = [None] * len(images)
        cameras: list[Camera | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                batch = np.stack([inputs[i][0] for i in chunk])
                prompt = None if prompts is None else np.stack([inputs[i][1] for i in chunk])
                sizes = [(images[i].height, images[i].width) for i in chunk]
                known = None if focal_lengths is None else [focal_lengths[i] for i in chunk]
                for i, result in zip(chunk, self.forward(batch, sizes, prompt, known)):
                    results[i] = result
                for i, camera in zip(chunk, self.cameras):
                    cameras[i] = camera
        self.cameras = cameras
        return results  # type: ignore[return-value]


def _number(value) -> float | None:
    return None if value is None else float(value)


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

"""The model classes by name, and ``load_model``: the Auto class of dpt_mlx."""

from __future__ import annotations

from ..errors import UnsupportedModelError
from ..io import checkpoint
from .base import PreTrainedModel
from .chmv2 import CHMv2ForDepthEstimation
from .depth_anything import DepthAnythingForDepthEstimation
from .depth_pro import DepthProForDepthEstimation
from .dpt import DPTForDepthEstimation, DPTForSemanticSegmentation, DPTModel
from .prompt_depth_anything import PromptDepthAnythingForDepthEstimation
from .tipsv2_dpt import (
    Tipsv2DptForDensePrediction,
    Tipsv2DptForDepthEstimation,
    Tipsv2DptForNormalEstimation,
    Tipsv2DptForSemanticSegmentation,
)
from .zoedepth import ZoeDepthForDepthEstimation

# config.json "architectures" names -> class
MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "DPTModel": DPTModel,
    "DPTForDepthEstimation": DPTForDepthEstimation,
    "DPTForSemanticSegmentation": DPTForSemanticSegmentation,
    "DepthAnythingForDepthEstimation": DepthAnythingForDepthEstimation,
    "PromptDepthAnythingForDepthEstimation": PromptDepthAnythingForDepthEstimation,
    "ZoeDepthForDepthEstimation": ZoeDepthForDepthEstimation,
    "DepthProForDepthEstimation": DepthProForDepthEstimation,
    "CHMv2ForDepthEstimation": CHMv2ForDepthEstimation,
    "Tipsv2DptForDensePrediction": Tipsv2DptForDensePrediction,
    "Tipsv2DptForDepthEstimation": Tipsv2DptForDepthEstimation,
    "Tipsv2DptForNormalEstimation": Tipsv2DptForNormalEstimation,
    "Tipsv2DptForSemanticSegmentation": Tipsv2DptForSemanticSegmentation,
}

_SEGMENTATION_KEYS = ("auxiliary_head.", "head.head.1.", "head.batch_norm.")


def model_class_for(config, weights: dict | None = None) -> type[PreTrainedModel]:
    """The class a checkpoint was saved from (``architectures``, else the task its keys show)."""
    for name in config.architectures or []:
        if name in MODEL_CLASSES:
            return MODEL_CLASSES[name]
    if config.architectures:
        raise UnsupportedModelError(
            f"architecture {config.architectures[0]} is not supported; supported: {', '.join(MODEL_CLASSES)}"
        )
    keys = weights.keys() if weights is not None else ()
    if getattr(config, "model_type", None) == "tipsv2_dpt":
        return _tipsv2_class(config, weights or {})
    if any(k.startswith(_SEGMENTATION_KEYS) for k in keys):
        return DPTForSemanticSegmentation
    if any(k.startswith("head.") for k in keys) or weights is None:
        return DPTForDepthEstimation
    return DPTModel


def _tipsv2_class(config, weights: dict) -> type[PreTrainedModel]:
    """A TIPSv2-DPT checkpoint without ``architectures``: the class of the decoders it holds. The original
    layout names them (``<task>_head.``), as transformers' in-memory one does a dense model's
    (``<task>_neck.``); a single decoder in the in-memory layout (``decoder.head``) tells its task by
    its outputs: the depth bins, 3 normal components, or the classes. All three, or nothing to tell
    by, is the dense model (the hub's checkpoints hold all three)."""
    from .tipsv2_dpt import TASKS

    classes = {
        "depth": Tipsv2DptForDepthEstimation,
        "normals": Tipsv2DptForNormalEstimation,
        "segmentation": Tipsv2DptForSemanticSegmentation,
    }
    held = {task for task in TASKS if any(k.startswith((f"{task}_head.", f"{task}_neck.")) for k in weights)}
    if len(held) == 1:
        return classes[held.pop()]
    head = weights.get("decoder.head.weight")
    if not held and head is not None:
        rows = head.shape[0]
        return classes["depth" if rows == config.num_depth_bins else "normals" if rows == 3 else "segmentation"]
    return Tipsv2DptForDensePrediction


def load_model(path_or_repo_id, dtype=None, *, torch_dtype=None, **hub_options) -> PreTrainedModel:
    """The task model a checkpoint was saved as (depth or segmentation), like an Auto class.

    ``hub_options`` are those of ``from_pretrained``: ``revision``, ``token``, ``cache_dir``,
    ``local_files_only``.
    """
    return checkpoint.load_pretrained(
        path_or_repo_id,
        model_class_for,
        dtype=checkpoint.pick_dtype(dtype, torch_dtype),
        hub=checkpoint.HubOptions(**hub_options),
    )

"""Validation: the loss and the task's metrics (AbsRel and delta < 1.25 for depth; mIoU and pixel accuracy
for segmentation), and their one-line summary."""

from __future__ import annotations

import warnings

import mlx.core as mx
import numpy as np

from ..models.losses import resize_to
from .data import DEPTH, SEGMENTATION, Batches, DataError

DELTA_THRESHOLD = 1.25
METRIC_NAMES = {
    "train_loss": "train_loss",
    "val_loss": "val_loss",
    "abs_rel": "AbsRel",
    "delta1": "delta<1.25",
    "miou": "mIoU",
    "pixel_acc": "pixel_acc",
}  # key -> printed name, in printing order


def depth_metrics(prediction: np.ndarray, target: np.ndarray, align: bool, disparity: bool) -> dict[str, float] | None:
    """AbsRel and delta < 1.25 of one image, on depth (None without two valid pixels).

    ``align`` (relative depth, the scale-and-shift-invariant loss): the prediction is first
    aligned to the target by the per-image least-squares scale and shift, as in the loss.
    ``disparity``: prediction and target are disparities; the prediction is clamped to at least
    the farthest ground-truth point's disparity (so no depth is infinite), and both are inverted.
    Metric models (no alignment, depths) are compared as they are.
    """
    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} must have the same shape")
    valid = np.isfinite(target) & (target > 0)
    if valid.sum() < 2:
        return None
    p, t = prediction[valid].astype(np.float64), target[valid].astype(np.float64)
    if align:
        pc = p - p.mean()
        var = (pc * pc).sum()
        s = (pc * (t - t.mean())).sum() / var if var > 0 else 0.0
        p = s * p + (t.mean() - s * p.mean())
    if disparity:
        p, t = 1.0 / np.maximum(p, t.min()), 1.0 / t
    else:
        p = np.maximum(p, 1e-6)
    ratio = np.maximum(p / t, t / p)
    return {"abs_rel": float(np.mean(np.abs(p - t) / t)), "delta1": float(np.mean(ratio < DELTA_THRESHOLD))}


def _predict(model, pixel_values: np.ndarray, labels: np.ndarray, task: str, loss_kwargs: dict):
    """The loss and the prediction at the labels' size: depth (B, H, W) or class ids (B, H, W)."""
    out = model(mx.array(pixel_values), labels=mx.array(labels), **loss_kwargs)
    size = labels.shape[1:]
    if task == DEPTH:
        prediction = resize_to(out.predicted_depth.astype(mx.float32), size)
    else:
        logits = resize_to(out.logits.astype(mx.float32).transpose(0, 2, 3, 1), size)  # (B, H, W, C)
        prediction = mx.argmax(logits, axis=-1)
    mx.eval(out.loss, prediction)
    return float(out.loss), np.array(prediction)


def _confusion(prediction: np.ndarray, labels: np.ndarray, num_labels: int, ignore_index: int) -> np.ndarray:
    """(num_labels, num_labels) pixel counts: rows the true class, columns the predicted one."""
    keep = labels != ignore_index
    pairs = labels[keep].astype(np.int64) * num_labels + prediction[keep].astype(np.int64)
    return np.bincount(pairs, minlength=num_labels**2).reshape(num_labels, num_labels)


def _segmentation_scores(confusion: np.ndarray) -> dict[str, float]:
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return {
        "miou": float((tp[present] / union[present]).mean()) if present.any() else 0.0,
        "pixel_acc": float(tp.sum() / max(confusion.sum(), 1)),
    }


def evaluate(model, batches: Batches, loss_type: str | None) -> dict[str, float]:
    """Validation loss (mean over images) and the task's metrics, in eval mode.

    What the targets are comes from the batches' reader: the task, disparities or depths, normalised
    for the scale-and-shift-invariant loss (then predictions are aligned before the depth metrics),
    the ignore index of masks.
    """
    reader = batches.reader
    task = reader.task
    loss_kwargs = {"loss_type": loss_type} if task == DEPTH else {}
    num_labels = reader.num_labels or 0
    model.eval()
    total, count = 0.0, 0
    per_image = []
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    for indices in batches.plan(None):
        pixel_values, labels = batches.load(indices)
        loss, prediction = _predict(model, pixel_values, labels, task, loss_kwargs)
        total += loss * len(indices)
        count += len(indices)
        if task == DEPTH:
            metrics = (depth_metrics(p, t, reader.normalize, reader.disparity) for p, t in zip(prediction, labels))
            per_image += [m for m in metrics if m]
        else:
            confusion += _confusion(prediction, labels, num_labels, reader.ignore_index)
    result = {"val_loss": total / max(count, 1)}
    if task == DEPTH:
        _check_scored(len(per_image), count)
        if per_image:
            result["abs_rel"] = float(np.mean([m["abs_rel"] for m in per_image]))
            result["delta1"] = float(np.mean([m["delta1"] for m in per_image]))
    elif task == SEGMENTATION:
        if count and not confusion.sum():
            raise DataError(
                "no validation mask has a labelled pixel at the processed size (all are the ignore "
                f"index {reader.ignore_index}); mIoU and pixel accuracy cannot be computed"
            )
        result.update(_segmentation_scores(confusion))
    return result


def _check_scored(scored: int, count: int) -> None:
    """Say so when validation images have too few valid depth pixels to be scored: a DataError when
    none has, a warning when some are left out of the depth metrics."""
    if count and not scored:
        raise DataError(
            f"none of the {count} validation images has two valid depth pixels at the processed "
            "size; AbsRel and delta<1.25 cannot be computed"
        )
    if scored < count:
        warnings.warn(
            f"dpt_mlx: {count - scored} of {count} validation images have fewer than two valid depth "
            "pixels at the processed size; the depth metrics leave them out",
            stacklevel=3,
        )


def format_metrics(metrics: dict[str, float]) -> str:
    """``train_loss 0.1234  val_loss ...``: the known metrics of an epoch, in a fixed order."""
    return "  ".join(f"{METRIC_NAMES[k]} {metrics[k]:.4f}" for k in METRIC_NAMES if k in metrics)

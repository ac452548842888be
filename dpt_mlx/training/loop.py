"""Fine-tune a DPT / Depth Anything checkpoint on a folder of images with depth maps or class masks.

    python -m dpt_mlx.train --model Intel/dpt-hybrid-midas --data mydata --output runs/midas-ft
    python -m dpt_mlx.train --model Intel/dpt-large-ade --data myseg --output runs/ade-ft --epochs 20
    python -m dpt_mlx.train --resume runs/midas-ft --epochs 30          # continue (same or more epochs)

Data layout (``--data DIR``)::

    DIR/images/<name>.jpg|.png|...     the photos
    DIR/depth/<name>.png|.npy|.tif     depth models: a 16-bit (or 8-bit / 32-bit) single-channel PNG,
                                       a float TIFF, or a 2-D .npy; 0, NaN and inf mark invalid pixels
    DIR/masks/<name>.png|.npy          segmentation models: class ids (an "L", "P" or 16-bit PNG, or
                                       an integer .npy); 255 (the ignore index) marks unlabelled pixels

Each target has the same stem and the same size as its image. The task follows from the model.
Depth files hold depth (larger = farther) unless ``--target disparity``; ``--depth-scale`` converts
their values to metres (e.g. 0.001 for millimetre PNGs; needed for metric models only).

Exit status: 0 done; 2 nothing was trained (a usage error, bad data or an unusable model, with a
one-line message); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map_with_path
from PIL import Image

from ..errors import DPTError
from ..processing.image_processor import CONFIG_NAME, resize_output_size
from .losses import SILOG, SSI, default_depth_loss, resize_to

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130
DEPTH, SEGMENTATION = "depth", "segmentation"
TARGET_DIRS = {DEPTH: "depth", SEGMENTATION: "masks"}
TARGET_EXTENSIONS = {DEPTH: (".png", ".npy", ".tif", ".tiff"), SEGMENTATION: (".png", ".npy")}
STATE_NAME, OPTIMIZER_NAME = "trainer_state.json", "optimizer.safetensors"
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FORMAT = "dpt_mlx-trainer"
DELTA_THRESHOLD = 1.25

# Options that a resumed run takes from its checkpoint unless given again on the command line.
DEFAULTS = {
    "data": None, "epochs": 10, "batch_size": 4, "lr": 5e-5, "weight_decay": 0.01, "warmup": 0.05,
    "val_split": 0.1, "seed": 0, "freeze_backbone": False, "freeze_batch_norm": False,
    "loss": None, "target": "depth", "depth_scale": 1.0, "max_grad_norm": 1.0, "keep_checkpoints": 1,
    "gradient_checkpointing": False,
}


class DataError(DPTError, ValueError):
    """The training data is missing, unreadable or does not follow the layout."""


class UsageError(DPTError):
    """A bad combination of options."""


# ----------------------------------------------------------------------------------------------
# Arguments


def _number(kind, low=None, high=None, low_open=False, what=""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print the usage first)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m dpt_mlx.train",
        description="Fine-tune a DPT or Depth Anything checkpoint with MLX on images with depth maps\n"
                    "(scale-and-shift-invariant loss for relative depth, scale-invariant log loss for\n"
                    "metric depth) or segmentation masks (cross-entropy, as transformers). Formulas:\n"
                    "dpt_mlx/losses.py.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", "-m", help="Hugging Face Hub repo id or local checkpoint directory to start from")
    g.add_argument("--data", metavar="DIR", help="data directory: DIR/images + DIR/depth or DIR/masks")
    g.add_argument("--output", "-o", metavar="DIR",
                   help="run directory: checkpoints go to DIR/checkpoint-<step>, the final model to DIR "
                        "(default with --resume: the resumed run's directory)")
    g.add_argument("--resume", metavar="DIR",
                   help="continue a run: a checkpoint-<step> directory, or a run directory (its latest checkpoint)")
    g.add_argument("--overwrite", action="store_true", help="allow an --output that already holds a run")
    g.add_argument("--target", choices=("depth", "disparity"), default=None,
                   help="what depth files hold (default depth; relative models train on disparity = 1 / depth)")
    g.add_argument("--depth-scale", type=_number(float, 0, low_open=True, what="a positive number"), default=None,
                   metavar="S", help="multiply depth file values by S to get metres (default 1; 0.001 for mm)")
    g.add_argument("--val-split", type=_number(float, 0, 0.9, what="a fraction in [0, 0.9]"), default=None,
                   metavar="F", help="fraction of the images held out for validation (default 0.1)")

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=_number(int, 1, what="a positive integer"), default=None, help="default 10")
    t.add_argument("--batch-size", "-b", type=_number(int, 1, what="a positive integer"), default=None,
                   help="default 4 (a batch holds images of one preprocessed size)")
    t.add_argument("--lr", type=_number(float, 0, low_open=True, what="a positive number"), default=None,
                   help="peak learning rate of AdamW (default 5e-5)")
    t.add_argument("--weight-decay", type=_number(float, 0, what="a non-negative number"), default=None,
                   help="AdamW decoupled weight decay (default 0.01)")
    t.add_argument("--warmup", type=_number(float, 0, 1, what="a fraction in [0, 1]"), default=None,
                   help="fraction of the steps with a linear warm-up from 0 (default 0.05); cosine decay to 0 after")
    t.add_argument("--max-grad-norm", type=_number(float, 0, what="a non-negative number"), default=None,
                   help="clip the global gradient norm (default 1; 0 turns clipping off)")
    t.add_argument("--loss", choices=(SSI, SILOG), default=None,
                   help="depth loss (default: silog for metric checkpoints, ssi otherwise)")
    t.add_argument("--freeze-backbone", action="store_true", default=None,
                   help="train the neck and head only (the backbone gets no gradients and runs in eval mode)")
    t.add_argument("--freeze-batch-norm", action="store_true", default=None,
                   help="keep BatchNorm layers on their running statistics")
    t.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute each transformer layer in the backward pass: less memory (-20 to -50%% peak "
                        "measured), one more forward pass of the encoder per step")
    t.add_argument("--seed", type=_number(int, 0, what="a non-negative integer"), default=None, help="seed of the split, the data order and dropout (default 0)")
    t.add_argument("--keep-checkpoints", type=_number(int, 1, what="a positive integer"), default=None,
                   metavar="N", help="keep the N latest checkpoints (default 1)")
    t.add_argument("--quiet", "-q", action="store_true", help="print errors and the final line only")
    return p


def resolve_options(args, saved: dict | None) -> dict:
    """Command line, else the resumed run's value, else the default."""
    saved = saved or {}
    return {k: getattr(args, k) if getattr(args, k) is not None else saved.get(k, default)
            for k, default in DEFAULTS.items()}


# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class Sample:
    name: str
    image: Path
    target: Path
    size: tuple[int, int]  # (height, width) of the upright image


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotations by 90 degrees
                width, height = height, width
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {_reason(e)}") from None
    return height, width


def _target_size(path: Path) -> tuple[int, int]:
    try:
        if path.suffix.lower() == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        else:
            with Image.open(path) as im:
                shape = (im.size[1], im.size[0])
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read {path}: {_reason(e)}") from None
    if len(shape) == 3 and shape[-1] == 1:
        shape = shape[:2]
    if len(shape) != 2:
        raise DataError(f"{path} must be a 2-D (height, width) array, got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def find_samples(data: Path, task: str) -> list[Sample]:
    """The (image, target) pairs of a data directory, sorted by name; layout problems are DataErrors."""
    from ..pipelines import list_images

    if not data.is_dir():
        raise DataError(f"no such data directory: {data}")
    images_dir, target_dir = data / "images", data / TARGET_DIRS[task]
    if not images_dir.is_dir():
        raise DataError(f"{data} has no images/ folder; expected {data}/images and {target_dir}")
    if not target_dir.is_dir():
        other = TARGET_DIRS[SEGMENTATION if task == DEPTH else DEPTH]
        hint = f" ({data}/{other} is for {'segmentation' if task == DEPTH else 'depth'} models)" \
            if (data / other).is_dir() else ""
        raise DataError(f"the model is a {task} model but {data} has no {TARGET_DIRS[task]}/ folder{hint}")
    images = list_images(images_dir)
    if not images:
        raise DataError(f"no images in {images_dir}")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise DataError(f"two images named {path.stem}: {stems[path.stem].name} and {path.name}")
        stems[path.stem] = path
    samples, missing = [], []
    extensions = TARGET_EXTENSIONS[task]
    for stem, path in stems.items():
        found = [target_dir / f"{stem}{ext}" for ext in extensions if (target_dir / f"{stem}{ext}").is_file()]
        if not found:
            missing.append(path)
            continue
        if len(found) > 1:
            raise DataError(f"{path.name} has several targets ({', '.join(f.name for f in found)}); keep one")
        size = _image_size(path)
        target_size = _target_size(found[0])
        if target_size != size:
            raise DataError(
                f"{found[0]} is {target_size[1]}x{target_size[0]} but its image {path} is {size[1]}x{size[0]}; "
                "targets must have their image's size"
            )
        samples.append(Sample(stem, path, found[0], size))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        names = " or ".join(f"{TARGET_DIRS[task]}/{missing[0].stem}{ext}" for ext in extensions)
        raise DataError(f"no target for {missing[0]}{more}: expected {names}")
    return samples


def split_samples(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded random hold-out of round(fraction * n) images (at least one when fraction > 0)."""
    n = len(samples)
    n_val = int(round(fraction * n))
    if fraction > 0:
        n_val = max(1, n_val)
    if n - n_val < 1:
        raise DataError(f"{n} image(s) cannot be split into training and validation; add images or lower --val-split")
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [samples[i] for i in train], [samples[i] for i in val]


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) -> ``size`` by nearest neighbour (pixel centres), so every value is one of the input's."""
    height, width = array.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
    return array[rows[:, None], cols[None, :]]


def pad_center(array: np.ndarray, divisor: int, fill) -> np.ndarray:
    """Pad (H, W) to multiples of ``divisor``, centred, as the processor pads the image."""
    pads = []
    for length in array.shape:
        total = math.ceil(length / divisor) * divisor - length
        pads.append((total // 2, total - total // 2))
    return np.pad(array, pads, mode="constant", constant_values=fill)


class TargetReader:
    """Reads a target file and brings it to the processed image's grid.

    Depth: invalid pixels (0, negative, NaN, inf) become 0 (ignored by the losses); values times
    ``depth_scale``. Targets are in the prediction's space: ``disparity`` (relative models) turns
    depth into 1 / depth (unless the files hold disparity already), else they stay depths.
    ``normalize`` (the scale-and-shift-invariant loss) divides each target by its mean absolute
    deviation from its median (MiDaS' scale estimate), so that the loss does not depend on the
    data's units; the loss cannot see the target's shift anyway. Segmentation: class ids,
    ``do_reduce_labels`` as the processor does it. Both are resized to the processed size by
    nearest neighbour (a target value is never blended with an invalid neighbour or another
    class), then padded like the image (depth with 0, masks with the ignore index).
    """

    def __init__(self, task: str, processor, disparity: bool, normalize: bool, target: str, depth_scale: float,
                 ignore_index: int, num_labels: int | None = None):
        self.task, self.processor, self.disparity, self.normalize = task, processor, disparity, normalize
        self.target, self.depth_scale, self.ignore_index = target, depth_scale, ignore_index
        self.num_labels = num_labels

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        p = self.processor
        if not p.do_resize:
            return size
        return resize_output_size(size[0], size[1], p.size, p.keep_aspect_ratio, p.ensure_multiple_of)

    def processed_size(self, size: tuple[int, int]) -> tuple[int, int]:
        h, w = self.resized_size(size)
        p = self.processor
        if p.do_pad and p.size_divisor:
            h, w = (math.ceil(h / p.size_divisor) * p.size_divisor, math.ceil(w / p.size_divisor) * p.size_divisor)
        return h, w

    def read(self, sample: Sample) -> np.ndarray:
        raw = self._load(sample.target)
        if raw.shape != sample.size:
            raise DataError(f"{sample.target} has shape {raw.shape} but its image is {sample.size}")
        if self.task == DEPTH:
            array, fill = self._depth(raw), 0.0
        else:
            array, fill = self._classes(raw, sample.target), self.ignore_index
        array = resize_nearest(array, self.resized_size(sample.size))
        p = self.processor
        if p.do_pad and p.size_divisor:
            array = pad_center(array, p.size_divisor, fill)
        return array

    def _load(self, path: Path) -> np.ndarray:
        try:
            if path.suffix.lower() == ".npy":
                array = np.load(path, allow_pickle=False)
            else:
                with Image.open(path) as im:
                    if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "F", "1"):
                        raise DataError(f"{path} is a {im.mode} image; targets must be single-channel")
                    array = np.array(im)
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"cannot read {path}: {_reason(e)}") from None
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        return array

    def _depth(self, raw: np.ndarray) -> np.ndarray:
        if not (np.issubdtype(raw.dtype, np.number) and not np.iscomplexobj(raw)):
            raise DataError(f"depth maps must hold numbers, got dtype {raw.dtype}")
        values = raw.astype(np.float64) * self.depth_scale
        valid = np.isfinite(values) & (values > 0)
        if self.disparity and self.target == "depth":
            values = 1.0 / np.where(valid, values, 1.0)
        values = np.where(valid, values, 0.0)
        if self.normalize and valid.any():
            spread = np.abs(values[valid] - np.median(values[valid])).mean()
            if spread > 0:
                values = values / spread
        return values.astype(np.float32)

    def _classes(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if not np.issubdtype(raw.dtype, np.integer) and raw.dtype != bool:
            if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
                raise DataError(f"{path} must hold integer class ids, got dtype {raw.dtype}")
        labels = raw.astype(np.int64)
        if self.processor.do_reduce_labels:  # as transformers: 0 (background) -> 255, others - 1
            labels = np.where(labels == 0, 255, labels - 1)
            labels = np.where(labels == 254, 255, labels)
        if self.num_labels is not None:
            bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_labels))
            if bad.any():
                reduced = " after do_reduce_labels" if self.processor.do_reduce_labels else ""
                raise DataError(
                    f"{path} has class id {int(labels[bad][0])}{reduced}, outside the model's {self.num_labels} "
                    f"labels (0..{self.num_labels - 1}; {self.ignore_index} = ignore)"
                )
        return labels


class Batches:
    """Batches of equal processed size: (pixel_values (B, 3, H, W) float32, labels (B, H, W))."""

    def __init__(self, samples: list[Sample], processor, reader: TargetReader, batch_size: int):
        self.samples, self.processor, self.reader, self.batch_size = samples, processor, reader, batch_size
        self.groups: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(samples):
            self.groups.setdefault(reader.processed_size(s.size), []).append(i)

    def __len__(self) -> int:
        return sum(math.ceil(len(g) / self.batch_size) for g in self.groups.values())

    def plan(self, rng: np.random.Generator | None) -> list[list[int]]:
        """Batches of sample indices: shuffled within and across sizes when ``rng`` is given."""
        batches = []
        for indices in self.groups.values():
            indices = list(indices)
            if rng is not None:
                rng.shuffle(indices)
            batches += [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def load(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        from ..pipelines import load_image

        chosen = [self.samples[i] for i in indices]
        try:
            images = [load_image(s.image) for s in chosen]
            pixel_values = self.processor(images, return_tensors="np")["pixel_values"]
        except DPTError:
            raise
        except ValueError as e:
            raise DataError(f"cannot preprocess {chosen[0].image}: {_reason(e)}") from None
        labels = np.stack([self.reader.read(s) for s in chosen])
        if pixel_values.shape[2:] != labels.shape[1:]:  # a bug, not a data problem
            raise AssertionError(f"processed image {pixel_values.shape} and target {labels.shape} disagree")
        return pixel_values, labels


# ----------------------------------------------------------------------------------------------
# Model, optimiser, modes


def backbone_of(model) -> nn.Module:
    """The encoder: ``model.dpt`` (ViT / hybrid DPT) or ``model.backbone`` (DINOv2, BEiT, Swinv2...)."""
    return model["dpt"] if "dpt" in model else model["backbone"]


def set_train_mode(model, freeze_backbone: bool, freeze_batch_norm: bool) -> None:
    """Dropout on and BatchNorm on batch statistics (unless frozen); a frozen backbone runs in eval mode."""
    model.train(True, freeze_batch_norm=freeze_batch_norm)
    if freeze_backbone:
        backbone_of(model).eval()


def enable_gradient_checkpointing(model) -> int:
    """Recompute every transformer layer in the backward pass (``mx.checkpoint``); returns the count.

    Each layer's ``__call__`` is swapped for one that runs the layer through
    ``mlx.nn.utils.checkpoint`` (parameters and module paths are unchanged). The random dropout
    masks of a recomputed layer would differ from the forward pass's, so layers with dropout
    active are left alone.
    """
    count = 0
    for _, module in backbone_of(model).named_modules():
        layers = module.get("layer") if isinstance(module, nn.Module) else None
        if not isinstance(layers, list):
            continue
        for layer in layers:
            if not isinstance(layer, nn.Module) or any(
                isinstance(m, nn.Dropout) and m._p_1 < 1 for _, m in layer.named_modules()
            ):
                continue
            cls = type(layer)
            layer.__class__ = type(f"Checkpointed{cls.__name__}", (cls,), {"__call__": _checkpointed_call(cls)})
            count += 1
    return count


def _checkpointed_call(cls):
    def call(self, x, *args, **kwargs):
        flags = [a for a in (*args, *kwargs.values()) if isinstance(a, bool)]
        if any(flags) or not self.training:  # attentions requested, or inference: nothing to save
            return cls.__call__(self, x, *args, **kwargs)
        # Arrays among the other arguments (BEiT's shared position bias) are checkpoint inputs, so
        # their gradients flow; the rest (grids, flags, None) are constants.
        slots = [i for i, a in enumerate(args) if isinstance(a, mx.array)]
        rest = []

        def first(y, *arrays):
            full = list(args)
            for i, a in zip(slots, arrays):
                full[i] = a
            out = cls.__call__(self, y, *full, **kwargs)
            if isinstance(out, tuple):
                rest[:] = out[1:]
                return out[0]
            return out

        y = nn.utils.checkpoint(self, first)(x, *[args[i] for i in slots])
        return (y, *rest) if rest else y

    return call


def build_optimizer(lr: float, weight_decay: float, total_steps: int, warmup_steps: int) -> optim.AdamW:
    """AdamW (PyTorch's: bias-corrected moments, decoupled decay), linear warm-up then cosine decay to 0."""
    decay = optim.cosine_decay(lr, max(1, total_steps - warmup_steps), 0.0)
    if warmup_steps > 0:
        schedule = optim.join_schedules([optim.linear_schedule(0.0, lr, warmup_steps), decay], [warmup_steps])
    else:
        schedule = decay
    return optim.AdamW(learning_rate=schedule, weight_decay=weight_decay, bias_correction=True)


# ----------------------------------------------------------------------------------------------
# Metrics


def depth_metrics(prediction: np.ndarray, target: np.ndarray, align: bool, disparity: bool) -> dict[str, float] | None:
    """AbsRel and delta < 1.25 of one image, on depth (None without two valid pixels).

    ``align`` (relative depth, the scale-and-shift-invariant loss): the prediction is first
    aligned to the target by the per-image least-squares scale and shift, as in the loss.
    ``disparity``: prediction and target are disparities; the prediction is clamped to at least
    the farthest ground-truth point's disparity (so no depth is infinite), and both are inverted.
    Metric models (no alignment, depths) are compared as they are.
    """
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


def evaluate(model, batches: Batches, task: str, loss_kwargs: dict, align: bool, disparity: bool,
             num_labels: int, ignore_index: int) -> dict[str, float]:
    """Validation loss (mean over images) and the task's metrics, in eval mode."""
    model.eval()
    total, count = 0.0, 0
    per_image = []
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    for indices in batches.plan(None):
        pixel_values, labels = batches.load(indices)
        out = model(mx.array(pixel_values), labels=mx.array(labels), **loss_kwargs)
        size = labels.shape[1:]
        if task == DEPTH:
            prediction = resize_to(out.predicted_depth.astype(mx.float32), size)
        else:
            logits = resize_to(out.logits.astype(mx.float32).transpose(0, 2, 3, 1), size)
            prediction = mx.argmax(logits, axis=-1)
        mx.eval(out.loss, prediction)
        total += float(out.loss) * len(indices)
        count += len(indices)
        prediction = np.array(prediction)
        if task == DEPTH:
            metrics = (depth_metrics(p, t, align, disparity) for p, t in zip(prediction, labels))
            per_image += [m for m in metrics if m]
        else:
            keep = labels != ignore_index
            pairs = labels[keep].astype(np.int64) * num_labels + prediction[keep].astype(np.int64)
            confusion += np.bincount(pairs, minlength=num_labels**2).reshape(num_labels, num_labels)
    result = {"val_loss": total / max(count, 1)}
    if task == DEPTH and per_image:
        result["abs_rel"] = float(np.mean([m["abs_rel"] for m in per_image]))
        result["delta1"] = float(np.mean([m["delta1"] for m in per_image]))
    elif task == SEGMENTATION:
        tp = np.diag(confusion).astype(np.float64)
        union = confusion.sum(0) + confusion.sum(1) - tp
        present = union > 0
        result["miou"] = float((tp[present] / union[present]).mean()) if present.any() else 0.0
        result["pixel_acc"] = float(tp.sum() / max(confusion.sum(), 1))
    return result


def format_metrics(metrics: dict[str, float]) -> str:
    names = {"train_loss": "train_loss", "val_loss": "val_loss", "abs_rel": "AbsRel", "delta1": "delta<1.25",
             "miou": "mIoU", "pixel_acc": "pixel_acc"}
    return "  ".join(f"{names[k]} {metrics[k]:.4f}" for k in names if k in metrics)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _atomic_write(path: Path, text: str) -> None:
    from ..io.files import atomic_write_text as _atomic_write_text

    _atomic_write_text(path, text)


def save_checkpoint(run_dir: Path, model, processor, optimizer, state: dict, keep: int) -> Path:
    """run_dir/checkpoint-<step>: weights, preprocessor config, optimizer state, trainer state.

    Written into a hidden temporary directory that is renamed into place, so a checkpoint
    directory is always complete. Older checkpoints beyond ``keep`` are removed afterwards.
    """
    from ..io.checkpoint import save_pretrained

    target = run_dir / f"{CHECKPOINT_PREFIX}{state['step']}"
    tmp = run_dir / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_pretrained(model, tmp)
    processor.save_pretrained(tmp)
    flat = dict(tree_flatten(optimizer.state))
    mx.save_safetensors(str(tmp / OPTIMIZER_NAME), flat, metadata={"format": "mlx-optimizer"})
    (tmp / STATE_NAME).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    found = []
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            suffix = p.name[len(CHECKPOINT_PREFIX):]
            if p.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and (p / STATE_NAME).is_file():
                found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def find_checkpoint(path: Path) -> Path:
    if (path / STATE_NAME).is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise UsageError(f"--resume {path}: no {STATE_NAME} there and no {CHECKPOINT_PREFIX}<step> directories in it")
    return found[-1]


def read_state(checkpoint: Path) -> dict:
    try:
        state = json.loads((checkpoint / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {checkpoint / STATE_NAME}: {_reason(e)}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UsageError(f"{checkpoint / STATE_NAME} is not a dpt_mlx training state")
    return state


def restore_optimizer(optimizer, model, checkpoint: Path) -> None:
    """Load the saved AdamW moments and step into an optimizer for ``model``'s trainable parameters."""
    path = checkpoint / OPTIMIZER_NAME
    try:
        saved = mx.load(str(path))
    except Exception as e:  # noqa: BLE001 - mx.load raises RuntimeError/ValueError for bad files
        raise UsageError(f"cannot read {path}: {_reason(e)}") from None
    optimizer.init(model.trainable_parameters())
    expected = {k for k, _ in tree_flatten(optimizer.state)}
    if expected != set(saved):
        raise UsageError(
            f"the optimizer state in {checkpoint} is for other trainable parameters; resume with the same "
            "--freeze-backbone setting as the run that wrote it"
        )
    optimizer.state = tree_map_with_path(lambda path, _: saved[path], optimizer.state)


def export_final(run_dir: Path, model, processor) -> None:
    """The trained model at the top of the run directory: what from_pretrained and the CLI load."""
    from ..io.checkpoint import save_pretrained

    save_pretrained(model, run_dir)
    _atomic_write(run_dir / CONFIG_NAME, json.dumps(processor.to_dict(), indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------
# Progress


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.done = total, label, 0
        self.enabled = enabled and sys.stderr.isatty() and total > 0
        self.start = time.perf_counter()

    def update(self, loss: float) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = max(10, min(30, shutil.get_terminal_size((80, 20)).columns - 60))
        filled = int(width * self.done / self.total)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        sys.stderr.write(f"\r\033[K{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                         f"loss {loss:.4f} {elapsed / self.done:.2f} s/step ETA {eta:.0f}s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# ----------------------------------------------------------------------------------------------
# The run


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


def _setup(args):
    """Resolve the run: options, model, processor, data, checkpoint to resume from."""
    from ..io.hub import resolve
    from ..models import load_model
    from ..pipelines import DEPTH as DEPTH_TASK, load_processor, task_of

    checkpoint, saved_state = None, None
    if args.resume:
        checkpoint = find_checkpoint(Path(args.resume))
        saved_state = read_state(checkpoint)
        if args.model:
            raise UsageError("--resume continues from the checkpoint's weights; drop --model")
    elif not args.model:
        raise UsageError("give --model (a checkpoint to fine-tune) or --resume (a run to continue)")
    opts = resolve_options(args, saved_state and saved_state.get("options"))
    if not opts["data"]:
        raise UsageError("give --data DIR (DIR/images with DIR/depth or DIR/masks)")
    if args.output:
        run_dir = Path(args.output)
    elif checkpoint is not None:
        run_dir = checkpoint.parent if checkpoint.name.startswith(CHECKPOINT_PREFIX) else checkpoint
    else:
        raise UsageError("give --output DIR for the checkpoints and the trained model")
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--output {run_dir} is a file")
    if checkpoint is None and not args.overwrite and (list_checkpoints(run_dir) or (run_dir / STATE_NAME).exists()):
        raise UsageError(f"{run_dir} already holds a training run; use --resume {run_dir}, another --output, "
                         "or --overwrite")

    if checkpoint is None and args.overwrite:
        for old in list_checkpoints(run_dir):
            shutil.rmtree(old)
    opts["data"] = os.path.abspath(opts["data"])
    source = checkpoint if checkpoint is not None else resolve(args.model)
    model = load_model(source, dtype="float32")
    task = DEPTH if task_of(model) == DEPTH_TASK else SEGMENTATION
    processor, note = load_processor(source, model.config)
    config = model.config
    # Targets are in the prediction's space: disparity for relative models, metres for metric ones.
    disparity = getattr(config, "depth_estimation_type", "relative") != "metric"
    loss_type = opts["loss"] or (default_depth_loss(config) if task == DEPTH else None)
    if task == DEPTH and not disparity and opts["target"] == "disparity":
        raise UsageError("a metric model trains on depth in metres; --target disparity is for relative models")
    if task == SEGMENTATION and args.loss:
        raise UsageError("--loss chooses a depth loss; segmentation models use cross-entropy")
    ignore_index = int(getattr(config, "semantic_loss_ignore_index", 255))
    num_labels = int(getattr(config, "num_labels", 0) or 0) if task == SEGMENTATION else None
    reader = TargetReader(task, processor, disparity, loss_type == SSI, opts["target"], opts["depth_scale"],
                          ignore_index, num_labels)
    samples = find_samples(Path(opts["data"]), task)
    train, val = split_samples(samples, opts["val_split"], opts["seed"])
    return dict(opts=opts, model=model, processor=processor, note=note, task=task, disparity=disparity,
                loss_type=loss_type, ignore_index=ignore_index, reader=reader, train=train, val=val,
                checkpoint=checkpoint, saved_state=saved_state, run_dir=run_dir)


@dataclass
class RunResult:
    state: dict  # what trainer_state.json holds: epoch, step, history, options
    model: nn.Module  # the trained model, in eval mode
    processor: object
    run_dir: Path


def run(args) -> RunResult:
    """Train as the parsed command line (``build_parser().parse_args``) says."""
    s = _setup(args)
    opts, model, processor, task = s["opts"], s["model"], s["processor"], s["task"]
    quiet = args.quiet
    run_dir: Path = s["run_dir"]
    if s["note"]:
        _log(quiet, s["note"])
    train_batches = Batches(s["train"], processor, s["reader"], opts["batch_size"])
    val_batches = Batches(s["val"], processor, s["reader"], opts["batch_size"])
    steps_per_epoch = len(train_batches)
    total_steps = steps_per_epoch * opts["epochs"]
    warmup_steps = int(round(opts["warmup"] * total_steps))
    optimizer = build_optimizer(opts["lr"], opts["weight_decay"], total_steps, warmup_steps)

    if opts["freeze_backbone"]:
        backbone_of(model).freeze()
    if opts["gradient_checkpointing"]:
        enable_gradient_checkpointing(model)

    state = {"format": STATE_FORMAT, "version": 1, "epoch": 0, "step": 0, "history": [], "task": task,
             "loss_type": s["loss_type"], "options": {k: v for k, v in opts.items()}}
    if s["checkpoint"] is not None:
        saved = s["saved_state"]
        if saved.get("task") != task:
            raise UsageError(f"{s['checkpoint']} is a {saved.get('task')} run but the model is a {task} model")
        restore_optimizer(optimizer, model, s["checkpoint"])
        if int(optimizer.state["step"].item()) != int(saved["step"]):
            raise UsageError(f"{s['checkpoint']}: optimizer step and trainer state disagree; the checkpoint is damaged")
        if saved.get("steps_per_epoch") not in (None, steps_per_epoch):
            _log(quiet, f"note: the data now gives {steps_per_epoch} steps per epoch "
                        f"(the checkpoint's run had {saved['steps_per_epoch']})")
        state.update(epoch=int(saved["epoch"]), step=int(saved["step"]), history=list(saved.get("history", [])))
        _log(quiet, f"resuming {s['checkpoint']} at epoch {state['epoch']}, step {state['step']}")
    state["steps_per_epoch"] = steps_per_epoch
    state["val_images"] = [x.name for x in s["val"]]

    loss_kwargs = {"loss_type": s["loss_type"]} if task == DEPTH else {}
    num_labels = int(getattr(model.config, "num_labels", 0) or 0)
    n_params = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    _log(quiet, f"{task} model {type(model).__name__}, {n_params / 1e6:.2f} M trainable parameters; "
                f"{len(s['train'])} training / {len(s['val'])} validation images; {steps_per_epoch} steps per epoch"
                + (f"; loss {s['loss_type']}" if task == DEPTH else ""))

    def validate() -> dict:
        if not s["val"]:
            return {}
        return evaluate(model, val_batches, task, loss_kwargs, s["loss_type"] == SSI, s["disparity"], num_labels,
                        s["ignore_index"])

    if state["epoch"] >= opts["epochs"]:
        _log(quiet, f"the checkpoint is at epoch {state['epoch']} of {opts['epochs']}; nothing to train "
                    "(pass a larger --epochs)")
        model.eval()
        export_final(run_dir, model, processor)
        return RunResult(state, model, processor, run_dir)
    if state["epoch"] == 0 and not state["history"]:
        before = validate()
        if before:
            state["history"].append({"epoch": 0, **before})
            _log(quiet, f"epoch 0 (before training)  {format_metrics(before)}")

    def loss_fn(m, pixel_values, labels):
        return m(pixel_values, labels=labels, **loss_kwargs).loss

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    run_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(state["epoch"] + 1, opts["epochs"] + 1):
        start = time.perf_counter()
        set_train_mode(model, opts["freeze_backbone"], opts["freeze_batch_norm"])
        mx.random.seed(int(np.random.default_rng([opts["seed"], epoch]).integers(2**31)))
        rng = np.random.default_rng([opts["seed"], epoch, 1])
        progress = Progress(steps_per_epoch, f"epoch {epoch}/{opts['epochs']}", not quiet)
        total, count = 0.0, 0
        for indices in train_batches.plan(rng):
            pixel_values, labels = train_batches.load(indices)
            loss, grads = loss_and_grad(model, mx.array(pixel_values), mx.array(labels))
            if opts["max_grad_norm"] > 0:
                grads, _ = optim.clip_grad_norm(grads, opts["max_grad_norm"])
            optimizer.update(model, grads)
            mx.eval(loss, model.state, optimizer.state)
            value = float(loss)
            if not math.isfinite(value):
                progress.close()
                raise DPTError(f"the loss became {value} at step {state['step'] + 1}; lower --lr or check the data")
            total += value * len(indices)
            count += len(indices)
            state["step"] += 1
            progress.update(value)
        progress.close()
        metrics = {"epoch": epoch, "train_loss": total / max(count, 1), **validate()}
        metrics["seconds"] = round(time.perf_counter() - start, 3)
        state["history"].append(metrics)
        state["epoch"] = epoch
        saved_to = save_checkpoint(run_dir, model, processor, optimizer, state, opts["keep_checkpoints"])
        _log(quiet, f"epoch {epoch}/{opts['epochs']}  {format_metrics(metrics)}  ({metrics['seconds']:.1f} s) "
                    f"-> {saved_to}")
    model.eval()
    export_final(run_dir, model, processor)
    print(f"trained {opts['epochs']} epochs ({state['step']} steps); model written to {run_dir}", flush=True)
    return RunResult(state, model, processor, run_dir)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage errors (one line, status 2), --help (0): returned, not raised
        return int(e.code or 0)
    try:
        run(args)
    except DPTError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except OSError as e:  # disk full, permissions: the user's to fix
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted (the last complete checkpoint is kept)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

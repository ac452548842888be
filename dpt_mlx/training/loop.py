"""The training loop: AdamW with warm-up and cosine decay, train / eval modes, frozen backbones, gradient
checkpointing, and a run from a checkpoint (or a resumed run) to the trained model in its run directory.

:func:`run` takes a :class:`RunSpec` (what ``python -m dpt_mlx.train`` resolves from its command line).
Each epoch ends with a validation pass and a checkpoint; the run ends with the model exported to the
top of the run directory (see :mod:`dpt_mlx.training.checkpoints` for the files).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from ..errors import DPTError, UsageError
from ..io.hub import resolve
from ..models import load_model
from ..models.losses import SSI, default_depth_loss
from ..predictor import DEPTH as DEPTH_TASK
from ..predictor import task_of
from ..processing.auto import load_processor
from ..processing.image_processor import DPTImageProcessor
from .checkpoints import (
    STATE_FORMAT,
    export_final,
    holds_run,
    list_checkpoints,
    remove_stale_checkpoints,
    restore_optimizer,
    run_lock,
    save_checkpoint,
)
from .data import DEPTH, SEGMENTATION, Batches, TargetReader, find_samples, split_samples
from .metrics import evaluate, format_metrics


@dataclass
class TrainingOptions:
    """What a run trains with; saved in trainer_state.json ("options") and taken back on resume."""

    data: str | None = None  # the data directory (absolute once resolved)
    epochs: int = 10
    batch_size: int = 4
    lr: float = 5e-5  # peak learning rate
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of the steps
    val_split: float = 0.1
    seed: int = 0
    freeze_backbone: bool = False
    freeze_batch_norm: bool = False
    loss: str | None = None  # depth loss; None: the checkpoint's default
    target: str = "depth"  # what depth files hold: "depth" or "disparity"
    depth_scale: float = 1.0
    max_grad_norm: float = 1.0  # 0: no clipping
    keep_checkpoints: int = 1
    gradient_checkpointing: bool = False


@dataclass
class Resume:
    """The checkpoint a run continues from."""

    checkpoint: Path  # a checkpoint-<step> directory
    state: dict  # its trainer_state.json


@dataclass
class RunSpec:
    """A run: its options, where it goes, and what it starts from (``model`` or ``resume``)."""

    options: TrainingOptions
    run_dir: Path
    model: str | None = None  # Hub repo id or checkpoint directory to fine-tune (a new run)
    resume: Resume | None = None  # the checkpoint a resumed run continues from
    quiet: bool = False  # print the final line only
    overwrite: bool = False  # a new run may replace the run already in run_dir (its checkpoints are removed)


@dataclass
class Setup:
    """A run's model, data and optimizer, ready to train."""

    model: nn.Module
    processor: DPTImageProcessor
    task: str  # DEPTH or SEGMENTATION
    loss_type: str | None  # the depth loss (None for segmentation)
    train: Batches
    val: Batches
    optimizer: optim.AdamW
    note: str | None  # what load_processor had to assume, if anything

    @property
    def loss_kwargs(self) -> dict:
        return {"loss_type": self.loss_type} if self.task == DEPTH else {}


@dataclass
class RunResult:
    state: dict  # what trainer_state.json holds: epoch, step, history, options
    model: nn.Module  # the trained model, in eval mode
    processor: DPTImageProcessor
    run_dir: Path


# A progress bar for one epoch: ``progress(total_steps, label)`` -> an object with update(note=...) and close().
ProgressFactory = Callable[[int, str], object]


class _NoProgress:
    def update(self, done=None, note: str = "") -> None:
        pass

    def close(self) -> None:
        pass


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
    """Recompute the backbone's transformer layers in the backward pass (the encoders'
    ``gradient_checkpointing``, through ``mlx.nn.utils.checkpoint``); returns how many layers
    are recomputed. Layers with dropout active are not (a recomputed layer's random masks would
    differ from the forward pass's)."""
    count = 0
    for _, module in backbone_of(model).named_modules():
        if isinstance(module, nn.Module) and hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = True
            count += sum(
                not any(isinstance(m, nn.Dropout) and getattr(m, "p", 1.0) > 0 for _, m in layer.named_modules())
                for layer in module.layer
            )
    return count


def build_optimizer(lr: float, weight_decay: float, total_steps: int, warmup_steps: int) -> optim.AdamW:
    """AdamW (PyTorch's: bias-corrected moments, decoupled decay), linear warm-up then cosine decay to 0."""
    decay = optim.cosine_decay(lr, max(1, total_steps - warmup_steps), 0.0)
    if warmup_steps > 0:
        schedule = optim.join_schedules([optim.linear_schedule(0.0, lr, warmup_steps), decay], [warmup_steps])
    else:
        schedule = decay
    return optim.AdamW(learning_rate=schedule, weight_decay=weight_decay, bias_correction=True)


# ----------------------------------------------------------------------------------------------
# The run


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


def prepare(spec: RunSpec) -> Setup:
    """Load the model and its processor, find and split the data, build the optimizer."""
    opts = spec.options
    source = spec.resume.checkpoint if spec.resume is not None else resolve(spec.model)
    model = load_model(source, dtype="float32")
    untrainable = {
        "zoedepth": "ZoeDepth has no training loss (neither in transformers)",
        "chmv2": "CHMv2 has no training loss (neither in transformers)",
        "prompt_depth_anything": "Prompt Depth Anything trains on depth prompts, which the trainer does not read",
    }.get(getattr(model.config, "model_type", None))
    if untrainable:
        raise UsageError(f"{untrainable}; fine-tune a DPT or Depth Anything checkpoint instead")
    task = DEPTH if task_of(model) == DEPTH_TASK else SEGMENTATION
    processor, note = load_processor(source, model.config)
    config = model.config
    # Targets are in the prediction's space: disparity for relative models, metres for metric ones.
    disparity = getattr(config, "depth_estimation_type", "relative") != "metric"
    loss_type = opts.loss or (default_depth_loss(config) if task == DEPTH else None)
    if task == DEPTH and not disparity and opts.target == "disparity":
        raise UsageError("a metric model trains on depth in metres; --target disparity is for relative models")
    if task == SEGMENTATION and opts.loss:
        raise UsageError("--loss chooses a depth loss; segmentation models use cross-entropy")
    ignore_index = int(getattr(config, "semantic_loss_ignore_index", 255))
    num_labels = int(getattr(config, "num_labels", 0) or 0) if task == SEGMENTATION else None
    reader = TargetReader(
        task, processor, disparity, loss_type == SSI, opts.target, opts.depth_scale, ignore_index, num_labels
    )
    train, val = split_samples(find_samples(Path(opts.data), task), opts.val_split, opts.seed)
    train_batches = Batches(train, processor, reader, opts.batch_size)
    total_steps = len(train_batches) * opts.epochs
    optimizer = build_optimizer(opts.lr, opts.weight_decay, total_steps, int(round(opts.warmup * total_steps)))
    return Setup(
        model,
        processor,
        task,
        loss_type,
        train_batches,
        Batches(val, processor, reader, opts.batch_size),
        optimizer,
        note,
    )


def _resume(state: dict, resume: Resume, s: Setup, quiet: bool) -> None:
    """Take the optimizer and the epoch, step and history from the checkpoint being resumed."""
    saved, checkpoint = resume.state, resume.checkpoint
    if saved.get("task") != s.task:
        raise UsageError(f"{checkpoint} is a {saved.get('task')} run but the model is a {s.task} model")
    restore_optimizer(s.optimizer, s.model, checkpoint)
    if int(s.optimizer.state["step"].item()) != int(saved["step"]):
        raise UsageError(f"{checkpoint}: optimizer step and trainer state disagree; the checkpoint is damaged")
    if saved.get("steps_per_epoch") not in (None, len(s.train)):
        _log(
            quiet,
            f"note: the data now gives {len(s.train)} steps per epoch "
            f"(the checkpoint's run had {saved['steps_per_epoch']})",
        )
    state.update(epoch=int(saved["epoch"]), step=int(saved["step"]), history=list(saved.get("history", [])))
    _log(quiet, f"resuming {checkpoint} at epoch {state['epoch']}, step {state['step']}")


def _start_state(spec: RunSpec, s: Setup) -> dict:
    """The trainer state at the start: fresh, or the resumed checkpoint's."""
    state = {
        "format": STATE_FORMAT,
        "version": 1,
        "epoch": 0,
        "step": 0,
        "history": [],
        "task": s.task,
        "loss_type": s.loss_type,
        "options": asdict(spec.options),
    }
    if spec.resume is not None:
        _resume(state, spec.resume, s, spec.quiet)
    state["steps_per_epoch"] = len(s.train)
    state["val_images"] = [x.name for x in s.val.samples]
    return state


def _validate(s: Setup) -> dict:
    return evaluate(s.model, s.val, s.loss_type) if s.val.samples else {}


def _summary(s: Setup) -> str:
    n_params = sum(v.size for _, v in tree_flatten(s.model.trainable_parameters()))
    return (
        f"{s.task} model {type(s.model).__name__}, {n_params / 1e6:.2f} M trainable parameters; "
        f"{len(s.train.samples)} training / {len(s.val.samples)} validation images; "
        f"{len(s.train)} steps per epoch" + (f"; loss {s.loss_type}" if s.task == DEPTH else "")
    )


def _train_epoch(s: Setup, opts: TrainingOptions, loss_and_grad, state: dict, epoch: int, bar) -> float:
    """One pass over the shuffled training batches; returns the mean training loss over images."""
    set_train_mode(s.model, opts.freeze_backbone, opts.freeze_batch_norm)
    mx.random.seed(int(np.random.default_rng([opts.seed, epoch]).integers(2**31)))
    rng = np.random.default_rng([opts.seed, epoch, 1])
    total, count = 0.0, 0
    for indices in s.train.plan(rng):
        pixel_values, labels = s.train.load(indices)
        loss, grads = loss_and_grad(s.model, mx.array(pixel_values), mx.array(labels))
        if opts.max_grad_norm > 0:
            grads, _ = optim.clip_grad_norm(grads, opts.max_grad_norm)
        s.optimizer.update(s.model, grads)
        mx.eval(loss, s.model.state, s.optimizer.state)
        value = float(loss)
        if not math.isfinite(value):
            bar.close()
            raise DPTError(f"the loss became {value} at step {state['step'] + 1}; lower --lr or check the data")
        total += value * len(indices)
        count += len(indices)
        state["step"] += 1
        bar.update(note=f"loss {value:.4f}")
    bar.close()
    return total / max(count, 1)


def _train(spec: RunSpec, s: Setup, state: dict, progress: ProgressFactory) -> None:
    """The remaining epochs, each validated and saved as a checkpoint."""
    opts = spec.options
    loss_and_grad = nn.value_and_grad(s.model, lambda m, x, y: m(x, labels=y, **s.loss_kwargs).loss)
    for epoch in range(state["epoch"] + 1, opts.epochs + 1):
        start = time.perf_counter()
        bar = progress(len(s.train), f"epoch {epoch}/{opts.epochs}")
        metrics = {
            "epoch": epoch,
            "train_loss": _train_epoch(s, opts, loss_and_grad, state, epoch, bar),
            **_validate(s),
        }
        metrics["seconds"] = round(time.perf_counter() - start, 3)
        state["history"].append(metrics)
        state["epoch"] = epoch
        saved_to = save_checkpoint(spec.run_dir, s.model, s.processor, s.optimizer, state, opts.keep_checkpoints)
        _log(
            spec.quiet,
            f"epoch {epoch}/{opts.epochs}  {format_metrics(metrics)}  ({metrics['seconds']:.1f} s) -> {saved_to}",
        )


def run(spec: RunSpec, progress: ProgressFactory | None = None) -> RunResult:
    """Train as ``spec`` says; ``progress(total, label)`` makes the progress bar of each epoch (default none).

    The run directory is locked from the first write to the last (checkpoints.run_lock): a second
    run into it fails with a DPTError before it writes anything.
    """
    s = prepare(spec)
    opts, quiet, model = spec.options, spec.quiet, s.model
    if s.note:
        _log(quiet, s.note)
    if opts.freeze_backbone:
        backbone_of(model).freeze()
    if opts.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    state = _start_state(spec, s)
    _log(quiet, _summary(s))
    with run_lock(spec.run_dir) as locked:
        _claim(spec)
        for stale in remove_stale_checkpoints(spec.run_dir, every=locked):
            _log(quiet, f"removed {stale.name}, an incomplete checkpoint an interrupted run left")
        if state["epoch"] >= opts.epochs:
            _log(
                quiet,
                f"the checkpoint is at epoch {state['epoch']} of {opts.epochs}; nothing to train "
                "(pass a larger --epochs)",
            )
            return _finish(spec, s, state)
        if state["epoch"] == 0 and not state["history"]:
            before = _validate(s)
            if before:
                state["history"].append({"epoch": 0, **before})
                _log(quiet, f"epoch 0 (before training)  {format_metrics(before)}")
        _train(spec, s, state, progress or (lambda total, label: _NoProgress()))
        result = _finish(spec, s, state)
    print(f"trained {opts.epochs} epochs ({state['step']} steps); model written to {spec.run_dir}", flush=True)
    return result


def _claim(spec: RunSpec) -> None:
    """A new run's directory, checked again under its lock: another run's may have appeared there since
    the command line was read; with ``overwrite`` the old checkpoints go (only now that the data and
    the model have loaded, so a run that cannot start leaves the old one as it was)."""
    if spec.resume is not None or not holds_run(spec.run_dir):
        return
    if not spec.overwrite:
        raise UsageError(
            f"{spec.run_dir} already holds a training run; use --resume {spec.run_dir}, another "
            "--output, or --overwrite"
        )
    for old in list_checkpoints(spec.run_dir):
        shutil.rmtree(old)


def _finish(spec: RunSpec, s: Setup, state: dict) -> RunResult:
    """The model in eval mode, exported to the top of the run directory."""
    s.model.eval()
    export_final(spec.run_dir, s.model, s.processor)
    return RunResult(state, s.model, s.processor, spec.run_dir)

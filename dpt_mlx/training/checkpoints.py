"""The files of a training run: checkpoints to resume from, and the trained model at the top of the run.

    RUN/checkpoint-<step>/   config.json, model.safetensors, preprocessor_config.json,
                             optimizer.safetensors (AdamW moments and step), trainer_state.json
    RUN/                     config.json, model.safetensors, preprocessor_config.json (the final model)

A checkpoint directory is written under a hidden temporary name (``.checkpoint-<step>.tmp-<pid>``)
and renamed into place, so one that exists is complete. A write that fails or is interrupted removes
its temporary directory; one that a killed run (SIGKILL, a power cut) left is incomplete by
construction, and :func:`remove_stale_checkpoints` removes it when a run starts or resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map_with_path

from ..errors import UsageError, first_line
from ..io.checkpoint import save_pretrained
from ..io.files import atomic_write, atomic_write_text
from ..processing.image_processor import CONFIG_NAME

STATE_NAME, OPTIMIZER_NAME = "trainer_state.json", "optimizer.safetensors"
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FORMAT = "dpt_mlx-trainer"


def save_checkpoint(run_dir: Path, model, processor, optimizer, state: dict, keep: int) -> Path:
    """run_dir/checkpoint-<step>: weights, preprocessor config, optimizer state, trainer state.

    Written into a hidden temporary directory that is renamed into place, so a checkpoint
    directory is always complete. Older checkpoints beyond ``keep`` are removed afterwards.
    """
    target = run_dir / f"{CHECKPOINT_PREFIX}{state['step']}"
    tmp = run_dir / f"{_TEMP_PREFIX}{target.name}{_TEMP_MARK}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        save_pretrained(model, tmp)
        processor.save_pretrained(tmp)
        flat = dict(tree_flatten(optimizer.state))
        atomic_write(tmp / OPTIMIZER_NAME, lambda f: mx.save_safetensors(f, flat, metadata={"format": "mlx-optimizer"}))
        atomic_write_text(tmp / STATE_NAME, json.dumps(state, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:  # an error, Ctrl-C or SIGTERM: no half-written checkpoint stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


_TEMP_PREFIX, _TEMP_MARK = ".", ".tmp-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier attempt in this process: not being written now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True  # exists but not ours (EPERM), or cannot tell: leave it
    return True


def remove_stale_checkpoints(run_dir: Path) -> list[Path]:
    """Remove the temporary checkpoint directories that interrupted runs left in ``run_dir``.

    They are incomplete by construction (a complete one is renamed). One whose writing process
    (the pid in its name) is still alive is left alone: a run writing into the same directory.
    Returns the directories removed.
    """
    removed = []
    if not run_dir.is_dir():
        return removed
    for p in run_dir.iterdir():
        name = p.name
        if not (name.startswith(_TEMP_PREFIX + CHECKPOINT_PREFIX) and _TEMP_MARK in name) or not p.is_dir():
            continue
        pid = name.rsplit(_TEMP_MARK, 1)[1]
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


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
    """``path`` itself when it is a checkpoint, else the latest checkpoint of the run directory ``path``."""
    if (path / STATE_NAME).is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise UsageError(f"--resume {path}: no {STATE_NAME} there and no {CHECKPOINT_PREFIX}<step> directories in it")
    return found[-1]


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to."""
    return checkpoint.parent if checkpoint.name.startswith(CHECKPOINT_PREFIX) else checkpoint


def holds_run(run_dir: Path) -> bool:
    """Whether a directory already holds (a checkpoint of) a training run."""
    return bool(list_checkpoints(run_dir)) or (run_dir / STATE_NAME).exists()


def read_state(checkpoint: Path) -> dict:
    """A checkpoint's trainer_state.json: epoch, step, history, task, loss_type, options."""
    try:
        state = json.loads((checkpoint / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {checkpoint / STATE_NAME}: {first_line(e)}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UsageError(f"{checkpoint / STATE_NAME} is not a dpt_mlx training state")
    return state


def restore_optimizer(optimizer, model, checkpoint: Path) -> None:
    """Load the saved AdamW moments and step into an optimizer for ``model``'s trainable parameters."""
    path = checkpoint / OPTIMIZER_NAME
    try:
        saved = mx.load(str(path))
    except Exception as e:  # noqa: BLE001 - mx.load raises RuntimeError/ValueError for bad files
        raise UsageError(f"cannot read {path}: {first_line(e)}") from None
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
    save_pretrained(model, run_dir)
    atomic_write_text(run_dir / CONFIG_NAME, json.dumps(processor.to_dict(), indent=2, sort_keys=True) + "\n")

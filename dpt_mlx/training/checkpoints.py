"""The files of a training run: checkpoints to resume from, and the trained model at the top of the run.

    RUN/checkpoint-<step>/   config.json, model.safetensors, preprocessor_config.json,
                             optimizer.safetensors (AdamW moments and step), trainer_state.json
    RUN/                     config.json, model.safetensors, preprocessor_config.json (the final model)

A checkpoint directory is written under a hidden temporary name (``.checkpoint-<step>.tmp-<pid>``)
and renamed into place in one step, so one that exists is complete; one that exists already (a run
resumed from an earlier checkpoint) is swapped for the new one in that same step, never removed
first (dpt_mlx.io.convert.publish_directory). A write that fails or is interrupted removes its
temporary directory.

One run at a time writes a run directory: :func:`run_lock` holds an exclusive ``flock`` on
``.<run>.lock`` beside it for the whole run, so a second trainer into the same directory stops
before it writes anything. The kernel drops the lock when its holder dies, even by SIGKILL, and a
run holding it knows that every temporary checkpoint directory there is a dead run's:
:func:`remove_stale_checkpoints` removes them when a run starts or resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map_with_path

from ..errors import DPTError, UsageError, first_line
from ..io.checkpoint import save_pretrained
from ..io.files import (
    atomic_write,
    atomic_write_text,
    make_parent,
    output_lock,
    publish_directory,
    remove_tree,
    signals_deferred,
    why,
)
from ..processing.image_processor import CONFIG_NAME

STATE_NAME, OPTIMIZER_NAME = "trainer_state.json", "optimizer.safetensors"
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FORMAT = "dpt_mlx-trainer"


def save_checkpoint(run_dir: Path, model, processor, optimizer, state: dict, keep: int) -> Path:
    """run_dir/checkpoint-<step>: weights, preprocessor config, optimizer state, trainer state.

    Written into a hidden temporary directory that is renamed into place (replacing one of that
    step in the same rename), so a checkpoint directory is always complete. Older checkpoints
    beyond ``keep`` are removed afterwards.
    """
    target = run_dir / f"{CHECKPOINT_PREFIX}{state['step']}"
    tmp = run_dir / f"{_TEMP_PREFIX}{target.name}{_TEMP_MARK}{os.getpid()}"
    if os.path.lexists(tmp):
        remove_tree(tmp)
    old = None
    try:
        try:
            save_pretrained(model, tmp)
            processor.save_pretrained(tmp)
            flat = dict(tree_flatten(optimizer.state))
            atomic_write(
                tmp / OPTIMIZER_NAME, lambda f: mx.save_safetensors(f, flat, metadata={"format": "mlx-optimizer"})
            )
            atomic_write_text(tmp / STATE_NAME, json.dumps(state, indent=2, sort_keys=True) + "\n")
            with signals_deferred():  # Ctrl-C or SIGTERM: once the checkpoint is in place
                old = publish_directory(tmp, target, overwrite=True)
        except OSError as e:  # a full disk, a quota, an I/O error
            raise DPTError(f"cannot write {target}: {why(e)}") from None
    finally:  # an error, Ctrl-C or SIGTERM: no half-written checkpoint stays behind
        for path in (tmp, old):
            if path is not None and os.path.lexists(path):
                remove_tree(path)
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
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


def remove_stale_checkpoints(run_dir: Path, every: bool = False) -> list[Path]:
    """Remove the temporary checkpoint directories that interrupted runs left in ``run_dir``.

    They are incomplete by construction (a complete one is renamed). With ``every`` (the caller
    holds the run's lock, so no other run writes there) all of them go; otherwise one whose
    writing process (the pid in its name) is still alive is left alone. Returns those removed.
    """
    removed = []
    if not run_dir.is_dir():
        return removed
    for p in run_dir.iterdir():
        name = p.name
        if not (name.startswith(_TEMP_PREFIX + CHECKPOINT_PREFIX) and _TEMP_MARK in name) or not p.is_dir():
            continue
        pid = name.rsplit(_TEMP_MARK, 1)[1]
        if not every and pid.isdigit() and _pid_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


@contextmanager
def run_lock(run_dir: Path):
    """Hold the run directory's lock while inside (created with its parents): DPTError when another run
    holds it. Yields whether a lock is held (False on a file system without locks)."""
    make_parent(run_dir)
    with output_lock(run_dir, f"another training run is writing {run_dir}") as locked:
        try:
            run_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise DPTError(f"cannot create {run_dir}: {why(e)}") from None
        yield locked


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    found = []
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            suffix = p.name[len(CHECKPOINT_PREFIX) :]
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
    """The trained model at the top of the run directory: what from_pretrained and the CLI load.

    Each file is written whole (io/files.atomic_write); the weights go last, so a run killed
    meanwhile leaves the previous export's weights beside configs that describe them too.
    """
    try:
        atomic_write_text(run_dir / CONFIG_NAME, json.dumps(processor.to_dict(), indent=2, sort_keys=True) + "\n")
        save_pretrained(model, run_dir)
    except OSError as e:
        raise DPTError(f"cannot write the trained model to {run_dir}: {why(e)}") from None

"""Convert a transformers DPT checkpoint into a dpt_mlx checkpoint, and verify the result.

The output directory holds ``config.json``, ``model.safetensors`` (MLX layout, tagged
``format: mlx``) and ``preprocessor_config.json`` when the source has one; the source is only read.

How the output is published, whole or not at all:

- The checkpoint is written and verified in a work directory beside the target
  (``.<name>.tmp-<random>``), then renamed to the target in one step, so a reader never sees a
  half-written directory and an interrupted conversion leaves the target as it was.
- One conversion at a time per target: the conversion holds an exclusive ``flock`` on
  ``.<name>.lock`` beside the target from its last check of the target to the rename. A second
  one into the same target fails at once ("another conversion is writing ..."). The kernel drops
  the lock when its process dies, even by SIGKILL, so a killed conversion never blocks the next;
  the lock file is removed on release (a locker checks it still holds the file under that name).
  Holding the lock, a conversion knows every work directory of its target is a dead one's and
  removes them.
- The rename never replaces a directory that ``--overwrite`` did not ask to replace: it is
  ``renameat2(RENAME_NOREPLACE)`` on Linux, ``renamex_np(RENAME_EXCL)`` on macOS, so a target that
  something else created meanwhile makes the conversion fail ("... appeared while this
  conversion was writing it"). With ``--overwrite`` the new directory is swapped with the old one
  in one step (``RENAME_EXCHANGE`` / ``RENAME_SWAP``) and the old one removed. Where the system or
  the file system lacks these, a plain rename under the lock (after a last check) stands in, and
  an overwrite renames the old directory aside first; SIGINT, SIGTERM and SIGHUP wait while the
  names change, so the pair is never split.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..errors import CheckpointError, DPTError
from ..models import load_model
from ..processing.auto import load_processor
from ..processing.image_processor import CONFIG_NAME as PROCESSOR_CONFIG
from .checkpoint import load_pretrained, parse_dtype, save_pretrained
from .files import (
    STALE_SECONDS,
    make_parent,
    output_lock,
    publish_directory,
    remove_tree,
    signals_deferred,
    umask_mode,
    why,
)
from .hub import resolve
from .quantize import VERIFY_TOLERANCE, Quantization, quantize_model

SIDE_FILES = (PROCESSOR_CONFIG,)
WORK_MARK = ".tmp-"  # .<name>.tmp-<random>: a conversion's work directory


def probe_size(config) -> tuple[int, int]:
    """An input size the model accepts: the checkpoint's own image size."""
    size = getattr(config, "image_size", None)
    backbone = getattr(config, "backbone_config", None) or {}
    if backbone.get("image_size"):
        size = backbone["image_size"]
    size = size or 384
    return tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))


def _first_output(out) -> mx.array:
    for key in ("predicted_depth", "logits", "last_hidden_state"):
        if key in out:
            return out[key]
    raise DPTError("model returned no output to verify")


def verify(reference, converted, seed: int = 0) -> float:
    """Run both models on the same random input; return max|a - b| / max|a|."""
    h, w = probe_size(reference.config)
    x = np.random.default_rng(seed).standard_normal((1, reference.config.num_channels, h, w)).astype(np.float32)
    a = np.array(_first_output(reference(x)).astype(mx.float32))
    if not np.isfinite(a).all():  # a NaN would fail the check below with "relative error nan"
        dtype = str(reference.dtype).removeprefix("mlx.core.")
        hint = "; convert to bfloat16 or float32 instead" if dtype == "float16" else ""
        raise CheckpointError(
            f"the model's output is not finite in {dtype} (it overflows or the weights are broken){hint}"
        )
    b = np.array(_first_output(converted(x)).astype(mx.float32))
    if a.shape != b.shape:
        raise DPTError(f"converted model output shape {b.shape} differs from the source's {a.shape}")
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def convert(
    hf_path,
    mlx_path,
    dtype=None,
    overwrite: bool = False,
    verify_tol: float = 1e-6,
    quantize: bool = False,
    q_bits: int = 8,
    q_group_size: int = 64,
    report: dict | None = None,
) -> Path:
    """Convert ``hf_path`` (local dir or hub id) into ``mlx_path``; returns the output directory.

    With ``quantize`` the transformer's linear layers are stored with ``q_bits``-bit weights in
    groups of ``q_group_size`` (see dpt_mlx.quantize). The written checkpoint must then reproduce
    the quantised model exactly (``verify_tol``) and stay within the measured quantisation error
    of the unquantised model (``quantize.VERIFY_TOLERANCE``); that error is stored in ``report``
    (a dict, if given) as ``"quantization_error"``, and ``"published": True`` once the output is
    in place (an interruption after that point finds the conversion complete).
    """
    target = Path(mlx_path).expanduser()
    report = {} if report is None else report
    dtype = parse_dtype(dtype)
    spec = None
    if quantize:
        spec = Quantization(bits=q_bits, group_size=q_group_size)  # ValueError names a bad value
    _check_target(target, overwrite)
    source = resolve(hf_path)
    if _inside(source, target):
        what = "is" if source.resolve() == target.resolve() else "contains"
        raise DPTError(f"the output directory {what} the source checkpoint; choose another --mlx-path")

    model = load_model(source, dtype=dtype)
    if (source / PROCESSOR_CONFIG).is_file():
        load_processor(source, model.config)  # one that does not load is not copied: a CheckpointError
    reference = None
    if spec is not None:
        reference = load_model(source, dtype=dtype)
        quantize_model(model, bits=spec.bits, group_size=spec.group_size)
    make_parent(target)
    with output_lock(target, f"another conversion is writing {target}") as locked:
        if os.path.lexists(target) and not overwrite:
            raise DPTError(f"{target} appeared while this conversion was running; use --overwrite to replace it")
        _check_target(target, overwrite)
        remove_work_dirs(target, older_than=0.0 if locked else STALE_SECONDS)
        _write(model, reference, spec, source, target, overwrite, verify_tol, report)
    return target


def _check_target(target: Path, overwrite: bool) -> None:
    if os.path.lexists(target) and not overwrite:
        raise DPTError(f"{target} already exists; pass --overwrite to replace it")
    if os.path.lexists(target) and not target.is_dir():
        raise DPTError(f"{target} is a file; choose a directory for the converted model")


def _inside(source: Path, target: Path) -> bool:
    """Whether ``source`` is ``target`` or lies inside it (replacing the target would delete it)."""
    try:
        return source.resolve().is_relative_to(target.resolve())
    except OSError:
        return False


def _write(
    model, reference, spec, source: Path, target: Path, overwrite: bool, verify_tol: float, report: dict
) -> None:
    """Write, load back and verify the checkpoint in a work directory, then publish it as ``target``."""
    try:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{WORK_MARK}"))
    except OSError as e:
        raise DPTError(f"cannot write to {target.parent}: {why(e)}") from None
    old = None
    try:
        try:
            os.chmod(tmp, umask_mode(0o777))
            save_pretrained(model, tmp)
            for name in SIDE_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, tmp / name)
        except OSError as e:  # a full disk, a quota, an I/O error
            raise DPTError(f"cannot write {target}: {why(e)}") from None
        converted = load_pretrained(tmp, type(model))
        err = verify(model, converted)
        if not err <= verify_tol:
            raise CheckpointError(f"converted model differs from the source (relative error {err:.3g})")
        if reference is not None:
            err = verify(reference, converted)
            if not err <= VERIFY_TOLERANCE[spec.bits]:
                raise CheckpointError(
                    f"the {spec.bits}-bit model differs from the unquantized one by {err:.3g} (relative), more "
                    f"than the {VERIFY_TOLERANCE[spec.bits]:g} measured on DPT/Depth Anything models; "
                    "try --q-bits 8 or a smaller --q-group-size"
                )
            report["quantization_error"] = err
        with signals_deferred():
            try:
                old = publish_directory(tmp, target, overwrite)
            except FileExistsError:
                raise DPTError(
                    f"{target} appeared while this conversion was writing it; use --overwrite to replace it"
                ) from None
            except OSError as e:
                raise DPTError(f"cannot publish {target}: {why(e)}") from None
            report["published"] = True
    finally:
        for path in (tmp, old):
            if path is not None and os.path.lexists(path):
                remove_tree(path)


def remove_work_dirs(target: Path, older_than: float = STALE_SECONDS) -> None:
    """Remove the work directories (``.<name>.tmp-*``) that killed conversions into ``target`` left.

    Holding the target's lock, every one is a dead conversion's (``older_than=0``); without a lock
    only those untouched for ``older_than`` seconds are, as a running conversion keeps its own.
    """
    now = time.time()
    for path in target.parent.glob(f".{target.name}{WORK_MARK}*"):
        try:
            if path.is_dir() and not path.is_symlink() and now - path.stat().st_mtime >= older_than:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass

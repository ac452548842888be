"""Convert a transformers DPT checkpoint into a dpt_mlx checkpoint, and verify the result.

The output directory holds ``config.json``, ``model.safetensors`` (MLX layout, tagged
``format: mlx``) and ``preprocessor_config.json`` when the source has one. It is written
into a temporary directory beside the target and renamed at the end, so an interrupted
conversion leaves nothing half-written; the source is only read.
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
from .checkpoint import load_pretrained, parse_dtype, save_pretrained
from .files import STALE_SECONDS, umask_mode
from .hub import resolve
from .quantize import VERIFY_TOLERANCE, Quantization, quantize_model

SIDE_FILES = ("preprocessor_config.json",)


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
        raise CheckpointError(f"the model's output is not finite in {dtype} (it overflows or the weights are broken)"
                              f"{hint}")
    b = np.array(_first_output(converted(x)).astype(mx.float32))
    if a.shape != b.shape:
        raise DPTError(f"converted model output shape {b.shape} differs from the source's {a.shape}")
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def convert(hf_path, mlx_path, dtype=None, overwrite: bool = False, verify_tol: float = 1e-6,
            quantize: bool = False, q_bits: int = 8, q_group_size: int = 64, report: dict | None = None) -> Path:
    """Convert ``hf_path`` (local dir or hub id) into ``mlx_path``; returns the output directory.

    With ``quantize`` the transformer's linear layers are stored with ``q_bits``-bit weights in
    groups of ``q_group_size`` (see dpt_mlx.quantize). The written checkpoint must then reproduce
    the quantised model exactly (``verify_tol``) and stay within the measured quantisation error
    of the unquantised model (``quantize.VERIFY_TOLERANCE``); that error is stored in ``report``
    (a dict, if given) as ``"quantization_error"``.
    """
    target = Path(mlx_path).expanduser()
    dtype = parse_dtype(dtype)
    spec = None
    if quantize:
        spec = Quantization(bits=q_bits, group_size=q_group_size)  # ValueError names a bad value
    if target.exists() and not overwrite:
        raise DPTError(f"{target} already exists; pass --overwrite to replace it")
    if target.exists() and not target.is_dir():
        raise DPTError(f"{target} is a file; choose a directory for the converted model")
    source = resolve(hf_path)
    if target.exists() and target.resolve() == source.resolve():
        raise DPTError("the output directory is the source checkpoint; choose another --mlx-path")

    model = load_model(source, dtype=dtype)
    reference = None
    if spec is not None:
        reference = load_model(source, dtype=dtype)
        quantize_model(model, bits=spec.bits, group_size=spec.group_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        os.chmod(tmp, umask_mode(0o777))
        save_pretrained(model, tmp)
        for name in SIDE_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
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
            if report is not None:
                report["quantization_error"] = err
        if target.exists():
            old = target.with_name(f".{target.name}.old-{tmp.name[-8:]}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_work_dirs(target: Path) -> None:
    """Remove the work directories (``.<name>.tmp-*``, ``.<name>.old-*``) that a killed conversion
    into ``target`` left behind; only those untouched for a while, so a running one keeps its own."""
    now = time.time()
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for path in target.parent.glob(pattern):
            try:
                if path.is_dir() and not path.is_symlink() and now - path.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass

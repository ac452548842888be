"""Checkpoints: read one strictly (safetensors only, nothing unpickled), build its model, write one.

A directory written by dpt_mlx carries ``{"format": "mlx"}`` in its safetensors metadata and
loads as is; a transformers directory goes through the weight table (dpt_mlx.io.weights) first.
After loading, :func:`dpt_mlx.cpu.accelerate` gives the model the CPU backend's fast layers when
MLX computes on the CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .. import cpu
from ..config import load_config
from ..errors import CheckpointError, first_line
from . import weights as W
from .files import atomic_write, atomic_write_text, umask_mode
from .hub import HubOptions, resolve
from .quantize import Quantization, prepare

__all__ = ["DTYPES", "HubOptions", "cast_model", "load_pretrained", "load_strict", "parse_dtype", "pick_dtype",
           "read_weights", "save_pretrained", "umask_mode", "weight_files"]

MLX_FORMAT = "mlx"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def parse_dtype(dtype) -> mx.Dtype | None:
    if dtype is None or isinstance(dtype, mx.Dtype):
        return dtype
    name = str(dtype).replace("mlx.core.", "").replace("torch.", "")
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[name]


def pick_dtype(dtype, torch_dtype):
    """``dtype``, or transformers' spelling ``torch_dtype`` ("auto" meaning the checkpoint's own)."""
    if dtype is not None and torch_dtype is not None and parse_dtype(dtype) != parse_dtype(torch_dtype):
        raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one of them")
    if torch_dtype == "auto":
        return dtype
    return dtype if dtype is not None else torch_dtype


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (one file, or the shards of an index)."""
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"cannot read {index}: {e}") from None
        files = [directory / s for s in shards]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists missing shard {missing[0]}")
        return files
    single = directory / WEIGHTS_NAME
    if single.is_file() or single.is_symlink():  # a broken link or a loop: read_weights says which
        return [single]
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt*")):
        raise CheckpointError(
            f"{directory} has PyTorch pickle weights only; dpt_mlx loads safetensors only "
            "(re-save with transformers' save_pretrained, which writes model.safetensors)"
        )
    raise CheckpointError(f"no {WEIGHTS_NAME} in {directory}")


def read_weights(directory: Path) -> tuple[dict[str, mx.array], dict[str, str]]:
    """All tensors of a checkpoint and the metadata of its first file."""
    tensors, metadata = {}, {}
    for i, f in enumerate(weight_files(directory)):
        try:
            with open(f, "rb"):  # mx.load says only "Failed to open file"; the OS says why
                pass
            data, meta = mx.load(str(f), return_metadata=True)
        except OSError as e:  # permission denied, a symbolic link loop, an I/O error
            raise CheckpointError(f"cannot read {f}: {(e.strerror or first_line(e)).lower()}") from None
        except Exception as e:  # noqa: BLE001 - mx.load raises RuntimeError/ValueError for bad files
            reason = first_line(e)
            raise CheckpointError(f"cannot read {f}: {reason}") from None
        if i == 0:
            metadata = dict(meta or {})
        tensors.update(data)
    return tensors, metadata


def load_strict(model: nn.Module, weights: dict[str, mx.array]) -> None:
    """Load every parameter; a missing, unexpected or mis-shaped tensor names itself."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint is missing tensor {missing[0]}{more}")
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise CheckpointError(f"checkpoint has unexpected tensor {unexpected[0]}{more} for this model/config")
    for key, value in weights.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"tensor {key} has shape {tuple(value.shape)} but the config implies {tuple(expected[key].shape)}"
            )
    model.update(tree_unflatten(list(weights.items())))


def cast_model(model: nn.Module, dtype: mx.Dtype | None) -> None:
    """Cast floating-point parameters to ``dtype``; integer (quantised) arrays stay as they are, and
    so do BatchNorm running statistics in half precision (a trained variance can exceed float16's
    range; dpt_mlx.layers.BatchNorm normalises half-precision inputs in float32)."""
    if dtype is None:
        return
    half = dtype in (mx.float16, mx.bfloat16)

    def cast(key, v):
        if not mx.issubdtype(v.dtype, mx.floating) or (half and key.endswith((".running_mean", ".running_var"))):
            return v
        return v.astype(dtype)

    model.update(tree_unflatten([(k, cast(k, v)) for k, v in tree_flatten(model.parameters())]))


def load_pretrained(path_or_repo_id, model_class, dtype=None, hub: HubOptions | None = None) -> nn.Module:
    """Build the model of a checkpoint directory or Hub repo id and load its weights strictly.

    ``model_class`` is a model class, or a function ``(config, weights) -> class`` (the Auto case).
    """
    dtype = parse_dtype(dtype)
    directory = resolve(path_or_repo_id, hub=hub)
    config = load_config(directory / "config.json")
    weights, metadata = read_weights(directory)
    if not isinstance(model_class, type):
        model_class = model_class(config, weights)
    model = model_class.build(config, weights)
    quantization = _quantization(directory)
    mlx_format = metadata.get("format") == MLX_FORMAT
    if quantization is not None:
        if not mlx_format:
            raise CheckpointError(f"{directory}: a quantized checkpoint must be in MLX format (written by convert.py)")
        prepare(model, quantization)
    weights = model.adapt_checkpoint_keys(weights)
    if not mlx_format:
        weights = W.sanitize(model, weights, model.head_kind)
    load_strict(model, weights)
    cast_model(model, dtype)
    mx.eval(model.parameters())
    model.eval()
    return cpu.accelerate(model)


def _quantization(directory: Path):
    """The ``"quantization"`` entry of a checkpoint's config.json (mlx-lm convention), or None."""
    try:
        entry = json.loads((directory / "config.json").read_text()).get("quantization")
    except (OSError, ValueError, AttributeError):
        return None  # load_config has already reported an unreadable config
    if entry is None:
        return None
    try:
        return Quantization.from_dict(entry)
    except ValueError as e:
        raise CheckpointError(f"{directory / 'config.json'}: {e}") from None


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> None:
    """config.json + model.safetensors in MLX layout, each written to a temporary name then moved in place
    (io/files.atomic_write, the one writer)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = str(model.dtype).replace("mlx.core.", "")
    if getattr(model, "quantization", None) is not None:
        config["quantization"] = model.quantization.to_dict()
    atomic_write_text(path / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = dict(tree_flatten(model.parameters()))
    atomic_write(path / WEIGHTS_NAME, lambda f: mx.save_safetensors(f, tensors, metadata={"format": MLX_FORMAT}))

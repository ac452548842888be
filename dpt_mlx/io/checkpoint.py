"""Checkpoints: read one strictly (safetensors only, nothing unpickled), build its model, write one.

A directory written by dpt_mlx carries ``{"format": "mlx"}`` in its safetensors metadata and
loads as is; a transformers directory goes through the weight table (dpt_mlx.io.weights) first.
After loading, :func:`dpt_mlx.cpu.accelerate` gives the model the CPU backend's fast layers when
MLX computes on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .. import cpu
from ..configs.load import load_config
from ..errors import CheckpointError, first_line
from . import weights as W
from .files import atomic_write, atomic_write_text, umask_mode
from .hub import HubOptions, resolve
from .quantize import Quantization, prepare

__all__ = [
    "DTYPES",
    "HubOptions",
    "cast_model",
    "load_pretrained",
    "load_strict",
    "parse_dtype",
    "pick_dtype",
    "read_weights",
    "save_pretrained",
    "umask_mode",
    "weight_files",
]

MLX_FORMAT = "mlx"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
MAX_HEADER = 100 * 2**20  # bytes: the safetensors format's own limit on the JSON header
# safetensors dtype -> bytes per element
ITEM_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
    "C64": 8,
}


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


def _shard_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index: tensor name -> shard file name (in its folder)."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {index}: {getattr(e, 'strerror', None) or first_line(e)}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f'{index} is not a safetensors index: it needs a "weight_map" object mapping tensor '
            "names to shard file names"
        )
    if not weight_map:
        raise CheckpointError(f"{index} names no tensors")
    for key, shard in weight_map.items():
        if shard in ("", ".", "..") or os.path.basename(shard) != shard or os.path.isabs(shard):
            raise CheckpointError(
                f"{index} puts tensor {key} in {shard!r}, which is not a file name in "
                f"{index.parent}; a shard must lie beside its index"
            )
    return weight_map


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (one file, or the shards of an index)."""
    index = directory / INDEX_NAME
    if index.is_file():
        files = [directory / s for s in sorted(set(_shard_map(index).values()))]
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


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"cannot read {path}: the file is damaged ({why}); download or convert it again")


def check_safetensors(path: Path) -> None:
    """A CheckpointError unless the header of the safetensors file ``path`` describes its data exactly.

    The header is read alone (not the data): its length, its JSON, each tensor's dtype, shape and byte
    range. The ranges must tile the data from its first byte to the end of the file, without gaps or
    overlaps, as the format requires, so a file cut short or a header that lies about offsets or shapes
    is refused before any tensor is made from it.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise _damaged(path, f"it is cut short ({size} bytes, not even the header's length)")
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(size - 8, MAX_HEADER):
            what = (
                "longer than the format allows"
                if length > MAX_HEADER
                else f"but the file has {size - 8} bytes after it"
            )
            raise _damaged(path, f"its header claims {length} bytes, {what} (cut short?)")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _damaged(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _damaged(path, "its __metadata__ is not an object of strings")
            continue
        spans.append(_span(path, key, entry))
    data_size, end = size - 8 - length, 0
    for begin, stop, key in sorted(spans, key=lambda s: (s[0], s[1])):
        if begin != end:
            where = "overlaps the data of another tensor" if begin < end else f"leaves a gap before it at byte {end}"
            raise _damaged(path, f"the header's byte range of tensor {key} ({begin}..{stop}) {where}")
        end = stop
    if end != data_size:
        what = "cut short" if end > data_size else "followed by bytes that belong to no tensor"
        raise _damaged(path, f"the header describes {end} bytes of tensor data but the file holds {data_size} ({what})")


def _span(path: Path, key: str, entry) -> tuple[int, int, str]:
    """(begin, end, key) of one tensor's header entry, checked against its dtype and shape."""
    ok = isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
    offsets = entry.get("data_offsets") if ok else None
    ints = (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in offsets + entry["shape"])
    )
    if not ints:
        raise _damaged(
            path,
            f"the header's entry for tensor {key} is not "
            '{"dtype", "shape", "data_offsets"} with non-negative integers',
        )
    item = ITEM_SIZES.get(entry["dtype"])
    if item is None:
        raise _damaged(path, f"tensor {key} has unknown dtype {entry['dtype']!r}")
    begin, stop = offsets
    if stop - begin != math.prod(entry["shape"]) * item:
        raise _damaged(
            path,
            f"tensor {key} of shape {tuple(entry['shape'])} and dtype {entry['dtype']} needs "
            f"{math.prod(entry['shape']) * item} bytes but the header gives it {stop - begin}",
        )
    return begin, stop, key


def read_weights(directory: Path) -> tuple[dict[str, mx.array], dict[str, str]]:
    """All tensors of a checkpoint and the metadata of its first file; a sharded checkpoint's shards
    must hold exactly the tensors its index assigns them."""
    tensors, metadata = {}, {}
    index = directory / INDEX_NAME
    weight_map = _shard_map(index) if index.is_file() else None
    for i, f in enumerate(weight_files(directory)):
        try:
            check_safetensors(f)
            data, meta = mx.load(str(f), return_metadata=True)
        except CheckpointError:
            raise
        except OSError as e:  # permission denied, a symbolic link loop, an I/O error
            raise CheckpointError(f"cannot read {f}: {(e.strerror or first_line(e)).lower()}") from None
        except Exception as e:  # noqa: BLE001 - mx.load raises RuntimeError/ValueError for bad files
            reason = first_line(e)
            raise CheckpointError(f"cannot read {f}: {reason}") from None
        if weight_map is not None:
            _check_shard(index, f, data, weight_map)
        if i == 0:
            metadata = dict(meta or {})
        tensors.update(data)
    return tensors, metadata


def _check_shard(index: Path, shard: Path, data: dict, weight_map: dict[str, str]) -> None:
    """A CheckpointError unless ``shard`` holds exactly the tensors ``index`` assigns it."""
    listed = {k for k, v in weight_map.items() if v == shard.name}
    absent = sorted(listed - set(data))
    if absent:
        raise CheckpointError(
            f"{index} puts tensor {absent[0]} in {shard.name}, which does not hold it "
            "(the index and its shards disagree)"
        )
    extra = sorted(set(data) - listed)
    if extra:
        where = f"puts it in {weight_map[extra[0]]}" if extra[0] in weight_map else "does not list it"
        raise CheckpointError(
            f"{shard} holds tensor {extra[0]} but {index.name} {where} (the index and its shards disagree)"
        )


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
        floating = mx.issubdtype(expected[key].dtype, mx.floating)
        if mx.issubdtype(value.dtype, mx.floating) != floating:  # half vs full precision is a cast, not an error
            kind = "a floating-point" if floating else f"an integer ({_dtype_name(expected[key].dtype)})"
            raise CheckpointError(
                f"tensor {key} is {_dtype_name(value.dtype)} but the model has {kind} parameter "
                "there; the checkpoint is damaged or from another model"
            )
    model.update(tree_unflatten(list(weights.items())))


def _dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).removeprefix("mlx.core.")


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
    try:
        model = model_class.build(config, weights)
    except (OverflowError, MemoryError, ValueError) as e:  # sizes no array can have
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(
            f"{directory / 'config.json'} describes a {model_class.__name__} that cannot be built "
            f"({first_line(e)}); its sizes are wrong"
        ) from None
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

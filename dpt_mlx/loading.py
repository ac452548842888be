"""Find a checkpoint (local directory or Hub repo id), build its model, load it strictly.

Weights are read from safetensors only; nothing is unpickled. A directory written by the
converter carries ``{"format": "mlx"}`` in its safetensors metadata and loads as is; a
transformers directory goes through :mod:`dpt_mlx.weights` first.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from . import weights as W
from .config import BaseConfig, load_config
from .errors import CheckpointError, UnsupportedModelError

MLX_FORMAT = "mlx"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def parse_dtype(dtype) -> mx.Dtype | None:
    if dtype is None or isinstance(dtype, mx.Dtype):
        return dtype
    name = str(dtype).replace("mlx.core.", "").replace("torch.", "")
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[name]


def resolve(path_or_repo_id: str | os.PathLike, patterns=("*.json", "*.safetensors")) -> Path:
    """A local directory as is; otherwise download (or reuse the cache of) a Hub repo."""
    path = Path(os.path.expanduser(str(path_or_repo_id)))
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if path.exists():
        raise CheckpointError(f"{text} is a file; pass the checkpoint directory that contains it")
    if not _REPO_ID.match(text) or text.startswith((".", "/", "~")):
        raise CheckpointError(f"no such directory: {text}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text, allow_patterns=list(patterns)))
    except Exception as e:  # noqa: BLE001 - every hub failure becomes one line for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{text} is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({type(e).__name__}: {reason}); check the name and your network, or pass a local directory"
        ) from None


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
    if single.is_file():
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
            data, meta = mx.load(str(f), return_metadata=True)
        except Exception as e:  # noqa: BLE001 - mx.load raises RuntimeError/ValueError for bad files
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot read {f}: {reason}") from None
        if i == 0:
            metadata = dict(meta or {})
        tensors.update(data)
    return tensors, metadata


def model_class_for(config: BaseConfig, weights: dict | None = None):
    """The model class a checkpoint was saved from (``architectures``, else the task its keys show)."""
    from .modeling import MODEL_CLASSES

    for name in config.architectures or []:
        if name in MODEL_CLASSES:
            return MODEL_CLASSES[name]
    if config.architectures:
        raise UnsupportedModelError(
            f"architecture {config.architectures[0]} is not supported; supported: {', '.join(MODEL_CLASSES)}"
        )
    keys = weights.keys() if weights is not None else ()
    if any(k.startswith(("auxiliary_head.", "head.head.1.", "head.batch_norm.")) for k in keys):
        return MODEL_CLASSES["DPTForSemanticSegmentation"]
    if any(k.startswith("head.") for k in keys) or weights is None:
        return MODEL_CLASSES["DPTForDepthEstimation"]
    return MODEL_CLASSES["DPTModel"]


def head_kind(model_class) -> str | None:
    from .modeling import DPTForDepthEstimation, DPTForSemanticSegmentation

    if issubclass(model_class, DPTForSemanticSegmentation):
        return "segmentation"
    if issubclass(model_class, DPTForDepthEstimation):
        return "depth"
    return None


def build_model(config: BaseConfig, model_class, weights: dict[str, mx.array]) -> nn.Module:
    from .modeling import DPTModel

    if model_class is DPTModel:
        has_pooler = any(k.startswith(("pooler.", "dpt.pooler.")) for k in weights)
        return DPTModel(config, add_pooling_layer=has_pooler)
    return model_class(config)


def _match_base_prefix(model: nn.Module, weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """DPTModel from a task checkpoint keeps the ``dpt.`` tensors; a task model from a base one adds it."""
    from .modeling import DPTModel

    if isinstance(model, DPTModel) and any(k.startswith("dpt.") for k in weights):
        return {k[4:]: v for k, v in weights.items() if k.startswith("dpt.")}
    if "dpt" in model and not any(k.startswith("dpt.") for k in weights):
        return {("dpt." + k if k.startswith(("embeddings.", "encoder.", "layernorm.")) else k): v
                for k, v in weights.items()}
    return weights


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
    """Cast floating-point parameters to ``dtype``; integer (e.g. quantised) arrays stay as they are.

    For float16/bfloat16 the linear layers become :class:`dpt_mlx.kernels.Linear` (same arrays),
    which multiplies in float32 on the CPU, where MLX's half-precision matmul has no BLAS, and
    BatchNorm layers become :class:`dpt_mlx.kernels.BatchNorm`, which keeps its running
    statistics in float32 (a trained variance can exceed float16's range) and normalises in float32.
    """
    if dtype is None:
        return
    half = dtype in (mx.float16, mx.bfloat16)

    def cast(key, v):
        if not mx.issubdtype(v.dtype, mx.floating) or (half and key.endswith((".running_mean", ".running_var"))):
            return v
        return v.astype(dtype)

    model.update(tree_unflatten([(k, cast(k, v)) for k, v in tree_flatten(model.parameters())]))
    if half:
        from . import kernels

        kernels.replace_modules(model, nn.Linear, kernels.half_linear)
        kernels.replace_modules(model, nn.BatchNorm, kernels.half_batch_norm)


def load_pretrained(path_or_repo_id, model_class=None, dtype=None, **_ignored) -> nn.Module:
    """Build the model of a checkpoint directory or Hub repo id and load its weights strictly."""
    dtype = parse_dtype(dtype)
    directory = resolve(path_or_repo_id)
    config = load_config(directory / "config.json")
    weights, metadata = read_weights(directory)
    if model_class is None:
        model_class = model_class_for(config, weights)
    model = build_model(config, model_class, weights)
    quantization = _quantization(directory)
    if quantization is not None:
        if metadata.get("format") != MLX_FORMAT:
            raise CheckpointError(f"{directory}: a quantized checkpoint must be in MLX format (written by convert.py)")
        from .quantize import prepare

        prepare(model, quantization)
    if metadata.get("format") != MLX_FORMAT:
        weights = W.sanitize(model, _match_base_prefix(model, weights), head_kind(type(model)))
    else:
        weights = _match_base_prefix(model, weights)
    load_strict(model, weights)
    cast_model(model, dtype)
    mx.eval(model.parameters())
    model.eval()
    from .kernels import raise_cpu_cache_limit

    raise_cpu_cache_limit()  # large activations reuse memory instead of page-faulting (CPU only)
    return model


def _quantization(directory: Path):
    """The ``"quantization"`` entry of a checkpoint's config.json (mlx-lm convention), or None."""
    try:
        entry = json.loads((directory / "config.json").read_text()).get("quantization")
    except (OSError, ValueError, AttributeError):
        return None  # load_config has already reported an unreadable config
    if entry is None:
        return None
    from .quantize import Quantization

    try:
        return Quantization.from_dict(entry)
    except ValueError as e:
        raise CheckpointError(f"{directory / 'config.json'}: {e}") from None


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> None:
    """config.json + model.safetensors in MLX layout, written to a temporary name then moved in place."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = str(model.dtype).replace("mlx.core.", "")
    if getattr(model, "quantization", None) is not None:
        config["quantization"] = model.quantization.to_dict()
    _atomic_write_text(path / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = dict(tree_flatten(model.parameters()))
    tmp = path / f".{WEIGHTS_NAME}.tmp.safetensors"
    mx.save_safetensors(str(tmp), tensors, metadata={"format": MLX_FORMAT})
    os.replace(tmp, path / WEIGHTS_NAME)


def umask_mode(mode: int) -> int:
    """``mode`` less the process umask: what a plainly created file or directory would get."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _atomic_write_text(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_model(path_or_repo_id, dtype=None) -> nn.Module:
    """The task model a checkpoint was saved as (depth or segmentation), like an Auto class."""
    return load_pretrained(path_or_repo_id, model_class=None, dtype=dtype)


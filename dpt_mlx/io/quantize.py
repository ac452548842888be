"""8-bit and 4-bit weights for the transformer's linear layers (MLX affine quantisation).

What is quantised: every ``nn.Linear`` inside the backbone's transformer blocks (paths under
``encoder.``: attention query/key/value/output and the MLP; in DPT-Large that is 302M of its
343M parameters) whose input width is a multiple of the group size. The patch embedding,
position embeddings, BiT CNN, neck, readout projections and heads stay in floating point,
and so do the tiny continuous-position-bias MLPs of Swinv2.

A quantised checkpoint is an MLX-format directory whose ``config.json`` carries
``"quantization": {"bits": 4, "group_size": 64}`` (the mlx-lm convention); its
``model.safetensors`` holds each quantised layer's packed ``weight`` (uint32), ``scales`` and
``biases`` next to its float ``bias``. :func:`dpt_mlx.io.checkpoint.load_pretrained` rebuilds the
same layers (:func:`prepare`) and loads it strictly. Write one with
``python convert.py --hf-path ID --mlx-path DIR --quantize --q-bits 4 --q-group-size 64`` or
:func:`quantize_model` + ``save_pretrained``.

The layers are MLX's own ``nn.QuantizedLinear``; on the CPU backend dpt_mlx.cpu swaps in a
layer with the same arrays that runs faster there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map_with_path

from .. import cpu

__all__ = ["DEFAULT_GROUP_SIZE", "VERIFY_TOLERANCE", "Quantization", "prepare", "quantizable", "quantize_model"]

DEFAULT_GROUP_SIZE = 64
SUPPORTED_BITS = (4, 8)
SUPPORTED_GROUP_SIZES = (32, 64, 128)

# The converter's check of a quantised checkpoint against the unquantised model: max|q - f| / max|f|
# on a random input at the checkpoint's image size. Measured with ``python -m benchmarks.compare``'s
# four model shapes (DPT-Large, DPT-Hybrid, DPT-DINOv2-small, Depth-Anything-small; random weights
# at trained scale), group sizes 32/64/128: 8-bit 0.012-0.040, 4-bit 0.13-0.47. The bounds are
# 2.5x (8-bit) and 1.6x (4-bit) the worst of those: 4-bit weights are lossy on these models.
VERIFY_TOLERANCE = {8: 0.1, 4: 0.75}


@dataclass(frozen=True)
class Quantization:
    """The ``"quantization"`` entry of a quantised checkpoint's config.json."""

    bits: int = 8
    group_size: int = DEFAULT_GROUP_SIZE

    def __post_init__(self):
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"quantization bits={self.bits!r} is not one of {SUPPORTED_BITS}")
        if self.group_size not in SUPPORTED_GROUP_SIZES:
            raise ValueError(f"quantization group_size={self.group_size!r} is not one of {SUPPORTED_GROUP_SIZES}")

    @classmethod
    def from_dict(cls, data: Any) -> Quantization:
        if not isinstance(data, dict) or not {"bits", "group_size"} <= set(data):
            raise ValueError(f'"quantization" must be {{"bits": ..., "group_size": ...}}, got {data!r}')
        return cls(bits=data["bits"], group_size=data["group_size"])

    def to_dict(self) -> dict[str, int]:
        return {"bits": self.bits, "group_size": self.group_size}


_BLOCK = re.compile(r"(^|\.)layer\.\d+\.")  # a transformer block outside an ``encoder`` (DINOv3)


def quantizable(path: str, module: nn.Module, group_size: int = DEFAULT_GROUP_SIZE) -> bool:
    """The predicate: a plain linear layer of the backbone's transformer blocks (under an ``encoder``,
    or DINOv3's ``layer.N`` directly) whose input width is a multiple of ``group_size`` (not a
    position-bias MLP)."""
    return (
        isinstance(module, nn.Linear)
        and (".encoder." in f".{path}" or _BLOCK.search(path) is not None)
        and "position" not in path
        and module.weight.shape[-1] % group_size == 0
    )


def _quantized_layer(linear: nn.Linear, spec: Quantization, empty: bool) -> nn.QuantizedLinear:
    """An ``nn.QuantizedLinear`` holding ``linear`` quantised (or zeros of the right shapes)."""
    out_dims, in_dims = linear.weight.shape
    layer = nn.QuantizedLinear(spec.group_size, 1, bias=False, group_size=spec.group_size, bits=spec.bits)
    if empty:  # shapes only: strict loading fills them
        layer.weight = mx.zeros((out_dims, in_dims * spec.bits // 32), dtype=mx.uint32)
        layer.scales = mx.zeros((out_dims, in_dims // spec.group_size), dtype=linear.weight.dtype)
        layer.biases = mx.zeros((out_dims, in_dims // spec.group_size), dtype=linear.weight.dtype)
    else:
        layer.weight, layer.scales, layer.biases = mx.quantize(linear.weight, spec.group_size, spec.bits)
    if "bias" in linear:
        layer.bias = linear.bias
    layer.train(linear.training)
    return layer


def _replace(model: nn.Module, spec: Quantization, empty: bool) -> int:
    count = 0

    def swap(path, module):
        nonlocal count
        if quantizable(path, module, spec.group_size):
            count += 1
            return _quantized_layer(module, spec, empty)
        return module

    model.update_modules(tree_map_with_path(swap, model.leaf_modules(), is_leaf=nn.Module.is_module))
    model.quantization = spec
    return count


def quantize_model(model: nn.Module, bits: int = 8, group_size: int = DEFAULT_GROUP_SIZE) -> nn.Module:
    """Quantise ``model``'s transformer linear layers in place (see the module docstring).

    ``model.quantization`` records the settings so that ``save_pretrained`` writes them into
    config.json. Raises ValueError when the model has no layer to quantise.
    """
    spec = Quantization(bits=bits, group_size=group_size)
    if getattr(model, "quantization", None) is not None:
        raise ValueError("the model is already quantized")
    if _replace(model, spec, empty=False) == 0:
        raise ValueError(f"no linear layer of this model can be quantized with group_size={group_size}")
    mx.eval(model.parameters())
    return cpu.accelerate(model)


def prepare(model: nn.Module, spec: Quantization) -> nn.Module:
    """Give a freshly built model the quantised layers of a checkpoint saved with ``spec``
    (placeholders of the right shapes; load the weights strictly afterwards)."""
    _replace(model, spec, empty=True)
    return model

"""What every config dataclass shares: ``from_dict`` / ``to_dict`` and the field checks.

The model configs (dpt_mlx.config) and the backbone configs (dpt_mlx.backbones) build on this
module; it imports neither.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ACTIVATIONS = ("gelu", "relu", "silu", "swish", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "tanh")


def pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def check_act(name: str, value: Any) -> None:
    if value not in ACTIVATIONS:
        raise ValueError(f"{name}={value!r} is not a supported activation; use one of {', '.join(ACTIVATIONS)}")


def align_out_features(stage_names, out_features, out_indices) -> tuple[list[str], list[int]]:
    """transformers' BackboneConfigMixin: derive the missing one of out_features / out_indices
    (both missing: the last stage) and check that they name the same stages, in stage order."""
    n = len(stage_names)
    if out_indices is not None:
        out_indices = list(out_indices)
        bad = [i for i in out_indices if not -n <= int(i) < n]
        if bad:
            raise ValueError(f"out_indices {bad} are not valid for the {n} stages {stage_names}")
        out_indices = [int(i) % n for i in out_indices]
    if out_features is not None:
        out_features = list(out_features)
        bad = [f for f in out_features if f not in stage_names]
        if bad:
            raise ValueError(f"out_features {bad} are not stages of this backbone ({', '.join(stage_names)})")
    if out_features is None and out_indices is None:
        out_indices = [n - 1]
    if out_features is None:
        out_features = [stage_names[i] for i in out_indices]
    elif out_indices is None:
        out_indices = [stage_names.index(f) for f in out_features]
    elif out_features != [stage_names[i] for i in out_indices]:
        raise ValueError(f"out_features {out_features} and out_indices {out_indices} name different stages")
    if len(set(out_indices)) != len(out_indices) or out_indices != sorted(out_indices):
        raise ValueError(f"out_features {out_features} must be distinct and in stage order")
    return out_features, out_indices


@dataclass
class BaseConfig:
    """Shared ``from_dict`` / ``to_dict`` for the config dataclasses."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, BaseConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out




def stage_names(num_stages: int) -> list[str]:
    """A backbone's stage names as transformers lists them: "stem", then "stage1" .. "stageN"."""
    return ["stem"] + [f"stage{i}" for i in range(1, num_stages + 1)]

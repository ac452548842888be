"""What every config dataclass shares: ``from_dict`` / ``to_dict`` and the field checks.

The model configs (dpt_mlx.configs) and the backbone configs (dpt_mlx.backbones) build on this
module; it imports neither.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

ACTIVATIONS = ("gelu", "relu", "silu", "swish", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "tanh")


def json_type(value) -> str:
    """A JSON value's type as an error message names it."""
    return "null" if value is None else type(value).__name__


def pair(value, name: str | None = None) -> tuple[int, int]:
    """``(h, w)`` from an int or a pair; ``name`` is the config field, for the error message."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            what = f"{name}={value!r} is invalid: expected" if name else f"got {value!r},"
            raise ValueError(f"{what} an integer or a pair of integers")
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


INT_LIMIT = 2**31  # MLX shapes are int32
MAX_LAYERS = (
    1024  # real models stop below 100 layers; a config asking for more is damaged (and would take hours to build)
)
LAYER_COUNTS = frozenset({"num_hidden_layers", "depths", "num_patch_transformer_layers"})


def _describe(hint, sign: str | None) -> str:
    """What a value of type ``hint`` must be, in words ("a positive integer", "a list of strings")."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a, sign) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_plural(typing.get_args(hint)[0], sign)}"
    if hint is bool:
        return "true or false"
    if hint is int:
        return {"positive": "a positive integer", "non-negative": "a non-negative integer"}.get(sign, "an integer")
    if hint is float:
        return {"positive": "a positive number", "non-negative": "a non-negative number"}.get(sign, "a finite number")
    if hint is str:
        return "a string"
    if typing.get_origin(hint) is dict:  # JSON object keys are strings: "0" stands for the int 0
        key, item = typing.get_args(hint)
        return "an object" if item is Any else f"an object mapping {_plural(key, None)} to {_plural(item, None)}"
    return getattr(hint, "__name__", str(hint))


def _plural(hint, sign: str | None) -> str:
    """ "a positive integer" -> "positive integers"."""
    return _describe(hint, sign).removeprefix("an ").removeprefix("a ") + "s"


def _fits(value, hint, sign: str | None) -> bool:
    """Whether ``value`` (as read from JSON, or given in Python) is of type ``hint``.

    bool is not an int; an int is a float; floats are finite; ints are int32; ``sign`` ("positive",
    "non-negative") bounds numbers and the items of lists; dict keys typed int may be digit strings
    (JSON object keys are strings).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a, sign) for a in args)
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float) if hint is float else int):
            return False
        if (hint is int and not -INT_LIMIT < value < INT_LIMIT) or (hint is float and not math.isfinite(value)):
            return False
        return sign is None or value > 0 or (sign == "non-negative" and value == 0)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0], sign) for v in value)
    if origin is dict:
        key, item = args
        return isinstance(value, dict) and all(
            (_fits(k, key, None) or key is int and isinstance(k, str) and k.lstrip("-").isdigit())
            and _fits(v, item, None)
            for k, v in value.items()
        )
    return isinstance(value, hint) if isinstance(hint, type) else True


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # the annotations are strings (``from __future__ import annotations``)


@dataclass
class BaseConfig:
    """Shared ``from_dict`` / ``to_dict`` for the config dataclasses, and the check of every field.

    After construction each field must be of its annotated type (see ``_fits``); the numbers in
    ``POSITIVE`` (and every item of those that are lists) must be > 0, those in ``NON_NEGATIVE`` >= 0.
    Subclasses list their sizes and counts there and call ``super().__post_init__()`` first (after
    filling any null that stands for a default), so their own checks see well-typed values.
    """

    POSITIVE = frozenset()  # no annotation: class attributes, not fields
    NON_NEGATIVE = frozenset()

    def __post_init__(self):
        self.check_fields()

    def check_fields(self) -> None:
        """Raise ``ValueError("name=value is invalid: expected ...")`` for the first ill-typed field."""
        hints = _field_types(type(self))
        for f in dataclasses.fields(self):
            value, sign = getattr(self, f.name), self._sign(f.name)
            if not _fits(value, hints[f.name], sign):
                expected = _describe(hints[f.name], sign)
                if any(
                    isinstance(v, int) and not isinstance(v, bool) and abs(v) >= INT_LIMIT
                    for v in (value if isinstance(value, (list, tuple)) else [value])
                ):
                    expected += " (below 2**31)"
                raise ValueError(f"{f.name}={value!r} is invalid: expected {expected}")
            counts = value if isinstance(value, (list, tuple)) else [value]
            if f.name in LAYER_COUNTS and any(isinstance(v, int) and v > MAX_LAYERS for v in counts):
                raise ValueError(f"{f.name}={value!r} is invalid: more than {MAX_LAYERS} layers")

    def _sign(self, name: str) -> str | None:
        return "positive" if name in self.POSITIVE else "non-negative" if name in self.NON_NEGATIVE else None

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


class BackboneHostConfig(BaseConfig):
    """A model's config that describes its backbone in a ``backbone_config`` dict (Depth Anything, ZoeDepth,
    CHMv2, TIPSv2-DPT): the backbone's type and input channels read from it."""

    @property
    def backbone_type(self) -> str:
        return str(self.backbone_config.get("model_type", "unknown"))

    @property
    def num_channels(self) -> int:
        return int(self.backbone_config.get("num_channels", 3))

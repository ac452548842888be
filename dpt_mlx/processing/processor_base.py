"""What the image processors share: ``BatchFeature``, their options and ``preprocessor_config.json``.

:class:`ImageProcessorBase` keeps a processor's options as attributes, merges per-call
overrides, and reads and writes the options in the layout of transformers'
``preprocessor_config.json``. A processor class lists its options with their defaults
(``_defaults``), the function that checks them (``_validate``) and the
``image_processor_type`` it writes (``processor_type``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import mlx.core as mx
import numpy as np

from ..errors import CheckpointError
from ..io.files import atomic_write_text
from ..io.hub import HubOptions, resolve_file
from .transforms import flatten_inputs, image_to_chw

CONFIG_NAME = "preprocessor_config.json"

_RETURN_TENSORS = ("np", "mlx", None)

P = TypeVar("P", bound="ImageProcessorBase")


class BatchFeature(dict):
    """A dict whose keys are also attributes: ``out["pixel_values"]`` or ``out.pixel_values``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self):
        return list(super().__dir__()) + [k for k in self if isinstance(k, str)]


def collate(name: str, arrays: list[np.ndarray], return_tensors: str | None):
    """Per-image arrays -> one stacked NumPy array (``"np"``), mx.array (``"mlx"``), or the list (``None``)."""
    if return_tensors is None:
        return arrays
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise ValueError(
            f"cannot stack {name} of different shapes {shapes} into one array; pass return_tensors=None for a "
            "list, or make the sizes equal (do_resize=True with keep_aspect_ratio=False)"
        )
    stacked = np.stack(arrays)
    return mx.array(stacked) if return_tensors == "mlx" else stacked


class ImageProcessorBase:
    """Options, per-call overrides and ``preprocessor_config.json`` for the image processors."""

    processor_type = "ImageProcessor"
    model_input_names = ["pixel_values"]
    _defaults: Mapping[str, Any] = {}
    _validate: Callable[[Mapping[str, Any]], dict[str, Any]] = staticmethod(dict)
    # Keys written by older transformers versions, renamed since.
    _legacy_keys: Mapping[str, str] = {}

    def _set_options(self, given: Mapping[str, Any]) -> None:
        """Set every option from ``given`` (``None`` or absent: the default), checked."""
        options = {
            name: given[name] if given.get(name) is not None else self._defaults[name] for name in self._defaults
        }
        for name, value in self._validate(options).items():
            setattr(self, name, value)

    @classmethod
    def _check_names(cls, names) -> None:
        unknown = sorted(set(names) - set(cls._defaults))
        if unknown:
            raise TypeError(f"unknown {cls.__name__} options {unknown}; valid ones are {list(cls._defaults)}")

    def _call_options(self, return_tensors: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The options for one call: the processor's, with ``overrides`` (``None`` values ignored), checked."""
        if return_tensors not in _RETURN_TENSORS:
            raise ValueError(f"return_tensors={return_tensors!r} is invalid; use 'np', 'mlx' or None")
        self._check_names(overrides)
        opts = {name: getattr(self, name) for name in self._defaults}
        opts.update({k: v for k, v in overrides.items() if v is not None})
        return self._validate(opts)

    @staticmethod
    def _pixel_values(images: Any, opts: Mapping[str, Any], steps: Callable[..., np.ndarray]) -> list[np.ndarray]:
        """Every image of ``images`` to (C, H, W), through ``steps(chw, opts)``, as float32."""
        images = flatten_inputs(images, 3, "images")
        if not images:
            raise ValueError("no images given")
        convert_rgb = opts["do_convert_rgb"] is not False
        return [steps(image_to_chw(image, convert_rgb), opts).astype(np.float32, copy=False) for image in images]

    # -- configuration ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict, in the layout of transformers' preprocessor_config.json."""
        out = {name: getattr(self, name) for name in self._defaults}
        out["size"] = dict(out["size"])
        for name in ("image_mean", "image_std"):
            out[name] = list(out[name]) if isinstance(out[name], list) else out[name]
        out["image_processor_type"] = self.processor_type
        return out

    @classmethod
    def from_dict(cls: type[P], config: Mapping[str, Any], **overrides: Any) -> P:
        """Build from a preprocessor_config.json dict. Unknown keys are ignored; older layouts
        (``size`` as an int, ``feature_extractor_type``, renamed keys) are understood."""
        config = dict(config)
        for old, new in cls._legacy_keys.items():
            if old in config:
                config.setdefault(new, config.pop(old))
        cls._check_names(overrides)
        config.update(overrides)
        return cls(**{name: config[name] for name in cls._defaults if name in config})

    @classmethod
    def from_pretrained(
        cls: type[P],
        path_or_repo_id: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        **overrides: Any,
    ) -> P:
        """Read ``preprocessor_config.json`` from a local directory (or that file itself), or from
        a Hugging Face Hub repo. ``overrides`` replace values from the file."""
        path = resolve_file(path_or_repo_id, CONFIG_NAME, HubOptions(revision, token, cache_dir, local_files_only))
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(
                f"cannot read {path}: {err}; re-download or re-save the preprocessor config"
            ) from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{path} does not hold a JSON object; it is not a preprocessor config")
        try:
            return cls.from_dict(config, **overrides)
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from None

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write ``preprocessor_config.json`` (readable by transformers too); returns its path in a list."""
        if os.path.isfile(save_directory):
            raise ValueError(f"{save_directory} is a file; save_pretrained needs a directory")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return [path]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"


__all__ = ["CONFIG_NAME", "BatchFeature", "ImageProcessorBase", "collate"]

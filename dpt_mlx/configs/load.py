"""Which config class a ``config.json`` names, and reading one with errors that name the file."""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import CheckpointError, UnsupportedModelError
from .base import BaseConfig, json_type
from .chmv2 import CHMv2Config
from .depth_pro import DepthProConfig
from .dpt import DepthAnythingConfig, DPTConfig, PromptDepthAnythingConfig
from .tipsv2_dpt import Tipsv2DptConfig
from .zoedepth import ZoeDepthConfig

CONFIG_CLASSES: dict[str, type[BaseConfig]] = {
    "dpt": DPTConfig,
    "depth_anything": DepthAnythingConfig,
    "prompt_depth_anything": PromptDepthAnythingConfig,
    "zoedepth": ZoeDepthConfig,
    "depth_pro": DepthProConfig,
    "chmv2": CHMv2Config,
    "tipsv2_dpt": Tipsv2DptConfig,
}


def config_from_dict(data: dict[str, Any]) -> BaseConfig:
    """Build the config class that ``data['model_type']`` names."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {json_type(data)}")
    model_type = data.get("model_type", "dpt")
    if not isinstance(model_type, str) or model_type not in CONFIG_CLASSES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(CONFIG_CLASSES))}"
        )
    return CONFIG_CLASSES[model_type].from_dict(data)


def load_config(path: str | os.PathLike) -> BaseConfig:
    """Read a ``config.json`` file; errors name the file and what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"no config.json in {os.path.dirname(path) or '.'}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {json_type(data)}")
    try:
        return config_from_dict(data)
    except UnsupportedModelError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid config {path}: {e}") from None

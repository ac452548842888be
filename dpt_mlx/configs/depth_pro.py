"""``DepthProConfig``: transformers' Depth Pro configuration (apple/DepthPro-hf).

Depth Pro runs three DINOv2 encoders (``patch_model_config``, ``image_model_config``,
``fov_model_config``; on the hub all three are ViT-L/16 at 384 pixels without a mask token) on one
image: the patch encoder on overlapping ``patch_size`` squares cut from the image at each of the
``scaled_images_ratios``, the image encoder on the whole image shrunk to ``patch_size``, and, with
``use_fov_model``, the field-of-view encoder likewise. As in the reference, a sub-config given as a
dict takes ``patch_size`` as its ``image_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..backbones.dinov2 import Dinov2Config
from ..errors import UnsupportedModelError
from .base import BaseConfig

SUB_CONFIGS = ("image_model_config", "patch_model_config", "fov_model_config")
DEFAULT_SUB_IMAGE_SIZE = 384  # the reference builds a missing sub-config with this image_size


@dataclass
class DepthProConfig(BaseConfig):
    """``transformers.DepthProConfig``: the same fields, defaults and checks (and a few more, for
    values the reference accepts but cannot run: each a one-line ValueError naming the value).

    The three sub-configs become :class:`~dpt_mlx.backbones.dinov2.Dinov2Config` objects, so
    ``config.patch_model_config.hidden_size`` reads as in transformers.
    """

    model_type: str = "depth_pro"
    fusion_hidden_size: int = 256
    patch_size: int = 384
    initializer_range: float = 0.02
    intermediate_hook_ids: list[int] = (11, 5)
    intermediate_feature_dims: list[int] = (256, 256)
    scaled_images_ratios: list[float] = (0.25, 0.5, 1)
    scaled_images_overlap_ratios: list[float] = (0.0, 0.5, 0.25)
    scaled_images_feature_dims: list[int] = (1024, 1024, 512)
    merge_padding_value: int = 3
    use_batch_norm_in_fusion_residual: bool = False
    use_bias_in_fusion_residual: bool | None = True
    use_fov_model: bool = False
    num_fov_head_layers: int = 2
    image_model_config: Dinov2Config | dict[str, Any] | None = None
    patch_model_config: Dinov2Config | dict[str, Any] | None = None
    fov_model_config: Dinov2Config | dict[str, Any] | None = None
    architectures: list[str] | None = None

    POSITIVE = frozenset(
        {
            "fusion_hidden_size",
            "patch_size",
            "intermediate_feature_dims",
            "scaled_images_ratios",
            "scaled_images_feature_dims",
        }
    )
    NON_NEGATIVE = frozenset(
        {
            "initializer_range",
            "intermediate_hook_ids",
            "scaled_images_overlap_ratios",
            "merge_padding_value",
            "num_fov_head_layers",
        }
    )

    def __post_init__(self):
        super().__post_init__()
        if self.model_type != "depth_pro":
            raise ValueError(f"model_type={self.model_type!r} is not 'depth_pro'")
        for name in ("intermediate_hook_ids", "intermediate_feature_dims", "scaled_images_feature_dims"):
            setattr(self, name, [int(v) for v in getattr(self, name)])
        for name in ("scaled_images_ratios", "scaled_images_overlap_ratios"):
            setattr(self, name, list(getattr(self, name)))
        for name in SUB_CONFIGS:
            setattr(self, name, self._sub_config(name, getattr(self, name)))
        if not self.architectures:  # the one model class of this model_type here
            self.architectures = ["DepthProForDepthEstimation"]
        self.validate()

    def _sub_config(self, name: str, value) -> Dinov2Config:
        """A sub-config as a Dinov2Config; a dict gets ``patch_size`` as its image_size (the reference's rule)."""
        if isinstance(value, Dinov2Config):
            sub = value
        else:
            data = {"model_type": "dinov2", "image_size": DEFAULT_SUB_IMAGE_SIZE} if value is None else dict(value)
            if data.get("model_type", "dinov2") != "dinov2":
                raise UnsupportedModelError(
                    f"{name} has model_type {data['model_type']!r}; Depth Pro's encoders are supported as dinov2 only"
                )
            if value is not None:
                data["image_size"] = self.patch_size
            try:
                sub = Dinov2Config.from_dict(data)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        if sub.image_size != self.patch_size:
            raise ValueError(f"{name}.image_size={sub.image_size!r} must equal patch_size={self.patch_size}")
        if max(sub.patch_size if isinstance(sub.patch_size, list) else [sub.patch_size]) > self.patch_size:
            raise ValueError(f"{name}.patch_size={sub.patch_size!r} is larger than patch_size={self.patch_size}")
        return sub

    def validate(self) -> None:
        ratios, overlaps = self.scaled_images_ratios, self.scaled_images_overlap_ratios
        if not ratios:
            raise ValueError("scaled_images_ratios is empty: give at least one ratio")
        if ratios != sorted(ratios):
            raise ValueError(f"scaled_images_ratios={ratios} must be sorted from low to high")
        if not len(ratios) == len(overlaps) == len(self.scaled_images_feature_dims):
            raise ValueError(
                f"scaled_images_ratios={ratios}, scaled_images_overlap_ratios={overlaps} and "
                f"scaled_images_feature_dims={self.scaled_images_feature_dims} must have one value per scaled image"
            )
        for overlap in overlaps:
            if overlap >= 1 or int(self.patch_size * (1 - overlap)) < 1:
                raise ValueError(
                    f"scaled_images_overlap_ratios={overlaps} is invalid: {overlap} leaves no stride between "
                    f"patches of {self.patch_size}"
                )
        if len(self.intermediate_hook_ids) != len(self.intermediate_feature_dims):
            raise ValueError(
                f"intermediate_hook_ids={self.intermediate_hook_ids} and intermediate_feature_dims="
                f"{self.intermediate_feature_dims} must have the same length"
            )
        layers = self.patch_model_config.num_hidden_layers
        if any(hook >= layers for hook in self.intermediate_hook_ids):
            raise ValueError(
                f"intermediate_hook_ids={self.intermediate_hook_ids} must index the patch encoder's {layers} layers "
                f"(0 to {layers - 1})"
            )
        if len(ratios) + len(self.intermediate_hook_ids) < 2:
            raise ValueError(
                "the fusion stage needs at least two feature maps: give two scaled_images_ratios, or one and an "
                "intermediate_hook_ids entry"
            )
        if self.fusion_hidden_size // 2**self.num_fov_head_layers == 0:
            raise ValueError(
                f"fusion_hidden_size={self.fusion_hidden_size} is too small for num_fov_head_layers="
                f"{self.num_fov_head_layers}: fusion_hidden_size // 2**num_fov_head_layers must be positive"
            )
        if self.use_fov_model and self.fusion_hidden_size % 2:
            raise ValueError(f"fusion_hidden_size={self.fusion_hidden_size} must be even for the field-of-view head")
        channels = {getattr(self, name).num_channels for name in SUB_CONFIGS}
        if len(channels) > 1:
            raise ValueError(f"the three sub-configs read {sorted(channels)} channels; they must read the same images")

    @property
    def num_channels(self) -> int:
        return self.image_model_config.num_channels

    @property
    def image_size(self) -> int:
        """The smallest square input the model takes (``patch_size / min(scaled_images_ratios)``: 1536 on the
        hub), the size its image processor resizes to."""
        ratio = min(self.scaled_images_ratios)
        side = math.ceil(self.patch_size / ratio)
        while ratio * side < self.patch_size:  # float rounding of the division
            side += 1
        return side

    @property
    def predicts_metres(self) -> bool:
        """Depth Pro's depth (after its post-processing) is metric, in metres."""
        return True


__all__ = ["DepthProConfig", "SUB_CONFIGS"]

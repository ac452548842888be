"""``ZoeDepthConfig``: transformers' ZoeDepth configuration (Intel/zoedepth-nyu, -kitti, -nyu-kitti).

It shares the backbone and neck checks of dpt_mlx.configs.dpt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedModelError
from .base import BackboneHostConfig, check_act
from .dpt import check_backbone, check_neck

# The BEiT-L backbone when a config has none (transformers' ZoeDepthConfig.sub_configs_defaults; other
# fields: BeitConfig's). The hub checkpoints' backbones are this one.
ZOEDEPTH_BACKBONE_DEFAULTS = {
    "model_type": "beit",
    "image_size": 384,
    "num_hidden_layers": 24,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "use_relative_position_bias": True,
    "reshape_hidden_states": False,
    "out_features": ["stage6", "stage12", "stage18", "stage24"],
}
DEFAULT_BIN_CONFIGURATIONS = [{"n_bins": 64, "min_depth": 0.001, "max_depth": 10.0}]
METRIC_STAGES = 4  # the metric head's projectors and attractors: one per fused map, hard-coded in the reference
DOMAIN_EMBEDDING = 128  # the reference's domain classifier reads a 128-wide embedding (hard-coded)
PATCH_TRANSFORMER_LAYERS_RUN = 4  # and runs the first 4 patch-transformer layers (hard-coded)
NECK_BATCH_NORM_EPS = 1e-5  # what the shared neck's BatchNorm uses


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_bin_configurations(configs: list) -> None:
    """Each entry ``{"n_bins", "min_depth", "max_depth"[, "name"]}``; names required and distinct for several."""
    if not configs:
        raise ValueError("bin_configurations is empty: give at least one {n_bins, min_depth, max_depth}")
    names = []
    for i, conf in enumerate(configs):
        where = f"bin_configurations[{i}]"
        if not isinstance(conf, dict):
            raise ValueError(f"{where}={conf!r} is invalid: expected an object with n_bins, min_depth, max_depth")
        n = conf.get("n_bins")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < 2**31:
            raise ValueError(f"{where}: n_bins={n!r} is invalid: expected a positive integer")
        lo, hi = conf.get("min_depth"), conf.get("max_depth")
        if not _number(lo) or lo < 0:
            raise ValueError(f"{where}: min_depth={lo!r} is invalid: expected a non-negative number")
        if not _number(hi) or hi <= lo:
            raise ValueError(f"{where}: max_depth={hi!r} is invalid: expected a number above min_depth={lo!r}")
        name = conf.get("name")
        if len(configs) > 1 or name is not None:
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(
                    f"{where}: name={name!r} is invalid: expected a non-empty string without '.' "
                    "(required when there are several bin configurations)"
                )
            if name in names:
                raise ValueError(f"{where}: name={name!r} is used twice in bin_configurations")
            names.append(name)


@dataclass
class ZoeDepthConfig(BackboneHostConfig):
    """``transformers.ZoeDepthConfig``: the same fields, defaults and meaning.

    One entry in ``bin_configurations`` gives one metric bins head (zoedepth-nyu, -kitti); several give
    one head each and a domain classifier that picks one per batch (zoedepth-nyu-kitti, which also
    sets the ``patch_transformer_*`` fields).
    """

    model_type: str = "zoedepth"
    backbone_config: dict[str, Any] | None = None
    backbone: str | None = None
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    batch_norm_eps: float = 1e-05
    readout_type: str = "project"
    reassemble_factors: list[float] = (4, 2, 1, 0.5)
    neck_hidden_sizes: list[int] = (96, 192, 384, 768)
    fusion_hidden_size: int = 256
    head_in_index: int = -1
    use_batch_norm_in_fusion_residual: bool = False
    use_bias_in_fusion_residual: bool | None = None
    num_relative_features: int = 32
    add_projection: bool = False
    bottleneck_features: int = 256
    num_attractors: list[int] = (16, 8, 4, 1)
    bin_embedding_dim: int = 128
    attractor_alpha: float = 1000  # unused by the reference's computation (it keeps the default 300), kept for fidelity
    attractor_gamma: float = 2  # likewise (2)
    attractor_kind: str = "mean"
    min_temp: float = 0.0212
    max_temp: float = 50.0
    bin_centers_type: str = "softplus"
    bin_configurations: list[dict[str, Any]] | None = None
    num_patch_transformer_layers: int | None = None
    patch_transformer_hidden_size: int | None = None
    patch_transformer_intermediate_size: int | None = None
    patch_transformer_num_attention_heads: int | None = None
    architectures: list[str] | None = None

    POSITIVE = frozenset(
        {
            "batch_norm_eps",
            "neck_hidden_sizes",
            "fusion_hidden_size",
            "num_relative_features",
            "bottleneck_features",
            "num_attractors",
            "bin_embedding_dim",
            "min_temp",
            "max_temp",
            "num_patch_transformer_layers",
            "patch_transformer_hidden_size",
            "patch_transformer_intermediate_size",
            "patch_transformer_num_attention_heads",
        }
    )
    NON_NEGATIVE = frozenset({"initializer_range"})

    def __post_init__(self):
        if not self.bin_configurations:  # the reference: ``bin_configurations or [default]``
            self.bin_configurations = [dict(c) for c in DEFAULT_BIN_CONFIGURATIONS]
        super().__post_init__()
        if self.backbone is not None and self.backbone_config is None:
            raise UnsupportedModelError(
                f"backbone {self.backbone!r} (a timm or named backbone) is not supported; "
                "use a checkpoint with a backbone_config"
            )
        self.backbone_config = dict(self.backbone_config or ZOEDEPTH_BACKBONE_DEFAULTS)
        if not self.architectures:  # the one model class of this model_type
            self.architectures = ["ZoeDepthForDepthEstimation"]
        self.bin_configurations = [dict(c) if isinstance(c, dict) else c for c in self.bin_configurations]
        for name in ("reassemble_factors", "neck_hidden_sizes", "num_attractors"):
            setattr(self, name, list(getattr(self, name)))
        self.validate()
        check_neck(self, reassemble=self.backbone_type != "swinv2")
        check_backbone(self)

    def validate(self) -> None:
        if self.readout_type != "project":
            # transformers' ZoeDepth reassemble stage fails on "ignore" and "add" (it reshapes for "project" only)
            raise ValueError(f"readout_type={self.readout_type!r} is not supported: ZoeDepth runs with 'project' only")
        check_act("hidden_act", self.hidden_act)
        for name, value, allowed in (
            ("attractor_kind", self.attractor_kind, ("mean", "sum")),
            ("bin_centers_type", self.bin_centers_type, ("normed", "softplus")),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        check_bin_configurations(self.bin_configurations)
        if len(self.neck_hidden_sizes) != METRIC_STAGES:
            raise ValueError(
                f"neck_hidden_sizes has {len(self.neck_hidden_sizes)} values; ZoeDepth's metric head "
                f"needs {METRIC_STAGES} neck stages"
            )
        if len(self.num_attractors) != METRIC_STAGES:
            raise ValueError(f"num_attractors={self.num_attractors} must have {METRIC_STAGES} values (one per stage)")
        if self.bottleneck_features != self.fusion_hidden_size:
            raise ValueError(
                f"bottleneck_features={self.bottleneck_features} must equal fusion_hidden_size="
                f"{self.fusion_hidden_size} (the bottleneck is the neck's coarsest projected map)"
            )
        if self.add_projection and self.fusion_hidden_size != 256:
            raise ValueError("add_projection=True requires fusion_hidden_size=256, as in the reference")
        if self.use_batch_norm_in_fusion_residual and self.batch_norm_eps != NECK_BATCH_NORM_EPS:
            raise ValueError(
                f"batch_norm_eps={self.batch_norm_eps} is not supported with BatchNorm in the fusion "
                f"residual units; only {NECK_BATCH_NORM_EPS}"
            )
        if self.multi_domain:
            self._check_patch_transformer()

    def _check_patch_transformer(self) -> None:
        """The domain classifier of a multi-domain config (zoedepth-nyu-kitti: 4 layers, 128 wide, 4 heads)."""
        for name in (
            "num_patch_transformer_layers",
            "patch_transformer_hidden_size",
            "patch_transformer_intermediate_size",
            "patch_transformer_num_attention_heads",
        ):
            if getattr(self, name) is None:
                raise ValueError(f"{name} is null: several bin_configurations need the patch transformer's sizes")
        if self.patch_transformer_hidden_size != DOMAIN_EMBEDDING:
            raise ValueError(
                f"patch_transformer_hidden_size={self.patch_transformer_hidden_size} must be "
                f"{DOMAIN_EMBEDDING}: the reference's domain classifier reads a {DOMAIN_EMBEDDING}-wide embedding"
            )
        if self.patch_transformer_hidden_size % self.patch_transformer_num_attention_heads:
            raise ValueError(
                f"patch_transformer_hidden_size={self.patch_transformer_hidden_size} is not a multiple of "
                f"patch_transformer_num_attention_heads={self.patch_transformer_num_attention_heads}"
            )
        if self.num_patch_transformer_layers < PATCH_TRANSFORMER_LAYERS_RUN:
            raise ValueError(
                f"num_patch_transformer_layers={self.num_patch_transformer_layers} is too few: the "
                f"reference runs {PATCH_TRANSFORMER_LAYERS_RUN} layers"
            )
        if self.bin_embedding_dim < 2:
            raise ValueError(
                f"bin_embedding_dim={self.bin_embedding_dim} must be at least 2 with several "
                "bin_configurations (their MLPs are bin_embedding_dim // 2 wide)"
            )

    @property
    def multi_domain(self) -> bool:
        """Several metric heads, chosen by the domain classifier."""
        return len(self.bin_configurations) > 1

    @property
    def predicts_metres(self) -> bool:
        """ZoeDepth's predicted depth is metric, in metres."""
        return True

    # What the shared DPT neck (dpt_mlx/models/neck.py) reads beyond the fields above.
    neck_ignore_stages = property(lambda self: [])

    @property
    def use_bias_in_residual(self) -> bool:
        if self.use_bias_in_fusion_residual is not None:
            return bool(self.use_bias_in_fusion_residual)
        return not self.use_batch_norm_in_fusion_residual

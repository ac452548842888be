"""ZoeDepth (Intel/zoedepth-nyu, -kitti, -nyu-kitti): a BEiT backbone, DPT's neck, a relative depth
head, and a metric bins head (dpt_mlx/models/zoedepth_bins.py) that turns them into metres.

The neck is DPT's (readout "project", 2x upsampling fusion); ZoeDepth also feeds the metric head
the neck's coarsest projected map before fusion (the bottleneck), every fused map, and the
relative head's last hidden features. Everything inside runs channels-last.

Reference subtleties kept here:

- the single-domain head's seed regressor is 256 wide and its projectors 128 (the reference's
  defaults); the multi-domain heads use ``bin_embedding_dim // 2`` for all three, give every
  attractor layer 16 attractors whatever ``num_attractors`` says, use a bottleneck factor of 4
  in the conditional log-binomial and do not condition it on the relative depth;
- the multi-domain model picks **one** head for the whole batch: the argmax of the softmax of
  the domain logits summed over the batch;
- ``hidden_states`` / ``attentions`` are the backbone's (embeddings and every layer).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..backbones import backbone_spec, build_backbone
from ..configs.zoedepth import PATCH_TRANSFORMER_LAYERS_RUN, ZoeDepthConfig
from ..layers import Resize
from ..outputs import ZoeDepthDepthEstimatorOutput
from .base import PreTrainedModel
from .neck import DPTNeck
from .zoedepth_bins import (
    AttractorLayer,
    ConditionalLogBinomialSoftmax,
    MLPClassifier,
    PatchTransformerEncoder,
    Projector,
    SeedBinRegressor,
)

MULTI_DOMAIN_ATTRACTORS = 16  # the reference builds the multi-domain attractors with their default count
NUM_DOMAINS = 2  # the reference's domain classifier has two outputs


class ZoeDepthNeck(DPTNeck):
    """DPT's neck, also returning the coarsest projected map before fusion (the bottleneck)."""

    def __call__(self, hidden_states: list[mx.array], grid: tuple[int, int] | None = None):
        if len(hidden_states) != self.num_stages:
            raise ValueError(f"the neck expects {self.num_stages} feature maps, got {len(hidden_states)}")
        if self.reassemble_stage is not None:
            hidden_states = self.reassemble_stage(hidden_states, grid)
        features = [conv(x) for conv, x in zip(self.convs, hidden_states)]
        return self.fusion_stage(features), features[-1]


class ZoeDepthRelativeDepthEstimationHead(nn.Module):
    """[projection, ReLU,] conv3x3 (C -> C/2), 2x upsample (align_corners=True), conv3x3 (-> num_relative_features),
    ReLU (the features the metric head reads), conv1x1 (-> 1), ReLU. Returns (depth (B, H, W), features)."""

    def __init__(self, config: ZoeDepthConfig):
        super().__init__()
        features = config.fusion_hidden_size
        self.head_in_index = config.head_in_index
        self.projection = nn.Conv2d(256, 256, kernel_size=3, padding=1) if config.add_projection else None
        self.conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features // 2, config.num_relative_features, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(config.num_relative_features, 1, kernel_size=1)
        self.resample = Resize()

    def __call__(self, hidden_states: list[mx.array]) -> tuple[mx.array, mx.array]:
        x = hidden_states[self.head_in_index]
        if self.projection is not None:
            x = nn.relu(self.projection(x))
        x = self.conv1(x)
        x = self.resample(x, (2 * x.shape[1], 2 * x.shape[2]), "bilinear", align_corners=True)
        features = nn.relu(self.conv2(x))
        return nn.relu(self.conv3(features))[..., 0], features


def _refine(head, bins, x, feature_blocks, min_depth: float, max_depth: float):
    """Seed bins on the bottleneck ``x``, then one attractor per fused map: (bin embedding, bin centres)."""
    _, centers = bins["seed"](x)
    prev_bin = (centers - min_depth) / (max_depth - min_depth) if head.normed else centers
    prev_embedding = head.seed_projector(x)
    for projector, attractor, feature in zip(head.projectors, bins["attractors"], feature_blocks):
        embedding = projector(feature)
        prev_bin, centers = attractor(embedding, prev_bin, prev_embedding)
        prev_embedding = embedding
    return prev_embedding, centers


def _expected_depth(clb, resample, last, embedding, centers) -> mx.array:
    """The conditional log-binomial's bin probabilities times the (resized) centres, summed: (B, H, W) float32."""
    probs = clb(last, resample(embedding, last.shape[1:3], "bilinear", align_corners=True))
    centers = resample(centers, probs.shape[1:3], "bilinear", align_corners=True)
    return (probs * centers.astype(mx.float32)).sum(axis=-1)


class ZoeDepthMetricDepthEstimationHead(nn.Module):
    """One metric bins head (zoedepth-nyu, -kitti): its conditional log-binomial also reads the relative depth."""

    def __init__(self, config: ZoeDepthConfig):
        super().__init__()
        conf = config.bin_configurations[0]
        n_bins, dim = conf["n_bins"], config.bin_embedding_dim
        self.min_depth, self.max_depth = conf["min_depth"], conf["max_depth"]
        self.normed = config.bin_centers_type == "normed"
        self.conv2 = nn.Conv2d(config.bottleneck_features, config.bottleneck_features, kernel_size=1)
        self.seed_bin_regressor = SeedBinRegressor(config, n_bins, 256, self.min_depth, self.max_depth)
        self.seed_projector = Projector(config.bottleneck_features, dim)
        self.projectors = [Projector(config.fusion_hidden_size, dim) for _ in range(4)]
        self.attractors = [
            AttractorLayer(config, n, self.min_depth, self.max_depth, self.normed) for n in config.num_attractors
        ]
        self.conditional_log_binomial = ConditionalLogBinomialSoftmax(
            config, config.num_relative_features + 1, dim, n_bins
        )
        self.resample = Resize()

    def __call__(self, last, bottleneck, feature_blocks, relative_depth):
        x = self.conv2(bottleneck)
        bins = {"seed": self.seed_bin_regressor, "attractors": self.attractors}
        embedding, centers = _refine(self, bins, x, feature_blocks, self.min_depth, self.max_depth)
        relative = self.resample(relative_depth[..., None], last.shape[1:3], "bilinear", align_corners=True)
        last = mx.concatenate([last, relative], axis=-1)
        return _expected_depth(self.conditional_log_binomial, self.resample, last, embedding, centers), None


class ZoeDepthMultipleMetricDepthEstimationHeads(nn.Module):
    """One bins head per ``bin_configurations`` entry (zoedepth-nyu-kitti) and the domain classifier that picks one."""

    def __init__(self, config: ZoeDepthConfig):
        super().__init__()
        dim, mlp = config.bin_embedding_dim, config.bin_embedding_dim // 2
        self._configurations = {c["name"]: c for c in config.bin_configurations}
        self._names = [c["name"] for c in config.bin_configurations]
        self.normed = config.bin_centers_type == "normed"
        self.conv2 = nn.Conv2d(config.bottleneck_features, config.bottleneck_features, kernel_size=1)
        self.patch_transformer = PatchTransformerEncoder(config, PATCH_TRANSFORMER_LAYERS_RUN)
        self.mlp_classifier = MLPClassifier(config.patch_transformer_hidden_size, NUM_DOMAINS)
        self.seed_bin_regressors = {
            name: SeedBinRegressor(config, c["n_bins"], mlp, c["min_depth"], c["max_depth"])
            for name, c in self._configurations.items()
        }
        self.seed_projector = Projector(config.bottleneck_features, dim, mlp)
        self.projectors = [Projector(config.fusion_hidden_size, dim, mlp) for _ in range(4)]
        self.attractors = {
            name: [
                AttractorLayer(config, MULTI_DOMAIN_ATTRACTORS, c["min_depth"], c["max_depth"], self.normed)
                for _ in config.num_attractors
            ]
            for name, c in self._configurations.items()
        }
        self.conditional_log_binomial = {
            name: ConditionalLogBinomialSoftmax(
                config, config.num_relative_features, dim, c["n_bins"], bottleneck_factor=4
            )
            for name, c in self._configurations.items()
        }
        self.resample = Resize()

    def __call__(self, last, bottleneck, feature_blocks, relative_depth):
        x = self.conv2(bottleneck)
        domain_logits = self.mlp_classifier(self.patch_transformer(x)[:, 0])  # (B, 2)
        vote = mx.softmax(domain_logits.astype(mx.float32).sum(axis=0), axis=-1)
        name = self._names[int(mx.argmax(vote).item())]  # one head for the whole batch, as the reference
        conf = self._configurations[name]
        bins = {"seed": self.seed_bin_regressors[name], "attractors": self.attractors[name]}
        embedding, centers = _refine(self, bins, x, feature_blocks, conf["min_depth"], conf["max_depth"])
        return _expected_depth(
            self.conditional_log_binomial[name], self.resample, last, embedding, centers
        ), domain_logits


class ZoeDepthForDepthEstimation(PreTrainedModel):
    """``ZoeDepthForDepthEstimation``: ``model(pixel_values)`` (B, 3, H, W) -> ``predicted_depth`` (B, H', W')
    in metres, and ``domain_logits`` (B, 2) for a multi-domain checkpoint. With the hub's reassemble
    factors (4, 2, 1, 1/2), H' = 32 * ceil(gh / 2) for a patch grid of gh = H // patch rows (H itself
    when gh is even), W' likewise."""

    config_class = ZoeDepthConfig
    head_kind = "depth"

    def __init__(self, config: ZoeDepthConfig):
        super().__init__()
        if not isinstance(config, ZoeDepthConfig):
            raise TypeError(f"ZoeDepthForDepthEstimation needs a ZoeDepthConfig, got {type(config).__name__}")
        self.config = config
        self.backbone = build_backbone(config)  # its outputs match the neck: checked by the config
        self.neck = ZoeDepthNeck(config, self.backbone.hidden_size, reassemble=backbone_spec(config).reassemble)
        self.relative_head = ZoeDepthRelativeDepthEstimationHead(config)
        head = ZoeDepthMultipleMetricDepthEstimationHeads if config.multi_domain else ZoeDepthMetricDepthEstimationHead
        self.metric_head = head(config)

    def __call__(self, pixel_values, labels=None, output_hidden_states: bool = False, output_attentions: bool = False):
        """``labels`` are refused: the reference implements no ZoeDepth loss."""
        if labels is not None:
            raise NotImplementedError("ZoeDepth has no training loss (nor in transformers); call it without labels")
        x = self._prepare(pixel_values)
        feats = self.backbone(x, output_attentions=output_attentions)
        fused, bottleneck = self.neck(feats.features, feats.grid)
        relative_depth, last = self.relative_head(fused)
        depth, domain_logits = self.metric_head(last, bottleneck, fused, relative_depth)
        return ZoeDepthDepthEstimatorOutput(
            predicted_depth=depth.astype(x.dtype),
            domain_logits=domain_logits,
            hidden_states=feats.hidden_states if output_hidden_states else None,
            attentions=feats.attentions if output_attentions else None,
        )

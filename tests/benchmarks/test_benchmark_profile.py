"""The benchmark's per-stage profile: module paths map to the stages, the times add up, and profiling
leaves the models as they were."""

import mlx.nn as nn
import numpy as np
import torch

import dpt_mlx
from benchmarks.stages import STAGES, profile_pair, profile_table, stage_of


def test_paths_name_their_stage():
    cases = {
        "dpt.embeddings.patch_embeddings.projection": "patch embedding",
        "backbone.embeddings.patch_embeddings": "patch embedding",
        "dpt.encoder.layer.3.attention.attention.query": "attention",
        "backbone.encoder.layer.0.attention.output.dense": "attention",
        "backbone.encoder.layer.0.attention.sdpa": "attention",
        "dpt.encoder.layer.3.intermediate.dense": "MLP",
        "dpt.encoder.layer.3.output.dense": "MLP",
        "backbone.encoder.layer.2.mlp.fc1": "MLP",
        "dpt.encoder.layer.3.layernorm_before": "norms, activations, adds",
        "backbone.encoder.layer.3.layer_scale1": "norms, activations, adds",
        "dpt.encoder.layer.3": "norms, activations, adds",
        "dpt.embeddings.backbone.bit.encoder.stages.1.layers.0.conv2": "backbone convolutions",
        "neck.fusion_stage.layers.2.residual_layer1.convolution1": "neck convolutions",
        "neck.reassemble_stage.layers.0.resize": "neck convolutions",
        "head.conv1": "head",
        "head.head.0": "head",
        "metric_head.attractors.0": "head",
        "relative_head.conv3": "head",
        "": "other",
    }
    for path, stage in cases.items():
        assert stage_of(path) == stage, path
    assert set(cases.values()) <= set(STAGES)


def test_profile_adds_up_and_restores_the_classes(make_tiny_dpt):
    ref = make_tiny_dpt(seed=1)
    ours = dpt_mlx.DPTForDepthEstimation(dpt_mlx.DPTConfig.from_dict(ref.config.to_dict()))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    before = {cls: cls.__dict__.get("__call__") for cls in (nn.Linear, nn.Conv2d, type(ours))}
    expected = np.array(ours(x).predicted_depth)
    mlx_s, torch_s, plain_mlx, plain_torch = profile_pair(ours, ref.eval(), x, None, torch.float32, runs=1)
    for cls, call in before.items():
        assert cls.__dict__.get("__call__") is call, cls
    for side in (mlx_s, torch_s):
        assert set(side) == set(STAGES)
        for stage in ("patch embedding", "attention", "MLP", "neck convolutions", "resizes", "head"):
            assert side[stage] > 0, stage
        assert all(v >= 0 for v in side.values())
    assert plain_mlx > 0 and plain_torch > 0
    assert np.array_equal(np.array(ours(x).predicted_depth), expected)  # nothing left patched
    lines = profile_table("tiny", mlx_s, torch_s, plain_mlx, plain_torch)
    assert lines[0].startswith("profile of tiny") and any(line.strip().startswith("attention") for line in lines)

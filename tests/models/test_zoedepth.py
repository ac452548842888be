"""ZoeDepth (single- and multi-domain): parity with transformers on tiny perturbed checkpoints shaped like
the hub's, half precision, quantisation, conversion, and the config."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import transformers
from helpers import TOL, pixels, rel_err
from model_configs import KITTI, MULTI, NYU, zoe_config
from model_configs import ZOE_VARIANTS as VARIANTS
from model_configs import make_zoedepth as make
from model_configs import zoe_beit_dict as beit_dict
from transformers.models.zoedepth import modeling_zoedepth as ref_zoe

import dpt_mlx
from dpt_mlx.cli.convert import main as convert_main
from dpt_mlx.configs.zoedepth import ZOEDEPTH_BACKBONE_DEFAULTS, ZoeDepthConfig
from dpt_mlx.errors import CheckpointError
from dpt_mlx.io.quantize import quantize_model
from dpt_mlx.models import zoedepth_bins as bins

# (H, W): the config's grid (4x4), non-square (5x7), and not a multiple of the patch with an odd grid (5x4)
SHAPES = [(32, 32), (40, 56), (44, 36)]


def check_depth(got, expected, tol=TOL):
    """Parity, and a reference that varies across pixels (a near-constant depth would match too easily)."""
    depth = expected.predicted_depth
    assert float(depth.std()) > 1e-2 * float(depth.abs().max())
    assert rel_err(got.predicted_depth, depth) <= tol


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoe")
    return {name: (make(root / name, zoe_config(**kw)), root / name) for name, kw in VARIANTS.items()}


@pytest.mark.parity
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_hidden_states_and_attentions(checkpoints, variant):
    ref, path = checkpoints[variant]
    ours = dpt_mlx.load_model(path)
    assert type(ours) is dpt_mlx.ZoeDepthForDepthEstimation
    relative = []
    hook = ref.relative_head.register_forward_hook(lambda mod, inp, out: relative.append(out[0]))
    for h, w in SHAPES:
        x = pixels(2, h, w, seed=h)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
        got = ours(x, output_hidden_states=True, output_attentions=True)
        assert got.predicted_depth.shape == (2, 32 * -(-(h // 8) // 2), 32 * -(-(w // 8) // 2))
        check_depth(got, expected)
        assert float((relative[-1] > 0).float().mean()) > 0.5  # the relative depth conditions the bins
        if ref.config.bin_configurations[1:]:
            assert got.domain_logits.shape == (2, 2)
            assert rel_err(got.domain_logits, expected.domain_logits) <= TOL
        else:
            assert got.domain_logits is None and expected.domain_logits is None
        assert len(got.hidden_states) == len(expected.hidden_states) == 9  # embeddings + 8 layers
        for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
            assert rel_err(a, b) <= TOL
        assert len(got.attentions) == len(expected.attentions) == 8
        for a, b in zip(got.attentions, expected.attentions, strict=True):
            assert rel_err(a, b) <= TOL
    hook.remove()
    out = ours(pixels(1, 32, 32))
    assert out.hidden_states is None and out.attentions is None
    assert list(out.keys()) == ["predicted_depth"] + (["domain_logits"] if ref.config.bin_configurations[1:] else [])


@pytest.mark.parity
@pytest.mark.parametrize("domain", [0, 1], ids=["nyu", "kitti"])
def test_each_domain_head_is_the_reference_one(tmp_path, checkpoints, domain):
    """The classifier's vote (summed over the batch) picks the head: force each in turn."""
    ref, _ = checkpoints["nyu-kitti"]
    with torch.no_grad():
        bias = ref.metric_head.mlp_classifier.linear2.bias
        saved = bias.clone()
        bias.copy_(torch.tensor([1e3, -1e3]) if domain == 0 else torch.tensor([-1e3, 1e3]))
        ref.save_pretrained(tmp_path)
        x = pixels(2, 40, 32, seed=5)
        expected = ref(torch.from_numpy(x))
        bias.copy_(saved)
    got = dpt_mlx.ZoeDepthForDepthEstimation.from_pretrained(tmp_path)(x)
    assert int(np.argmax(np.array(got.domain_logits).sum(0))) == domain
    check_depth(got, expected)


@pytest.mark.parity
@pytest.mark.parametrize(
    "kind, backbone, shape",
    [
        (
            "dinov2",
            transformers.Dinov2Config(
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=2,
                image_size=28,
                patch_size=14,
                out_indices=[1, 2, 3, 4],
                reshape_hidden_states=False,
            ),
            (42, 56),
        ),
        (
            "swinv2",
            dict(
                model_type="swinv2",
                image_size=64,
                patch_size=4,
                embed_dim=16,
                depths=[2, 2, 2, 2],
                num_heads=[1, 2, 2, 4],
                window_size=4,
                out_features=["stage1", "stage2", "stage3", "stage4"],
            ),
            (64, 48),
        ),
    ],
)
def test_other_backbones(tmp_path, kind, backbone, shape):
    """The backbone registry's DINOv2 (token sequences, patch 14) and Swinv2 (feature maps, no reassembling)."""
    neck = [16, 32, 64, 128] if kind == "swinv2" else [8, 16, 32, 32]
    x = pixels(2, *shape, seed=1)
    ref = make(tmp_path, zoe_config(backbone, neck_hidden_sizes=neck), seed=1, x=x)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), output_hidden_states=True)
    got = dpt_mlx.load_model(tmp_path)(x, output_hidden_states=True)
    check_depth(got, expected)
    for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert rel_err(a, b) <= TOL


@pytest.mark.parity
def test_attractors_sort_and_clip_like_the_reference():
    """Attractor layers on their own, with strong attractors and unsorted previous bins: the normed layer's
    sort and clip act (in the full model the bins stay ordered)."""
    config = zoe_config(attractor_kind="sum")
    ours_config = ZoeDepthConfig.from_dict(config.to_dict())
    gen = torch.Generator().manual_seed(0)
    for normed, cls in ((True, ref_zoe.ZoeDepthAttractorLayer), (False, ref_zoe.ZoeDepthAttractorLayerUnnormed)):
        ref = cls(config, n_bins=12, n_attractors=5, min_depth=0.5, max_depth=4.0).eval()
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        ours = bins.AttractorLayer(ours_config, 5, 0.5, 4.0, normed)
        ours.update(
            {
                name: {
                    "weight": mx.array(layer.weight.detach().numpy().transpose(0, 2, 3, 1)),  # OIHW -> OHWI
                    "bias": mx.array(layer.bias.detach().numpy()),
                }
                for name, layer in (("conv1", ref.conv1), ("conv2", ref.conv2))
            }
        )
        x, emb = torch.randn(2, 16, 6, 5, generator=gen), torch.randn(2, 16, 3, 3, generator=gen)
        prev = torch.rand(2, 12, 3, 3, generator=gen) * 1.4 - 0.2  # out of [0, 1]: clipping, and no order
        with torch.no_grad():
            want_bins, want_centers = ref(x, prev, emb)
        got_bins, got_centers = ours(*(mx.array(t.numpy().transpose(0, 2, 3, 1)) for t in (x, prev, emb)))
        for got, want in ((got_bins, want_bins), (got_centers, want_centers)):
            assert rel_err(np.array(got).transpose(0, 3, 1, 2), want) <= TOL
        if normed:
            assert not np.array_equal(np.sort(want_bins.numpy(), axis=1), want_bins.numpy())  # sorting mattered
            assert float(want_centers.min()) == 0.5 and float(want_centers.max()) == 4.0  # clipping mattered


# max|half - f32| / max|f32| measured on these checkpoints (seed 0, 2x40x56), float16 / bfloat16, on both CPU
# paths: nyu 1.2e-3 / 7.7e-3, kitti 1.8e-3 / 1.2e-2, nyu-kitti 6.1e-4 / 6.5e-3, nyu-kitti-normed 2.5e-3 / 1.6e-2.
# Bounds: ~3x the largest of the variants tested.
HALF_BOUND = {"float16": 6e-3, "bfloat16": 4e-2}


@pytest.mark.parity
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("variant", ["kitti", "nyu-kitti"])
def test_half_precision(checkpoints, variant, dtype):
    _, path = checkpoints[variant]
    x = pixels(2, 40, 56, seed=2)
    ref = dpt_mlx.load_model(path)(x)
    model = dpt_mlx.load_model(path, dtype=dtype)
    assert model.dtype == getattr(mx, dtype)
    out = model(x)
    assert out.predicted_depth.dtype == getattr(mx, dtype)
    got = np.array(out.predicted_depth.astype(mx.float32))
    assert np.isfinite(got).all()
    assert rel_err(got, np.array(ref.predicted_depth)) <= HALF_BOUND[dtype]


# max|q - f32| / max|f32| measured on these checkpoints (seed 0, 2x40x56, group size 32), 8-bit / 4-bit:
# nyu 3.0e-4 / 5.6e-3, kitti 3.2e-4 / 4.9e-3, nyu-kitti 1.9e-4 / 1.2e-3, nyu-kitti-normed 4.9e-4 / 4.4e-3.
# Bounds: ~3x the largest of the variants tested. (Only the BEiT blocks' linear layers are quantised.)
QUANT_BOUND = {8: 1e-3, 4: 1.5e-2}


@pytest.mark.parity
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("variant", ["kitti", "nyu-kitti"])
def test_quantized(checkpoints, variant, bits):
    _, path = checkpoints[variant]
    x = pixels(2, 40, 56, seed=3)
    ref = np.array(dpt_mlx.load_model(path)(x).predicted_depth)
    model = quantize_model(dpt_mlx.load_model(path), bits=bits, group_size=32)
    quantized = {name for name, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)}
    assert len(quantized) == 6 * 8 and all(name.startswith("backbone.encoder.") for name in quantized)
    got = np.array(model(x).predicted_depth)
    assert np.isfinite(got).all()
    assert rel_err(got, ref) <= QUANT_BOUND[bits]


@pytest.mark.parity
def test_convert_and_mlx_round_trip(checkpoints, tmp_path, capsys):
    """convert.py writes a verified MLX checkpoint of the multi-domain model; it loads back to the same outputs."""
    ref, path = checkpoints["nyu-kitti"]
    assert convert_main(["--hf-path", str(path), "--mlx-path", str(tmp_path / "mlx")]) == 0, capsys.readouterr().err
    assert "verified" in capsys.readouterr().out
    x = pixels(1, 32, 40, seed=4)
    direct = dpt_mlx.load_model(path)(x)
    converted = dpt_mlx.ZoeDepthForDepthEstimation.from_pretrained(tmp_path / "mlx")(x)
    assert np.array_equal(np.array(converted.predicted_depth), np.array(direct.predicted_depth))
    assert np.array_equal(np.array(converted.domain_logits), np.array(direct.domain_logits))
    with torch.no_grad():
        check_depth(converted, ref(torch.from_numpy(x)))


@pytest.mark.parity
def test_checkpoint_with_bin_index_buffers(tmp_path, checkpoints):
    """Checkpoints converted while the log-binomial's index buffers were saved still load (they are constants)."""
    from safetensors.torch import load_file, save_file

    ref, path = checkpoints["nyu-kitti"]
    weights = load_file(path / "model.safetensors")
    for name in ("nyu", "kitti"):
        prefix = f"metric_head.conditional_log_binomial.{name}.log_binomial_transform."
        weights[prefix + "k_idx"] = torch.arange(64).view(1, -1, 1, 1)
        weights[prefix + "K_minus_1"] = torch.tensor([63.0]).view(1, -1, 1, 1)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    x = pixels(1, 32, 32, seed=6)
    with torch.no_grad():
        check_depth(dpt_mlx.load_model(tmp_path)(x), ref(torch.from_numpy(x)))


def test_labels_are_refused():
    model = dpt_mlx.ZoeDepthForDepthEstimation(ZoeDepthConfig.from_dict(zoe_config().to_dict()))
    with pytest.raises(NotImplementedError, match="labels"):
        model(pixels(1, 32, 32), labels=np.zeros((1, 32, 32), dtype=np.float32))


def test_config_defaults_match_reference():
    ref, ours = transformers.ZoeDepthConfig(), ZoeDepthConfig()
    for name in (
        "hidden_act",
        "batch_norm_eps",
        "readout_type",
        "fusion_hidden_size",
        "head_in_index",
        "use_batch_norm_in_fusion_residual",
        "use_bias_in_fusion_residual",
        "num_relative_features",
        "add_projection",
        "bottleneck_features",
        "bin_embedding_dim",
        "attractor_alpha",
        "attractor_gamma",
        "attractor_kind",
        "min_temp",
        "max_temp",
        "bin_centers_type",
        "bin_configurations",
        "num_patch_transformer_layers",
        "patch_transformer_hidden_size",
        "patch_transformer_intermediate_size",
        "patch_transformer_num_attention_heads",
    ):
        assert getattr(ours, name) == getattr(ref, name), name
    for name in ("reassemble_factors", "neck_hidden_sizes", "num_attractors"):
        assert getattr(ours, name) == list(getattr(ref, name)), name
    for key, value in ZOEDEPTH_BACKBONE_DEFAULTS.items():
        assert getattr(ref.backbone_config, key) == value, key
    assert ours.predicts_metres and not ours.multi_domain
    # transformers' JSON (with its backbone_hidden_size and generic fields) reads back
    data = json.loads(zoe_config(**VARIANTS["nyu-kitti"]).to_json_string())
    config = dpt_mlx.configs.load.config_from_dict(data)
    assert type(config) is ZoeDepthConfig and config.multi_domain
    assert ZoeDepthConfig.from_dict(config.to_dict()) == config


BAD = [
    (dict(bin_configurations=[{"n_bins": 0, "min_depth": 0.001, "max_depth": 10.0}]), "n_bins"),
    (dict(bin_configurations=[{"n_bins": 64, "min_depth": 1.0, "max_depth": 0.5}]), "max_depth"),
    (dict(bin_configurations=[{"n_bins": 64, "min_depth": -1, "max_depth": 10.0}]), "min_depth"),
    (dict(bin_configurations=[{"n_bins": 64, "max_depth": 10.0}]), "min_depth"),
    (dict(bin_configurations=["nyu"]), "bin_configurations"),
    (dict(MULTI, bin_configurations=[NYU, {**KITTI, "name": None}]), "name"),
    (dict(MULTI, bin_configurations=[NYU, {**KITTI, "name": "nyu"}]), "name"),
    (dict(MULTI, patch_transformer_hidden_size=64), "patch_transformer_hidden_size"),
    (dict(MULTI, num_patch_transformer_layers=None), "num_patch_transformer_layers"),
    (dict(MULTI, num_patch_transformer_layers=2), "num_patch_transformer_layers"),
    (dict(readout_type="ignore"), "readout_type"),
    (dict(bin_centers_type="hybrid2"), "bin_centers_type"),
    (dict(attractor_kind="max"), "attractor_kind"),
    (dict(num_attractors=[16, 8, 4]), "num_attractors"),
    (dict(bottleneck_features=32), "bottleneck_features"),
    (dict(min_temp=0), "min_temp"),
    (dict(neck_hidden_sizes=[8, 16, 32]), "neck_hidden_sizes"),
    (dict(backbone_config=beit_dict(out_features=["stage2", "stage4"])), "neck_hidden_sizes"),
]


@pytest.mark.parametrize("overrides, field", BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_config_is_one_line_naming_the_field(tmp_path, overrides, field):
    data = json.loads(zoe_config().to_json_string())
    data.update(overrides)
    with pytest.raises(ValueError, match=field) as info:
        ZoeDepthConfig.from_dict(data)
    assert "\n" not in str(info.value)
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=field):
        dpt_mlx.load_model(tmp_path)

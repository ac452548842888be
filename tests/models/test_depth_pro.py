"""Depth Pro: parity with transformers on tiny perturbed checkpoints shaped like apple/DepthPro-hf (and variants
that switch what it does not), every branch of the patch split and merge, half precision, quantisation,
conversion, the CPU layers, and the config."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import transformers
from helpers import TOL, pixels, rel_err
from model_configs import DEPTH_PRO_VARIANTS as VARIANTS
from model_configs import depth_pro_config, make_depth_pro

import dpt_mlx
from dpt_mlx import cpu
from dpt_mlx.cli.convert import main as convert_main
from dpt_mlx.configs.depth_pro import DepthProConfig
from dpt_mlx.errors import CheckpointError, UnsupportedModelError
from dpt_mlx.io.quantize import quantize_model
from dpt_mlx.models import depth_pro

# (H, W) per variant, and what each exercises (scale: patch grid -> merged square, crop):
SHAPES = {
    # the native size (1 + 3x3 + 5x5 patches, crops capped at 1); non-square with sides that the ratios do not
    # divide (0.25: one patch cut from 67x80; 0.5: 3x4 -> 3x3; 1: 5x6 -> 5x5; the hooks' 6x6 square mixes
    # patches of the two largest scales)
    "hub": [(256, 256), (270, 321)],
    # 0.75: 2x2 and 2x3 -> 2x2, crop 1 below the cap of 2; the hooks' 3x3 square mixes all three scales
    "no-fov-bn": [(64, 64), (70, 90)],
    # 0.5: 1x2 patches -> the first one, uncropped; 1: 3x7 -> 4x4 and 4x3 -> 3x3; wide (where log2 of the height
    # and of the width over the grid round to different powers: the width decides) and tall
    "two-scales": [(64, 64), (64, 128), (80, 64)],
}


def err_of_range(ours, ref) -> float:
    """max|ours - ref| / (max(ref) - min(ref)), for a reference that varies (a constant map would match anything)."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref.numpy(), dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    span = ref.max() - ref.min()
    assert span > 1e-2 * np.abs(ref).max(), "the reference depth barely varies: the comparison would prove little"
    return float(np.abs(ours - ref).max() / span)


def check_fov(got, expected):
    """Parity of the field of view, on a batch whose images get different values."""
    want = expected.field_of_view
    assert want.shape == (2,) and abs(float(want[0] - want[1])) > 1e-3 * float(want.abs().max())
    assert rel_err(got.field_of_view, want) <= TOL


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth_pro")
    out = {}
    for name, variant in VARIANTS.items():
        x = pixels(2, *SHAPES[name][0], seed=7)
        out[name] = (make_depth_pro(root / name, depth_pro_config(**variant), x), root / name)
    return out


@pytest.mark.parity
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity(checkpoints, variant):
    ref, path = checkpoints[variant]
    ours = dpt_mlx.load_model(path)
    assert type(ours) is dpt_mlx.DepthProForDepthEstimation
    for h, w in SHAPES[variant]:
        x = pixels(2, h, w, seed=h + w)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
        got = ours(x, output_hidden_states=True, output_attentions=True)
        assert err_of_range(got.predicted_depth, expected.predicted_depth) <= TOL, (h, w)
        if ref.config.use_fov_model:
            check_fov(got, expected)
        else:
            assert got.field_of_view is None and expected.field_of_view is None
        layers = ref.config.image_model_config.num_hidden_layers
        assert len(got.hidden_states) == len(expected.hidden_states) == layers + 1
        for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
            assert rel_err(a, b) <= TOL
        assert len(got.attentions) == len(expected.attentions) == layers
        for a, b in zip(got.attentions, expected.attentions, strict=True):
            assert rel_err(a, b) <= TOL
    out = ours(pixels(1, *SHAPES[variant][0]))
    assert out.hidden_states is None and out.attentions is None
    assert list(out.keys()) == ["predicted_depth"] + (["field_of_view"] if ref.config.use_fov_model else [])


@pytest.mark.parity
def test_patch_passes_do_not_change_the_result(checkpoints):
    """The patch encoder's passes (here 3 patches, which split scales and the hooked patches) compute what one does."""
    _, path = checkpoints["hub"]
    model = dpt_mlx.load_model(path)
    x = pixels(2, 270, 321, seed=3)
    assert model.depth_pro.encoder.patch_encoder.patches_per_pass == depth_pro.PATCHES_PER_PASS
    model.depth_pro.encoder.patch_encoder.patches_per_pass = 1000
    whole = model(x)
    model.depth_pro.encoder.patch_encoder.patches_per_pass = 3
    passes = model(x)
    for a, b in ((passes.predicted_depth, whole.predicted_depth), (passes.field_of_view, whole.field_of_view)):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6 * float(mx.abs(b).max()))


@pytest.mark.parity
def test_without_the_fov_model(tmp_path, checkpoints):
    """A checkpoint's field-of-view weights are left out when the config (or the constructor) turns the head off,
    as transformers ignores them; the depth is the same."""
    ref, path = checkpoints["hub"]
    config = json.loads((path / "config.json").read_text())
    config["use_fov_model"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
    x = pixels(2, 256, 256, seed=5)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))
    model = dpt_mlx.load_model(tmp_path)
    assert model.fov_model is None and not model.config.use_fov_model
    got = model(x)
    assert got.field_of_view is None and err_of_range(got.predicted_depth, expected.predicted_depth) <= TOL
    full = dpt_mlx.load_model(path)
    built = dpt_mlx.DepthProForDepthEstimation(full.config, use_fov_model=False)
    assert built.fov_model is None and full.config.use_fov_model and not built.config.use_fov_model
    built.save_pretrained(tmp_path / "saved")  # its config says what it has: it loads back
    assert dpt_mlx.load_model(tmp_path / "saved").fov_model is None


@pytest.mark.parity
def test_cpu_layers_stand_in(checkpoints):
    """On the CPU with the kernels on, the ViT blocks, convolutions, transposed convolutions and the head run the
    CPU layers (the parity tests run again with DPT_MLX_FAST_KERNELS=0 for the plain MLX path)."""
    from dpt_mlx.cpu.blocks import Dinov2Layer, PatchConvTranspose2d, PreActResidualLayer

    model = dpt_mlx.load_model(checkpoints["hub"][1])
    kinds = {type(m) for _, m in model.named_modules()}
    if cpu.cpu_info()["kernels"]:
        assert {Dinov2Layer, PatchConvTranspose2d, PreActResidualLayer} <= kinds
        assert type(model.head).__module__ == "dpt_mlx.cpu.blocks"
        assert not any(type(m) is nn.ConvTranspose2d for _, m in model.named_modules())
    else:
        assert not cpu.is_accelerated(model)


# max|half - f32| / range(f32) measured on the hub-shaped checkpoint (seed 0, 2x270x321, three inputs), float16 /
# bfloat16, on both CPU paths: depth 3.6e-3 / 3.0e-2; field of view (relative to its max) 1.8e-3 / 1.2e-2. The
# perturbed tiny network's depth reaches 3e4, where float16's step is 16. Bounds: ~3x.
HALF_BOUND = {"float16": 1e-2, "bfloat16": 8e-2}


@pytest.mark.parity
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision(checkpoints, dtype):
    _, path = checkpoints["hub"]
    x = pixels(2, 270, 321, seed=2)
    ref = dpt_mlx.load_model(path)(x)
    model = dpt_mlx.load_model(path, dtype=dtype)
    assert model.dtype == getattr(mx, dtype)
    out = model(x)
    assert out.predicted_depth.dtype == getattr(mx, dtype)
    depth = np.array(out.predicted_depth.astype(mx.float32))
    assert np.isfinite(depth).all()
    want = np.array(ref.predicted_depth)
    assert np.abs(depth - want).max() / (want.max() - want.min()) <= HALF_BOUND[dtype]
    assert rel_err(np.array(out.field_of_view.astype(mx.float32)), np.array(ref.field_of_view)) <= HALF_BOUND[dtype]


# max|q - f32| / range(f32) measured on the hub-shaped checkpoint (seed 0, 2x270x321, three inputs, group size 32),
# 8-bit / 4-bit, on both CPU paths: depth 1.2e-2 / 1.8e-1, field of view (relative to its max) 2.2e-3 / 1.8e-2.
# Bounds: ~3x. Only the three DINOv2s' block linear layers are quantised (32 wide here: one group per row).
QUANT_BOUND = {8: 4e-2, 4: 0.5}


@pytest.mark.parity
@pytest.mark.parametrize("bits", [8, 4])
def test_quantized(tmp_path, checkpoints, bits):
    _, path = checkpoints["hub"]
    x = pixels(2, 270, 321, seed=3)
    ref = dpt_mlx.load_model(path)(x)
    model = quantize_model(dpt_mlx.load_model(path), bits=bits, group_size=32)
    quantized = {name for name, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)}
    encoders = ("depth_pro.encoder.patch_encoder.", "depth_pro.encoder.image_encoder.", "fov_model.fov_encoder.")
    assert len(quantized) == 3 * 6 * 12 and all(name.startswith(encoders) for name in quantized)
    out = model(x)
    depth, want = np.array(out.predicted_depth), np.array(ref.predicted_depth)
    assert np.isfinite(depth).all()
    assert np.abs(depth - want).max() / (want.max() - want.min()) <= QUANT_BOUND[bits]
    assert rel_err(np.array(out.field_of_view), np.array(ref.field_of_view)) <= QUANT_BOUND[bits]
    model.save_pretrained(tmp_path)  # a quantised checkpoint loads back to the same outputs
    again = dpt_mlx.load_model(tmp_path)(x)
    assert np.array_equal(np.array(again.predicted_depth), depth)


@pytest.mark.parity
def test_convert_and_mlx_round_trip(checkpoints, tmp_path, capsys):
    """convert.py writes a verified MLX checkpoint (the transposed convolutions' kernels moved as such); it loads
    back, by load_model's architecture lookup, to the same outputs."""
    ref, path = checkpoints["hub"]
    assert convert_main(["--hf-path", str(path), "--mlx-path", str(tmp_path / "mlx")]) == 0, capsys.readouterr().err
    assert "verified" in capsys.readouterr().out
    x = pixels(1, 256, 300, seed=4)
    direct = dpt_mlx.load_model(path)(x)
    converted = dpt_mlx.load_model(tmp_path / "mlx")
    assert type(converted) is dpt_mlx.DepthProForDepthEstimation
    out = converted(x)
    assert np.array_equal(np.array(out.predicted_depth), np.array(direct.predicted_depth))
    assert np.array_equal(np.array(out.field_of_view), np.array(direct.field_of_view))
    with torch.no_grad():
        assert err_of_range(out.predicted_depth, ref(torch.from_numpy(x)).predicted_depth) <= TOL


def test_inputs_it_cannot_take_are_one_line_errors(checkpoints):
    model = dpt_mlx.load_model(checkpoints["two-scales"][1])
    for shape, match in (((1, 3, 63, 64), "too small"), ((1, 3, 64, 2048), "too wide"), ((1, 4, 64, 64), "shape")):
        with pytest.raises(ValueError, match=match) as info:
            model(np.zeros(shape, np.float32))
        assert "\n" not in str(info.value)
    with pytest.raises(NotImplementedError, match="labels"):
        model(pixels(1, 64, 64), labels=np.zeros((1, 32, 32), np.float32))


def test_config_defaults_match_reference():
    ref, ours = transformers.DepthProConfig(), DepthProConfig()
    for name in (
        "fusion_hidden_size",
        "patch_size",
        "initializer_range",
        "merge_padding_value",
        "use_batch_norm_in_fusion_residual",
        "use_bias_in_fusion_residual",
        "use_fov_model",
        "num_fov_head_layers",
    ):
        assert getattr(ours, name) == getattr(ref, name), name
    for name in (
        "intermediate_hook_ids",
        "intermediate_feature_dims",
        "scaled_images_ratios",
        "scaled_images_overlap_ratios",
        "scaled_images_feature_dims",
    ):
        assert getattr(ours, name) == list(getattr(ref, name)), name
    for name in ("image_model_config", "patch_model_config", "fov_model_config"):
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size"):
            assert getattr(getattr(ours, name), field) == getattr(getattr(ref, name), field), (name, field)
    assert ours.image_size == 1536 and ours.predicts_metres and ours.num_channels == 3
    # transformers' JSON of the hub's shape reads back, and ours round-trips
    hub = dict(model_type="dinov2", num_hidden_layers=24, patch_size=16, hidden_size=1024, num_attention_heads=16)
    data = json.loads(
        transformers.DepthProConfig(
            **{k: dict(hub) for k in ("image_model_config", "patch_model_config", "fov_model_config")},
            use_fov_model=True,
        ).to_json_string()
    )
    config = dpt_mlx.configs.load.config_from_dict(data)
    assert type(config) is DepthProConfig and config.use_fov_model and config.patch_model_config.image_size == 384
    assert DepthProConfig.from_dict(config.to_dict()) == config


def _data(**overrides):
    data = json.loads(depth_pro_config(**VARIANTS["hub"]).to_json_string())
    data.update(overrides)
    return data


BAD = [
    (dict(scaled_images_ratios=[0.5, 0.25, 1]), "scaled_images_ratios"),
    (dict(scaled_images_ratios=[0.25, 1]), "scaled_images_overlap_ratios"),
    (dict(scaled_images_overlap_ratios=[0.0, 0.5, 1.0]), "scaled_images_overlap_ratios"),
    (dict(scaled_images_ratios=[0, 0.5, 1]), "scaled_images_ratios"),
    (dict(intermediate_hook_ids=[11]), "intermediate_feature_dims"),
    (dict(intermediate_hook_ids=[12, 5]), "intermediate_hook_ids"),
    (dict(intermediate_hook_ids=[-1, 5]), "intermediate_hook_ids"),
    (dict(fusion_hidden_size=3), "fusion_hidden_size"),
    (dict(num_fov_head_layers=5), "num_fov_head_layers"),
    (dict(patch_size=[64, 64]), "patch_size"),
    (dict(merge_padding_value=-1), "merge_padding_value"),
    (dict(patch_model_config={"model_type": "dinov2", "hidden_size": 30, "num_attention_heads": 4}), "hidden_size"),
    (dict(fov_model_config={"model_type": "dinov2", "patch_size": 128}), "patch_size"),
    (
        dict(scaled_images_ratios=[1], scaled_images_overlap_ratios=[0], scaled_images_feature_dims=[8])
        | dict(intermediate_hook_ids=[], intermediate_feature_dims=[]),
        "two",
    ),
]


@pytest.mark.parametrize("overrides, field", BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_config_is_one_line_naming_the_value(tmp_path, overrides, field):
    data = _data(**overrides)
    with pytest.raises(ValueError, match=field) as info:
        DepthProConfig.from_dict(data)
    assert "\n" not in str(info.value)
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=field):
        dpt_mlx.load_model(tmp_path)


def test_other_encoders_are_refused():
    data = _data(patch_model_config={"model_type": "vit", "hidden_size": 32})
    with pytest.raises(UnsupportedModelError, match="patch_model_config.*vit"):
        DepthProConfig.from_dict(data)

"""Prompt Depth Anything: parity with transformers on tiny perturbed checkpoints shaped like the hub's,
with and without a prompt depth map, and the checks of the prompt."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from helpers import TOL, open_final_relu, perturb, pixels, rel_err
from model_configs import PDA_VARIANTS as VARIANTS
from model_configs import pda_config, spread_head

import dpt_mlx
from dpt_mlx.configs.dpt import DepthAnythingConfig, PromptDepthAnythingConfig
from dpt_mlx.configs.load import config_from_dict
from dpt_mlx.io.quantize import quantize_model

# (image H, W, prompt h, w): square; non-square with an iPhone-LiDAR-like 192x256 prompt; a size that is no
# multiple of 14 (output 56x28) with a small non-square prompt; a prompt smaller than the coarsest map.
CASES = [(42, 42, 42, 42), (42, 56, 192, 256), (57, 29, 9, 5), (28, 42, 1, 2)]


def prompts(batch, h, w, seed=0) -> np.ndarray:
    """Depth maps in metres, a different range per image (0.3-2.5 m, 1-12 m, ...)."""
    rng = np.random.default_rng(seed)
    lows, highs = [0.3, 1.0, 0.5], [2.5, 12.0, 4.0]
    return np.stack([rng.uniform(lows[i % 3], highs[i % 3], (1, h, w)) for i in range(batch)]).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """variant -> (reference model, checkpoint directory)."""
    root, out = tmp_path_factory.mktemp("pda"), {}
    for seed, (name, shape) in enumerate(VARIANTS.items()):
        torch.manual_seed(seed)
        ref = transformers.PromptDepthAnythingForDepthEstimation(pda_config(**shape))
        ref.set_attn_implementation("eager")  # SDPA returns no attention probabilities
        ref = perturb(ref, seed=seed)
        spread_head(ref, pixels(2, 42, 56, seed=seed), prompts(2, 192, 256, seed=seed))
        if shape.get("depth_estimation_type") == "relative":
            open_final_relu(ref, pixels(2, 42, 56, seed=seed), share=0.85)
        ref.save_pretrained(root / name)
        out[name] = ref, root / name
    return out


def reference(ref, x, prompt=None, **kwargs):
    with torch.no_grad():
        return ref(torch.from_numpy(x), prompt_depth=None if prompt is None else torch.from_numpy(prompt), **kwargs)


def range_err(ours, ref) -> float:
    """max|ours - ref| per image over that image's output range (the prompt's scale)."""
    ours, ref = np.asarray(ours, dtype=np.float64), ref.detach().numpy().astype(np.float64)
    assert ours.shape == ref.shape
    spans = ref.max(axis=(1, 2)) - ref.min(axis=(1, 2))
    return float((np.abs(ours - ref).max(axis=(1, 2)) / spans).max())


def check_not_vacuous(depth, prompt, metric: bool):
    """The output varies and lies in the prompt's range; a sigmoid head is not saturated."""
    for d, p in zip(depth.numpy(), prompt):
        low, high = float(p.min()), float(p.max())
        u = (d - low) / (high - low)  # the head's output
        assert u.std() > 0.05
        if metric:
            assert u.min() >= 0 and u.max() <= 1 and np.mean((u > 0.02) & (u < 0.98)) > 0.9
        else:
            assert np.mean(u > 0) > 0.5


@pytest.mark.parity
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_and_without_prompt(checkpoints, variant):
    ref, path = checkpoints[variant]
    ours = dpt_mlx.load_model(path)
    assert type(ours) is dpt_mlx.PromptDepthAnythingForDepthEstimation
    metric = ref.config.depth_estimation_type == "metric"
    for i, (h, w, ph, pw) in enumerate(CASES):
        x, p = pixels(2, h, w, seed=i), prompts(2, ph, pw, seed=i)
        expected = reference(ref, x, p).predicted_depth
        assert expected.shape == (2, h // 14 * 14, w // 14 * 14)
        check_not_vacuous(expected, p, metric)
        assert range_err(ours(x, prompt_depth=p).predicted_depth, expected) <= TOL
        assert range_err(ours(mx.array(x), prompt_depth=mx.array(p)).predicted_depth, expected) <= TOL
        # Without a prompt: the head's output as it is (no normalisation, no max_depth).
        plain = reference(ref, x).predicted_depth
        assert float(plain.std()) > 0.02 * float(plain.abs().max())
        assert rel_err(ours(x).predicted_depth, plain) <= TOL
        low, high = p.min(axis=(1, 2, 3))[:, None, None], p.max(axis=(1, 2, 3))[:, None, None]
        head = (expected.numpy() - low) / (high - low)
        assert np.abs(head - plain.numpy()).max() > 0.05 * float(plain.abs().max())  # the prompt's features count


@pytest.mark.parity
def test_hidden_states_and_attentions(checkpoints):
    ref, path = checkpoints["vitl"]
    ours = dpt_mlx.PromptDepthAnythingForDepthEstimation.from_pretrained(path)
    x, p = pixels(1, 28, 42), prompts(1, 192, 256)
    expected = reference(ref, x, p, output_hidden_states=True, output_attentions=True)
    got = ours(x, prompt_depth=p, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == len(expected.hidden_states) == 25
    for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert rel_err(a, b) <= TOL
    for a, b in zip(got.attentions, expected.attentions, strict=True):
        assert rel_err(a, b) <= TOL
    assert range_err(got.predicted_depth, expected.predicted_depth) <= TOL
    out = ours(x, prompt_depth=p)
    assert out.hidden_states is None and out.attentions is None and out.loss is None


@pytest.mark.parity
def test_batch_normalises_each_prompt_on_its_own(checkpoints):
    """Each image's prompt is scaled by its own min/max: a batch gives what its images give one by one,
    and an affine change of one prompt (a p + c, a > 0) changes only that image's depth, by the same map."""
    ref, path = checkpoints["vits"]
    ours = dpt_mlx.load_model(path)
    x, p = pixels(2, 42, 56, seed=3), prompts(2, 192, 256, seed=3)
    batch = np.array(ours(x, prompt_depth=p).predicted_depth)
    for i in range(2):
        alone = np.array(ours(x[i : i + 1], prompt_depth=p[i : i + 1]).predicted_depth)[0]
        assert np.abs(alone - batch[i]).max() <= TOL * np.ptp(batch[i])
    q = p.copy()
    q[1] = 3.0 * q[1] + 0.7  # e.g. another unit and an offset
    moved = np.array(ours(x, prompt_depth=q).predicted_depth)
    np.testing.assert_array_equal(moved[0], batch[0])
    assert np.abs(moved[1] - (3.0 * batch[1] + 0.7)).max() <= TOL * np.ptp(moved[1])
    assert range_err(moved, reference(ref, x, q).predicted_depth) <= TOL


@pytest.mark.parity
def test_mlx_round_trip_and_null_max_depth(checkpoints, tmp_path):
    _, path = checkpoints["vits"]
    assert json.loads((path / "config.json").read_text())["max_depth"] is None  # as on the hub
    ours = dpt_mlx.load_model(path)
    ours.save_pretrained(tmp_path / "mlx")
    again = dpt_mlx.load_model(tmp_path / "mlx")
    assert type(again) is dpt_mlx.PromptDepthAnythingForDepthEstimation
    x, p = pixels(1, 28, 42), prompts(1, 12, 16)
    assert np.array_equal(
        np.array(again(x, prompt_depth=p).predicted_depth), np.array(ours(x, prompt_depth=p).predicted_depth)
    )


# max|half - ref| over each image's output range, measured on this input (default / portable CPU path):
# float16 3.1e-3 / 3.4e-3, bfloat16 2.3e-2 / 2.4e-2. Bounds: tests/test_precision.py's (2.5x these).
HALF_BOUND = {"float16": 9e-3, "bfloat16": 6e-2}


@pytest.mark.parity
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision(checkpoints, dtype):
    ref, path = checkpoints["vits"]
    model = dpt_mlx.load_model(path, dtype=dtype)
    assert model.dtype == getattr(mx, dtype)
    x, p = pixels(2, 42, 56, seed=1), prompts(2, 192, 256, seed=1)
    out = model(x, prompt_depth=p).predicted_depth
    assert out.dtype == getattr(mx, dtype)
    assert range_err(np.array(out.astype(mx.float32)), reference(ref, x, p).predicted_depth) <= HALF_BOUND[dtype]


# max|q - ref| over each image's output range on the vitl-shaped checkpoint (hidden 32: every encoder
# linear quantises in groups of 32), measured on both CPU paths: 8-bit 3.8e-3, 4-bit 7.8e-2.
# Bounds: tests/test_quantize.py's (about 6x these).
Q_BOUND = {8: 0.04, 4: 0.45}


@pytest.mark.parity
@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_model_stays_close(checkpoints, bits):
    ref, path = checkpoints["vitl"]
    model = quantize_model(dpt_mlx.load_model(path), bits=bits, group_size=32)
    x, p = pixels(2, 42, 56, seed=2), prompts(2, 192, 256, seed=2)
    got = np.array(model(x, prompt_depth=p).predicted_depth)
    assert np.isfinite(got).all()
    err = range_err(got, reference(ref, x, p).predicted_depth)
    assert 0 < err <= Q_BOUND[bits]


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 8, 8), r"\(2, 1, height, width\).*\(2, 8, 8\)"),  # no channel axis
        ((2, 2, 8, 8), r"got \(2, 2, 8, 8\)"),  # two channels
        ((1, 1, 8, 8), r"for 2 image\(s\)"),  # a batch of 1 for 2 images
        ((3, 1, 8, 8), r"got \(3, 1, 8, 8\)"),
        ((2, 1, 0, 8), r"got \(2, 1, 0, 8\)"),
    ],
)
def test_bad_prompt_shapes(checkpoints, shape, message):
    model = dpt_mlx.load_model(checkpoints["vits"][1])
    with pytest.raises(ValueError, match=message):
        model(pixels(2, 28, 28), prompt_depth=np.ones(shape, dtype=np.float32))


@pytest.mark.parametrize("fill", [2.0, np.nan, np.inf])
def test_constant_or_non_finite_prompt_is_refused(checkpoints, fill):
    """Where the reference divides by max - min = 0 (or by NaN) and returns NaN, say why."""
    model = dpt_mlx.load_model(checkpoints["vits"][1])
    p = prompts(2, 8, 8)
    p[1, 0, 2, 3] = fill
    if fill == 2.0:
        p[1] = 2.0
    with pytest.raises(ValueError, match="finite and vary within each image"):
        model(pixels(2, 28, 28), prompt_depth=p)


def test_labels_give_a_loss(checkpoints):
    model = dpt_mlx.load_model(checkpoints["vits"][1])
    x, p = pixels(2, 28, 42), prompts(2, 12, 16)
    labels = np.random.default_rng(0).uniform(0.5, 3.0, (2, 28, 42)).astype(np.float32)
    loss = model(x, prompt_depth=p, labels=labels).loss
    assert loss.shape == () and np.isfinite(loss.item()) and loss.item() > 0


def test_config_defaults_match_reference():
    ref, ours = transformers.PromptDepthAnythingConfig(), PromptDepthAnythingConfig()
    for name in (
        "patch_size",
        "reassemble_hidden_size",
        "fusion_hidden_size",
        "head_in_index",
        "head_hidden_size",
        "depth_estimation_type",
        "max_depth",
        "model_type",
    ):
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.reassemble_factors == list(ref.reassemble_factors)
    assert ours.neck_hidden_sizes == list(ref.neck_hidden_sizes)
    for key, value in ours.backbone_config.items():
        assert getattr(ref.backbone_config, key) == value, key
    assert ours.architectures == ["PromptDepthAnythingForDepthEstimation"]
    assert ours.predicts_metres is True and not hasattr(DepthAnythingConfig(), "predicts_metres")
    cfg = config_from_dict(transformers.PromptDepthAnythingConfig(depth_estimation_type="metric").to_dict())
    assert type(cfg) is PromptDepthAnythingConfig and cfg.depth_estimation_type == "metric"
    with pytest.raises(ValueError, match="absolute"):
        PromptDepthAnythingConfig(depth_estimation_type="absolute")
    with pytest.raises(TypeError, match="PromptDepthAnythingConfig"):
        dpt_mlx.PromptDepthAnythingForDepthEstimation(DepthAnythingConfig())

"""convert.py: writes a verified MLX checkpoint atomically and never touches the source."""

import hashlib
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import transformers
from helpers import open_final_relu, perturb, pixels
from model_configs import tiny_config

import dpt_mlx
from dpt_mlx.cli.convert import main as convert_main
from dpt_mlx.io import convert as conv
from dpt_mlx.io.quantize import quantize_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def source(tmp_path):
    torch.manual_seed(0)
    transformers.DPTForDepthEstimation(tiny_config()).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def digest(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def run(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "convert.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_cli_converts_and_refuses_to_overwrite(source, tmp_path):
    before = digest(source)
    out = tmp_path / "mlx"
    r = run("--hf-path", source, "--mlx-path", out)
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout
    assert digest(source) == before
    _, meta = mx.load(str(out / "model.safetensors"), return_metadata=True)
    assert meta["format"] == "mlx"

    r = run("--hf-path", source, "--mlx-path", out)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--overwrite" in r.stderr and "Traceback" not in r.stderr

    r = run("--hf-path", source, "--mlx-path", out, "--overwrite", "--dtype", "float16")
    assert r.returncode == 0, r.stderr
    assert dpt_mlx.load_model(out).dtype == mx.float16
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "args",
    [
        ["--hf-path", "/no/such/dir", "--mlx-path", "OUT"],
        ["--hf-path", "SRC", "--mlx-path", "OUT", "--dtype", "float64"],
    ],
)
def test_cli_errors_are_one_line(source, tmp_path, args):
    args = [str(source) if a == "SRC" else str(tmp_path / "o") if a == "OUT" else a for a in args]
    r = run(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_failed_verification_leaves_nothing(source, tmp_path, monkeypatch):
    monkeypatch.setattr(conv, "verify", lambda a, b: 1.0)
    with pytest.raises(dpt_mlx.CheckpointError, match="differs"):
        conv.convert(source, tmp_path / "mlx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_verification_catches_wrong_weights(source, tmp_path):
    """The check compares real outputs: a model with other weights fails it."""
    a = dpt_mlx.load_model(source)
    b = dpt_mlx.load_model(source)
    b.head.conv3.bias = b.head.conv3.bias + 1.0
    assert conv.verify(a, a) == 0.0
    assert conv.verify(a, b) > 1e-3


# Tiny checkpoints of every family convert.py handles: (reference class, config, input size).
HALF_KINDS = {
    "dpt": (transformers.DPTForDepthEstimation, lambda: tiny_config(), (32, 32)),
    "hybrid": (
        transformers.DPTForDepthEstimation,
        lambda: transformers.DPTConfig(
            is_hybrid=True,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=64,
            patch_size=16,
            backbone_out_indices=[0, 1, 2, 3],
            neck_hidden_sizes=[16, 32, 32, 32],
            reassemble_factors=[1, 1, 1, 0.5],
            fusion_hidden_size=16,
            backbone_featmap_shape=[1, 64, 4, 4],
            use_batch_norm_in_fusion_residual=True,
            backbone_config=dict(
                model_type="bit",
                layer_type="bottleneck",
                global_padding="same",
                embedding_dynamic_padding=True,
                depths=[1, 1, 2],
                embedding_size=8,
                hidden_sizes=[16, 32, 64],
                num_groups=4,
                out_features=["stage1", "stage2", "stage3"],
            ),
        ),
        (64, 64),
    ),
    "segmentation": (
        transformers.DPTForSemanticSegmentation,
        lambda: tiny_config(use_batch_norm_in_fusion_residual=True),
        (32, 32),
    ),
    "dinov2": (
        transformers.DPTForDepthEstimation,
        lambda: transformers.DPTConfig(
            backbone_config=transformers.Dinov2Config(
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=2,
                image_size=28,
                patch_size=14,
                out_indices=[1, 2, 3, 4],
                apply_layernorm=False,
                reshape_hidden_states=False,
            ),
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            use_bias_in_fusion_residual=False,
        ),
        (28, 42),
    ),
    "depth-anything": (
        transformers.DepthAnythingForDepthEstimation,
        lambda: transformers.DepthAnythingConfig(
            backbone_config=transformers.Dinov2Config(
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                image_size=42,
                patch_size=14,
                out_indices=[1, 2, 3, 4],
                reshape_hidden_states=False,
            ),
            patch_size=14,
            reassemble_hidden_size=64,
            neck_hidden_sizes=[16, 32, 64, 64],
            fusion_hidden_size=32,
            head_hidden_size=16,
        ),
        (42, 56),
    ),
    "prompt-depth-anything": (
        transformers.PromptDepthAnythingForDepthEstimation,
        lambda: transformers.PromptDepthAnythingConfig(
            backbone_config=transformers.Dinov2Config(
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                image_size=42,
                patch_size=14,
                out_indices=[1, 2, 3, 4],
                reshape_hidden_states=False,
            ),
            patch_size=14,
            reassemble_hidden_size=64,
            neck_hidden_sizes=[16, 32, 64, 64],
            fusion_hidden_size=32,
            head_hidden_size=16,
            depth_estimation_type="metric",
            max_depth=None,
        ),
        (42, 56),
    ),
    "zoedepth": (
        transformers.ZoeDepthForDepthEstimation,
        lambda: transformers.ZoeDepthConfig(
            backbone_config=dict(
                model_type="beit",
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=64,
                image_size=32,
                patch_size=8,
                use_relative_position_bias=True,
                reshape_hidden_states=False,
                out_features=["stage1", "stage2", "stage3", "stage4"],
            ),
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            bottleneck_features=16,
            num_relative_features=8,
            bin_embedding_dim=16,
        ),
        (32, 40),
    ),
}


@pytest.fixture(scope="module")
def half_sources(tmp_path_factory):
    """kind -> (perturbed reference checkpoint, input pixels); depth heads' final ReLU open on ~90% of pixels."""
    root, out = tmp_path_factory.mktemp("half"), {}
    for kind, (cls, config, (h, w)) in HALF_KINDS.items():
        torch.manual_seed(0)
        ref = perturb(cls(config()))
        x = pixels(2, h, w)
        if kind not in ("segmentation", "zoedepth"):  # ZoeDepth's bins head ends in a positive expectation
            open_final_relu(ref, x)
        ref.save_pretrained(root / kind)
        out[kind] = root / kind, x
    return out


def first_output(model, x) -> np.ndarray:
    out = model(x)
    return np.array((out.logits if "logits" in out else out.predicted_depth).astype(mx.float32))


def module_types(model) -> list:
    return [type(m) for _, m in model.named_modules()]


@pytest.mark.parity  # on both CPU paths: their half-precision layers differ
@pytest.mark.parametrize("quantize", [False, True], ids=["float", "8-bit"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", list(HALF_KINDS))
def test_half_conversion_loads_as_dtype_on_the_source(half_sources, tmp_path, capsys, kind, dtype, quantize):
    """``convert.py --dtype`` (and ``--quantize``) succeeds for every family, and the converted checkpoint is
    the model ``load_model(source, dtype=...)`` gives: the same modules, bit-identical outputs."""
    source, x = half_sources[kind]
    args = ["--hf-path", str(source), "--mlx-path", str(tmp_path / "out"), "--dtype", dtype]
    if quantize:
        args += ["--quantize", "--q-group-size", "32"]
    assert convert_main(args) == 0, capsys.readouterr().err
    converted = dpt_mlx.load_model(tmp_path / "out")
    direct = dpt_mlx.load_model(source, dtype=dtype)
    if quantize:
        quantize_model(direct, bits=8, group_size=32)
    assert converted.dtype == direct.dtype == getattr(mx, dtype)
    assert module_types(converted) == module_types(direct)
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in converted.named_modules()) == quantize
    a, b = first_output(converted, x), first_output(direct, x)
    assert np.isfinite(a).all() and np.count_nonzero(a) > a.size // 2
    assert np.array_equal(a, b)


@pytest.mark.parity
def test_prompt_depth_anything_converts_with_its_prompt_layers(half_sources, tmp_path, capsys):
    """The converter's check runs without a prompt; the prompt path of the converted checkpoint matches too."""
    source, x = half_sources["prompt-depth-anything"]
    assert convert_main(["--hf-path", str(source), "--mlx-path", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    converted = dpt_mlx.load_model(tmp_path / "out")
    assert type(converted) is dpt_mlx.PromptDepthAnythingForDepthEstimation
    prompt = np.random.default_rng(0).uniform(0.5, 6.0, (2, 1, 48, 64)).astype(np.float32)
    ref = transformers.PromptDepthAnythingForDepthEstimation.from_pretrained(source).eval()
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), prompt_depth=torch.from_numpy(prompt)).predicted_depth.numpy()
    got = np.array(converted(x, prompt_depth=prompt).predicted_depth)
    assert np.ptp(expected) > 1e-3 * np.abs(expected).max()  # not constant
    assert np.abs(got - expected).max() <= 1e-4 * np.ptp(expected)


def test_overflowing_half_model_is_refused_with_a_reason(half_sources, tmp_path, monkeypatch):
    """A model whose float16 output is not finite fails verification saying so, not "relative error nan"."""
    source, _ = half_sources["dpt"]
    real = conv._first_output
    monkeypatch.setattr(conv, "_first_output", lambda out: real(out) * mx.array(float("inf"), dtype=mx.float16))
    with pytest.raises(dpt_mlx.CheckpointError, match="not finite in float16.*bfloat16"):
        conv.convert(source, tmp_path / "out", dtype="float16")
    assert not (tmp_path / "out").exists()


def test_sigterm_leaves_nothing_and_stale_work_dirs_go(source, tmp_path, monkeypatch, capsys):
    """SIGTERM mid-conversion: 143, nothing left. Work directories of the target found on the way are a
    dead conversion's (a live one would hold the lock), however new, and are removed."""
    import os
    import signal

    stale = tmp_path / ".mlx.tmp-killed1"  # what a SIGKILL'd conversion leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".mlx.lock").touch()  # and its lock file (the lock itself died with it)
    other = tmp_path / ".other.tmp-running"  # another target's: not ours to remove
    other.mkdir()

    def terminated(a, b):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the work directory is full
        return 0.0

    monkeypatch.setattr(conv, "verify", terminated)
    handler = signal.getsignal(signal.SIGTERM)
    assert convert_main(["--hf-path", str(source), "--mlx-path", str(tmp_path / "mlx")]) == 143
    assert "terminated by SIGTERM" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-running", "hf"]
    assert signal.getsignal(signal.SIGTERM) is handler  # the policy holds only while the command runs

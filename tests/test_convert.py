"""convert.py: writes a verified MLX checkpoint atomically and never touches the source."""

import hashlib
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
import torch
import transformers

import dpt_mlx
from dpt_mlx.io import convert as conv
from test_modeling import tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def source(tmp_path):
    torch.manual_seed(0)
    transformers.DPTForDepthEstimation(tiny_config()).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def digest(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "convert.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


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


@pytest.mark.parametrize("args", [
    ["--hf-path", "/no/such/dir", "--mlx-path", "OUT"],
    ["--hf-path", "SRC", "--mlx-path", "OUT", "--dtype", "float64"],
])
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

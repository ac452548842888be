"""Loading errors name what is wrong; nothing is unpickled."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import dpt_mlx
from dpt_mlx.errors import CheckpointError, UnsupportedModelError
from test_modeling import tiny_config


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    transformers.DPTForDepthEstimation(tiny_config()).save_pretrained(tmp_path)
    return tmp_path


def test_truncated_safetensors(checkpoint):
    f = checkpoint / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read .*model.safetensors"):
        dpt_mlx.DPTForDepthEstimation.from_pretrained(checkpoint)


def test_garbage_safetensors(checkpoint):
    (checkpoint / "model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="cannot read"):
        dpt_mlx.load_model(checkpoint)


def test_missing_tensor_named(checkpoint):
    f = checkpoint / "model.safetensors"
    tensors = load_file(f)
    del tensors["neck.convs.2.weight"]
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing tensor neck\.convs\.2\.weight"):
        dpt_mlx.DPTForDepthEstimation.from_pretrained(checkpoint)


def test_unexpected_tensor_named(checkpoint):
    f = checkpoint / "model.safetensors"
    tensors = load_file(f)
    tensors["neck.extra.weight"] = torch.zeros(3)
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"unexpected tensor neck\.extra\.weight"):
        dpt_mlx.DPTForDepthEstimation.from_pretrained(checkpoint)


def test_config_shapes_disagree_with_weights(checkpoint):
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["fusion_hidden_size"] = 24
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tensor neck\.\S+ has shape .* config implies"):
        dpt_mlx.DPTForDepthEstimation.from_pretrained(checkpoint)


def test_pickle_weights_refused(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors only"):
        dpt_mlx.load_model(checkpoint)


def test_directory_without_weights(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        dpt_mlx.load_model(tmp_path)


def test_missing_directory_and_file_paths(tmp_path, checkpoint):
    with pytest.raises(CheckpointError, match="no such directory"):
        dpt_mlx.load_model(tmp_path / "nope" / "x")
    with pytest.raises(CheckpointError, match="is a file"):
        dpt_mlx.load_model(checkpoint / "config.json")


def test_hub_id_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="could not be fetched from the Hugging Face Hub"):
        dpt_mlx.load_model("someone/no-such-dpt-model")


def test_unsupported_architecture(checkpoint):
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["architectures"] = ["DPTForImageClassification"]
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="DPTForImageClassification"):
        dpt_mlx.load_model(checkpoint)


def test_bad_dtype(checkpoint):
    with pytest.raises(ValueError, match="dtype must be one of"):
        dpt_mlx.load_model(checkpoint, dtype="float64")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_load(checkpoint, dtype):
    import mlx.core as mx

    model = dpt_mlx.load_model(checkpoint, dtype=dtype)
    assert model.dtype == getattr(mx, dtype)
    out = model(torch.randn(1, 3, 32, 32).numpy()).predicted_depth
    assert out.dtype == getattr(mx, dtype)

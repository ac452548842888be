"""Loading errors name what is wrong; nothing is unpickled."""

import json

import pytest
import torch
import transformers
from model_configs import tiny_config
from safetensors.torch import load_file, save_file

import dpt_mlx
from dpt_mlx.errors import CheckpointError, UnsupportedModelError


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


@pytest.mark.parity
def test_loaded_models_run_the_path_the_environment_names(checkpoint):
    """As shipped, a model loaded on the CPU gets the CPU layers; with DPT_MLX_FAST_KERNELS=0 it is the
    plain MLX model that Metal and CUDA run (the second CI pass), parameters identical either way."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from dpt_mlx import cpu

    model = dpt_mlx.load_model(checkpoint)
    expected = cpu.enabled() and mx.default_device().type == mx.DeviceType.cpu
    assert cpu.is_accelerated(model) == expected
    plain = dpt_mlx.DPTForDepthEstimation(model.config)
    assert [k for k, _ in tree_flatten(plain.parameters())] == [k for k, _ in tree_flatten(model.parameters())]


def test_from_pretrained_takes_transformers_keywords(checkpoint, monkeypatch):
    import mlx.core as mx

    model = dpt_mlx.DPTForDepthEstimation.from_pretrained(checkpoint, torch_dtype="float16")
    assert model.dtype == mx.float16
    assert dpt_mlx.load_model(checkpoint, torch_dtype="bfloat16").dtype == mx.bfloat16
    assert dpt_mlx.load_model(checkpoint, torch_dtype="auto").dtype == mx.float32
    with pytest.raises(ValueError, match="disagree"):
        dpt_mlx.load_model(checkpoint, dtype="float16", torch_dtype="bfloat16")
    with pytest.raises(TypeError, match="trust_remote_code"):
        dpt_mlx.DPTForDepthEstimation.from_pretrained(checkpoint, trust_remote_code=True)
    with pytest.raises(TypeError, match="revisoin"):
        dpt_mlx.load_model(checkpoint, revisoin="main")


def test_hub_options_reach_huggingface_hub(monkeypatch, checkpoint):
    """revision, token, cache_dir and local_files_only are passed on (a local copy stands in for the Hub)."""
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(repo_id, allow_patterns, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        return str(checkpoint)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    dpt_mlx.DPTForDepthEstimation.from_pretrained(
        "someone/dpt-tiny", revision="v1", token="hf_x", cache_dir="/tmp/c", local_files_only=True
    )
    assert seen == {
        "repo_id": "someone/dpt-tiny",
        "revision": "v1",
        "token": "hf_x",
        "cache_dir": "/tmp/c",
        "local_files_only": True,
    }

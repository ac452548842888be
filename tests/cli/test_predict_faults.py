"""Faults of the predict command and of checkpoint loading: damaged safetensors files and indexes,
configs that ask for impossible sizes, an unanswering Hub, awkward images, full disks, interruptions
and overflowing outputs. Each is one line and an exit status, never a hang, a traceback or a file
that should not be there."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from helpers import TINY_DPT as TINY
from PIL import Image

import dpt_mlx
from dpt_mlx.cli.predict import main
from dpt_mlx.errors import CheckpointError, ImageError
from dpt_mlx.io import files
from dpt_mlx.processing import visualize
from dpt_mlx.processing.images import load_image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny transformers depth checkpoint (one file, with its preprocessor config) and the same sharded."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    model = transformers.DPTForDepthEstimation(transformers.DPTConfig(**TINY))
    with torch.no_grad():
        model.head.head[4].bias.fill_(1.0)
    model.save_pretrained(root / "depth")
    transformers.DPTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "depth")
    model.save_pretrained(root / "sharded", max_shard_size="100KB")
    return root


@pytest.fixture
def checkpoint(saved, tmp_path):
    return Path(shutil.copytree(saved / "depth", tmp_path / "ckpt"))


@pytest.fixture
def sharded(saved, tmp_path):
    return Path(shutil.copytree(saved / "sharded", tmp_path / "sharded"))


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(path)
    return path


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error(err: str) -> str:
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _write(path: Path, header: dict, body: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


# ----------------------------------------------------------------------------------------------
# Damaged safetensors files


@pytest.mark.parametrize("cut", ["length", "header", "data"])
def test_file_cut_short_is_named_damaged(checkpoint, cut):
    f = checkpoint / "model.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    f.write_bytes(data[: {"length": 5, "header": 8 + n // 2, "data": 8 + n + 100}[cut]])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: the file is damaged \(.*cut short"):
        dpt_mlx.load_model(checkpoint)


def test_header_whose_offsets_overlap_is_refused(checkpoint):
    """Two tensors pointed at the same bytes loaded as if nothing were wrong."""
    f = checkpoint / "model.safetensors"
    header, body = _header(f)
    first, second = [k for k in header if k != "__metadata__"][:2]
    header[second]["data_offsets"] = header[first]["data_offsets"]
    _write(f, header, body)
    with pytest.raises(CheckpointError, match="overlaps the data of another tensor"):
        dpt_mlx.load_model(checkpoint)


def test_bytes_no_tensor_owns_are_refused(checkpoint):
    f = checkpoint / "model.safetensors"
    header, body = _header(f)
    _write(f, header, body + b"\0" * 64)
    with pytest.raises(CheckpointError, match="belong to no tensor"):
        dpt_mlx.load_model(checkpoint)


def test_header_entry_that_is_not_an_object_is_one_line(checkpoint, photo, capsys):
    f = checkpoint / "model.safetensors"
    header, body = _header(f)
    header[next(k for k in header if k != "__metadata__")] = 5
    _write(f, header, body)
    code, _, err = _run(["--model", checkpoint, "--image", photo, "--output-dir", checkpoint / "out"], capsys)
    assert code == 2 and "the file is damaged" in _one_error(err)


# ----------------------------------------------------------------------------------------------
# Sharded checkpoints


@pytest.mark.parametrize("index", ["[]", '{"weight_map": {"a": 5}}'])
def test_index_that_is_not_a_weight_map_is_one_line(sharded, photo, capsys, index):
    (sharded / "model.safetensors.index.json").write_text(index)
    code, _, err = _run(["--model", sharded, "--image", photo, "--output-dir", sharded / "out"], capsys)
    assert code == 2 and "is not a safetensors index" in _one_error(err)


def test_index_naming_a_tensor_its_shard_lacks(sharded):
    path = sharded / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    index["weight_map"]["head.extra.weight"] = sorted(set(index["weight_map"].values()))[0]
    path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"puts tensor head\.extra\.weight in .* which does not hold it"):
        dpt_mlx.load_model(sharded)


@pytest.mark.parametrize("shard", ["../depth/model.safetensors", "/etc/model.safetensors"])
def test_shard_outside_the_checkpoint_is_refused(sharded, saved, shard):
    path = sharded / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    index["weight_map"]["head.extra.weight"] = shard
    path.write_text(json.dumps(index))
    (sharded.parent / "depth").mkdir(exist_ok=True)
    shutil.copy(saved / "depth" / "model.safetensors", sharded.parent / "depth")
    with pytest.raises(CheckpointError, match="a shard must lie beside its index"):
        dpt_mlx.load_model(sharded)


# ----------------------------------------------------------------------------------------------
# Configs that ask for impossible sizes


def test_layer_count_beyond_any_model_is_refused_before_building():
    """2**31 - 1 layers passed every check and then built layers for hours."""
    with pytest.raises(ValueError, match="more than 1024 layers"):
        dpt_mlx.DPTConfig.from_dict(dict(TINY, num_hidden_layers=2**31 - 1))


def test_sizes_no_array_can_have_are_one_line(checkpoint, photo, capsys):
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(hidden_size=2**30, num_attention_heads=1)
    (checkpoint / "config.json").write_text(json.dumps(config))
    code, _, err = _run(["--model", checkpoint, "--image", photo, "--output-dir", checkpoint / "out"], capsys)
    assert code == 2 and "cannot be built" in _one_error(err)


def test_integer_tensor_where_the_model_has_a_float_parameter_is_refused(checkpoint, photo, tmp_path, capsys):
    """A float parameter stored as int32 would load, run and even convert as "verified"."""
    from safetensors.numpy import load_file, save_file

    from dpt_mlx.cli.convert import main as convert_main

    weights = load_file(checkpoint / "model.safetensors")
    key = next(k for k in weights if k.endswith("cls_token"))
    weights[key] = weights[key].astype(np.int32)
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"cls_token is int32 but the model has a floating-point parameter"):
        dpt_mlx.load_model(checkpoint)
    code, _, err = _run(["--model", checkpoint, "--image", photo, "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and "is int32 but the model has a floating-point parameter" in _one_error(err)
    assert convert_main(["--hf-path", str(checkpoint), "--mlx-path", str(tmp_path / "mlx")]) == 2
    assert not (tmp_path / "mlx").exists()


def test_preprocessor_size_that_would_exhaust_memory_is_refused(checkpoint):
    from dpt_mlx.pipelines import load_processor

    path = checkpoint / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps(dict(saved, size={"height": 100000, "width": 100000})))
    config = dpt_mlx.DPTConfig.from_dict(TINY)
    with pytest.raises(CheckpointError, match=r"size\['height'\]=100000 is invalid: more than 8192 pixels"):
        load_processor(checkpoint, config)
    path.write_text(json.dumps(dict(saved, keep_aspect_ratio=True, ensure_multiple_of=10**6)))
    with pytest.raises(CheckpointError, match="ensure_multiple_of=1000000 is invalid"):
        load_processor(checkpoint, config)


def test_preprocessor_config_that_is_a_folder_is_not_ignored(checkpoint, photo, capsys):
    (checkpoint / "preprocessor_config.json").unlink()
    (checkpoint / "preprocessor_config.json").mkdir()
    code, _, err = _run(["--model", checkpoint, "--image", photo, "--output-dir", checkpoint / "out"], capsys)
    assert code == 2 and "preprocessor_config.json" in _one_error(err)


def test_empty_model_name_is_not_the_current_folder(photo, capsys, monkeypatch, checkpoint):
    monkeypatch.chdir(checkpoint)  # a checkpoint here must not be picked up by --model ""
    code, _, err = _run(["--model", "", "--image", photo, "--output-dir", photo.parent / "out"], capsys)
    assert code == 2 and "model name is empty" in _one_error(err)


# ----------------------------------------------------------------------------------------------
# The Hub without an answer


@pytest.fixture
def silent_hub():
    """An endpoint that accepts connections and never answers (a network that swallows packets)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def _predict(args, env, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dpt_mlx.generate", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.perf_counter() - start


def test_hub_that_does_not_answer_fails_fast_in_one_line(silent_hub, photo, tmp_path):
    proc, seconds = _predict(
        ["--model", "some-org/some-model", "--image", photo, "--output-dir", tmp_path / "out"],
        {"HF_ENDPOINT": silent_hub, "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_CACHE": tmp_path / "c", "HF_HUB_OFFLINE": "0"},
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no answer within 1 s" in _one_error(proc.stderr) and seconds < 30


def test_hub_that_does_not_answer_falls_back_to_the_cache(silent_hub, photo, tmp_path, saved):
    cache = tmp_path / "cache"
    repo = cache / "models--some-org--tiny-dpt"
    sha = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(saved / "depth", repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    proc, _ = _predict(
        ["--model", "some-org/tiny-dpt", "--image", photo, "--output-dir", tmp_path / "out"],
        {"HF_ENDPOINT": silent_hub, "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "0"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "photo_depth.png").is_file()


# ----------------------------------------------------------------------------------------------
# Images


def test_image_between_pillows_warning_and_error_limits_is_read_without_a_warning(photo, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 24x30 = 720 pixels: over the warning, under the error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(photo).size == (30, 24)


def test_decompression_bomb_is_one_line(tmp_path, checkpoint, capsys):
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + chunk(b"IEND", b"")
    )
    code, _, err = _run(["--model", checkpoint, "--image", bomb, "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and "too large to open safely" in _one_error(err)


def test_empty_file_says_empty(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="is empty"):
        load_image(tmp_path / "empty.jpg")


def test_file_name_with_a_newline_keeps_one_line_per_image(checkpoint, photo, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photo, folder / "new\nline.png")
    shutil.copy(photo, folder / "plain.png")
    code, out, err = _run(["--model", checkpoint, "--input-dir", folder, "--output-dir", tmp_path / "out"], capsys)
    assert code == 0, err
    lines = out.strip().split("\n")
    assert len(lines) == 3 and lines[0].endswith("new\\nline_depth.png"), lines
    assert (tmp_path / "out" / "new\nline_depth.png").is_file()


# ----------------------------------------------------------------------------------------------
# Writing


def _failing_writer(monkeypatch, fail_on, exc):
    """Make every ``fail_on``-th file written fail after some bytes (a full disk), through the real writer."""
    real, count = files.atomic_write, [0]

    def atomic_write(path, write, text=False, overwrite=True):
        count[0] += 1

        def partial(f):
            f.write(b"partial")
            if count[0] % fail_on == 0:
                raise exc
            write(f)

        return real(path, partial, text=text, overwrite=overwrite)

    monkeypatch.setattr(visualize, "atomic_write", atomic_write)


def test_full_disk_leaves_no_file_of_a_failed_image(checkpoint, photo, tmp_path, capsys, monkeypatch):
    """The second output of each image fails: the first, already published, goes too."""
    _failing_writer(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device"))
    other = tmp_path / "other.png"
    shutil.copy(photo, other)
    out = tmp_path / "out"
    code, _, err = _run(
        ["--model", checkpoint, "--image", photo, other, "--output-dir", out, "--format", "png,npy"], capsys
    )
    assert code == 2
    lines = err.strip().split("\n")
    assert len(lines) == 3 and all("No space left on device" in line for line in lines[:2]), lines
    assert sorted(os.listdir(out)) == []


def test_interruption_while_writing_an_image_leaves_none_of_its_files(checkpoint, photo, tmp_path, capsys, monkeypatch):
    _failing_writer(monkeypatch, 2, KeyboardInterrupt())
    out = tmp_path / "out"
    code, _, err = _run(["--model", checkpoint, "--image", photo, "--output-dir", out, "--format", "png,npy"], capsys)
    assert code == 130 and "interrupted after 0 of 1 images" in err
    assert os.listdir(out) == []


def test_temporary_file_of_a_killed_run_is_removed_by_the_next_run(checkpoint, photo, tmp_path, capsys):
    """A run killed with SIGKILL leaves ``.<name>.<random>.tmp``; a rerun soon after (under a minute,
    the age at which any run removes it at its start) removes it once it has seen nobody write it."""
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".photo_depth.png.k1ll3d.tmp"
    stale.write_bytes(b"half a png")
    past = time.time() - 20
    os.utime(stale, (past, past))
    code, _, err = _run(["--model", checkpoint, "--image", photo, "--output-dir", out, "--skip-existing"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["photo_depth.png"]


def test_output_that_overflows_when_resized_is_not_written(checkpoint, photo, tmp_path, capsys, monkeypatch):
    """A finite model output near float32's limit overflows in the bicubic resize: no garbage PNG."""
    from dpt_mlx.predictor import Predictor

    def huge(self, x, prompt):
        out = np.zeros((len(x), 32, 32), np.float32)
        out[:, ::2, ::2] = 3.3e38
        return mx.array(out), None  # (the map, no field of view)

    monkeypatch.setattr(Predictor, "_run", huge)
    big = tmp_path / "big.png"
    Image.open(photo).resize((61, 45)).save(big)  # upsampled: the bicubic kernel overshoots
    out = tmp_path / "out"
    code, _, err = _run(["--model", checkpoint, "--image", big, "--output-dir", out, "--format", "png,npy"], capsys)
    assert code == 2 and "overflowed float32" in _one_error(err)
    assert os.listdir(out) == []


def test_output_dir_without_write_permission_is_a_usage_error(checkpoint, photo, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out else real(p, mode, **kw))
    code, _, err = _run(["--model", checkpoint, "--image", photo, "--output-dir", out], capsys)
    assert code == 2 and "cannot write in --output-dir" in _one_error(err)

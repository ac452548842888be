"""dpt_mlx.cpu.cache: the CPU buffer cache bounded to one forward pass's working set, and the
passes a batch is split into on the CPU (dpt_mlx.cpu.images_per_pass)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

import dpt_mlx
from dpt_mlx import cpu
from dpt_mlx.cpu import cache
from dpt_mlx.predictor import Predictor
from dpt_mlx.processing.image_processor import DPTImageProcessor

MIB = 1 << 20
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32,
            patch_size=8, backbone_out_indices=[0, 1, 1, 1], neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16)


def cache_limit() -> int:
    limit = mx.set_cache_limit(cache.MLX_DEFAULT)
    mx.set_cache_limit(limit)
    return limit


@pytest.fixture
def fresh_policy(monkeypatch):
    """MLX's default limit and a policy that has set nothing yet; restores the limit afterwards."""
    previous = mx.set_cache_limit(cache.MLX_DEFAULT)
    monkeypatch.setitem(cache._state, "limit", cache.MLX_DEFAULT)
    yield
    mx.set_cache_limit(previous)


def work(mib: int) -> None:
    """Allocate and free ``mib`` MiB (a pass's working set), leaving the allocator's peak raised."""
    a = mx.zeros((mib * MIB // 4,), dtype=mx.float32) + 1
    mx.eval(a)
    del a


def model():
    m = dpt_mlx.DPTForDepthEstimation(dpt_mlx.DPTConfig(**TINY))
    m.eval()
    return m


def test_limit_follows_the_largest_working_set(fresh_policy):
    mx.reset_peak_memory()
    work(160)
    cache.before_forward()
    assert 80 * MIB <= cache_limit() < 90 * MIB  # half the working set
    mx.reset_peak_memory()
    work(80)  # a smaller pass later never lowers the limit
    cache.before_forward()
    assert 80 * MIB <= cache_limit() < 90 * MIB


def test_limit_never_below_mlx_default_nor_above_the_cap(fresh_policy, monkeypatch):
    mx.reset_peak_memory()
    cache.before_forward()
    assert cache_limit() == cache.MLX_DEFAULT
    monkeypatch.setattr(cache, "max_cache_limit", lambda: 48 * MIB)
    work(160)
    cache.before_forward()
    assert cache_limit() == 48 * MIB


def test_a_users_limit_is_left_alone(fresh_policy):
    mx.set_cache_limit(123 * MIB)
    mx.reset_peak_memory()
    work(200)
    cache.before_forward()
    assert cache_limit() == 123 * MIB
    assert not cache.set_policy_limit(300 * MIB) and cache_limit() == 123 * MIB


def test_a_loaded_model_applies_the_policy_before_every_call(fresh_policy, monkeypatch, tmp_path):
    m = model()
    m.save_pretrained(str(tmp_path))
    loaded = dpt_mlx.load_model(str(tmp_path))
    assert cache.is_watched(loaded) and cpu.is_accelerated(loaded)
    assert type(loaded) is dpt_mlx.DPTForDepthEstimation
    assert cache_limit() == cache.MLX_DEFAULT  # loading leaves MLX's default for the first pass
    calls = []
    monkeypatch.setattr(cache, "before_forward", lambda: calls.append(1))
    x = mx.array(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    out = loaded(x).predicted_depth
    assert calls == [1]
    plain = dpt_mlx.load_model(str(tmp_path))
    assert float(mx.abs(out - plain(x).predicted_depth).max()) == 0.0
    cpu.accelerate(loaded)  # again (as after a cast): still one call of the policy per call
    loaded(x)
    assert calls == [1, 1, 1]
    unwatched = model()  # another instance of the class, never accelerated: no policy
    unwatched(x)
    assert calls == [1, 1, 1] and not cache.is_watched(unwatched)
    loaded.save_pretrained(str(tmp_path / "again"))  # the checkpoint names the model's own class
    assert dpt_mlx.load_model(str(tmp_path / "again")).__class__.__name__ == "DPTForDepthEstimation"


def test_portable_path_leaves_the_model_and_the_limit_alone(fresh_policy, monkeypatch):
    monkeypatch.setenv(cpu.FAST_KERNELS_ENV_VAR, "0")
    m = cpu.accelerate(model())
    assert not cache.is_watched(m)
    assert cpu.images_per_pass(8, 384, 384) == 8


def test_images_per_pass():
    assert cpu.images_per_pass(8, 384, 384) == 1
    assert cpu.images_per_pass(8, 518, 518) == 1
    assert cpu.images_per_pass(8, 256, 256) == 4
    assert cpu.images_per_pass(3, 64, 64) == 3
    assert cpu.images_per_pass(1, 2000, 2000) == 1


def test_predictor_runs_a_batch_in_passes_with_the_same_results(monkeypatch):
    m = model()
    processor = DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)) for i in range(5)]
    shapes = []
    call = type(m).__call__
    monkeypatch.setattr(type(m), "__call__", lambda self, x, **kw: shapes.append(x.shape[0]) or call(self, x, **kw))
    whole = Predictor(m, processor).predict(images, batch_size=5)
    assert shapes == [5]  # 32x32 inputs: the whole batch fits in one pass
    shapes.clear()
    monkeypatch.setattr(cpu, "PASS_PIXELS", 2 * 32 * 32)
    parts = Predictor(m, processor).predict(images, batch_size=5)
    assert shapes == [2, 2, 1]
    for a, b in zip(whole, parts):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

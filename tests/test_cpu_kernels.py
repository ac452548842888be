"""dpt_mlx.cpu: every fast CPU path against the MLX op it replaces (no timing here).

The CPU layers act only when MLX computes on the CPU, so these tests make the CPU the default
device (they run on any platform).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx import utils as mlx_utils

from dpt_mlx import cpu
from dpt_mlx import layers as dpt_layers
from dpt_mlx.cpu import kernels as K
from dpt_mlx.cpu import layers as L


@pytest.fixture(autouse=True)
def on_the_cpu():
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(device)


def rel(a, b) -> float:
    a, b = np.array(a.astype(mx.float32), dtype=np.float64), np.array(b.astype(mx.float32), dtype=np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_exp_nonpositive_matches_exp():
    x = np.concatenate([np.linspace(-87, 0, 200_001), [-1e-30, -0.0]]).astype(np.float32)
    got = np.array(K.exp_nonpositive(mx.array(x)), dtype=np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.abs(got / want - 1).max() < 2e-7  # measured 7.7e-8
    # far below the float range (masked scores): tiny and finite, never NaN
    tail = np.array(K.exp_nonpositive(mx.array([-100.0, -1e30, -np.inf], dtype=mx.float32)))
    assert np.all(np.isfinite(tail)) and np.all(tail < 1e-37)


def test_exp_gradient_is_exp():
    x = mx.array(np.linspace(-20, 0, 1001).astype(np.float32))
    g = mx.grad(lambda a: K.exp_nonpositive(a).sum())(x)
    assert rel(g, mx.exp(x)) < 1e-5  # measured 1e-6


def test_erf_and_gelu():
    xs = np.linspace(-8, 8, 40_001).astype(np.float32)
    erf = np.array([math.erf(v) for v in xs.astype(np.float64)])
    assert np.abs(np.array(K.erf(mx.array(xs))) - erf).max() < 1e-6  # measured 3.8e-7
    x = mx.array(xs)
    assert float(mx.abs(K.gelu(x) - nn.gelu(x)).max()) < 5e-6  # |x| <= 8; measured 9.5e-7
    grad = mx.grad(lambda a: K.gelu(a).sum())(x)
    assert float(mx.abs(grad - mx.grad(lambda a: nn.gelu(a).sum())(x)).max()) < 5e-5  # measured 6.8e-6
    assert K.gelu(x.astype(mx.bfloat16)).dtype == mx.bfloat16


@pytest.mark.parametrize("mask", [None, "full", "per_head_broadcast", "2d"])
@pytest.mark.parametrize("n", [7, 50])
def test_attention_matches_sdpa(monkeypatch, mask, n):
    monkeypatch.setattr(K, "_BLOCK", 160)  # several row blocks per head at n=50
    rng = np.random.default_rng(0)
    q, k, v = (mx.array(rng.standard_normal((2, 3, n, 8)).astype(np.float32) * 2) for _ in range(3))
    m = None
    if mask is not None:
        full = mx.array(rng.standard_normal((2, 3, n, n)).astype(np.float32))
        m = {"full": full, "per_head_broadcast": full[:1, :1], "2d": full[0, 0]}[mask]
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=m)
    assert rel(K.attention(q, k, v, 0.3, m), want) < 1e-5  # measured 1e-7 .. 5e-7


def test_attention_half_inputs_and_masked_keys():
    rng = np.random.default_rng(1)
    q, k, v = (mx.array(rng.standard_normal((1, 2, 30, 16)).astype(np.float32) * 8) for _ in range(3))
    m = mx.where(mx.arange(30) < 20, 0.0, -mx.inf)[None, None, None, :]  # keys 20.. masked out
    q, k, v = (t.astype(mx.float16) for t in (q, k, v))  # scores up to ~250: float32 inside
    want = mx.fast.scaled_dot_product_attention(*(t.astype(mx.float32) for t in (q, k, v)), scale=0.25, mask=m)
    got = K.attention(q, k, v, 0.25, m)
    assert got.dtype == mx.float16
    assert rel(got, want) < 2e-3  # the float16 rounding of the output; measured 2.4e-4


def test_attention_gradients():
    q, k, v = (mx.random.normal((1, 2, 30, 8), key=mx.random.key(i)) for i in range(3))
    ours = mx.grad(lambda *a: (K.attention(*a, 0.3) ** 2).sum(), argnums=(0, 1, 2))(q, k, v)
    ref = mx.grad(lambda *a: (mx.fast.scaled_dot_product_attention(*a, scale=0.3) ** 2).sum(), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, ref):
        assert rel(a, b) < 1e-5  # measured 1e-7 .. 5e-7


@pytest.mark.parametrize("mask", [None, "full", "per_head", "2d", "keys"])
def test_threaded_attention_matches_sdpa(monkeypatch, mask):
    monkeypatch.setattr(K, "THREADED_MIN_SCORES", 0)
    monkeypatch.setattr(K, "_CHUNK", 2 * 40 * 40)  # two heads per chunk: several chunks per image
    monkeypatch.setattr(K, "_ROW_BLOCK", 7 * 40)  # several NumPy blocks per worker
    rng = np.random.default_rng(2)
    q, k, v = (mx.array(rng.standard_normal((2, 5, 40, 8)).astype(np.float32) * 2) for _ in range(3))
    full = mx.array(rng.standard_normal((2, 5, 40, 40)).astype(np.float32))
    m = {None: None, "full": full, "per_head": full[:1], "2d": full[0, 0],
         "keys": mx.where(mx.arange(40) < 30, 0.0, -mx.inf)[None, None, None, :]}[mask]
    calls = []
    real = K._softmax_product
    monkeypatch.setattr(K, "_softmax_product", lambda *a: calls.append(1) or real(*a))
    got = K.attention(q, k, v, 0.3, m)
    assert len(calls) == 2 * 3  # the threaded path ran: 2 images x 3 head groups
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=m)
    assert rel(got, want) < 1e-5  # measured 2e-7 .. 4e-7
    assert K.attention(q.astype(mx.bfloat16), k, v, 0.3, m).dtype == mx.bfloat16


def test_threaded_attention_gradients_and_transforms(monkeypatch):
    monkeypatch.setattr(K, "THREADED_MIN_SCORES", 0)
    q, k, v = (mx.random.normal((2, 3, 30, 8), key=mx.random.key(i)) for i in range(3))
    bias = mx.random.normal((1, 3, 30, 30), key=mx.random.key(9))
    for m in (None, bias):
        def loss(*a, m=m):
            return (K.attention(*a, 0.3, m) ** 2).sum()

        def ref_loss(*a, m=m):
            return (mx.fast.scaled_dot_product_attention(*a, scale=0.3, mask=m) ** 2).sum()

        ours = mx.grad(loss, argnums=(0, 1, 2))(q, k, v)
        ref = mx.grad(ref_loss, argnums=(0, 1, 2))(q, k, v)
        for a, b in zip(ours, ref):
            assert rel(a, b) < 1e-5  # measured 1e-7 .. 4e-7
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3)
    # mx.compile and mx.vmap cannot evaluate inside: the MLX path runs instead, same numbers
    assert rel(mx.compile(lambda *a: K.attention(*a, 0.3))(q, k, v), want) < 1e-5
    got = mx.vmap(lambda a, b, c: K.attention(a, b, c, 0.3))(q[:, None], k[:, None], v[:, None])
    assert rel(got[:, 0], want) < 1e-5


def test_threaded_attention_leaves_inputs_alone(monkeypatch):
    monkeypatch.setattr(K, "THREADED_MIN_SCORES", 0)
    q, k, v = (mx.random.normal((1, 2, 20, 4), key=mx.random.key(i)) for i in range(3))
    before = [np.array(t) for t in (q, k, v)]
    scores = q @ k.swapaxes(-1, -2)
    mx.eval(scores)
    kept = np.array(scores)
    K.attention(q, k, v, 1.0, scores)  # a mask array the caller still holds
    for t, b in zip((q, k, v, scores), before + [kept]):
        assert np.array_equal(np.array(t), b)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kernel,padding,size", [
    (3, 1, (33, 40)), (1, 0, (33, 40)), (3, 0, (34, 35)), (5, 2, (37, 30)), ((3, 1), (1, 0), (36, 33)), (2, 0, (35, 33)),
])
def test_conv2d_matches_mlx(batch, kernel, padding, size):
    x = mx.random.normal((batch, *size, 6), key=mx.random.key(batch))
    for bias in (True, False):
        conv = L.Conv2d(6, 5, kernel, padding=padding, bias=bias)
        assert size[0] * size[1] >= conv.MIN_PIXELS  # the fast path runs
        want = nn.Conv2d.__call__(conv, x)
        got = conv(x)
        assert got.shape == want.shape and rel(got, want) < 1e-5  # measured < 1e-6
        half = conv(x.astype(mx.bfloat16))
        assert half.dtype == mx.bfloat16 and rel(half, want) < 2e-2  # bfloat16 rounding; measured 4e-3


def test_conv2d_strided_and_small_maps_use_mlx():
    # stride 2 is not a fast path: exactly MLX's result
    conv = L.Conv2d(4, 4, 3, stride=2, padding=1)
    x = mx.random.normal((1, 40, 40, 4))
    assert rel(conv(x), nn.Conv2d.__call__(conv, x)) == 0.0
    small = L.Conv2d(4, 4, 3, padding=1)
    x = mx.random.normal((1, 8, 8, 4))  # fewer pixels than MIN_PIXELS: MLX's own conv
    assert rel(small(x), nn.Conv2d.__call__(small, x)) == 0.0


def test_fast_layers_keep_arrays_and_names():
    lin = nn.Linear(8, 4)
    assert cpu.layers.fast_layer(lin) is lin  # float32: nothing to do
    lin.set_dtype(mx.float16)
    fast = cpu.layers.fast_layer(lin)
    assert type(fast) is L.Linear and fast.weight is lin.weight and fast.bias is lin.bias
    x = mx.random.normal((3, 8)).astype(mx.float16)
    assert fast(x).dtype == mx.float16
    assert rel(fast(x), nn.Linear.__call__(fast, x)) < 5e-3  # measured 8e-4
    conv = nn.Conv2d(3, 4, 3, padding=1)
    fast = cpu.layers.fast_layer(conv)
    assert type(fast) is L.Conv2d and fast.weight is conv.weight and sorted(fast.keys()) == sorted(conv.keys())
    assert fast.padding == conv.padding and fast.stride == conv.stride
    up = nn.ConvTranspose2d(4, 4, 2, stride=2)
    assert type(cpu.layers.fast_layer(up)) is L.PatchConvTranspose2d
    assert cpu.layers.fast_layer(nn.ConvTranspose2d(4, 4, 3, stride=2)) is not None
    assert type(cpu.layers.fast_layer(nn.ConvTranspose2d(4, 4, 3, stride=2))) is nn.ConvTranspose2d
    assert type(cpu.layers.fast_layer(nn.GELU())) is L.GELU
    assert type(cpu.layers.fast_layer(nn.GELU(approx="precise"))) is nn.GELU
    assert type(cpu.layers.fast_layer(dpt_layers.ScaledDotProductAttention())) is L.Attention


def test_patch_conv_transpose_matches_mlx():
    up = nn.ConvTranspose2d(5, 3, 4, stride=4)
    x = mx.random.normal((2, 6, 7, 5))
    fast = cpu.layers.fast_layer(up)
    assert rel(fast(x), up(x)) < 1e-5


def test_half_batch_norm_keeps_float32_statistics():
    bn = dpt_layers.BatchNorm(4)
    bn.running_var = mx.array([1e5, 7e4, 1.0, 1e-3])  # beyond float16's 65504, and small
    bn.running_mean = mx.array([3.0, -2.0, 0.5, 0.01])
    bn.eval()
    assert set(bn.trainable_parameters()) == {"weight", "bias"}
    x = mx.random.normal((2, 5, 5, 4)) * mx.sqrt(bn.running_var) + bn.running_mean
    got = bn(x.astype(mx.float16))
    assert got.dtype == mx.float16 and rel(got, bn(x)) < 2e-3  # measured 5e-4
    plain = nn.BatchNorm(4)
    plain.update(bn.parameters())
    plain.set_dtype(mx.float16)  # what a plain half cast does: var 1e5 -> inf, rsqrt(inf) = 0
    plain.eval()
    assert rel(plain(x.astype(mx.float16)), bn(x)) > 0.5  # those channels come out as zeros


def test_accelerate_swaps_exact_types_only(monkeypatch):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 2, 3)
            self.b = [nn.GELU(), nn.Linear(4, 4)]
            self.c = dpt_layers.ScaledDotProductAttention()

    net = Net()
    before = dict(mlx_utils.tree_flatten(net.parameters()))
    cpu.accelerate(net)
    assert type(net.a) is L.Conv2d and type(net.b[0]) is L.GELU and type(net.b[1]) is nn.Linear
    assert type(net.c) is L.Attention and cpu.is_accelerated(net)
    after = dict(mlx_utils.tree_flatten(net.parameters()))
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    monkeypatch.setenv("DPT_MLX_FAST_KERNELS", "0")
    plain = Net()
    cpu.accelerate(plain)
    assert not cpu.is_accelerated(plain) and type(plain.a) is nn.Conv2d


def test_cpu_layers_use_mlx_off_the_cpu_device(monkeypatch):
    x = mx.random.normal((1, 40, 40, 3))
    conv = L.Conv2d(3, 2, 3, padding=1)
    monkeypatch.setattr(L, "on_cpu", lambda: False)
    assert rel(conv(x), nn.Conv2d.__call__(conv, x)) == 0.0


@pytest.mark.parametrize("threads", [1, 3])
def test_threaded_attention_any_thread_count(monkeypatch, threads):
    monkeypatch.setattr(K, "THREADED_MIN_SCORES", 0)
    q, k, v = (mx.random.normal((1, 4, 33, 8), key=mx.random.key(i)) for i in range(3))
    K.set_threads(threads)
    try:
        assert K._threads == threads and bool(K._workers()) == (threads > 1)
        got = K.attention(q, k, v, 0.5)
    finally:
        K.set_threads()
    assert rel(got, mx.fast.scaled_dot_product_attention(q, k, v, scale=0.5)) < 1e-5

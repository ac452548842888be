"""dpt_mlx.cpu: the compiled kernels against the plain MLX ops they stand in for, and the layer swap
(no timing here).

The CPU layers act only when MLX computes on the CPU, so these tests make the CPU the default
device. The kernels exist on Linux only (tests marked ``linux``); the swap and its fallbacks are
tested everywhere.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx import utils as mlx_utils

from dpt_mlx import cpu
from dpt_mlx import layers as dpt_layers
from dpt_mlx.cpu import layers as L
from dpt_mlx.cpu import native
from dpt_mlx.ops import interpolate


@pytest.fixture(autouse=True)
def on_the_cpu():
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(device)


@pytest.fixture
def K():
    module = native.kernels()
    assert module is not None, native.unavailable()
    return module


def rel(a, b) -> float:
    a, b = np.array(a.astype(mx.float32), dtype=np.float64), np.array(b.astype(mx.float32), dtype=np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def normal(*shape, seed=0, dtype=mx.float32):
    return mx.random.normal(shape, key=mx.random.key(seed)).astype(dtype)


def reference_act(y, act):
    return {"none": lambda t: t, "gelu": nn.gelu, "relu": nn.relu, "gelu_tanh": nn.gelu_approx}[act](y)


# ------------------------------------------------------------------------------ linear, norms


@pytest.mark.linux
@pytest.mark.parametrize("act", ["none", "gelu", "relu", "gelu_tanh"])
@pytest.mark.parametrize("m,k,n", [(1, 3, 1), (37, 130, 53), (300, 64, 1000)])
def test_linear_and_epilogue(K, act, m, k, n):
    x, w, b, s, r = normal(2, m, k), normal(n, k, seed=1), normal(n, seed=2), normal(n, seed=3), normal(2, m, n, seed=4)
    assert rel(K.linear(x, w, b, s, r, act), r + s * reference_act(x @ w.T + b, act)) < 1e-5
    assert rel(K.linear(x, w, act=act), reference_act(x @ w.T, act)) < 1e-5


@pytest.mark.linux
def test_linear_strided_half_and_gradients(K):
    x = normal(20, 3, 48).transpose(1, 0, 2)  # a view: rows 48 apart
    w, b = normal(40, 48, seed=1), normal(40, seed=2)
    assert rel(K.linear(x, w, b), x @ w.T + b) < 1e-5
    xh, wh = x.astype(mx.float16), w.astype(mx.float16)
    got = K.linear(xh, wh, b.astype(mx.float16))
    assert got.dtype == mx.float16 and rel(got, xh.astype(mx.float32) @ wh.astype(mx.float32).T + b) < 2e-3
    r = normal(3, 20, 40, seed=5)

    def loss(fn):
        return lambda x, w, b, r: (fn(x, w, b, r) ** 2).sum()

    ours = mx.grad(loss(lambda x, w, b, r: K.linear(x, w, b, None, r, "gelu")), argnums=(0, 1, 2, 3))(x, w, b, r)
    want = mx.grad(loss(lambda x, w, b, r: r + nn.gelu(x @ w.T + b)), argnums=(0, 1, 2, 3))(x, w, b, r)
    assert all(rel(g, h) < 1e-4 for g, h in zip(ours, want))


@pytest.mark.linux
@pytest.mark.parametrize("c", [1, 7, 384, 1031])
def test_layer_norm(K, c):
    x = normal(3, 5, c) * 3 + 1
    ln = nn.LayerNorm(c, eps=1e-6)
    ln.update({"weight": normal(c, seed=1), "bias": normal(c, seed=2)})
    assert rel(K.layer_norm(x, ln.weight, ln.bias, 1e-6), ln(x)) < 1e-5
    plain = nn.LayerNorm(c, eps=1e-5, affine=False)
    assert rel(K.layer_norm(x, None, None, 1e-5), plain(x)) < 1e-5
    grads = mx.grad(lambda x: (K.layer_norm(x, ln.weight, ln.bias, 1e-6) ** 3).sum())(x)
    assert rel(grads, mx.grad(lambda x: (ln(x) ** 3).sum())(x)) < 1e-4


@pytest.mark.linux
@pytest.mark.parametrize("groups,c", [(1, 7), (4, 32), (32, 256)])
@pytest.mark.parametrize("act", ["none", "relu"])
def test_group_norm(K, groups, c, act):
    x = normal(2, 9, 11, c) * 2 + 0.5
    gn = nn.GroupNorm(groups, c, eps=1e-5, pytorch_compatible=True)
    gn.update({"weight": normal(c, seed=1), "bias": normal(c, seed=2)})
    assert rel(K.group_norm(x, gn.weight, gn.bias, groups, 1e-5, act), reference_act(gn(x), act)) < 1e-5
    r = normal(*x.shape, seed=3)
    assert rel(K.group_norm(x, gn.weight, gn.bias, groups, 1e-5, act, r), reference_act(gn(x) + r, act)) < 1e-5
    grad = mx.grad(lambda x: (K.group_norm(x, gn.weight, gn.bias, groups, 1e-5, act) ** 2).sum())(x)
    assert rel(grad, mx.grad(lambda x: (reference_act(gn(x), act) ** 2).sum())(x)) < 1e-4


@pytest.mark.linux
def test_activations_keep_nan_and_inf(K):
    x = mx.array([float("nan"), float("inf"), -float("inf"), -20.0, -1.0, 0.0, 0.5, 3.0, 50.0] * 3)
    for act, fn in (("gelu", nn.gelu), ("relu", nn.relu), ("gelu_tanh", nn.gelu_approx)):
        got, want = np.array(K.activation(x, act)), np.array(fn(x))
        assert np.isnan(got[0]) and np.allclose(got[1:], want[1:], rtol=1e-5, atol=1e-6, equal_nan=True), act


# ------------------------------------------------------------------------------ attention


def sdpa(q, k, v, scale, bias=None):
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=bias)


@pytest.mark.linux
@pytest.mark.parametrize("nq,nk", [(1, 1), (33, 33), (300, 77), (577, 577), (260, 2100)])
@pytest.mark.parametrize("bias_shape", [None, "heads", "batch", "rows"])
@pytest.mark.parametrize("d", [40, 64])  # 64: register tiles on AVX-512 CPUs; 40: the BLAS
def test_attention_matches_sdpa(K, nq, nk, bias_shape, d):
    b, h = 2, 3
    q = normal(b, nq, h, d).transpose(0, 2, 1, 3)  # the models' (B, N, H, D) views
    k, v = normal(b, nk, h, d, seed=1).transpose(0, 2, 1, 3), normal(b, h, nk, d, seed=2)
    bias = {
        None: None,
        "heads": normal(1, h, nq, nk, seed=3),
        "batch": normal(b, 1, nq, nk, seed=3),
        "rows": normal(nq, 1, seed=3),
    }[bias_shape]
    if bias_shape == "rows":  # one value per query row, broadcast over the keys
        bias = mx.broadcast_to(bias, (nq, nk))
    got = K.attention(q, k, v, 0.3, bias)
    assert rel(got, sdpa(q, k, v, 0.3, bias)) < 1e-5
    tokens = got.transpose(0, 2, 1, 3)  # back to (B, N, H, D): the kernel's memory layout already
    assert rel(tokens.reshape(b, nq, h * d), sdpa(q, k, v, 0.3, bias).transpose(0, 2, 1, 3).reshape(b, nq, -1)) < 1e-5


@pytest.mark.linux
@pytest.mark.parametrize("nq,nk", [(1, 1), (33, 33), (300, 77), (260, 2100)])
@pytest.mark.parametrize("d", [40, 64])
def test_attention_gathers_a_bias_table(K, nq, nk, d):
    """BEiT's relative position bias: head h adds table[index, h], gathered in the kernel."""
    b, h, entries = 2, 3, 57
    q = normal(b, nq, h, d).transpose(0, 2, 1, 3)
    k, v = normal(b, nk, h, d, seed=1).transpose(0, 2, 1, 3), normal(b, h, nk, d, seed=2)
    table = normal(entries, h, seed=3) * 3
    index = mx.array(np.random.default_rng(4).integers(0, entries, (nq, nk)), dtype=mx.int32)
    dense = table[index].transpose(2, 0, 1)[None]
    assert rel(K.attention(q, k, v, 0.3, table, index), sdpa(q, k, v, 0.3, dense)) < 1e-5
    half = [t.astype(mx.float16) for t in (q, k, v, table)]
    got = K.attention(*half[:3], 0.3, half[3], index)
    assert got.dtype == mx.float16 and rel(got, sdpa(q, k, v, 0.3, dense)) < 1e-2


@pytest.mark.linux
def test_attention_bias_table_gradients_and_bad_shapes(K):
    q, k, v = normal(1, 2, 30, 8), normal(1, 2, 45, 8, seed=1), normal(1, 2, 45, 8, seed=2)
    table = normal(11, 2, seed=3)
    index = mx.array(np.random.default_rng(4).integers(0, 11, (30, 45)), dtype=mx.int32)

    def loss(q, table):
        return (K.attention(q, k, v, 0.5, table, index) ** 2).sum()

    def want(q, table):
        return (sdpa(q, k, v, 0.5, table[index].transpose(2, 0, 1)[None]) ** 2).sum()

    ours, ref = mx.grad(loss, argnums=(0, 1))(q, table), mx.grad(want, argnums=(0, 1))(q, table)
    assert all(rel(g, r) < 1e-4 for g, r in zip(ours, ref))
    for bad_table, bad_index in ((normal(11, 3), index), (table, index[:, :40]), (table, index.astype(mx.float32))):
        with pytest.raises(ValueError, match="bias table"):
            K.attention(q, k, v, 0.5, bad_table, bad_index)
    with pytest.raises(ValueError, match="without a bias table"):
        K.attention(q, k, v, 0.5, None, index)


@pytest.mark.linux
@pytest.mark.parametrize("nk", [1, 33, 70])
@pytest.mark.parametrize("d", [40, 64])
def test_attention_rows_whose_scores_are_all_far_below_zero(K, nk, d):
    """Every score near -600: a row's maximum must come from its keys only (not from the zero
    columns that pad the last tile), or every exp underflows and the row is 0 / 0."""
    q = mx.full((1, 2, 20, d), -10.0) + 0.01 * normal(1, 2, 20, d)
    k, v = mx.full((1, 2, nk, d), 3.0) + 0.01 * normal(1, 2, nk, d, seed=1), normal(1, 2, nk, d, seed=2)
    got = K.attention(q, k, v, 0.3)
    assert not np.isnan(np.array(got)).any() and rel(got, sdpa(q, k, v, 0.3)) < 1e-3  # scores of ~600: ulp 6e-5


@pytest.mark.linux
def test_attention_masks_half_and_odd_layouts(K):
    q, k, v = normal(1, 2, 50, 16), normal(1, 2, 70, 16, seed=1), normal(1, 2, 70, 16, seed=2)
    mask = mx.where(mx.arange(70)[None] % 3 == 0, -float("inf"), 0.0)  # a third of the keys masked
    assert rel(K.attention(q, k, v, 0.25, mask), sdpa(q, k, v, 0.25, mask)) < 1e-5
    half = [t.astype(mx.bfloat16) for t in (q, k, v)]
    got = K.attention(*half, 0.25)
    assert got.dtype == mx.bfloat16 and rel(got, sdpa(q, k, v, 0.25)) < 2e-2
    kt = normal(1, 2, 16, 70, seed=1).swapaxes(-1, -2)  # head dimension not contiguous: gathered first
    assert rel(K.attention(q, kt, v, 0.25), sdpa(q, kt, v, 0.25)) < 1e-5


@pytest.mark.linux
def test_attention_gradients_and_transforms(K):
    q, k, v = normal(1, 2, 30, 8), normal(1, 2, 45, 8, seed=1), normal(1, 2, 45, 8, seed=2)
    bias = normal(1, 2, 30, 45, seed=3)

    def loss(fn):
        return lambda q, k, v, bias: (fn(q, k, v, 0.5, bias) ** 2).sum()

    ours = mx.grad(loss(K.attention), argnums=(0, 1, 2, 3))(q, k, v, bias)
    want = mx.grad(loss(sdpa), argnums=(0, 1, 2, 3))(q, k, v, bias)
    assert all(rel(g, h) < 1e-4 for g, h in zip(ours, want))
    compiled = mx.compile(lambda q, k, v: K.attention(q, k, v, 0.5))
    assert rel(compiled(q, k, v), sdpa(q, k, v, 0.5)) < 1e-5
    batched = mx.vmap(lambda q: K.attention(q, k, v, 0.5))(mx.stack([q, q * 2]))
    assert rel(batched[1], sdpa(q * 2, k, v, 0.5)) < 1e-5


@pytest.mark.linux
@pytest.mark.parametrize("threads", [1, 3])
def test_any_thread_count_gives_the_same_numbers(K, threads):
    q, k, v = normal(1, 4, 300, 32), normal(1, 4, 300, 32, seed=1), normal(1, 4, 300, 32, seed=2)
    x, w = normal(500, 96), normal(200, 96, seed=1)
    before = K.attention(q, k, v, 0.2), K.linear(x, w, act="gelu")
    mx.eval(before)
    try:
        assert cpu.set_threads(threads) == threads and K.threads() == threads
        after = K.attention(q, k, v, 0.2), K.linear(x, w, act="gelu")
        assert all(rel(a, b) < 1e-6 for a, b in zip(after, before))
    finally:
        cpu.set_threads()
    assert K.threads() == native.default_threads()


# ------------------------------------------------------------------------------ convolutions, resizes


@pytest.mark.linux
@pytest.mark.parametrize(
    "kernel,stride,padding,dilation",
    [(3, 1, 1, 1), (1, 1, 0, 1), (3, 2, 1, 1), (7, 2, 3, 1), (3, 1, 2, 2), (4, 4, 0, 1)],
)
@pytest.mark.parametrize("cin,cout", [(12, 10), (48, 40), (256, 256)])  # 48 -> 40: direct tiles (AVX-512)
def test_conv2d_matches_mlx(K, kernel, stride, padding, dilation, cin, cout):
    x, w, b = normal(2, 23, 31, cin), normal(cout, kernel, kernel, cin, seed=1), normal(cout, seed=2)
    want = mx.conv2d(x, w, stride=stride, padding=padding, dilation=dilation) + b
    got = K.conv2d(x, w, b, (stride, stride), (padding, padding), (dilation, dilation))
    assert rel(got, want) < 1e-5
    r = normal(*want.shape, seed=3)
    fused = K.conv2d(x, w, b, (stride, stride), (padding, padding), (dilation, dilation), True, "relu", r)
    want = nn.relu(mx.conv2d(nn.relu(x), w, stride=stride, padding=padding, dilation=dilation) + b) + r
    assert rel(fused, want) < 1e-5


@pytest.mark.linux
def test_conv2d_half_strided_input_and_gradients(K):
    x = normal(1, 12, 40, 9).transpose(0, 2, 1, 3)  # a transposed view
    w, b = normal(5, 3, 3, 9, seed=1), normal(5, seed=2)
    assert rel(K.conv2d(x, w, b, (1, 1), (1, 1), (1, 1)), mx.conv2d(x, w, padding=1) + b) < 1e-5
    got = K.conv2d(x.astype(mx.float16), w.astype(mx.float16), b, (1, 1), (1, 1), (1, 1))
    assert got.dtype == mx.float16 and rel(got, mx.conv2d(x, w, padding=1) + b) < 5e-3
    ours = mx.grad(lambda x, w: (K.conv2d(x, w, b, (1, 1), (1, 1), (1, 1), True) ** 2).sum(), argnums=(0, 1))(x, w)
    want = mx.grad(lambda x, w: ((mx.conv2d(nn.relu(x), w, padding=1) + b) ** 2).sum(), argnums=(0, 1))(x, w)
    assert all(rel(g, h) < 1e-4 for g, h in zip(ours, want))


@pytest.mark.linux
@pytest.mark.parametrize("k", [2, 4])
def test_patch_conv_transpose(K, k):
    x, w, b = normal(2, 7, 5, 12), normal(6, k, k, 12, seed=1), normal(6, seed=2)
    assert rel(K.conv_transpose_patch(x, w, b), mx.conv_transpose2d(x, w, stride=k) + b) < 1e-5
    assert rel(K.conv_transpose_patch(x, w), mx.conv_transpose2d(x, w, stride=k)) < 1e-5


@pytest.mark.linux
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(70, 29), (1, 1), (23, 31), (46, 62)])
def test_resize_matches_interpolate(mode, align_corners, size):
    x = normal(2, 23, 31, 5)
    layer = L.Resize()
    got = layer(x, size, mode, align_corners)
    assert rel(got, interpolate(x, size, mode, align_corners)) < 1e-5
    assert got.dtype == x.dtype and layer(x.astype(mx.float16), size, mode, align_corners).dtype == mx.float16
    grad = mx.grad(lambda x: (layer(x, size, mode, align_corners) ** 2).sum())(x)
    assert rel(grad, mx.grad(lambda x: (interpolate(x, size, mode, align_corners) ** 2).sum())(x)) < 1e-4


# ------------------------------------------------------------------------------ the swap


def test_accelerate_swaps_layers_and_keeps_arrays(monkeypatch):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 2, 3)
            self.b = [dpt_layers.GELU(), nn.Linear(4, 4), nn.LayerNorm(4)]
            self.c = dpt_layers.ScaledDotProductAttention()
            self.d = {"resize": dpt_layers.Resize(), "grouped": nn.Conv2d(4, 4, 3, groups=2)}

    net = Net()
    before = dict(mlx_utils.tree_flatten(net.parameters()))
    cpu.accelerate(net)
    if native.kernels() is None:  # no kernels on this platform: the model is left as it is
        assert not cpu.is_accelerated(net)
        return
    assert type(net.a) is L.Conv2d and [type(m) for m in net.b] == [L.GELU, L.Linear, L.LayerNorm]
    assert type(net.c) is L.Attention and type(net.d["resize"]) is L.Resize and cpu.is_accelerated(net)
    x = normal(1, 9, 9, 4)
    assert rel(net.d["grouped"](x), nn.Conv2d.__call__(net.d["grouped"], x)) == 0.0  # MLX's own for groups
    after = dict(mlx_utils.tree_flatten(net.parameters()))
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    monkeypatch.setenv("DPT_MLX_FAST_KERNELS", "0")
    plain = Net()
    cpu.accelerate(plain)
    assert not cpu.is_accelerated(plain) and type(plain.a) is nn.Conv2d


@pytest.mark.parametrize("kind", ["dpt", "depth-anything"])
def test_fused_blocks_match_the_plain_model(kind):
    """Whole models with every CPU layer and fused block (ViT/DINOv2 blocks, fusion layers, heads)
    against the same model as written, in inference and in training mode (where they defer)."""
    import dpt_mlx
    from dpt_mlx.configs.dpt import DepthAnythingConfig, DPTConfig

    if kind == "dpt":
        config = DPTConfig(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=128,
            image_size=64,
            patch_size=16,
            backbone_out_indices=[0, 1, 2, 3],
            neck_hidden_sizes=[16, 32, 64, 64],
            fusion_hidden_size=32,
        )
        cls, shape = dpt_mlx.DPTForDepthEstimation, (2, 3, 64, 96)
    else:
        backbone = {
            "model_type": "dinov2",
            "hidden_size": 64,
            "num_attention_heads": 2,
            "num_hidden_layers": 4,
            "out_indices": [1, 2, 3, 4],
            "reshape_hidden_states": False,
            "patch_size": 14,
            "image_size": 56,
        }
        config = DepthAnythingConfig(
            backbone_config=backbone,
            patch_size=14,
            reassemble_hidden_size=64,
            neck_hidden_sizes=[16, 32, 64, 64],
            fusion_hidden_size=32,
            head_hidden_size=32,
        )
        cls, shape = dpt_mlx.DepthAnythingForDepthEstimation, (2, 3, 56, 70)
    mx.random.seed(0)
    fast = cls(config)
    fast.update(
        mlx_utils.tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape, key=mx.random.key(1)), fast.parameters())
    )  # no zero biases
    fast.update({"head": {"conv3": {"bias": mx.ones((1,))}}})  # the final ReLU open: depth > 0 to compare
    plain = cls(config)
    plain.update(fast.parameters())
    fast.eval()
    plain.eval()
    cpu.accelerate(fast)
    if native.kernels() is None:
        assert not cpu.is_accelerated(fast)
        return
    assert cpu.is_accelerated(fast)
    x = mx.array(np.random.default_rng(0).random(shape, dtype=np.float32))
    want = plain(x).predicted_depth
    assert float(mx.abs(want).max()) > 0 and rel(fast(x).predicted_depth, want) < 1e-5
    fast.train()
    plain.train()
    assert rel(fast(x).predicted_depth, plain(x).predicted_depth) < 1e-5


def test_cpu_layers_use_mlx_off_the_cpu_device(monkeypatch):
    x = mx.random.normal((1, 40, 40, 3))
    conv = L.Conv2d(3, 2, 3, padding=1)
    monkeypatch.setattr(L, "on_cpu", lambda: False)
    assert rel(conv(x), nn.Conv2d.__call__(conv, x)) == 0.0


def test_without_the_kernels_models_run_mlx_and_say_why_once(monkeypatch, capsys):
    monkeypatch.setattr(native, "_state", {"module": None, "why": "the CPU kernels were not built (test)"})
    monkeypatch.setattr(cpu, "_noted", set())
    for _ in range(2):
        net = nn.Sequential(nn.Linear(3, 3))
        assert cpu.accelerate(net) is net and not cpu.is_accelerated(net)
    assert capsys.readouterr().err.count("the CPU kernels were not built (test)") == 1
    info = cpu.cpu_info()
    assert info["kernels"] is False and info["note"].startswith("the CPU kernels were not built")
    assert cpu.images_per_pass(8, 64, 64) == 8


@pytest.mark.linux
def test_a_kernel_build_for_another_mlx_is_not_used(monkeypatch):
    class Built:
        built_with_mlx = "0.0.1"

    monkeypatch.setattr(native.importlib, "import_module", lambda name: Built())
    state = native._load()
    assert state["module"] is None and "built for mlx 0.0.1 but mlx" in state["why"]


BLAS_CHOICES = ["openblas"] + (["mkl"] if platform.machine() == "x86_64" else [])


@pytest.mark.linux
@pytest.mark.parametrize("blas", BLAS_CHOICES)
def test_kernels_load_on_linux_and_leave_mlx_alone(tmp_path, blas):
    """The kernels are there after the README's install (on x86-64 with MKL linked in), and
    loading and running a model with either BLAS changes nothing of MLX for other code: no BLAS
    symbol enters the process's global scope (it would answer libmlx's own calls), and MLX's
    matmul gives what it gave before."""
    script = textwrap.dedent("""
        import ctypes, mlx.core as mx, mlx.nn as nn, numpy as np
        import dpt_mlx
        from dpt_mlx import cpu
        a, b = mx.random.normal((64, 80)), mx.random.normal((80, 48))
        before = np.array(a @ b)
        net = nn.Sequential(nn.Linear(80, 48), nn.LayerNorm(48))
        ref = np.array(net(a))
        net = cpu.accelerate(net)
        np.testing.assert_allclose(np.array(net(a)), ref, atol=1e-4)
        info = cpu.cpu_info()
        assert info["kernels"] and info["note"] is None and info["threads"] >= 1 and info["blas"], info
        assert cpu.is_accelerated(net)
        for name in ("cblas_sgemm", "sgemm_", "cblas_sgemv", "mkl_get_version"):  # libmlx calls the first three
            assert not hasattr(ctypes.CDLL(None), name), name
        assert (np.array(a @ b) == before).all()
        print("ok", info["blas"])
    """)
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DPT_MLX_BLAS": blas},
    )
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-2000:]
    assert ("oneMKL" in run.stdout) == (blas == "mkl") and ("OpenBLAS" in run.stdout) == (blas == "openblas")


@pytest.mark.linux
def test_the_kernels_export_only_their_module():
    """MKL is linked into the extension with its names local: the library defines no BLAS name a
    later-loaded library could bind to (the linker that built it provides nm)."""
    out = subprocess.run(
        ["nm", "-D", "--defined-only", native.kernels().__file__],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert "PyInit__kernels" in names
    assert not [n for n in names if "blas" in n.lower() or "mkl" in n.lower() or "gemm" in n.lower()], names


@pytest.mark.linux
def test_blas_choice_follows_the_cpu_and_the_setting(monkeypatch):
    class Built:
        def has_mkl(self):
            return True

    monkeypatch.delenv(native.BLAS_ENV_VAR, raising=False)
    monkeypatch.setattr(native, "_cpu_vendor", lambda: "GenuineIntel")
    assert native._choose_blas(Built()) == "mkl"
    monkeypatch.setattr(native, "_cpu_vendor", lambda: "AuthenticAMD")
    assert native._choose_blas(Built()) == "openblas"
    monkeypatch.setenv(native.BLAS_ENV_VAR, "MKL")
    assert native._choose_blas(Built()) == "mkl"
    Built.has_mkl = lambda self: False
    with pytest.raises(RuntimeError, match="built without MKL"):
        native._choose_blas(Built())
    monkeypatch.setenv(native.BLAS_ENV_VAR, "atlas")
    with pytest.raises(RuntimeError, match="must be 'mkl' or 'openblas'"):
        native._choose_blas(Built())


@pytest.mark.linux
def test_a_bad_blas_setting_is_one_line_and_the_portable_path():
    script = "from dpt_mlx import cpu; info = cpu.cpu_info(); print(info['kernels']); print(info['note'])"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DPT_MLX_BLAS": "atlas"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == [
        "False",
        "DPT_MLX_BLAS must be 'mkl' or 'openblas', got 'atlas'; MLX's own ops run",
    ]


@pytest.mark.x86_64
@pytest.mark.linux
def test_openblas_kernels_follow_the_cpu_not_openblas_coretype():
    """A machine may set OPENBLAS_CORETYPE for its other OpenBLAS copies; the kernels' copy picks
    its kernels from the CPU (or from DPT_MLX_OPENBLAS_CORETYPE), and the setting stays as it was."""
    script = (
        "import os; from dpt_mlx import cpu; info = cpu.cpu_info(); "
        "print(info['blas']); print(os.environ.get('OPENBLAS_CORETYPE'))"
    )

    def run(**env):
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "DPT_MLX_BLAS": "openblas", **env},
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.splitlines()

    blas, coretype = run(OPENBLAS_CORETYPE="Prescott")  # OpenBLAS names that core Katmai
    assert "Katmai" not in blas and coretype == "Prescott"
    blas, _ = run(OPENBLAS_CORETYPE="Haswell", DPT_MLX_OPENBLAS_CORETYPE="Prescott")
    assert "Katmai" in blas


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

"""Print the BLAS that MLX's CPU backend uses and how fast it is.

    python benchmarks/blas_check.py            # a few seconds
    python benchmarks/blas_check.py --compare  # also run with DPT_MLX_BLAS=off
    python benchmarks/blas_check.py --full     # 2048^2 matmul, 96x96 conv, ViT-L layer

dpt_mlx chooses the BLAS on the first model load on the CPU (see ``dpt_mlx/cpu/blas.py``); this
script calls ``dpt_mlx.cpu.blas.setup()`` itself. Set
``DPT_MLX_BLAS=off|auto|openblas|mkl|system|/path/libX.so`` to change the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpt_mlx.cpu.blas import blas_info, setup

setup()  # what dpt_mlx does on the first model load on the CPU

import mlx.core as mx
import numpy as np


def best_time(fn, budget=1.0, max_reps=10):
    fn()  # warm-up
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = [first]
    for _ in range(max(0, min(max_reps, int(budget / max(first, 1e-6))) - 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def rel_err(got, want):
    return float(np.abs(got - want).max() / (np.abs(want).max() + 1e-30))


def bench_matmul(n):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    A, B = mx.array(a), mx.array(b)
    t = best_time(lambda: mx.eval(A @ B))
    err = rel_err(np.array(A @ B), a.astype(np.float64) @ b)
    return 2 * n**3 / t / 1e9, t, err


def bench_conv(hw, c):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, hw, hw, c), dtype=np.float32)
    w = rng.standard_normal((c, 3, 3, c), dtype=np.float32) / np.sqrt(9 * c)
    X, W = mx.array(x), mx.array(w)
    t = best_time(lambda: mx.eval(mx.conv2d(X, W, padding=1)))
    # numpy reference on a corner patch (full conv in numpy is slow)
    got = np.array(mx.conv2d(X, W, padding=1))[0, :8, :8]
    xp = np.pad(x[0].astype(np.float64), ((1, 1), (1, 1), (0, 0)))[:10, :10]
    want = np.zeros((8, 8, c))
    for i in range(3):
        for j in range(3):
            want += xp[i : i + 8, j : j + 8] @ w[:, i, j, :].T.astype(np.float64)
    return 2 * hw * hw * c * c * 9 / t / 1e9, t, rel_err(got, want)


def bench_vit_layer(tokens=577, dim=1024, mlp=4096, heads=16):
    """One pre-norm ViT-L encoder layer (DPT-Large / Depth Anything-L backbone)."""
    mx.random.seed(0)
    w_qkv, w_o = mx.random.normal((dim, 3 * dim)) * 0.02, mx.random.normal((dim, dim)) * 0.02
    w_1, w_2 = mx.random.normal((dim, mlp)) * 0.02, mx.random.normal((mlp, dim)) * 0.02
    x = mx.random.normal((1, tokens, dim))
    mx.eval(w_qkv, w_o, w_1, w_2, x)
    hd = dim // heads

    def layer(x):
        h = mx.fast.layer_norm(x, None, None, 1e-6)
        q, k, v = mx.split(h @ w_qkv, 3, axis=-1)
        q, k, v = (t.reshape(1, tokens, heads, hd).transpose(0, 2, 1, 3) for t in (q, k, v))
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=hd**-0.5)
        x = x + o.transpose(0, 2, 1, 3).reshape(1, tokens, dim) @ w_o
        h = mx.fast.layer_norm(x, None, None, 1e-6)
        h = h @ w_1
        return x + (h * 0.5 * (1 + mx.erf(h / np.sqrt(2.0)))) @ w_2

    t = best_time(lambda: mx.eval(layer(x)), budget=2.0)
    return t


def run(full):
    info = blas_info()
    print("BLAS used by MLX:")
    for key in ("provider", "library", "version", "found_by", "method", "threads",
                "mlx_imported_before_setup", "mlx_cblas_sgemm", "effective", "mode"):
        print(f"  {key:26s} {info.get(key)}")
    for note in info.get("notes", []):
        print(f"  note: {note}")
    n = 2048 if full else 1024
    gf, t, err = bench_matmul(n)
    print(f"matmul f32 {n}x{n}:          {gf:7.1f} GFLOP/s  ({t * 1e3:7.1f} ms, rel err {err:.1e})")
    hw = 96 if full else 48
    gf, t, err = bench_conv(hw, 256)
    print(f"conv3x3 f32 1x{hw}x{hw}x256->256: {gf:7.1f} GFLOP/s  ({t * 1e3:7.1f} ms, rel err {err:.1e})")
    if full:
        t = bench_vit_layer()
        print(f"ViT-L layer (577 tokens):    {t * 1e3:7.1f} ms  (x24 layers = {24 * t:.2f} s)")
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="larger sizes and a ViT-L layer (slow with the reference BLAS)")
    parser.add_argument("--compare", action="store_true", help="also run in a subprocess with DPT_MLX_BLAS=off")
    parser.add_argument("--json", action="store_true", help="print blas_info() as JSON and exit")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(blas_info(), indent=2))
        return
    run(args.full)
    if args.compare and os.environ.get("DPT_MLX_BLAS", "auto") != "off":
        print("\n--- DPT_MLX_BLAS=off (the BLAS bundled with mlx-cpu) ---", flush=True)
        env = dict(os.environ, DPT_MLX_BLAS="off")
        cmd = [sys.executable, os.path.abspath(__file__)] + (["--full"] if args.full else [])
        subprocess.run(cmd, env=env, check=False)


if __name__ == "__main__":
    main()

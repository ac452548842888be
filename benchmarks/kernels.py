"""Each CPU kernel of dpt_mlx against PyTorch's CPU op at the shapes the benchmark's models run,
in GFLOP/s, best of several runs, side by side in one process. A script with printed figures, not
a test.

    python benchmarks/kernels.py [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import mlx.core as mx
import torch

from dpt_mlx.cpu import cpu_info, native, set_threads


def best(fn, runs: int = 10) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def line(name: str, flops: float, ours: float, ref: float) -> str:
    return f"{name:<42} dpt_mlx {flops / ours / 1e9:6.0f} GFLOP/s   torch {flops / ref / 1e9:6.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=native.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_threads(args.threads)
    kernels = native.kernels()
    if kernels is None:
        raise SystemExit(f"no CPU kernels: {native.unavailable()}")
    mx.set_default_device(mx.cpu)
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads, {cpu_info()['blas']}, "
        f"load {os.getloadavg()[0]:.2f}"
    )

    for heads, n, d, model in [(6, 1370, 64, "Depth-Anything-small 518"), (16, 577, 64, "DPT-Large 384")]:
        q, k, v = (mx.random.normal((1, n, heads, d)).transpose(0, 2, 1, 3) for _ in range(3))
        mx.eval(q, k, v)
        tq, tk, tv = (torch.randn(1, heads, n, d) for _ in range(3))
        ours = best(lambda: mx.eval(kernels.attention(q, k, v, d**-0.5)))
        ref = best(lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv))
        print(line(f"attention {model}", 4 * heads * n * n * d, ours, ref))

    for m, k, n, act in [
        (1370, 384, 1152, "none"),
        (1370, 384, 1536, "gelu"),
        (1370, 1536, 384, "none"),
        (577, 1024, 3072, "none"),
        (577, 1024, 4096, "gelu"),
        (577, 4096, 1024, "none"),
    ]:
        x, w, b = mx.random.normal((1, m, k)), mx.random.normal((n, k)), mx.random.normal((n,))
        mx.eval(x, w, b)
        layer, tx = torch.nn.Linear(k, n), torch.randn(1, m, k)
        torch_act = torch.nn.GELU() if act == "gelu" else torch.nn.Identity()
        ours = best(lambda: mx.eval(kernels.linear(x, w, b, None, None, act)))
        with torch.no_grad():
            ref = best(lambda: torch_act(layer(tx)))
        print(line(f"linear {m}x{k}x{n} {act}", 2 * m * k * n, ours, ref))

    for size, c in [(96, 256), (192, 256), (296, 64)]:
        x, w, b = mx.random.normal((1, size, size, c)), mx.random.normal((c, 3, 3, c)), mx.random.normal((c,))
        mx.eval(x, w, b)
        conv, tx = torch.nn.Conv2d(c, c, 3, padding=1), torch.randn(1, c, size, size)
        ours = best(lambda: mx.eval(kernels.conv2d(x, w, b, (1, 1), (1, 1), (1, 1))), 5)
        with torch.no_grad():
            ref = best(lambda: conv(tx), 5)
        print(line(f"conv3x3 {size}x{size}x{c}", 2 * size * size * 9 * c * c, ours, ref))


if __name__ == "__main__":
    main()

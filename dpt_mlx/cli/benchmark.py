"""Speed, memory and precision of dpt_mlx against transformers, on the same weights.

    python -m dpt_mlx.benchmark                                   # 4 models, batch 1 (a few minutes on 2 cores)
    python -m dpt_mlx.benchmark --models dpt-large --batch-sizes 1,4,8 --runs 5
    python -m dpt_mlx.benchmark --no-precision --threads 1 --json out.json

Each model is built with transformers from a config shaped like a released checkpoint, given
random weights scaled like trained ones (std 1/sqrt(fan_in), so activations keep their size
through the network and half precision meets realistic magnitudes), saved with
``save_pretrained`` into a temporary directory and loaded from there by both libraries: no
downloads. After a warm-up run each, the two forward passes alternate (ours, theirs, theirs,
ours, ...) so that load from other processes hits both alike; the report gives the median time
per image, their ratio, images per second, and the memory a forward pass adds on top of the
loaded model, each measured in a fresh process (the peak of its resident set, VmHWM after
resetting it through /proc/self/clear_refs, above its level after loading; for MLX also its
allocator's peak, weights included).

The precision table compares float16, bfloat16, 8-bit and 4-bit weights (see dpt_mlx.quantize)
against our float32 output on the same input: max and mean absolute difference of the depth
map relative to the float32 map's range (max - min), and the weights' size.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from .. import cpu
from ..cpu import kernels as _kernels  # noqa: F401  (cpu.kernels.set_threads)
from ..cpu.blas import blas_info
from ..models import load_model as load_pretrained
from ..io.quantize import quantize_model

# ------------------------------------------------------------------------------------- models


@dataclass
class ModelSpec:
    """A released checkpoint's shape: how to build its transformers config and the input size."""

    name: str
    checkpoint: str  # the hub checkpoint whose config this mirrors (not downloaded)
    input_size: tuple[int, int]  # (H, W) that the checkpoint's image processor produces
    input_note: str
    config: Callable[[], object] = field(repr=False)


def _dinov2(out_indices, apply_layernorm):
    import transformers

    return transformers.Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, image_size=518, patch_size=14,
        out_indices=out_indices, apply_layernorm=apply_layernorm, reshape_hidden_states=False,
    )


def _dpt_large():
    import transformers

    return transformers.DPTConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, image_size=384,
        patch_size=16, backbone_out_indices=[5, 11, 17, 23], neck_hidden_sizes=[256, 512, 1024, 1024],
        readout_type="project", layer_norm_eps=1e-12, fusion_hidden_size=256,
    )


def _dpt_hybrid():
    import transformers

    return transformers.DPTConfig(
        is_hybrid=True, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        image_size=384, patch_size=16, backbone_out_indices=[2, 5, 8, 11], neck_hidden_sizes=[256, 512, 768, 768],
        reassemble_factors=[1, 1, 1, 0.5], readout_type="project", backbone_featmap_shape=[1, 1024, 24, 24],
        neck_ignore_stages=[0, 1], layer_norm_eps=1e-12,
    )


def _dpt_dinov2_small():
    import transformers

    return transformers.DPTConfig(
        backbone_config=_dinov2([3, 6, 9, 12], apply_layernorm=True), neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=256, add_projection=True, use_bias_in_fusion_residual=False, readout_type="project",
        reassemble_factors=[4, 2, 1, 0.5],
    )


def _depth_anything_small():
    import transformers

    return transformers.DepthAnythingConfig(
        backbone_config=_dinov2([9, 10, 11, 12], apply_layernorm=True), reassemble_hidden_size=384, patch_size=14,
        neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32,
    )


MODELS = {
    spec.name: spec
    for spec in [
        ModelSpec("dpt-large", "Intel/dpt-large", (384, 384), "DPTImageProcessor: resize to 384x384", _dpt_large),
        ModelSpec("dpt-hybrid", "Intel/dpt-hybrid-midas", (384, 384), "384x384 (the reference runs hybrids "
                  "at image_size only)", _dpt_hybrid),
        ModelSpec("dpt-dinov2-small", "facebook/dpt-dinov2-small-nyu", (490, 644), "a 640x480 photo: no resize, "
                  "padded to a multiple of 14", _dpt_dinov2_small),
        ModelSpec("depth-anything-small", "LiheYoung/depth-anything-small-hf", (518, 518), "518x518",
                  _depth_anything_small),
    ]
}


def init_like_trained(model, input_size: tuple[int, int], seed: int = 0):
    """Weights with a trained network's scale: N(0, 1/fan_in) for every matrix/kernel and small
    random biases; then the depth head's last convolution gets the bias that lets its final ReLU
    pass 90% of the pixels of a random image (an all-zero depth map would make every comparison
    meaningless)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            if name.endswith("norm3.weight"):
                # BiT bottlenecks: a residual branch as small as trained ones have. At unit scale
                # 16 random bottlenecks are chaotic: they amplify float32 rounding 1000-fold.
                p.fill_(0.2)
        last = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        seen = []
        hook = last.register_forward_hook(lambda mod, inp, out: seen.append(out))
        model(torch.randn((1, 3, *input_size), generator=gen))
        hook.remove()
        last.bias.sub_(torch.quantile(seen[0].flatten()[::97].float(), 0.1))
    return model


def build_pair(spec: ModelSpec, directory: str, seed: int = 0):
    """(transformers model, checkpoint directory) with random trained-scale weights."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = spec.config()
    cls = transformers.DepthAnythingForDepthEstimation if config.model_type == "depth_anything" else (
        transformers.DPTForDepthEstimation)
    ref = init_like_trained(cls(config), spec.input_size, seed)
    ref.save_pretrained(directory)
    return ref


# ------------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch
    import transformers

    info = blas_info()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "os": platform.platform(),
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "mlx_device": str(mx.default_device()),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "blas": info.get("version") or info.get("provider") or "reference (none found)",
        "blas_provider": info.get("provider"),
        "blas_threads": info.get("threads"),
        "fast_cpu_kernels": cpu.enabled() and cpu.on_cpu(),
        "load_average": os.getloadavg(),
    }


def set_threads(n: int) -> None:
    """Use ``n`` threads in PyTorch, in the BLAS that MLX calls and in our attention softmax."""
    import ctypes

    import torch

    torch.set_num_threads(n)
    cpu.kernels.set_threads(n)
    info = blas_info()
    if info.get("library"):
        lib = ctypes.CDLL(info["library"])
        for name in (info.get("symbol_prefix", "") + "openblas_set_num_threads", "MKL_Set_Num_Threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], None
                fn(n)
                break


# ------------------------------------------------------------------------------------- measuring

_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _memory_child(framework: str, directory: str, batch: int, height: int, width: int, dtype: str) -> None:
    """Run in a fresh process: load one model, run one forward pass, print its memory as JSON."""
    x = np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32)
    out = {}
    if framework == "mlx":
        model = load_pretrained(directory, dtype=None if dtype == "float32" else dtype)
        out["weights_mib"] = weights_mib(model)

        def fn():
            mx.eval(_depth(model(x)))
    else:
        import torch
        import transformers

        model = transformers.AutoModelForDepthEstimation.from_pretrained(directory).eval().to(getattr(torch, dtype))
        xt = torch.from_numpy(x).to(getattr(torch, dtype))
        tensors = list(model.parameters()) + list(model.buffers())
        out["weights_mib"] = sum(t.nbytes for t in tensors) / 2**20
        with torch.no_grad():  # safetensors are memory-mapped: page every weight in before measuring
            sum(float(t.float().sum()) for t in tensors)

        def fn():
            with torch.inference_mode():
                model(xt)
    gc.collect()
    ok = _reset_rss_peak()
    base = _status_kb("VmRSS")
    if framework == "mlx":
        mx.reset_peak_memory()
    fn()
    peak = _status_kb("VmHWM")
    out["rss_after_load_mib"] = base / 1024 if base else None
    out["rss_added_mib"] = (peak - base) / 1024 if ok and base and peak else None
    if framework == "mlx":
        out["mlx_peak_mib"] = mx.get_peak_memory() / 2**20
    print("MEMORY" + json.dumps(out))


def forward_memory(framework: str, directory: str, batch: int, size: tuple[int, int], dtype: str) -> dict:
    """Memory of one forward pass, measured in a fresh interpreter so that nothing earlier counts:
    the rise of the resident set above its level after loading (VmHWM - VmRSS, the peak reset
    through /proc/self/clear_refs), the first pass after loading; for MLX also its allocator's peak
    (weights included)."""
    import subprocess

    code = (f"from dpt_mlx.benchmark import _memory_child; "
            f"_memory_child({framework!r}, {directory!r}, {batch}, {size[0]}, {size[1]}, {dtype!r})")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=False)
    for line in r.stdout.splitlines():
        if line.startswith("MEMORY"):
            return json.loads(line[len("MEMORY"):])
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return {"rss_added_mib": None, "error": tail}


def alternate(fns: dict[str, Callable[[], None]], runs: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each function ``runs`` times, alternating their order run by run."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for i in range(runs):
        for n in names if i % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t)
    return times


def weights_mib(model) -> float:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters())) / 2**20


def _depth(out) -> mx.array:
    return out.predicted_depth


def compare(ref: np.ndarray, out: np.ndarray) -> dict:
    """Differences relative to the float32 depth map's range."""
    span = float(ref.max() - ref.min()) or 1.0
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    return {"max_err_of_range": float(diff.max() / span), "mean_err_of_range": float(diff.mean() / span)}


# ------------------------------------------------------------------------------------- benchmark


def bench_model(spec: ModelSpec, batch_sizes, runs: int, dtype: str, precision: bool, torch_too: bool,
                memory: bool, log) -> dict:
    import torch

    result = {"model": spec.name, "checkpoint": spec.checkpoint, "input": list(spec.input_size),
              "input_note": spec.input_note, "dtype": dtype, "speed": [], "precision": []}
    tdtype = getattr(torch, dtype)
    with tempfile.TemporaryDirectory(prefix="dpt_mlx_bench_") as directory:
        t0 = time.perf_counter()
        ref = build_pair(spec, directory).to(tdtype)
        ours = load_pretrained(directory, dtype=None if dtype == "float32" else dtype)
        log(f"  built {spec.name} in {time.perf_counter() - t0:.1f}s: {weights_mib(ours):.0f} MiB of weights ({dtype})")
        h, w = spec.input_size
        for bs in batch_sizes:
            x = np.random.default_rng(bs).standard_normal((bs, 3, h, w)).astype(np.float32)
            row = time_batch(ours, ref if torch_too else None, x, tdtype, runs)
            if memory:
                row["mlx_memory"] = forward_memory("mlx", directory, bs, spec.input_size, dtype)
                if torch_too:
                    row["torch_memory"] = forward_memory("torch", directory, bs, spec.input_size, dtype)
            result["speed"].append(row)
            log("  " + format_speed_row(row))
        ref = None  # free the reference before the precision models load
        gc.collect()
        if precision:
            result["precision"] = precision_table(ours if dtype == "float32" else None, directory, spec, log)
    gc.collect()
    mx.clear_cache()
    return result


def time_batch(ours, ref, x: np.ndarray, tdtype, runs: int) -> dict:
    """Median seconds per call of our model and (if ``ref``) the reference on the batch ``x``."""
    import torch

    xt = torch.from_numpy(x).to(tdtype)

    def run_ours():
        mx.eval(_depth(ours(x)))

    def run_torch():
        with torch.inference_mode():
            ref(xt)

    times = alternate({"mlx": run_ours, "torch": run_torch} if ref is not None else {"mlx": run_ours}, runs)
    row = {"batch": len(x), "mlx_s": statistics.median(times["mlx"]), "mlx_runs": times["mlx"]}
    if ref is not None:
        row.update(torch_s=statistics.median(times["torch"]), torch_runs=times["torch"])
        row["ratio"] = row["mlx_s"] / row["torch_s"]
        with torch.inference_mode():
            a = ref(xt).predicted_depth.float().numpy()
        b = np.array(_depth(ours(x)).astype(mx.float32))
        row["rel_err_vs_torch"] = float(np.abs(b - a).max() / max(np.abs(a).max(), 1e-12))
    return row


def precision_table(f32_model, directory: str, spec: ModelSpec, log) -> list[dict]:
    """float16 / bfloat16 / 8-bit / 4-bit against float32 on one image."""
    h, w = spec.input_size
    x = np.random.default_rng(1234).standard_normal((1, 3, h, w)).astype(np.float32)
    base = f32_model if f32_model is not None else load_pretrained(directory)
    t = time.perf_counter()
    ref = np.array(_depth(base(x)))
    rows = [{"variant": "float32", "weights_mib": weights_mib(base), "seconds": time.perf_counter() - t,
             "max_err_of_range": 0.0, "mean_err_of_range": 0.0}]
    log("  " + format_precision_row(rows[-1]))
    variants = [
        ("float16", lambda: load_pretrained(directory, dtype="float16")),
        ("bfloat16", lambda: load_pretrained(directory, dtype="bfloat16")),
        ("int8 (g64)", lambda: quantize_model(load_pretrained(directory), bits=8, group_size=64)),
        ("int4 (g64)", lambda: quantize_model(load_pretrained(directory), bits=4, group_size=64)),
    ]
    for name, make in variants:
        model = make()
        t = time.perf_counter()
        out = np.array(_depth(model(x)).astype(mx.float32))
        row = {"variant": name, "weights_mib": weights_mib(model), "seconds": time.perf_counter() - t}
        row.update(compare(ref, out))
        rows.append(row)
        log("  " + format_precision_row(row))
        del model
        gc.collect()
        mx.clear_cache()
    return rows


# ------------------------------------------------------------------------------------- report


def _mib(v) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def format_speed_row(row: dict) -> str:
    bs = row["batch"]
    text = f"batch {bs}: mlx {row['mlx_s'] / bs:.3f} s/img ({bs / row['mlx_s']:.2f} img/s)"
    if "torch_s" in row:
        text += (f" | torch {row['torch_s'] / bs:.3f} s/img ({bs / row['torch_s']:.2f} img/s)"
                 f" | ratio {row['ratio']:.2f} | rel err vs torch {row['rel_err_vs_torch']:.1e}")
    if "mlx_memory" in row:
        m = row["mlx_memory"]
        text += f" | mlx +{_mib(m['rss_added_mib'])} MiB RSS (allocator peak {_mib(m['mlx_peak_mib'])} MiB)"
    if "torch_memory" in row:
        text += f" | torch +{_mib(row['torch_memory']['rss_added_mib'])} MiB RSS"
    return text


def format_precision_row(row: dict) -> str:
    return (f"{row['variant']:<11} weights {row['weights_mib']:7.1f} MiB | max err {row['max_err_of_range']:.2e}"
            f" of range | mean err {row['mean_err_of_range']:.2e} of range | {row['seconds']:.2f} s")


def summary(machine: dict, results: list[dict]) -> str:
    lines = [
        "",
        f"machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {machine['os']}",
        (f"mlx {machine['mlx']} ({machine['mlx_device']}), BLAS {machine['blas']} x{machine['blas_threads']}; "
         f"torch {machine['torch']} x{machine['torch_threads']}, transformers {machine['transformers']}; "
         f"load average at start {machine['load_average'][0]:.2f}, at end {os.getloadavg()[0]:.2f}"),
        "",
        (f"{'model':<22}{'input':>9}{'batch':>6}{'mlx s/img':>11}{'torch s/img':>12}{'ratio':>7}"
         f"{'mlx img/s':>10}{'torch img/s':>12}{'mlx +MiB':>9}{'torch +MiB':>11}"),
    ]
    for r in results:
        for row in r["speed"]:
            bs = row["batch"]
            mm, tm = row.get("mlx_memory", {}), row.get("torch_memory", {})
            lines.append(
                f"{r['model']:<22}{'x'.join(map(str, r['input'])):>9}{bs:>6}{row['mlx_s'] / bs:>11.3f}"
                + (f"{row['torch_s'] / bs:>12.3f}{row['ratio']:>7.2f}" if "torch_s" in row else f"{'-':>12}{'-':>7}")
                + f"{bs / row['mlx_s']:>10.2f}" + (f"{bs / row['torch_s']:>12.2f}" if "torch_s" in row else f"{'-':>12}")
                + f"{_mib(mm.get('rss_added_mib')):>9}{_mib(tm.get('rss_added_mib')):>11}"
            )
    if any(r["precision"] for r in results):
        lines += ["", f"{'model':<22}{'variant':<12}{'weights MiB':>12}{'max err/range':>15}{'mean err/range':>16}"]
        for r in results:
            for row in r["precision"]:
                lines.append(f"{r['model']:<22}{row['variant']:<12}{row['weights_mib']:>12.1f}"
                             f"{row['max_err_of_range']:>15.2e}{row['mean_err_of_range']:>16.2e}")
    lines.append("")
    lines.append("+MiB: peak resident memory a forward pass adds to the loaded model (VmHWM - VmRSS before it).")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dpt_mlx.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    p.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default: 1)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per model and batch size, after one warm-up")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="compute dtype of both libraries for the timing (default float32)")
    p.add_argument("--threads", type=int, default=None, help="threads for PyTorch and for MLX's BLAS")
    p.add_argument("--no-torch", action="store_true", help="time dpt_mlx only")
    p.add_argument("--no-precision", action="store_true", help="skip the float16/bfloat16/8-bit/4-bit table")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"error: unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    try:
        batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
        if not batch_sizes or min(batch_sizes) < 1 or args.runs < 1:
            raise ValueError
    except ValueError:
        print("error: --batch-sizes must be positive integers and --runs at least 1", file=sys.stderr)
        return 2
    if args.threads is not None:
        os.environ["DPT_MLX_BLAS_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)  # memory children
        set_threads(args.threads)
    machine = machine_info()
    if args.threads is not None:
        machine["blas_threads"] = args.threads

    def log(msg):
        print(msg, flush=True)

    log(f"{machine['cpu']} ({machine['usable_cores']} cores), mlx {machine['mlx']}, BLAS {machine['blas']} "
        f"x{machine['blas_threads']}, torch {machine['torch']} x{machine['torch_threads']}, "
        f"load {machine['load_average'][0]:.2f}")
    results = []
    for name in names:
        log(f"{name} ({MODELS[name].checkpoint}-shaped, {'x'.join(map(str, MODELS[name].input_size))}):")
        results.append(bench_model(MODELS[name], batch_sizes, args.runs, args.dtype, not args.no_precision,
                                   not args.no_torch, not args.no_memory, log))
    print(summary(machine, results))
    if args.json:
        machine["load_average_end"] = os.getloadavg()
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

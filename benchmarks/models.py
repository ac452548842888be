"""The benchmark's models and measurements: checkpoints shaped like released ones with random weights at a
trained network's scale, the side-by-side timing against transformers, how far each time is from the
machine's limit (the model's FLOPs against PyTorch's float32 matmul rate), and the precision table.

Every checkpoint is built with transformers (torch is needed even with ``--no-torch``), saved with
``save_pretrained`` into a temporary directory and loaded from there by both libraries.
"""

from __future__ import annotations

import gc
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from benchmarks.memory import ForwardMemory, bench_inputs, forward_memory, weights_mib
from benchmarks.specs import DEFAULT_MODELS, MODELS, ModelSpec  # noqa: F401  (the command's lists)
from dpt_mlx.cpu import blas_info
from dpt_mlx.io.quantize import quantize_model
from dpt_mlx.models import load_model

# ------------------------------------------------------------------------------------- models


def init_like_trained(model, input_size: tuple[int, int], seed: int = 0):
    """Weights with a trained network's scale: N(0, 1/fan_in) for every matrix/kernel and small
    random biases; then the depth head's last convolution gets the bias that lets its final ReLU
    pass 90% of the pixels of a random image (an all-zero depth map would make every comparison
    meaningless)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    model.eval()
    inputs = torch_inputs(model.config.model_type, 1, input_size, gen)
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
        if not hasattr(model, "head"):  # ZoeDepth: metric bins, no final ReLU to open
            return model
        last = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        seen = []
        hook = last.register_forward_hook(lambda mod, inp, out: seen.append(out))
        model(**inputs)
        hook.remove()
        last.bias.sub_(torch.quantile(seen[0].flatten()[::97].float(), 0.1))
    return model


def torch_inputs(model_type: str, batch: int, input_size: tuple[int, int], gen=None) -> dict:
    """The reference model's keyword inputs: random pixels, and a depth prompt where the model takes one."""
    import torch

    x, prompt = bench_inputs(model_type, batch, input_size, seed=int(gen.initial_seed()) if gen is not None else 0)
    out = {"pixel_values": torch.from_numpy(x)}
    if prompt is not None:
        out["prompt_depth"] = torch.from_numpy(prompt)
    return out


def build_pair(spec: ModelSpec, directory: str, seed: int = 0):
    """The transformers model with random trained-scale weights, saved into ``directory``."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = spec.config()
    cls = {
        "depth_anything": transformers.DepthAnythingForDepthEstimation,
        "zoedepth": transformers.ZoeDepthForDepthEstimation,
        "prompt_depth_anything": transformers.PromptDepthAnythingForDepthEstimation,
        "depth_pro": transformers.DepthProForDepthEstimation,
    }.get(config.model_type, transformers.DPTForDepthEstimation)
    ref = init_like_trained(cls(config), spec.input_size, seed)
    ref.save_pretrained(directory)
    return ref


# ------------------------------------------------------------------------------------- results


def format_mib(v) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def format_share(share: float | None) -> str:
    """``share`` of the sgemm peak as the log line shows it: ", 12.3% of peak", or nothing."""
    return "" if share is None else f", {100 * share:.1f}% of peak"


def peak_share(flops: float | None, seconds: float | None, peak_gflops: float | None) -> float | None:
    """The fraction of the sgemm peak that ``flops`` done in ``seconds`` reach; None where a figure is missing."""
    if not (flops and seconds and peak_gflops):
        return None
    return flops / seconds / (peak_gflops * 1e9)


@dataclass
class SpeedRow:
    """One batch size: median seconds per call of each library (torch fields None with --no-torch)."""

    batch: int
    mlx_s: float
    mlx_runs: list[float]
    torch_s: float | None = None
    torch_runs: list[float] | None = None
    ratio: float | None = None  # mlx_s / torch_s
    rel_err_vs_torch: float | None = None  # max |ours - theirs| / max |theirs|
    mlx_memory: ForwardMemory | None = None
    torch_memory: ForwardMemory | None = None
    mlx_peak_share: float | None = None  # FLOPs / mlx_s / sgemm peak
    torch_peak_share: float | None = None  # FLOPs / torch_s / sgemm peak

    def set_peak_shares(self, flops_per_image: int | None, peak_gflops: float | None) -> None:
        """Each library's share of the sgemm peak on this batch (None where a figure is missing)."""
        flops = flops_per_image * self.batch if flops_per_image else None
        self.mlx_peak_share = peak_share(flops, self.mlx_s, peak_gflops)
        self.torch_peak_share = peak_share(flops, self.torch_s, peak_gflops)

    def to_json(self) -> dict:
        out = {k: v for k, v in vars(self).items() if v is not None}
        for key in ("mlx_memory", "torch_memory"):
            if key in out:
                out[key] = out[key].to_json()
        return out

    def line(self, flops_per_image: int | None = None) -> str:
        bs = self.batch
        text = f"batch {bs}"
        if flops_per_image:
            text += f" ({flops_per_image / 1e9:.1f} GFLOP/img)"
        text += f": mlx {self.mlx_s / bs:.3f} s/img ({bs / self.mlx_s:.2f} img/s{format_share(self.mlx_peak_share)})"
        if self.torch_s is not None:
            text += (
                f" | torch {self.torch_s / bs:.3f} s/img ({bs / self.torch_s:.2f} img/s"
                f"{format_share(self.torch_peak_share)})"
                f" | ratio {self.ratio:.2f} | rel err vs torch {self.rel_err_vs_torch:.1e}"
            )
        if self.mlx_memory is not None:
            m = self.mlx_memory
            text += (
                f" | mlx +{format_mib(m.rss_added_mib)} MiB RSS, +{format_mib(m.rss_added_second_mib)} through"
                f" a 2nd pass (allocator peak {format_mib(m.mlx_peak_mib)} MiB)"
            )
        if self.torch_memory is not None:
            t = self.torch_memory
            text += (
                f" | torch +{format_mib(t.rss_added_mib)} MiB RSS, "
                f"+{format_mib(t.rss_added_second_mib)} through a 2nd pass"
            )
        return text


@dataclass
class PrecisionRow:
    """One weight format against our float32 output: errors relative to the float32 map's range."""

    variant: str
    weights_mib: float
    seconds: float
    max_err_of_range: float = 0.0
    mean_err_of_range: float = 0.0

    def line(self) -> str:
        return (
            f"{self.variant:<11} weights {self.weights_mib:7.1f} MiB | max err {self.max_err_of_range:.2e}"
            f" of range | mean err {self.mean_err_of_range:.2e} of range | {self.seconds:.2f} s"
        )


@dataclass
class ModelResult:
    model: str
    checkpoint: str
    input: list[int]  # [H, W]
    input_note: str
    dtype: str
    speed: list[SpeedRow] = field(default_factory=list)
    precision: list[PrecisionRow] = field(default_factory=list)
    profile: dict | None = None  # --profile: seconds per stage, {"mlx": {...}, "torch": {...}}
    folder: dict | None = None  # --folder-run: seconds and images per second of both folder runs
    flops: int | None = None  # one batch-1 forward pass of the reference (FlopCounterMode: see count_flops)

    def to_json(self) -> dict:
        out = dict(vars(self))
        out["speed"] = [row.to_json() for row in self.speed]
        out["precision"] = [dict(vars(row)) for row in self.precision]
        return out


@dataclass
class BenchOptions:
    """What to measure, from the command line."""

    batch_sizes: list[int]
    runs: int
    dtype: str  # compute dtype of both libraries for the timing
    precision: bool
    torch_too: bool
    memory: bool
    profile: bool = False
    folder_images: int = 0  # --folder-run: photos in the folder run (0: none)


# ------------------------------------------------------------------------------------- the machine's limit


def sgemm_peak_gflops(n: int = 2048, runs: int = 8) -> float:
    """The best rate of an n x n x n float32 matmul in PyTorch at its current thread count, in GFLOP/s:
    the limit the timings are set against (best of ``runs`` after a warm-up)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b, out = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen), torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(runs):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of an attention kernel: Q K^T and P V, 4*B*H*Nq*Nk*D (torch's formula for its GPU kernels)."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(ref, x: np.ndarray, prompt: np.ndarray | None, tdtype) -> int:
    """FLOPs of one forward pass of the reference on ``x`` (and the depth ``prompt``), counted by torch's
    FlopCounterMode: 2 per multiply-add of every matmul, linear layer, convolution and attention product;
    norms, softmax, activations and resizes are not counted.

    FlopCounterMode (torch 2.13) has no formula for the CPU's fused attention,
    ``aten._scaled_dot_product_flash_attention_for_cpu``, and would count it as 0: where the registry
    lacks it, it is registered here with the formula of the GPU attention kernels (:func:`_sdpa_flops`).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    extra = {} if cpu_attention in flop_registry else {cpu_attention: _sdpa_flops}
    kw = {} if prompt is None else {"prompt_depth": torch.from_numpy(prompt).to(tdtype)}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=extra) as counter:
        ref(torch.from_numpy(x).to(tdtype), **kw)
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------- measuring


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


def time_batch(ours, ref, x: np.ndarray, tdtype, runs: int, prompt: np.ndarray | None = None) -> SpeedRow:
    """Median seconds per call of our model and (if ``ref``) the reference on the batch ``x`` (with
    the depth ``prompt`` for models that take one)."""
    import torch

    xt = torch.from_numpy(x).to(tdtype)
    ours_kw = {} if prompt is None else {"prompt_depth": prompt}
    ref_kw = {} if prompt is None else {"prompt_depth": torch.from_numpy(prompt).to(tdtype)}

    def run_ours():
        mx.eval(ours(x, **ours_kw).predicted_depth)

    def run_torch():
        with torch.inference_mode():
            ref(xt, **ref_kw)

    times = alternate({"mlx": run_ours, "torch": run_torch} if ref is not None else {"mlx": run_ours}, runs)
    row = SpeedRow(batch=len(x), mlx_s=statistics.median(times["mlx"]), mlx_runs=times["mlx"])
    if ref is not None:
        row.torch_s, row.torch_runs = statistics.median(times["torch"]), times["torch"]
        row.ratio = row.mlx_s / row.torch_s
        with torch.inference_mode():
            a = ref(xt, **ref_kw).predicted_depth.float().numpy()
        b = np.array(ours(x, **ours_kw).predicted_depth.astype(mx.float32))
        row.rel_err_vs_torch = float(np.abs(b - a).max() / max(np.abs(a).max(), 1e-12))
    return row


def base_type(spec: ModelSpec) -> str:
    return spec.config().model_type


def _errors_of_range(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """Max and mean absolute difference relative to the float32 depth map's range."""
    span = float(ref.max() - ref.min()) or 1.0
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    return float(diff.max() / span), float(diff.mean() / span)


def precision_table(f32_model, directory: str, spec: ModelSpec, log) -> list[PrecisionRow]:
    """float16 / bfloat16 / 8-bit / 4-bit against float32 on one image."""
    x, prompt = bench_inputs(base_type(spec), 1, spec.input_size, seed=1234)
    kw = {} if prompt is None else {"prompt_depth": prompt}
    base = f32_model if f32_model is not None else load_model(directory)
    t = time.perf_counter()
    ref = np.array(base(x, **kw).predicted_depth)
    rows = [PrecisionRow("float32", weights_mib(base), time.perf_counter() - t)]
    log("  " + rows[-1].line())
    variants = [
        ("float16", lambda: load_model(directory, dtype="float16")),
        ("bfloat16", lambda: load_model(directory, dtype="bfloat16")),
        ("int8 (g64)", lambda: quantize_model(load_model(directory), bits=8, group_size=64)),
        ("int4 (g64)", lambda: quantize_model(load_model(directory), bits=4, group_size=64)),
    ]
    for name, make in variants:
        model = make()
        t = time.perf_counter()
        out = np.array(model(x, **kw).predicted_depth.astype(mx.float32))
        rows.append(PrecisionRow(name, weights_mib(model), time.perf_counter() - t, *_errors_of_range(ref, out)))
        log("  " + rows[-1].line())
        del model
        gc.collect()
        mx.clear_cache()
    return rows


def blas_name(info: dict) -> str:
    """The BLAS in ``dpt_mlx.cpu.blas_info()``, as the report names it."""
    return info.get("blas") or "MLX's own (" + (info.get("note") or "portable path") + ")"


def bench_model(spec: ModelSpec, options: BenchOptions, log, peak_gflops: float | None = None) -> ModelResult:
    """Build ``spec``'s checkpoint, count its FLOPs, time both libraries at every batch size (with their
    share of the sgemm peak ``peak_gflops``, where given), then the precision table.

    The BLAS is logged once our model is loaded: dpt_mlx picks it on the first model load on the CPU.
    The FLOPs are counted once, on the batch-1 input that the timing uses (seed 1), and scale with the batch.
    """
    import torch

    dtype = options.dtype
    result = ModelResult(spec.name, spec.checkpoint, list(spec.input_size), spec.input_note, dtype)
    tdtype = getattr(torch, dtype)
    with tempfile.TemporaryDirectory(prefix="dpt_mlx_bench_") as directory:
        t0 = time.perf_counter()
        ref = build_pair(spec, directory).to(tdtype)
        ours = load_model(directory, dtype=None if dtype == "float32" else dtype)
        blas = blas_info()
        log(
            f"  built {spec.name} in {time.perf_counter() - t0:.1f}s: {weights_mib(ours):.0f} MiB of weights "
            f"({dtype}); BLAS {blas_name(blas)} x{blas.get('threads')}"
        )
        result.flops = count_flops(ref, *bench_inputs(ours.config.model_type, 1, spec.input_size, seed=1), tdtype)
        for bs in options.batch_sizes:
            x, prompt = bench_inputs(ours.config.model_type, bs, spec.input_size, seed=bs)
            row = time_batch(ours, ref if options.torch_too else None, x, tdtype, options.runs, prompt)
            row.set_peak_shares(result.flops, peak_gflops)
            if options.memory:
                row.mlx_memory = forward_memory("mlx", directory, bs, spec.input_size, dtype)
                if options.torch_too:
                    row.torch_memory = forward_memory("torch", directory, bs, spec.input_size, dtype)
            result.speed.append(row)
            log("  " + row.line(result.flops))
        if options.profile and options.torch_too:
            from benchmarks.stages import profile_model

            result.profile = profile_model(
                ours, ref, spec.name, bench_inputs(ours.config.model_type, 1, spec.input_size), tdtype, log
            )
        if options.folder_images and spec.prompt_size is None and spec.folder_run:
            from benchmarks.folder import folder_run

            result.folder = folder_run(
                directory, ours.config.model_type, spec.input_size, options.folder_images, max(options.batch_sizes), log
            )
        ref = None  # free the reference before the precision models load
        gc.collect()
        if options.precision:
            result.precision = precision_table(ours if dtype == "float32" else None, directory, spec, log)
    gc.collect()
    mx.clear_cache()
    return result

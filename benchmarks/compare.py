"""Speed, memory and precision of dpt_mlx against transformers, on the same weights. Run from the
source tree (it needs the test extras: torch and transformers):

    python -m benchmarks.compare                                   # every model but depth-pro, batch 1
    python -m benchmarks.compare --models depth-pro --runs 1 --no-precision   # Depth Pro (minutes on a CPU)
    python -m benchmarks.compare --models dpt-large --batch-sizes 1,4,8 --runs 5
    python -m benchmarks.compare --no-precision --threads 1 --json out.json
    python -m benchmarks.compare --models depth-anything-small --profile --no-precision --no-memory

Each model is built with transformers from a config shaped like a released checkpoint, given
random weights scaled like trained ones (std 1/sqrt(fan_in), so activations keep their size
through the network and half precision meets realistic magnitudes), saved with
``save_pretrained`` into a temporary directory and loaded from there by both libraries: no
downloads (benchmarks.models). After a warm-up run each, the two forward passes
alternate (ours, theirs, theirs, ours, ...) so that load from other processes hits both alike;
the report gives the median time per image, their ratio, images per second, and the memory a
forward pass adds on top of the loaded model, for the first pass and through a second one, each
measured in a fresh process (benchmarks.memory).

Each time is also set against the machine's limit: the model's FLOPs for one batch-1 forward pass,
counted once with torch's FlopCounterMode on the reference model and the input the timing uses
(2 per multiply-add of the matmuls, convolutions and attention; scaled by the batch size), and
the best float32 rate of a 2048^3 matmul in PyTorch at the benchmark's thread count, measured at
the start of the run (the sgemm peak). ``%peak`` is FLOPs / time / that peak, for each library.

The precision table compares float16, bfloat16, 8-bit and 4-bit weights (see dpt_mlx.io.quantize)
against our float32 output on the same input: max and mean absolute difference of the depth
map relative to the float32 map's range (max - min), and the weights' size.

The BLAS of the CPU path is reported as dpt_mlx.cpu.blas_info() gives it after the models
are loaded (dpt_mlx chooses it on the first model load on the CPU). torch and transformers are
needed, also with --no-torch: the checkpoints are built with transformers.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python benchmarks/compare.py
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import dataclasses
import json
import os
import platform
from dataclasses import dataclass

import mlx.core as mx

from benchmarks.models import (
    DEFAULT_MODELS,
    MODELS,
    BenchOptions,
    ModelResult,
    bench_model,
    blas_name,
    format_mib,
    sgemm_peak_gflops,
)
from dpt_mlx import cpu
from dpt_mlx.cli.console import EXIT_ERROR, EXIT_OK, ArgumentParser, positive_int, print_error
from dpt_mlx.cpu import blas_info
from dpt_mlx.cpu import set_threads as set_kernel_threads
from dpt_mlx.errors import UsageError
from dpt_mlx.io.checkpoint import DTYPES
from dpt_mlx.io.files import atomic_write_text

INSTALL_HINT = 'pip install torch==2.13.0 && pip install -e ".[test]"'

# ------------------------------------------------------------------------------------- machine


@dataclass
class Machine:
    """The machine and the libraries; the BLAS fields are filled in once a model is loaded."""

    cpu: str
    cores: int | None
    usable_cores: int | None
    os: str
    python: str
    mlx: str
    mlx_device: str
    torch: str
    torch_threads: int
    transformers: str
    blas: str | None
    blas_provider: str | None
    blas_threads: int | None
    fast_cpu_kernels: bool
    load_average: tuple[float, float, float]  # at the start
    sgemm_peak_gflops: float | None = None  # PyTorch's best float32 2048^3 matmul rate, at torch_threads


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> Machine:
    """The machine now, before any model is loaded (so without the BLAS: see :func:`with_blas`)."""
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count(),
        usable_cores=usable,
        os=platform.platform(),
        python=platform.python_version(),
        mlx=mx.__version__,
        mlx_device=str(mx.default_device()),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        transformers=transformers.__version__,
        blas=None,
        blas_provider=None,
        blas_threads=None,
        fast_cpu_kernels=cpu.enabled() and cpu.on_cpu(),
        load_average=os.getloadavg(),
    )


def with_blas(machine: Machine) -> Machine:
    """``machine`` with the BLAS that MLX calls now (after the models are loaded)."""
    info = blas_info()
    return dataclasses.replace(
        machine, blas=blas_name(info), blas_provider=info.get("provider"), blas_threads=info.get("threads")
    )


def set_threads(n: int) -> None:
    """Use ``n`` threads in PyTorch and in dpt_mlx's CPU kernels (here and, through the
    environment, in the memory measurement's processes)."""
    import torch

    os.environ["DPT_MLX_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    set_kernel_threads(n)


# ------------------------------------------------------------------------------------- report


def _format_percent(share: float | None, width: int) -> str:
    return f"{'-':>{width}}" if share is None else f"{100 * share:>{width}.1f}"


def _speed_lines(results: list[ModelResult]) -> list[str]:
    lines = [
        (
            f"{'model':<22}{'input':>9}{'batch':>6}{'GFLOP':>8}{'mlx s/img':>11}{'torch s/img':>12}{'ratio':>7}"
            f"{'mlx img/s':>10}{'torch img/s':>12}{'mlx %peak':>10}{'torch %peak':>12}"
            f"{'mlx +MiB':>9}{'torch +MiB':>11}{'2nd pass':>15}"
        )
    ]
    for r in results:
        gflop = f"{r.flops / 1e9:>8.1f}" if r.flops else f"{'-':>8}"
        for row in r.speed:
            bs, torch_s = row.batch, row.torch_s
            mlx_added = row.mlx_memory.rss_added_mib if row.mlx_memory else None
            torch_added = row.torch_memory.rss_added_mib if row.torch_memory else None
            mlx_second = row.mlx_memory.rss_added_second_mib if row.mlx_memory else None
            torch_second = row.torch_memory.rss_added_second_mib if row.torch_memory else None
            lines.append(
                f"{r.model:<22}{'x'.join(map(str, r.input)):>9}{bs:>6}{gflop}{row.mlx_s / bs:>11.3f}"
                + (f"{torch_s / bs:>12.3f}{row.ratio:>7.2f}" if torch_s is not None else f"{'-':>12}{'-':>7}")
                + f"{bs / row.mlx_s:>10.2f}"
                + (f"{bs / torch_s:>12.2f}" if torch_s is not None else f"{'-':>12}")
                + _format_percent(row.mlx_peak_share, 10)
                + _format_percent(row.torch_peak_share, 12)
                + f"{format_mib(mlx_added):>9}{format_mib(torch_added):>11}"
                + f"{format_mib(mlx_second) + ' / ' + format_mib(torch_second):>15}"
            )
    return lines


def _precision_lines(results: list[ModelResult]) -> list[str]:
    lines = [f"{'model':<22}{'variant':<12}{'weights MiB':>12}{'max err/range':>15}{'mean err/range':>16}"]
    for r in results:
        for row in r.precision:
            lines.append(
                f"{r.model:<22}{row.variant:<12}{row.weights_mib:>12.1f}"
                f"{row.max_err_of_range:>15.2e}{row.mean_err_of_range:>16.2e}"
            )
    return lines


def _peak_text(machine: Machine) -> str:
    if machine.sgemm_peak_gflops is None:
        return ""
    return f"; sgemm peak {machine.sgemm_peak_gflops:.0f} GFLOP/s (torch float32 2048^3, x{machine.torch_threads})"


def summary(machine: Machine, results: list[ModelResult]) -> str:
    lines = [
        "",
        f"machine: {machine.cpu}, {machine.usable_cores} usable cores, {machine.os}{_peak_text(machine)}",
        (
            f"mlx {machine.mlx} ({machine.mlx_device}), BLAS {machine.blas} x{machine.blas_threads}; "
            f"torch {machine.torch} x{machine.torch_threads}, transformers {machine.transformers}; "
            f"load average at start {machine.load_average[0]:.2f}, at end {os.getloadavg()[0]:.2f}"
        ),
        "",
        *_speed_lines(results),
    ]
    if any(r.precision for r in results):
        lines += ["", *_precision_lines(results)]
    lines.append("")
    lines.append("GFLOP: one image's forward pass (torch's FlopCounterMode: matmuls, convolutions, attention);")
    lines.append("%peak: GFLOP / (s/img) as a percentage of the sgemm peak above (float32, whatever --dtype).")
    lines.append("+MiB: peak resident memory a forward pass adds to the loaded model (VmHWM - VmRSS before it);")
    lines.append("2nd pass: the same peak through a second pass, mlx / torch (caches filled).")
    return "\n".join(lines)


def write_json(path: str, machine: Machine, results: list[ModelResult]) -> None:
    record = dataclasses.asdict(machine)
    record["load_average_end"] = os.getloadavg()
    atomic_write_text(path, json.dumps({"machine": record, "results": [r.to_json() for r in results]}, indent=2))


# ------------------------------------------------------------------------------------- command line


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    slow = [name for name in MODELS if name not in DEFAULT_MODELS]
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated, from: {', '.join(MODELS)} (default: all but the slow {', '.join(slow)})",
    )
    p.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default: 1)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per model and batch size, after one warm-up")
    p.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="compute dtype of both libraries for the timing (default float32)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="threads for PyTorch and for MLX's BLAS")
    p.add_argument(
        "--no-torch",
        action="store_true",
        help="time dpt_mlx only (the checkpoints are still built with torch and transformers)",
    )
    p.add_argument("--no-precision", action="store_true", help="skip the float16/bfloat16/8-bit/4-bit table")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also time each stage of one batch-1 forward pass (patch embedding, attention, MLP, "
        "norms, convolutions, resizes, head) in both libraries, printed as a table",
    )
    p.add_argument(
        "--folder-run",
        type=int,
        default=0,
        metavar="N",
        help="also time a folder of N photo-like 640x480 JPEGs end to end: dpt-mlx --input-dir "
        "(at the largest --batch-sizes) against transformers' pipeline, each a fresh process",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def _model_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise UsageError(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    return names


def _options(args) -> BenchOptions:
    try:
        batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
        if not batch_sizes or min(batch_sizes) < 1 or args.runs < 1:
            raise ValueError
    except ValueError:
        raise UsageError("--batch-sizes must be positive integers and --runs at least 1") from None
    return BenchOptions(
        batch_sizes,
        args.runs,
        args.dtype,
        precision=not args.no_precision,
        torch_too=not args.no_torch,
        memory=not args.no_memory,
        profile=args.profile,
        folder_images=max(0, args.folder_run),
    )


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise UsageError(
            f"{e}: the benchmark needs torch and transformers, also with --no-torch (it builds "
            f"its checkpoints with transformers); install the test extras: {INSTALL_HINT}"
        ) from None


def log(message: str) -> None:
    print(message, flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        names = _model_names(args.models)
        options = _options(args)
        _require_torch()
    except UsageError as e:
        print_error(e)
        return EXIT_ERROR
    if args.threads is not None:
        set_threads(args.threads)  # before any model loads: the BLAS reads its thread count then
    machine = dataclasses.replace(machine_info(), sgemm_peak_gflops=sgemm_peak_gflops())
    log(
        f"{machine.cpu} ({machine.usable_cores} cores), mlx {machine.mlx}, torch {machine.torch} "
        f"x{machine.torch_threads}, load {machine.load_average[0]:.2f}{_peak_text(machine)}"
    )
    results = []
    for name in names:
        spec = MODELS[name]
        log(f"{name} ({spec.checkpoint}-shaped, {'x'.join(map(str, spec.input_size))}):")
        results.append(bench_model(spec, options, log, machine.sgemm_peak_gflops))
    machine = with_blas(machine)
    print(summary(machine, results))
    if args.json:
        write_json(args.json, machine, results)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

"""The benchmark's memory measurement: what one forward pass adds to a loaded model, in a fresh process.

The parent runs :func:`memory_child` in a new interpreter, so that nothing it did earlier counts,
and reads back one ``MEMORY{json}`` line. The child loads the model, pages its weights in, resets
its resident-set peak through ``/proc/self/clear_refs`` (VmHWM := VmRSS, Linux >= 4.0), runs one
forward pass and reports VmHWM - VmRSS; for MLX also its allocator's peak, weights included. A
second pass follows, and its peak above the same level is reported too: what a process that
keeps running (a folder, a video, a server) holds once caches have filled.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

_CLEAR_REFS = "/proc/self/clear_refs"
PROMPT_SIZE = (192, 256)  # an iPhone LiDAR depth map (Prompt Depth Anything's prompt)
_TAG = "MEMORY"  # the child's result line: MEMORY{json}


@dataclass
class ForwardMemory:
    """MiB; None where it could not be measured (``error`` says why when the child failed)."""

    weights_mib: float | None = None
    rss_after_load_mib: float | None = None
    rss_added_mib: float | None = None  # peak resident set of the forward pass above rss_after_load
    rss_added_second_mib: float | None = None  # the same peak, through a second pass
    mlx_peak_mib: float | None = None  # MLX only: its allocator's peak, weights included
    error: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("mlx_peak_mib", "error")}


def weights_mib(model) -> float:
    """The size of an MLX model's parameters."""
    return sum(v.nbytes for _, v in tree_flatten(model.parameters())) / 2**20


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


def bench_inputs(model_type: str, batch: int, size: tuple[int, int], seed: int = 0):
    """Random (batch, 3, H, W) pixels, and for Prompt Depth Anything a (batch, 1, 192, 256) prompt of
    0.5 to 5 metres (else None)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, *size)).astype(np.float32)
    if model_type != "prompt_depth_anything":
        return x, None
    return x, rng.uniform(0.5, 5.0, (batch, 1, *PROMPT_SIZE)).astype(np.float32)


def _model_type(directory: str) -> str:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        return json.load(f).get("model_type", "dpt")


def _mlx_forward(directory: str, batch: int, size, dtype: str, memory: ForwardMemory) -> Callable[[], None]:
    from dpt_mlx.models import load_model

    model = load_model(directory, dtype=None if dtype == "float32" else dtype)
    memory.weights_mib = weights_mib(model)
    x, prompt = bench_inputs(model.config.model_type, batch, size)
    kw = {} if prompt is None else {"prompt_depth": prompt}
    return lambda: mx.eval(model(x, **kw).predicted_depth)


def _torch_forward(directory: str, batch: int, size, dtype: str, memory: ForwardMemory) -> Callable[[], None]:
    import torch
    import transformers

    model = transformers.AutoModelForDepthEstimation.from_pretrained(directory).eval().to(getattr(torch, dtype))
    x, prompt = bench_inputs(_model_type(directory), batch, size)
    xt = torch.from_numpy(x).to(getattr(torch, dtype))
    kw = {} if prompt is None else {"prompt_depth": torch.from_numpy(prompt).to(getattr(torch, dtype))}
    tensors = list(model.parameters()) + list(model.buffers())
    memory.weights_mib = sum(t.nbytes for t in tensors) / 2**20
    with torch.no_grad():  # safetensors are memory-mapped: page every weight in before measuring
        sum(float(t.float().sum()) for t in tensors)

    def forward():
        with torch.inference_mode():
            model(xt, **kw)

    return forward


def memory_child(framework: str, directory: str, batch: int, height: int, width: int, dtype: str) -> None:
    """Run in a fresh process: load one model, run one forward pass, print its memory as JSON."""
    memory = ForwardMemory()
    forward = (_mlx_forward if framework == "mlx" else _torch_forward)(directory, batch, (height, width), dtype, memory)
    gc.collect()
    ok = _reset_rss_peak()
    base = _status_kb("VmRSS")
    if framework == "mlx":
        mx.reset_peak_memory()
    forward()
    peak = _status_kb("VmHWM")
    memory.rss_after_load_mib = base / 1024 if base else None
    memory.rss_added_mib = (peak - base) / 1024 if ok and base and peak else None
    if framework == "mlx":
        memory.mlx_peak_mib = mx.get_peak_memory() / 2**20
    forward()
    second = _status_kb("VmHWM")
    memory.rss_added_second_mib = (second - base) / 1024 if ok and base and second else None
    print(_TAG + json.dumps(asdict(memory)))


def forward_memory(framework: str, directory: str, batch: int, size: tuple[int, int], dtype: str) -> ForwardMemory:
    """Memory of the first forward pass after loading, of "mlx" or "torch", measured in a fresh interpreter."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # the source tree after the installed packages: dpt_mlx stays the installed one (its kernels)
    code = (
        f"import sys; sys.path.append({root!r}); from benchmarks.memory import memory_child; "
        f"memory_child({framework!r}, {directory!r}, {batch}, {size[0]}, {size[1]}, {dtype!r})"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=False)
    for line in r.stdout.splitlines():
        if line.startswith(_TAG):
            return ForwardMemory(**json.loads(line[len(_TAG) :]))
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return ForwardMemory(error=tail)

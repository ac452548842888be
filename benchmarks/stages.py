"""The benchmark's ``--profile``: where one forward pass spends its time, stage by stage, in dpt_mlx
and in transformers on the same checkpoint and input.

Every module call is timed on both sides. For MLX the inputs and outputs of each module are
evaluated at its boundary (MLX is lazy, so without that the time would land wherever the graph
happens to be evaluated); for PyTorch a forward pre-hook and hook take the time. Each module's
own time is its time minus that of the modules it calls, and is added to the stage its place
in the model names (the module path: ``backbone.encoder.layer.3.attention.attention.query`` is
attention). The models resize through ``layers.Resize`` modules named ``resample``; torch's
``interpolate`` and direct calls of ``dpt_mlx.ops.interpolate`` are timed as calls of their own.
Evaluating at every boundary costs MLX some of its overlap of small operations, so the profiled
total is given beside the plain forward time.
"""

from __future__ import annotations

import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import fields, is_dataclass

import mlx.core as mx
import mlx.nn as nn

STAGES = (
    "patch embedding",
    "attention",
    "MLP",
    "norms, activations, adds",
    "backbone convolutions",
    "neck convolutions",
    "resizes",
    "head",
    "other",
)
RESIZE = "resizes"


def stage_of(path: str) -> str:
    """The stage of the module at ``path`` (its dotted name in the model)."""
    p = path.lower()
    if re.search(r"(^|\.)resample$", p):  # layers.Resize: the resizes the models call as modules
        return RESIZE
    if re.match(r"(head|relative_head|metric_head|auxiliary_head)(\.|$)", p) or ".head." in f".{p}.":
        return "head"
    if "embeddings" in p and not re.search(r"\.bit\.|backbone\.bit|encoder\.stages", p):
        return "patch embedding"
    if "attention" in p or re.search(r"(^|\.)attn(\.|$)", p):
        return "attention"
    if re.search(r"intermediate|(^|\.)mlp(\.|$)|ffn|layer\.\d+\.output", p):
        return "MLP"
    if p.startswith("neck") or ".neck." in p:
        return "neck convolutions"
    if re.search(r"bit|stages?\.\d|stem|convolution", p):
        return "backbone convolutions"
    if re.search(r"norm|layer_?scale|lambda_|gelu|act(ivation)?(\.|$)|layer\.\d+$|drop", p):
        return "norms, activations, adds"
    return "other"


class StageTimer:
    """Exclusive seconds per stage, from nested timed calls."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[float] = []

    def call(self, stage: str, run: Callable, finish: Callable = lambda out: None):
        self._stack.append(0.0)
        start = time.perf_counter()
        out = run()
        finish(out)
        spent = time.perf_counter() - start
        inner = self._stack.pop()
        self.seconds[stage] += spent - inner
        if self._stack:
            self._stack[-1] += spent
        return out


def _arrays(value, found: list) -> list:
    """Every mx.array inside ``value`` (arrays, lists, tuples, dicts, dataclasses)."""
    if isinstance(value, mx.array):
        found.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _arrays(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _arrays(v, found)
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            _arrays(getattr(value, f.name), found)
    return found


@contextmanager
def _timed_mlx(model: nn.Module, timer: StageTimer):
    """Time every module call of ``model`` (by class, for the duration) and every dpt_mlx resize."""
    from dpt_mlx import ops

    paths = {id(m): name for name, m in model.named_modules()}
    classes = {type(m) for _, m in model.named_modules()}
    originals = {cls: (cls.__call__, "__call__" in vars(cls)) for cls in classes}

    def wrap(original):
        def call(self, *args, **kwargs):
            path = paths.get(id(self))
            if path is None:
                return original(self, *args, **kwargs)
            mx.eval(_arrays((args, kwargs), []))
            return timer.call(
                stage_of(path) if path else "other",
                lambda: original(self, *args, **kwargs),
                lambda out: mx.eval(_arrays(out, [])),
            )

        return call

    resize = ops.interpolate
    users = [
        m for name, m in sys.modules.items() if name.startswith("dpt_mlx") and getattr(m, "interpolate", None) is resize
    ]

    def timed_resize(*args, **kwargs):
        mx.eval(_arrays((args, kwargs), []))
        return timer.call(RESIZE, lambda: resize(*args, **kwargs), lambda out: mx.eval(_arrays(out, [])))

    try:
        for cls, (original, _) in originals.items():
            cls.__call__ = wrap(original)
        for m in users:
            m.interpolate = timed_resize
        yield
    finally:
        for cls, (original, own) in originals.items():
            if own:
                cls.__call__ = original
            else:
                del cls.__call__
        for m in users:
            m.interpolate = resize


@contextmanager
def _timed_torch(model, timer: StageTimer):
    """Time every module of a torch model with hooks, and torch's interpolate."""
    import torch

    handles, starts = [], []

    def pre(module, args):
        timer._stack.append(0.0)
        starts.append(time.perf_counter())

    def post(module, args, out, stage):
        spent = time.perf_counter() - starts.pop()
        inner = timer._stack.pop()
        timer.seconds[stage] += spent - inner
        if timer._stack:
            timer._stack[-1] += spent

    for name, module in model.named_modules():
        stage = stage_of(name) if name else "other"
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(lambda m, a, o, stage=stage: post(m, a, o, stage)))
    interpolate = torch.nn.functional.interpolate
    torch.nn.functional.interpolate = lambda *a, **k: timer.call(RESIZE, lambda: interpolate(*a, **k))
    try:
        yield
    finally:
        torch.nn.functional.interpolate = interpolate
        for h in handles:
            h.remove()


def profile_pair(ours, ref, x, prompt, tdtype, runs: int = 2) -> tuple[dict, dict, float, float]:
    """Median per-stage seconds of our model and the reference on one input, and their plain
    (unprofiled) forward times."""
    import torch

    xt = torch.from_numpy(x).to(tdtype)
    kw = {} if prompt is None else {"prompt_depth": prompt}
    kt = {} if prompt is None else {"prompt_depth": torch.from_numpy(prompt).to(tdtype)}

    def plain_mlx():
        mx.eval(ours(x, **kw).predicted_depth)

    def plain_torch():
        with torch.inference_mode():
            ref(xt, **kt)

    plain_mlx(), plain_torch()  # warm-up
    plain = {}
    for name, fn in (("mlx", plain_mlx), ("torch", plain_torch)):
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        plain[name] = sorted(times)[len(times) // 2]
    results = {}
    for name, fn, timed in (
        ("mlx", plain_mlx, lambda t: _timed_mlx(ours, t)),
        ("torch", plain_torch, lambda t: _timed_torch(ref, t)),
    ):
        per_run = []
        for _ in range(runs):
            timer = StageTimer()
            with timed(timer):
                timer.call("other", fn)
            per_run.append(dict(timer.seconds))
        results[name] = {s: sorted(r.get(s, 0.0) for r in per_run)[len(per_run) // 2] for s in STAGES}
    return results["mlx"], results["torch"], plain["mlx"], plain["torch"]


def profile_table(
    name: str, mlx_s: dict, torch_s: dict, plain_mlx: float, plain_torch: float, fused: bool = False
) -> list[str]:
    """The printed table: seconds per stage, the ratio, and the stage's share of our time; ``fused``:
    dpt_mlx's transformer blocks are the CPU layers' fused ones (a note says where their time goes)."""
    total_m, total_t = sum(mlx_s.values()), sum(torch_s.values())
    lines = [
        f"profile of {name} (batch 1; seconds of one forward pass, each module's own time):",
        f"  {'stage':<26}{'mlx s':>9}{'torch s':>9}{'ratio':>7}{'mlx share':>11}",
    ]
    for stage in STAGES:
        m, t = mlx_s.get(stage, 0.0), torch_s.get(stage, 0.0)
        if m < 1e-4 and t < 1e-4:
            continue
        ratio = f"{m / t:.2f}" if t > 1e-4 else "-"
        lines.append(f"  {stage:<26}{m:9.3f}{t:9.3f}{ratio:>7}{m / total_m:10.0%}")
    lines.append(f"  {'total (profiled)':<26}{total_m:9.3f}{total_t:9.3f}{total_m / total_t:7.2f}")
    lines.append(f"  {'forward pass, unprofiled':<26}{plain_mlx:9.3f}{plain_torch:9.3f}{plain_mlx / plain_torch:7.2f}")
    if fused:
        lines.append(
            "  (dpt_mlx's CPU layers compute a ViT/DINOv2 block's attention output, MLP and residual adds in "
            "the block itself: that time is under 'norms, activations, adds')"
        )
    return lines


def profile_model(ours, ref, name: str, inputs, tdtype, log) -> dict:
    """Profile one model pair, log its table; returns the figures for the JSON report."""
    x, prompt = inputs
    mlx_s, torch_s, plain_mlx, plain_torch = profile_pair(ours, ref, x, prompt, tdtype)
    from dpt_mlx.cpu import is_accelerated

    for line in profile_table(name, mlx_s, torch_s, plain_mlx, plain_torch, fused=is_accelerated(ours)):
        log(line)
    return {"mlx": mlx_s, "torch": torch_s, "plain_mlx_s": plain_mlx, "plain_torch_s": plain_torch}

"""Shared pieces of the parity tests: perturbed reference checkpoints and error measures."""

from __future__ import annotations

import numpy as np
import torch

TOL = 1e-4  # max|ours - ref| <= TOL * max|ref| in float32


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Move every floating parameter and buffer off its init value.

    Zero biases, unit norm weights and identity BatchNorm statistics hide conversion bugs
    (a dropped bias or a swapped mean/var would still match), so nothing keeps its init.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.dtype.is_floating_point:
                continue
            noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=t.dtype))
            elif name.endswith("running_mean"):
                t.copy_(noise * 0.2)
            else:
                t.add_(noise * scale)
    return model.eval()


def keep_depth_positive(model: torch.nn.Module, bias: float = 1.0) -> torch.nn.Module:
    """Shift the DPT depth head's last conv so its final ReLU passes most pixels.

    A random head often ends below zero everywhere; an all-zero depth map matches anything.
    """
    with torch.no_grad():
        model.head.head[4].bias.fill_(bias)
    return model


def open_final_relu(model: torch.nn.Module, pixels: np.ndarray, share: float = 0.9) -> torch.nn.Module:
    """Shift a depth head's last conv so that its final ReLU passes ``share`` of the pixels of ``pixels``.

    Works for any head (DPT, Depth Anything): the shift is measured on the reference's own output.
    """
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    seen = []
    hook = last.register_forward_hook(lambda mod, inp, out: seen.append(out))
    with torch.no_grad():
        model(torch.from_numpy(pixels))
        hook.remove()
        last.bias.sub_(torch.quantile(seen[0].flatten(), 1 - share))
    return model


def save_reference(model: torch.nn.Module, path) -> str:
    model.save_pretrained(str(path))
    return str(path)


def rel_err(ours, ref) -> float:
    """max|ours - ref| / max|ref|."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref.detach().numpy() if hasattr(ref, "detach") else ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    # An all-zero reference (e.g. a depth head whose final ReLU clips everything) matches anything.
    assert np.count_nonzero(ref) > ref.size // 4, "reference output is mostly zero: the comparison would prove nothing"
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def pixels(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(np.float32)

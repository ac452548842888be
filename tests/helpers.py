"""Shared pieces of the parity tests: perturbed reference checkpoints, error measures, and
synthesised photo-like images (so the tests need no files and no network)."""

from __future__ import annotations

import functools
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

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


def photo(height, width, seed=0):
    """A (height, width, 3) uint8 image with the statistics of a photograph (a fresh copy)."""
    return _photo(height, width, seed).copy()


@functools.cache
def _photo(height, width, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = y / height, x / width
    base = np.stack(
        [
            150 + 80 * x - 60 * y,
            90 + 100 * np.sin(3 * x + 2 * y + seed),
            60 + 120 * y * (1 - x) + 30 * np.cos(9 * x * y),
        ],
        axis=-1,
    )
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = x0 + rng.integers(5, width // 2 + 6), y0 + rng.integers(5, height // 2 + 6)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.polygon([(x0, y0), (x1, y0 + 7), ((x0 + x1) // 2, y1)], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    array = np.asarray(image).astype(np.float64) + rng.normal(0, 6, (height, width, 3))
    return np.clip(np.round(array), 0, 255).astype(np.uint8)


def _rgba(height, width):
    rgb = photo(height, width, seed=3)
    alpha = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    alpha[: height // 3] = 255
    return np.dstack([rgb, alpha.astype(np.uint8)])


def _palette_with_transparency():
    image = Image.fromarray(photo(150, 211, seed=5)).quantize(32)
    image.info["transparency"] = 0
    return image


PHOTOGRAPH = Path(__file__).resolve().parents[1] / "examples" / "images" / "coffee.jpg"  # a real photo, 600 x 400


def _photograph(turn=None):
    image = Image.open(PHOTOGRAPH)
    image.load()
    return image if turn is None else image.transpose(turn)


# name -> a factory, so every test gets a fresh input.
INPUTS = {
    "photograph_jpeg": _photograph,  # as opened: a JPEG-decoded PIL image
    "photograph_portrait": lambda: _photograph(Image.Transpose.ROTATE_90),
    "rgb_pil_333x517": lambda: Image.fromarray(photo(333, 517)),
    "rgb_pil_portrait": lambda: Image.fromarray(photo(480, 270, seed=1)),
    "gray_pil": lambda: Image.fromarray(photo(240, 319, seed=2)).convert("L"),
    "rgba_pil": lambda: Image.fromarray(_rgba(517, 333), mode="RGBA"),
    "la_pil": lambda: Image.fromarray(_rgba(200, 180)).convert("LA"),
    "palette_pil": lambda: Image.fromarray(photo(201, 149, seed=4)).quantize(64),
    "palette_pil_transparent": _palette_with_transparency,
    "numpy_hwc_uint8": lambda: photo(301, 199, seed=6),
    "numpy_hw1_uint8": lambda: photo(97, 131, seed=7)[..., :1],
    "numpy_rgba_uint8": lambda: _rgba(123, 77),
    "numpy_chw_float": lambda: (photo(257, 383, seed=8).transpose(2, 0, 1) / 255).astype(np.float32),
    "numpy_hwc_float64": lambda: photo(64, 48, seed=9) / 255.0,
    # Not multiples of 1/255: the reference truncates x * 255 to uint8 before resizing.
    "numpy_hwc_float_fractional": lambda: (
        (photo(71, 90, seed=10) + np.random.default_rng(10).random((71, 90, 3))) / 256
    ),
}


def smooth(shape, seed):
    """A smooth random float32 field of ``shape`` (..., H, W), with a little noise: a depth map or logits."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(size=shape[:-2] + (5, 7)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse.reshape(-1, 1, 5, 7), size=shape[-2:], mode="bicubic")
    noise = rng.normal(0, 0.05, shape).astype(np.float32)
    return fine.reshape(shape).numpy() + noise


class TorchvisionResize:
    """``torchvision.transforms.v2.functional`` as the reference's post-processing uses it, for
    float tensors (torchvision 0.2x ``resize_image``): the tensor itself at its own size, else
    ``interpolate(align_corners=False, antialias=False)``. Used only where torchvision is absent."""

    InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")

    @staticmethod
    def resize(image, size, interpolation, antialias):
        if list(image.shape[-2:]) == list(size):
            return image
        return torch.nn.functional.interpolate(
            image[None], size=list(size), mode=interpolation, align_corners=False, antialias=antialias
        )[0]


# A tiny ViT DPT (4 layers, 32 wide, 32x32 input): the command-line, pipeline and Ray tests' checkpoint.
TINY_DPT = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=37,
    image_size=32,
    patch_size=8,
    backbone_out_indices=[0, 1, 2, 3],
    neck_hidden_sizes=[8, 16, 24, 32],
    fusion_hidden_size=16,
)


def tiny_dpt(seed: int = 1, **overrides) -> torch.nn.Module:
    """The perturbed tiny transformers DPT depth model (TINY_DPT, ``overrides`` on top) for ``seed``;
    the same weights every time for the same arguments."""
    import transformers

    torch.manual_seed(0)
    return perturb(transformers.DPTForDepthEstimation(transformers.DPTConfig(**{**TINY_DPT, **overrides})), seed=seed)

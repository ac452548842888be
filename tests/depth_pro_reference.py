"""transformers' Depth Pro image processor as a reference where torchvision is absent.

transformers' Depth Pro processor runs on torchvision. Where torchvision is not installed (it cannot be beside
the CPU build of torch this project pins), the few torchvision functions that the reference calls are provided
here as torchvision 0.2x computes them on these inputs (``Torchvision`` below); the reference's own code does the
rest (its RGB conversion, its fused rescale and normalisation, its order of steps, its post-processing).
The ``depth_pro_reference`` fixture (conftest.py) installs them for a test module; the other processors that run on
torchvision (TIPSv2-DPT's, CHMv2's) are tested on the same stand-in.
"""

from __future__ import annotations

import enum
import importlib
import sys
import types

import torch


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class Torchvision:
    """``torchvision.transforms.v2.functional`` as the reference calls it here (torchvision 0.2x, tensors)."""

    InterpolationMode = InterpolationMode

    @staticmethod
    def resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True):
        if list(image.shape[-2:]) == list(size):
            return image
        shape = image.shape
        flat = image.reshape(-1, *shape[-3:])
        align = False if interpolation in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC) else None
        out = torch.nn.functional.interpolate(
            flat, size=list(size), mode=interpolation.value, align_corners=align, antialias=antialias
        )
        return out.reshape(*shape[:-2], *out.shape[-2:])

    @staticmethod
    def normalize(image, mean, std, inplace=False):
        mean = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
        std = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
        image = image.sub_(mean) if inplace else image.sub(mean)
        return image.div_(std)

    @staticmethod
    def pad(image, padding, fill=0, padding_mode="constant"):
        left, top, right, bottom = padding  # torchvision's order; torch's is (left, right, top, bottom)
        return torch.nn.functional.pad(image, [left, right, top, bottom], mode=padding_mode, value=float(fill or 0))

    @staticmethod
    def grayscale_to_rgb(image):
        return image if image.shape[-3] >= 3 else image.repeat_interleave(3, dim=-3)

    @staticmethod
    def to_dtype(image, dtype=torch.float32, scale=False):
        if image.dtype == dtype or not scale:
            return image.to(dtype)
        if not image.is_floating_point():  # integer -> float: divided by the integer type's maximum
            return image.to(dtype).mul_(1.0 / torch.iinfo(image.dtype).max)
        if dtype.is_floating_point:
            return image.to(dtype)
        return image.mul(torch.iinfo(dtype).max + 1.0 - 1e-3).to(dtype)  # float -> integer


def install(patch) -> type:
    """transformers' DepthProImageProcessor class, torchvision's functions stood in (through ``patch``, a
    ``pytest.MonkeyPatch``) where it is absent."""
    try:
        import torchvision.transforms.v2.functional  # noqa: F401
    except ImportError:
        module = types.ModuleType("torchvision.transforms.v2.functional")
        for name in ("InterpolationMode", "resize", "normalize", "pad", "grayscale_to_rgb", "to_dtype"):
            setattr(module, name, getattr(Torchvision, name))
        for name, value in (
            ("torchvision", types.ModuleType("torchvision")),
            ("torchvision.transforms", types.ModuleType("torchvision.transforms")),
            ("torchvision.transforms.v2", types.ModuleType("torchvision.transforms.v2")),
            ("torchvision.transforms.v2.functional", module),
        ):
            patch.setitem(sys.modules, name, value)
        patch.setattr(sys.modules["torchvision.transforms.v2"], "functional", module, raising=False)
        mapping = {0: InterpolationMode.NEAREST, 2: InterpolationMode.BILINEAR, 3: InterpolationMode.BICUBIC}
        backends = importlib.import_module("transformers.image_processing_backends")
        patch.setattr(backends, "tvF", module, raising=False)
        patch.setattr(backends, "pil_torch_interpolation_mapping", mapping)
        reference_module = importlib.import_module("transformers.models.depth_pro.image_processing_depth_pro")
        patch.setattr(reference_module, "pil_torch_interpolation_mapping", mapping)
    from transformers.models.depth_pro.image_processing_depth_pro import DepthProImageProcessor

    return DepthProImageProcessor

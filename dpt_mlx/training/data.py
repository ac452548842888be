"""Training data: (image, target) pairs from a data directory, targets on the processed image's grid, batches.

Layout of a data directory::

    DIR/images/<name>.jpg|.png|...     the photos
    DIR/depth/<name>.png|.npy|.tif     depth targets (depth models)
    DIR/masks/<name>.png|.npy          class-id masks (segmentation models)

Each target has its image's stem and size. Layouts are the public ones: pixel values
(B, 3, H, W) float32, labels (B, H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DPTError
from ..errors import first_line as reason
from ..processing.image_processor import resize_output_size
from ..processing.images import list_images, load_image
from ..processing.transforms import center_pad, reduce_labels

DEPTH, SEGMENTATION = "depth", "segmentation"
TARGET_DIRS = {DEPTH: "depth", SEGMENTATION: "masks"}
TARGET_EXTENSIONS = {DEPTH: (".png", ".npy", ".tif", ".tiff"), SEGMENTATION: (".png", ".npy")}
TARGET_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "F", "1")  # single-channel PIL modes


class DataError(DPTError, ValueError):
    """The training data is missing, unreadable or does not follow the layout."""


@dataclass
class Sample:
    name: str
    image: Path
    target: Path
    size: tuple[int, int]  # (height, width) of the upright image


# ----------------------------------------------------------------------------------------------
# Finding samples


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotations by 90 degrees
                width, height = height, width
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {reason(e)}") from None
    return height, width


def _target_size(path: Path) -> tuple[int, int]:
    try:
        if path.suffix.lower() == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        else:
            with Image.open(path) as im:
                shape = (im.size[1], im.size[0])
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read {path}: {reason(e)}") from None
    if len(shape) == 3 and shape[-1] == 1:
        shape = shape[:2]
    if len(shape) != 2:
        raise DataError(f"{path} must be a 2-D (height, width) array, got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _check_layout(data: Path, task: str) -> tuple[Path, Path]:
    """DIR/images and the task's target folder, or a DataError that says what is missing."""
    if not data.is_dir():
        raise DataError(f"no such data directory: {data}")
    images_dir, target_dir = data / "images", data / TARGET_DIRS[task]
    if not images_dir.is_dir():
        raise DataError(f"{data} has no images/ folder; expected {data}/images and {target_dir}")
    if not target_dir.is_dir():
        other_task = SEGMENTATION if task == DEPTH else DEPTH
        other = TARGET_DIRS[other_task]
        hint = f" ({data}/{other} is for {other_task} models)" if (data / other).is_dir() else ""
        raise DataError(f"the model is a {task} model but {data} has no {TARGET_DIRS[task]}/ folder{hint}")
    return images_dir, target_dir


def _images_by_stem(images_dir: Path) -> dict[str, Path]:
    images = list_images(images_dir)
    if not images:
        raise DataError(f"no images in {images_dir}")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise DataError(f"two images named {path.stem}: {stems[path.stem].name} and {path.name}")
        stems[path.stem] = path
    return stems


def _target_of(image: Path, target_dir: Path, task: str) -> Path | None:
    """The one target file of an image (None when there is none)."""
    found = [target_dir / f"{image.stem}{ext}" for ext in TARGET_EXTENSIONS[task]]
    found = [f for f in found if f.is_file()]
    if len(found) > 1:
        raise DataError(f"{image.name} has several targets ({', '.join(f.name for f in found)}); keep one")
    return found[0] if found else None


def _sample(image: Path, target: Path) -> Sample:
    size = _image_size(image)
    target_size = _target_size(target)
    if target_size != size:
        raise DataError(
            f"{target} is {target_size[1]}x{target_size[0]} but its image {image} is {size[1]}x{size[0]}; "
            "targets must have their image's size"
        )
    return Sample(image.stem, image, target, size)


def find_samples(data: Path, task: str) -> list[Sample]:
    """The (image, target) pairs of a data directory, sorted by name; layout problems are DataErrors."""
    images_dir, target_dir = _check_layout(data, task)
    samples, missing = [], []
    for image in _images_by_stem(images_dir).values():
        target = _target_of(image, target_dir, task)
        if target is None:
            missing.append(image)
        else:
            samples.append(_sample(image, target))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        names = " or ".join(f"{TARGET_DIRS[task]}/{missing[0].stem}{ext}" for ext in TARGET_EXTENSIONS[task])
        raise DataError(f"no target for {missing[0]}{more}: expected {names}")
    return samples


def split_samples(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded random hold-out of round(fraction * n) images (at least one when fraction > 0)."""
    n = len(samples)
    n_val = int(round(fraction * n))
    if fraction > 0:
        n_val = max(1, n_val)
    if n - n_val < 1:
        raise DataError(f"{n} image(s) cannot be split into training and validation; add images or lower --val-split")
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [samples[i] for i in train], [samples[i] for i in val]


# ----------------------------------------------------------------------------------------------
# Targets


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) -> ``size`` by nearest neighbour (pixel centres), so every value is one of the input's."""
    height, width = array.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
    return array[rows[:, None], cols[None, :]]


def read_target_file(path: Path) -> np.ndarray:
    """A target file as an (H, W) array: a .npy, or a single-channel image."""
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                if im.mode not in TARGET_MODES:
                    raise DataError(f"{path} is a {im.mode} image; targets must be single-channel")
                array = np.array(im)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read {path}: {reason(e)}") from None
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


class TargetReader:
    """Reads a target file and brings it to the processed image's grid.

    Depth: invalid pixels (0, negative, NaN, inf) become 0 (ignored by the losses); values times
    ``depth_scale``. Targets are in the prediction's space: ``disparity`` (relative models) turns
    depth into 1 / depth (unless the files hold disparity already), else they stay depths.
    ``normalize`` (the scale-and-shift-invariant loss) divides each target by its mean absolute
    deviation from its median (MiDaS' scale estimate), so that the loss does not depend on the
    data's units; the loss cannot see the target's shift anyway. Segmentation: class ids,
    ``do_reduce_labels`` as the processor does it. Both are resized to the processed size by
    nearest neighbour (a target value is never blended with an invalid neighbour or another
    class), then padded like the image (depth with 0, masks with the ignore index).
    """

    def __init__(
        self,
        task: str,
        processor,
        disparity: bool,
        normalize: bool,
        target: str,
        depth_scale: float,
        ignore_index: int,
        num_labels: int | None = None,
    ):
        self.task, self.processor, self.disparity, self.normalize = task, processor, disparity, normalize
        self.target, self.depth_scale, self.ignore_index = target, depth_scale, ignore_index
        self.num_labels = num_labels

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        p = self.processor
        if not p.do_resize:
            return size
        return resize_output_size(size[0], size[1], p.size, p.keep_aspect_ratio, p.ensure_multiple_of)

    def processed_size(self, size: tuple[int, int]) -> tuple[int, int]:
        h, w = self.resized_size(size)
        p = self.processor
        if p.do_pad and p.size_divisor:
            h, w = (math.ceil(h / p.size_divisor) * p.size_divisor, math.ceil(w / p.size_divisor) * p.size_divisor)
        return h, w

    def read(self, sample: Sample) -> np.ndarray:
        raw = read_target_file(sample.target)
        if raw.shape != sample.size:
            raise DataError(f"{sample.target} has shape {raw.shape} but its image is {sample.size}")
        if self.task == DEPTH:
            array, fill = self._depth(raw, sample.target), 0.0
        else:
            array, fill = self._classes(raw, sample.target), self.ignore_index
        array = resize_nearest(array, self.resized_size(sample.size))
        p = self.processor
        if p.do_pad and p.size_divisor:
            array = center_pad(array[None], p.size_divisor, fill)[0]
        return array

    def _depth(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if not (np.issubdtype(raw.dtype, np.number) and not np.iscomplexobj(raw)):
            raise DataError(f"{path}: depth maps must hold numbers, got dtype {raw.dtype}")
        values = raw.astype(np.float64) * self.depth_scale
        valid = np.isfinite(values) & (values > 0)
        if not valid.any():  # it would train with a loss of 0 and teach nothing
            raise DataError(
                f"{path} has no valid depth pixel (every value is 0, negative, NaN or inf); "
                "fix the file or remove the image"
            )
        if self.disparity and self.target == "depth":
            values = 1.0 / np.where(valid, values, 1.0)
        values = np.where(valid, values, 0.0)
        if self.normalize and valid.any():
            spread = np.abs(values[valid] - np.median(values[valid])).mean()
            if spread > 0:
                values = values / spread
        return values.astype(np.float32)

    def _classes(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if not np.issubdtype(raw.dtype, np.integer) and raw.dtype != bool:
            if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
                raise DataError(f"{path} must hold integer class ids, got dtype {raw.dtype}")
        labels = raw.astype(np.int64)
        if self.processor.do_reduce_labels:
            labels = reduce_labels(labels)
        if (labels == self.ignore_index).all():  # it would train with a loss of 0 and teach nothing
            reduced = " after do_reduce_labels (0 becomes the ignore index)" if self.processor.do_reduce_labels else ""
            raise DataError(
                f"{path} has no labelled pixel: every pixel is the ignore index {self.ignore_index}"
                f"{reduced}; fix the mask or remove the image"
            )
        if self.num_labels is not None:
            self._check_classes(labels, path)
        return labels

    def _check_classes(self, labels: np.ndarray, path: Path) -> None:
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_labels))
        if bad.any():
            reduced = " after do_reduce_labels" if self.processor.do_reduce_labels else ""
            raise DataError(
                f"{path} has class id {int(labels[bad][0])}{reduced}, outside the model's {self.num_labels} "
                f"labels (0..{self.num_labels - 1}; {self.ignore_index} = ignore)"
            )


# ----------------------------------------------------------------------------------------------
# Batches


class Batches:
    """Batches of equal processed size: (pixel_values (B, 3, H, W) float32, labels (B, H, W))."""

    def __init__(self, samples: list[Sample], processor, reader: TargetReader, batch_size: int):
        self.samples, self.processor, self.reader, self.batch_size = samples, processor, reader, batch_size
        self.groups: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(samples):
            self.groups.setdefault(reader.processed_size(s.size), []).append(i)

    def __len__(self) -> int:
        return sum(math.ceil(len(g) / self.batch_size) for g in self.groups.values())

    def plan(self, rng: np.random.Generator | None) -> list[list[int]]:
        """Batches of sample indices: shuffled within and across sizes when ``rng`` is given."""
        batches = []
        for indices in self.groups.values():
            indices = list(indices)
            if rng is not None:
                rng.shuffle(indices)
            batches += [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def load(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        chosen = [self.samples[i] for i in indices]
        try:
            images = [load_image(s.image) for s in chosen]
            pixel_values = self.processor(images, return_tensors="np")["pixel_values"]
        except DPTError:
            raise
        except ValueError as e:
            raise DataError(f"cannot preprocess {chosen[0].image}: {reason(e)}") from None
        labels = np.stack([self.reader.read(s) for s in chosen])
        if pixel_values.shape[2:] != labels.shape[1:]:  # a bug, not a data problem
            raise AssertionError(f"processed image {pixel_values.shape} and target {labels.shape} disagree")
        return pixel_values, labels

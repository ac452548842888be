"""Depth or segmentation maps for a Ray Data dataset: a callable class for ``map_batches``.

    >>> import ray
    >>> from dpt_mlx.ray import DepthPredictor
    >>> ds = ray.data.read_images("s3://bucket/photos", include_paths=True, mode="RGB")
    >>> ds = ds.map_batches(DepthPredictor, fn_constructor_kwargs={"model": "Intel/dpt-hybrid-midas"},
    ...                     compute=ray.data.ActorPoolStrategy(size=4), num_cpus=4, batch_size=16)
    >>> ds.write_parquet("s3://bucket/depth")        # columns: image, path, predicted_depth

Each Ray worker loads the model once (in the constructor) and then runs :class:`dpt_mlx.Predictor`
on its batches: the preprocessing, forward pass and post-processing of ``dpt_mlx.pipeline()``, so
the maps equal the pipeline's. A batch's image column may hold decoded images (``read_images``:
HxWx3 uint8 arrays, an object array when their sizes differ), encoded files (``read_binary_files``:
a ``bytes`` column) or paths (local files, http(s) URLs, or URIs that ``pyarrow.fs`` opens, such as
``s3://`` and ``gs://``). A ``predicted_depth`` column (float32, each map at its image's size) or,
for a segmentation checkpoint, a ``segmentation`` column (class ids; uint8 for up to 256 labels)
is added; the other columns pass through. Maps of different sizes form an object array of
per-image arrays, as Ray expects for variable-shaped tensors. (``read_images`` decodes without
the EXIF orientation that ``pipeline()`` applies to a file; paths and bytes are read as it reads them.)

Threads: Ray runs several workers on one machine, so each worker's BLAS and attention threads are
set from the CPUs Ray assigned it (``num_cpus=`` in ``map_batches``; at least one), or to
``threads=``. Ask for as many CPUs per worker as it should use; the workers on a node then never
ask for more threads than it has. Leave CPUs for the read tasks (``read_images`` runs as tasks
that need a CPU each): workers that hold every CPU of a small cluster starve them.

Placement: Ray waits without end for a worker that no node can hold (``num_cpus=`` above every
node's CPUs) and for workers whose CPUs other jobs keep busy. :func:`map_depth` adds the stage with
both checked: a request no node can hold is a one-line ValueError at once, and workers that have
not started (model loaded) within ``start_timeout`` seconds fail the dataset with Ray's
``GetTimeoutError``. With ``map_batches`` directly, :func:`check_cpus` makes the first check and
``ds.context.wait_for_min_actors_s`` the second.

Importing this module does not import ray; only the workers' Ray context is read, when present.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageError, first_line
from .processing.images import decode_image, is_url, load_image
from .processing.writers import Job, OutputOptions, write_outputs

DEPTH_COLUMN = "predicted_depth"
SEGMENTATION_COLUMN = "segmentation"
ERRORS = ("raise", "record")

START_TIMEOUT = 300.0  # seconds map_depth waits for its workers to start (model loaded) by default

__all__ = [
    "DEPTH_COLUMN",
    "SEGMENTATION_COLUMN",
    "START_TIMEOUT",
    "DepthPredictor",
    "check_cpus",
    "cluster_cpus",
    "is_uri",
    "map_depth",
    "read_image",
    "worker_threads",
]


# ----------------------------------------------------------------------------------------------
# Threads


def _ray_cpus() -> float | None:
    """The CPUs Ray assigned to this worker process, or None outside a Ray task or actor."""
    ray = sys.modules.get("ray")
    if ray is None or not getattr(ray, "is_initialized", lambda: False)():
        return None
    try:
        context = ray.get_runtime_context()
        if getattr(context, "worker", None) is not None and context.worker.mode != ray.WORKER_MODE:
            return None  # the driver: nothing is assigned to it
        return float(context.get_assigned_resources().get("CPU", 0.0))
    except Exception:  # noqa: BLE001  (an older or newer Ray without these: use the defaults)
        return None


def worker_threads(threads: int | None = None) -> int | None:
    """The threads one worker should compute with: ``threads`` if given; in a Ray worker the whole CPUs
    Ray assigned it (at least one, at most the CPUs this process may use); outside Ray None (the
    defaults of dpt_mlx.cpu: every usable CPU)."""
    from .cpu.native import cpu_count

    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        return threads
    assigned = _ray_cpus()
    if assigned is None:
        return None
    return max(1, min(int(assigned), cpu_count()))


def _use_threads(n: int) -> None:
    """Give the CPU kernels ``n`` threads."""
    from .cpu import set_threads

    set_threads(n)


# ----------------------------------------------------------------------------------------------
# Reading


def is_uri(text: Any) -> bool:
    """Whether ``text`` is a ``scheme://`` URI for ``pyarrow.fs`` (s3, gs, hdfs, file, ...), not http(s)."""
    if not isinstance(text, str) or is_url(text):
        return False
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and len(scheme) > 1  # not a Windows drive letter


def _read_bytes(filesystem, path: str, name: str) -> bytes:
    try:
        with filesystem.open_input_file(path) as f:
            return f.read()
    except FileNotFoundError:
        raise ImageError(f"no such image file: {name}") from None
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ImageError(f"cannot read {name}: {first_line(e)}") from None


def read_image(item: Any, name: Any = None, filesystem=None) -> Any:
    """One image column entry -> an RGB PIL image, as :func:`dpt_mlx.processing.images.load_image` reads it.

    ``item``: a decoded array, encoded bytes, or a path string (read with ``filesystem``, a
    ``pyarrow.fs.FileSystem``, when given; a ``scheme://`` URI through ``pyarrow.fs``; else a local
    file or http(s) URL). ``name`` names it in errors. Raises a one-line ImageError (or ValueError
    for an empty image) when it cannot be read.
    """
    if isinstance(item, np.ndarray) and item.ndim == 0:
        item = item.item()
    name = item if name is None and isinstance(item, str) else name or "image"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode_image(item, name)
    if isinstance(item, os.PathLike):
        item = os.fspath(item)
    if isinstance(item, str):
        if filesystem is not None:
            return decode_image(_read_bytes(filesystem, item, name), name)
        if is_uri(item):
            from pyarrow import fs

            try:
                filesystem, path = fs.FileSystem.from_uri(item)
            except (OSError, ValueError) as e:
                raise ImageError(f"cannot open {item}: {first_line(e)}") from None
            return decode_image(_read_bytes(filesystem, path, name), name)
        return load_image(item)
    try:
        return load_image(item)
    except TypeError as e:
        raise ImageError(f"{name}: {e}") from None


# ----------------------------------------------------------------------------------------------
# The map_batches class


def _stacked(maps: Sequence[np.ndarray]) -> np.ndarray:
    """One array when every map has one shape, else an object array of the maps (Ray's ragged tensors)."""
    if maps and all(m.shape == maps[0].shape for m in maps):
        return np.stack(maps)
    column = np.empty(len(maps), dtype=object)
    for i, m in enumerate(maps):
        column[i] = m
    return column


class DepthPredictor:
    """A Ray Data ``map_batches`` class: loads the model once per worker, then maps every batch.

    ``model``: a Hugging Face Hub repo id or a checkpoint directory every worker can read (as
    ``dpt_mlx.pipeline``). ``dtype``: "float32", "float16" or "bfloat16" (default the checkpoint's).
    ``batch_size``: images per forward pass (images batch together when their preprocessed sizes
    match). ``flip_tta``: also predict each image mirrored and average (twice the model time).
    ``threads``: compute threads of this worker (default: the CPUs Ray assigned it).
    ``image_column``: the images, as arrays, bytes or paths; when the batch has no such column, a
    ``bytes`` column (``read_binary_files``) or else ``path_column`` is read. ``path_column`` names
    the images in errors. ``output_column``: default ``predicted_depth`` (depth checkpoints) or
    ``segmentation``. ``filesystem``: a ``pyarrow.fs.FileSystem`` to open path strings with.
    ``errors``: "raise" (default) fails the batch on an unreadable image with a one-line ImageError;
    "record" gives that row an empty (0, 0) map and its message in ``error_column`` ("" for the others).
    """

    def __init__(
        self,
        model: Any,
        dtype: str | None = None,
        batch_size: int = 1,
        flip_tta: bool = False,
        threads: int | None = None,
        image_column: str = "image",
        path_column: str = "path",
        output_column: str | None = None,
        filesystem=None,
        errors: str = "raise",
        error_column: str = "error",
    ):
        from .predictor import DEPTH, SEGMENTATION, check_batch_size, load_predictor
        from .processing.visualize import class_id_dtype

        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
        self.batch_size = check_batch_size(batch_size)
        self.threads = worker_threads(threads)
        if self.threads is not None:
            _use_threads(self.threads)  # before the model load sets up the BLAS
        self.predictor = load_predictor(model, dtype=dtype, flip=flip_tta)
        self.task = self.predictor.task
        if self.task not in (DEPTH, SEGMENTATION):
            raise ValueError(f"{model} predicts {self.task}; DepthPredictor adds depth or segmentation maps")
        default = DEPTH_COLUMN if self.task == DEPTH else SEGMENTATION_COLUMN
        self.image_column, self.path_column = image_column, path_column
        self.output_column = output_column or default
        self.filesystem, self.errors, self.error_column = filesystem, errors, error_column
        self.dtype = np.float32 if self.task == DEPTH else class_id_dtype(self.predictor.num_labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.predictor.source!r}, threads={self.threads})"

    # -- pieces a subclass reuses

    def source_column(self, batch: Mapping[str, Any]) -> str:
        """The column the images are read from."""
        for column in (self.image_column, "bytes", self.path_column):
            if column in batch:
                return column
        raise KeyError(
            f"the batch has no {self.image_column!r} column (columns: {', '.join(map(str, batch))}); "
            "pass image_column= naming the column of images, bytes or paths"
        )

    def names(self, batch: Mapping[str, Any], count: int) -> list[str]:
        """What each row is called in errors: its path, or its row number in the batch."""
        if self.path_column in batch:
            return [str(p) for p in batch[self.path_column]]
        return [f"row {i} of the batch" for i in range(count)]

    def read(self, items: Sequence[Any], names: Sequence[str]) -> tuple[list[Any], list[str]]:
        """The PIL images (None where unreadable) and the error of each row ("" where read);
        with ``errors="raise"`` the first unreadable image raises its one-line ImageError."""
        images, errors = [], []
        for item, name in zip(items, names):
            try:
                images.append(read_image(item, name, self.filesystem))
                errors.append("")
            except (ImageError, ValueError) as e:
                message = str(e) if name in str(e) else f"{name}: {e}"  # the message names the image
                if self.errors == "raise":
                    raise ImageError(message) from None
                images.append(None)
                errors.append(message)
        return images, errors

    def predict(self, images: Sequence[Any]) -> list[np.ndarray]:
        """Per-image maps at each image's size: float32 depth, or class ids as uint8 / int32."""
        maps = self.predictor.predict(list(images), self.batch_size) if images else []
        return [np.asarray(m, dtype=self.dtype) for m in maps]

    # -- the batch

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"{type(self).__name__} takes NumPy batches (a dict of columns), got "
                f"{type(batch).__name__}; use map_batches(..., batch_format='numpy')"
            )
        items = batch[self.source_column(batch)]
        names = self.names(batch, len(items))
        images, errors = self.read(items, names)
        maps = iter(self.predict([im for im in images if im is not None]))
        empty = np.zeros((0, 0), dtype=self.dtype)
        out = dict(batch)
        out[self.output_column] = _stacked([next(maps) if im is not None else empty for im in images])
        if self.errors == "record":
            out[self.error_column] = np.array(errors, dtype=object)
        return out


# ----------------------------------------------------------------------------------------------
# Placement


def cluster_cpus() -> list[float]:
    """The CPUs of each live node of the Ray cluster (connecting to, or starting, one as Ray Data would)."""
    import ray

    if not ray.is_initialized():
        ray.init()
    cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive", True)]
    return [c for c in cpus if c > 0]


def _cpus(n: float) -> str:
    return f"{n:g} CPU{'' if n == 1 else 's'}"


def check_cpus(num_cpus: float, workers: int = 1, node_cpus: Sequence[float] | None = None) -> None:
    """A one-line ValueError when ``workers`` workers of ``num_cpus`` CPUs each cannot all be placed
    at once on the cluster's nodes (Ray would wait for them without end). ``node_cpus``: each node's
    CPUs (default: :func:`cluster_cpus`)."""
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or not num_cpus > 0:
        raise ValueError(f"num_cpus must be a positive number, got {num_cpus!r}")
    nodes = list(cluster_cpus() if node_cpus is None else node_cpus)
    if not nodes:
        raise ValueError("the Ray cluster has no node with CPUs for the workers")
    if num_cpus > max(nodes):
        raise ValueError(
            f"each worker asks for {_cpus(num_cpus)}, but the largest Ray node has {_cpus(max(nodes))}; "
            f"ask for at most {max(nodes):g} per worker"
        )
    fit = sum(int(c / num_cpus + 1e-9) for c in nodes)
    if fit < workers:
        raise ValueError(
            f"{workers} workers of {_cpus(num_cpus)} each do not fit on the Ray cluster's "
            f"{_cpus(sum(nodes))} ({fit} do); ask for fewer workers or fewer CPUs each"
        )


def map_depth(
    dataset,
    model: Any,
    *,
    workers: int = 1,
    num_cpus: float = 1.0,
    batch_size: int = 1,
    start_timeout: float = START_TIMEOUT,
    **options,
):
    """``dataset`` with a :class:`DepthPredictor` stage of ``workers`` workers of ``num_cpus`` CPUs each.

    ``batch_size`` images go to a worker at a time (and through the model together); ``options`` are
    DepthPredictor's other arguments. Raises a one-line ValueError at once when no node can hold a
    worker; the returned dataset fails with ``GetTimeoutError`` when its workers have not all started
    within ``start_timeout`` seconds (CPUs held by other work, a model that loads too slowly).
    """
    import ray

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not start_timeout > 0:
        raise ValueError(f"start_timeout must be a positive number of seconds, got {start_timeout!r}")
    check_cpus(num_cpus, workers)
    out = dataset.map_batches(
        DepthPredictor,
        fn_constructor_kwargs={"model": model, "batch_size": batch_size, **options},
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=num_cpus,
        batch_size=batch_size,
        batch_format="numpy",
    )
    out.context.wait_for_min_actors_s = max(1, int(round(start_timeout)))
    return out


# ----------------------------------------------------------------------------------------------
# The batch command's stage: workers that write the files


def job_row(job: Job, name: str, source: str) -> dict[str, str]:
    """The row that sends one planned image to the workers."""
    planned = {
        "outputs": [[kind, str(target)] for kind, target in job.outputs],
        "replace": sorted(str(t) for t in job.replace),
    }
    return {"path": name, "source": source, "job": json.dumps(planned)}


def _job(name: str, text: str) -> Job:
    planned = json.loads(text)
    job = Job(Path(name))
    job.outputs = [(kind, Path(target)) for kind, target in planned["outputs"]]
    job.replace = {Path(t) for t in planned["replace"]}
    return job


class OutputWriter(DepthPredictor):
    """``map_batches`` class of ``python -m dpt_mlx.batch``: a :class:`DepthPredictor` that writes files.

    Workers write the outputs themselves, with the writers of ``dpt-mlx`` (processing/writers.py: the
    same files, PNG text chunks and atomic publish-or-fail), so only one short row per image goes
    back to the driver; the output folder must be one that every node sees at the same path. A row
    in: ``path`` (the image's name in messages), ``source`` (what the worker opens) and ``job``
    (:func:`job_row`: the planned outputs as [kind, file] pairs, and the files it may replace). A
    row out: ``path``, ``error`` ("" when every file was written) and ``details`` (``--verbose``).

    ``colormap``: the depth PNG's colours; ``overwrite``: replace existing files; ``verbose``: every
    class of a segmentation map in ``details``. The other arguments are DepthPredictor's.
    """

    def __init__(self, model: Any, colormap: str = "inferno", overwrite: bool = False, verbose: bool = False, **kwargs):
        super().__init__(model, image_column="source", path_column="path", errors="record", **kwargs)
        self.options = OutputOptions(colormap=colormap, overwrite=overwrite, verbose=verbose)

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        names = self.names(batch, len(batch["source"]))
        images, errors = self.read(batch["source"], names)
        details = [""] * len(names)
        done = [i for i, image in enumerate(images) if image is not None]
        try:
            maps = self.predict([images[i] for i in done])
        except ValueError as e:  # a broken model's NaN output: every image of the batch fails
            for i in done:
                errors[i] = f"{names[i]}: inference failed: {e}"
            maps, done = [], []
        for i, result in zip(done, maps):
            job = _job(names[i], batch["job"][i])
            lines, error = write_outputs(job, result, self.options, self.predictor)
            if error is not None:
                errors[i] = error
            else:
                details[i] = "\n".join([f"{names[i]} -> {', '.join(str(t) for _, t in job.outputs)}"] + lines)
            images[i] = None
        return {
            "path": np.array(names, dtype=object),
            "error": np.array(errors, dtype=object),
            "details": np.array(details, dtype=object),
        }

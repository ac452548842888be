"""The batch command's Ray worker: reads each planned image, predicts its map and writes its files.

Workers write the outputs themselves, with the writers of ``dpt-mlx`` (cli/predict_outputs.py:
the same files, PNG text chunks and atomic publish-or-fail), so only one short row per image goes
back to the driver. The output folder must therefore be one that every node sees at the same
path (a shared file system); the driver checks that the files it is told about are there.

A row in: ``path`` (the image's name in messages), ``source`` (what the worker opens: a local
path, or a path in ``filesystem``) and ``job`` (JSON: the planned ``outputs`` as [kind, file]
pairs, and the files it may ``replace``). A row out: ``path``, ``error`` ("" when every file was
written) and ``details`` (the lines ``--verbose`` prints).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..ray import DepthPredictor
from .predict_outputs import Job, OutputOptions, write_outputs


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

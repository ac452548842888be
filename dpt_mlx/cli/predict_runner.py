"""The predict command's loop: read each image, batch images of the same model-input size, run the
model, write the outputs and report each image (or its failure) on the console."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .console import Console
from .predict_outputs import Job, OutputOptions, shown, write_outputs


class Runner:
    """Runs the planned jobs with one predictor; counts the images written and failed."""

    def __init__(self, args, options: OutputOptions, predictor, console: Console):
        self.args, self.options, self.predictor, self.console = args, options, predictor, console
        self.written, self.failed = 0, 0
        self.model_seconds = 0.0

    def fail(self, path: Path | None, message: str) -> None:
        """Report one image that could not be done; ``path`` prefixes the message when given."""
        self.failed += 1
        self.console.error(f"{shown(path)}: {message}" if path is not None else message)
        self.console.advance()

    def prepare(self, job: Job) -> bool:
        """Read and preprocess the image of ``job``; False (reported) when it cannot be."""
        from ..errors import ImageError
        from ..processing.depth_prompt import read_prompt_depth
        from ..processing.images import load_image

        try:
            image = load_image(job.path)
        except (ImageError, OSError) as e:
            self.fail(None, str(e))  # load_image's messages name the file
            return False
        try:
            if job.prompt is None:
                job.pixels = self.predictor.preprocess(image)
            else:
                prompt = read_prompt_depth(job.prompt, self.args.prompt_depth_scale)  # metres
                job.pixels, job.prompt_pixels = self.predictor.preprocess_with_prompt(image, prompt, 1.0)
        except ImageError as e:  # the depth prompt's file
            self.fail(job.path, str(e))
            return False
        except ValueError as e:
            self.fail(job.path, f"cannot preprocess: {e}")
            return False
        job.image, job.size = image, (image.height, image.width)
        return True

    def run_batch(self, batch: list[Job]) -> None:
        """One forward pass over ``batch`` (same input size), then every image's outputs."""
        start = time.perf_counter()
        try:
            prompts = None if batch[0].prompt_pixels is None else np.stack([j.prompt_pixels for j in batch])
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, once per image
                results = self.predictor.forward(np.stack([j.pixels for j in batch]), [j.size for j in batch], prompts)
        except (ValueError, OSError) as e:
            for job in batch:
                self.fail(job.path, f"inference failed: {e}")
            return
        seconds = time.perf_counter() - start
        self.model_seconds += seconds
        for job, result in zip(batch, results):
            job.pixels = job.prompt_pixels = None
            if not np.isfinite(result).all():
                job.image = None
                self.fail(
                    job.path,
                    "inference failed: the model's output overflowed float32 when resized to the "
                    "image's size (NaN or inf); the checkpoint's weights may be damaged",
                )
                continue
            details = self._write(job, result)
            if details is not None:
                self._report(job, details, seconds / len(batch), len(batch))

    def _write(self, job: Job, result: np.ndarray) -> list[str] | None:
        """Write the outputs of one image; None (reported) when that fails."""
        try:
            details, error = write_outputs(job, result, self.options, self.predictor)
        finally:
            job.image = None
        if error is not None:
            self.fail(None, error)
        return details

    def _report(self, job: Job, details: list[str], seconds: float, batch_size: int) -> None:
        self.written += 1
        names = ", ".join(shown(t) for _, t in job.outputs)
        self.console.info(f"{shown(job.path)} -> {names}" + (f" ({job.note})" if job.note else ""))
        show = self.console.info if self.predictor.task == "image-segmentation" else self.console.detail
        for line in details:
            show(line)
        self.console.detail(f"    {job.size[1]}x{job.size[0]}, model {seconds:.3f} s/image (batch of {batch_size})")
        self.console.advance()

    def run(self, jobs: list[Job]) -> None:
        """Every job, in batches of --batch-size images whose model inputs have the same shape."""
        size = self.args.batch_size
        pending: dict[tuple, list[Job]] = {}  # input (and prompt) shapes -> jobs waiting for a batch
        for job in jobs:
            if not self.prepare(job):
                continue
            key = (job.pixels.shape, None if job.prompt_pixels is None else job.prompt_pixels.shape)
            bucket = pending.setdefault(key, [])
            bucket.append(job)
            if len(bucket) >= size:
                self.run_batch(pending.pop(key))
            elif sum(len(b) for b in pending.values()) >= 4 * size:  # bound memory with many shapes
                largest = max(pending, key=lambda k: len(pending[k]))
                self.run_batch(pending.pop(largest))
        for key in list(pending):
            self.run_batch(pending.pop(key))

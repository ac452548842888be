"""The benchmark's ``--folder-run``: images per second of a whole folder, as a user runs it.

``dpt-mlx --input-dir`` (a fresh process: import, model load, decode, preprocess, forward,
post-process, write ``.npy``) against a script that does the same with transformers'
``pipeline("depth-estimation")`` on the same checkpoint, folder and preprocessing, each in its
own process, timed from start to exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

TORCH_SCRIPT = """
import sys, pathlib, numpy as np, transformers
model, photos, out = sys.argv[1:4]
pipe = transformers.pipeline("depth-estimation", model=model, device="cpu")
for path in sorted(pathlib.Path(photos).glob("*.jpg")):
    depth = pipe(str(path))["predicted_depth"]
    np.save(pathlib.Path(out) / f"{path.stem}_depth.npy", depth.numpy())
"""


def write_photos(folder: Path, count: int, size: tuple[int, int] = (480, 640), seed: int = 0) -> None:
    """``count`` photo-like JPEGs (smooth shading, edges and texture, not noise) of ``size``."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        base = rng.uniform(40, 200, 3)
        shade = (xx / w)[..., None] * rng.uniform(-80, 80, 3) + (yy / h)[..., None] * rng.uniform(-80, 80, 3)
        image = base + shade
        for _ in range(6):  # a few flat shapes with hard edges
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 160)
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            image[inside] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 6, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"photo_{i:03d}.jpg", quality=90)


def save_processor(model_type: str, input_size: tuple[int, int], directory: str) -> None:
    """The preprocessor_config.json the released checkpoint ships, for both libraries to read."""
    import transformers

    if model_type == "zoedepth":
        processor = transformers.ZoeDepthImageProcessorPil(ensure_multiple_of=32)
    elif "depth_anything" in model_type:
        processor = transformers.DPTImageProcessorPil(
            size={"height": 518, "width": 518},
            keep_aspect_ratio=True,
            ensure_multiple_of=14,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
    else:
        processor = transformers.DPTImageProcessorPil(size={"height": input_size[0], "width": input_size[1]})
    processor.save_pretrained(directory)


def _timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {tail}")
    return seconds


def folder_run(directory: str, model_type: str, input_size: tuple[int, int], count: int, batch_size: int, log) -> dict:
    """Seconds and images per second of both folder runs; their outputs are compared."""
    save_processor(model_type, input_size, directory)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(
        os.environ,
        PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    with tempfile.TemporaryDirectory(prefix="dpt_mlx_folder_") as work:
        photos, ours, theirs = (Path(work) / name for name in ("photos", "mlx", "torch"))
        for d in (photos, ours, theirs):
            d.mkdir()
        write_photos(photos, count)
        mlx_s = _timed(
            [
                sys.executable,
                "-m",
                "dpt_mlx.generate",
                "--model",
                directory,
                "--input-dir",
                str(photos),
                "--output-dir",
                str(ours),
                "--format",
                "npy",
                "--quiet",
                "--batch-size",
                str(batch_size),
            ],
            env,
        )
        torch_s = _timed([sys.executable, "-c", TORCH_SCRIPT, directory, str(photos), str(theirs)], env)
        names = sorted(p.name for p in theirs.glob("*.npy"))
        worst = max(
            float(np.abs(np.load(ours / n) - np.load(theirs / n)).max() / np.abs(np.load(theirs / n)).max())
            for n in names
        )
    result = {
        "images": count,
        "batch_size": batch_size,
        "mlx_s": mlx_s,
        "torch_s": torch_s,
        "mlx_images_per_s": count / mlx_s,
        "torch_images_per_s": count / torch_s,
        "max_rel_err": worst,
    }
    log(
        f"  folder run, {count} photos 640x480 (load, decode, write .npy included): dpt-mlx {mlx_s:.1f} s "
        f"({count / mlx_s:.2f} img/s, --batch-size {batch_size}) | transformers pipeline {torch_s:.1f} s "
        f"({count / torch_s:.2f} img/s) | ratio {mlx_s / torch_s:.2f} | max rel err {worst:.1e}"
    )
    return result

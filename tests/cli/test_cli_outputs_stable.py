"""The command line's outputs for the README's examples are byte for byte those of a fixed earlier
version of the package (BASE), run side by side on this machine on the same tiny checkpoints and
photos: the same files, the same names, the same bytes, the same exit statuses.

Both sides run MLX's own ops (DPT_MLX_FAST_KERNELS=0; BASE is taken from git without its compiled
kernels), so the numbers are the same and any difference comes from the code that writes them.
When an output changes on purpose, BASE moves to the commit that changed it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from helpers import TINY_DPT as TINY
from helpers import perturb, tiny_dpt
from model_configs import PDA_VARIANTS as VARIANTS
from model_configs import depth_anything_config, pda_config
from PIL import Image
from videos import encode

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "examples" / "images" / "coffee.jpg"
BASE = "0bc2bef828067225d1fa024c19d41632418262af"

# Runs the examples given in a JSON file with one version of dpt_mlx: the installed one, or the
# package folder in CLI_BASE (the installed one's import hooks removed so that it cannot answer).
DRIVER = """
import json, os, sys
base = os.environ.get("CLI_BASE")
if base:
    sys.meta_path[:] = [f for f in sys.meta_path if "dpt_mlx" not in type(f).__module__]
    sys.path.insert(0, base)
import dpt_mlx
assert not base or dpt_mlx.__file__.startswith(base), dpt_mlx.__file__
from dpt_mlx.generate import main
codes = []
for example in json.load(open(sys.argv[1])):
    os.chdir(example["cwd"])
    sys.stdin = open(example["stdin"]) if example.get("stdin") else sys.__stdin__
    try:
        code = main(example["argv"])
    except SystemExit as exc:
        code = exc.code
    codes.append(code)
json.dump(codes, open(sys.argv[2], "w"))
"""


def _checkpoints(root: Path) -> dict[str, str]:
    out = {}
    torch.manual_seed(0)
    depth = tiny_dpt(seed=1)
    with torch.no_grad():
        depth.head.head[4].bias.fill_(1.0)
    depth.save_pretrained(root / "depth")
    transformers.DPTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "depth")
    seg = transformers.DPTConfig(**TINY, id2label={0: "sky", 1: "tree", 2: "road", 3: "car", 4: "person"})
    perturb(transformers.DPTForSemanticSegmentation(seg), seed=3).save_pretrained(root / "seg")
    transformers.DPTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "seg")
    metric = perturb(
        transformers.DepthAnythingForDepthEstimation(
            depth_anything_config([3, 6, 9, 12], depth_estimation_type="metric", max_depth=20)
        ),
        seed=4,
    )
    metric.save_pretrained(root / "metric")
    prompt = perturb(transformers.PromptDepthAnythingForDepthEstimation(pda_config(**VARIANTS["vits"])), seed=3)
    prompt.save_pretrained(root / "prompt")
    for name in ("depth", "seg", "metric", "prompt"):
        out[name] = str(root / name)
    return out


def _inputs(root: Path) -> None:
    """The files the examples read, written once and copied to each example's folder."""
    photo = Image.open(PHOTO).convert("RGB")
    root.mkdir(parents=True)
    photo.resize((60, 40)).save(root / "photo.jpg", quality=95)
    photo.crop((0, 0, 300, 300)).resize((48, 48)).save(root / "a.jpg", quality=95)
    photo.convert("L").resize((37, 29)).save(root / "b.png")
    photo.resize((52, 36)).save(root / "c.webp", lossless=True)
    (root / "photos" / "sub").mkdir(parents=True)
    for i in range(5):
        photo.crop((20 * i, 10 * i, 300 + 20 * i, 200 + 10 * i)).resize((45, 30)).save(root / "photos" / f"{i}.jpg")
    photo.resize((33, 41)).save(root / "photos" / "sub" / "deep.png")
    lidar = np.linspace(500, 2500, 12 * 16, dtype=np.float64).reshape(12, 16)
    Image.fromarray(lidar.astype(np.uint16)).save(root / "lidar.png")
    rng = np.random.default_rng(0)
    frames = [
        np.clip(np.asarray(photo.resize((48, 32)), dtype=np.int16) + rng.integers(-20, 20, (32, 48, 3)), 0, 255).astype(
            np.uint8
        )
        for _ in range(6)
    ]
    encode(root / "in.mp4", frames, fps=12)


def _examples(models: dict[str, str]) -> list[dict]:
    """The README's command-line examples, on the tiny checkpoints."""
    depth, metric, seg, prompt = models["depth"], models["metric"], models["seg"], models["prompt"]
    return [
        {"argv": ["--model", depth, "--image", "photo.jpg"]},
        {"argv": ["--model", depth, "--image", "a.jpg", "b.png", "c.webp"]},
        {"argv": ["--model", depth, "--input-dir", "photos", "--output-dir", "depth", "--batch-size", "4"]},
        {"argv": ["--model", depth, "--input-dir", "photos", "--recursive", "--output-dir", "depth"]},
        {"argv": ["--model", depth, "--image-list", "-"], "stdin": "a.jpg\nb.png\n"},
        {"argv": ["--model", depth, "--image", "photo.jpg", "--format", "npy", "--output", "depth.npy"]},
        {"argv": ["--model", depth, "--image", "photo.jpg", "--format", "png,png16,npy"]},
        {"argv": ["--model", depth, "--image", "photo.jpg", "--colormap", "turbo", "--dtype", "float16"]},
        {"argv": ["--model", metric, "--image", "photo.jpg", "--format", "ply"]},
        {"argv": ["--model", metric, "--image", "photo.jpg", "--format", "npy", "--flip-tta"]},
        {"argv": ["--model", prompt, "--image", "photo.jpg", "--prompt-depth", "lidar.png", "--format", "npy,ply"]},
        {"argv": ["--model", seg, "--image", "photo.jpg", "--overlay", "--alpha", "0.6"]},
        {"argv": ["--model", depth, "--video", "in.mp4"]},
        {
            "argv": [
                "--model",
                depth,
                "--video",
                "in.mp4",
                "--output-dir",
                "out",
                "--batch-size",
                "4",
                "--colormap",
                "gray",
                "--stabilize",
            ]
        },
        {"argv": ["--model", depth, "--video", "in.mp4", "--format", "mp4,npz,png16"]},
    ]


def _base_package(dest: Path) -> Path:
    """BASE's dpt_mlx/ (sources only) under ``dest``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", BASE, "dpt_mlx"], capture_output=True, timeout=120
    )
    assert archive.returncode == 0, f"BASE {BASE} is not in this clone's history: {archive.stderr.decode()[-500:]}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _run_side(work: Path, inputs: Path, examples: list[dict], base: Path | None) -> list:
    specs = []
    for i, example in enumerate(examples):
        cwd = work / f"example{i:02d}"
        shutil.copytree(inputs, cwd)
        spec = {"argv": example["argv"], "cwd": str(cwd)}
        if "stdin" in example:
            (work / f"stdin{i:02d}").write_text(example["stdin"])
            spec["stdin"] = str(work / f"stdin{i:02d}")
        specs.append(spec)
    (work / "examples.json").write_text(json.dumps(specs))
    (work / "driver.py").write_text(DRIVER)
    env = {**os.environ, "DPT_MLX_FAST_KERNELS": "0"}
    env.pop("CLI_BASE", None)
    if base is not None:
        env["CLI_BASE"] = str(base)
    run = subprocess.run(
        [sys.executable, str(work / "driver.py"), str(work / "examples.json"), str(work / "codes.json")],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((work / "codes.json").read_text())


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.timeout(600)
def test_readme_examples_write_what_base_wrote(tmp_path):
    models = _checkpoints(tmp_path / "models")
    _inputs(tmp_path / "inputs")
    examples = _examples(models)
    base = _base_package(tmp_path / "base")
    base_codes = _run_side(tmp_path / "base-run", tmp_path / "inputs", examples, base)
    codes = _run_side(tmp_path / "run", tmp_path / "inputs", examples, None)
    assert codes == base_codes == [0] * len(examples)
    want, got = _files(tmp_path / "base-run"), _files(tmp_path / "run")
    want = {k: v for k, v in want.items() if "/" in k}  # the examples' folders
    got = {k: v for k, v in got.items() if "/" in k}
    assert sorted(got) == sorted(want)
    inputs = set(_files(tmp_path / "inputs"))
    written = {k.split("/", 1)[0] for k in want if k.split("/", 1)[1] not in inputs}
    assert written == {f"example{i:02d}" for i in range(len(examples))}  # every example wrote something
    assert [k for k in want if got[k] != want[k]] == []

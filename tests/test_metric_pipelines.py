"""The metric models end to end: ``pipeline()`` and the command line on Prompt Depth Anything (with and
without a depth prompt, from arrays and from files) and ZoeDepth (padding removal, flip averaging),
against transformers' processors and models on the same checkpoints and photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from helpers import TorchvisionResize, perturb, photo
from model_configs import PDA_VARIANTS as VARIANTS
from model_configs import pda_config, spread_head
from PIL import Image

from dpt_mlx import pipeline
from dpt_mlx.cli.predict import main

# What the hub's Prompt Depth Anything preprocessor_config.json holds, at the reduced size of the tests.
PDA_PROCESSOR = dict(
    size={"height": 56, "width": 56},
    keep_aspect_ratio=True,
    ensure_multiple_of=14,
    resample=3,
    image_mean=[0.485, 0.456, 0.406],
    image_std=[0.229, 0.224, 0.225],
    prompt_scale_to_meter=0.001,
)
TOL = 1e-4


def lidar_mm(height, width, seed=0) -> np.ndarray:
    """A uint16 LiDAR-like depth map in millimetres (0.4 to about 3.5 m), as ARKit exports it."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(400, 3200, width)[None, :] + np.linspace(0, 300, height)[:, None]
    return (ramp + rng.uniform(0, 40, (height, width))).astype(np.uint16)


def close(ours, theirs, tol=TOL):
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape
    span = float(theirs.max() - theirs.min())
    assert span > 0
    return float(np.abs(ours - theirs).max()) <= tol * max(span, float(np.abs(theirs).max()))


@pytest.fixture(scope="module")
def pda(tmp_path_factory):
    root = tmp_path_factory.mktemp("pda")
    torch.manual_seed(0)
    ref = perturb(transformers.PromptDepthAnythingForDepthEstimation(pda_config(**VARIANTS["vits"])), seed=3)
    x = np.random.default_rng(0).standard_normal((1, 3, 42, 56)).astype(np.float32)
    spread_head(ref, x, np.random.default_rng(1).uniform(0.4, 3.5, (1, 1, 24, 32)).astype(np.float32))
    ref.save_pretrained(root)
    processor = transformers.PromptDepthAnythingImageProcessorPil(**PDA_PROCESSOR)
    processor.save_pretrained(root)
    return root, ref, processor


def pda_reference(pda, image, prompt):
    _, ref, processor = pda
    inputs = (
        processor(images=image, prompt_depth=prompt, return_tensors="pt")
        if prompt is not None
        else (processor(images=image, return_tensors="pt"))
    )
    with torch.no_grad():
        out = ref(**inputs)
    done = processor.post_process_depth_estimation(out, target_sizes=[(image.height, image.width)])
    return done[0]["predicted_depth"].numpy()


@pytest.mark.parity
def test_pda_pipeline_with_prompt_matches_transformers(pda, tmp_path):
    root = pda[0]
    image = Image.fromarray(photo(75, 101, seed=3))
    prompt = lidar_mm(24, 32)
    expected = pda_reference(pda, image, Image.fromarray(prompt))
    pipe = pipeline("depth-estimation", model=str(root))
    got = pipe(image, prompt_depth=Image.fromarray(prompt))
    assert close(got["predicted_depth"], expected)
    assert close(pipe(image, prompt_depth=prompt)["predicted_depth"], expected)  # a uint16 array, in mm
    # Files: a 16-bit PNG is millimetres, a .npy metres; both give the same depth.
    Image.fromarray(prompt).save(tmp_path / "lidar.png")
    np.save(tmp_path / "lidar.npy", prompt.astype(np.float32) / 1000)
    assert close(pipe(image, prompt_depth=str(tmp_path / "lidar.png"))["predicted_depth"], expected)
    assert close(pipe(image, prompt_depth=tmp_path / "lidar.npy")["predicted_depth"], expected)
    # Metres in an array: prompt_scale_to_meter=1.
    assert close(
        pipe(image, prompt_depth=prompt.astype(np.float32) / 1000, prompt_scale_to_meter=1)["predicted_depth"], expected
    )
    # The output is metres in the prompt's range, not the head's (0, 1).
    assert got["predicted_depth"].max() > 1.0


@pytest.mark.parity
def test_pda_pipeline_batches_and_no_prompt(pda):
    root = pda[0]
    images = [Image.fromarray(photo(75, 101, seed=s)) for s in (4, 5, 6)]
    prompts = [lidar_mm(24, 32, seed=s) * (s - 2) for s in (4, 5, 6)]  # different ranges per image
    pipe = pipeline("depth-estimation", model=str(root), batch_size=3)
    got = pipe(images, prompt_depth=prompts)
    for image, prompt, out in zip(images, prompts, got):
        assert close(out["predicted_depth"], pda_reference(pda, image, prompt))
    # Without a prompt it is the reference model without one: the head's relative output.
    plain = pipe(images[0])["predicted_depth"]
    assert close(plain, pda_reference(pda, images[0], None))
    assert plain.max() <= 1.0
    with pytest.raises(ValueError, match="one per image"):
        pipe(images, prompt_depth=prompts[:2])


@pytest.mark.parity
def test_cli_prompt_depth_files_and_folders(pda, tmp_path, capsys):
    root = pda[0]
    photos = tmp_path / "photos"
    prompts = tmp_path / "lidar"
    out = tmp_path / "out"
    photos.mkdir()
    prompts.mkdir()
    expected = {}
    for i, name in enumerate(["a", "b"]):
        image = Image.fromarray(photo(60 + 10 * i, 80, seed=10 + i))
        image.save(photos / f"{name}.png")
        prompt = lidar_mm(18, 24, seed=i)
        Image.fromarray(prompt).save(prompts / f"{name}.png")
        expected[name] = pda_reference(pda, Image.open(photos / f"{name}.png"), prompt)
    code = main(
        [
            "--model",
            str(root),
            "--input-dir",
            str(photos),
            "--prompt-depth",
            str(prompts),
            "--format",
            "npy",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "metres" in text
    for name in expected:
        assert close(np.load(out / f"{name}_depth.npy"), expected[name])
    # One file per image, in order; a millimetre .npy with --prompt-depth-scale 0.001.
    np.save(tmp_path / "a_mm.npy", lidar_mm(18, 24, seed=0).astype(np.float32))
    code = main(
        [
            "--model",
            str(root),
            "--image",
            str(photos / "a.png"),
            "--prompt-depth",
            str(tmp_path / "a_mm.npy"),
            "--prompt-depth-scale",
            "0.001",
            "--format",
            "npy",
            "--output",
            str(tmp_path / "a.npy"),
        ]
    )
    assert code == 0 and close(np.load(tmp_path / "a.npy"), expected["a"])


def test_cli_prompt_depth_errors(pda, tmp_path, capsys):
    root = pda[0]
    Image.fromarray(photo(40, 50)).save(tmp_path / "a.png")
    Image.fromarray(photo(40, 50, seed=1)).save(tmp_path / "b.png")
    prompts = tmp_path / "lidar"
    prompts.mkdir()
    Image.fromarray(lidar_mm(8, 8)).save(prompts / "a.png")
    np.save(prompts / "b.npy", np.full((8, 8), np.nan, np.float32))
    args = ["--model", str(root), "--format", "npy", "--output-dir", str(tmp_path / "out")]
    # One image's prompt is unusable: it fails alone (exit 1), the other is written.
    assert (
        main(args + ["--image", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--prompt-depth", str(prompts)]) == 1
    )
    err = capsys.readouterr().err
    assert "NaN" in err and (tmp_path / "out" / "a_depth.npy").exists()
    # A count mismatch, a missing file, a model without prompts: nothing done (exit 2), one line.
    for extra in (
        ["--image", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--prompt-depth", str(prompts / "a.png")],
        ["--image", str(tmp_path / "a.png"), "--prompt-depth", str(tmp_path / "none.png")],
    ):
        assert main(args + extra + ["--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--prompt-depth" in err


def test_flip_tta_averages_the_mirrored_prediction(pda):
    """Flip averaging = the mean of the prediction and the mirrored prediction of the mirrored image."""
    root = pda[0]
    image = Image.fromarray(photo(70, 90, seed=7))
    prompt = lidar_mm(20, 26)
    plain = pipeline("depth-estimation", model=str(root))
    flipped_image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a = plain(image, prompt_depth=prompt)["predicted_depth"]
    b = plain(flipped_image, prompt_depth=np.ascontiguousarray(prompt[:, ::-1]))["predicted_depth"][:, ::-1]
    tta = pipeline("depth-estimation", model=str(root), flip_tta=True)(image, prompt_depth=prompt)["predicted_depth"]
    # The mean is taken at the model's resolution, before the bicubic resize: equal up to that resize.
    print("FLIPERR", np.abs(tta - (a + b) / 2).max() / np.abs(a).max(), np.abs(tta - a).max() / np.abs(a).max())
    assert close(tta, (a + b) / 2, tol=2e-2) and not close(tta, a, tol=1e-3)


# ----------------------------------------------------------------------------------------------
# ZoeDepth

# Intel/zoedepth-nyu-kitti's preprocessor_config.json at the tests' size (patch 8 instead of 16).
ZOE_PROCESSOR = dict(
    do_pad=True,
    size={"height": 32, "width": 40},
    keep_aspect_ratio=True,
    ensure_multiple_of=8,
    resample=2,
    image_mean=[0.5, 0.5, 0.5],
    image_std=[0.5, 0.5, 0.5],
)


@pytest.fixture(scope="module")
def zoe(tmp_path_factory):
    import transformers.models.zoedepth.image_processing_pil_zoedepth as reference_module
    from model_configs import ZOE_VARIANTS, zoe_config
    from model_configs import make_zoedepth as make

    root = tmp_path_factory.mktemp("zoe")
    ref = make(root, zoe_config(**ZOE_VARIANTS["nyu-kitti"]), seed=2)
    processor = transformers.ZoeDepthImageProcessorPil(**ZOE_PROCESSOR)
    processor.save_pretrained(root)
    patch = pytest.MonkeyPatch()
    if not hasattr(reference_module, "tvF"):  # no torchvision here: its float resize, as the reference calls it
        patch.setattr(reference_module, "tvF", TorchvisionResize, raising=False)
    yield root, ref, processor
    patch.undo()


def zoe_reference(zoe, image, flip=False):
    _, ref, processor = zoe
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        out = ref(**inputs)
        flipped = ref(pixel_values=torch.flip(inputs["pixel_values"], dims=[-1])) if flip else None
    done = processor.post_process_depth_estimation(
        out, source_sizes=[(image.height, image.width)], outputs_flipped=flipped
    )
    return done[0]["predicted_depth"].numpy()


@pytest.mark.parity
def test_zoedepth_cli_equals_transformers_pipeline(zoe, tmp_path, capsys):
    root = zoe[0]
    for i, (h, w) in enumerate([(75, 101), (120, 90)]):
        path = tmp_path / f"photo{i}.png"
        Image.fromarray(photo(h, w, seed=20 + i)).save(path)
        theirs = transformers.pipeline("depth-estimation", model=str(root))(str(path))["predicted_depth"].numpy()
        assert theirs.shape == (h, w) and close(theirs, zoe_reference(zoe, Image.open(path)))
        assert (
            main(
                ["--model", str(root), "--image", str(path), "--format", "npy", "--output", str(tmp_path / f"d{i}.npy")]
            )
            == 0
        )
        assert close(np.load(tmp_path / f"d{i}.npy"), theirs)
        assert (
            main(
                [
                    "--model",
                    str(root),
                    "--image",
                    str(path),
                    "--format",
                    "npy",
                    "--flip-tta",
                    "--output",
                    str(tmp_path / f"f{i}.npy"),
                ]
            )
            == 0
        )
        flipped = np.load(tmp_path / f"f{i}.npy")
        assert close(flipped, zoe_reference(zoe, Image.open(path), flip=True)) and not close(flipped, theirs, 1e-3)
    text = capsys.readouterr().out
    assert "metres" in text and "flip-averaged" in text


@pytest.mark.parity
def test_zoedepth_pipeline_batches_and_point_clouds(zoe, tmp_path):
    root = zoe[0]
    images = [Image.fromarray(photo(60, 80, seed=s)) for s in (30, 31)]
    pipe = pipeline("depth-estimation", model=str(root), batch_size=2, flip_tta=True)
    for image, out in zip(images, pipe(images)):
        assert close(out["predicted_depth"], zoe_reference(zoe, image, flip=True))
    images[0].save(tmp_path / "room.png")
    # Metric: a point cloud without --depth-kind.
    assert (
        main(
            [
                "--model",
                str(root),
                "--image",
                str(tmp_path / "room.png"),
                "--format",
                "ply",
                "--fov",
                "60",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "room_points.ply").stat().st_size > 60 * 80 * 15

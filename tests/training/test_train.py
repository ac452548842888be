"""Training: BatchNorm / dropout modes, frozen backbones, gradient checkpointing, the data
pipeline, and ``python -m dpt_mlx.train`` end to end on tiny synthetic data sets."""

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
import torch
from helpers import pixels
from mlx.utils import tree_flatten
from PIL import Image
from training_data import SIZE, make_depth_data, save_model
from training_data import tiny_mlx_config as tiny_config

import dpt_mlx
from dpt_mlx.cli import train as cli
from dpt_mlx.processing.image_processor import DPTImageProcessor
from dpt_mlx.training import checkpoints, loop
from dpt_mlx.training.data import Batches, TargetReader, find_samples
from dpt_mlx.training.metrics import depth_metrics

ROOT = Path(__file__).resolve().parents[2]


def make_segmentation_data(root: Path, n: int, seed=0) -> Path:
    """Three classes by colour (red / green / blue blocks), 255 on a border of unlabelled pixels."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    colours = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]])
    for i in range(n):
        classes = rng.integers(0, 3, (4, 4)).repeat(SIZE // 4, 0).repeat(SIZE // 4, 1)
        image = colours[classes] + rng.normal(0, 10, (SIZE, SIZE, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.jpg")
        mask = classes.astype(np.uint8)
        mask[:2] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


def run(argv):
    return cli.train(cli.build_parser().parse_args(argv))


def outputs(model, x):
    out = model(x)
    return np.array(out.predicted_depth if "predicted_depth" in out else out.logits)


# ----------------------------------------------------------------------------------------------
# Training mode: BatchNorm, dropout, frozen parts


def test_batchnorm_train_step_matches_pytorch():
    """mlx's BatchNorm in training mode: batch statistics (biased variance) for the output, and
    running stats updated like PyTorch's (momentum 0.1 on the new value, unbiased variance)."""
    rng = np.random.default_rng(0)
    ref = torch.nn.BatchNorm2d(6)
    ours = nn.BatchNorm(6)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(rng.standard_normal(6)))
        ref.bias.copy_(torch.tensor(rng.standard_normal(6)))
        ref.running_mean.copy_(torch.tensor(rng.standard_normal(6)))
        ref.running_var.copy_(torch.tensor(0.5 + rng.random(6)))
    ours.update(
        {
            k: mx.array(v.detach().numpy())
            for k, v in [
                ("weight", ref.weight),
                ("bias", ref.bias),
                ("running_mean", ref.running_mean),
                ("running_var", ref.running_var),
            ]
        }
    )
    ref.train()
    ours.train()
    for _ in range(3):
        x = (rng.standard_normal((2, 6, 5, 4)) * 3 + 1).astype(np.float32)  # NCHW
        xt = torch.tensor(x, requires_grad=True)
        y_ref = ref(xt)
        (y_ref * torch.arange(6.0)[:, None, None]).sum().backward()

        def fn(m, xn):
            return (m(xn) * mx.arange(6.0)).sum()

        xn = mx.array(x.transpose(0, 2, 3, 1))
        y = ours(xn)
        _, grads = nn.value_and_grad(ours, fn)(ours, xn)  # forward twice: updates the stats again
        np.testing.assert_allclose(np.array(y).transpose(0, 3, 1, 2), y_ref.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.array(grads["weight"]), ref.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
        ref.weight.grad = None
        ref.bias.grad = None
        ref(xt.detach())  # PyTorch's second forward, to keep the two updates in step
        np.testing.assert_allclose(np.array(ours.running_mean), ref.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.array(ours.running_var), ref.running_var.numpy(), rtol=1e-5, atol=1e-6)
    assert "running_mean" not in dict(tree_flatten(ours.trainable_parameters()))
    ref.eval()
    ours.eval()
    x = rng.standard_normal((1, 6, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.array(ours(mx.array(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2),
        ref(torch.tensor(x)).detach().numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_train_modes_and_freeze_batch_norm():
    model = dpt_mlx.DPTForSemanticSegmentation(tiny_config(hidden_dropout_prob=0.1))
    modules = [m for _, m in model.named_modules()]
    bns = [m for m in modules if isinstance(m, nn.BatchNorm)]
    assert bns
    model.train()
    assert all(m.training for m in modules)
    model.train(freeze_batch_norm=True)
    assert not any(m.training for m in bns)
    assert all(m.training for m in modules if not isinstance(m, nn.BatchNorm))
    model.eval()
    assert not any(m.training for m in modules)
    # dropout is live in training mode only
    x = pixels(1, SIZE, SIZE)
    model.eval()
    np.testing.assert_array_equal(outputs(model, x), outputs(model, x))
    model.train(freeze_batch_norm=True)
    assert not np.array_equal(outputs(model, x), outputs(model, x))


def test_freeze_backbone_gets_no_gradients():
    model = dpt_mlx.DPTForDepthEstimation(tiny_config())
    mx.eval(model.parameters())
    loop.backbone_of(model).freeze()
    loop.set_train_mode(model, freeze_backbone=True, freeze_batch_norm=False)
    assert not model.dpt.training and model.neck.training
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    labels = mx.array(np.random.default_rng(0).uniform(0.5, 2, (2, SIZE, SIZE)).astype(np.float32))
    loss, grads = nn.value_and_grad(model, lambda m: m(pixels(2, SIZE, SIZE), labels=labels).loss)(model)
    names = [k for k, _ in tree_flatten(grads)]
    assert names and not any(k.startswith("dpt.") for k in names)
    optim.AdamW(1e-2).update(model, grads)
    after = dict(tree_flatten(model.parameters()))
    for key, value in before.items():
        changed = not np.array_equal(value, np.array(after[key]))
        if key.startswith("dpt."):
            assert not changed, key
    assert any(not np.array_equal(v, np.array(after[k])) for k, v in before.items() if k.startswith("head."))


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads_of(checkpointing):
        mx.random.seed(0)
        model = dpt_mlx.DPTForDepthEstimation(tiny_config())
        mx.eval(model.parameters())
        if checkpointing:
            assert loop.enable_gradient_checkpointing(model) == 4
            assert model.dpt.encoder.gradient_checkpointing is True
        model.train()
        labels = mx.array(np.random.default_rng(0).uniform(0.5, 2, (2, SIZE, SIZE)).astype(np.float32))
        loss, grads = nn.value_and_grad(model, lambda m: m(pixels(2, SIZE, SIZE), labels=labels).loss)(model)
        return float(loss), dict(tree_flatten(grads)), model

    loss, plain, _ = grads_of(False)
    loss_ckpt, ckpt, model = grads_of(True)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert set(plain) == set(ckpt)
    largest = max(float(np.abs(np.array(v)).max()) for v in plain.values())
    for key in plain:  # (attention key-bias gradients are 0 up to float noise: judged on the model's scale)
        a, b = np.array(ckpt[key]), np.array(plain[key])
        assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1e-4 * largest), key
    # inference and attentions bypass it; parameter names are unchanged
    model.eval()
    assert len(model(pixels(1, SIZE, SIZE), output_attentions=True).attentions) == 4
    assert {k for k, _ in tree_flatten(model.parameters())} == {
        k for k, _ in tree_flatten(dpt_mlx.DPTForDepthEstimation(tiny_config()).parameters())
    }


# ----------------------------------------------------------------------------------------------
# Data pipeline


def test_targets_follow_the_processed_image(tmp_path):
    """keep_aspect_ratio + ensure_multiple_of + padding: the label grid is the pixel grid; nearest
    resizing keeps invalid pixels invalid and produces only values present in the input."""
    data = make_depth_data(tmp_path / "d", 2, size=(30, 45))
    processor = DPTImageProcessor(
        size={"height": 32, "width": 32}, keep_aspect_ratio=True, ensure_multiple_of=8, do_pad=True, size_divisor=16
    )
    reader = TargetReader(
        "depth", processor, disparity=False, normalize=False, target="depth", depth_scale=0.001, ignore_index=255
    )
    samples = find_samples(data, "depth")
    batches = Batches(samples, processor, reader, batch_size=2)
    pixel_values, labels = batches.load([0, 1])
    assert pixel_values.shape[2:] == labels.shape[1:] == reader.processed_size((30, 45))
    raw = np.array(Image.open(samples[0].target)).astype(np.float64) * 0.001
    assert set(np.unique(labels[0])) <= set(np.unique(raw.astype(np.float32))) | {0.0}
    assert (labels[0] == 0).mean() >= (raw == 0).mean() * 0.5  # holes and padding stay invalid

    # relative: disparity, scaled by its mean absolute deviation (unit-free)
    rel = TargetReader(
        "depth", processor, disparity=True, normalize=True, target="depth", depth_scale=1.0, ignore_index=255
    )
    disparity = rel.read(samples[0])
    valid = disparity > 0
    spread = np.abs(disparity[valid] - np.median(disparity[valid])).mean()
    assert spread == pytest.approx(1.0, rel=0.1)
    mm = TargetReader(
        "depth", processor, disparity=True, normalize=True, target="depth", depth_scale=0.001, ignore_index=255
    )
    np.testing.assert_allclose(mm.read(samples[0]), disparity, rtol=1e-5)  # units do not matter


def test_segmentation_targets_reduce_labels_and_pad_with_ignore(tmp_path):
    data = make_segmentation_data(tmp_path / "s", 1)
    processor = DPTImageProcessor(size={"height": 24, "width": 24}, do_reduce_labels=True, do_pad=True, size_divisor=20)
    reader = TargetReader(
        "segmentation", processor, disparity=False, normalize=False, target="depth", depth_scale=1.0, ignore_index=255
    )
    sample = find_samples(data, "segmentation")[0]
    labels = reader.read(sample)
    assert labels.shape == (40, 40) and labels.dtype == np.int64
    assert set(np.unique(labels)) <= {0, 1, 255}  # classes 1, 2 -> 0, 1; class 0 and the border -> 255
    assert np.all(labels[:8] == 255)  # padding (8 rows) is ignored


def test_depth_metrics():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.5, 3.0, (20, 20)).astype(np.float32)
    target[0] = 0  # invalid
    perfect = depth_metrics(3 * target + 2, target, align=True, disparity=True)  # up to scale and shift
    assert perfect["abs_rel"] == pytest.approx(0, abs=1e-6) and perfect["delta1"] == 1
    metric = depth_metrics(target * 1.1, target, align=False, disparity=False)
    assert metric["abs_rel"] == pytest.approx(0.1, rel=1e-4) and metric["delta1"] == 1
    assert depth_metrics(target, np.zeros_like(target), align=False, disparity=False) is None
    # disparity targets are compared as depths: 1 / disparity
    inverse = depth_metrics(target * 1.1, target, align=False, disparity=True)
    assert inverse["abs_rel"] == pytest.approx(1 - 1 / 1.1, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# End to end


def test_depth_training_lowers_validation_loss_and_saves_loadable_checkpoints(tmp_path, capsys):
    # no BatchNorm in the neck (as in the hub's depth checkpoints): a dozen steps cannot settle running stats
    model_dir = save_model(tmp_path / "model", dpt_mlx.DPTForDepthEstimation, use_batch_norm_in_fusion_residual=False)
    data = make_depth_data(tmp_path / "data", 16)
    out = tmp_path / "run"
    result = run(
        [
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--output",
            str(out),
            "--epochs",
            "4",
            "--batch-size",
            "4",
            "--lr",
            "2e-3",
            "--depth-scale",
            "0.001",
            "--val-split",
            "0.25",
            "--warmup",
            "0.1",
            "--seed",
            "1",
        ]
    )
    history = result.state["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]
    assert history[-1]["val_loss"] < 0.75 * history[0]["val_loss"]
    assert {"abs_rel", "delta1", "train_loss"} <= set(history[-1])
    printed = capsys.readouterr().out
    assert "epoch 0 (before training)" in printed and "AbsRel" in printed and "epoch 4/4" in printed

    # the run directory is a checkpoint: from_pretrained, load_model and the CLI read it
    x = pixels(2, SIZE, SIZE, seed=3)
    expected = outputs(result.model, x)
    last = checkpoints.list_checkpoints(out)
    assert [p.name for p in last] == ["checkpoint-12"]  # --keep-checkpoints 1
    for path in (out, last[0]):
        for loaded in (dpt_mlx.DPTForDepthEstimation.from_pretrained(path), dpt_mlx.load_model(path)):
            np.testing.assert_array_equal(outputs(loaded, x), expected)
    assert DPTImageProcessor.from_pretrained(out).to_dict() == DPTImageProcessor.from_pretrained(model_dir).to_dict()
    assert not list(out.glob(".*"))  # no temporary files left
    state = json.loads((last[0] / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["epoch"] == 4
    assert set(mx.load(str(last[0] / "optimizer.safetensors"))) >= {"step", "learning_rate"}

    from dpt_mlx.generate import main as generate

    assert (
        generate(
            [
                "--model",
                str(out),
                "--image",
                str(data / "images" / "000.png"),
                "--format",
                "npy",
                "--output-dir",
                str(tmp_path / "pred"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "pred" / "000_depth.npy").is_file()


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    model_dir = save_model(tmp_path / "model", dpt_mlx.DPTForDepthEstimation, seed=2)
    data = make_depth_data(tmp_path / "data", 10, seed=2)
    common = [
        "--data",
        str(data),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--depth-scale",
        "0.001",
        "--val-split",
        "0.2",
        "--quiet",
    ]
    straight = run(["--model", str(model_dir), "--output", str(tmp_path / "a"), *common])

    save = checkpoints.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_interrupt)
    assert cli.main(["--model", str(model_dir), "--output", str(tmp_path / "b"), *common]) == 130
    monkeypatch.setattr(loop, "save_checkpoint", save)
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path / "b")] == ["checkpoint-2"]
    assert not (tmp_path / "b" / "model.safetensors").exists()

    resumed = run(["--resume", str(tmp_path / "b"), "--quiet"])  # options come from the checkpoint
    assert resumed.state["step"] == straight.state["step"] == 4
    assert [h["epoch"] for h in resumed.state["history"]] == [0, 1, 2]
    ours = dict(tree_flatten(resumed.model.parameters()))
    for key, value in tree_flatten(straight.model.parameters()):
        np.testing.assert_allclose(np.array(ours[key]), np.array(value), rtol=1e-5, atol=1e-6, err_msg=key)
    # a finished run has nothing left to do; more epochs continue it
    assert run(["--resume", str(tmp_path / "b"), "--quiet"]).state["step"] == 4
    assert run(["--resume", str(tmp_path / "b"), "--epochs", "3", "--quiet"]).state["step"] == 6


def test_segmentation_training_reports_miou(tmp_path, capsys):
    model_dir = save_model(tmp_path / "model", dpt_mlx.DPTForSemanticSegmentation)
    data = make_segmentation_data(tmp_path / "data", 8)
    result = run(
        [
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--output",
            str(tmp_path / "run"),
            "--epochs",
            "3",
            "--batch-size",
            "3",
            "--lr",
            "3e-3",
            "--val-split",
            "0.25",
            "--freeze-backbone",
        ]
    )
    history = result.state["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert 0 <= history[-1]["miou"] <= 1 and 0 <= history[-1]["pixel_acc"] <= 1
    assert "mIoU" in capsys.readouterr().out
    # --freeze-backbone: the encoder is the one it started from
    start = dict(tree_flatten(dpt_mlx.load_model(model_dir).parameters()))
    for key, value in tree_flatten(dpt_mlx.load_model(tmp_path / "run").parameters()):
        if key.startswith("dpt."):
            np.testing.assert_array_equal(np.array(value), np.array(start[key]), err_msg=key)


def test_metric_depth_anything_with_mixed_image_sizes(tmp_path, capsys):
    """A metric checkpoint trains with the SI-log loss on depth in metres; keep_aspect_ratio gives
    two processed sizes, which are batched separately."""
    import transformers

    backbone = transformers.Dinov2Config(
        hidden_size=24,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=42,
        patch_size=14,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=24,
        neck_hidden_sizes=[6, 12, 24, 24],
        fusion_hidden_size=16,
        head_hidden_size=32,
        depth_estimation_type="metric",
        max_depth=20,
    )
    torch.manual_seed(0)
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(tmp_path / "model")
    capsys.readouterr()  # transformers' progress bar
    DPTImageProcessor(
        size={"height": 42, "width": 42},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(tmp_path / "model")
    data = make_depth_data(tmp_path / "data", 4, size=(42, 56))
    wide = make_depth_data(tmp_path / "wide", 4, seed=1, size=(56, 28))
    for kind in ("images", "depth"):
        for f in (wide / kind).iterdir():
            f.rename(data / kind / f"w{f.name}")
    args = [
        "--model",
        str(tmp_path / "model"),
        "--data",
        str(data),
        "--output",
        str(tmp_path / "run"),
        "--depth-scale",
        "0.001",
        "--batch-size",
        "3",
        "--val-split",
        "0.25",
        "--lr",
        "1e-3",
    ]
    one_line_error(capsys, [*args, "--target", "disparity"], "metric model")
    result = run([*args, "--epochs", "2"])
    assert result.state["loss_type"] == "silog"
    assert {"abs_rel", "delta1"} <= set(result.state["history"][-1])
    # 6 training images, processed to 42x56 (from 42x56) or 42x28 (from 56x28): never in one batch
    wide = sum(
        1 for f in (data / "images").iterdir() if f.name.startswith("w") and f.stem not in result.state["val_images"]
    )
    assert result.state["steps_per_epoch"] == -(-wide // 3) + -(-(6 - wide) // 3)
    assert isinstance(dpt_mlx.load_model(tmp_path / "run"), dpt_mlx.DepthAnythingForDepthEstimation)


# ----------------------------------------------------------------------------------------------
# Errors: one line, exit status 2


@pytest.fixture()
def depth_setup(tmp_path):
    return save_model(tmp_path / "model", dpt_mlx.DPTForDepthEstimation), make_depth_data(tmp_path / "data", 3)


def one_line_error(capsys, argv, match):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and match in err, err
    return err


def test_errors_exit_2_with_one_line(tmp_path, depth_setup, capsys):
    model, data = depth_setup
    base = ["--model", str(model), "--output", str(tmp_path / "run")]
    one_line_error(capsys, base, "--data")
    one_line_error(capsys, [*base, "--data", str(tmp_path / "nope")], "no such data directory")
    one_line_error(capsys, [*base, "--data", str(tmp_path)], "no images/ folder")
    seg = make_segmentation_data(tmp_path / "seg", 2)
    one_line_error(capsys, [*base, "--data", str(seg)], "no depth/ folder")
    (data / "depth" / "001.png").unlink()
    one_line_error(capsys, [*base, "--data", str(data)], "no target for")
    Image.fromarray(np.ones((8, 8), np.uint16)).save(data / "depth" / "001.png")
    one_line_error(capsys, [*base, "--data", str(data)], "must have their image's size")
    Image.fromarray(np.ones((SIZE, SIZE), np.uint16)).save(data / "depth" / "001.png")
    np.save(data / "depth" / "001.npy", np.ones((SIZE, SIZE)))
    one_line_error(capsys, [*base, "--data", str(data)], "several targets")
    (data / "depth" / "001.npy").unlink()
    one_line_error(
        capsys,
        ["--model", str(tmp_path / "missing"), "--data", str(data), "--output", str(tmp_path / "r")],
        "no such directory",
    )
    one_line_error(capsys, ["--data", str(data), "--output", str(tmp_path / "r")], "--model")
    one_line_error(capsys, [*base, "--data", str(data), "--val-split", "0.9"], "cannot be split")
    one_line_error(capsys, ["--resume", str(tmp_path), "--data", str(data)], "no trainer_state.json")
    one_line_error(capsys, [*base, "--data", str(data), "--lr", "-1"], "--lr")
    one_line_error(capsys, [*base, "--data", str(data), "--loss", "l1"], "--loss")
    run([*base, "--data", str(data), "--epochs", "1", "--val-split", "0", "--quiet"])
    one_line_error(capsys, [*base, "--data", str(data)], "already holds a training run")
    one_line_error(capsys, ["--resume", str(tmp_path / "run"), "--model", str(model)], "drop --model")


def test_module_entry_point_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpt_mlx.train",
            "--model",
            str(tmp_path / "none"),
            "--data",
            str(tmp_path),
            "--output",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "dpt_mlx.train", "--epochs", "zero"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--epochs" in proc.stderr


def test_sigterm_during_a_checkpoint_keeps_the_last_complete_one_and_resume_cleans_up(tmp_path, monkeypatch):
    import os
    import signal

    model_dir = save_model(tmp_path / "model", dpt_mlx.DPTForDepthEstimation, seed=4)
    data = make_depth_data(tmp_path / "data", 6, seed=4)
    out = tmp_path / "run"
    common = [
        "--data",
        str(data),
        "--epochs",
        "3",
        "--batch-size",
        "3",
        "--depth-scale",
        "0.001",
        "--val-split",
        "0.0",
        "--quiet",
    ]
    save_pretrained, calls = checkpoints.save_pretrained, []

    def save_then_terminate(model, path):
        save_pretrained(model, path)
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint, half written: as `kill PID` would
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoints, "save_pretrained", save_then_terminate)
    previous = signal.getsignal(signal.SIGTERM)
    assert cli.main(["--model", str(model_dir), "--output", str(out), *common]) == 143
    assert signal.getsignal(signal.SIGTERM) == previous  # the policy is undone when main returns
    monkeypatch.setattr(checkpoints, "save_pretrained", save_pretrained)
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["checkpoint-2"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"]  # no temporary directory left
    assert checkpoints.read_state(out / "checkpoint-2")["epoch"] == 1

    # what a SIGKILL'd run leaves (its pid is gone) is removed when the run resumes
    dead = out / ".checkpoint-4.tmp-2147483646"
    (dead / "sub").mkdir(parents=True)
    result = run(["--resume", str(out), "--quiet"])
    assert result.state["step"] == 6
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_train_ends_quietly_on_a_closed_stdout(tmp_path):
    import os

    model_dir = save_model(tmp_path / "model", dpt_mlx.DPTForDepthEstimation, seed=5)
    data = make_depth_data(tmp_path / "data", 4, seed=5)
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "dpt_mlx.train",
                "--model",
                str(model_dir),
                "--data",
                str(data),
                "--output",
                str(tmp_path / "run"),
                "--epochs",
                "1",
                "--batch-size",
                "2",
                "--depth-scale",
                "0.001",
            ],
            cwd=Path(__file__).resolve().parents[2],
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr


def test_metric_models_without_a_training_path_are_refused(tmp_path, capsys):
    """ZoeDepth (no loss anywhere) and Prompt Depth Anything (needs prompts) are refused in one line."""
    import transformers
    from model_configs import PDA_VARIANTS as PDA
    from model_configs import pda_config, zoe_config

    data = make_depth_data(tmp_path / "data", 2)
    transformers.ZoeDepthForDepthEstimation(zoe_config()).save_pretrained(tmp_path / "zoe")
    transformers.PromptDepthAnythingForDepthEstimation(pda_config(**PDA["vits"])).save_pretrained(tmp_path / "pda")
    capsys.readouterr()  # transformers' progress bars
    for name, match in (("zoe", "ZoeDepth has no training loss"), ("pda", "depth prompts")):
        one_line_error(
            capsys,
            ["--model", str(tmp_path / name), "--data", str(data), "--output", str(tmp_path / f"run-{name}")],
            match,
        )
        assert not (tmp_path / f"run-{name}").exists()

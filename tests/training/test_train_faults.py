"""python -m dpt_mlx.train under attack: two trainers into one run directory, --overwrite of a run that
then cannot start, checkpoints replaced or left by a killed run, outputs that cannot be written, signals
mid-epoch, damaged data and damaged checkpoints to resume from."""

import errno
import os
import shutil
import signal
from pathlib import Path

import mlx.core as mx
import pytest
from PIL import Image
from training_data import make_depth_data, save_model

import dpt_mlx
from dpt_mlx.cli import train as cli
from dpt_mlx.io import files
from dpt_mlx.training import checkpoints, loop
from dpt_mlx.training import data as training_data

COMMON = ["--epochs", "1", "--batch-size", "2", "--depth-scale", "0.001", "--val-split", "0", "--quiet"]


@pytest.fixture
def setup(tmp_path):
    """A tiny depth model, four images with depth, and a finished one-epoch run (two steps) in run/."""
    model = save_model(tmp_path / "model", dpt_mlx.DPTForDepthEstimation, seed=6)
    data = make_depth_data(tmp_path / "data", 4, seed=6)
    assert cli.main(["--model", str(model), "--data", str(data), "--output", str(tmp_path / "run"), *COMMON]) == 0
    return model, data, tmp_path / "run"


def one_line(capsys, match: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err and match in err, err
    return err


def files_of(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def hidden(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_second_trainer_into_a_run_directory_is_turned_away(setup, tmp_path, capsys):
    """While one run holds the directory (its lock), another, even with --overwrite or --resume, stops
    before it writes anything: the first run's checkpoints stay."""
    model, data, run_dir = setup
    before = files_of(run_dir)
    fresh = tmp_path / "fresh"
    with files.output_lock(run_dir, "held by the test"), files.output_lock(fresh, "held by the test"):
        for argv in (
            ["--model", str(model), "--data", str(data), "--output", str(run_dir), "--overwrite", *COMMON],
            ["--resume", str(run_dir), "--epochs", "2", "--quiet"],
            ["--model", str(model), "--data", str(data), "--output", str(fresh), *COMMON],
        ):
            assert cli.main(argv) == 2
            one_line(capsys, "another training run is writing")
    assert files_of(run_dir) == before
    assert not fresh.exists() and hidden(tmp_path) == []


def test_overwrite_of_a_run_that_cannot_start_keeps_the_old_run(setup, capsys):
    """--overwrite removes the old checkpoints only once the new run has its model and data."""
    model, data, run_dir = setup
    before = files_of(run_dir)
    (data / "depth" / "001.png").unlink()
    assert cli.main(["--model", str(model), "--data", str(data), "--output", str(run_dir), "--overwrite", *COMMON]) == 2
    one_line(capsys, "no target for")
    assert files_of(run_dir) == before


def test_a_dead_runs_checkpoint_is_removed_even_if_its_pid_lives_again(setup):
    """A SIGKILL'd run's temporary checkpoint carries its pid; after a restart (a container, a reboot)
    another process may have that pid. Holding the run's lock, the next run knows it is stale."""
    _, _, run_dir = setup
    dead = run_dir / f".checkpoint-4.tmp-{os.getppid()}"  # a pid that is alive, and not this process
    (dead / "partial").mkdir(parents=True)
    assert cli.main(["--resume", str(run_dir), "--epochs", "2", "--quiet"]) == 0
    assert hidden(run_dir) == [] and hidden(run_dir.parent) == []
    assert [p.name for p in checkpoints.list_checkpoints(run_dir)] == ["checkpoint-4"]


def test_a_checkpoint_is_replaced_in_one_step(setup, monkeypatch):
    """Resuming from an earlier checkpoint writes a step that exists: the old one is swapped for the new
    one, never removed first (an interruption between the two would lose both)."""
    _, _, run_dir = setup
    assert cli.main(["--resume", str(run_dir), "--epochs", "2", "--keep-checkpoints", "2", "--quiet"]) == 0
    assert [p.name for p in checkpoints.list_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4"]
    target = run_dir / "checkpoint-4"
    before = files_of(target)
    real = shutil.rmtree

    def rmtree_then_interrupt(path, *args, **kwargs):  # SIGTERM right after the old checkpoint is gone
        real(path, *args, **kwargs)
        if Path(path) == target:
            raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", rmtree_then_interrupt)
    code = cli.main(["--resume", str(run_dir / "checkpoint-2"), "--epochs", "2", "--keep-checkpoints", "2", "--quiet"])
    monkeypatch.setattr(shutil, "rmtree", real)
    assert [p.name for p in checkpoints.list_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4"]
    assert set(files_of(target)) == set(before)  # complete
    assert isinstance(dpt_mlx.load_model(target), dpt_mlx.DPTForDepthEstimation)
    assert code == 0 and hidden(run_dir) == []


def test_output_that_cannot_be_written_is_one_line_before_training(setup, tmp_path, capsys, monkeypatch):
    model, data, _ = setup
    (tmp_path / "afile").write_text("x")
    trained = []
    monkeypatch.setattr(loop, "_train_epoch", lambda *a: trained.append(a))
    assert (
        cli.main(["--model", str(model), "--data", str(data), "--output", str(tmp_path / "afile" / "run"), *COMMON])
        == 2
    )
    one_line(capsys, f"{tmp_path / 'afile'} is a file, not a directory")
    assert trained == []


def test_full_disk_while_saving_a_checkpoint(setup, tmp_path, capsys, monkeypatch):
    model, data, _ = setup

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mx, "save_safetensors", no_space)
    out = tmp_path / "full"
    assert cli.main(["--model", str(model), "--data", str(data), "--output", str(out), *COMMON]) == 2
    one_line(capsys, f"cannot write {out / 'checkpoint-2'}: no space left on device")
    assert list(out.iterdir()) == [] and hidden(tmp_path) == []


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"])
def test_signal_mid_epoch_keeps_the_last_checkpoint(setup, capsys, monkeypatch, signum, status):
    """A signal between two training steps of the second epoch: the first epoch's checkpoint stays, nothing
    half-written is left, and --resume finishes the run."""
    _, _, run_dir = setup
    before = files_of(run_dir)
    load, calls = training_data.Batches.load, []

    def load_then_signal(self, indices):
        calls.append(indices)
        if len(calls) == 2:
            os.kill(os.getpid(), signum)
        return load(self, indices)

    monkeypatch.setattr(training_data.Batches, "load", load_then_signal)
    assert cli.main(["--resume", str(run_dir), "--epochs", "2", "--quiet"]) == status
    assert "the last complete checkpoint is kept" in capsys.readouterr().err
    monkeypatch.setattr(training_data.Batches, "load", load)
    assert files_of(run_dir) == before and hidden(run_dir) == [] and hidden(run_dir.parent) == []
    assert cli.main(["--resume", str(run_dir), "--epochs", "2", "--quiet"]) == 0
    assert [p.name for p in checkpoints.list_checkpoints(run_dir)] == ["checkpoint-4"]


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize(
    "name, match",
    [
        ("model.safetensors", "the file is damaged"),
        ("optimizer.safetensors", "optimizer.safetensors"),
        ("trainer_state.json", "trainer_state.json"),
        ("config.json", "config.json"),
        ("preprocessor_config.json", "preprocessor_config.json"),
    ],
)
def test_resume_from_a_truncated_checkpoint_is_one_line(setup, capsys, name, match):
    _, _, run_dir = setup
    _truncate(run_dir / "checkpoint-2" / name)
    before = files_of(run_dir)
    assert cli.main(["--resume", str(run_dir), "--epochs", "2", "--quiet"]) == 2
    one_line(capsys, match)
    assert files_of(run_dir) == before and hidden(run_dir) == []


@pytest.mark.parametrize("damage", ["truncated", "not an image"])
def test_unreadable_image_is_one_line_before_training(tmp_path, capsys, damage):
    model = save_model(tmp_path / "model", dpt_mlx.DPTForDepthEstimation, seed=7)
    data = make_depth_data(tmp_path / "data", 4, seed=7)
    image = data / "images" / "002.png"
    if damage == "truncated":
        _truncate(image)
    else:
        image.write_bytes(b"not an image")
    assert cli.main(["--model", str(model), "--data", str(data), "--output", str(tmp_path / "run"), *COMMON]) == 2
    one_line(capsys, f"cannot read image {image}")
    assert not (tmp_path / "run").exists()


def test_non_ascii_paths(tmp_path):
    model = save_model(tmp_path / "modèle", dpt_mlx.DPTForDepthEstimation, seed=8)
    data = make_depth_data(tmp_path / "données-深度", 4, seed=8)
    Image.open(data / "images" / "000.png").save(data / "images" / "ß.png")
    Image.open(data / "depth" / "000.png").save(data / "depth" / "ß.png")
    out = tmp_path / "exécution"
    assert cli.main(["--model", str(model), "--data", str(data), "--output", str(out), *COMMON]) == 0
    assert isinstance(dpt_mlx.load_model(out), dpt_mlx.DPTForDepthEstimation)

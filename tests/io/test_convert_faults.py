"""convert.py under attack: concurrent conversions into one folder, signals and SIGKILL, a full disk,
outputs that cannot be written, and source checkpoints that are cut short, mixed or misconfigured.

Real conversions run as ``python convert.py`` subprocesses. A ``sitecustomize`` module on their
PYTHONPATH (written by :func:`hooks`) makes a race certain or holds a conversion still: with
``CONVERT_TEST_BARRIER=DIR`` each conversion waits, just before it loads its source, until two have
arrived; with ``CONVERT_TEST_PAUSE=FILE`` a conversion creates FILE when its work directory is full
(in place of verifying) and sleeps there until a signal comes.
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from model_configs import tiny_config

import dpt_mlx
from dpt_mlx.cli.convert import main as convert_main
from dpt_mlx.io import convert as conv
from dpt_mlx.io import files

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180

HOOK = """
import os, time
from pathlib import Path
from dpt_mlx.io import convert as _conv

_barrier = os.environ.get("CONVERT_TEST_BARRIER")
if _barrier:
    _load = _conv.load_model

    def load_model(*args, **kwargs):
        Path(_barrier, str(os.getpid())).touch()
        deadline = time.monotonic() + 60
        while len(os.listdir(_barrier)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        return _load(*args, **kwargs)

    _conv.load_model = load_model

_pause = os.environ.get("CONVERT_TEST_PAUSE")
if _pause:
    def verify(*args, **kwargs):
        Path(_pause).touch()
        time.sleep(300)

    _conv.verify = verify
"""


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two tiny transformers checkpoints of one architecture with different weights (and a processor)."""
    root = tmp_path_factory.mktemp("sources")
    for seed, name in enumerate(("a", "b")):
        torch.manual_seed(seed)
        transformers.DPTForDepthEstimation(tiny_config()).save_pretrained(root / name)
        transformers.DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / name)
    return root / "a", root / "b"


@pytest.fixture
def hooks(tmp_path):
    directory = tmp_path / "hooks"
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(HOOK)
    return directory


def env(hooks, **extra):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(hooks), str(ROOT)]), **extra)


def start(source, target, hooks=None, *flags, **extra):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "convert.py"), "--hf-path", str(source), "--mlx-path", str(target), *flags],
        env=env(hooks, **extra) if hooks else dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc):
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out, err


def wait_for(path: Path, proc) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the conversion never reached its pause"
        time.sleep(0.05)


def digest(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def hidden(directory: Path) -> list:
    """What a conversion must not leave: work directories, lock files."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def depth(model) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    return np.array(model(x).predicted_depth)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------------------------
# One folder, one conversion


def test_two_conversions_into_one_folder_one_wins(sources, tmp_path, hooks):
    """Both pass the "does it exist" check before either writes (the barrier makes it certain); exactly
    one publishes, the other fails in one line, and the folder is the winner's checkpoint, whole."""
    target = tmp_path / "modèle-深度"  # non-ASCII names on the way
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [start(src, target, hooks, CONVERT_TEST_BARRIER=str(barrier)) for src in sources]
    results = [finish(p) for p in procs]
    codes = [code for code, _, _ in results]
    assert sorted(codes) == [0, 2], results
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert "verified" in results[winner][1]
    line = one_error_line(results[loser][2])
    assert "another conversion is writing" in line or "appeared while this conversion" in line, line
    assert str(target) in line
    converted = dpt_mlx.load_model(target)
    expected, other = (depth(dpt_mlx.load_model(s)) for s in (sources[winner], sources[loser]))
    assert not np.array_equal(expected, other)  # the check below can tell the two apart
    np.testing.assert_array_equal(depth(converted), expected)
    assert conv.verify(dpt_mlx.load_model(sources[winner]), converted) <= 1e-6
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_a_running_conversion_turns_another_away(sources, tmp_path, overwrite):
    """While a conversion holds the folder's lock, another (even with --overwrite) leaves it alone."""
    target = tmp_path / "mlx"
    if overwrite:
        assert convert_main(["--hf-path", str(sources[0]), "--mlx-path", str(target)]) == 0
        before = digest(target)
    with files.output_lock(target, "held by the test"):
        code, out, err = finish(start(sources[1], target, None, *(["--overwrite"] if overwrite else [])))
        assert code == 2 and out == ""
        assert f"another conversion is writing {target}" in one_error_line(err)
    if overwrite:
        assert digest(target) == before
    else:
        assert not target.exists()
    assert hidden(tmp_path) == []


def test_overwrite_replaces_the_folder_whole(sources, tmp_path):
    """--overwrite swaps the folder: files only the old one had do not survive."""
    target = tmp_path / "mlx"
    assert convert_main(["--hf-path", str(sources[0]), "--mlx-path", str(target)]) == 0
    (target / "notes.txt").write_text("old")
    assert convert_main(["--hf-path", str(sources[1]), "--mlx-path", str(target), "--overwrite"]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    np.testing.assert_array_equal(depth(dpt_mlx.load_model(target)), depth(dpt_mlx.load_model(sources[1])))
    assert hidden(tmp_path) == []


def test_a_folder_that_appears_meanwhile_is_not_replaced(sources, tmp_path, monkeypatch, capsys):
    """Something else creates the target while the conversion writes: kept, and the conversion says so."""
    target = tmp_path / "mlx"
    real = conv.verify

    def verify_while_someone_creates_it(a, b):
        target.mkdir()
        (target / "theirs.txt").write_text("theirs")
        return real(a, b)

    monkeypatch.setattr(conv, "verify", verify_while_someone_creates_it)
    assert convert_main(["--hf-path", str(sources[0]), "--mlx-path", str(target)]) == 2
    assert "appeared while this conversion was writing it; use --overwrite" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in target.iterdir()) == ["theirs.txt"]
    assert hidden(tmp_path) == []


def test_replacing_the_folder_that_holds_the_source_is_refused(sources, tmp_path, capsys):
    """--overwrite of a folder that contains the source would delete the source."""
    outer = tmp_path / "outer"
    shutil.copytree(sources[0], outer / "hf")
    before = digest(outer / "hf")
    assert convert_main(["--hf-path", str(outer / "hf"), "--mlx-path", str(outer), "--overwrite"]) == 2
    assert "contains the source checkpoint" in one_error_line(capsys.readouterr().err)
    assert digest(outer / "hf") == before and [p.name for p in outer.iterdir()] == ["hf"]


@pytest.mark.parametrize("native", ["flags", "none", "unsupported"])
def test_publish_directory_without_flagged_renames(tmp_path, monkeypatch, native):
    """The same guarantees where renameat2 / renamex_np are missing (an old libc, another system) or the
    file system refuses their flags (EINVAL): the portable path under the lock."""
    if native == "none":
        monkeypatch.setattr(files, "_flagged_rename", lambda: None)
    elif native == "unsupported":
        monkeypatch.setattr(
            files, "_flagged_rename", lambda: ((lambda src, dst, flag: -1), {"noreplace": 1, "exchange": 2})
        )
        monkeypatch.setattr(files.ctypes, "get_errno", lambda: errno.EINVAL)

    def work(name, text):
        d = tmp_path / f".out.tmp-{name}"
        d.mkdir()
        (d / "f").write_text(text)
        return d

    target = tmp_path / "out"
    assert files.publish_directory(work("1", "one"), target, overwrite=False) is None
    with pytest.raises(FileExistsError):
        files.publish_directory(work("2", "two"), target, overwrite=False)
    assert (target / "f").read_text() == "one"
    old = files.publish_directory(tmp_path / ".out.tmp-2", target, overwrite=True)
    assert (target / "f").read_text() == "two" and (old / "f").read_text() == "one"
    files.remove_tree(old)
    if native != "flags":  # the portable overwrite renames the old one aside first: a failure puts it back
        real = os.rename

        def second_rename_fails(src, dst):
            if Path(src).name == ".out.tmp-3":
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real(src, dst)

        monkeypatch.setattr(files.os, "rename", second_rename_fails)
        with pytest.raises(OSError):
            files.publish_directory(work("3", "three"), target, overwrite=True)
        monkeypatch.setattr(files.os, "rename", real)
        assert (target / "f").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp-3", "out"][native == "flags" :]


def test_lock_is_removed_on_release_and_a_dead_holders_file_does_not_block(tmp_path):
    target = tmp_path / "out"
    (tmp_path / ".out.lock").touch()  # left by a holder killed with SIGKILL (the kernel dropped its lock)
    with files.output_lock(target, "busy") as locked:
        assert locked
        with pytest.raises(dpt_mlx.DPTError, match="^busy$"):
            with files.output_lock(target, "busy"):
                pass
    assert list(tmp_path.iterdir()) == []
    with files.output_lock(target, "busy"):  # and again
        assert [p.name for p in tmp_path.iterdir()] == [".out.lock"]


# ----------------------------------------------------------------------------------------------
# Signals and SIGKILL


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"])
def test_signal_mid_conversion_leaves_the_target_as_it_was(sources, tmp_path, hooks, signum, status):
    target = tmp_path / "mlx"
    assert convert_main(["--hf-path", str(sources[0]), "--mlx-path", str(target)]) == 0
    before = digest(target)
    ready = tmp_path / "ready"
    proc = start(sources[1], target, hooks, "--overwrite", CONVERT_TEST_PAUSE=str(ready))
    wait_for(ready, proc)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".mlx.tmp-")]  # the work directory is full
    proc.send_signal(signum)
    code, _, err = finish(proc)
    assert code == status
    assert "nothing was written" in one_error_line(err)
    assert digest(target) == before
    assert hidden(tmp_path) == []


def test_sigkilled_conversion_is_cleaned_up_by_the_next(sources, tmp_path, hooks):
    """SIGKILL runs no clean-up: the next conversion into the folder removes the dead one's work
    directory at once (its lock tells it no conversion is running) and is not blocked by its lock."""
    target = tmp_path / "mlx"
    ready = tmp_path / "ready"
    proc = start(sources[0], target, hooks, CONVERT_TEST_PAUSE=str(ready))
    wait_for(ready, proc)
    proc.kill()
    finish(proc)
    left = hidden(tmp_path)
    assert ".mlx.lock" in left and any(name.startswith(".mlx.tmp-") for name in left) and not target.exists()
    code, out, err = finish(start(sources[1], target))
    assert code == 0, err
    assert hidden(tmp_path) == []
    np.testing.assert_array_equal(depth(dpt_mlx.load_model(target)), depth(dpt_mlx.load_model(sources[1])))


def test_signal_while_publishing_waits_for_the_rename(sources, tmp_path, monkeypatch, capsys):
    """A SIGTERM that arrives as the folder is being put in place is handled once it is: the folder is
    the new checkpoint, whole, and the command says the conversion completed (143 all the same)."""
    target = tmp_path / "mlx"
    real = conv.publish_directory

    def publish_with_a_signal(tmp, dst, overwrite):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(tmp, dst, overwrite)

    monkeypatch.setattr(conv, "publish_directory", publish_with_a_signal)
    assert convert_main(["--hf-path", str(sources[0]), "--mlx-path", str(target)]) == 143
    assert "conversion is complete" in one_error_line(capsys.readouterr().err)
    np.testing.assert_array_equal(depth(dpt_mlx.load_model(target)), depth(dpt_mlx.load_model(sources[0])))
    assert hidden(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Outputs that cannot be written


def test_full_disk_is_one_line_and_leaves_nothing(sources, tmp_path, monkeypatch, capsys):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mx, "save_safetensors", no_space)
    target = tmp_path / "mlx"
    assert convert_main(["--hf-path", str(sources[0]), "--mlx-path", str(target)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot write {target}" in line and "no space left on device" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_output_under_a_file_is_one_line(sources, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert convert_main(["--hf-path", str(sources[0]), "--mlx-path", str(tmp_path / "afile" / "sub" / "mlx")]) == 2
    assert f"{tmp_path / 'afile'} is a file, not a directory" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# ----------------------------------------------------------------------------------------------
# Bad sources: one line, nothing written


def _truncated(src, dst):
    f = dst / "model.safetensors"
    os.truncate(f, f.stat().st_size // 2)


def _other_weights(src, dst):  # the config of one model, the weights of a wider one
    torch.manual_seed(0)
    transformers.DPTForDepthEstimation(tiny_config(hidden_size=64, intermediate_size=64)).save_pretrained(dst / "w")
    shutil.move(dst / "w" / "model.safetensors", dst / "model.safetensors")
    shutil.rmtree(dst / "w")


def _segmentation_config(src, dst):  # a segmentation config over depth weights
    config = json.loads((dst / "config.json").read_text())
    config["architectures"] = ["DPTForSemanticSegmentation"]
    (dst / "config.json").write_text(json.dumps(config))


def _edit(name, change):
    def edit(src, dst):
        path = dst / name
        path.write_text(change(path.read_text()))

    return edit


def _typed(key, value):
    return _edit("config.json", lambda text: json.dumps({**json.loads(text), key: value}))


BAD_SOURCES = {
    "truncated weights": (_truncated, "the file is damaged"),
    "other architecture's weights": (_other_weights, "has shape"),
    "mixed config": (_segmentation_config, "missing tensor"),
    "config.json cut short": (_edit("config.json", lambda t: t[: len(t) // 2]), "config.json"),
    "config.json a list": (_edit("config.json", lambda t: "[1, 2]"), "expected a JSON object"),
    "config.json wrong type": (_typed("hidden_size", "32"), "hidden_size"),
    "preprocessor config cut short": (
        _edit("preprocessor_config.json", lambda t: t[: len(t) // 2]),
        "preprocessor_config.json",
    ),
    "preprocessor config wrong type": (
        _edit("preprocessor_config.json", lambda t: json.dumps({**json.loads(t), "size": "big"})),
        "size",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_SOURCES))
def test_bad_source_is_one_line_and_writes_nothing(sources, tmp_path, capsys, kind):
    damage, match = BAD_SOURCES[kind]
    source = tmp_path / "src"
    shutil.copytree(sources[0], source)
    damage(sources[0], source)
    capsys.readouterr()  # transformers' progress bar
    assert convert_main(["--hf-path", str(source), "--mlx-path", str(tmp_path / "out" / "mlx")]) == 2
    assert match in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_model_ids_that_look_like_paths(sources, tmp_path, monkeypatch, capsys):
    """ "./missing-dir" is a missing folder (no hub look-up); "org/name" is a folder where one exists."""
    monkeypatch.chdir(tmp_path)
    assert convert_main(["--hf-path", "./missing-dir", "--mlx-path", "out"]) == 2
    assert "no such directory: ./missing-dir" in one_error_line(capsys.readouterr().err)
    shutil.copytree(sources[0], tmp_path / "org" / "name")
    assert convert_main(["--hf-path", "org/name", "--mlx-path", "out"]) == 0
    np.testing.assert_array_equal(depth(dpt_mlx.load_model("out")), depth(dpt_mlx.load_model(sources[0])))

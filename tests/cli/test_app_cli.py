"""The app command's own behaviour, without a browser: ``dpt-mlx app`` reaches it, bad options and a
missing gradio are one-line errors with status 2, a taken port too, and SIGTERM stops a serving app
with status 143, its temporary folder removed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpt_mlx.cli.app import main
from dpt_mlx.generate import main as generate


def test_dpt_mlx_app_is_the_app_command(capsys):
    with pytest.raises(SystemExit) as e:
        generate(["app", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--port" in out and "--share" in out and "127.0.0.1" in out
    with pytest.raises(SystemExit) as e:  # anything else is still the predict command
        generate(["--help"])
    assert e.value.code == 0 and "--image" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [["--port", "0"], ["--port", "70000"], ["--port", "http"], ["--colormap", "jet"]])
def test_bad_options_are_usage_errors(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(bad)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "error:" in err


def test_without_gradio_it_says_how_to_install(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == 'error: the app needs gradio: pip install "dpt_mlx[app]"'


def _start(args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "dpt_mlx.app", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _stop(process) -> tuple[str, str]:
    try:
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=30)


@pytest.mark.timeout(180)
def test_a_taken_port_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = _start(["--port", str(port), "--output-dir", str(tmp_path)])
        out, err = _stop(process)
    assert process.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: cannot serve on 127.0.0.1:{port}")


@pytest.mark.timeout(180)
def test_sigterm_stops_it_and_removes_its_temporary_folder(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = _start(["--port", str(port)], env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        deadline = time.monotonic() + 120
        line = process.stdout.readline()  # "dpt_mlx app on URL (files in DIR); Ctrl-C stops it"
        while not line and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            line = process.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+/) \(files in (.+)\)", line)
        assert found, line + process.stderr.read() if process.poll() is not None else line
        folder = Path(found.group(2))
        assert folder.is_dir() and folder.parent == tmp_path
        process.send_signal(signal.SIGTERM)
        out, err = _stop(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == 143
    assert err.strip().splitlines()[-1] == "error: terminated by SIGTERM (the app stopped)"
    assert not folder.exists()

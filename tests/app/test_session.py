"""The app's session without a browser: MLX runs on the session's one thread whatever thread the web server
calls from, the process ends cleanly after runs from server threads, a stopped session refuses work,
and runs never write into an earlier app's folders."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from dpt_mlx.app.session import Session, Settings
from dpt_mlx.errors import UsageError


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.timeout(120)
def test_mlx_runs_on_one_thread_whatever_thread_calls(tiny_dpt_dir, photo, tmp_path, monkeypatch):
    from dpt_mlx.predictor import Predictor

    threads = []
    forward = Predictor.forward

    def recording(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "forward", recording)
    session = Session(tmp_path / "out")
    try:
        with ThreadPoolExecutor(3) as server:  # as a web server's worker threads
            runs = [server.submit(session.run, str(tiny_dpt_dir), [str(photo)], Settings()) for _ in range(4)]
            results = [run.result(timeout=60) for run in runs]
    finally:
        session.close()
    assert all(len(done) == 1 and not notes for done, notes in results)
    assert threads == ["dpt-mlx-model"] * 4
    with pytest.raises(UsageError, match="stopping"):
        session.run(str(tiny_dpt_dir), [str(photo)], Settings())
    session.close()  # twice is fine


@pytest.mark.timeout(120)
def test_runs_take_new_folders_beside_an_earlier_apps(tiny_dpt_dir, photo, tmp_path):
    root = tmp_path / "out"
    (root / "run-0001" / "1").mkdir(parents=True)
    earlier = root / "run-0001" / "1" / "photo_depth.png"
    earlier.write_bytes(b"an earlier app's file")
    (root / "run-0002").mkdir()
    session = Session(root)
    try:
        done, notes = session.run(str(tiny_dpt_dir), [str(photo)], Settings())
    finally:
        session.close()
    assert not notes and done[0].file("png") == root / "run-0003" / "1" / "photo_depth.png"
    assert earlier.read_bytes() == b"an earlier app's file"


SERVER = """
import sys
from concurrent.futures import ThreadPoolExecutor
from dpt_mlx.app.session import Session, Settings

checkpoint, photo, out = sys.argv[1:]
session = Session(out)
with ThreadPoolExecutor(4) as server:
    for _ in range(3):
        done, notes = server.submit(session.run, checkpoint, [photo], Settings()).result()
        assert done and not notes, notes
session.close()
sys.exit(143)
"""


@pytest.mark.timeout(300)
def test_the_process_ends_cleanly_after_runs_from_server_threads(tiny_dpt_dir, photo, tmp_path):
    """MLX keeps streams per thread; threads that used it and were left running made the process abort
    (status 134, 'terminate called without an active exception') in most exits."""
    for attempt in range(3):
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SERVER), str(tiny_dpt_dir), str(photo), tmp_path / f"{attempt}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 143, out.stderr[-2000:]
        assert "terminate called" not in out.stderr


@pytest.mark.timeout(180)
def test_normals_and_dense_checkpoints(photo, tmp_path):
    """A normals checkpoint gives the normals picture; a dense one depth (metric: its mesh, measuring),
    normals and the class map with its legend, each file as the command line names it."""
    import transformers
    from model_configs import tipsv2_reference

    from dpt_mlx.processing.tipsv2_processor import Tipsv2DptImageProcessor

    made = {}
    for name, cls in (
        ("normals", transformers.Tipsv2DptForNormalEstimation),
        ("dense", transformers.Tipsv2DptForDensePrediction),
    ):
        tipsv2_reference(cls, seed=2).save_pretrained(tmp_path / name)
        Tipsv2DptImageProcessor(size={"height": 56, "width": 56}).save_pretrained(tmp_path / name)
        made[name] = str(tmp_path / name)
    session = Session(tmp_path / "out")
    try:
        (normals,), notes = session.run(made["normals"], [str(photo)], Settings())
        assert not notes and normals.task == "normals" and normals.values is None and not normals.legend
        assert [k for k, _ in normals.files] == ["png", "npy"]
        assert normals.file("png", "normals").name == "photo_normals.png" and normals.file("png", "depth") is None
        (dense,), notes = session.run(made["dense"], [str(photo)], Settings())
    finally:
        session.close()
    assert not notes and dense.task == "dense" and dense.metric and dense.legend
    assert dense.view == dense.file("glb", "depth") and dense.view.name == "photo_mesh.glb"
    assert dense.file("png", "normals").name == "photo_normals.png"
    assert dense.file("overlay", "segmentation").name == "photo_seg_overlay.png"
    assert np.array_equal(dense.values, np.load(dense.file("npy", "depth")))
    shares = sum(share for _, _, share, _ in dense.legend)
    assert abs(shares - 1) < 1e-6


@pytest.mark.timeout(180)
def test_canopy_heights_get_a_relief_not_a_camera(photo, tmp_path):
    """CHMv2's heights are seen from above: no point cloud, mesh or measuring (the command line refuses
    them too), a relief with the tallest raised, and the page says why."""
    from model_configs import chmv2_config, chmv2_reference

    from dpt_mlx.app.ui import _camera_text

    chmv2_reference(chmv2_config()).save_pretrained(tmp_path / "chm")
    session = Session(tmp_path / "out")
    try:
        (result,), notes = session.run(str(tmp_path / "chm"), [str(photo)], Settings(metric=True))
    finally:
        session.close()
    assert not notes and [k for k, _ in result.files] == ["png", "png16", "npy", "exr"]
    assert not result.metric and result.relief and result.camera is None
    assert result.view is not None and result.view.name == "photo_relief.glb"
    assert "seen from above" in _camera_text(result) and "canopy height" in _camera_text(result)
    with pytest.raises(UsageError, match="metric"):
        from dpt_mlx.app.session import measure

        measure(result, (0, 0), (1, 1))

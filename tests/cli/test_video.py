"""The command line's --video path: mp4 / npz / png16 outputs, streaming, --stabilize, interruption, errors.

Clips are encoded here with PyAV; the checkpoint is a tiny random transformers DPT saved in tmp_path.
"""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
from PIL import Image
from videos import decode, encode, leftovers, moving, run

from dpt_mlx.cli.predict import main
from dpt_mlx.pipelines import load_predictor
from dpt_mlx.processing import video, visualize, writers


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return encode(tmp_path_factory.mktemp("clip") / "walk.mp4", moving())


def test_mp4_frames_size_rate_and_colours(video_ckpt, clip, tmp_path):
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", tmp_path, "-b", "4", "-c", "turbo") == 0
    out, rate = decode(tmp_path / "walk_depth.mp4")
    frames, in_rate = decode(clip)
    assert len(out) == len(frames) == 24 and rate == in_rate == 12
    assert out[0].shape == frames[0].shape == (48, 64, 3)
    predictor = load_predictor(video_ckpt["depth"])
    for k in (0, 11, 23):
        depth = predictor.predict([Image.fromarray(frames[k])])[0]
        want = np.asarray(visualize.colorize_depth(depth, "turbo"))
        # yuv420p halves the colour resolution: compare with the picture after that conversion alone
        want = av.VideoFrame.from_ndarray(want, format="rgb24").reformat(format="yuv420p").to_ndarray(format="rgb24")
        assert np.abs(out[k].astype(np.float64) - want).mean() < 6  # then H.264 at crf 18
    assert leftovers(tmp_path) == []


def test_npz_and_png16_match_the_image_path(video_ckpt, clip, tmp_path):
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", tmp_path, "-f", "npz,png16", "-b", "3") == 0
    assert not (tmp_path / "walk_depth.mp4").exists()
    frames, _ = decode(clip)
    want = load_predictor(video_ckpt["depth"]).predict([Image.fromarray(f) for f in frames], batch_size=3)
    data = np.load(tmp_path / "walk_depth.npz")
    assert data["depth"].shape == (24, 48, 64) and data["depth"].dtype == np.float32
    np.testing.assert_allclose(data["times"], np.arange(24) / 12, atol=1e-6)
    np.testing.assert_allclose(data["depth"], np.stack(want), rtol=1e-5, atol=1e-5)
    names = sorted(os.listdir(tmp_path / "walk_depth16"))
    assert names == [f"frame_{k:06d}.png" for k in range(24)]
    png = Image.open(tmp_path / "walk_depth16" / "frame_000005.png")
    assert png.mode == "I;16" and png.size == (64, 48)
    low, high = float(png.text["depth_min"]), float(png.text["depth_max"])
    back = visualize.uint16_to_depth(np.asarray(png), low, high)
    assert np.abs(back - want[5]).max() <= (high - low) / 131070 + 1e-5
    assert leftovers(tmp_path) == []


def test_odd_size_is_padded_to_even(video_ckpt, tmp_path):
    frames = [np.pad(f, ((0, 2), (0, 2), (0, 0)), mode="edge")[:49, :65] for f in moving(6)]
    path = tmp_path / "odd.mkv"
    container = av.open(str(path), "w")  # odd sides: a codec without yuv420p's even-size rule
    stream = container.add_stream("ffv1", rate=12)
    stream.height, stream.width, stream.pix_fmt = 49, 65, "bgr0"
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="bgr0")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    assert run("--video", path, "-m", video_ckpt["depth"], "-d", tmp_path, "-f", "mp4,npz") == 0
    out, _ = decode(tmp_path / "odd_depth.mp4")
    assert len(out) == 6 and out[0].shape == (50, 66, 3)
    assert np.load(tmp_path / "odd_depth.npz")["depth"].shape == (6, 49, 65)


def test_existing_output_and_overwrite(video_ckpt, clip, tmp_path):
    (tmp_path / "walk_depth.mp4").write_bytes(b"old")
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", tmp_path) == 2
    assert (tmp_path / "walk_depth.mp4").read_bytes() == b"old"
    (tmp_path / "walk_depth16").mkdir()
    (tmp_path / "walk_depth16" / "stale.png").write_bytes(b"x")
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", tmp_path, "-f", "mp4,png16", "--overwrite") == 0
    assert len(decode(tmp_path / "walk_depth.mp4")[0]) == 24
    assert len(os.listdir(tmp_path / "walk_depth16")) == 24
    assert leftovers(tmp_path) == []


def test_interrupt_leaves_nothing(video_ckpt, clip, tmp_path, monkeypatch, capsys):
    calls = []
    forward = writers.Mp4Output.write

    def write(self, depth, seconds):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        forward(self, depth, seconds)

    monkeypatch.setattr(writers.Mp4Output, "write", write)
    status = run("--video", clip, "-m", video_ckpt["depth"], "-d", tmp_path, "-f", "mp4,npz,png16", "-b", "2")
    assert status == 130 and len(calls) == 10
    assert os.listdir(tmp_path) == []
    assert "interrupted" in capsys.readouterr().err


def _flicker_of(path):
    frames, _ = decode(path)
    return video.flicker(f[..., 0] / 255.0 for f in frames)


def test_stabilize_lowers_flicker_on_a_static_noisy_clip(video_ckpt, tmp_path, monkeypatch):
    """A still, noisy scene with a light flashing in one corner: per-frame normalisation rescales the
    whole map with every flash, the stabilised video keeps one range. Measured on the frames handed
    to the encoder: H.264's own rounding (a few levels, not the same from run to run) would drown
    the depth's flicker on a clip this small."""
    rng = np.random.default_rng(0)
    base = moving(1)[0].astype(np.float64)
    frames = [np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8) for _ in range(24)]
    for frame in frames[1::2]:  # a light flashing in a corner moves the depth's per-frame range
        frame[:12, :12] = 255
    path = encode(tmp_path / "still.mp4", frames)
    encoded, write = [], video.VideoWriter.write

    def recording(self, rgb, *args, **kwargs):
        encoded.append(np.array(rgb[..., 0], dtype=np.float64) / 255.0)
        return write(self, rgb, *args, **kwargs)

    monkeypatch.setattr(video.VideoWriter, "write", recording)
    flicker = {}
    for name, extra in (("plain", []), ("steady", ["--stabilize"])):
        encoded.clear()
        assert run("--video", path, "-m", video_ckpt["depth"], "-d", tmp_path / name, "-c", "gray", *extra) == 0
        assert len(encoded) == len(decode(tmp_path / name / "still_depth.mp4")[0]) == 24
        flicker[name] = video.flicker(encoded)
    assert flicker["plain"] > 0.01, flicker  # the per-frame normalisation flickers visibly
    assert flicker["steady"] < 0.8 * flicker["plain"], flicker


def test_stabilizer_undoes_scale_and_shift():
    rng = np.random.default_rng(1)
    depth = rng.random((20, 30)).astype(np.float32)
    stabilizer = video.Stabilizer(warmup=2)
    units = []
    for s, t in ((1, 0), (3, 5), (0.5, -2), (2, 1)):
        units += stabilizer.push(depth * s + t)
    units += stabilizer.flush()
    assert len(units) == 4
    for unit in units[1:]:
        np.testing.assert_allclose(unit, units[0], atol=1e-4)
    assert video.flicker(units) < 1e-4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image", "x.jpg"], "--video cannot be combined with --image"),
        (["-f", "png"], "not a video format"),
        (["--overlay"], "--overlay is not supported with --video"),
        (["--image-list", "list.txt"], "--video cannot be combined with --image, --input-dir or --image-list"),
        (["--recursive"], "--recursive is not supported with --video"),
        (["--fov", "60"], "--fov is not supported with --video"),
    ],
)
def test_usage_errors(video_ckpt, clip, tmp_path, capsys, extra, message):
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert os.listdir(tmp_path) == []


def test_segmentation_model_is_a_usage_error(video_ckpt, clip, tmp_path, capsys):
    assert run("--video", clip, "-m", video_ckpt["seg"], "-d", tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a depth model" in err[0]
    assert os.listdir(tmp_path) == []


def test_video_formats_are_for_video_only(video_ckpt, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(moving(1)[0]).save(image)
    with pytest.raises(SystemExit) as e:
        main(["--image", str(image), "-m", video_ckpt["depth"], "-f", "mp4"])
    assert e.value.code == 2


def test_without_pyav_one_line(video_ckpt, clip, tmp_path, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "dpt_mlx[video]"' in err[0]

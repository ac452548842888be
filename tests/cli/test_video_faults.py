"""--video against what phones, editors and broken copies do to videos: display rotation, variable
frame rates, audio, truncated / corrupt / empty files, resolution changes, killed and interrupted runs,
stale temporary folders, two runs into one output, unwritable output folders, non-ASCII names.

Clips are made here with PyAV; the checkpoint is the tiny random DPT of test_video.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from videos import decode, encode, leftovers, moving, run

from dpt_mlx.io import files
from dpt_mlx.pipelines import load_predictor
from dpt_mlx.processing import video, visualize

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# Clips


def scene(n=6, height=128, width=64):
    """Upright portrait frames: nothing in them is symmetric, so a turned or mirrored frame differs."""
    return moving(n, width=width, height=height)


def stored_for_display(upright, degrees=0, hflip=False, vflip=False):
    """The frame a camera stores so that a player, applying the display matrix PyAV writes for
    (degrees counter-clockwise, then the mirror), shows ``upright``."""
    if hflip:
        return np.ascontiguousarray(upright[:, ::-1])
    if vflip:
        return np.ascontiguousarray(upright[::-1])
    return np.ascontiguousarray(np.rot90(upright, -(degrees // 90)))


def encode_rotated(path, frames, degrees=0, hflip=False, vflip=False, fps=12):
    """Upright ``frames`` stored turned, with a display matrix that turns them back (crf 1)."""
    stored = [stored_for_display(f, degrees, hflip, vflip) for f in frames]
    return encode(path, stored, fps, rotation=(degrees, hflip, vflip))


def encode_vfr(path, gaps_ms=(33, 100), n=12, audio="aac", fmt=None):
    """Frames ``gaps_ms`` apart in turn (a 1 ms time base), with a tone in ``audio`` (or none) as long as
    the video. Returns the frames' times in seconds."""
    container = av.open(str(path), "w", format=fmt)
    stream = container.add_stream("libx264", rate=15)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.codec_context.time_base = Fraction(1, 1000)
    sound = container.add_stream(audio, rate=16000 if audio != "pcm_mulaw" else 8000, layout="mono") if audio else None
    times, ms = [], 0
    for i, frame in enumerate(moving(n)):
        picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
        picture.pts, picture.time_base = ms, Fraction(1, 1000)
        times.append(ms / 1000)
        for packet in stream.encode(picture):
            container.mux(packet)
        ms += gaps_ms[i % len(gaps_ms)]
    for packet in stream.encode():
        container.mux(packet)
    if sound:
        rate = sound.codec_context.sample_rate
        total, step = rate * ms // 1000, 1024
        tone = (np.sin(np.arange(total) * 2 * np.pi * 440 / rate) * 8000).astype(np.int16)
        for pos in range(0, total, step):
            chunk = av.AudioFrame.from_ndarray(tone[None, pos : pos + step], format="s16", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = rate, pos, Fraction(1, rate)
            for packet in sound.encode(chunk):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
    container.close()
    return times


def noisy(n=24, height=48, width=64):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def encode_with(path, frames, fps=12, **options):
    return encode(path, frames, fps, options)


def encode_sizes(path, sizes, per_size=6):
    """One MPEG-TS H.264 stream whose resolution changes: a fresh encoder for each (width, height)."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=12)
    stream.width, stream.height, stream.pix_fmt = *sizes[0], "yuv420p"
    pts = 0
    for width, height in sizes:
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
        encoder.time_base, encoder.framerate = Fraction(1, 12), Fraction(12)
        for frame in moving(per_size, width=width, height=height):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, pts = pts, pts + 1
            for packet in encoder.encode(picture):
                packet.stream = stream
                container.mux(packet)
        for packet in encoder.encode(None):
            packet.stream = stream
            container.mux(packet)
    container.close()
    return path


def cut(path, share):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * share)])
    return path


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ----------------------------------------------------------------------------------------------
# Display rotation


@pytest.mark.parametrize(
    "degrees, hflip, vflip",
    [(-90, False, False), (90, False, False), (180, False, False), (0, True, False), (0, False, True)],
)
def test_reader_turns_frames_as_a_player_shows_them(tmp_path, degrees, hflip, vflip):
    frames = scene(3)
    path = encode_rotated(tmp_path / "turned.mp4", frames, degrees, hflip, vflip)
    with av.open(str(path)) as container:  # the clip really carries the display matrix
        first = next(container.decode(video=0))
        assert (first.height, first.width) == stored_for_display(frames[0], degrees, hflip, vflip).shape[:2]
        assert first.rotation == {-90: -90, 90: 90, 180: -180, 0: -180 if hflip else 0}[degrees]
        assert any(data.type.name == "DISPLAYMATRIX" for data in first.side_data)
    with video.VideoReader(path) as reader:
        assert reader.size == (128, 64)
        got = [np.asarray(image) for image, _ in reader]
    assert len(got) == 3
    for image, want in zip(got, frames):
        assert image.shape == want.shape
        assert np.abs(image.astype(np.float64) - want).mean() < 4  # yuv420p's colour halving only


def test_portrait_phone_clip_is_predicted_and_written_upright(video_ckpt, tmp_path, capsys):
    frames = scene(6)
    path = encode_rotated(tmp_path / "phone.mp4", frames, -90)  # stored 128x64, plays as 64x128
    out = tmp_path / "out"
    assert run("--video", path, "-m", video_ckpt["depth"], "-d", out, "-f", "mp4,npz,png16", "-c", "turbo") == 0
    assert "turned 90 degrees clockwise" in capsys.readouterr().out
    with video.VideoReader(path) as reader:
        upright = [image for image, _ in reader]
    want = load_predictor(video_ckpt["depth"]).predict(upright)
    depth = np.load(out / "phone_depth.npz")["depth"]
    assert depth.shape == (6, 128, 64)
    np.testing.assert_allclose(depth, np.stack(want), rtol=1e-5, atol=1e-5)
    assert Image.open(out / "phone_depth16" / "frame_000000.png").size == (64, 128)
    with av.open(str(out / "phone_depth.mp4")) as container:
        written = list(container.decode(video=0))
    assert len(written) == 6 and all(f.rotation == 0 for f in written)  # upright frames, no display matrix
    for k in (0, 5):
        picture = written[k].to_ndarray(format="rgb24")
        assert picture.shape == (128, 64, 3)
        colours = np.asarray(visualize.colorize_depth(want[k], "turbo"))
        colours = (
            av.VideoFrame.from_ndarray(colours, format="rgb24").reformat(format="yuv420p").to_ndarray(format="rgb24")
        )
        assert np.abs(picture.astype(np.float64) - colours).mean() < 6
    assert leftovers(out) == []


def test_upright_handles_every_quarter_turn_and_refuses_others():
    rgb = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    assert np.array_equal(video.upright(rgb, 0, None), rgb)
    assert np.array_equal(video.upright(rgb, -90, None), np.rot90(rgb, -1))  # the phone's portrait
    assert np.array_equal(video.upright(rgb, 270, None), np.rot90(rgb, -1))
    assert np.array_equal(video.upright(rgb, 90, None), np.rot90(rgb, 1))
    assert np.array_equal(video.upright(rgb, -180, np.array([-1, 0, 0, 0, -1, 0, 0, 0, 1])), rgb[::-1, ::-1])
    with pytest.raises(video.UsageError, match="rotated by 315 degrees"):
        video.upright(rgb, 45, None)


# ----------------------------------------------------------------------------------------------
# Timing and audio


def test_variable_frame_rate_keeps_each_frame_time(video_ckpt, tmp_path):
    times = encode_vfr(tmp_path / "vfr.mp4", audio=None)
    assert np.diff(times).round(3).tolist()[:2] == [0.033, 0.1]
    assert run("--video", tmp_path / "vfr.mp4", "-m", video_ckpt["depth"], "-d", tmp_path / "out", "-f", "mp4,npz") == 0
    with av.open(str(tmp_path / "out" / "vfr_depth.mp4")) as container:
        written = [frame.time for frame in container.decode(video=0)]
    assert len(written) == 12
    np.testing.assert_allclose(written, times, atol=0.0005)  # to the millisecond: frame 1 at 0.033, 2 at 0.133
    np.testing.assert_allclose(np.load(tmp_path / "out" / "vfr_depth.npz")["times"], times, atol=1e-6)


def audio_packets(path):
    """(codec, duration in seconds, [(time in seconds, bytes)]) of a file's first audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        packets = [(round(float(p.pts * p.time_base), 6), bytes(p)) for p in container.demux(stream) if p.size]
        return stream.codec_context.name, float(stream.duration * stream.time_base), packets


def test_audio_is_copied_as_it_is_unless_no_audio(video_ckpt, tmp_path):
    encode_vfr(tmp_path / "talk.mp4")
    assert run("--video", tmp_path / "talk.mp4", "-m", video_ckpt["depth"], "-d", tmp_path / "out") == 0
    codec, duration, packets = audio_packets(tmp_path / "out" / "talk_depth.mp4")
    source = audio_packets(tmp_path / "talk.mp4")
    assert codec == "aac" and len(packets) > 5
    assert (codec, duration, packets) == source  # the same packets at the same times: remuxed, not re-encoded
    assert len(decode(tmp_path / "out" / "talk_depth.mp4")[0]) == 12
    assert run("--video", tmp_path / "talk.mp4", "-m", video_ckpt["depth"], "-d", tmp_path / "mute", "--no-audio") == 0
    with av.open(str(tmp_path / "mute" / "talk_depth.mp4")) as container:
        assert not container.streams.audio and len(list(container.decode(video=0))) == 12
    assert leftovers(tmp_path / "out") == leftovers(tmp_path / "mute") == []


def test_audio_an_mp4_cannot_hold_is_left_out_with_a_note(video_ckpt, tmp_path, capsys):
    encode_vfr(tmp_path / "phone.mov", audio="pcm_mulaw")
    with av.open(str(tmp_path / "phone.mov")) as container:
        assert container.streams.audio[0].codec_context.name == "pcm_mulaw"
    assert run("--video", tmp_path / "phone.mov", "-m", video_ckpt["depth"], "-d", tmp_path / "out") == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "without audio" in line]
    assert notes == ["phone_depth.mp4 written without audio: mp4 cannot hold its pcm_mulaw audio"]
    with av.open(str(tmp_path / "out" / "phone_depth.mp4")) as container:
        assert not container.streams.audio and len(list(container.decode(video=0))) == 12
    assert leftovers(tmp_path / "out") == []


def test_no_audio_is_for_video_only(video_ckpt, tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(moving(1)[0]).save(image)
    with pytest.raises(SystemExit) as e:
        run("--image", image, "-m", video_ckpt["depth"], "--no-audio")
    assert e.value.code == 2


# ----------------------------------------------------------------------------------------------
# Broken videos: one line, exit 2, nothing written


def _codecless(path):
    """An mp4 cut inside its index so that the video stream is left without a codec."""
    encode_rotated(path, scene(12), -90)
    data = path.read_bytes()
    for end in range(len(data) - 1, len(data) // 2, -1):
        path.write_bytes(data[:end])
        try:
            with av.open(str(path)) as container:
                if container.streams.video and container.streams.video[0].codec_context is None:
                    return path
        except av.FFmpegError:
            continue
    raise AssertionError("no cut leaves a codec-less stream")


def _zero_frames(path):
    """A video track with no frames beside an audio track."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=12)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    sound = container.add_stream("aac", rate=16000, layout="mono")
    for pos in range(0, 16000, 1024):
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts = 16000, pos
        for packet in sound.encode(chunk):
            container.mux(packet)
    for packet in sound.encode():
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    with av.open(str(path)) as check:
        assert check.streams.video[0].codec_context is not None
    return path


def _corrupt_middle(path):
    encode_with(path, noisy())
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(3).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


BROKEN = {
    "truncated": lambda p: cut(encode(p.with_suffix(".mp4"), moving()), 2 / 3),
    "truncated, codec lost": lambda p: _codecless(p.with_suffix(".mp4")),
    "truncated, index first": lambda p: cut(encode_with(p.with_suffix(".mp4"), noisy(), movflags="faststart"), 2 / 3),
    "truncated mkv": lambda p: cut(encode_with(p.with_suffix(".mkv"), noisy()), 2 / 3),
    "corrupt in the middle": lambda p: _corrupt_middle(p.with_suffix(".mp4")),
    "random bytes": lambda p: p.with_suffix(".mp4").write_bytes(np.random.default_rng(1).bytes(5000)) and None,
    "text named .mp4": lambda p: p.with_suffix(".mp4").write_text("not a video\n") and None,
    "empty file": lambda p: p.with_suffix(".mp4").write_bytes(b"") and None,
    "no frames": lambda p: _zero_frames(p.with_suffix(".mkv")),
    "a folder": lambda p: p.with_suffix(".mp4").mkdir(),
}
MESSAGES = {
    "truncated, index first": "damaged or truncated: a corrupt packet",
    "truncated mkv": "stops at",
    "corrupt in the middle": "is damaged or truncated",  # a corrupt frame, or the threaded decoder's error
    "truncated, codec lost": "no decodable codec",
    "no frames": "has no frames",
    "a folder": "is a folder, not a video file",
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_video_is_one_line_and_nothing_written(video_ckpt, tmp_path, capsys, kind):
    source = tmp_path / "in"
    source.mkdir()
    BROKEN[kind](source / "clip")
    (path,) = source.iterdir()
    out = tmp_path / "out"
    status = run("--video", path, "-m", video_ckpt["depth"], "-d", out, "-f", "mp4,npz,png16")
    line = one_error_line(capsys)
    assert status == 2
    assert path.name in line and MESSAGES.get(kind, "cannot read video") in line
    assert not out.exists()  # not even the output folder
    assert sorted(os.listdir(source)) == [path.name]


@pytest.mark.parametrize("name, first", [("late.mkv", 24), ("late.mp4", 24), ("whole.mkv", 0)])
def test_whole_videos_that_start_late_are_not_taken_for_truncated(video_ckpt, tmp_path, name, first):
    """A stream whose first frame is at 2 s: its stated end (Matroska's DURATION tag is where the track
    ends, mp4's duration is counted from the first frame) is met."""
    container = av.open(str(tmp_path / name), "w")
    stream = container.add_stream("libx264", rate=12)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i, frame in enumerate(moving(12)):
        picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
        picture.pts, picture.time_base = first + i, Fraction(1, 12)
        for packet in stream.encode(picture):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    assert run("--video", tmp_path / name, "-m", video_ckpt["depth"], "-d", tmp_path / "out", "-f", "npz") == 0
    times = np.load(tmp_path / "out" / f"{Path(name).stem}_depth.npz")["times"]
    np.testing.assert_allclose(times, (first + np.arange(12)) / 12, atol=1e-3)


def test_resolution_change_of_one_shape_is_scaled_to_the_first(video_ckpt, tmp_path, capsys):
    path = encode_sizes(tmp_path / "stream.ts", [(64, 48), (32, 24)])
    assert [(f.shape[1], f.shape[0]) for f in decode(path)[0]] == [(64, 48)] * 6 + [(32, 24)] * 6
    assert run("--video", path, "-m", video_ckpt["depth"], "-d", tmp_path / "out", "-f", "mp4,npz") == 0
    assert "6 frames scaled to 64x48" in capsys.readouterr().out
    assert np.load(tmp_path / "out" / "stream_depth.npz")["depth"].shape == (12, 48, 64)
    assert [f.shape for f in decode(tmp_path / "out" / "stream_depth.mp4")[0]] == [(48, 64, 3)] * 12


def test_resolution_change_of_shape_is_refused(video_ckpt, tmp_path, capsys):
    path = encode_sizes(tmp_path / "stream.ts", [(64, 48), (48, 48)])
    status = run("--video", path, "-m", video_ckpt["depth"], "-d", tmp_path / "out", "-f", "mp4,npz,png16")
    line = one_error_line(capsys)
    assert status == 2 and "changes shape at frame 6: 48x48 after 64x48" in line
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Killed, interrupted and concurrent runs; stale temporary folders


def test_stale_temp_folders_of_the_targets_are_removed(video_ckpt, clip_dir):
    clip, out = clip_dir
    out.mkdir()
    old = time.time() - 3600
    stale = out / ".walk_depth16.k3j_x9a2.tmp"
    young = out / ".walk_depth16.abcd1234.tmp"  # a run may still be writing it
    other = out / ".other_depth16.abcd1234.tmp"  # not a target of this run
    for folder in (stale, young, other):
        folder.mkdir()
        (folder / "frame_000000.png").write_bytes(b"x")
    for folder in (stale, other):
        os.utime(folder, (old, old))
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", out, "-f", "png16") == 0
    assert leftovers(out) == sorted([young.name, other.name])
    assert len(os.listdir(out / "walk_depth16")) == 24


def test_remove_stale_temps_takes_folders_but_not_links(tmp_path):
    old = time.time() - 3600
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.png").write_bytes(b"x")
    folder = tmp_path / ".a_depth16.k3j_x9a2.tmp"
    folder.mkdir()
    (folder / "frame_000000.png").write_bytes(b"x")
    link = tmp_path / ".a_depth16.zzzz9999.tmp"
    link.symlink_to(elsewhere, target_is_directory=True)
    for p in (folder, link):
        os.utime(p, (old, old), follow_symlinks=False)
    assert files.remove_stale_temps([tmp_path / "a_depth16"]) == 1
    assert not folder.exists() and link.is_symlink() and (elsewhere / "keep.png").exists()


@pytest.fixture
def clip_dir(tmp_path):
    return encode(tmp_path / "walk.mp4", moving()), tmp_path / "out"


def _start(args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "dpt_mlx.generate", *map(str, args)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_frames(out, process, deadline=90):
    """Until the run's hidden png16 folder holds a frame (the run is streaming)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert process.poll() is None, process.communicate()
        if out.exists():
            for name in os.listdir(out):
                if name.startswith(".walk_depth16.") and os.listdir(out / name):
                    return
        time.sleep(0.02)
    raise AssertionError("the run never started writing frames")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    return encode(tmp_path_factory.mktemp("long") / "walk.mp4", moving(600))


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_leaves_nothing(video_ckpt, long_clip, tmp_path, signum, status):
    out = tmp_path / "out"
    process = _start(["--video", long_clip, "-m", video_ckpt["depth"], "-d", out, "-f", "mp4,npz,png16", "-q"])
    try:
        _wait_for_frames(out, process)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == status, err
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert not out.exists()
    assert sorted(os.listdir(long_clip.parent)) == ["walk.mp4"]


def test_killed_run_leftovers_are_removed_by_the_next_run(video_ckpt, long_clip, tmp_path):
    out = tmp_path / "out"
    process = _start(["--video", long_clip, "-m", video_ckpt["depth"], "-d", out, "-f", "mp4,npz,png16", "-q"])
    try:
        _wait_for_frames(out, process)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        process.kill()
    left = leftovers(out)
    assert any(os.path.isdir(out / n) for n in left) and len(left) >= 3  # mp4, npz raw, png16 folder
    old = time.time() - 3600
    for name in left:
        os.utime(out / name, (old, old))
    clip = encode(tmp_path / "walk.mp4", moving())  # the same names, a short video
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", out, "-f", "mp4,npz,png16") == 0
    assert leftovers(out) == [] and sorted(os.listdir(out)) == ["walk_depth.mp4", "walk_depth.npz", "walk_depth16"]


def test_two_runs_into_one_output_one_wins(video_ckpt, clip_dir):
    clip, out = clip_dir
    runs = [_start(["--video", clip, "-m", video_ckpt["depth"], "-d", out, "-f", "mp4,npz,png16"]) for _ in range(2)]
    results = []
    try:
        for process in runs:
            _, err = process.communicate(timeout=120)
            results.append((process.returncode, err))
    finally:
        for process in runs:
            process.kill()
    assert sorted(status for status, _ in results) == [0, 2]
    (loser,) = [err for status, err in results if status == 2]
    lines = loser.strip().splitlines()
    assert len(lines) == 1 and ("appeared while this run was writing it" in lines[0] or "exists" in lines[0])
    assert len(decode(out / "walk_depth.mp4")[0]) == 24
    assert np.load(out / "walk_depth.npz")["depth"].shape == (24, 48, 64)
    assert len(os.listdir(out / "walk_depth16")) == 24 and leftovers(out) == []


def test_output_taken_meanwhile_publishes_none_of_the_others(video_ckpt, clip_dir, monkeypatch, capsys):
    clip, out = clip_dir
    real = files._publish_exclusive

    def another_run_first(tmp, target):
        if Path(target).suffix == ".npz":
            Path(target).write_bytes(b"another run's")
        real(tmp, target)

    monkeypatch.setattr(files, "_publish_exclusive", another_run_first)
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", out, "-f", "mp4,npz,png16") == 2
    line = one_error_line(capsys)
    assert "walk_depth.npz appeared while this run was writing it" in line
    assert os.listdir(out) == ["walk_depth.npz"] and (out / "walk_depth.npz").read_bytes() == b"another run's"


def test_unwritable_output_folder_is_one_line(video_ckpt, clip_dir, monkeypatch, capsys):
    clip, out = clip_dir
    import tempfile

    def refused(*args, dir=None, **kwargs):  # what a read-only folder answers (the tests may run as root)
        raise PermissionError(13, "Permission denied", os.path.join(dir, ".walk_depth.mp4.x1y2z3.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", out) == 2
    assert one_error_line(capsys) == f"error: cannot write in {out}: Permission denied"
    assert not out.exists()


def test_output_folder_that_is_a_file(video_ckpt, clip_dir, capsys):
    clip, out = clip_dir
    out.write_bytes(b"a file")
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", out) == 2
    assert "is a file, not a folder" in one_error_line(capsys)
    assert out.read_bytes() == b"a file"


def test_non_ascii_names(video_ckpt, tmp_path):
    clip = encode(tmp_path / "café видео 動画.mp4", moving(6))
    out = tmp_path / "выход"
    assert run("--video", clip, "-m", video_ckpt["depth"], "-d", out, "-f", "mp4,npz,png16") == 0
    assert sorted(os.listdir(out)) == [
        "café видео 動画_depth.mp4",
        "café видео 動画_depth.npz",
        "café видео 動画_depth16",
    ]
    assert len(decode(out / "café видео 動画_depth.mp4")[0]) == 6

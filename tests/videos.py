"""Clips for the video tests, encoded with PyAV, and running the command line on them."""

from __future__ import annotations

import os

import av
import numpy as np
import torch
import transformers
from helpers import TINY_DPT as TINY
from helpers import tiny_dpt

from dpt_mlx.cli.predict import main


def encode(path, frames, fps=12, options=None, rotation=None):
    """Frames ((H, W, 3) uint8) -> an H.264 video at ``fps``, nearly lossless (crf 1), in the container
    the suffix names; ``options`` for the muxer (``movflags``), ``rotation`` (degrees, hflip, vflip)
    the display matrix a player applies."""
    container = av.open(str(path), "w", options=options or {})
    stream = container.add_stream("libx264", rate=fps)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt, stream.options = "yuv420p", {"crf": "1"}
    if rotation:
        degrees, hflip, vflip = rotation
        stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def decode(path):
    """(frames as (H, W, 3) uint8, average rate) of a video."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], stream.average_rate


def moving(n=24, width=64, height=48):
    y, x = np.mgrid[:height, :width]
    return [
        np.stack([(x * 4 + i * 8) % 256, (y * 5 + i * 2) % 256, ((x + y + i * 3) * 2) % 256], -1).astype(np.uint8)
        for i in range(n)
    ]


def run(*argv):
    return main([str(a) for a in argv])


def leftovers(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith("."))


def video_checkpoints(root):
    """A tiny depth DPT (with its processor) and a 3-class segmentation DPT under ``root``: name -> path."""
    torch.manual_seed(0)
    out = {}
    depth = tiny_dpt(seed=1)
    with torch.no_grad():  # keep the depth above the head's final ReLU, so that it varies over the image
        depth.head.head[4].bias.fill_(1.0)
    depth.save_pretrained(str(root / "depth"))
    transformers.DPTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(str(root / "depth"))
    seg = transformers.DPTForSemanticSegmentation(transformers.DPTConfig(**TINY, num_labels=3))
    seg.save_pretrained(str(root / "seg"))
    out["depth"], out["seg"] = str(root / "depth"), str(root / "seg")
    return out

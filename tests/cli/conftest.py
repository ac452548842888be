"""Fixtures the command-line tests share."""

import pytest
from videos import video_checkpoints


@pytest.fixture(scope="session")
def video_ckpt(tmp_path_factory):
    """The video tests' checkpoints, built once: name ("depth", "seg") -> directory."""
    return video_checkpoints(tmp_path_factory.mktemp("video-ckpt"))

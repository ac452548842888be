"""Where a checkpoint lives: a local directory as it is, or a Hugging Face Hub repo id, downloaded
(or taken from the cache) with huggingface_hub."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import CheckpointError, first_line

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class HubOptions:
    """What huggingface_hub needs besides the repo id (as transformers' ``from_pretrained`` takes them)."""

    revision: str | None = None
    token: str | bool | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool = False


def is_repo_id(text: str) -> bool:
    return bool(REPO_ID.match(text)) and not text.startswith((".", "/", "~"))


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__


def resolve(path_or_repo_id, patterns=("*.json", "*.safetensors"), hub: HubOptions | None = None) -> Path:
    """A local directory as is; otherwise download (or reuse the cache of) a Hub repo's matching files."""
    path = Path(os.path.expanduser(str(path_or_repo_id)))
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if path.exists():
        raise CheckpointError(f"{text} is a file; pass the checkpoint directory that contains it")
    if not is_repo_id(text):
        raise CheckpointError(f"no such directory: {text}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text, allow_patterns=list(patterns), **asdict(hub or HubOptions())))
    except Exception as e:  # noqa: BLE001 - every hub failure becomes one line for the user
        raise CheckpointError(
            f"{text} is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({_reason(e)}); check the name and your network, or pass a local directory"
        ) from None


def resolve_file(path_or_repo_id, filename: str, hub: HubOptions | None = None) -> Path:
    """``filename`` of a local directory, a path to that file itself, or the file from a Hub repo."""
    source = os.fspath(path_or_repo_id)
    if os.path.isdir(source):
        path = Path(source) / filename
        if not path.is_file():
            raise CheckpointError(f"{source} has no {filename}; save one with save_pretrained or copy it from "
                                  "the model repo")
        return path
    if os.path.isfile(source):
        return Path(source)
    if not is_repo_id(source):
        raise CheckpointError(f"{source} is not a directory, a file or a Hugging Face Hub repo id")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, filename, **asdict(hub or HubOptions())))
    except Exception as e:  # noqa: BLE001 - network, authentication, missing repo or file
        raise CheckpointError(
            f"cannot get {filename} for {source!r} from the Hugging Face Hub ({_reason(e)}); "
            "check the repo id and your connection, or pass a local directory"
        ) from None

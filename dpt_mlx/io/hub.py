"""Where a checkpoint lives: a local directory as it is, or a Hugging Face Hub repo id, downloaded
(or taken from the cache) with huggingface_hub.

huggingface_hub waits for the Hub's answer to its first request without a time limit, so a network
that swallows packets would hang a command for minutes. The Hub is therefore asked first with a
timeout (``HF_HUB_ETAG_TIMEOUT`` seconds, default 10, as huggingface_hub's own metadata requests);
when it does not answer, or ``HF_HUB_OFFLINE`` is set, the local cache is used, as transformers does.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import CheckpointError, first_line

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
HUB_TIMEOUT = 10.0  # seconds for the Hub to answer, unless HF_HUB_ETAG_TIMEOUT says otherwise


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


def hub_timeout() -> float:
    """Seconds to wait for the Hub's first answer: ``HF_HUB_ETAG_TIMEOUT``, else HUB_TIMEOUT."""
    try:
        value = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_TIMEOUT)
    except ValueError:
        return HUB_TIMEOUT
    return value if value > 0 else HUB_TIMEOUT


def _unreachable(repo_id: str, hub: HubOptions) -> BaseException | None:
    """None when the Hub answers for ``repo_id`` within :func:`hub_timeout`, else why not (an answer
    that says the repo or revision does not exist, or needs a token, is raised as is)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().repo_info(repo_id, revision=hub.revision, token=hub.token, timeout=hub_timeout())
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status is not None and status < 500:
            raise  # the Hub answered: no such repo or revision, or no access
        return e
    except Exception as e:  # noqa: BLE001 - offline mode, timeouts, refused connections, proxies
        return e
    return None


def _why(problem: BaseException) -> str:
    """Why the Hub was not asked or did not answer, in words."""
    name = type(problem).__name__
    if name == "OfflineModeIsEnabled":
        return "offline mode: HF_HUB_OFFLINE is set"
    if "Timeout" in name or isinstance(problem, TimeoutError):
        return f"no answer within {hub_timeout():g} s; HF_HUB_ETAG_TIMEOUT sets the wait"
    return _reason(problem)


def _download(repo_id: str, patterns, hub: HubOptions) -> Path:
    """The repo's matching files: downloaded when the Hub answers in time, else from the local cache."""
    from huggingface_hub import snapshot_download

    options = asdict(hub)
    if not hub.local_files_only:
        problem = _unreachable(repo_id, hub)
        if problem is None:
            return Path(snapshot_download(repo_id=repo_id, allow_patterns=list(patterns), **options))
        options["local_files_only"] = True
        try:
            return Path(snapshot_download(repo_id=repo_id, allow_patterns=list(patterns), **options))
        except Exception:  # noqa: BLE001 - not in the cache: say why the Hub was not asked
            raise CheckpointError(
                f"{repo_id} is not a local directory and could not be fetched from the Hugging Face Hub "
                f"({_why(problem)}) and is not in the local cache; check the name and your network, or pass a "
                "local directory"
            ) from None
    return Path(snapshot_download(repo_id=repo_id, allow_patterns=list(patterns), **options))


def resolve(path_or_repo_id, patterns=("*.json", "*.safetensors"), hub: HubOptions | None = None) -> Path:
    """A local directory as is; otherwise download (or reuse the cache of) a Hub repo's matching files."""
    text = os.fspath(path_or_repo_id) if isinstance(path_or_repo_id, os.PathLike) else str(path_or_repo_id)
    if not text.strip():
        raise CheckpointError("the model name is empty; pass a checkpoint directory or a Hugging Face Hub repo id")
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{text} is a file; pass the checkpoint directory that contains it")
    if not is_repo_id(text):
        raise CheckpointError(f"no such directory: {text}")
    try:
        return _download(text, patterns, hub or HubOptions())
    except CheckpointError:
        raise
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
            raise CheckpointError(
                f"{source} has no {filename}; save one with save_pretrained or copy it from the model repo"
            )
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

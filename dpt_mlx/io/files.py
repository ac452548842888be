"""One way to write a file: to a temporary name beside it, then renamed into place.

An interrupted or failed write leaves no partial file under the final name (nor the temporary),
and a new file gets the usual permissions (0666 less the umask) rather than mkstemp's 0600.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def umask_mode(mode: int) -> int:
    """``mode`` less the process umask: what a plainly created file or directory would get."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _file_mode(path: Path) -> int:
    """The mode of the file being replaced, or what a new file gets."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return umask_mode(0o666)


def atomic_write(path: str | os.PathLike, write: Callable, text: bool = False) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it into place.

    The file object is binary, or text (UTF-8) with ``text=True``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as f:
            write(f)
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, content: str) -> None:
    """Write ``content`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(content), text=True)

"""One way to write a file: to a hidden temporary name beside it, then published under its name.

An interrupted or failed write leaves no partial file under the final name (nor the temporary),
and a new file gets the usual permissions (0666 less the umask) rather than mkstemp's 0600.

Publishing is publish-or-fail: with ``overwrite=False`` the finished temporary file is hard-linked
to its name, which fails with FileExistsError when the name exists at that moment (so two writers
can never both "create" one file), and the temporary name is then removed; with ``overwrite=True``
it is renamed over the name (``os.replace``). Where hard links are not supported (FAT, some
network file systems) the name is first reserved with ``O_CREAT | O_EXCL`` and the finished file
renamed over that reservation: still never a clobber, though for that instant a reader may see
an empty file.

A killed process (SIGKILL, a power cut) can leave its temporary ``.<name>.<random>.tmp`` behind (a
file, or a folder for outputs that are folders, as a video's png16 frames);
:func:`remove_stale_temps` removes those a later run finds beside the files it writes, once they
are old; :func:`temp_files` and :func:`remove_unchanged` let a run remove younger ones that nobody
touched while it ran.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"
STALE_SECONDS = 60.0  # a temporary file this old belongs to no live writer
UNCHANGED_SECONDS = 5.0  # a temporary file untouched this long, and all through a run, has no live writer
# errors of os.link that mean "this file system has no hard links", not "the name exists"
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}


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


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(errno.EEXIST, "appeared while this run was writing it", str(path))


def _publish_exclusive(tmp: str, path: Path) -> None:
    """Rename ``tmp`` to ``path`` only if ``path`` does not exist (FileExistsError otherwise)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except (OSError, AttributeError, NotImplementedError) as e:
        if isinstance(e, OSError) and e.errno not in _NO_LINKS:
            raise
        try:  # no hard links here: reserve the name, then replace the reservation
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise _exists_error(path) from None
        try:
            os.replace(tmp, path)
        except BaseException:
            os.unlink(path)
            raise
        return
    os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable, text: bool = False, overwrite: bool = True) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then publish it as ``path``.

    The file object is binary, or text (UTF-8) with ``text=True``. With ``overwrite=False`` an
    existing ``path`` is never replaced: FileExistsError if it exists when the file is published
    (the temporary file is removed either way).
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as f:
            write(f)
        os.chmod(tmp, _file_mode(path) if overwrite else umask_mode(0o666))
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_exclusive(tmp, path)
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise


def atomic_write_text(path: str | os.PathLike, content: str, overwrite: bool = True) -> None:
    """Write ``content`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(content), text=True, overwrite=overwrite)


def is_temp_of(name: str, target: str) -> bool:
    """Whether the file name ``name`` is a temporary file of :func:`atomic_write` for ``target``."""
    return name.startswith(f".{target}.") and name.endswith(TEMP_SUFFIX) and len(name) > len(target) + 2


def temp_entries(targets: Iterable[str | os.PathLike]) -> Iterator[os.DirEntry]:
    """The temporary files and folders (``.<name>.<random>.tmp``) beside ``targets``; each directory
    is listed once, and one that cannot be listed is passed over."""
    by_dir: dict[Path, set[str]] = {}
    for target in targets:
        target = Path(target)
        by_dir.setdefault(target.parent, set()).add(target.name)
    for directory, names in by_dir.items():
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith(".") or not entry.name.endswith(TEMP_SUFFIX):
                continue
            target = entry.name[1:-len(TEMP_SUFFIX)].rsplit(".", 1)[0]
            if target in names and is_temp_of(entry.name, target):
                yield entry


def remove_stale_temps(targets: Iterable[str | os.PathLike], older_than: float = STALE_SECONDS) -> int:
    """Remove the temporary files and folders that killed writers left for ``targets``; returns how many.

    Only ``.<name>.<random>.tmp`` entries of the given targets are touched, and only those not modified
    for ``older_than`` seconds (a younger one may belong to a writer still running; a folder's time is
    that of its last added or removed entry). A folder is removed with what is in it; links are never
    followed.
    """
    removed, now = 0, time.time()
    for entry in temp_entries(targets):
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime <= older_than:
                continue
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                continue
            removed += 1
        except OSError:
            pass
    return removed


def temp_files(targets) -> dict[str, tuple[int, int, int]]:
    """The temporary files (io/files.atomic_write's) beside ``targets``: path -> (inode, size, mtime_ns)."""
    found = {}
    for entry in temp_entries(targets):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        found[entry.path] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def remove_unchanged(before: dict[str, tuple[int, int, int]]) -> int:
    """Remove the temporary files of ``before`` that nobody touched since (a writer killed before this
    run started: a live one keeps writing) and not for UNCHANGED_SECONDS; returns how many."""
    removed, now = 0, time.time_ns()
    for path, signature in before.items():
        try:
            st = os.stat(path, follow_symlinks=False)
            if (st.st_ino, st.st_size, st.st_mtime_ns) == signature and now - st.st_mtime_ns > UNCHANGED_SECONDS * 1e9:
                os.unlink(path)
                removed += 1
        except OSError:
            pass
    return removed

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

A folder that must be published whole (a converted checkpoint, a training checkpoint) is written
beside its target and renamed in one step that never replaces what ``overwrite`` did not ask to
replace (:func:`publish_directory`: ``renameat2`` / ``renamex_np`` with their no-replace and
exchange flags, a plain rename where those are missing), under an ``flock`` on ``.<name>.lock``
(:func:`output_lock`) so that one writer at a time works on a target; :func:`signals_deferred`
keeps Ctrl-C and SIGTERM from splitting a pair of renames.

A killed process (SIGKILL, a power cut) can leave its temporary ``.<name>.<random>.tmp`` behind (a
file, or a folder for outputs that are folders, as a video's png16 frames);
:func:`remove_stale_temps` removes those a later run finds beside the files it writes, once they
are old; :func:`temp_files` and :func:`remove_unchanged` let a run remove younger ones that nobody
touched while it ran.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import DPTError

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


def temp_beside(target: str | os.PathLike) -> str:
    """A new, empty hidden temporary file beside ``target`` (``.<name>.<random>.tmp``), for a writer
    that fills it in its own way before :func:`publish`; its path."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    return tmp


def publish(tmp: str, target: str | os.PathLike, overwrite: bool) -> None:
    """Rename the finished temporary file ``tmp`` to ``target``: replacing it (and keeping its
    mode) with ``overwrite``, else only if the name is still free (FileExistsError otherwise)."""
    target = Path(target)
    os.chmod(tmp, _file_mode(target) if overwrite else umask_mode(0o666))
    if overwrite:
        os.replace(tmp, target)
    else:
        _publish_exclusive(tmp, target)


def discard(path: str | os.PathLike | None) -> None:
    """Remove a temporary file if it is there (``None``: nothing)."""
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


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
        publish(tmp, path, overwrite)
    except BaseException:
        discard(tmp)
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
            target = entry.name[1 : -len(TEMP_SUFFIX)].rsplit(".", 1)[0]
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


# ----------------------------------------------------------------------------------------------
# Removing and reporting


def why(e: OSError) -> str:
    """What went wrong, in the OS's words: "no space left on device"."""
    return (e.strerror or str(e) or type(e).__name__).lower()


def remove_tree(path: Path) -> None:
    """Remove a directory tree, or a file or link put where one was."""
    if path.is_symlink() or not path.is_dir():
        try:
            os.unlink(path)
        except OSError:
            pass
    else:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Publishing a directory whole: the parent, the lock, the rename (a converted checkpoint, the trainer's)


def make_parent(target: Path) -> None:
    """Create the directories above ``target``; a DPTError that says why they cannot be."""
    for ancestor in (target.parent, *target.parent.parents):
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise DPTError(f"cannot create {target}: {ancestor} is a file, not a directory")
            break
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DPTError(f"cannot create {target.parent}: {why(e)}") from None


_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextmanager
def output_lock(target: Path, busy: str):
    """Hold the exclusive lock of ``target`` (``flock`` on ``.<name>.lock`` beside it) while inside.

    Another process holding it: DPTError(``busy``). Yields True, or False where there are no
    locks (no ``fcntl``, or a file system that refuses them): the caller then relies on the rename.
    The lock file is removed on release.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield False
        return
    path = lock_path(target)
    fd = None
    while fd is None:
        try:
            fd = os.open(path, _LOCK_FLAGS, 0o666)
        except OSError as e:
            raise DPTError(f"cannot write to {target.parent}: {why(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DPTError(busy) from None
        except OSError:  # ENOLCK and the like: a file system without locks
            os.close(fd)
            _unlink(path)
            fd = None
            break
        try:  # a holder that released meanwhile removed the file: lock the new one instead
            if not os.path.samestat(os.fstat(fd), os.stat(path)):
                os.close(fd)
                fd = None
        except FileNotFoundError:
            os.close(fd)
            fd = None
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        _unlink(path)  # before the lock is dropped, so that no one locks a name about to vanish
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_NOREPLACE, _EXCHANGE = "noreplace", "exchange"
# errors that mean "this system or file system cannot rename with that flag", not "the name exists"
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


@functools.lru_cache(maxsize=1)
def _flagged_rename():
    """libc's rename with flags, as ``(call(src, dst, flag) -> int, {kind: flag})``, or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):  # glibc >= 2.28, Linux >= 3.15
        fn, at_fdcwd = libc.renameat2, -100
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return (lambda src, dst, flag: fn(at_fdcwd, src, at_fdcwd, dst, flag)), {_NOREPLACE: 1, _EXCHANGE: 2}
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):  # macOS >= 10.12
        fn = libc.renamex_np
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        return (lambda src, dst, flag: fn(src, dst, flag)), {_NOREPLACE: 0x4, _EXCHANGE: 0x2}
    return None


def _rename(src: Path, dst: Path, kind: str) -> bool:
    """Rename with RENAME_NOREPLACE or RENAME_EXCHANGE semantics; False where those are not available."""
    native = _flagged_rename()
    if native is None:
        return False
    call, flags = native
    if call(os.fsencode(src), os.fsencode(dst), flags[kind]) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(dst))  # EEXIST: FileExistsError


def publish_directory(tmp: Path, target: Path, overwrite: bool) -> Path | None:
    """Give the finished directory ``tmp`` the name ``target`` in one step; call it holding the target's lock.

    Without ``overwrite`` an existing target is never replaced: FileExistsError. With it an
    existing target is swapped out: returns where the old one now is, for the caller to remove
    (None when there was none).
    """
    if overwrite and os.path.lexists(target):
        if _rename(tmp, target, _EXCHANGE):
            return tmp
        old = tmp.with_name(f"{tmp.name}.old")
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)
            raise
        return old
    if not _rename(tmp, target, _NOREPLACE):
        if os.path.lexists(target):  # (the lock keeps other conversions out between this check and the rename)
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        os.rename(tmp, target)
    return None


_DEFERRED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextmanager
def signals_deferred():
    """SIGINT, SIGTERM and SIGHUP that arrive inside are handled when the block ends (main thread only:
    elsewhere Python raises nothing for them anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught, previous = [], {}

    def note(signum, frame):
        caught.append(signum)

    try:
        for signum in _DEFERRED:
            previous[signum] = signal.signal(signum, note)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if caught:
            signal.raise_signal(caught[0])

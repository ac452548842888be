"""dpt_mlx.io.files: the one writer (publish-or-fail), and removing what killed writers left."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from dpt_mlx.io import files


def _names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_no_clobber_fails_and_keeps_the_existing_file(tmp_path):
    target = tmp_path / "x.png"
    files.atomic_write(target, lambda f: f.write(b"first"), overwrite=False)
    assert target.read_bytes() == b"first"
    with pytest.raises(FileExistsError) as info:
        files.atomic_write(target, lambda f: f.write(b"second"), overwrite=False)
    assert info.value.filename == str(target)
    assert target.read_bytes() == b"first"
    assert _names(tmp_path) == ["x.png"]  # the temporary file is gone too
    files.atomic_write(target, lambda f: f.write(b"third"))  # overwrite=True (the default) replaces
    assert target.read_bytes() == b"third" and _names(tmp_path) == ["x.png"]


def test_a_file_that_appears_during_the_write_is_not_replaced(tmp_path):
    target = tmp_path / "x.npy"

    def write(f):
        f.write(b"ours")
        target.write_bytes(b"theirs")  # another run publishes while we are writing

    with pytest.raises(FileExistsError):
        files.atomic_write(target, write, overwrite=False)
    assert target.read_bytes() == b"theirs" and _names(tmp_path) == ["x.npy"]


def test_new_files_get_the_umask_mode(tmp_path):
    target = tmp_path / "x.txt"
    files.atomic_write_text(target, "hello", overwrite=False)
    assert target.stat().st_mode & 0o777 == files.umask_mode(0o666)
    assert target.stat().st_nlink == 1  # the temporary link is gone


@pytest.mark.parametrize("error", [errno.EPERM, errno.EOPNOTSUPP])
def test_without_hard_links_the_exclusive_fallback_still_never_clobbers(tmp_path, monkeypatch, error):
    def no_links(src, dst):
        raise OSError(error, "hard links not supported")

    monkeypatch.setattr(files.os, "link", no_links)
    target = tmp_path / "x.png"
    files.atomic_write(target, lambda f: f.write(b"first"), overwrite=False)
    assert target.read_bytes() == b"first"
    with pytest.raises(FileExistsError):
        files.atomic_write(target, lambda f: f.write(b"second"), overwrite=False)
    assert target.read_bytes() == b"first" and _names(tmp_path) == ["x.png"]


def test_racing_writers_publish_each_file_exactly_once(tmp_path):
    barrier = threading.Barrier(8)
    results = []

    def writer(i):
        def write(f):
            f.write(f"writer {i}".encode())
            barrier.wait()  # every writer has its temporary file ready before any publishes

        try:
            files.atomic_write(tmp_path / "out.png", write, overwrite=False)
            results.append(("won", i))
        except FileExistsError:
            results.append(("lost", i))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for outcome, i in results if outcome == "won"]
    assert len(winners) == 1 and len(results) == 8
    assert (tmp_path / "out.png").read_bytes() == f"writer {winners[0]}".encode()
    assert _names(tmp_path) == ["out.png"]


def test_remove_stale_temps_takes_only_old_temporaries_of_the_targets(tmp_path):
    old = time.time() - 3600
    stale = tmp_path / ".img00_depth16.png.k3j_x9a2.tmp"
    fresh = tmp_path / ".img00_depth.png.abcd1234.tmp"  # a writer may still be at it
    other = tmp_path / ".someone_else.png.abcd1234.tmp"  # not an output of this run
    hidden = tmp_path / ".img00_depth16.png"  # not a temporary file
    for p in (stale, fresh, other, hidden):
        p.write_bytes(b"x")
    for p in (stale, other, hidden):
        os.utime(p, (old, old))
    targets = [tmp_path / "img00_depth16.png", tmp_path / "img00_depth.png"]
    assert files.remove_stale_temps(targets) == 1
    assert sorted(_names(tmp_path)) == sorted(p.name for p in (fresh, other, hidden))
    assert files.remove_stale_temps(targets, older_than=-1) == 1  # the fresh one too, when asked
    assert files.remove_stale_temps([tmp_path / "missing-dir" / "x.png"]) == 0

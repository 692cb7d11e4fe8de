"""The swap's renames and their durability (installer/swap.py), on a real filesystem."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from installer import swap
from installer.swap import Swapper, fsync_all, sync_threads
from installer.swapplan import SwapOp


def _tree(tmp: Path) -> tuple[Path, Path, Path, list[SwapOp]]:
    root, staged, backup = tmp / "root", tmp / "staged", tmp / "backup"
    ops = []
    for i, rel in enumerate(["opt/a/x", "opt/b/y", "etc/c/z", "var/d/w"]):
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_text(f"old {i}")
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged / rel).write_text(f"new {i}")
        ops.append(SwapOp(path=rel, action="place", group="files", target=rel))
    return root, staged, backup, ops


def test_every_touched_directory_is_fsynced_from_the_sync_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four renames into four root directories, out of four staging ones, the old files
    into four backup ones: each directory (12) is fsynced, from the pool's threads, and
    the swap has only ended once all of them have."""
    root, staged, backup, ops = _tree(tmp_path)
    synced: list[tuple[str, str]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        real(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), threading.current_thread().name))

    monkeypatch.setattr(swap.os, "fsync", spy)
    Swapper(root, staged, backup, label="files").run(ops, [])
    assert (root / "opt/a/x").read_text() == "new 0" and (backup / "opt/a/x").read_text() == "old 0"
    dirs = {p for p, _ in synced}
    for rel in ("opt/a", "opt/b", "etc/c", "var/d"):
        assert {str(root / rel), str(staged / rel), str(backup / rel)} <= dirs, rel
    assert all(t.startswith("jumpkit-fsync") for _, t in synced), synced


def test_a_swap_of_many_directories_syncs_each_filesystem_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above SYNCFS_ABOVE directories one syncfs per filesystem replaces the fsyncs: of
    every filesystem the directories are on, not only the root's (a root may have mounts
    beneath it, a state dir may be on another)."""
    root, staged, backup = tmp_path / "root", tmp_path / "staged", tmp_path / "backup"
    ops = []
    for i in range(swap.SYNCFS_ABOVE):
        rel = f"opt/d{i}/f"
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_text("old")
        (staged / rel).parent.mkdir(parents=True)
        (staged / rel).write_text("new")
        ops.append(SwapOp(path=rel, action="place", group="files", target=rel))
    synced: list[int] = []
    real = swap._syncfs

    def spy(fd: int) -> bool:
        synced.append(os.fstat(fd).st_dev)
        return real(fd)

    monkeypatch.setattr(swap, "_syncfs", spy)
    monkeypatch.setattr(swap, "fsync_all", lambda *a: pytest.fail("fsynced each directory"))
    Swapper(root, staged, backup, label="files").run(ops, [])
    assert (root / "opt/d7/f").read_text() == "new"
    assert synced == [root.stat().st_dev]
    synced.clear()
    other = Path("/dev/shm")
    assert swap.syncfs_each([tmp_path, other, tmp_path / "root"])
    assert sorted(synced) == sorted({tmp_path.stat().st_dev, other.stat().st_dev})


def test_a_failed_syncfs_falls_back_to_an_fsync_of_each_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, staged, backup, ops = _tree(tmp_path)
    monkeypatch.setattr(swap, "SYNCFS_ABOVE", 0)
    monkeypatch.setattr(swap, "_syncfs", lambda fd: False)
    fsynced: list[list[Path]] = []
    real = swap.fsync_all
    monkeypatch.setattr(swap, "fsync_all", lambda d, f: (fsynced.append(d), real(d, f))[1])
    Swapper(root, staged, backup, label="files").run(ops, [])
    assert len(fsynced) == 1 and len(fsynced[0]) == 8  # 4 staging and 4 backup directories


def test_the_backup_directories_are_made_before_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backup_skeleton (run before the stop) makes every directory an old file moves into;
    the swap itself then makes none. Without it (a resume after a power loss took them)
    the swap makes them where a rename finds none."""
    root, staged, backup, ops = _tree(tmp_path)
    swap.backup_skeleton(backup, ops)
    assert sorted(str(p.relative_to(backup)) for p in backup.rglob("*")) == [
        "etc", "etc/c", "opt", "opt/a", "opt/b", "var", "var/d"
    ]  # fmt: skip
    made: list[str] = []
    real = os.mkdir

    def spy(path: str | Path, *a: object, **k: object) -> None:
        made.append(str(path))
        real(path, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mkdir", spy)
    Swapper(root, staged, backup, label="files").run(ops, [])
    assert made == [] and (backup / "opt/a/x").read_text() == "old 0"
    root2, staged2, backup2, ops2 = _tree(tmp_path / "again")
    Swapper(root2, staged2, backup2, label="files").run(ops2, [])
    assert (backup2 / "var/d/w").read_text() == "old 3" and made


def test_fsync_all_reports_a_failure_after_all_have_ended(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError):
        fsync_all([tmp_path / "a", tmp_path / "gone"], [])


def test_the_sync_threads_are_all_started_by_the_first_call() -> None:
    """Started before the outage window (the transaction calls it first), so no thread is
    started inside it."""
    pool = sync_threads()
    before = {t.name for t in threading.enumerate() if t.name.startswith("jumpkit-fsync")}
    assert len(before) == swap.SYNC_THREADS
    fsync_all([Path("/")] * swap.SYNC_THREADS * 2, [])
    after = {t.name for t in threading.enumerate() if t.name.startswith("jumpkit-fsync")}
    assert after == before and sync_threads() is pool


def test_a_forked_child_starts_its_own_sync_threads(tmp_path: Path) -> None:
    """The parent's pool threads do not exist in a forked child: its fsyncs must not wait
    on them forever."""
    sync_threads()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.alarm(10)  # a hung child fails the test instead of stalling it
        try:
            fsync_all([tmp_path], [])
            os._exit(0)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

"""Swapping files by rename. Each op is two renames on one filesystem (old -> backup,
staged -> target), so the cost does not depend on file size, and where each op stands is
readable from the filesystem itself: run() and undo() are idempotent and resume anywhere.

    staged present, backup absent  -> op not started
    staged present, backup present -> old moved out, new not yet in
    staged absent                  -> op done
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from installer.attrs import SELINUX_XATTR
from installer.beneath import Dirs
from installer.errors import StateError, UnsafePathError
from installer.failpoints import failpoint
from installer.paths import fsync_dir
from installer.swapplan import EmptiedDir, SwapOp

SYNCFS_ABOVE = 32  # touched directories above which one syncfs beats an fsync each
SYNC_THREADS = 8
"""fsyncs issued at once. A swap touches a few directories on each side (the demo jump's
files: 7 in staging and backup, 4 in the root). One after another, 11 directory fsyncs
after renames took 0.79 ms here (each waits for its own device flush); from 2, 4, 8 and
11 threads 0.71, 0.56, 0.52 and 0.49 ms (medians of 100). Every directory is still
fsynced: a rename is durable only once both of its directories are, whatever the
filesystem."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: a submit would wait forever."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def sync_threads() -> ThreadPoolExecutor:
    """The threads that fsync a swap's directories together, all started on the first
    call (~0.1 ms a thread: the transaction calls this before the services stop)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="jumpkit-fsync")
            gate = threading.Barrier(SYNC_THREADS, timeout=10)
            for started in [pool.submit(gate.wait) for _ in range(SYNC_THREADS)]:
                started.result()  # each submit found every thread busy: a new one each time
            _pool = pool
        return _pool


def fsync_all(dirs: list[Path], fds: list[int]) -> None:
    """fsync every directory of ``dirs`` and every descriptor of ``fds``, at once.

    Raises:
        OSError: the first fsync or open that failed (after all of them have ended).
    """
    jobs = [sync_threads().submit(fsync_dir, d) for d in dirs]
    jobs += [sync_threads().submit(os.fsync, fd) for fd in fds]
    errors = [e for e in (j.exception() for j in jobs) if e is not None]
    if errors:
        raise errors[0]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _syncfs(fd: int) -> bool:
    """syncfs(2) of the filesystem holding ``fd``; False where it failed or libc lacks it."""
    libc = _libc()
    try:
        return libc is not None and int(libc.syncfs(fd)) == 0
    except AttributeError:
        return False


def syncfs_each(dirs: list[Path]) -> bool:
    """One syncfs(2) per filesystem holding one of ``dirs``; False when one failed (the
    caller then fsyncs each directory)."""
    by_dev: dict[int, Path] = {}
    ok = True
    try:
        for d in dirs:
            by_dev.setdefault(os.stat(d).st_dev, d)
        for d in by_dev.values():
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                ok = _syncfs(fd) and ok
            finally:
                os.close(fd)
    except OSError:
        return False  # the fsyncs that follow report it
    return ok


def backup_skeleton(backup: Path, ops: list[SwapOp]) -> None:
    """Make, before the stop, every directory of ``backup`` that the swap moves an old
    file into, and make them durable. In the window each old file is then one rename: a
    jump of 980 files in ~900 directories (botocore 1.44.5 -> 1.44.8) spent 76 ms of its
    245 ms swap in ``mkdir`` (one per op, most of them EEXIST). A directory that is gone
    when the swap runs (a resume after a power loss) is made there again.

    Raises:
        OSError: a directory could not be made or synced.
    """
    made: set[Path] = set()
    for op in ops:
        parent = (backup / op.path).parent
        while parent not in made and parent != backup:
            made.add(parent)
            parent = parent.parent
    backup.mkdir(parents=True, exist_ok=True)
    for d in sorted(made):  # parents first
        with contextlib.suppress(FileExistsError):
            d.mkdir()
    fsync_all(sorted({d.parent for d in made} | {backup}), [])


class Swapper:
    """Runs and undoes the rename ops of one plan group. The root side of every rename is
    the op's canonical path, reached from a descriptor of the root without following any
    symlink (:class:`installer.beneath.Dirs`); staging and backup live in the state dir."""

    def __init__(self, root: Path, staged: Path, backup: Path, *, label: str) -> None:
        self.root = root
        self.staged = staged
        self.backup = backup
        self.label = label
        self._dirty_fds: set[int] = set()
        self._dirty: set[Path] = set()

    @staticmethod
    def _there(fd: int | None, name: str | Path) -> bool:
        try:
            os.lstat(name, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def _to_root(self, dirs: Dirs, src: Path, rel: str) -> None:
        fd, name = dirs.parent(rel, create=True)
        os.replace(src, name, dst_dir_fd=fd)
        self._dirty.add(src.parent)
        self._dirty_fds.add(fd)

    def _from_root(self, dirs: Dirs, rel: str, dst: Path) -> None:
        fd, name = dirs.parent(rel)
        try:  # its directory was made before the stop (:func:`backup_skeleton`)
            os.replace(name, dst, src_dir_fd=fd)
        except FileNotFoundError:
            if dst.parent.is_dir():
                raise
            dst.parent.mkdir(parents=True, exist_ok=True)  # a plan from before the skeleton
            os.replace(name, dst, src_dir_fd=fd)
        self._dirty_fds.difference_update(dirs.forget(rel))
        self._dirty.add(dst.parent)
        self._dirty_fds.add(fd)

    def _sync(self) -> None:
        # Every rename had one side in staging or backup, and a rename cannot cross mounts:
        # a syncfs of their filesystems covers every directory it touched (980 files in ~900
        # directories: no stat of each one, 20 ms of the swap).
        many = len(self._dirty) + len(self._dirty_fds) > SYNCFS_ABOVE
        if not many or not syncfs_each([d for d in (self.staged, self.backup) if d.is_dir()]):
            fsync_all([d for d in sorted(self._dirty) if d.is_dir()], sorted(self._dirty_fds))
        self._dirty.clear()
        self._dirty_fds.clear()

    def run(
        self,
        ops: list[SwapOp],
        new_dirs: list[str],
        progress: Callable[[int], None] | None = None,
        emptied: Sequence[EmptiedDir] = (),
        dir_attrs: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Apply every op; safe to call again after a crash at any point. A new directory
        gets its owner, mode and label from ``dir_attrs`` (through its descriptor).

        Raises:
            StateError: the filesystem is in a state no op sequence could produce.
            UnsafePathError: a parent directory in the root became a symlink since the plan.
        """
        dirs = Dirs(self.root)
        wanted = {a["path"]: a for a in dir_attrs}
        try:
            for d in new_dirs:
                fd = dirs.dir(d, create=True)
                if d in wanted:
                    a = wanted[d]
                    os.fchown(fd, a["uid"], a["gid"])
                    os.fchmod(fd, a["mode"])
                    if a.get("label"):
                        os.setxattr(fd, SELINUX_XATTR, a["label"].encode() + b"\0")
            for i, op in enumerate(ops):
                failpoint(f"swap:{self.label}")
                staged, backup = self.staged / op.path, self.backup / op.path
                try:
                    fd, name = dirs.parent(op.where, create=op.action == "place")
                    target_there = self._there(fd, name)
                except FileNotFoundError:
                    target_there = False  # a removal whose directory is gone already
                if op.action == "remove":
                    if target_there and not self._there(None, backup):
                        self._from_root(dirs, op.where, backup)
                elif self._there(None, staged):
                    if target_there:
                        if self._there(None, backup):
                            raise StateError(f"{op.path}: target, staged and backup copies all exist")
                        self._from_root(dirs, op.where, backup)
                    self._to_root(dirs, staged, op.where)
                if progress is not None:
                    progress(i + 1)
            for e in emptied:  # deepest first, now that their files are in the backup
                head, _, name = e.path.rpartition("/")
                try:
                    fd = dirs.dir(head)
                    self._dirty_fds.difference_update(dirs.forget(e.path))
                    os.rmdir(name, dir_fd=fd)
                    self._dirty_fds.add(fd)
                except (FileNotFoundError, UnsafePathError):
                    pass  # gone already: a resumed run
                except OSError:
                    pass  # not empty: something came to live there since the plan; it stays
            self._sync()
        finally:
            dirs.close()

    def undo(self, ops: list[SwapOp], new_dirs: list[str], emptied: Sequence[EmptiedDir] = ()) -> None:
        """Put every old file back (new ones return to staging), and every directory the
        swap removed as emptied, with its mode and owner; idempotent."""
        dirs = Dirs(self.root)
        try:
            for e in reversed(emptied):  # shallowest first, before their files come back
                head, _, name = e.path.rpartition("/")
                try:
                    fd = dirs.dir(head, create=True)
                except UnsafePathError:
                    continue
                if self._there(fd, name):
                    continue
                os.mkdir(name, 0o700, dir_fd=fd)
                with contextlib.suppress(PermissionError):  # not root: it was ours anyway
                    os.chown(name, e.uid, e.gid, dir_fd=fd, follow_symlinks=False)
                os.chmod(name, e.mode, dir_fd=fd)
                if e.label:  # as it was: mkdir gave it the policy's default for its parent
                    made = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    try:
                        os.setxattr(made, SELINUX_XATTR, e.label.encode() + b"\0")
                    finally:
                        os.close(made)
                self._dirty_fds.add(fd)
            for op in reversed(ops):
                staged, backup = self.staged / op.path, self.backup / op.path
                staged_there, backup_there = self._there(None, staged), self._there(None, backup)
                if not backup_there and (op.action == "remove" or staged_there):
                    continue  # this op never moved anything: leave the root alone
                try:
                    fd, name = dirs.parent(op.where, create=backup_there)
                except FileNotFoundError:
                    continue  # its directory is gone: nothing of this op is in the root
                target_there = self._there(fd, name)
                if op.action == "place" and not staged_there and target_there:
                    self._from_root(dirs, op.where, staged)
                    target_there = False
                if self._there(None, backup) and not target_there:
                    self._to_root(dirs, backup, op.where)
            for d in reversed(new_dirs):
                head, _, name = d.rpartition("/")
                try:
                    fd = dirs.dir(head)
                    self._dirty_fds.difference_update(dirs.forget(d))
                    os.rmdir(name, dir_fd=fd)
                    self._dirty_fds.add(fd)
                except (FileNotFoundError, UnsafePathError):
                    pass
                except OSError:
                    pass  # not empty: something else lives there now; leave it
            self._sync()
        finally:
            dirs.close()

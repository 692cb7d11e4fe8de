"""Swapping files by rename. Each op is two renames on one filesystem (old -> backup,
staged -> target), so the cost does not depend on file size, and where each op stands is
readable from the filesystem itself: run() and undo() are idempotent and resume anywhere.

    staged present, backup absent  -> op not started
    staged present, backup present -> old moved out, new not yet in
    staged absent                  -> op done
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

from installer.errors import StateError
from installer.failpoints import failpoint
from installer.paths import fsync_dir
from installer.plan import SwapOp

SYNCFS_ABOVE = 32  # touched directories above which one syncfs beats an fsync each


def syncfs(path: Path) -> bool:
    """syncfs(2) the filesystem holding ``path``; False where libc lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return int(libc.syncfs(fd)) == 0
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return False


class Swapper:
    """Runs and undoes the rename ops of one plan group."""

    def __init__(self, root: Path, staged: Path, backup: Path, *, label: str) -> None:
        self.root = root
        self.staged = staged
        self.backup = backup
        self.label = label
        self._dirty: set[Path] = set()

    def _move(self, src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        self._dirty.add(src.parent)
        self._dirty.add(dst.parent)

    def _sync(self) -> None:
        dirs = [d for d in sorted(self._dirty) if d.is_dir()]
        if len(dirs) > SYNCFS_ABOVE and syncfs(self.root):
            pass  # one syncfs of the root's filesystem covers every directory
        else:
            for d in dirs:
                fsync_dir(d)
        self._dirty.clear()

    def run(
        self, ops: list[SwapOp], new_dirs: list[str], progress: Callable[[int], None] | None = None
    ) -> None:
        """Apply every op; safe to call again after a crash at any point.

        Raises:
            StateError: the filesystem is in a state no op sequence could produce.
        """
        for d in new_dirs:
            (self.root / d).mkdir(exist_ok=True)
        for i, op in enumerate(ops):
            failpoint(f"swap:{self.label}")
            target, staged, backup = self.root / op.path, self.staged / op.path, self.backup / op.path
            staged_there = staged.is_symlink() or staged.exists()
            target_there = target.is_symlink() or target.exists()
            backup_there = backup.is_symlink() or backup.exists()
            if op.action == "remove":
                if target_there and not backup_there:
                    self._move(target, backup)
            elif staged_there:
                if target_there:
                    if backup_there:
                        raise StateError(f"{op.path}: target, staged and backup copies all exist")
                    self._move(target, backup)
                self._move(staged, target)
            if progress is not None:
                progress(i + 1)
        self._sync()

    def undo(self, ops: list[SwapOp], new_dirs: list[str]) -> None:
        """Put every old file back (new ones return to staging); idempotent."""
        for op in reversed(ops):
            target, staged, backup = self.root / op.path, self.staged / op.path, self.backup / op.path
            staged_there = staged.is_symlink() or staged.exists()
            target_there = target.is_symlink() or target.exists()
            backup_there = backup.is_symlink() or backup.exists()
            if op.action == "place" and not staged_there and target_there:
                self._move(target, staged)
                target_there = False
            if backup_there and not target_there:
                self._move(backup, target)
        for d in reversed(new_dirs):
            try:
                (self.root / d).rmdir()
                self._dirty.add((self.root / d).parent)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # not empty: something else lives there now; leave it
        self._sync()

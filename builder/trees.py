"""A release tree as the builder sees it: every file and symlink with its stat, and the
``fnmatch`` patterns of a jump's ``files:`` section. Light on purpose (``lint`` imports it
without the build's modules)."""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.errors import SpecError
from installer.paths import check_relpath


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    """fnmatchcase against any of ``patterns`` (one compiled regex per pattern set)."""
    return _pattern_set(patterns)(path) is not None


@functools.cache
def _pattern_set(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    if not patterns:
        return lambda _: None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


@dataclass(frozen=True, slots=True)
class TreeFile:
    """A file or symlink found in a release tree (stat taken once, while walking)."""

    path: str
    mode: int
    size: int
    is_link: bool


def walk_tree(top: Path) -> dict[str, TreeFile]:
    """Every file and symlink under ``top`` by relative POSIX path (sorted).

    Raises:
        SpecError: a special file (device, fifo, socket) or an unsafe name.
    """
    out: dict[str, TreeFile] = {}
    if not top.is_dir():
        return out
    stack = [("", os.fspath(top))]
    while stack:
        prefix, d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                rel = prefix + e.name
                if e.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", e.path))
                    continue
                check_relpath(rel)
                st = e.stat(follow_symlinks=False)
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    raise SpecError(f"{e.path}: only regular files and symlinks can ship")
                out[rel] = TreeFile(e.path, st.st_mode, st.st_size, stat.S_ISLNK(st.st_mode))
    return dict(sorted(out.items()))

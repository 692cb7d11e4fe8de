"""Checks for paths that come from a bundle: hostile until proven otherwise."""

from __future__ import annotations

import os
import posixpath
import stat
import unicodedata
from pathlib import Path

from installer.errors import UnsafePathError

MAX_PATH_BYTES = 1024


def check_relpath(path: str, *, what: str = "path") -> str:
    """Return ``path`` if it is a clean, relative POSIX path inside its root.

    Raises:
        UnsafePathError: absolute, ``..``, empty or ``.`` components, backslashes,
            control characters, or a path that is too long.
    """
    if not isinstance(path, str) or not path:
        raise UnsafePathError(f"{what} is empty or not a string")
    if len(path) > MAX_PATH_BYTES or len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise UnsafePathError(f"{what} is longer than {MAX_PATH_BYTES} bytes", entry=path[:80])
    if path.startswith("/"):
        raise UnsafePathError(f"{what} is absolute", entry=path)
    if "\\" in path or not path.isprintable():
        raise UnsafePathError(f"{what} holds a backslash or control character", entry=repr(path))
    if not path.isascii():
        try:
            path.encode("utf-8")
        except UnicodeEncodeError as e:
            raise UnsafePathError(f"{what} is not valid UTF-8", entry=repr(path)) from e
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"{what} has an empty, '.' or '..' component", entry=path)
    if not path.isascii() and unicodedata.normalize("NFC", path) != path:
        raise UnsafePathError(f"{what} is not in Unicode NFC form", entry=repr(path))
    return path


def check_link_target(link_path: str, target: str) -> str:
    """Return ``target`` if a symlink at ``link_path`` pointing to it stays inside the root.

    Raises:
        UnsafePathError: the target is absolute or climbs out of the root.
    """
    if not isinstance(target, str) or not target or target.startswith("/") or "\x00" in target:
        raise UnsafePathError("symlink target must be a relative path", entry=link_path)
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        raise UnsafePathError(f"symlink points outside the root ({target})", entry=link_path)
    return target


def target_path(root: Path, rel: str) -> Path:
    """Join ``rel`` (checked here) under ``root``, refusing a path whose existing parent
    directories lead outside the root through a symlink.

    Raises:
        UnsafePathError: a parent is a symlink resolving outside ``root``, or an existing
            parent is not a directory.
    """
    check_relpath(rel)
    real_root = root.resolve()
    probe = root
    for part in rel.split("/")[:-1]:
        probe = probe / part
        try:
            st = probe.lstat()
        except FileNotFoundError:
            break  # the rest is created by us, as real directories
        if stat.S_ISLNK(st.st_mode):
            resolved = probe.resolve()
            if resolved != real_root and real_root not in resolved.parents:
                raise UnsafePathError("a parent directory is a symlink out of the root", entry=rel)
            if not resolved.is_dir():
                raise UnsafePathError("a parent of this path is not a directory", entry=rel)
        elif not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError("a parent of this path is not a directory", entry=rel)
    return root / rel


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames inside it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

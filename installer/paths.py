"""Checks for paths that come from a bundle: hostile until proven otherwise."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import unicodedata
from pathlib import Path
from typing import BinaryIO

from installer.errors import UnsafePathError

MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255  # NAME_MAX of every Linux filesystem: a longer component is ENAMETOOLONG


READ_NO_WAIT = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
"""Flags to open a file only to look at it: a FIFO does not wait for a writer, a terminal
does not become the controlling one; the caller checks the kind before reading."""


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
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise UnsafePathError(
                f"{what} has a component longer than {MAX_NAME_BYTES} bytes", entry=path[:80]
            )
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
    """``root / rel`` for one path (see :class:`Targets`).

    Raises:
        UnsafePathError, RootLinkError: as :meth:`Targets.__call__`.
    """
    return Targets(root)(rel)


class Targets:
    """Paths under one root, each checked (:func:`check_relpath`) and refused when an
    existing parent leads out of the root through a symlink or is not a directory; each
    parent directory checked
    once (a jump's tens of thousands of files share a few hundred directories: the drift
    check of 24k files spent 1.2 s in repeated ``lstat`` and ``resolve``). For one pass
    over a tree that does not change meanwhile."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = os.fspath(root) + "/"
        self._real_root: Path | None = None
        self._dirs: set[str] = set()  # parents found to be directories inside the root
        self._missing: set[str] = set()  # parents found missing (so is all below them)

    def __call__(self, rel: str) -> Path:
        """``root / rel``, checked.

        Raises:
            UnsafePathError: ``rel`` is unsafe, or a parent is not a directory.
            RootLinkError: an existing parent is a symlink leading out of the root.
        """
        check_relpath(rel)
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent in self._dirs:
                continue
            if parent in self._missing:
                break
            try:
                st = os.lstat(self._prefix + parent)
            except FileNotFoundError:
                self._missing.add(parent)
                break  # the rest is created by us, as real directories
            if stat.S_ISLNK(st.st_mode):
                if self._real_root is None:
                    self._real_root = self.root.resolve()
                resolved = (self.root / parent).resolve()
                if resolved != self._real_root and self._real_root not in resolved.parents:
                    from installer.errors import RootLinkError

                    link = f"{parent} -> {os.readlink(self._prefix + parent)}"
                    raise RootLinkError(
                        f"{rel}: the manager's tree has a symlink leading out of the root on this path "
                        f"({link}); fix the link or exclude the path"
                    )
                if not resolved.is_dir():
                    raise UnsafePathError("a parent of this path is not a directory", entry=rel)
            elif not stat.S_ISDIR(st.st_mode):
                raise UnsafePathError("a parent of this path is not a directory", entry=rel)
            self._dirs.add(parent)
        return self.root / rel


MAX_SMALL_FILE = 64 * 1024
MAX_LOOKUP_FILE = 1024 * 1024
"""A version file, product marker or lookup file is a line or a small INI file; reading
stops here (a character device such as ``dev/zero`` in its place was read until memory ran out)."""


def read_beneath(root: Path, rel: str, limit: int) -> bytes | None:
    """The bytes of the regular file ``rel`` under ``root`` (None if it is missing), resolved beneath the root
    (symlinks in it followed only while they stay there), then opened without following
    one (a link swapped in after the resolution is not followed either); non-blocking (a
    FIFO does not wait for a writer).

    Raises:
        RootLinkError: a symlink of the manager's tree on the way leads out of the root.
        UnsafePathError: ``rel`` is unsafe.
        PreconditionError: not a regular file, or larger than ``limit`` bytes.
    """
    from installer.beneath import resolve
    from installer.errors import PreconditionError

    canonical, _ = resolve(root, check_relpath(rel), follow_last=True)
    try:
        fd = os.open(root / canonical, READ_NO_WAIT | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise PreconditionError(f"{rel}: cannot be read on this manager ({e.strerror})") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise PreconditionError(f"{rel}: is {kind_of(mode)} on this manager, not a file")
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise PreconditionError(f"{rel}: larger than {limit} bytes on this manager")
        return data
    except OSError as e:
        raise PreconditionError(f"{rel}: cannot be read on this manager ({e.strerror})") from e
    finally:
        os.close(fd)


class NotAFileError(OSError):
    """:func:`open_regular` met a FIFO, a device, a socket or a directory."""


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file (symlinks followed: an
    operator's path). Non-blocking open: a FIFO given as a bundle does not wait for a
    writer (it hung until killed), a device is not read.

    Raises:
        NotAFileError: not a regular file (its ``strerror`` says what it is).
        OSError: it cannot be opened.
    """
    fd = os.open(path, READ_NO_WAIT)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotAFileError(errno.EINVAL, f"is {kind_of(mode)}, not a file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def kind_of(mode: int) -> str:
    """ "a directory", "a FIFO"...: what a file of ``mode`` is, for a message."""
    kinds = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
             stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}  # fmt: skip
    return kinds.get(stat.S_IFMT(mode), "a special file")


def read_small(root: Path, rel: str, limit: int = MAX_SMALL_FILE) -> str | None:
    """The text of the regular file ``rel`` under ``root`` (see :func:`read_beneath`), or
    None when it is missing, not a regular file (a device, a FIFO, a directory), larger
    than ``limit`` bytes, not UTF-8, or its path is unsafe or leads out of the root (a
    version file that is a link to /etc/shadow is not read)."""
    from installer.errors import JumpkitError

    try:
        data = read_beneath(root, rel, limit)
        return None if data is None else data.decode()
    except (JumpkitError, UnicodeDecodeError):
        return None


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames inside it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

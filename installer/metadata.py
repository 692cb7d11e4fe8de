"""Before anything stops: give every staged path the owner, mode, capabilities and SELinux
label it must have in place (:mod:`installer.attrs` says why before the rename), and
decide those of the directories the swap will create.

For each path a jump places:

========================  =================================  ==============================
what                      owner and group; mode               label
========================  =================================  ==============================
a kept or merged config   the operator's file's, unchanged   the policy's for the path; with
(keep-local, rewrite)                                        no entry the file's own, else
                                                             the parent directory's
a replaced file           the spec's owner/group, else the   (same)
                          replaced file's, else root; the
                          release mode without a read or
                          write bit the replaced file
                          lacks, unless the spec sets it
a new file                the spec's, else root; release     (same)
a new directory           the spec's, else root; 0755        (same)
========================  =================================  ==============================

Capabilities travel with the file (``FileEntry.caps``) and are set after the chown (which
would clear them). Everything here runs on staged copies under the state dir, before the
journal's first record: a crash leaves nothing to undo, and a resumed run finds the staged
files as this pass left them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from installer.attrs import SELINUX_XATTR, FileContexts, Wanted, get_label, load_policy, narrowed, set_attrs
from installer.errors import PreconditionError
from installer.format import FileEntry, Manifest
from installer.paths import read_beneath

MAX_ID_FILE = 4 << 20


@dataclass
class Ids:
    """User and group names of the manager (its own ``etc/passwd`` and ``etc/group``)."""

    users: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> Ids:
        """Raises: PreconditionError: a file that is not a readable regular file."""
        out = cls()
        for rel, into in (("etc/passwd", out.users), ("etc/group", out.groups)):
            data = read_beneath(root, rel, MAX_ID_FILE)
            for line in (data or b"").decode(errors="replace").splitlines():
                parts = line.split(":")
                if len(parts) >= 3 and parts[2].isdigit():
                    into.setdefault(parts[0], int(parts[2]))
        into_root = {"root": 0}
        out.users = {**into_root, **out.users}
        out.groups = {**into_root, **out.groups}
        return out


def unknown_owners(manifest: Manifest, ids: Ids) -> list[str]:
    """Pre-flight: every owner or group the manifest names that this manager lacks."""
    out = []
    for f in manifest.files:
        if f.owner is not None and f.owner not in ids.users:
            out.append(f"{f.path}: owner {f.owner!r} does not exist on this manager (etc/passwd)")
        if f.group is not None and f.group not in ids.groups:
            out.append(f"{f.path}: group {f.group!r} does not exist on this manager (etc/group)")
    for d in manifest.dirs:
        if d.owner is not None and d.owner not in ids.users:
            out.append(f"{d.path}/: owner {d.owner!r} does not exist on this manager (etc/passwd)")
        if d.group is not None and d.group not in ids.groups:
            out.append(f"{d.path}/: group {d.group!r} does not exist on this manager (etc/group)")
    return sorted(set(out))


@dataclass
class Labels:
    """How placed paths are labelled on this manager."""

    policy: FileContexts | None
    ids: Ids

    @classmethod
    def load(cls, root: Path, *, selinux: bool = True) -> Labels:
        """``selinux`` False: no labels (``--no-selinux``).

        Raises:
            PreconditionError: the root's policy or its user and group files cannot be read.
        """
        return cls(load_policy(root) if selinux else None, Ids.load(root))

    def label(self, abspath: str, mode: int, current: str | None, parent: str | None) -> str | None:
        """The policy's context for ``abspath``; with no entry, ``current`` (the replaced
        file's), else ``parent`` (its directory's); None without a policy or for ``<<none>>``."""
        if self.policy is None:
            return None
        matched, context = self.policy.lookup(abspath, mode)
        if matched:
            return context
        return current or parent


def _walk(top: Path) -> Iterator[Path]:
    yield top
    if top.is_dir() and not top.is_symlink():
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                yield Path(dirpath) / name


def _lstat(path: Path | None) -> os.stat_result | None:
    if path is None:
        return None
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def wanted_for(
    entry: FileEntry | None, staged: os.stat_result, current: os.stat_result | None, kept: bool, ids: Ids
) -> tuple[int, int, int | None, bool]:
    """(uid, gid, mode, narrowed?) of one staged path: see the module's table."""
    if kept and current is not None:  # the operator's config, kept or merged: theirs
        return current.st_uid, current.st_gid, stat.S_IMODE(current.st_mode), False
    uid = ids.users[entry.owner] if entry and entry.owner else (current.st_uid if current else 0)
    gid = ids.groups[entry.group] if entry and entry.group else (current.st_gid if current else 0)
    if stat.S_ISLNK(staged.st_mode):
        return uid, gid, None, False
    mode = entry.mode if entry is not None else stat.S_IMODE(staged.st_mode)
    if current is not None and not stat.S_ISLNK(current.st_mode) and not (entry and entry.mode_explicit):
        narrow = narrowed(mode, stat.S_IMODE(current.st_mode))
        return uid, gid, narrow, narrow != mode
    return uid, gid, mode, False


@dataclass(frozen=True)
class Placed:
    """One path the swap places: its staged copy, where it lands, its manifest entry (None
    for a new directory's contents without one), whether it is the operator's config kept
    or merged, and where the file it replaces is now (the root's, or an earlier jump's of a
    chain; None: there is none)."""

    path: str
    target: str
    entry: FileEntry | None
    kept: bool
    where: Path | None


def prepare(placed: list[Placed], manifest: Manifest, root: Path, staging: Path, labels: Labels) -> list[str]:
    """Give each staged path of ``placed`` (and everything below a new directory) its
    owner, mode, capabilities and label. Returns the notes for ``plan``: each file whose
    mode stays narrower than the release's.

    Raises:
        PreconditionError: the file system refused an attribute (named).
    """
    entries = {f.path: f for f in manifest.files}
    dirs = {d.path: d for d in manifest.dirs}
    notes = []
    files = staging / "files"
    for p in placed:
        top = files / p.path
        if not os.path.lexists(top):
            continue
        current = _lstat(p.where)
        dir_labels = {top.parent: get_label(str((root / p.target).parent)) if labels.policy else None}
        for staged in _walk(top):
            rel = staged.relative_to(files).as_posix()
            final = p.target + rel[len(p.path) :]
            st = os.lstat(staged)
            here = current if staged == top else None
            entry = p.entry if staged == top else entries.get(rel)
            uid, gid, mode, narrow = wanted_for(entry, st, here, p.kept and staged == top, labels.ids)
            if stat.S_ISDIR(st.st_mode) and (spec := dirs.get(final)) is not None:  # a new directory's spec
                uid = labels.ids.users[spec.owner] if spec.owner else uid
                gid = labels.ids.groups[spec.group] if spec.group else gid
                mode = spec.mode if spec.mode is not None else mode
            if narrow and entry is not None:
                notes.append(f"{final}: keeps mode {mode:04o}, narrower than the release's {entry.mode:04o}"
                             " (the manager's file had less; the spec can set it)")  # fmt: skip
            own = get_label(str(p.where)) if here is not None and p.where is not None else None
            label = labels.label("/" + final, st.st_mode, own, dir_labels.get(staged.parent))
            if stat.S_ISDIR(st.st_mode):
                dir_labels[staged] = label
            caps = bytes.fromhex(entry.caps) if entry is not None and entry.caps else None
            try:
                set_attrs(str(staged), Wanted(uid, gid, mode, label, caps))
            except OSError as e:
                raise PreconditionError(f"{final}: cannot set its owner, mode or label ({e.strerror})") from e
    return notes


def narrowings(placed: list[Placed]) -> list[str]:
    """What :func:`prepare` will note, read-only (for ``plan``): each replaced file whose
    mode stays narrower than the release's."""
    out = []
    for p in placed:
        current = _lstat(p.where)
        if p.entry is None or p.kept or current is None or p.entry.kind == "symlink" or p.entry.mode_explicit:
            continue
        mode = narrowed(p.entry.mode, stat.S_IMODE(current.st_mode))
        if mode != p.entry.mode:
            out.append(f"{p.target}: keeps mode {mode:04o}, narrower than the release's {p.entry.mode:04o}"
                       " (the manager's file had less; the spec can set it)")  # fmt: skip
    return out


def dir_wanted(
    manifest: Manifest, new_dirs: list[str], root: Path, labels: Labels
) -> list[dict[str, object]]:
    """The owner, group, mode and label of each directory the swap creates (kept in the plan,
    so a resumed swap sets them too)."""
    specs = {d.path: d for d in manifest.dirs}
    out: list[dict[str, object]] = []
    for d in new_dirs:
        spec = specs.get(d)
        uid = labels.ids.users[spec.owner] if spec and spec.owner else 0
        gid = labels.ids.groups[spec.group] if spec and spec.group else 0
        mode = spec.mode if spec and spec.mode is not None else 0o755
        parent = d.rpartition("/")[0]
        label = labels.label(
            "/" + d, stat.S_IFDIR, None, get_label(str(root / parent)) if labels.policy else None
        )
        out.append({"path": d, "uid": uid, "gid": gid, "mode": mode, "label": label})
    return out


def label_in_place(root: Path, rel: str, labels: Labels) -> None:
    """Label ``rel`` and everything below it as the policy says, where it matches: for what
    the installer writes in place rather than renames from staging (the kept installer and
    its unpacked tree), which a kernel would label by its directory alone. Never raises: a
    label it cannot set is the kernel's default."""
    if labels.policy is None:
        return
    top = root / rel
    if not os.path.lexists(top):
        return
    for path in _walk(top):
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            matched, context = labels.policy.lookup("/" + path.relative_to(root).as_posix(), st.st_mode)
            if matched and context is not None and get_label(str(path)) != context:
                os.setxattr(path, SELINUX_XATTR, context.encode() + b"\0", follow_symlinks=False)

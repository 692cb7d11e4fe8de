"""The metadata a placed path gets before its rename: the SELinux label the root's policy
gives its final path, its owner, group and mode, and its file capabilities.

Why before the rename: a label, an owner and a capability are attributes of the inode, and
a rename keeps the inode. A file written under the state dir's staging carries that
directory's label (``var_lib_t``) and root's ownership into ``opt/<product>/bin``, where a
confined service may not read or execute it: the "moved, not copied" failure. rpm avoids it
the same way: temporary name, then label, then rename. The backup keeps the old inodes
with their own metadata, so a rollback restores it exactly.

SELinux file contexts are read from the root's own policy (``etc/selinux/config``, then
``etc/selinux/<type>/contexts/files/file_contexts`` with its ``.local``, ``.homedirs``,
``.subs_dist`` and ``.subs``) and matched as libselinux does (``label_file.c``): every spec
is anchored (``^regex$``); specs without a regex metacharacter (exact paths) are moved
after the others; the last spec that matches the path and the file type wins; ``<<none>>``
means the path gets no label; path aliases of the ``.subs`` files are applied first. The
regexes run on RE2 (linear time: the policy is data from the manager, matched while the
lock is held), not through libselinux: the frozen installer carries no native library of
the build host's distribution. tests/test_attrs_selinux.py checks the lookups against
libselinux's own ``selabel_lookup``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from installer.errors import PreconditionError
from installer.paths import read_beneath

SELINUX_XATTR = "security.selinux"
CAPS_XATTR = "security.capability"
CONFIG = "etc/selinux/config"
MAX_CONTEXTS_FILE = 16 << 20
"""A policy's file_contexts is ~0.5 MiB on RHEL 9 (~6,000 specs)."""
MAX_SPECS = 100_000
TYPES = {
    "--": stat.S_IFREG, "-d": stat.S_IFDIR, "-l": stat.S_IFLNK, "-c": stat.S_IFCHR,
    "-b": stat.S_IFBLK, "-p": stat.S_IFIFO, "-s": stat.S_IFSOCK,
}  # fmt: skip
META = set(".^$?*+|[({")


@dataclass(frozen=True)
class Spec:
    regex: object
    """The compiled ``^regex$`` (an RE2 pattern)."""
    kind: int
    """The file type it is for (``S_IFREG`` ...), 0 for any."""
    context: str | None
    """The label, None for ``<<none>>``."""


def _exact(regex: str) -> bool:
    """libselinux's spec_hasMetaChars, negated: no metacharacter outside a backslash escape."""
    i = 0
    while i < len(regex):
        if regex[i] == "\\":
            i += 2
            continue
        if regex[i] in META:
            return False
        i += 1
    return True


@dataclass(frozen=True)
class FileContexts:
    """The file contexts of one policy, looked up as libselinux does."""

    source: str
    specs: tuple[Spec, ...]
    subs: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, source: str, texts: list[tuple[str, str]], subs: list[tuple[str, str]]) -> FileContexts:
        """From ``(file name, text)`` of file_contexts, then .homedirs and .local.

        Raises:
            PreconditionError: a line that is not ``regex [type] context``, a regex RE2
                cannot compile, too many specs.
        """
        import re2

        options = re2.Options()
        options.log_errors = False
        fuzzy: list[Spec] = []
        exact: list[Spec] = []
        for name, text in texts:
            for n, line in enumerate(text.splitlines(), 1):
                words = line.split()
                if not words or words[0].startswith("#"):
                    continue
                where = f"{name}:{n}"
                if len(words) not in (2, 3) or (len(words) == 3 and words[1] not in TYPES):
                    raise PreconditionError(
                        f"SELinux file contexts {where}: not 'regex [type] context': {line[:80]!r}"
                    )
                try:
                    regex = re2.compile(f"^{words[0]}$", options=options)
                except re2.error as e:
                    raise PreconditionError(
                        f"SELinux file contexts {where}: {words[0][:60]!r} does not compile: {e}"
                    ) from e
                spec = Spec(
                    regex,
                    TYPES[words[1]] if len(words) == 3 else 0,
                    None if words[-1] == "<<none>>" else words[-1],
                )
                (exact if _exact(words[0]) else fuzzy).append(spec)
                if len(fuzzy) + len(exact) > MAX_SPECS:
                    raise PreconditionError(f"SELinux file contexts {source}: more than {MAX_SPECS} specs")
        return cls(source, (*fuzzy, *exact), tuple(subs))

    def lookup(self, path: str, mode: int) -> tuple[bool, str | None]:
        """(whether a spec matched, its context or None for ``<<none>>``) for the absolute
        ``path`` of a file whose ``st_mode`` is ``mode``."""
        for alias, original in self.subs:
            if path == alias or path.startswith(alias.rstrip("/") + "/"):
                path = original.rstrip("/") + path[len(alias.rstrip("/")) :]
        kind = stat.S_IFMT(mode)
        for spec in reversed(self.specs):
            if spec.kind and kind and spec.kind != kind:
                continue
            if spec.regex.fullmatch(path) is not None:  # type: ignore[attr-defined]
                return True, spec.context
        return False, None


def _subs(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and not words[0].startswith("#"):
            out.append((words[0], words[1]))
    return out


def load_policy(root: Path) -> FileContexts | None:
    """The file contexts of the root's SELinux policy, or None when the root has none
    (no ``etc/selinux/config``, or ``SELINUX=disabled``).

    Raises:
        PreconditionError: the config names a policy whose file contexts cannot be read or
            parsed (named), or the running system has SELinux enabled for ``--root /`` with
            no config to say which policy.
    """
    raw = read_beneath(root, CONFIG, 64 << 10)
    if raw is None:
        if root.resolve() == Path("/") and Path("/sys/fs/selinux/enforce").exists():
            raise PreconditionError(
                f"SELinux is enabled here but /{CONFIG} is missing: which policy labels files?"
            )
        return None
    settings = dict(
        (k.strip(), v.strip().strip('"'))
        for k, _, v in (line.partition("=") for line in raw.decode(errors="replace").splitlines())
        if not k.strip().startswith("#") and v
    )
    if settings.get("SELINUX", "enforcing").lower() == "disabled":
        return None
    kind = settings.get("SELINUXTYPE", "targeted")
    if not kind or "/" in kind or kind.startswith("."):
        raise PreconditionError(f"{CONFIG}: SELINUXTYPE={kind!r} names no policy directory")
    base = f"etc/selinux/{kind}/contexts/files/file_contexts"
    texts: list[tuple[str, str]] = []
    subs: list[tuple[str, str]] = []
    for rel, required in ((base, True), (base + ".homedirs", False), (base + ".local", False)):
        data = read_beneath(root, rel, MAX_CONTEXTS_FILE)
        if data is None:
            if required:
                raise PreconditionError(f"{CONFIG} names SELinux policy {kind!r}, but {rel} does not exist")
            continue
        texts.append((rel, data.decode(errors="replace")))
    for rel in (base + ".subs_dist", base + ".subs"):
        data = read_beneath(root, rel, 1 << 20)
        if data is not None:
            subs += _subs(data.decode(errors="replace"))
    return FileContexts.parse(base, texts, subs)


# --- the metadata of one placed path -------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """What a staged path gets before its rename (None: leave as staged)."""

    uid: int
    gid: int
    mode: int | None
    label: str | None
    caps: bytes | None


RW_BITS = 0o666


def narrowed(mode: int, current: int) -> int:
    """``mode`` with each read and write bit the file it replaces lacks taken away: an
    apply never makes a file more readable or writable than it was (execute bits and
    special bits stay the release's)."""
    return mode & ~(RW_BITS & ~current)


def get_label(path: str) -> str | None:
    """The ``security.selinux`` of ``path`` (not following a last symlink), or None."""
    try:
        return os.getxattr(path, SELINUX_XATTR, follow_symlinks=False).rstrip(b"\0").decode()
    except OSError:
        return None


def set_attrs(path: str, want: Wanted) -> None:
    """Give the staged ``path`` its owner, mode, capabilities and label (in that order:
    a chown clears capabilities and setuid bits; a label comes last so nothing resets it).

    Raises:
        OSError: the file system refused (a label on a file system without xattrs).
    """
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != (want.uid, want.gid):
        os.chown(path, want.uid, want.gid, follow_symlinks=False)
    if want.mode is not None and not stat.S_ISLNK(st.st_mode):
        os.chmod(path, want.mode)
    if want.caps is not None:
        os.setxattr(path, CAPS_XATTR, want.caps)
    if want.label is not None:
        os.setxattr(path, SELINUX_XATTR, want.label.encode() + b"\0", follow_symlinks=False)


CAP_NAMES = (
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
)
"""Capability numbers 0..40 (linux/capability.h), for showing a file's capabilities."""


def describe_caps(hex_value: str) -> str:
    """``cap_net_bind_service=ep`` for a ``security.capability`` value (as getcap prints)."""
    raw = bytes.fromhex(hex_value)
    if len(raw) < 12:
        return f"unreadable capability value {hex_value}"
    magic = int.from_bytes(raw[:4], "little")
    words = 1 if magic >> 24 == 1 else 2
    permitted = inheritable = 0
    for i in range(words):
        at = 4 + 8 * i
        if at + 8 > len(raw):
            break
        permitted |= int.from_bytes(raw[at : at + 4], "little") << (32 * i)
        inheritable |= int.from_bytes(raw[at + 4 : at + 8], "little") << (32 * i)
    names = [
        f"cap_{CAP_NAMES[b] if b < len(CAP_NAMES) else b}"
        for b in range(64)
        if (permitted | inheritable) >> b & 1
    ]
    flags = ("e" if magic & 1 else "") + ("i" if inheritable else "") + ("p" if permitted else "")
    return (",".join(names) + "=" + flags) if names else "no capabilities"

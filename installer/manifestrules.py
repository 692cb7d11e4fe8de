"""The manifest's consistency rules: what a :class:`~installer.format.Manifest` must
satisfy beyond its fields' own types. Each rule raises ``ValueError`` or
``UnsafePathError``; pydantic reports the first broken one as the manifest's error."""

from __future__ import annotations

from collections.abc import Callable

from installer.errors import UnsafePathError
from installer.format import (
    DELTA_FORMAT_VERSION,
    INSTALLER_MEMBER,
    INSTALLER_PATCH_FORMAT,
    INSTALLER_PATCH_MEMBER,
    Manifest,
)
from installer.rules import check_not_reserved
from installer.version import Version


def to_version_ascends(m: Manifest) -> None:
    if Version.parse(m.to_version) <= Version.parse(m.from_version):
        raise ValueError(f"to_version {m.to_version} is not above {m.from_version}")


def paths_unique_and_not_reserved(m: Manifest) -> None:
    """Case-insensitively: a case-folding file system would write two entries to one file."""
    seen: dict[str, str] = {}
    for p in [f.path for f in m.files] + [r.path for r in m.removed]:
        check_not_reserved(p)
        low = p.casefold()
        if low in seen:
            raise ValueError(f"path listed twice (or differing only in case): {p}")
        seen[low] = p


def nothing_below_another_entry(m: Manifest) -> None:
    """A file below another entry would be written through it: through a symlink to
    wherever it points (inside the root, but not where the manifest says)."""
    placed = {f.path.casefold(): f.path for f in m.files}
    for f in m.files:
        parts = f.path.casefold().split("/")
        for i in range(1, len(parts)):
            above = placed.get("/".join(parts[:i]))
            if above is not None:
                raise UnsafePathError(f"{f.path} lies below another entry ({above})", entry=f.path)


def special_modes_allowed(m: Manifest) -> None:
    """setuid, setgid and sticky only on the exact files the product spec allows."""
    allowed = set(m.special_modes)
    for f in m.files:
        if f.mode & 0o7000 and not (f.kind == "file" and f.path in allowed):
            raise UnsafePathError(
                f"mode {f.mode:04o}: setuid, setgid and sticky bits need the product spec's "
                "allow_setuid for this exact path",
                entry=f.path,
            )
    if allowed - {f.path for f in m.files if f.kind == "file" and f.mode & 0o7000}:
        raise ValueError("special_modes names a path that is no file entry with such a bit")


def capabilities_allowed(m: Manifest) -> None:
    """File capabilities only on the exact files the product spec allows."""
    capable = set(m.capabilities)
    for f in m.files:
        if f.caps is not None and not (f.kind == "file" and f.path in capable):
            raise UnsafePathError(
                "file capabilities need the product spec's allow_caps for this exact path", entry=f.path
            )
    if capable - {f.path for f in m.files if f.caps is not None}:
        raise ValueError("capabilities names a path that is no file entry with capabilities")


def extras_plain_and_unique(m: Manifest) -> None:
    for x in m.extras:
        if x.mode & 0o7000:
            raise UnsafePathError(f"mode {x.mode:04o}: no hook or extra member may be setuid", entry=x.name)
    names = [x.name for x in m.extras]
    if len(set(names)) != len(names):
        raise ValueError("an extra member is listed twice")


def installer_shipped_unless_development(m: Manifest) -> None:
    if (m.installer is None) != m.development:
        raise ValueError("a bundle is a development bundle exactly when it ships no installer")


def components_are_rpm_members(m: Manifest) -> None:
    names = {x.name for x in m.extras}
    for c in m.components:
        if c not in names or not c.startswith("components/") or not c.endswith(".rpm"):
            raise ValueError(f"component {c!r} is not a components/*.rpm extra member")


def scripts_have_members(m: Manifest) -> None:
    """Hook and job names are unique, and each (and each undo) is a ``hooks/`` member."""
    names = {x.name for x in m.extras}
    scripts = [h.name for h in m.hooks] + [j.name for j in m.jobs]
    if len(set(scripts)) != len(scripts):
        raise ValueError("a hook or job name is used twice")
    for script in scripts + [h.undo for h in m.hooks if h.undo]:
        if f"hooks/{script}" not in names:
            raise ValueError(f"hook or job {script!r} has no hooks/{script} extra member")


def format_holds_its_entries(m: Manifest) -> None:
    """Patches, config bases and required configs exist from format 2; a patch's base is
    a release file, never the installer's own."""
    if m.format < DELTA_FORMAT_VERSION and any(f.needs_format_2 for f in m.files):
        raise ValueError(
            f"delta entries, config bases and required configs need bundle format {DELTA_FORMAT_VERSION}"
        )
    for f in m.files:
        if f.delta is not None and f.delta.base is not None:
            check_not_reserved(f.delta.base)


def installer_is_a_member(m: Manifest) -> None:
    """The installer travels whole (its member's sha256 is the one recorded) or as a patch
    against a base (format 3, its size bounding what the patch may build), never both."""
    if m.installer is None:
        return
    members = {x.name: x for x in m.extras}
    whole, patch = members.get(INSTALLER_MEMBER), members.get(INSTALLER_PATCH_MEMBER)
    if m.installer.base is None:
        if whole is None or patch is not None:
            raise ValueError(f"installer recorded but {INSTALLER_MEMBER} is not an extra member")
        if whole.sha256 != m.installer.sha256:
            raise ValueError(f"the installer's sha256 is not that of {INSTALLER_MEMBER}")
        return
    if patch is None or whole is not None:
        raise ValueError(f"an installer with a base travels as {INSTALLER_PATCH_MEMBER} alone")
    if m.installer.size is None or m.format < INSTALLER_PATCH_FORMAT:
        raise ValueError(f"an installer patch needs its size and bundle format {INSTALLER_PATCH_FORMAT}")


def replaces_the_version_file(m: Manifest) -> None:
    """The jump leaves the version file saying its to-version (its content is checked when
    staged): without it the manager would still say the from-version afterwards."""
    if not any(f.path == m.version_file and f.kind == "file" for f in m.files):
        raise ValueError(
            f"the jump does not replace its version file {m.version_file} with a file "
            f"(the manager would still say {m.from_version} after it)"
        )


MANIFEST_RULES: tuple[Callable[[Manifest], None], ...] = (
    to_version_ascends,
    paths_unique_and_not_reserved,
    nothing_below_another_entry,
    special_modes_allowed,
    capabilities_allowed,
    extras_plain_and_unique,
    installer_shipped_unless_development,
    components_are_rpm_members,
    scripts_have_members,
    format_holds_its_entries,
    installer_is_a_member,
    replaces_the_version_file,
)
"""What a manifest must satisfy beyond its fields' own types, in the order checked (the
first broken rule is the one reported)."""

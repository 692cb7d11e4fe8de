"""The swap plan: which paths an apply places, replaces or removes, computed (with the
drift check and config policies) before anything stops, and stored in the staging dir so
that resume and rollback follow the same plan."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from installer.attrs import get_label
from installer.beneath import Kind, resolve
from installer.confmerge import differing_regions, merge
from installer.errors import BundleRejectedError, DriftError, PreconditionError, StateError, UnsafePathError
from installer.format import FileEntry, Manifest
from installer.metadata import Labels, Placed, dir_wanted, prepare
from installer.paths import Targets, kind_of, read_beneath
from installer.rules import check_not_reserved, compile_rule
from installer.signing import sha256_file
from installer.state import write_atomic

PLAN_NAME = "plan.json"
MAX_NOTES_LOGGED = 20
NEW_SUFFIX = ".jumpkit-new"


def current_digest(path: Path | None) -> str | None:
    """sha256 of what is at ``path`` now: file bytes, or ``symlink:<target>`` for a link;
    None if nothing is there. The builder records from-version digests the same way."""
    if path is None:
        return None
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(st.st_mode):
        return hashlib.sha256(b"symlink:" + os.readlink(path).encode()).hexdigest()
    if not stat.S_ISREG(st.st_mode):  # never read a device or a FIFO (dev/zero never ends)
        return NOT_A_FILE + kind_of(st.st_mode)
    return sha256_file(path)[0]


NOT_A_FILE = "not a file: "
"""Prefix of what :func:`current_digest` says of a directory, device, FIFO or socket: it
matches no sha256, so the drift check names it."""


class View:
    """The root as it will be once the earlier jumps of a chain have swapped: the digest
    of each path the chain has placed (None: removed) and where config bytes are. Plans of
    every jump are computed from it before anything stops (and by the dry-run ``plan``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.targets = Targets(root)
        self.files: dict[str, Path | None] = {}
        self.digests: dict[str, str | None] = {}
        self.dirs: set[str] = set()
        self.gone_dirs: set[str] = set()
        """Directories an earlier jump of the chain removes as emptied."""
        self.overlay: dict[str, tuple[Kind, str | None, str]] = {}
        """What the jumps planned so far place, by canonical path (for :mod:`installer.beneath`)."""
        self._canonical: dict[str, str] = {}  # of the jump confined last; advance() places it
        self.bases: dict[str, Path | None] = {}
        """Configs an earlier jump of the chain left as the operator edited them (kept, or
        rewritten without the release's changes): the default their text derives from,
        which the next rewrite merges against (None: no bundle holds it)."""

    def confine(self, manifest: Manifest) -> Confined:
        """Resolve ``manifest``'s entries beneath the root as this view stands (see
        :class:`Confined`); :meth:`advance` then places them at those paths.

        Raises:
            UnsafePathError, RootLinkError: as :class:`Confined`.
        """
        confined = Confined(manifest, self)
        self._canonical = confined.canonical
        return confined

    def lookup(self, path: str) -> tuple[Kind, str | None, str] | None:
        """The overlay's answer for canonical ``path`` (see :data:`installer.beneath.Lookup`)."""
        return self.overlay.get(path)

    def where(self, rel: str) -> Path | None:
        """Where the bytes of ``rel`` are (checked against the real root's symlinks)."""
        if rel in self.files:
            return self.files[rel]
        return self.targets(rel)

    def digest(self, rel: str) -> str | None:
        """What :func:`current_digest` will say of ``rel`` when this jump's turn comes."""
        if rel in self.digests:
            return self.digests[rel]
        return current_digest(self.targets(rel))

    def is_dir(self, rel: str) -> bool:
        """Whether ``rel`` is (or will be) a directory."""
        return rel in self.dirs or (self.root / rel).is_dir()

    def advance(self, manifest: Manifest, plan: Plan, staging: Path) -> None:
        """Account for ``plan`` of ``manifest`` having swapped."""
        placed = {op.path for op in plan.ops if op.action == "place"}
        for entry in manifest.files:
            # a config may place itself (a default, a rewrite), the new default beside it, or both
            paths = [p for p in (entry.path, entry.path + NEW_SUFFIX) if p in placed]
            for path in paths if entry.kind == "config" else [entry.path]:
                staged = staging / "files" / path
                self.files[path] = staged
                if entry.kind == "config":
                    self.digests[path] = current_digest(staged)  # rendered, maybe rewritten
                elif entry.kind == "symlink":
                    assert entry.link_target is not None
                    self.digests[path] = hashlib.sha256(b"symlink:" + entry.link_target.encode()).hexdigest()
                else:
                    self.digests[path] = entry.sha256
                self.dirs.update(_ancestors(path))
        for removed in manifest.removed:
            self.files[removed.path] = None
            self.digests[removed.path] = None
        self.gone_dirs.update(e.path for e in plan.emptied_dirs)
        self.overlay.update(_placed(manifest, self._canonical))


def _placed(manifest: Manifest, canonical: dict[str, str]) -> dict[str, tuple[Kind, str | None, str]]:
    """What ``manifest`` leaves at each canonical path once it has swapped."""
    out: dict[str, tuple[Kind, str | None, str]] = {}
    for entry in manifest.files:
        kind: Kind = "symlink" if entry.kind == "symlink" else "file"
        out[canonical[entry.path]] = (kind, entry.link_target, "bundle")
        for d in _ancestors(canonical[entry.path]):
            out.setdefault(d, ("dir", None, "bundle"))
    for removed in manifest.removed:
        out[canonical[removed.path]] = ("missing", None, "bundle")
    return out


class Confined:
    """Canonical paths of one jump's entries beneath the root, as the jumps planned
    before it leave the tree (see :mod:`installer.beneath`), with the checks that need
    them: no entry written through a link the jump itself places or removes, no two entries
    naming one file, none below another, and every link the jump places resolving
    beneath the root once every entry is in place.

    Raises (constructor):
        UnsafePathError: any of those (exit 3). RootLinkError: the manager's tree has a
            link out of the root on a path the jump touches (exit 4).
    """

    def __init__(self, manifest: Manifest, view: View) -> None:
        self.view = view
        self._parents: dict[str, tuple[str, list[str]]] = {}
        paths = [f.path for f in manifest.files] + [r.path for r in manifest.removed]
        resolved = {p: self._resolve(p) for p in paths}
        self.canonical = {p: c for p, (c, _) in resolved.items()}
        seen: dict[str, str] = {}
        for p, c in self.canonical.items():
            if c != p:
                try:
                    check_not_reserved(c)
                except UnsafePathError as e:
                    raise UnsafePathError(f"reaches {c} through a symlink: {e.message}", entry=p) from e
            if c.casefold() in seen:
                raise UnsafePathError(
                    f"names the same file as {seen[c.casefold()]} (through a symlink)", entry=p
                )
            seen[c.casefold()] = p
        mine = set(seen)
        placed = {self.canonical[f.path].casefold(): f.path for f in manifest.files}
        for p, (c, via) in resolved.items():
            through = next((v for v in via if v.casefold() in mine), None)
            if through is not None:
                raise UnsafePathError(
                    f"would be written through {through}, which this jump places or removes", entry=p
                )
            parts = c.casefold().split("/")
            for i in range(1, len(parts)):
                above = placed.get("/".join(parts[:i]))
                if above is not None:
                    raise UnsafePathError(f"lies below another entry ({above}) of this jump", entry=p)
        after = {**view.overlay, **_placed(manifest, self.canonical)}
        for f in manifest.files:
            if f.kind == "symlink":  # where the link leads once everything is in place
                resolve(view.root, self.canonical[f.path], after.get, follow_last=True)

    def _resolve(self, rel: str) -> tuple[str, list[str]]:
        head, _, name = rel.rpartition("/")
        if head not in self._parents:
            self._parents[head] = (
                resolve(self.view.root, head, self.view.lookup, follow_last=True) if head else ("", [])
            )
        parent, via = self._parents[head]
        return (f"{parent}/{name}" if parent else name), via

    def target(self, rel: str) -> str:
        """The canonical path of any path of the plan (an entry, ``<entry>.jumpkit-new``, a
        new directory)."""
        if rel in self.canonical:
            return self.canonical[rel]
        return self._resolve(rel)[0]


@dataclass
class SwapOp:
    """One rename pair. ``place``: staged file into the root (the old one, if any, into
    the backup). ``remove``: the old file into the backup."""

    path: str
    action: Literal["place", "remove"]
    group: Literal["files", "configs"]
    note: str = ""
    target: str = ""
    """Where in the root: the canonical path (no symlink in its parents; see
    :mod:`installer.beneath`); the staging and backup side use ``path``."""

    @property
    def where(self) -> str:
        """The root-side path (``target``, or ``path`` in a plan written before it existed)."""
        return self.target or self.path


@dataclass
class EmptiedDir:
    """A directory of the from-version that the jump's removals leave empty (a package's
    old ``*.dist-info``, a module directory a release dropped): removed after them, made
    again with its mode, owner and SELinux label by undo. Left behind, an empty
    ``foo-1.0.dist-info`` next to ``foo-1.1.dist-info`` is a second installed version to
    ``importlib.metadata``. In a chain, a directory an earlier jump creates and this one
    empties is one too (its undo makes it again before the earlier jump's undo takes it)."""

    path: str
    """Canonical path beneath the root."""
    mode: int
    uid: int
    gid: int
    label: str | None = None
    """Its ``security.selinux`` (None: none, or a plan written before labels were kept)."""


@dataclass
class Plan:
    """Everything the swap steps do, in order."""

    bundle_id: str
    ops: list[SwapOp] = field(default_factory=list)
    new_dirs: list[str] = field(default_factory=list)
    emptied_dirs: list[EmptiedDir] = field(default_factory=list)
    """Deepest first."""
    drift: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dir_attrs: list[dict[str, Any]] = field(default_factory=list)
    """Owner, group, mode and label of each directory the swap creates
    (:func:`installer.metadata.dir_wanted`)."""

    def group(self, name: str) -> list[SwapOp]:
        """The ops of one swap step."""
        return [op for op in self.ops if op.group == name]

    def save(self, staging: Path) -> None:
        """Write plan.json durably into the staging dir."""
        write_atomic(staging / PLAN_NAME, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def load(cls, staging: Path) -> Plan:
        """Read plan.json back.

        Raises:
            StateError: no plan in that staging dir.
        """
        try:
            d = json.loads((staging / PLAN_NAME).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StateError(f"no readable plan in {staging}: {e}") from e
        d["ops"] = [SwapOp(**op) for op in d["ops"]]
        d["emptied_dirs"] = [
            EmptiedDir(**e) for e in d.get("emptied_dirs", [])
        ]  # none before 0.1.x plans had it
        return cls(**d)


def _rewrite(text: str, entry: FileEntry) -> tuple[str, int]:
    """Apply the rules (checked at build and verify; a rule that still fails here refuses
    the bundle before anything stops)."""
    count = 0
    for rule in entry.rules:
        try:  # RE2: linear in the text, whatever the pattern (a rule runs while the lock is held)
            text, n = compile_rule(rule.pattern).subn(rule.replacement, text)
        except (ValueError, IndexError, KeyError) as e:
            raise BundleRejectedError(
                f"rewrite rule {rule.pattern[:60]!r} failed: {e}", entry=entry.path
            ) from e
        count += n
    return text, count


def _plan_config(
    entry: FileEntry, current: str | None, view: View, staging: Path
) -> tuple[list[SwapOp], str]:
    """The ops that place a config by its policy, and the note the plan shows (or "")."""
    default = staging / "defaults" / entry.path
    out = staging / "files" / entry.path
    out.parent.mkdir(parents=True, exist_ok=True)
    beside = out.with_name(out.name + NEW_SUFFIX)
    aside = SwapOp(entry.path + NEW_SUFFIX, "place", "configs", "new default beside")
    edited = current is not None and current not in (entry.from_sha256, entry.sha256)
    deleted = current is None and entry.from_sha256 is not None and entry.policy != "replace"
    if deleted and not entry.required:  # the operator removed it: theirs to remove
        shutil.copy2(default, beside)
        return [
            aside
        ], f"{entry.path}: deleted on this manager, left deleted; new default written to {aside.path}"
    if entry.policy == "keep-local" and edited:
        shutil.copy2(default, beside)
        view.bases.setdefault(entry.path, None)  # its base (the from-version's default) is in no bundle
        return [aside], f"{entry.path}: locally edited, kept; new default written to {aside.path}"
    if entry.policy == "rewrite" and edited:
        return _plan_rewrite(
            entry, _operator_text(entry.path, current, view), view, staging, out, beside, aside
        )
    view.bases.pop(entry.path, None)
    shutil.copy2(default, out)
    note = (
        f"{entry.path}: deleted on this manager; required by the spec: new default placed" if deleted else ""
    )
    return [SwapOp(entry.path, "place", "configs", "new default")], note


def _plan_rewrite(
    entry: FileEntry, ours: str, view: View, staging: Path, out: Path, beside: Path, aside: SwapOp
) -> tuple[list[SwapOp], str]:
    """The operator's file with the rules applied and, given the default it derives from
    (format 2 ships the from-version's; an earlier jump of a chain that kept the file
    passes its own on), the release's own changes merged in (:mod:`installer.confmerge`)."""
    text, n = _rewrite(ours, entry)
    ops = [SwapOp(entry.path, "place", "configs", f"rewrote {n} value(s)")]
    note = f"{entry.path}: locally edited, {n} value(s) rewritten, edits kept"
    chained = entry.path in view.bases  # an earlier jump of the chain left it unmerged
    shipped = staging / "base" / entry.path
    base = (
        view.bases[entry.path]
        if chained
        else shipped
        if entry.base is not None and shipped.is_file()
        else None
    )
    theirs = (staging / "defaults" / entry.path).read_text()
    if base is not None:
        merged = merge(_rewrite(base.read_text(), entry)[0], text, theirs)
        if merged.conflicts:
            shutil.copy2(staging / "defaults" / entry.path, beside)
            ops.append(aside)
            note += (f"; {merged.dropped} change(s) of the new default were not carried ({merged.conflicts} "
                     f"touch lines edited here): see {aside.path}")  # fmt: skip
            view.bases[entry.path] = base
        else:
            text = merged.text
            note += f", {merged.carried} change(s) of the new default carried in" if merged.carried else ""
            view.bases.pop(entry.path, None)
    elif chained:  # what the release changed cannot be told from what was edited here
        shutil.copy2(staging / "defaults" / entry.path, beside)
        ops.append(aside)
        differ = differing_regions(text, theirs)
        note += (f"; none of the new default's changes were carried ({differ} region(s) differ from it): an "
                 f"earlier jump of the chain kept this file as edited and no bundle holds the default it "
                 f"derives from; see {aside.path}")  # fmt: skip
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, entry.mode)
    os.replace(tmp, out)
    return ops, note


MAX_CONFIG = 16 * 1024 * 1024
"""Largest operator config a rewrite reads (a config is text an operator edits; a device
or a runaway log in its place is refused, not read until memory runs out)."""


def _operator_text(rel: str, current: str | None, view: View) -> str:
    """The operator's edited config ``rel`` for a rewrite: from staging when an earlier
    jump of the chain placed it, else read beneath the root (a link leading out of the
    root is refused, never followed).

    Raises:
        PreconditionError: not a regular file, too large or not UTF-8 (exit 4).
        RootLinkError: a symlink on the way leads out of the root (exit 4).
    """
    if current is not None and current.startswith(NOT_A_FILE):
        raise PreconditionError(f"{rel}: is {current.removeprefix(NOT_A_FILE)} on this manager, not a file")
    staged = view.files.get(rel)
    if staged is not None and staged.is_symlink():
        raise PreconditionError(f"{rel}: an earlier jump of the chain makes it a symlink; cannot rewrite it")
    data = staged.read_bytes() if staged is not None else read_beneath(view.root, rel, MAX_CONFIG)
    if data is None:
        raise PreconditionError(f"{rel}: vanished from this manager while the apply was planned")
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise PreconditionError(f"{rel}: is not UTF-8 text on this manager; cannot rewrite it") from e


def _drift_of(entry: FileEntry, current: str | None) -> str | None:
    if current in (entry.from_sha256, entry.sha256):
        return None
    if current is not None and current.startswith(NOT_A_FILE):
        return f"{entry.path}: is {current.removeprefix(NOT_A_FILE)} on this manager, not a file"
    if entry.from_sha256 is None:
        return f"{entry.path}: exists, but the from-version has no such file"
    return f"{entry.path}: missing" if current is None else f"{entry.path}: modified"


Digests = dict[str, str | None]
"""``current_digest`` by relative path, shared by the checks of one pre-flight (the drift
check and the delta check read the same files: 0.065 s each on the delta bench)."""


def _digest(target: Targets, rel: str, seen: Digests) -> str | None:
    if rel not in seen:
        seen[rel] = current_digest(target(rel))
    return seen[rel]


def check_drift(manifest: Manifest, root: Path, seen: Digests | None = None) -> list[str]:
    """Files the jump replaces or removes that differ from the from-version (configs
    under keep-local or rewrite are the operator's to edit and never drift)."""
    out = []
    target = Targets(root)
    seen = {} if seen is None else seen
    for entry in manifest.files:
        if entry.kind == "config" and entry.policy != "replace":
            continue
        d = _drift_of(entry, _digest(target, entry.path, seen))
        if d:
            out.append(d)
    for removed in manifest.removed:
        current = _digest(target, removed.path, seen)
        if current is not None and current.startswith(NOT_A_FILE):
            what = current.removeprefix(NOT_A_FILE)
            out.append(f"{removed.path}: is {what} on this manager; the jump removes a file")
        elif current is not None and removed.from_sha256 is not None and current != removed.from_sha256:
            out.append(f"{removed.path}: modified (the jump removes it)")
    return out


def delta_drift(manifest: Manifest, root: Path, seen: Digests | None = None) -> PreconditionError | None:
    """The refusal of a delta bundle whose old files differ from the from-version (a patch
    builds the new file only from the exact old one; ``--accept-drift`` cannot help), or None."""
    target = Targets(root)
    seen = {} if seen is None else seen
    bad = []
    for f in manifest.deltas():
        path, sha = f.old_file
        current = _digest(target, path, seen)
        if current == sha:
            continue
        if path == f.path:
            bad.append(_drift_of(f, current) or f"{path}: already the to-version's file")
            continue
        how = (
            "missing"
            if current is None
            else current.removeprefix(NOT_A_FILE)
            if current.startswith(NOT_A_FILE)
            else "modified"
        )
        bad.append(f"{path}: {how} ({f.path} is patched from it)")
    if not bad:
        return None
    return PreconditionError(
        f"{len(bad)} file(s) this bundle patches differ from {manifest.from_version} ({bad[0]}); "
        "a delta needs the exact old file: use a full bundle (bundle-build --delta none)",
        details=bad,
    )


def compute_plan(
    manifest: Manifest, root: Path, staging: Path, *, accept_drift: bool, view: View | None = None
) -> Plan:
    """Check drift, resolve config policies into staged files, and order the renames; in a
    chain, against ``view`` (the root as the earlier jumps leave it).

    Raises:
        DriftError: files to replace differ from the from-version (unless accept_drift).
        UnsafePathError: a target path leads outside the root.
    """
    plan = Plan(manifest.bundle_id)
    view = view or View(root)
    confined = view.confine(manifest)
    new_dirs: set[str] = set()

    def note_dirs(rel: str) -> None:
        new_dirs.update(d for d in _ancestors(rel) if not view.is_dir(d))

    for entry in manifest.files:
        current = view.digest(entry.path)
        if entry.kind == "config" and entry.policy != "replace":
            ops, note = _plan_config(entry, current, view, staging)
            if note:
                plan.notes.append(note)
        else:
            d = _drift_of(entry, current)
            if d:
                plan.drift.append(d)
            if entry.kind == "config":
                ops, _ = _plan_config(entry, current, view, staging)
            else:
                ops = [SwapOp(entry.path, "place", "files")]
        for op in ops:
            note_dirs(op.path)
            plan.ops.append(op)
    for removed in manifest.removed:
        current = view.digest(removed.path)
        if current is None:
            plan.notes.append(f"{removed.path}: already absent")
            continue
        if removed.from_sha256 is not None and current != removed.from_sha256:
            plan.drift.append(f"{removed.path}: modified (the jump removes it)")
        plan.ops.append(SwapOp(removed.path, "remove", "files"))
    _collapse_new_subtrees(plan, new_dirs)
    for op in plan.ops:
        op.target = confined.target(op.path)
    plan.new_dirs = [confined.target(d) for d in plan.new_dirs]
    plan.emptied_dirs = _emptied_dirs(root, plan, view)
    plan.notes += [f"{e.path}/: removed, as the jump leaves it empty" for e in plan.emptied_dirs]
    if plan.drift and not accept_drift:
        raise drift_error(manifest, plan.drift)
    return plan


def _ancestors(rel: str) -> list[str]:
    """The directories above ``rel``, outermost first (``a/b/c`` -> ``a``, ``a/b``)."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _emptied_dirs(root: Path, plan: Plan, view: View) -> list[EmptiedDir]:
    """The directories above the jump's removals that hold nothing else on this manager
    once the earlier jumps of a chain have swapped (nothing the jump places below them, no
    file of the operator's), deepest first."""
    removed = {op.where for op in plan.ops if op.action == "remove"}
    kept: set[str] = set()
    for op in plan.ops:
        if op.action == "place":
            kept.update(_ancestors(op.where))
    candidates = {d for rel in removed for d in _ancestors(rel)} - kept
    emptied: dict[str, EmptiedDir] = {}
    for d in sorted(candidates, key=lambda p: -p.count("/")):
        listed = _listing(root, d, view)
        if listed is None:
            continue
        names, found = listed
        if all(f"{d}/{n}" in removed or f"{d}/{n}" in emptied for n in names):
            emptied[d] = found
    return list(emptied.values())


def _listing(root: Path, d: str, view: View) -> tuple[set[str], EmptiedDir] | None:
    """What directory ``d`` will hold when this jump's turn comes (the real directory's
    entries, with what earlier jumps of a chain place into it or remove from it), and how
    undo makes it again; None when it is no directory then."""
    try:
        st = os.lstat(root / d)
        names = set(os.listdir(root / d)) if stat.S_ISDIR(st.st_mode) else None
    except FileNotFoundError:
        st, names = None, set() if d in view.dirs else None
    except OSError:
        return None
    if names is None:
        return None
    prefix = d + "/"
    names -= {
        g[len(prefix) :] for g in view.gone_dirs if g.startswith(prefix) and "/" not in g[len(prefix) :]
    }
    for path, where in view.files.items():
        if path.startswith(prefix):
            first, _, deeper = path[len(prefix) :].partition("/")
            if where is not None:
                names.add(first)  # placed by an earlier jump (or a directory above it)
            elif not deeper:
                names.discard(first)  # removed by an earlier jump
    if st is None:  # an earlier jump's new directory: its undo removes it whatever it looks like
        return names, EmptiedDir(d, 0o755, 0, 0)
    label = get_label(str(root / d))
    return names, EmptiedDir(d, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, label)


def _collapse_new_subtrees(plan: Plan, new_dirs: set[str]) -> None:
    """A directory that does not exist yet and holds only files of the files group moves
    into place with one rename (the staged directory), not one rename per file: a jump
    that adds a 24,000-file tree swaps in O(1)."""
    tops = {d for d in new_dirs if d.rpartition("/")[0] not in new_dirs}

    def top_of(path: str) -> str | None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in tops:
                return "/".join(parts[:i])
        return None

    blocked = {top_of(op.path) for op in plan.ops if op.group != "files" or op.action != "place"}
    collapsed: dict[str, None] = {}
    ops: list[SwapOp] = []
    for op in plan.ops:
        top = top_of(op.path) if op.group == "files" and op.action == "place" else None
        if top is not None and top not in blocked:
            if top not in collapsed:
                collapsed[top] = None
                ops.append(SwapOp(top, "place", "files", "new directory, one rename"))
            continue
        ops.append(op)
    plan.ops = ops
    keep = [d for d in new_dirs if not any(d == t or d.startswith(t + "/") for t in collapsed)]
    plan.new_dirs = sorted(keep, key=lambda d: (d.count("/"), d))


def drift_error(manifest: Manifest, drift: list[str]) -> DriftError:
    """The refusal for ``drift``, naming the first file."""
    return DriftError(
        f"{len(drift)} file(s) differ from {manifest.from_version} ({drift[0]}); "
        "refusing: --accept-drift backs them up and continues",
        details=drift,
    )


def placed_paths(manifest: Manifest, plan: Plan, view: View) -> list[Placed]:
    """What :func:`installer.metadata.prepare` needs of each path ``plan`` places: its
    entry, whether it is the operator's config (kept, merged, or its new default set
    beside it: the operator's owner and mode), and where the file it replaces is now."""
    entries = {f.path: f for f in manifest.files}
    out = []
    for op in plan.ops:
        if op.action != "place":
            continue
        own = op.path.removesuffix(NEW_SUFFIX)
        entry = entries.get(op.path) or entries.get(own)
        kept = entry is not None and entry.kind == "config" and entry.policy != "replace"
        out.append(Placed(op.path, op.target, entry, kept, view.where(own if kept else op.path)))
    return out


def plan_jumps(
    jumps: list[tuple[Manifest, Path]],
    root: Path,
    *,
    accept_drift: bool,
    log: Callable[[str], None],
    labels: Labels | None = None,
) -> list[Plan]:
    """Every jump's plan (manifest, staging dir), before anything stops: each against the
    root as the jumps before it leave it (drift between the bundles of a chain is refused
    here), its staged paths given their owner, mode, capabilities and label
    (:mod:`installer.metadata`, with ``labels``); each saved into its staging dir.

    Raises:
        DriftError, UnsafePathError, BundleRejectedError: as :func:`compute_plan`.
        PreconditionError: an attribute could not be set.
    """
    view = View(root)
    plans = []
    for m, staging in jumps:
        plan = compute_plan(m, root, staging, accept_drift=accept_drift, view=view)
        if labels is not None:
            plan.notes += prepare(placed_paths(m, plan, view), m, root, staging, labels)
            plan.dir_attrs = dir_wanted(m, plan.new_dirs, root, labels)
        for note in plan.notes[:MAX_NOTES_LOGGED]:
            log(note)
        if len(plan.notes) > MAX_NOTES_LOGGED:  # a summary, not a line per entry (plan.json has all)
            log(f"... and {len(plan.notes) - MAX_NOTES_LOGGED} more note(s) in {staging / PLAN_NAME}")
        if plan.drift:
            log(f"accepting drift in {len(plan.drift)} file(s); originals go to the backup")
        plan.save(staging)
        plans.append(plan)
        view.advance(m, plan, staging)
    return plans

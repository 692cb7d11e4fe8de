"""Collecting a jump's inputs: the diff of two release trees, rendered configs, hooks.
Nothing is hashed twice for new files: the writer hashes while it compresses."""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2

from builder.delta import Choice, find_bases
from builder.errors import SpecError
from builder.resources import templates
from builder.spec import FilesSpec, JumpSpec, ModeSpec, Product, UnitSpec
from builder.trees import TreeFile, matches, walk_tree
from builder.zipwriter import Source
from installer.attrs import describe_caps
from installer.format import BASE_PREFIX, PAYLOAD_PREFIX, RemovedEntry, RewriteRule
from installer.paths import check_link_target, check_relpath
from installer.swapplan import current_digest


@dataclass(frozen=True)
class Attrs:
    """What the spec's ``modes`` say of one path besides its mode."""

    owner: str | None = None
    group: str | None = None
    mode_explicit: bool = False
    allow_caps: bool = False


@dataclass(slots=True)
class Pending:
    """A manifest file entry waiting for the writer's sha256 and size."""

    path: str
    kind: Literal["file", "config", "symlink"]
    mode: int
    from_sha256: str | None
    source: Source | None = None
    link_target: str | None = None
    policy: Literal["replace", "keep-local", "rewrite"] = "replace"
    rules: tuple[RewriteRule, ...] = ()
    old_path: str | None = None
    """The from-release file a delta may patch: the one a changed file replaces, or an
    added file's ``base``."""
    base: str | None = None
    """For an added file: the from-version path of ``old_path`` (:func:`find_bases`)."""
    delta: Choice | None = None
    """Set when the file travels as a patch (``source`` is then the patch)."""
    base_source: Source | None = None
    """A rewrite config: the from-version default, the merge base (member ``base/<path>``)."""
    required: bool = False
    attrs: Attrs = Attrs()
    caps: str | None = None


@dataclass
class Collected:
    """What the jump carries."""

    files: list[Pending] = field(default_factory=list)
    removed: list[RemovedEntry] = field(default_factory=list)
    extras: list[Source] = field(default_factory=list)

    def sources(self) -> list[Source]:
        """Every archive member to write, in a fixed order: extras, then payload."""
        payload = [f.source for f in self.files if f.source is not None]
        payload += [f.base_source for f in self.files if f.base_source is not None]
        return sorted(self.extras, key=lambda s: s.name) + sorted(payload, key=lambda s: s.name)


def normalized_mode(path: str, st_mode: int, modes: Mapping[str, str | ModeSpec]) -> int:
    """0755 if the tree's file is executable, else 0644 (as git records modes, so a build
    does not depend on the umask of the checkout), then the spec's ``modes`` overrides
    (special bits only where the spec allowed them for that exact path)."""
    mode = 0o755 if st_mode & 0o111 else 0o644
    for pat, m in modes.items():
        given = m if isinstance(m, str) else m.mode
        if given is not None and fnmatch.fnmatchcase(path, pat):
            mode = int(given, 8)
    return mode


def attrs_of(path: str, modes: Mapping[str, str | ModeSpec]) -> Attrs:
    """The owner, group (the last pattern that names one wins), whether a pattern sets the
    mode, and whether capabilities are allowed for exactly ``path``."""
    owner = group = None
    explicit = caps = False
    for pat, m in modes.items():
        if not fnmatch.fnmatchcase(path, pat):
            continue
        if isinstance(m, str) or m.mode is not None:
            explicit = True
        if isinstance(m, ModeSpec):
            owner, group = m.owner or owner, m.group or group
            caps = caps or (m.allow_caps and pat == path)
    return Attrs(owner, group, explicit, caps)


def file_caps(path: str) -> str | None:
    """The ``security.capability`` of a release tree's file (hex), or None."""
    try:
        return os.getxattr(path, "security.capability", follow_symlinks=False).hex()
    except OSError:
        return None


def render_configs(product: Product, version: str, variables: dict[str, Any]) -> dict[str, bytes]:
    """Render every ``config/**.j2`` template of a release with ``variables``.

    Raises:
        SpecError: a template fails to render (undefined variable, syntax).
    """
    cfg_dir = product.release_dir(version) / "config"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(cfg_dir),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    out: dict[str, bytes] = {}
    for rel in walk_tree(cfg_dir):
        if not rel.endswith(".j2"):
            continue
        try:
            text = env.get_template(rel).render(version=version, **variables)
        except jinja2.TemplateError as e:
            raise SpecError(f"{cfg_dir / rel}: {e}") from e
        out[rel.removesuffix(".j2")] = text.encode()
    return out


def render_unit(
    product: str, version: str, name: str, unit: UnitSpec, stop_timeout: float, kind: str = "service"
) -> bytes:
    """Render templates/systemd/<kind>.j2 (``service`` or ``socket``) for one service."""
    from builder import __version__

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return (
        env.get_template(f"systemd/{kind}.j2")
        .render(
            name=name,
            unit=unit,
            product=product,
            version=version,
            stop_timeout=max(1, stop_timeout),
            jumpkit_version=__version__,
        )
        .encode()
    )


def _pair_added(out: Collected, old: Mapping[str, TreeFile]) -> None:
    """Give each added file a base to be patched against, among the from-release files the
    jump removes or replaces (those must already match on the manager)."""
    exact = {r.path for r in out.removed} | {p.path for p in out.files if p.old_path is not None}
    olds = {p: old[p].size for p in exact if p in old and not old[p].is_link}
    added = {
        p.path: p.source.size or 0
        for p in out.files
        if p.kind == "file" and p.from_sha256 is None and p.source is not None and p.source.path is not None
    }
    by_path = {p.path: p for p in out.files}
    for path, base in find_bases(added, olds).items():
        by_path[path].old_path, by_path[path].base = old[base].path, base


def _dirs_of(paths: Iterable[str]) -> set[str]:
    return {"/".join(parts[:i]) for p in paths for parts in [p.split("/")] for i in range(1, len(parts))}


def _refuse_type_changes(old: Mapping[str, TreeFile], new: Mapping[str, TreeFile], frm: str, to: str) -> None:
    """A path that is a directory in one release and a file or symlink in the other cannot be
    swapped by renames of files (the installer refuses such a bundle on every manager: a
    removal below a placed entry, or a placed entry below a file). Said here, at build
    time, instead of in a signed bundle no manager takes.

    Raises:
        SpecError: the first such path (and how many there are).
    """
    changed = sorted((set(new) & _dirs_of(old)) | (set(old) & _dirs_of(new)))
    if changed:
        first = changed[0]
        was, now = ("a directory", "a file") if first in new else ("a file", "a directory")
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise SpecError(
            f"{first} is {was} in {frm} and {now} in {to}{more}: jumpkit cannot swap a path "
            "whose type changes (not supported yet; the release must keep its type)"
        )


def collect(
    product: Product,
    jump: JumpSpec,
    jump_dir: Path,
    trees: tuple[Mapping[str, TreeFile], Mapping[str, TreeFile]] | None = None,
) -> Collected:
    """Diff the from- and to-release trees (``trees`` when walked already) under the
    jump's include/exclude patterns: files, configs, removals, units, hooks and jobs,
    component RPMs.

    Raises:
        SpecError: a release is missing, or a spec entry refers to nothing.
    """
    frm, to = jump.from_version, jump.to_version
    if trees is None:
        for v in (frm, to):
            if not product.release_dir(v).is_dir():
                raise SpecError(f"release {v} has no directory {product.release_dir(v)}")
        trees = walk_tree(product.release_dir(frm) / "root"), walk_tree(product.release_dir(to) / "root")
    fs = jump.files
    old = {p: f for p, f in trees[0].items() if matches(p, fs.include) and not matches(p, fs.exclude)}
    new = {p: f for p, f in trees[1].items() if matches(p, fs.include) and not matches(p, fs.exclude)}
    _refuse_type_changes(old, new, frm, to)
    out = Collected()
    _collect_files(out, old, new, fs, to)
    removed = set(old) - set(new)
    for path in fs.remove:
        check_relpath(path)
        removed.add(path)
    variables = {**product.spec.variables, **jump.variables}
    old_cfg = render_configs(product, frm, variables)
    removed |= _collect_configs(out, old_cfg, render_configs(product, to, variables), jump)
    _collect_removals(out, removed, old, old_cfg)
    _pair_added(out, old)
    _collect_units(out, product, jump)
    _collect_scripts(out, jump, jump_dir)
    return out


def _collect_files(
    out: Collected, old: Mapping[str, TreeFile], new: Mapping[str, TreeFile], fs: FilesSpec, to: str
) -> None:
    """Each release file that is new or differs (content, normalized mode, capabilities)."""
    for path, entry in new.items():
        before = old.get(path)
        from_sha = current_digest(Path(before.path)) if before is not None else None
        if entry.is_link:
            target = os.readlink(entry.path)
            check_link_target(path, target)
            if from_sha != current_digest(Path(entry.path)):
                out.files.append(Pending(path, "symlink", 0o777, from_sha, link_target=target))
            continue
        mode = normalized_mode(path, entry.mode, fs.modes)
        attrs, caps = attrs_of(path, fs.modes), file_caps(entry.path)
        if caps is not None and not attrs.allow_caps:
            raise SpecError(
                f"{path} has file capabilities in release {to} ({describe_caps(caps)}): allow them for "
                f"this exact path in files.modes: {{{path!r}: {{allow_caps: true}}}}"
            )
        if (
            before is not None
            and not before.is_link
            and before.size == entry.size
            and normalized_mode(path, before.mode, fs.modes) == mode
            and file_caps(before.path) == caps
            and from_sha == current_digest(Path(entry.path))
        ):
            continue
        source = Source(PAYLOAD_PREFIX + path, mode, path=entry.path, size=entry.size)
        old_path = before.path if before is not None and not before.is_link else None
        out.files.append(
            Pending(path, "file", mode, from_sha, source, old_path=old_path, attrs=attrs, caps=caps)
        )


def _collect_configs(
    out: Collected, old_cfg: Mapping[str, bytes], new_cfg: Mapping[str, bytes], jump: JumpSpec
) -> set[str]:
    """Each rendered config that differs, with its policy; returns the configs the
    to-release no longer has (removed)."""
    fs = jump.files
    policies = {c.path: c for c in jump.configs}
    for missing in sorted(set(policies) - set(new_cfg)):
        raise SpecError(
            f"configs: {missing} has no template config/{missing}.j2 in release {jump.to_version}"
        )
    for path, data in new_cfg.items():
        spec = policies.get(path)
        before_cfg = old_cfg.get(path)
        if before_cfg == data:
            continue
        from_sha = None if before_cfg is None else hashlib.sha256(before_cfg).hexdigest()
        cfg_mode = normalized_mode(path, 0o644, fs.modes) & 0o777  # a config is never setuid
        out.files.append(
            Pending(
                path,
                "config",
                cfg_mode,
                from_sha,
                Source(PAYLOAD_PREFIX + path, cfg_mode, data=data),
                attrs=attrs_of(path, fs.modes),
                policy=spec.policy if spec else "replace",
                rules=spec.rules if spec else (),
                base_source=(
                    Source(BASE_PREFIX + path, 0o644, data=before_cfg)
                    if spec and spec.policy == "rewrite" and before_cfg is not None
                    else None
                ),
                required=bool(spec and spec.required and spec.policy != "replace"),
            )
        )
    return set(old_cfg) - set(new_cfg)


def _collect_removals(
    out: Collected, removed: set[str], old: Mapping[str, TreeFile], old_cfg: Mapping[str, bytes]
) -> None:
    """Each removed path with the digest the manager must hold for it (drift check)."""
    for path in sorted(removed):
        before = old.get(path)
        from_sha: str | None
        if before is None and path in old_cfg:
            from_sha = hashlib.sha256(old_cfg[path]).hexdigest()
        else:
            from_sha = current_digest(Path(before.path)) if before is not None else None
        out.removed.append(RemovedEntry(path=path, from_sha256=from_sha))


def _collect_units(out: Collected, product: Product, jump: JumpSpec) -> None:
    """The unit files (and sockets) the jump's ``units:`` render."""
    for name, unit in sorted(jump.units.items()):
        svc = next((s for s in (jump.services or product.spec.services).services if s.name == name), None)
        for kind in ("service", "socket") if unit.socket else ("service",):
            path = f"etc/systemd/system/{name}.{kind}"
            if path in {f.path for f in out.files}:
                raise SpecError(f"units: {name}: {path} is also shipped as a file")
            data = render_unit(
                product.name, jump.to_version, name, unit, svc.stop_timeout if svc else 30.0, kind
            )
            out.files.append(
                Pending(path, "file", 0o644, None, Source(PAYLOAD_PREFIX + path, 0o644, data=data))
            )


def _collect_scripts(out: Collected, jump: JumpSpec, jump_dir: Path) -> None:
    """Hooks (and their undo scripts), jobs and component RPMs, as extra members."""
    scripts: list[tuple[str, str, str]] = []
    for hook in jump.hooks:
        scripts.append(("hooks", hook.name, hook.script))
        if hook.undo_script:
            scripts.append(("hooks", f"{hook.name}-undo", hook.undo_script))
    scripts += [("jobs", job.name, job.script) for job in jump.jobs]
    seen: set[str] = set()
    for where, name, script in scripts:
        if name in seen:
            raise SpecError(f"{where}: {name}: the name is used by another hook or job")
        seen.add(name)
        src = jump_dir / script
        if not src.is_file():
            raise SpecError(f"{where}: {name}: script {src} does not exist")
        out.extras.append(Source(f"hooks/{name}", 0o755, path=src))
    for rel in jump.components:
        src = jump_dir / rel
        if not src.is_file() or not src.name.endswith(".rpm"):
            raise SpecError(f"components: {rel}: no such .rpm file ({src})")
        out.extras.append(Source(f"components/{src.name}", 0o644, path=src))

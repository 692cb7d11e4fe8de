"""``bundle-build lint``: what a product's specs get wrong before a build finds out at
apply time, each problem on its ``file:line`` (``builder.specfile``).

Errors (the build runs the same checks on the jump it builds and refuses on any):
schema errors with "did you mean" (unknown keys, ``when:`` values), versions YAML reads
as numbers, ``rules:`` without ``policy: rewrite``, hook, job and component files that
do not exist, configs with no template in the to-release, an ``include`` pattern that
matches nothing in the to-release (the bundle would carry no files: caught before at
apply, by the health check, after the outage began), and files that changed between the
two releases but that no include pattern carries and no exclude leaves out on purpose
(rpmbuild's "installed but unpackaged files"), and a version file the jump would not leave
saying its to-version (missing, another version, or not carried). Warnings: ``rewrite`` with no rules, and
``exclude``, ``modes`` and ``remove`` entries that match nothing.
"""

from __future__ import annotations

import filecmp
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from builder.errors import SpecError
from builder.spec import JumpSpec, Product, ProductSpec, full_version, load_spec, parses
from builder.specfile import Located, Problem, closest, did_you_mean, salvage
from builder.trees import TreeFile, matches, walk_tree
from installer.graph import violations

Trees = tuple[Mapping[str, TreeFile], Mapping[str, TreeFile]]
SHOWN = 5
WARN: Literal["warning"] = "warning"
"""Unpackaged files named in one problem (the count says how many more)."""


def release_trees(product: Product, jump: JumpSpec) -> Trees:
    """The from- and to-release trees, walked once for the lint and the build.

    Raises:
        SpecError: a release has no directory.
    """
    out = []
    for v in (jump.from_version, jump.to_version):
        if not product.release_dir(v).is_dir():
            raise SpecError(f"release {v} has no directory {product.release_dir(v)}")
        out.append(walk_tree(product.release_dir(v) / "root"))
    return out[0], out[1]


def lint_product(specs_dir: Path, name: str | None) -> list[Problem]:
    """Every problem of a product and of each of its jumps (trees walked per jump).

    Raises:
        SpecError: no product can be found at all (the problems of one that is found,
            however broken, are returned).
    """
    from builder.spec import load_product

    out: list[Problem] = []
    try:
        product = load_product(specs_dir, name)
    except SpecError as e:
        if not e.found:
            raise
        # product.yaml is broken: its problems, and the jumps' checked against what of it holds
        salvaged = _salvaged_product(e.found[0].file)
        if salvaged is None:
            return list(e.found)
        product, out = salvaged, list(e.found)
    path = product.dir / "product.yaml"
    _, doc, _ = load_spec(ProductSpec, path)
    assert doc is not None
    init = product.spec.sandbox.init
    if init is not None and not (product.dir / init).is_file():
        out.append(doc.problem(("sandbox", "init"), f"sandbox.init: no such script {product.dir / init}"))
    if not (product.dir / product.spec.releases).is_dir():
        out.append(
            doc.problem(("releases",), f"releases: no directory {product.dir / product.spec.releases}")
        )
    for jump_path in product.jump_files().values():
        out += lint_jump(product, jump_path)
    return sorted(out, key=lambda p: (str(p.file), p.line or 0))


def _salvaged_product(path: Path) -> Product | None:
    """The product of a ``product.yaml`` that does not validate, with what fails taken out
    (:func:`builder.specfile.salvage`; its name from its directory), or None."""
    if path.name != "product.yaml":
        return None
    _, doc, _ = load_spec(ProductSpec, path)
    if doc is None:
        return None
    spec = salvage(ProductSpec, doc.data, {"product": path.parent.name})
    return None if spec is None else Product(spec, path.parent)


def lint_jump(product: Product, path: Path, trees: Trees | None = None) -> list[Problem]:
    """The problems of one jump file; its release trees are walked unless given. A file
    that does not validate is checked further with what fails taken out (its from/to from
    its name), so one run reports every independent problem."""
    jump, doc, problems = load_spec(JumpSpec, path)
    frm, sep, to = path.stem.partition("-")
    out: list[Problem] = list(problems)
    bad_names = [v for v in (frm, to) if sep and not parses(v)]
    if doc is not None and (not sep or bad_names):
        out.append(doc.problem((), _name_problem(path, bad_names)))
    if jump is None and doc is not None:
        fill = {"from": frm, "to": to} if sep and not bad_names else {}
        jump = salvage(JumpSpec, _versions_quoted(doc.data), fill)
    if jump is None or doc is None:
        return out
    if sep and not bad_names and (frm, to) != (jump.from_version, jump.to_version):
        out.append(doc.problem(("from",), f"from/to ({jump.from_version} -> {jump.to_version}) do not "
                                          f"match the file name {path.name} (<from>-<to>.yaml)"))  # fmt: skip
    for broken in violations(product.spec.policy, jump.from_version, jump.to_version):
        out.append(doc.problem(("from",), f"breaks the version policy: {broken} (or list it under "
                                          "policy.exceptions in product.yaml with a reason)"))  # fmt: skip
    out += _configs(product, jump, doc)
    out += _scripts(jump, doc, path.parent)
    if trees is None:
        try:
            trees = release_trees(product, jump)
        except SpecError as e:
            return [*out, doc.problem(("to",), str(e))]
    return out + _trees(jump, doc, trees) + _version_file(product, jump, doc, trees)


def _name_problem(path: Path, bad: list[str]) -> str:
    if not bad:
        return f"{path.name}: a jump file is named <from>-<to>.yaml"
    near = [f'"{full_version(v)}"' for v in bad if full_version(v)]
    hint = f" (did you mean {' and '.join(near)}?)" if near else ""
    names = ", ".join(repr(v) for v in bad)
    return f"{path.name}: {names} in the file name is not a version (want MAJOR.MINOR.PATCH){hint}"


def _versions_quoted(data: object) -> object:
    """``data`` with a number YAML read for from/to as the text it was (lint has said so)."""
    if isinstance(data, dict):
        return {
            k: (str(v) if k in ("from", "to") and isinstance(v, int | float) else v) for k, v in data.items()
        }
    return data


def _version_file(product: Product, jump: JumpSpec, doc: Located, trees: Trees) -> list[Problem]:
    """The jump must leave the version file saying its to-version: pre-flight reads it for
    the next jump, ``status`` and ``report`` show it. A to-release whose file says
    another version, or a jump that does not carry it, built a bundle that "upgraded" a
    manager which still said the old version (the installer refuses such a bundle too)."""
    rel, to = product.spec.version_file, jump.to_version
    where = f"version_file {rel}"
    entry = trees[1].get(rel)
    if entry is None or entry.is_link:
        return [doc.problem(("to",), f"{where}: not a file in release {to}")]
    with open(entry.path, "rb") as f:
        said = f.read(4097).strip()
    if said != to.encode():
        shown = said[:40].decode(errors="replace")
        return [doc.problem(("to",), f"{where} says {shown!r} in release {to}, not {to!r}")]
    fs = jump.files
    if not matches(rel, fs.include) or matches(rel, fs.exclude):
        return [doc.problem(("files",), f"{where}: the jump does not carry it (files.include/exclude)")]
    return []


def _configs(product: Product, jump: JumpSpec, doc: Located) -> list[Problem]:
    out = []
    templates = product.release_dir(jump.to_version) / "config"
    for i, c in enumerate(jump.configs):
        if c.rules and c.policy != "rewrite":
            out.append(doc.problem(("configs", i, "rules"), f"configs.{i}.rules: {c.path} has rules but "
                                   f"policy {c.policy}: rules run only with policy: rewrite"))  # fmt: skip
        if c.required and c.policy == "replace":
            said = f"configs.{i}.required: {c.path}: only keep-local and rewrite configs can be required"
            out.append(doc.problem(("configs", i, "required"), said))
        if c.policy == "rewrite" and not c.rules:
            out.append(doc.problem(("configs", i, "policy"), f"configs.{i}: {c.path}: rewrite with no rules "
                                   "keeps the operator's file as it is", "warning"))  # fmt: skip
        if not (templates / f"{c.path}.j2").is_file():
            out.append(doc.problem(("configs", i, "path"), f"configs.{i}.path: {c.path} has no template "
                                   f"config/{c.path}.j2 in release {jump.to_version}"))  # fmt: skip
    return out


def _scripts(jump: JumpSpec, doc: Located, jump_dir: Path) -> list[Problem]:
    out = []
    named: list[tuple[tuple[str | int, ...], str]] = []
    for i, h in enumerate(jump.hooks):
        named.append((("hooks", i, "script"), h.script))
        if h.undo_script:
            named.append((("hooks", i, "undo_script"), h.undo_script))
    named += [(("jobs", i, "script"), j.script) for i, j in enumerate(jump.jobs)]
    named += [(("components", i), c) for i, c in enumerate(jump.components)]
    for loc, rel in named:
        if not (jump_dir / rel).is_file():
            field = ".".join(map(str, loc))
            out.append(
                doc.problem(loc, f"{field}: no such file {jump_dir / rel} (relative to the jump file)")
            )
    return out


def _trees(jump: JumpSpec, doc: Located, trees: Trees) -> list[Problem]:
    old, new = trees
    fs = jump.files
    out = []
    to, frm = jump.to_version, jump.from_version
    for i, pat in enumerate(fs.include):
        if not any(matches(p, (pat,)) for p in new):
            said = (
                f"files.include: {pat!r} matches nothing in release {to}: the bundle would carry none of it"
            )
            out.append(doc.problem(("files", "include", i), said + _near(pat, new)))
    for i, pat in enumerate(fs.exclude):
        if not any(matches(p, (pat,)) for p in (*old, *new)):
            out.append(doc.problem(("files", "exclude", i), f"files.exclude: {pat!r} matches nothing", WARN))
    for pat in fs.modes:
        if not any(matches(p, (pat,)) for p in new):
            out.append(doc.problem(("files", "modes", pat), f"files.modes: {pat!r} matches nothing", WARN))
    for i, rel in enumerate(fs.remove):
        if rel not in old:
            out.append(
                doc.problem(("files", "remove", i), f"files.remove: {rel} is not in release {frm}", WARN)
            )
    # only what no pattern names is compared: usually nothing, so the build pays no second read
    unnamed = (
        p for p in sorted(set(old) | set(new)) if not matches(p, fs.include) and not matches(p, fs.exclude)
    )
    left = [p for p in unnamed if p not in old or p not in new or _differs(old[p], new[p])]
    if left:
        more = f" (+{len(left) - SHOWN} more)" if len(left) > SHOWN else ""
        said = (
            f"{len(left)} file(s) differ between {frm} and {to} but no include pattern carries them "
            f"and no exclude leaves them out: {', '.join(left[:SHOWN])}{more}"
        )
        out.append(doc.problem(("files",) if "files" in (doc.data or {}) else (), said))
    return out


def _near(pattern: str, tree: Mapping[str, TreeFile]) -> str:
    """A suggestion for a pattern that matches nothing: the directory of the tree nearest
    to the pattern's literal part (``opt/demo-manger/*`` -> ``opt/demo-manager/...``)."""
    literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    if "/" not in literal:
        return did_you_mean(literal, tree)
    head = literal.rsplit("/", 1)[0]
    near = closest(head, {d for p in tree for d in _parents(p)})
    return f" (did you mean {near + pattern[len(head) :]!r}?)" if near is not None else ""


def _parents(path: str) -> Iterator[str]:
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


def _differs(a: TreeFile, b: TreeFile) -> bool:
    if (a.size, a.mode, a.is_link) != (b.size, b.mode, b.is_link):
        return True
    if a.is_link:
        return os.readlink(a.path) != os.readlink(b.path)
    return not filecmp.cmp(a.path, b.path, shallow=False)

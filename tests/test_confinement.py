"""Confinement (issue 20), the parts done so far: a validly signed bundle may not touch the
installer's own paths, may not carry setuid/setgid/sticky bits unless the product spec
allows that exact path, and pre-flight never creates a database anywhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.counts import count
from tests.helpers import SPECS, Sandbox, build, install, tree_hash, tree_listing
from tests.hostile.corpus import _entry, read, write

Edit = Callable[[dict[str, object], dict[str, bytes]], None]


def _signed(bundle: Path, key: Path, out: Path, edit: Edit) -> Path:
    from builder.keys import load_private_key
    from installer.codec import canonical_json
    from installer.signing import sign_manifest

    members = read(bundle)
    manifest = json.loads(members["manifest.json"])
    edit(manifest, members)
    data = canonical_json(manifest)
    return write(
        out, {**members, "manifest.json": data, "manifest.sig": sign_manifest(data, load_private_key(key))}
    )


def _add_file(path: str, mode: int = 0o644) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        files, entry, name = _entry(man, m)
        files.append(dict(entry, path=path, from_sha256=None, mode=mode))
        man["files"] = files
        m["payload/" + path] = m[name]

    return edit


def _add_symlink(path: str, target: str) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        files, _, _ = _entry(man, m)
        files.append({"path": path, "kind": "symlink", "link_target": target, "mode": 0o777, "size": 0,
                      "policy": "replace", "rules": [], "sha256": None, "from_sha256": None})  # fmt: skip
        man["files"] = files

    return edit


def _remove(path: str) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        man["removed"] = [*man["removed"], {"path": path, "from_sha256": None}]  # type: ignore[misc]

    return edit


def _hook_mode(mode: int) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        extras = [dict(x) for x in man["extras"]]  # type: ignore[attr-defined]
        hook = next(x for x in extras if x["name"].startswith("hooks/"))
        hook["mode"] = mode
        man["extras"] = extras

    return edit


def _special(path_mode: int, listed: bool) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        files = [dict(f) for f in man["files"]]  # type: ignore[attr-defined]
        entry = next(f for f in files if f["kind"] == "file")
        entry["mode"] = path_mode
        man["files"] = files
        if listed:
            man["special_modes"] = [entry["path"]]

    return edit


MINE = "belongs to the installer"
HOSTILE: dict[str, tuple[Edit, str]] = {
    "remove-the-lock": (_remove("var/lib/jumpkit/demo-manager/lock"), MINE),
    "remove-the-journal": (_remove("var/lib/jumpkit/demo-manager/journal.jsonl"), MINE),
    "replace-the-managers-installer": (_add_file("var/lib/jumpkit/bin/bundle-install", 0o755), MINE),
    "plant-a-trusted-key": (_add_file("etc/jumpkit/trusted-keys/evil.pub"), MINE),
    "rewrite-the-product-marker": (_add_file("etc/jumpkit/product"), MINE),
    "link-over-var-lib": (_add_symlink("var/lib", "opt"), MINE),
    "file-over-etc": (_add_file("etc"), MINE),
    "case-folded-reserved": (_add_file("VAR/lib/JumpKit/x"), MINE),
    "setuid-hook": (_hook_mode(0o4755), "no hook or extra member may be setuid"),
    "setgid-hook": (_hook_mode(0o2755), "no hook or extra member may be setuid"),
    "sticky-file-not-allowed": (_special(0o1644, listed=False), "allow_setuid"),
    "setgid-file-not-allowed": (_special(0o2755, listed=False), "allow_setuid"),
}  # fmt: skip


def _both(*edits: Edit) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        for e in edits:
            e(man, m)

    return edit


def _extra_mode(name: str, mode: int) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        extras = [dict(x) for x in man["extras"]]  # type: ignore[attr-defined]
        next(x for x in extras if x["name"] == name)["mode"] = mode
        man["extras"] = extras

    return edit


def _add_extra(name: str, mode: int) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        extras = [dict(x) for x in man["extras"]]  # type: ignore[attr-defined]
        hook = next(x for x in extras if x["name"].startswith("hooks/"))
        extras.append(dict(hook, name=name, mode=mode))
        m[name] = m[hook["name"]]
        man["extras"] = extras

    return edit


def _config_mode(mode: int) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        files = [dict(f) for f in man["files"]]  # type: ignore[attr-defined]
        next(f for f in files if f["kind"] == "config")["mode"] = mode
        man["files"] = files

    return edit


def _graph_bomb(man: dict[str, object], m: dict[str, bytes]) -> None:
    man["graph"] = {**man["graph"], "jumps": [[f"1.0.{i}", f"1.0.{i + 1}"] for i in range(10_001)]}  # type: ignore[dict-item]


def _config_path(path: str) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        files = [dict(f) for f in man["files"]]  # type: ignore[attr-defined]
        entry = next(f for f in files if f["kind"] == "config")
        m["payload/" + path] = m["payload/" + entry["path"]]
        entry["path"] = path
        man["files"] = files

    return edit


def _rule(pattern: str) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        files = [dict(f) for f in man["files"]]  # type: ignore[attr-defined]
        entry = next(f for f in files if f.get("policy") == "rewrite")
        entry["rules"] = [{"pattern": pattern, "replacement": "x"}]
        man["files"] = files

    return edit


def _symlink_mode(mode: int) -> Edit:
    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        _add_symlink("opt/demo-manager/s", "VERSION")(man, m)
        files = man["files"]
        files[-1]["mode"] = mode  # type: ignore[index]

    return edit


def _same(man: dict[str, object], m: dict[str, bytes]) -> None:
    """The bundle as built, re-signed: the hostile part is the manager's tree."""


Setup = Callable[[Path, Path], None]
"""Changes the manager's tree (root, a canary directory outside it) before a case."""


def _link(path: str, target: str) -> Setup:
    """``path`` becomes a symlink to ``target`` (``{canary}`` in it: the canary dir)."""

    def setup(root: Path, canary: Path) -> None:
        where = root / path
        if where.is_dir() and not where.is_symlink():
            shutil.copytree(where, canary / where.name, symlinks=True)
            shutil.rmtree(where)
        elif where.exists() or where.is_symlink():
            shutil.copy2(where, canary / where.name, follow_symlinks=False)
            where.unlink()
        os.symlink(target.format(canary=canary), where)

    return setup


def _dir_holding_a_link_out(path: str) -> Setup:
    def setup(root: Path, canary: Path) -> None:
        (root / path).unlink()
        (root / path).mkdir()
        os.symlink(canary, root / path / "out")

    return setup


CUR = "opt/demo-manager/current"
CURRENT_DOT = _link(CUR, ".")
CURRENT_OUT = _link(CUR, "../../..")
ESC = "leads out of the root"
TREE = "the manager's tree has a symlink leading out of the root"
RE2 = "rewrite rule"
DRIFT_ONLY = {"removal-is-a-dir-holding-a-link-out", "rewritten-config-is-a-link-out"}
"""Cases refused by pre-flight's reading of the manager's files (the drift check, the
operator's config a rewrite reads): verify checks the paths a jump writes, not contents."""
# more signed neighbours: (edit, a change to the manager's tree first or None, exit code, phrase)
MORE: dict[str, tuple[Edit, Setup | None, int, str]] = {
    "file-at-var-lib-jumpkit": (_add_file("var/lib/jumpkit"), None, 3, MINE),
    "link-at-etc-jumpkit": (_add_symlink("etc/jumpkit", "../opt"), None, 3, MINE),
    "remove-the-status": (_remove("var/lib/jumpkit/demo-manager/status.json"), None, 3, MINE),
    "remove-the-product-marker": (_remove("etc/jumpkit/product"), None, 3, MINE),
    "link-at-the-installers-bin": (_add_symlink("var/lib/jumpkit/bin", "../../../tmp"), None, 3, MINE),
    "config-at-a-reserved-path": (_config_path("etc/jumpkit/trust.conf"), None, 3, MINE),
    "bundle-link-into-reserved-then-a-file": (
        _both(_add_symlink("opt/demo-manager/k", "../../etc/jumpkit"), _add_file("opt/demo-manager/k/x")),
        None, 3, "lies below another entry",
    ),
    "remove-reserved-through-a-root-link": (
        _remove("opt/demo-manager/k/demo-manager/lock"), _link("opt/demo-manager/k", "../../var/lib/jumpkit"),
        3, MINE,
    ),
    "setuid-config": (_config_mode(0o4644), None, 3, "allow_setuid"),
    "setuid-symlink": (_symlink_mode(0o4777), None, 3, "allow_setuid"),
    "sticky-hook-member": (_extra_mode("hooks/node", 0o1755), None, 3, "may be setuid"),
    "setuid-migration-member": (_extra_mode("migrations/main/versions/0001_items.py", 0o4644), None, 3,
                                "may be setuid"),
    "setuid-installer-member": (_add_extra("bin/bundle-install", 0o4755), None, 3, "may be setuid"),
    "absolute-link-target": (_add_symlink("opt/demo-manager/abs", "/opt/demo-manager"), None, 3, "relative"),
    "link-chain-out": (  # as text b stays inside; followed, a/a/a is opt/demo-manager and b climbs out
        _both(_add_symlink("opt/demo-manager/a", "."), _add_symlink("opt/demo-manager/b", "a/a/a/../../..")),
        None, 3, ESC,
    ),
    "link-loop": (_add_symlink("opt/demo-manager/loop", "loop"), None, 3, "loops"),
    "link-up-through-a-root-link": (_add_symlink(f"{CUR}/up", "../../.."), CURRENT_DOT, 3, ESC),
    "two-names-one-file": (_add_file(f"{CUR}/VERSION"), CURRENT_DOT, 3, "names the same file"),
    "write-through-a-removed-link": (_both(_remove(CUR), _add_file(f"{CUR}/x")), CURRENT_DOT, 3, "this jump"),
    "write-below-a-root-link-out": (_add_file(f"{CUR}/x"), CURRENT_OUT, 4, TREE),
    "remove-below-a-root-link-out": (_remove(f"{CUR}/y"), CURRENT_OUT, 4, TREE),
    "root-link-out-at-depth-1": (_same, _link("etc", "{canary}/etc"), 4, TREE),
    "root-link-out-at-depth-2": (_same, _link("etc/demo-manager", "{canary}/demo-manager"), 4, TREE),
    "root-link-out-at-depth-4": (
        _same, _link("opt/demo-manager/lib/demo_manager", "{canary}/demo_manager"), 4, TREE,
    ),
    "rewritten-config-is-a-link-out": (
        _same, _link("etc/demo-manager/manager.ini", "{canary}/manager.ini"), 4, TREE,
    ),
    "removal-is-a-dir-holding-a-link-out": (
        _same, _dir_holding_a_link_out("opt/demo-manager/lib/demo_manager/legacy_tcp.py"), 4,
        "is a directory",
    ),
    "rule-with-a-backreference": (_rule(r"(a+)\1"), None, 3, RE2),
    "rule-with-a-lookahead": (_rule(r"a(?=b)"), None, 3, RE2),
    "rule-with-a-possessive-quantifier": (_rule(r"a++b"), None, 3, RE2),
    "graph-bomb": (_graph_bomb, None, 3, "at most 10000 jumps"),
}  # fmt: skip


def test_signed_hostile_corpus(
    sandbox: Callable[..., Sandbox], plain_bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Every case refused by verify, stage and apply with its exit code and one line; the
    root (state dir included) and canaries outside it byte-identical; the lock never
    bypassed. One sandbox serves the corpus: every refusal must leave it as it was."""
    sb = sandbox()
    canary = sb.root.parent / "canary"
    canary.mkdir()
    (canary / "keep").write_text("outside the root\n")
    cases = {k: (e, None, 3, phrase) for k, (e, phrase) in HOSTILE.items()} | MORE
    pristine = tmp_path / "pristine"
    shutil.copytree(sb.root, pristine, symlinks=True, ignore=shutil.ignore_patterns("*.sock"))
    failed: list[str] = []
    for case, (edit, setup, code, phrase) in sorted(cases.items()):
        bad = _signed(plain_bundle, keys["key"], tmp_path / f"{case}.zip", edit)
        if setup is not None:
            setup(sb.root, canary)
        before, outside = tree_hash(sb.root, exclude=()), tree_hash(sb.root.parent, exclude=("r",))
        for command in ("verify", "stage", "apply"):
            p = install("--root", sb.root, command, bad)
            lines = [x for x in p.stderr.splitlines() if x.startswith("bundle-install:")]
            if command == "verify" and case in DRIFT_ONLY:  # verify checks paths, not contents
                ok = p.returncode == 0
            else:
                ok = p.returncode == code and len(lines) == 1 and phrase in lines[0]
            if not ok:
                failed.append(f"{case}: {command}: rc {p.returncode}: {p.stderr.strip()[-300:]}")
            elif command == "apply":
                print(f"\n{case}: exit {p.returncode}: {lines[0]}")  # the record (pytest -s)
            assert tree_hash(sb.root, exclude=()) == before, f"{case}: {command} changed the root"
            assert tree_hash(sb.root.parent, exclude=("r",)) == outside, f"{case}: {command} wrote outside"
        assert (
            not (sb.root / "var/lib/jumpkit/demo-manager/lock").exists()
            or not (sb.root / "var/lib/jumpkit/demo-manager/lock").read_text()
        ), f"{case}: the lock was left held"
        if setup is not None:
            _restore(sb.root, pristine)
            for x in canary.iterdir():
                if x.name != "keep":
                    shutil.rmtree(x) if x.is_dir() and not x.is_symlink() else x.unlink()
        count("signed-hostile bundles refused by verify, stage and apply (root and canary identical)")
    assert not failed, "\n".join(failed)
    assert sb.version() == "4.0.1"
    assert len(cases) >= 40


def _restore(root: Path, pristine: Path) -> None:
    """Put back what a case's setup changed (the paths that differ from ``pristine``)."""
    for top in ("etc", "opt"):
        shutil.rmtree(root / top) if not (root / top).is_symlink() else (root / top).unlink()
        shutil.copytree(pristine / top, root / top, symlinks=True)


def test_special_mode_listed_by_the_spec_verifies_and_is_shown(
    sandbox: Callable[..., Sandbox], bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Allowed by the spec (listed in the signed manifest): verifies, and both ``inspect``
    and ``plan`` (text and JSON) show it loudly."""
    ok = _signed(bundle, keys["key"], tmp_path / "ok.zip", _special(0o4755, listed=True))
    p = install("--root", tmp_path, "--trust", keys["pub"], "verify", ok)
    assert p.returncode == 0, p.stderr
    p = build("inspect", ok, "--trust", keys["pub"])
    assert p.returncode == 0, p.stderr
    assert "SETUID/SETGID/STICKY" in p.stdout and "mode 4755" in p.stdout
    sb = sandbox()
    p = install("--root", sb.root, "plan", ok)
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if "SETUID/SETGID/STICKY" in x)
    assert "mode 4755" in line and "4.0.1 -> 4.1.1" in line, p.stdout
    p = install("--root", sb.root, "plan", ok, "--json")
    special = json.loads(p.stdout)["special_modes"]
    assert len(special) == 1 and special[0]["mode"] == "4755", special


def _spec_with_modes(tmp_path: Path, modes: str) -> Path:
    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs)
    jump = specs / "demo-manager/jumps/4.0.1-4.1.1.yaml"
    text = jump.read_text()
    old = 'modes: {"opt/demo-manager/bin/*": "0755"}'
    assert old in text, text
    jump.write_text(text.replace(old, 'modes: {"opt/demo-manager/bin/*": "0755", ' + modes[1:-1] + "}"))
    return specs


def test_spec_allow_setuid_for_one_exact_path(tmp_path: Path) -> None:
    target = "opt/demo-manager/VERSION"
    specs = _spec_with_modes(tmp_path, f'{{"{target}": {{mode: "4755", allow_setuid: true}}}}')
    out = tmp_path / "o"
    p = build(
        "--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--unsigned", "--no-rehearse", "--out", out
    )
    assert p.returncode == 0, p.stderr
    import zipfile

    with zipfile.ZipFile(out / "demo-manager-4.0.1-to-4.1.1.zip") as z:
        man = json.loads(z.read("manifest.json"))
        assert (
            z.getinfo("payload/" + target).external_attr >> 16
        ) & 0o7000 == 0  # the archive never carries it
    assert man["special_modes"] == [target]
    assert next(f for f in man["files"] if f["path"] == target)["mode"] == 0o4755


@pytest.mark.parametrize(
    ("modes", "phrase"),
    [('{"opt/demo-manager/VERSION": "4755"}', "allow_setuid: true"),
     ('{"opt/**": {mode: "4755", allow_setuid: true}}', "one exact path")],
)  # fmt: skip
def test_spec_special_mode_without_allow_is_refused(modes: str, phrase: str, tmp_path: Path) -> None:
    specs = _spec_with_modes(tmp_path, modes)
    p = build("--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--unsigned", "--out", tmp_path / "o")
    assert p.returncode == 2, p.stderr
    assert phrase in p.stderr and "Traceback" not in p.stderr


def test_preflight_creates_no_database_outside_the_root(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    """A database path (here absolute, naming a place outside the root) whose file does not
    exist: an absolute sqlite-path is the root's, pre-flight refuses in one line and creates
    nothing, inside the root or out (connecting would have made the SQLite file)."""
    sb = sandbox()
    outside = tmp_path / "outside" / "manager.db"
    outside.parent.mkdir()
    ini = sb.root / "etc/demo-manager/manager.ini"
    text = ini.read_text()
    assert "path = " in text
    ini.write_text(
        "\n".join(f"path = {outside}" if x.startswith("path = ") else x for x in text.splitlines()) + "\n"
    )
    before = tree_hash(sb.root, exclude=())
    for command in ("stage", "apply"):
        p = install("--root", sb.root, command, bundle)
        assert p.returncode == 4, p.stderr
        assert f"the database file {sb.root}{outside} does not exist" in p.stderr
        assert not outside.exists() and not list(outside.parent.iterdir())
        assert tree_hash(sb.root, exclude=()) == before


def test_a_database_reached_through_a_link_out_is_not_opened(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    """The SQLite file is a link to a copy outside the root: backup, migration and restore
    would open it; refused at pre-flight (exit 4) naming the link, the copy untouched."""
    from tests.helpers import DEMO_DB

    sb = sandbox()
    db = sb.root / DEMO_DB
    outside = tmp_path / "outside.db"
    shutil.copy2(db, outside)
    db.unlink()
    os.symlink(outside, db)
    before = outside.read_bytes()
    _refused_everywhere(
        sb, bundle, 4, "the manager's tree has a symlink leading out of the root", [], ("stage", "apply")
    )
    assert outside.read_bytes() == before


# --- symlinks: every path resolved beneath the root ----------------------------------------
def _refused_everywhere(
    sb: Sandbox, bad: Path, code: int, phrase: str, canaries: list[Path],
    commands: tuple[str, ...] = ("verify", "stage", "apply"),
) -> None:  # fmt: skip
    before = tree_listing(sb.root, exclude=())
    outside = {c: tree_hash(c, exclude=()) if c.is_dir() else c.exists() for c in canaries}
    for command in commands:
        p = install("--root", sb.root, command, bad)
        assert p.returncode == code, f"{command}: rc {p.returncode}: {p.stderr}"
        lines = [x for x in p.stderr.splitlines() if x.startswith("bundle-install:")]
        assert len(lines) == 1 and phrase in lines[0], p.stderr
        after = tree_listing(sb.root, exclude=())
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"{command} changed {changed[:10]}"  # which paths, should it flake again
        for c, was in outside.items():
            assert (tree_hash(c, exclude=()) if c.is_dir() else c.exists()) == was, f"{command} wrote {c}"
    assert sb.version() == "4.0.1"
    count("signed bundles leading out of the root through a symlink, refused")


def test_the_reported_escape_through_current_dot(
    sandbox: Callable[..., Sandbox], plain_bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """The manager has opt/demo-manager/current -> . (a common layout); the bundle adds
    current/current/esc -> ../../../../x and a file under opt/demo-manager/esc/: as text
    both stay inside, in the real tree the file would land two levels above the root."""
    sb = sandbox()
    os.symlink(".", sb.root / "opt/demo-manager/current")

    def edit(man: dict[str, object], m: dict[str, bytes]) -> None:
        _add_symlink("opt/demo-manager/current/current/esc", "../../../../x")(man, m)
        _add_file("opt/demo-manager/esc/passwd")(man, m)

    bad = _signed(plain_bundle, keys["key"], tmp_path / "escape.zip", edit)
    canaries = [sb.root.parent.parent / "x", sb.root.parent / "x", sb.root.parent.parent / "passwd"]
    _refused_everywhere(sb, bad, 3, "opt/demo-manager/esc", canaries)
    link_only = _signed(
        plain_bundle,
        keys["key"],
        tmp_path / "link.zip",
        _add_symlink("opt/demo-manager/current/current/esc", "../../../../x"),
    )
    _refused_everywhere(
        sb, link_only, 3, "leads out of the root through opt/demo-manager/esc -> ../../../../x", canaries
    )


def test_a_link_out_in_the_managers_tree_is_exit_4(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    sb = sandbox()
    lib = sb.root / "opt/demo-manager/lib"
    outside = tmp_path / "outside-lib"
    shutil.copytree(lib, outside, symlinks=True)
    shutil.rmtree(lib)
    os.symlink(outside, lib)
    _refused_everywhere(sb, bundle, 4, "the manager's tree has a symlink leading out of the root", [outside])


def test_reserved_paths_reached_through_an_in_root_link(
    sandbox: Callable[..., Sandbox], plain_bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    sb = sandbox()
    os.symlink("../../etc/jumpkit", sb.root / "opt/demo-manager/k")
    bad = _signed(
        plain_bundle, keys["key"], tmp_path / "k.zip", _add_file("opt/demo-manager/k/trusted-keys/evil.pub")
    )
    _refused_everywhere(sb, bad, 3, "belongs to the installer", [])


def test_a_link_that_stays_inside_the_root_still_applies(
    sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    """lib -> releases/r1/lib (the current -> releases/N layout): the jump writes through it,
    the files land in releases/r1/lib, and rollback restores the exact tree, link included."""
    sb = sandbox()
    lib = sb.root / "opt/demo-manager/lib"
    real = sb.root / "opt/demo-manager/releases/r1/lib"
    real.parent.mkdir(parents=True)
    lib.rename(real)
    os.symlink("releases/r1/lib", lib)
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert sb.wait_version("4.1.1") == "4.1.1"
    assert lib.is_symlink() and os.readlink(lib) == "releases/r1/lib"
    assert not (real / "demo_manager/legacy_tcp.py").exists()  # the removal went through the link
    p = install("--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    assert tree_hash(sb.root) == before
    assert sb.wait_version("4.0.1") == "4.0.1"


def test_a_link_planted_between_plan_and_swap_is_not_followed(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    """At the moment of use the swap opens every parent from the root without following
    links: a directory swapped for a link out while the apply is frozen before swap-files
    makes the apply roll back (exit 5); nothing is written outside."""
    import subprocess
    import sys

    from tests.crash.test_locks_space import wait_stopped
    from tests.helpers import REPO

    sb = sandbox()
    pkg = sb.root / "opt/demo-manager/lib/demo_manager"
    outside = tmp_path / "outside"
    shutil.copytree(pkg, outside)
    before_outside = tree_hash(outside, exclude=())
    proc = subprocess.Popen(
        [sys.executable, "-m", "installer.cli", "--root", str(sb.root), "apply", str(bundle)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "JUMPKIT_FAILPOINT": "begin:swap-files=stop"},
    )  # fmt: skip
    wait_stopped(proc)
    aside = tmp_path / "aside"
    pkg.rename(aside)
    os.symlink(outside, pkg)
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err
    assert "symlink" in err.strip().splitlines()[-1], err
    assert tree_hash(outside, exclude=()) == before_outside, "the swap wrote through the planted link"
    pkg.unlink()
    aside.rename(pkg)
    assert install("--root", sb.root, "status", "--json").stdout.count('"rolled-back"') >= 1


def test_small_reads_stay_beneath_the_root(tmp_path: Path) -> None:
    """Version files, markers and lookup files: a link inside the root is followed, one
    out of it is not read (not even its first bytes)."""
    from installer.paths import read_small

    root = tmp_path / "root"
    (root / "opt/app/releases").mkdir(parents=True)
    (root / "opt/app/releases/VERSION").write_text("4.0.1\n")
    os.symlink("releases/VERSION", root / "opt/app/VERSION")
    secret = tmp_path / "secret"
    secret.write_text("do not read\n")
    os.symlink(secret, root / "opt/app/SHADOW")
    os.symlink("../../../secret", root / "opt/app/UP")
    os.symlink(str(tmp_path), root / "opt/out")
    assert read_small(root, "opt/app/VERSION") == "4.0.1\n"
    assert read_small(root, "opt/app/SHADOW") is None
    assert read_small(root, "opt/app/UP") is None
    assert read_small(root, "opt/out/secret") is None


def test_a_hard_link_out_of_the_root_is_never_written_through(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    """A file of the manager hard-linked to a file elsewhere: the swap renames, so the
    other name keeps the old bytes, on apply and on rollback."""
    sb = sandbox()
    version = sb.root / "opt/demo-manager/VERSION"
    other = sb.root.parent / "hardlinked-version"
    os.link(version, other)
    before = other.read_bytes()
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    assert version.read_text() == "4.1.1\n" and other.read_bytes() == before
    assert install("--root", sb.root, "rollback").returncode == 0
    assert other.read_bytes() == before and os.path.samefile(version, other)


def test_a_rewrite_reads_the_operators_config_beneath_the_root(tmp_path: Path) -> None:
    """The operator's edited config a rewrite reads: through a link inside the root it is
    read; a link out is refused (exit 4, naming it) and never read; so are a FIFO and a
    directory in its place (a FIFO would block, a device never end)."""
    from installer.errors import PreconditionError, RootLinkError
    from installer.swapplan import View, _operator_text, current_digest

    root = tmp_path / "root"
    (root / "etc/app").mkdir(parents=True)
    (root / "etc/shared").mkdir()
    (root / "etc/shared/app.ini").write_text("[a]\nurl = tcp://x\n")
    secret = tmp_path / "secret.ini"
    secret.write_text("do not read\n")

    def text(rel: str) -> str:
        return _operator_text(rel, current_digest(root / rel), View(root))

    os.symlink("../shared/app.ini", root / "etc/app/inside.ini")
    assert text("etc/app/inside.ini") == "[a]\nurl = tcp://x\n"
    os.symlink(secret, root / "etc/app/out.ini")
    with pytest.raises(RootLinkError, match=r"etc/app/out\.ini"):
        text("etc/app/out.ini")
    os.mkfifo(root / "etc/app/fifo.ini")
    with pytest.raises(PreconditionError, match="a FIFO"):
        text("etc/app/fifo.ini")
    (root / "etc/app/dir.ini").mkdir()
    with pytest.raises(PreconditionError, match="a directory"):
        text("etc/app/dir.ini")

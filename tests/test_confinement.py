"""Confinement (issue 20), the parts done so far: a validly signed bundle may not touch the
installer's own paths, may not carry setuid/setgid/sticky bits unless the product spec
allows that exact path, and pre-flight never creates a database anywhere."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.counts import count
from tests.helpers import SPECS, Sandbox, build, install, tree_hash
from tests.hostile.corpus import _entry, read, write

Edit = Callable[[dict[str, object], dict[str, bytes]], None]


def _signed(bundle: Path, key: Path, out: Path, edit: Edit) -> Path:
    from builder.keys import load_private_key
    from installer.format import canonical_json, sign_manifest

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


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_signed_bundle_touching_what_is_not_its_own(
    case: str, sandbox: Callable[..., Sandbox], bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    edit, phrase = HOSTILE[case]
    bad = _signed(bundle, keys["key"], tmp_path / f"{case}.zip", edit)
    sb = sandbox()
    before = tree_hash(sb.root, exclude=())
    for command in ("verify", "stage", "apply"):
        p = install("--root", sb.root, command, bad)
        assert p.returncode == 3, f"{command}: rc {p.returncode}: {p.stderr}"
        lines = [x for x in p.stderr.splitlines() if x.startswith("bundle-install:")]
        assert len(lines) == 1 and phrase in lines[0], p.stderr
    after = tree_hash(sb.root, exclude=())
    assert after == before, "a refused run changed the root (the state dir included)"
    assert sb.version() == "4.0.1"
    count("signed bundles touching the installer's paths or special modes, refused")


def test_special_mode_listed_by_the_spec_verifies_and_is_shown(
    bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    ok = _signed(bundle, keys["key"], tmp_path / "ok.zip", _special(0o4755, listed=True))
    p = install("--root", tmp_path, "--trust", keys["pub"], "verify", ok)
    assert p.returncode == 0, p.stderr
    p = build("inspect", ok, "--trust", keys["pub"])
    assert p.returncode == 0, p.stderr
    assert "SETUID/SETGID/STICKY" in p.stdout and "mode 4755" in p.stdout


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
    """A database path (here absolute, outside the root) whose file does not exist: pre-flight
    refuses in one line and creates nothing (connecting would have made the SQLite file)."""
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
        assert f"the database file {outside} does not exist" in p.stderr
        assert not outside.exists() and not list(outside.parent.iterdir())
        assert tree_hash(sb.root, exclude=()) == before

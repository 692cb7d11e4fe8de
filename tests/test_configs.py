"""Config policies: replace, keep-local (RPM's %config(noreplace)) and rewrite."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.helpers import build, install, tree_hash


def product(tmp: Path) -> Path:
    """A product with no services and one config of each policy."""
    specs = tmp / "specs"
    d = specs / "cfg"
    (d / "jumps").mkdir(parents=True)
    (d / "product.yaml").write_text("product: cfg\nversion_file: app/VERSION\nvariables: {port: 80}\n")
    for v, scheme in (("1.0.0", "tcp"), ("1.1.0", "http")):
        (d / f"releases/{v}/root/app").mkdir(parents=True)
        (d / f"releases/{v}/root/app/VERSION").write_text(v + "\n")
        cfg = d / f"releases/{v}/config/etc/cfg"
        cfg.mkdir(parents=True)
        (cfg / "replaced.ini.j2").write_text("[a]\nversion = {{ version }}\n")
        (cfg / "kept.ini.j2").write_text(f"[a]\nport = {{{{ port }}}}\nversion = {v}\n")
        ep = "tcp://h1:7000" if scheme == "tcp" else "http://h1:7000?role=peer"
        (cfg / "rewritten.ini.j2").write_text(f"[cluster]\nport = {{{{ port }}}}\nendpoints = {ep}\n")
    (d / "jumps/1.0.0-1.1.0.yaml").write_text(
        textwrap.dedent("""\
        from: 1.0.0
        to: 1.1.0
        configs:
          - path: etc/cfg/replaced.ini
            policy: replace
          - path: etc/cfg/kept.ini
            policy: keep-local
          - path: etc/cfg/rewritten.ini
            policy: rewrite
            rules:
              - pattern: 'tcp://([A-Za-z0-9_.:-]+)'
                replacement: 'http://\\1?role=peer'
        """)
    )
    return specs


def built(specs: Path, tmp_path: Path, keys: dict[str, Path]) -> tuple[Path, Path, Path]:
    """Build cfg 1.0.0 -> 1.1.0 from ``specs`` and lay out 1.0.0: (root, bundle, specs)."""
    out = tmp_path / "dist"
    p = build("--specs", specs, "--from", "1.0.0", "--to", "1.1.0", "--key", keys["key"], "--out", out)
    assert p.returncode == 0, p.stderr
    root = tmp_path / "root"
    p = build("sandbox", "--specs", specs, "--version", "1.0.0", "--root", root, "--trust", keys["pub"])
    assert p.returncode == 0, p.stderr
    return root, out / "cfg-1.0.0-to-1.1.0.zip", specs


@pytest.fixture
def setup(tmp_path: Path, keys: dict[str, Path]) -> tuple[Path, Path, Path]:
    return built(product(tmp_path), tmp_path, keys)


def test_unedited_configs_take_new_defaults(setup: tuple[Path, Path, Path]) -> None:
    root, bundle, _ = setup
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    etc = root / "etc/cfg"
    assert (etc / "replaced.ini").read_text() == "[a]\nversion = 1.1.0\n"
    assert (etc / "kept.ini").read_text() == "[a]\nport = 80\nversion = 1.1.0\n"
    assert (
        etc / "rewritten.ini"
    ).read_text() == "[cluster]\nport = 80\nendpoints = http://h1:7000?role=peer\n"
    assert not (etc / "kept.ini.jumpkit-new").exists()


def test_keep_local_keeps_edits_and_writes_new_beside(setup: tuple[Path, Path, Path]) -> None:
    root, bundle, _ = setup
    kept = root / "etc/cfg/kept.ini"
    kept.write_text("[a]\nport = 9999\nversion = 1.0.0\n")
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert kept.read_text() == "[a]\nport = 9999\nversion = 1.0.0\n"
    assert (root / "etc/cfg/kept.ini.jumpkit-new").read_text() == "[a]\nport = 80\nversion = 1.1.0\n"
    assert "kept.ini: locally edited, kept" in p.stderr


def test_rewrite_applies_rules_to_edited_file(setup: tuple[Path, Path, Path]) -> None:
    root, bundle, _ = setup
    rw = root / "etc/cfg/rewritten.ini"
    rw.write_text("[cluster]\nport = 9999\nendpoints = tcp://h1:7000,tcp://h2:7000\n# my note\n")
    before = tree_hash(root)
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert rw.read_text() == (
        "[cluster]\nport = 9999\nendpoints = http://h1:7000?role=peer,http://h2:7000?role=peer\n# my note\n"
    )
    assert "2 value(s) rewritten" in p.stderr
    assert install("--root", root, "rollback").returncode == 0
    assert tree_hash(root) == before


def test_replace_of_edited_config_is_drift(setup: tuple[Path, Path, Path]) -> None:
    root, bundle, _ = setup
    (root / "etc/cfg/replaced.ini").write_text("[a]\nversion = mine\n")
    before = tree_hash(root)
    p = install("--root", root, "apply", bundle, "--json")
    assert p.returncode == 4
    doc = json.loads(p.stdout)
    assert doc["details"] == ["etc/cfg/replaced.ini: modified"]
    assert tree_hash(root) == before
    p = install("--root", root, "--accept-drift", "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert (root / "etc/cfg/replaced.ini").read_text() == "[a]\nversion = 1.1.0\n"
    assert install("--root", root, "rollback").returncode == 0
    assert (root / "etc/cfg/replaced.ini").read_text() == "[a]\nversion = mine\n"


def test_hooks_run_in_order_and_undo(tmp_path: Path, keys: dict[str, Path]) -> None:
    specs = product(tmp_path)
    jump = specs / "cfg/jumps/1.0.0-1.1.0.yaml"
    for name, body in (
        ("pre.sh", "echo pre-$JUMPKIT_FROM-$JUMPKIT_TO"),
        ("post.sh", "echo post; exit ${FAIL_POST:-0}"),
        ("post-undo.sh", "echo undo-post"),
    ):
        script = jump.parent / name
        script.write_text(
            f'#!/bin/sh\n{body.split(";")[0]} >> "$JUMPKIT_ROOT/var/hooks.log"\n'
            + (f"{body.split(';')[1]}\n" if ";" in body else "")
        )
        script.chmod(0o755)
    jump.write_text(
        jump.read_text()
        + textwrap.dedent("""\
        hooks:
          - {name: pre, when: pre, script: pre.sh}
          - {name: post, when: post, script: post.sh, undo_script: post-undo.sh}
        """)
    )
    out = tmp_path / "dist"
    assert (
        build(
            "--specs", specs, "--from", "1.0.0", "--to", "1.1.0", "--key", keys["key"], "--out", out
        ).returncode
        == 0
    )
    root = tmp_path / "root"
    assert (
        build(
            "sandbox", "--specs", specs, "--version", "1.0.0", "--root", root, "--trust", keys["pub"]
        ).returncode
        == 0
    )
    bundle = out / "cfg-1.0.0-to-1.1.0.zip"
    log = root / "var/hooks.log"
    p = install("--root", root, "apply", bundle, env={"FAIL_POST": "3"})
    assert p.returncode == 5 and "hook post exited 3" in p.stderr
    assert log.read_text().split() == ["pre-1.0.0-1.1.0", "post", "undo-post"]
    assert (root / "app/VERSION").read_text() == "1.0.0\n"
    log.unlink()
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert log.read_text().split() == ["pre-1.0.0-1.1.0", "post"]

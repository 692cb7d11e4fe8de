"""Config policies: replace, keep-local (RPM's %config(noreplace)) and rewrite."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import alive, build, install, laid_out, tree_hash


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
    root, bundle = laid_out(specs, "cfg", "1.0.0", "1.1.0", tmp_path, keys)
    return root, bundle, specs


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


def _edit_and_apply(config: Path, bundle: Path, text: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Write the operator's ``text`` into ``config``, apply: the tree hash before, the run."""
    root = config.parents[2]
    config.write_text(text)
    before = tree_hash(root)
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    return before, p


def test_rewrite_applies_rules_to_edited_file(setup: tuple[Path, Path, Path]) -> None:
    root, bundle, _ = setup
    rw = root / "etc/cfg/rewritten.ini"
    before, p = _edit_and_apply(
        rw, bundle, "[cluster]\nport = 9999\nendpoints = tcp://h1:7000,tcp://h2:7000\n# my note\n"
    )
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


def test_a_hook_that_leaves_a_child_or_hangs(tmp_path: Path, keys: dict[str, Path]) -> None:
    """pre leaves ``sleep 60 &`` running with its output open and exits 0: the apply goes
    on at once (with pipes it waited for the hook's whole timeout and called it timed out).
    post, told to hang, is killed at its 3 s timeout with the child it started; the apply
    rolls back."""
    specs = product(tmp_path)
    jump = specs / "cfg/jumps/1.0.0-1.1.0.yaml"
    (jump.parent / "pre.sh").write_text(
        '#!/bin/sh\nsleep 60 &\necho $! > "$JUMPKIT_ROOT/var/bg.pid"\necho pre\n'
    )
    (jump.parent / "post.sh").write_text(
        '#!/bin/sh\n[ -z "$HANG" ] && exit 0\nsleep 60 &\necho $! > "$JUMPKIT_ROOT/var/hang.pid"\nsleep 60\n'
    )
    for name in ("pre.sh", "post.sh"):
        (jump.parent / name).chmod(0o755)
    jump.write_text(
        jump.read_text()
        + "hooks:\n  - {name: pre, when: pre, script: pre.sh, timeout: 30}\n"
        + "  - {name: post, when: post, script: post.sh, timeout: 3}\n"
    )
    root, bundle, _ = built(specs, tmp_path, keys)
    (root / "var").mkdir(exist_ok=True)
    pids = []
    try:
        t = time.monotonic()
        p = install("--root", root, "apply", bundle, env={"HANG": "1"})
        took = time.monotonic() - t
        pids += [int((root / "var" / f).read_text()) for f in ("bg.pid", "hang.pid")]
        assert (
            p.returncode == 5 and "hook post could not run" in p.stderr and "timed out after 3" in p.stderr
        ), p.stderr
        assert (root / "app/VERSION").read_text() == "1.0.0\n"
        assert 3 <= took < 20, took
        assert not alive(pids[1]), "the hanging hook's child outlived its timeout"
        t = time.monotonic()
        p = install("--root", root, "apply", bundle)
        took = time.monotonic() - t
        pids.append(int((root / "var/bg.pid").read_text()))
        assert p.returncode == 0, p.stderr
        assert took < 15, took  # not pre's 30 s timeout
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def _headed(specs: Path) -> None:
    """cfg's rewritten.ini gains a version header and, in 1.1.0, a new key."""
    for v, body in (
        ("1.0.0", "# cfg 1.0.0\n[cluster]\nport = {{ port }}\nendpoints = tcp://h1:7000\n"),
        (
            "1.1.0",
            "# cfg 1.1.0\n[cluster]\nport = {{ port }}\nworkers = 4\nendpoints = http://h1:7000?role=peer\n",
        ),
    ):
        (specs / f"cfg/releases/{v}/config/etc/cfg/rewritten.ini.j2").write_text(body)


def test_rewrite_carries_the_new_defaults_changes_into_an_edited_file(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """A 3-way merge (old default, operator's file, new default) after the rules: the key
    the release adds and its new header arrive, the operator's port and peers stay; rolled
    back exactly. Where both changed the same line the operator's file (rules applied)
    is placed, the new default beside it, and the plan says what was not carried."""
    specs = product(tmp_path)
    _headed(specs)
    root, bundle, _ = built(specs, tmp_path, keys)
    rw = root / "etc/cfg/rewritten.ini"
    before, p = _edit_and_apply(
        rw, bundle, "# cfg 1.0.0\n[cluster]\nport = 9999\nendpoints = tcp://h1:7000,tcp://h2:7000\n"
    )
    assert rw.read_text() == (
        "# cfg 1.1.0\n[cluster]\nport = 9999\nworkers = 4\n"
        "endpoints = http://h1:7000?role=peer,http://h2:7000?role=peer\n"
    )
    assert "2 value(s) rewritten, edits kept, 2 change(s) of the new default carried in" in p.stderr
    assert not (root / "etc/cfg/rewritten.ini.jumpkit-new").exists()
    assert install("--root", root, "rollback").returncode == 0
    assert tree_hash(root) == before

    rw.write_text("# our own header\n[cluster]\nport = 9999\nendpoints = tcp://h1:7000\n")
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert (
        rw.read_text() == "# our own header\n[cluster]\nport = 9999\nendpoints = http://h1:7000?role=peer\n"
    )
    new = root / "etc/cfg/rewritten.ini.jumpkit-new"
    assert new.read_text().startswith("# cfg 1.1.0\n")
    # the merge gives up as a whole: the key it could have carried is counted too
    assert "2 change(s) of the new default were not carried (1 touch lines edited here)" in p.stderr


def _chain_product(tmp: Path, first: str) -> Path:
    """cc 1.0.0 -> 1.1.0 (``first``: keep-local or rewrite) -> 1.2.0 (rewrite) of one
    config: 1.1.0 adds ``workers = 4``, 1.2.0 adds ``threads = 2``."""
    specs = tmp / "specs"
    d = specs / "cc"
    (d / "jumps").mkdir(parents=True)
    (d / "product.yaml").write_text("product: cc\nversion_file: app/VERSION\n")
    lines = ["[a]\n", "port = 80\n"]
    for v, add in (("1.0.0", ""), ("1.1.0", "workers = 4\n"), ("1.2.0", "threads = 2\n")):
        lines.append(add)
        (d / f"releases/{v}/root/app").mkdir(parents=True)
        (d / f"releases/{v}/root/app/VERSION").write_text(v + "\n")
        (d / f"releases/{v}/config/etc/cc").mkdir(parents=True)
        (d / f"releases/{v}/config/etc/cc/cc.ini.j2").write_text("".join(lines))
    for frm, to, policy in (("1.0.0", "1.1.0", first), ("1.1.0", "1.2.0", "rewrite")):
        (d / f"jumps/{frm}-{to}.yaml").write_text(
            f"from: {frm}\nto: {to}\nconfigs:\n  - {{path: etc/cc/cc.ini, policy: {policy}}}\n"
        )
    return specs


@pytest.mark.parametrize("first", ["keep-local", "rewrite"])
def test_a_chain_carries_or_counts_every_change_of_the_new_default(
    first: str, tmp_path: Path, keys: dict[str, Path]
) -> None:
    """The operator set ``port = 9999`` at 1.0.0. A chain through 1.1.0 (keep-local, or
    rewrite) to 1.2.0 (rewrite) merges against the default the operator's file derives
    from, not 1.1.0's: with ``rewrite`` first, both keys arrive as each jump alone would
    carry them; with ``keep-local`` first, no bundle holds 1.0.0's default, so nothing of
    the release is carried silently: the note says so and the new default goes beside."""
    specs = _chain_product(tmp_path, first)
    root, first_bundle = laid_out(specs, "cc", "1.0.0", "1.1.0", tmp_path, keys)
    p = build(
        "--specs", specs, "--from", "1.1.0", "--to", "1.2.0", "--key", keys["key"], "--out", tmp_path / "dist"
    )
    assert p.returncode == 0, p.stderr
    cfg = root / "etc/cc/cc.ini"
    cfg.write_text("[a]\nport = 9999\n")
    before = tree_hash(root)
    p = install("--root", root, "apply", first_bundle, tmp_path / "dist/cc-1.1.0-to-1.2.0.zip")
    assert p.returncode == 0, p.stderr
    if first == "rewrite":
        assert cfg.read_text() == "[a]\nport = 9999\nworkers = 4\nthreads = 2\n"
        assert not (root / "etc/cc/cc.ini.jumpkit-new").exists()
    else:
        assert cfg.read_text() == "[a]\nport = 9999\n"
        assert (
            root / "etc/cc/cc.ini.jumpkit-new"
        ).read_text() == "[a]\nport = 80\nworkers = 4\nthreads = 2\n"
        said = ("etc/cc/cc.ini: locally edited, 0 value(s) rewritten, edits kept; none of the new default's "
                "changes were carried (1 region(s) differ from it): an earlier jump of the chain kept this "
                "file as edited")  # fmt: skip
        assert said in p.stderr, p.stderr
    assert install("--root", root, "rollback").returncode == 0
    assert tree_hash(root) == before


@pytest.mark.parametrize("required", [False, True])
def test_a_config_the_operator_deleted_stays_deleted_unless_required(
    required: bool, tmp_path: Path, keys: dict[str, Path]
) -> None:
    specs = product(tmp_path)
    if required:
        jump = specs / "cfg/jumps/1.0.0-1.1.0.yaml"
        jump.write_text(
            jump.read_text().replace("policy: keep-local\n", "policy: keep-local\n    required: true\n")
        )
    root, bundle, _ = built(specs, tmp_path, keys)
    kept = root / "etc/cfg/kept.ini"
    kept.unlink()
    before = tree_hash(root)
    p = install("--root", root, "plan", bundle)
    said = "kept.ini: deleted on this manager" + (
        "; required by the spec: new default placed" if required else ", left deleted; new default written to"
    )
    assert said in p.stdout, p.stdout
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert kept.exists() == required
    assert (root / "etc/cfg/kept.ini.jumpkit-new").exists() != required
    assert install("--root", root, "rollback").returncode == 0
    assert tree_hash(root) == before and not kept.exists()


@pytest.mark.parametrize(
    ("base", "ours", "theirs", "want", "conflicts"),
    [
        # the release's change where the operator changed nothing: carried
        ("# v1\nport = 80\n", "# v1\nport = 9\n", "# v2\nport = 80\n", "# v2\nport = 9\n", 0),
        # a key added right after a line the operator changed (diff3 calls this a conflict)
        ("a = 1\nb = 2\n", "a = 7\nb = 8\n", "a = 1\nnew = 3\nb = 2\n", "a = 7\nnew = 3\nb = 8\n", 0),
        # the same change on both sides
        ("x = 1\n", "x = 2\n", "x = 2\n", "x = 2\n", 0),
        # the operator's own lines at the end stay
        ("a = 1\n", "a = 1\nmine = 1\n", "a = 2\n", "a = 2\nmine = 1\n", 0),
        # both changed the same line, or inserted different lines at one place: operator's file
        ("a = 1\n", "a = 2\n", "a = 3\n", "a = 2\n", 1),
        ("a = 1\nb = 2\n", "a = 1\nx = 1\nb = 2\n", "a = 1\ny = 1\nb = 2\n", "a = 1\nx = 1\nb = 2\n", 1),
        # a line the release removed, untouched by the operator: removed
        ("a = 1\nold = 1\n", "a = 5\nold = 1\n", "a = 1\n", "a = 5\n", 0),
    ],
)
def test_three_way_config_merge(base: str, ours: str, theirs: str, want: str, conflicts: int) -> None:
    from installer.confmerge import merge

    got = merge(base, ours, theirs)
    assert (got.text, got.conflicts) == (want, conflicts)

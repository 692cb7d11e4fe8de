"""What an operator does after a crash, and what "exactly" means afterwards."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.helpers import Sandbox, db_state, install, sqlite_url, tree_diff, tree_hash, tree_listing


def status(sb: Sandbox) -> str:
    p = install("--root", sb.root, "status", "--json")
    return str(json.loads(p.stdout)["status"]) if p.returncode == 0 and p.stdout.strip() else "none"


def assert_exactly(
    sb: Sandbox, expected: dict[str, object], which: str, version: str, what: str = ""
) -> None:
    """Every file under the root (harness runtime files aside), the database's revision
    and rows, and the service answering ``version``. ``what`` names the run in a failure,
    which lists the paths that differ."""
    label = f"{what}: " if what else ""
    if tree_hash(sb.root) != expected[which]:
        want = expected.get(which + "_files")
        diff = tree_diff(want, tree_listing(sb.root)) if isinstance(want, dict) else "(no listing)"
        raise AssertionError(f"{label}tree is not exactly {version}:\n{diff}")
    db = db_state(sqlite_url(sb.root))
    assert db == expected[which + "_db"], f"{label}database is not exactly {version}"
    assert sb.wait_version(version) == version


def recover_forward(sb: Sandbox, bundle: Path, expected: dict[str, object]) -> str:
    """``resume``; when the crash came before the journal's first record, the manager is
    untouched and the operator simply applies again. Returns what was done."""
    p = install("--root", sb.root, "resume")
    if p.returncode == 0 and not p.stdout.startswith("nothing to resume"):
        done = "resumed"
    else:  # nothing unfinished (exit 0), or no state at all (exit 4)
        assert p.stdout.startswith("nothing to resume") or "no jumpkit state" in p.stderr, p.stdout + p.stderr
        if tree_hash(sb.root) == expected["new"]:
            done = "already finished"
        else:
            assert tree_hash(sb.root) == expected["old"], "crash before the journal changed the manager"
            p = install("--root", sb.root, "apply", bundle)
            assert p.returncode == 0, p.stderr
            done = "applied again"
    assert_exactly(sb, expected, "new", "4.1.1")
    return done


def recover_back(sb: Sandbox, expected: dict[str, object]) -> str:
    """``rollback``; "nothing to roll back" is right only if nothing was changed."""
    p = install("--root", sb.root, "rollback")
    if p.returncode == 0:
        done = "rolled back"
    else:
        assert "nothing to" in p.stderr or "no jumpkit state" in p.stderr, p.stderr
        done = "nothing to roll back"
    assert_exactly(sb, expected, "old", "4.0.1")
    return done


def recover_after_kill(
    run: Callable[..., subprocess.CompletedProcess[str]],
    recover: str,
    bundle: Path,
    at_new: Callable[[], bool],
) -> None:
    """``recover`` (resume or rollback) after a SIGKILL, through ``run`` (the installer on
    one root). Killed before the journal's first record there is nothing to recover
    ("nothing to ...", or no state yet): a resume then applies again, as an operator would."""
    p = run(recover)
    said = p.stdout + p.stderr
    if p.returncode != 0 or p.stdout.startswith("nothing to"):
        assert "nothing to" in said or "no jumpkit state" in said, said
        if recover == "resume" and not at_new():
            q = run("apply", bundle)
            assert q.returncode == 0, q.stderr

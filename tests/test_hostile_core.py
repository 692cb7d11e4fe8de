"""Tampered bundles are refused with exit 3 by verify, stage and apply, and the manager
is left byte-identical (jumpkit's own state dir holds nothing staged)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.counts import count
from tests.helpers import Sandbox, install, tree_hash
from tests.hostile.corpus import CORE_CASES, EXPECT, make


def nothing_staged(root: Path) -> bool:
    state = root / "var/lib/jumpkit/demo-manager"
    if not state.exists():
        return True
    leftovers = [p for p in state.rglob("*") if p.name != "lock" and not p.is_dir()]
    return not leftovers


@pytest.mark.parametrize("case", sorted(CORE_CASES))
def test_hostile_bundle_refused(
    case: str, sandbox: Callable[..., Sandbox], plain_bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    bad = make(case, plain_bundle, keys["key"], keys["evil_key"], tmp_path)
    sb = sandbox()
    before = tree_hash(sb.root)
    code, phrase = EXPECT[case]
    for command in ("verify", "stage", "apply"):
        p = install("--root", sb.root, command, bad)
        assert p.returncode == code, f"{command}: rc={p.returncode} {p.stderr}"
        lines = [line for line in p.stderr.splitlines() if line.startswith("bundle-install:")]
        assert len(lines) == 1, p.stderr
        assert phrase in lines[0], lines[0]
        assert tree_hash(sb.root) == before, command
        assert nothing_staged(sb.root), command
    assert not Path("/tmp/jumpkit-escape").exists()
    assert sb.version() == "4.0.1"
    count("hostile bundles refused by verify, stage and apply")


def test_good_bundle_verifies(bundle: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    p = install("--root", tmp_path, "--trust", keys["pub"], "verify", bundle, "--json")
    assert p.returncode == 0, p.stderr
    assert '"ok": true' in p.stdout


def test_unsigned_bundle_refused_unless_allowed(tmp_path: Path, keys: dict[str, Path]) -> None:
    from tests.helpers import SPECS, build

    assert (
        build(
            "--specs", SPECS, "--from", "4.0.1", "--to", "4.1.1", "--unsigned", "--out", tmp_path
        ).returncode
        == 0
    )
    b = tmp_path / "demo-manager-4.0.1-to-4.1.1.zip"
    p = install("--root", tmp_path, "--trust", keys["pub"], "verify", b)
    assert p.returncode == 3 and "not signed" in p.stderr
    p = install("--root", tmp_path, "--allow-unsigned", "verify", b)
    assert p.returncode == 0 and "WARNING" in p.stderr


def test_max_bundle_size_is_configurable(bundle: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    p = install("--root", tmp_path, "--trust", keys["pub"], "--max-bundle-size", "1K", "verify", bundle)
    assert p.returncode == 3 and "above the limit 1024" in p.stderr, p.stderr
    p = install("--root", tmp_path, "--trust", keys["pub"], "--max-bundle-size", "1G", "verify", bundle)
    assert p.returncode == 0, p.stderr
    p = install("--root", tmp_path, "--max-bundle-size", "lots", "verify", bundle)
    assert p.returncode == 2 and "512M" in p.stderr

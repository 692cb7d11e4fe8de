"""Pre-flight refusing a jump whose renames an inode attribute forbids: a file the jump
replaces that is immutable (``chattr +i``), a directory whose entries it changes that is
append-only (``chattr +a``). Before, the swap failed with EPERM after the stop and rolled
back (exit 5, an outage for nothing); now it is exit 4 before anything is written."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import Sandbox, install, tree_listing


@contextlib.contextmanager
def chattr(flag: str, path: Path) -> Iterator[None]:
    """``path`` with attribute ``flag`` (``i``, ``a``) set, cleared again on the way out
    (an immutable file would outlive the sandbox's removal)."""
    subprocess.run(["chattr", f"+{flag}", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", f"-{flag}", str(path)], check=True)


@pytest.mark.parametrize(
    ("flag", "rel", "phrase"),
    [
        (
            "i",
            "opt/demo-manager/lib/demo_manager/server.py",
            "is immutable (chattr +i): the swap cannot replace",
        ),
        ("a", "opt/demo-manager/lib/demo_manager", "is append-only (chattr +a): no file can be renamed"),
    ],
)
def test_a_pinned_file_or_directory_is_refused_before_the_stop(
    flag: str, rel: str, phrase: str, sandbox: Callable[..., Sandbox], bundle: Path
) -> None:
    sb = sandbox()
    before = tree_listing(sb.root, exclude=())
    with chattr(flag, sb.root / rel):
        p = install("--root", sb.root, "apply", bundle)
        assert p.returncode == 4, p.stderr
        lines = [x for x in p.stderr.splitlines() if x.startswith("bundle-install:")]
        assert len(lines) == 1 and f"{rel} {phrase}" in lines[0], p.stderr
        assert "stopping" not in p.stderr and "Traceback" not in p.stderr
        assert tree_listing(sb.root, exclude=()) == before
        assert sb.version() == "4.0.1"


def test_an_attribute_where_the_jump_changes_nothing_is_no_refusal(
    sandbox: Callable[..., Sandbox], bundle: Path
) -> None:
    """``opt`` immutable (no entry of ``opt`` itself changes) and the service's launcher
    immutable (the jump does not replace it): the jump goes through."""
    sb = sandbox()
    with chattr("i", sb.root / "opt"), chattr("i", sb.root / "opt/demo-manager/bin/demo-manager"):
        p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert sb.wait_version("4.1.1") == "4.1.1"

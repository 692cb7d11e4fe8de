"""Which mount a path is on (installer/mounts.py), and pre-flight refusing a jump whose
renames would cross a mount beneath the root (EXDEV, EBUSY in the outage window)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from installer.mounts import Mounts
from tests.helpers import REPO, Sandbox, tree_listing

SAMPLE = """\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
40 22 0:33 / /srv/my\\040data rw - tmpfs tmpfs rw
41 22 252:0 /srv/file /opt/app/VERSION rw - ext4 /dev/vda rw
"""


def test_mountinfo_is_parsed_with_its_escapes() -> None:
    m = Mounts.parse(SAMPLE)
    assert m.points == {"/", "/proc", "/srv/my data", "/opt/app/VERSION"}
    assert m.of("/srv/my data/x/y") == "/srv/my data"
    assert m.of("/srv/my") == "/"
    assert m.of("/proc") == "/proc" and m.of("/") == "/"
    assert m.is_point("/opt/app/VERSION") and not m.is_point("/opt/app")


def test_this_namespace_has_its_proc() -> None:
    m = Mounts.read()
    assert m is not None and m.of("/proc/self/status") == "/proc"


def _in_namespace(script: str, sb: Sandbox, bundle: Path) -> subprocess.CompletedProcess[str]:
    """``script`` (mounts), then ``bundle-install apply`` in a private mount namespace."""
    apply = f'"{REPO}/.venv/bin/python" -m installer.cli --root "$R" apply "$B"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-euc", f"{script}\n{apply}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={"R": str(sb.root), "B": str(bundle), "PATH": "/usr/bin:/bin"},
    )


def test_a_mount_deep_beneath_the_root_is_refused_before_the_stop(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    """A tmpfs on opt/demo-manager/lib/demo_manager (the files copied in): the swap's
    renames from staging would fail with EXDEV once the service is stopped. Pre-flight
    refuses (exit 4) in one line naming the directory; nothing is written, the service
    never stops."""
    sb = sandbox()
    before = tree_listing(sb.root, exclude=())
    p = _in_namespace(
        f'L="$R/opt/demo-manager/lib/demo_manager"; cp -a "$L" "{tmp_path}/save"\n'
        f'mount -t tmpfs tmpfs "$L"; cp -a "{tmp_path}/save/." "$L/"',
        sb,
        bundle,
    )
    assert p.returncode == 4, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("bundle-install:")]
    assert len(lines) == 1 and "lib/demo_manager is a mount point or on another mount" in lines[0], p.stderr
    assert "stopping" not in p.stderr
    assert tree_listing(sb.root, exclude=()) == before
    assert sb.version() == "4.0.1"


def test_a_file_bind_mounted_in_place_is_refused_before_the_stop(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    """A file of the jump bind-mounted from the same filesystem: one st_dev, yet renaming
    it away fails with EBUSY. Found in mountinfo; refused like a mount of a directory."""
    sb = sandbox()
    before = tree_listing(sb.root, exclude=())
    p = _in_namespace(
        f'F="$R/opt/demo-manager/VERSION"; cp "$F" "{tmp_path}/v"; mount --bind "{tmp_path}/v" "$F"',
        sb,
        bundle,
    )
    assert p.returncode == 4, p.stderr
    assert "opt/demo-manager/VERSION is a mount point" in p.stderr, p.stderr
    assert tree_listing(sb.root, exclude=()) == before
    assert sb.version() == "4.0.1"

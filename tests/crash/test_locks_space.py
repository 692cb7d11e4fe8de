"""Locks (two applies at once, a run killed holding the lock) and space (refused early
when the filesystem is too small; the disk filling up during staging)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.crash.common import assert_exactly
from tests.helpers import REPO, Sandbox, install, tree_hash

STATE = "var/lib/jumpkit/demo-manager"


def start_apply(sb: Sandbox, bundle: Path, failpoint: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **({"JUMPKIT_FAILPOINT": failpoint} if failpoint else {})}
    return subprocess.Popen(
        [sys.executable, "-m", "installer.cli", "--root", str(sb.root), "apply", str(bundle)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )  # fmt: skip


def wait_stopped(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until the process froze itself at its failpoint (state T in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.01)
    raise AssertionError("the failpoint did not stop the process")


# --- locks ----------------------------------------------------------------------------


def test_second_apply_exits_7_and_changes_nothing(
    sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    sb = sandbox()
    first = start_apply(sb, bundle, "run:swap-files=stop")  # frozen mid-apply, holding the lock
    try:
        wait_stopped(first)
        before = tree_hash(sb.root)
        p = install("--root", sb.root, "apply", bundle)
        assert p.returncode == 7, p.stderr
        assert f"pid {first.pid}" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert tree_hash(sb.root) == before
        st = json.loads(install("--root", sb.root, "status", "--json").stdout)
        assert st["status"] == "working" and st["extra"]["running"]["pid"] == first.pid
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(60) == 0, first.stderr.read() if first.stderr else ""
    assert_exactly(sb, expected, "new", "4.1.1")


def test_two_applies_started_together_exactly_one_proceeds(
    sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    sb = sandbox()
    procs = [start_apply(sb, bundle), start_apply(sb, bundle)]
    codes = sorted(p.wait(120) for p in procs)
    # the loser either met the lock (7) or came after the winner had finished and found
    # 4.1.1 installed (4); either way it changed nothing
    assert codes[0] == 0 and codes[1] in (4, 7), codes
    assert_exactly(sb, expected, "new", "4.1.1")


def test_a_run_killed_holding_the_lock_is_reported_with_what_to_run(
    sandbox: Callable[..., Sandbox], bundle: Path, expected: dict[str, object]
) -> None:
    sb = sandbox()
    dead = start_apply(sb, bundle, "run:swap-files=stop")
    wait_stopped(dead)
    # inside the outage window status.json is not rewritten: the step comes from the journal
    assert json.loads(install("--root", sb.root, "status", "--json").stdout)["step"] == "swap-files"
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait()
    assert (sb.root / STATE / "lock").read_text().strip() == str(dead.pid)  # its pid is still in there
    st = install("--root", sb.root, "status")
    assert st.returncode == 0
    assert f"INTERRUPTED: the run (pid {dead.pid}) died at step swap-files" in st.stdout
    assert "bundle-install resume" in st.stdout and "bundle-install rollback" in st.stdout
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 4 and "bundle-install resume" in p.stderr and "bundle-install rollback" in p.stderr
    assert f"previous run (pid {dead.pid}) died holding the lock" in p.stderr
    p = install("--root", sb.root, "resume")
    assert p.returncode == 0, p.stderr
    assert_exactly(sb, expected, "new", "4.1.1")


# --- space ----------------------------------------------------------------------------


@contextlib.contextmanager
def on_tmpfs(sb: Sandbox, spare_mib: int) -> Iterator[Path]:
    """Move the sandbox root onto a tmpfs mounted at its own path with ``spare_mib`` MiB
    free beyond its contents; unmounted (and the contents moved back) afterwards."""
    root = sb.root
    sb.stop()
    used = int(subprocess.run(["du", "-sk", str(root)], capture_output=True, text=True).stdout.split()[0])
    saved = root.with_name("saved")
    os.rename(root, saved)
    root.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={used // 1024 + 2 + spare_mib}m", "tmpfs", str(root)],
        check=True,
    )
    try:
        subprocess.run(["cp", "-a", f"{saved}/.", str(root)], check=True)
        sb.start_supervisord()
        yield root
    finally:
        sb.stop()
        subprocess.run(["umount", "-l", str(root)], check=False)
        root.rmdir()
        os.rename(saved, root)


def fill(path: Path) -> Path:
    """Write until the filesystem is full."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_too_little_space_is_refused_before_anything(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox()
    with on_tmpfs(sb, spare_mib=4) as root:
        before = tree_hash(root)
        for command in ("stage", "apply"):
            p = install("--root", root, command, bundle)
            assert p.returncode == 4, p.stderr
            line = [ln for ln in p.stderr.splitlines() if ln.startswith("bundle-install:")]
            assert len(line) == 1 and "not enough space" in line[0] and "MiB needed" in line[0], p.stderr
            assert "backup of main" in p.stderr  # the database backup is counted too
            assert tree_hash(root) == before
            assert not any((root / STATE / "staging").glob("*"))
        assert sb.version() == "4.0.1"


def test_disk_filling_up_during_stage_stops_cleanly(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox()
    with on_tmpfs(sb, spare_mib=40) as root:
        before = tree_hash(root)
        proc = start_apply(sb, bundle, "stage:member@1=stop")  # pre-flight passed; frozen in staging
        wait_stopped(proc)
        filler = fill(root)
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(60) == 4
        assert proc.stderr is not None
        err = proc.stderr.read()
        lines = [ln for ln in err.splitlines() if ln.startswith("bundle-install:")]
        assert len(lines) == 1 and "disk full while staging" in lines[0], err
        assert not any((root / STATE / "staging").glob("*")), "partial staging left behind"
        filler.unlink()
        assert tree_hash(root) == before
        assert sb.version() == "4.0.1"

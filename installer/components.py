"""Component RPMs a jump carries (Cloudify's upgrade RPM held the RPMs of every component).

They go in after the apply has committed, with the target's own rpm. Not from inside a
running rpm transaction: the bundle RPM's %posttrans runs while rpm holds the database
lock, and a nested rpm deadlocks on it. So the bundle RPM asks for a *detached* step
(``apply --detach-components``): a separate ``bundle-install components`` process that
waits until the rpm database lock is free (the outer transaction has ended), then runs
``rpm -U``. Its progress is in ``status.json`` under ``extra.components``
(pending -> waiting for the rpm database lock -> installing -> done | failed) and
``bundle-install components`` can be run again by hand (``rpm -U --replacepkgs`` is
idempotent).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from installer.errors import ComponentError

RPMDB_DIRS = ("var/lib/rpm", "usr/lib/sysimage/rpm")
"""Where rpm keeps its database (RHEL 8 / RHEL 9+); its lock is ``.rpm.lock`` there."""
DEFAULT_WAIT = 3600.0


def rpm_lock_busy(root: Path) -> bool:
    """True while another process holds rpm's transaction lock under ``root``."""
    for d in RPMDB_DIRS:
        path = root / d / ".rpm.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # rpm uses POSIX record locks too
            fcntl.lockf(fd, fcntl.LOCK_UN)
        except OSError:
            return True
        finally:
            os.close(fd)
    return False


def rpm_argv(root: Path, rpms: list[Path]) -> list[str]:
    """``rpm -U`` of ``rpms`` into ``root`` (inside a chroot, i.e. from %posttrans, root is /)."""
    argv = ["rpm", "--dbpath", "/var/lib/rpm", "-U", "--replacepkgs"]
    if root.resolve() != Path("/"):
        argv += ["--root", str(root)]
    return argv + [str(p) for p in rpms]


def install(
    root: Path,
    rpms: list[Path],
    on_state: Callable[[str], None],
    wait: float = DEFAULT_WAIT,
) -> str:
    """Wait for the rpm lock, then install ``rpms``; returns rpm's last output line.

    Raises:
        ComponentError: the lock stayed busy for ``wait`` seconds, or rpm failed.
    """
    deadline = time.monotonic() + wait
    if rpm_lock_busy(root):
        on_state("waiting for the rpm database lock")
        while rpm_lock_busy(root):
            if time.monotonic() > deadline:
                raise ComponentError(
                    f"the rpm database stayed locked for {wait:.0f}s; run 'bundle-install components'"
                )
            time.sleep(0.5)
    on_state("installing")
    p = subprocess.run(rpm_argv(root, rpms), capture_output=True, text=True, input="")  # no /dev/null needed
    lines = [
        ln
        for ln in (p.stdout + p.stderr).splitlines()
        if ln.strip()
        and "should not be used directly" not in ln
        and "assuming you know what you are doing" not in ln
    ]
    if p.returncode != 0:
        raise ComponentError(
            f"rpm -U of {len(rpms)} component RPM(s) failed (exit {p.returncode}): "
            + (lines[-1] if lines else "no output")
        )
    return lines[-1] if lines else f"installed {len(rpms)} component RPM(s)"

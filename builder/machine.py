"""A real systemd booted as PID 1 of its own namespaces, with a sandbox manager root as its
``/``: for ``test-jumps --backend systemd``, ``scripts/demo --systemd``, the benchmarks
and the tests. Nothing here runs on a production manager.

Why the manager root is the machine's ``/``: unit files name manager paths
(``ExecStart=/opt/<product>/bin/...``), so a unit shipped in a bundle must run unchanged;
and ``systemctl enable`` writes its links under ``/etc/systemd/system``, which must be the
root's own for a rollback's tree comparison to see them. The installer runs outside with
``--root ROOT`` (the same files), and reaches this systemd through ``systemctl`` wrappers
(:meth:`Machine.bin`) that run the real ``systemctl``/``journalctl`` inside the
namespaces with ``nsenter``. The network namespace is shared, so health checks and
clients on 127.0.0.1 reach the services.

How it boots (0.4 s here, systemd 252): the caller moves into a fresh cgroup2 child, then
``unshare`` of the pid, mount, uts, ipc and cgroup namespaces runs :data:`INIT` as PID 1,
which mounts the API file systems beneath the root (read-only ``/usr`` from the host,
``proc``, read-only ``sys``, ``cgroup2``, a tmpfs ``/dev`` with the usual nodes, tmpfs
``/run`` and ``/tmp``), masks every early-boot unit but journald (they would write into the
root: tmpfiles, sysusers, random-seed, utmp ...), ``pivot_root``\\s into the root and execs
systemd. Masks and the boot target live in ``/run``: nothing is written into the manager
tree but the skeleton :func:`prepare_root` makes before the boot (mount points, the
usr-merge links, ``etc/passwd`` and ``etc/group`` of the host, a machine id).
Stop: SIGKILL of PID 1 ends the pid namespace and every process in it at once; the mounts go
with the mount namespace; the cgroup is removed. Needs root, ``unshare``, ``nsenter`` and
systemd (``/lib/systemd/systemd``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from builder.errors import BuildError

SYSTEMD = Path("/lib/systemd/systemd")
CGROUP2 = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
"""Where a cgroup2 hierarchy is mounted on the host (hybrid layout first)."""
TARGET = "jumpkit-machine.target"
KEEP = ("systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket")
"""Early-boot units that run: journald only (the backend's logs are journald's)."""
MOUNT_POINTS = ("usr", "proc", "sys", "dev", "run", "tmp")

INIT = r"""
set -eu
R=$1
mount --bind "$R" "$R"
mount --rbind /usr "$R/usr"; mount -o remount,bind,ro "$R/usr"
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"; mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro sysfs "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
for d in null zero full random urandom tty; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
touch "$R/dev/console"; mount --bind /dev/null "$R/dev/console"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"; ln -s /proc/self/fd "$R/dev/fd"
for i in 0:stdin 1:stdout 2:stderr; do ln -s "/proc/self/fd/${i%%:*}" "$R/dev/${i#*:}"; done
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
U="$R/run/systemd/system"
mkdir -p "$U"
W="sysinit.target sockets.target"
printf '[Unit]\nDescription=jumpkit test machine\nRequires=%s\nAfter=%s\n' "$W" "$W" > "$U/$2"
for w in /usr/lib/systemd/system/sysinit.target.wants/* /usr/lib/systemd/system/sockets.target.wants/* \
         /usr/lib/systemd/system/local-fs.target.wants/*; do
  [ -e "$w" ] || continue
  n=${w##*/}
  case " $3 " in *" $n "*) continue;; esac
  ln -sf /dev/null "$U/$n"
done
for n in systemd-udevd.service systemd-udev-trigger.service systemd-remount-fs.service \
         systemd-logind.service getty.target console-getty.service; do
  ln -sf /dev/null "$U/$n"
done
cd "$R"
pivot_root . .
umount -l .
exec /usr/bin/env -i container=jumpkit PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin \
  /lib/systemd/systemd --unit="$2" </dev/null >/dev/null 2>&1
"""


def missing_tools() -> list[str]:
    """What this host lacks to boot a machine (empty when it can)."""
    out = [t for t in ("unshare", "nsenter", "mount") if shutil.which(t) is None]
    if not SYSTEMD.exists():
        out.append(f"systemd ({SYSTEMD})")
    if os.geteuid() != 0:
        out.append("root")
    if _cgroup2() is None:
        out.append("a cgroup2 hierarchy (/sys/fs/cgroup/unified or /sys/fs/cgroup)")
    return out


def _cgroup2() -> Path | None:
    for p in CGROUP2:
        if (p / "cgroup.procs").exists() and (p / "cgroup.subtree_control").exists():
            return p
    return None


def prepare_root(root: Path) -> None:
    """Give a sandbox root what an OS under it has and the boot needs: mount points, the
    usr-merge links (``bin -> usr/bin`` ...), the host's users and groups and a machine id.
    Existing entries are left as they are."""
    for d in (*MOUNT_POINTS, "etc/systemd/system", "var/lib", "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        link = root / name
        if not link.exists() and not link.is_symlink() and Path("/usr", name).is_dir():
            link.symlink_to(f"usr/{name}")
    for name in ("passwd", "group", "nsswitch.conf"):
        dest = root / "etc" / name
        if not dest.exists() and Path("/etc", name).is_file():
            shutil.copyfile(Path("/etc", name), dest)
    mid = root / "etc/machine-id"
    if not mid.exists():
        mid.write_text(uuid.uuid4().hex + "\n")
    osr = root / "etc/os-release"
    if not osr.exists() and not osr.is_symlink():
        osr.write_text('NAME="jumpkit test machine"\nID=jumpkit\n')


class Machine:
    """One booted systemd; :meth:`systemctl` and :meth:`bin` reach it from outside."""

    def __init__(self, root: Path, *, name: str | None = None) -> None:
        self.root = root.resolve()
        self.name = name or f"jk-{uuid.uuid4().hex[:10]}"
        self.pid = 0
        """The host pid of the machine's PID 1 (systemd)."""
        self._unshare: subprocess.Popen[bytes] | None = None
        base = _cgroup2()
        if base is None:
            raise BuildError("cannot boot systemd: no cgroup2 hierarchy on this host")
        self.cgroup = base / self.name
        self._bin: Path | None = None

    # --- life -----------------------------------------------------------------------
    def boot(self, timeout: float = 30, log: Path | None = None) -> Machine:
        """Boot and wait until systemd says ``running`` (or ``degraded``); ``log`` gets the
        init's own errors (a machine that outlives this process needs one: no pipe).

        Raises:
            BuildError: a tool is missing, or systemd did not come up in ``timeout``.
        """
        lacking = missing_tools()
        if lacking:
            raise BuildError(f"cannot boot systemd here: missing {', '.join(lacking)}")
        prepare_root(self.root)
        self.cgroup.mkdir()
        procs = str(self.cgroup / "cgroup.procs")

        def enter_cgroup() -> None:  # in the child, before exec: the namespace's cgroup root
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        argv = ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--cgroup",
                "--propagation", "private", "bash", "-c", INIT, "init", str(self.root), TARGET,
                " ".join(KEEP)]  # fmt: skip
        err = open(log, "ab") if log is not None else None  # noqa: SIM115 - handed to the child
        try:
            self._unshare = subprocess.Popen(
                argv,
                preexec_fn=enter_cgroup,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err if err is not None else subprocess.PIPE,
                start_new_session=True,
            )
        finally:
            if err is not None:
                err.close()
        try:
            self._wait_running(time.monotonic() + timeout, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_running(self, deadline: float, timeout: float) -> None:
        """Until systemd says ``running`` or ``degraded``.

        Raises:
            BuildError: its init exited, it booted into another state, or ``deadline`` passed.
        """
        init = self._unshare
        assert init is not None
        while time.monotonic() < deadline:
            if init.poll() is not None:
                said = init.stderr.read().decode(errors="replace") if init.stderr else ""
                raise BuildError(f"systemd did not boot: {said.strip()[-400:] or 'its init exited'}")
            if not self.pid:
                self.pid = self._child_of(init.pid)
            if self.pid and self._exe_is_systemd():
                wait = max(1.0, deadline - time.monotonic())
                state = self.run("systemctl", "is-system-running", "--wait", timeout=wait).stdout.strip()
                if state in ("running", "degraded"):
                    return
                if state not in ("initializing", "starting", ""):
                    raise BuildError(f"systemd booted {state}")
            time.sleep(0.02)
        raise BuildError(f"systemd did not reach running within {timeout:g}s")

    def _child_of(self, pid: int) -> int:
        with contextlib.suppress(OSError, ValueError):
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            return int(kids[0]) if kids else 0
        return 0

    def _exe_is_systemd(self) -> bool:
        try:
            return os.readlink(f"/proc/{self.pid}/exe").endswith("/systemd")
        except OSError:
            return False

    def stop(self) -> None:
        """End every process of the machine (SIGKILL of its PID 1 ends the pid namespace),
        then remove its cgroup. Idempotent."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._unshare is not None:
            try:  # unshare reaps its child, then exits
                self._unshare.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._unshare.pid, signal.SIGKILL)
                self._unshare.wait(10)
            if self._unshare.stderr:
                self._unshare.stderr.close()
            self._unshare = None
        for _ in range(250):
            try:
                if self.cgroup.exists():
                    for d in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                        if d.is_dir():
                            d.rmdir()
                    self.cgroup.rmdir()
                break
            except OSError:  # processes still leaving
                time.sleep(0.02)
        self.pid = 0
        if self._bin is not None:
            shutil.rmtree(self._bin, ignore_errors=True)
            self._bin = None

    def __enter__(self) -> Machine:
        return self.boot() if not self.pid else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- use ------------------------------------------------------------------------
    def nsenter(self) -> list[str]:
        """The argv prefix that runs a command inside the machine."""
        return ["nsenter", "-t", str(self.pid), "-a"]

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the machine (never raises for its exit status)."""
        return subprocess.run(
            [*self.nsenter(), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def systemctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``systemctl ARGS`` inside the machine."""
        return self.run("systemctl", *args, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        p = self.systemctl("show", unit, *(f"-p{x}" for x in props))
        return dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)

    def bin(self, where: Path | None = None) -> Path:
        """A directory (``where``, else a temporary one of this machine's) with
        ``systemctl``, ``journalctl`` and ``systemd-run`` that run the real commands inside
        this machine: put it first on the installer's PATH."""
        if where is None:
            if self._bin is None:
                self._bin = self.bin(Path(tempfile.mkdtemp(prefix="jk-machine-bin.", dir="/tmp")))
            return self._bin
        where.mkdir(parents=True, exist_ok=True)
        for tool in ("systemctl", "journalctl", "systemd-run"):
            w = where / tool
            w.write_text(f'#!/bin/sh\nexec nsenter -t {self.pid} -a {tool} "$@"\n')
            w.chmod(0o755)
        return where

    def env(self) -> dict[str, str]:
        """An environment whose PATH reaches this machine's systemd first."""
        return {**os.environ, "PATH": f"{self.bin()}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


@contextlib.contextmanager
def booted(root: Path) -> Iterator[Machine]:
    """A machine with ``root`` as its ``/`` for the duration of the block."""
    m = Machine(root)
    try:
        yield m.boot()
    finally:
        m.stop()


def _cli(argv: list[str] | None = None) -> int:
    """``python -m builder.machine boot ROOT --state DIR`` boots a machine that outlives the
    command (``DIR``: its pid, cgroup, log and the ``bin/`` wrappers); ``stop --state DIR``
    ends it. For ``scripts/demo --systemd``."""
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(prog="python -m builder.machine", description=_cli.__doc__)
    ap.add_argument("action", choices=["boot", "stop"])
    ap.add_argument("root", nargs="?", type=Path)
    ap.add_argument("--state", type=Path, required=True, help="where the machine's pid, log and bin/ go")
    a = ap.parse_args(argv)
    info = a.state / "machine.json"
    try:
        if a.action == "boot":
            if a.root is None:
                ap.error("boot needs ROOT")
            a.state.mkdir(parents=True, exist_ok=True)
            m = Machine(a.root).boot(log=a.state / "machine.log")
            m._unshare = None  # it outlives this process; stop goes by pid
            info.write_text(json.dumps({"pid": m.pid, "cgroup": str(m.cgroup), "root": str(m.root)}))
            print(f"systemd is PID 1 of a machine whose / is {m.root} (host pid {m.pid}); "
                  f"its systemctl: {m.bin(a.state / 'bin')}/systemctl")  # fmt: skip
        elif info.exists():
            d = json.loads(info.read_text())
            m = Machine(Path(d["root"]), name=Path(d["cgroup"]).name)
            m.pid = int(d["pid"])
            m.stop()
            info.unlink()
            shutil.rmtree(a.state / "bin", ignore_errors=True)
    except BuildError as e:
        print(f"machine: {e.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())

"""Test helpers: sandboxes with a real supervisord, tree hashes, running the real CLIs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "specs"
# Runtime files of the test harness, not of the manager, and the demo's database (its
# bytes change with page layout; compared by revision and rows instead: db_state()).
DEMO_DB = "var/lib/demo-manager/manager.db"
# SQLite may leave an emptied rollback journal after a crash (not hot; harmless): it
# belongs to the database and is covered by db_state() too.
# etc/jumpkit/tuf: the TUF root a test pins (as an operator would before a first fetch)
HARNESS = (
    "var/lib/jumpkit",
    "etc/jumpkit/tuf",
    "etc/supervisord.conf",
    "var/run",
    "var/log",
    DEMO_DB,
    DEMO_DB + "-journal",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def short_tmp(prefix: str) -> Path:
    """A short path: supervisord's unix socket path must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def security_xattrs(path: Path) -> str:
    """The SELinux label and file capabilities of ``path`` (its own, not a link's target),
    as a listing shows them: what a rollback must restore exactly, like owner and mode."""
    out = []
    for name in ("security.selinux", "security.capability"):
        with contextlib.suppress(OSError):
            out.append(f"{name}={os.getxattr(path, name, follow_symlinks=False).hex()}")
    return ",".join(out)


def tree_listing(root: Path, exclude: tuple[str, ...] = HARNESS) -> dict[str, str]:
    """Every path under root (harness files aside) -> "mode:owner:group:security xattrs:link
    target or content sha256"."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            full = base / name
            rel = full.relative_to(root).as_posix()
            if any(rel == e or rel.startswith(e + "/") for e in exclude):
                continue
            st = full.lstat()
            what = ""
            if full.is_symlink():
                what = "-> " + os.readlink(full)
            elif full.is_file():
                what = hashlib.sha256(full.read_bytes()).hexdigest()
            out[rel] = f"{st.st_mode:o}:{st.st_uid}:{st.st_gid}:{security_xattrs(full)}:{what}"
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
    return out


def tree_hash(root: Path, exclude: tuple[str, ...] = HARNESS) -> str:
    """sha256 over every path, type, mode, link target and content under root."""
    h = hashlib.sha256()
    for rel, what in sorted(tree_listing(root, exclude).items()):
        h.update(f"{rel}\0{what}\0".encode())
    return h.hexdigest()


def tree_diff(before: dict[str, str], after: dict[str, str], limit: int = 12) -> str:
    """What differs between two listings, in a few lines, for an assertion message."""
    lines = [f"+ {k}" for k in sorted(after.keys() - before.keys())]
    lines += [f"- {k}" for k in sorted(before.keys() - after.keys())]
    lines += [f"~ {k} ({before[k]} -> {after[k]})" for k in sorted(before.keys() & after.keys())
              if before[k] != after[k]]  # fmt: skip
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def db_state(url: str) -> dict[str, object]:
    """The alembic revision and every table's rows (sorted), for "exactly" comparisons."""
    from sqlalchemy import create_engine, inspect, pool, text

    from installer.migrate import with_driver

    engine = create_engine(with_driver(url), poolclass=pool.NullPool)
    out: dict[str, object] = {}
    with engine.connect() as c:
        for table in sorted(inspect(c).get_table_names()):
            cols = [col["name"] for col in inspect(c).get_columns(table)]
            rows = c.execute(text(f'SELECT * FROM "{table}"')).fetchall()
            out[table] = (cols, sorted(tuple(map(str, r)) for r in rows))
    return out


def sqlite_url(root: Path) -> str:
    return f"sqlite:///{root / DEMO_DB}"


def run_cli(
    module: str, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=REPO,
    )


def install(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("installer.cli", *args, env=env)


def build(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``bundle-build``; a development bundle unless ``--installer`` is given, whether or not
    this checkout holds a dist/bundle-install (the builder's default)."""
    explicit = "--installer" in args
    return run_cli("builder.cli", *args, env=None if explicit else {"JUMPKIT_NO_INSTALLER": "1"})


def build_demo(
    out: Path, key: Path, *extra: str | Path, frm: str = "4.0.1", to: str = "4.1.1"
) -> subprocess.CompletedProcess[str]:
    """``bundle-build`` of a demo-manager jump, signed with ``key``, into ``out``."""
    return build("--specs", SPECS, "--from", frm, "--to", to, "--key", key, "--out", out, *extra)


def laid_out(
    specs: Path, product: str, frm: str, to: str, tmp: Path, keys: dict[str, Path]
) -> tuple[Path, Path]:
    """Build ``product`` ``frm`` -> ``to`` from ``specs`` into ``tmp``/dist and lay out
    ``frm`` at ``tmp``/root: (root, bundle)."""
    out = tmp / "dist"
    p = build("--specs", specs, "--from", frm, "--to", to, "--key", keys["key"], "--out", out)
    assert p.returncode == 0, p.stderr
    root = tmp / "root"
    p = build("sandbox", "--specs", specs, "--version", frm, "--root", root, "--trust", keys["pub"])
    assert p.returncode == 0, p.stderr
    return root, out / f"{product}-{frm}-to-{to}.zip"


def get(url: str, timeout: float = 2) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return str(r.read().decode().strip())
    except OSError:
        return None


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie left for a non-reaping init counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def terminate(pid: int | None) -> None:
    """SIGTERM ``pid``, SIGKILL it after 5 s."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(250):
        if not alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def wait_answer(version: Callable[[], str | None], want: str | None, tries: int) -> str | None:
    """What ``version()`` answers once it answers ``want`` (any answer when None), polling
    every 20 ms at most ``tries`` times; the last answer otherwise."""
    v = None
    for _ in range(tries):
        v = version()
        if v is not None and (want is None or v == want):
            return v
        time.sleep(0.02)
    return v


@dataclass
class Sandbox:
    root: Path
    port: int
    supervisord_pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def version(self) -> str | None:
        return get(self.url + "/version")

    def start_supervisord(self) -> None:
        conf = self.root / "etc/supervisord.conf"
        subprocess.run([str(Path(sys.executable).parent / "supervisord"), "-c", str(conf)], check=True)
        pidfile = self.root / "var/run/supervisord.pid"
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.02)
        self.supervisord_pid = int(pidfile.read_text())
        self.wait_version()

    def wait_version(self, want: str | None = None, tries: int = 200) -> str | None:
        return wait_answer(self.version, want, tries)

    def service_pid(self, name: str = "demo-manager") -> int:
        """The process id supervisord gives for ``name`` (0: not running)."""
        ctl = Path(sys.executable).parent / "supervisorctl"
        conf = self.root / "etc/supervisord.conf"
        p = subprocess.run([str(ctl), "-c", str(conf), "pid", name], capture_output=True, text=True)
        return int(p.stdout.strip() or 0)

    def stop(self) -> None:
        terminate(self.supervisord_pid)
        self.supervisord_pid = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root.parent, ignore_errors=True)


def make_sandbox(
    version: str,
    pub: Path,
    port: int,
    *,
    specs: Path = SPECS,
    product: str = "demo-manager",
    supervise: bool = True,
) -> Sandbox:
    root = short_tmp("jk-") / "r"
    p = build(
        "sandbox",
        "--specs",
        specs,
        "--product",
        product,
        "--version",
        version,
        "--root",
        root,
        "--trust",
        pub,
        "--set",
        f"server.port={port}",
    )
    assert p.returncode == 0, p.stderr
    sb = Sandbox(root, port)
    if supervise:
        sb.start_supervisord()
    return sb


def journal_writes(monkeypatch: Any) -> list[list[str]]:
    """Record each durable journal write of an in-process apply, as ``Type:step`` of its
    records (one list per write, that is per fsync)."""
    from installer.state import StateDir

    writes: list[list[str]] = []
    real = StateDir.journal_append

    def spy(self: StateDir, *events: Any, durable: bool = True) -> None:
        if durable:
            writes.append([f"{type(e).__name__}:{getattr(e, 'step', '')}" for e in events])
        real(self, *events, durable=durable)

    monkeypatch.setattr(StateDir, "journal_append", spy)
    return writes

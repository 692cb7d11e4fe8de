"""A private PostgreSQL cluster for the tests: initdb into a temp dir, pg_ctl start on
127.0.0.1 with a free port, password auth; stopped by its postmaster pid."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import alive, free_port

PASSWORD = "s3cret-" + uuid.uuid4().hex[:8]


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (scripts/setup installs it)")
    return Path(found[-1]).parent


@contextmanager
def cluster() -> Iterator[str]:
    """Yields a SQLAlchemy URL (with password) of the cluster's ``postgres`` database."""
    bindir = _bindir()
    base = Path(tempfile.mkdtemp(prefix="jk-pg-", dir="/tmp"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    pwfile = base / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if prefix:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    data = base / "data"
    subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "log"),
            "-w",
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    try:
        # as an operator writes it: the installer picks its own driver (migrate.with_driver)
        yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        os.kill(pid, signal.SIGINT)  # fast shutdown
        for _ in range(500):
            if not alive(pid):
                break
            time.sleep(0.02)
        shutil.rmtree(base, ignore_errors=True)


def create_database(admin_url: str) -> str:
    """A fresh database on the cluster; returns its URL."""
    from sqlalchemy import create_engine, pool, text

    from installer.migrate import with_driver

    name = "t_" + uuid.uuid4().hex[:10]
    engine = create_engine(with_driver(admin_url), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    return admin_url.rsplit("/", 1)[0] + "/" + name

"""Sandbox managers under a real systemd (builder/machine.py): the manager root is the
machine's ``/``, its services are socket-activated units, and the installer runs outside
with ``--root`` and ``systemctl`` reaching that systemd through ``nsenter``."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from builder.machine import Machine
from tests.helpers import (
    HARNESS,
    REPO,
    build,
    db_state,
    get,
    install,
    short_tmp,
    sqlite_url,
    tree_diff,
    tree_hash,
    tree_listing,
    wait_answer,
)

SYSTEMD_SPECS = REPO / "examples/systemd"
UNITS = ("demo-manager.service", "demo-manager.socket")
PORT_DROP_IN = "etc/systemd/system/demo-manager.socket.d/port.conf"


@dataclass
class SystemdSandbox:
    root: Path
    port: int
    machine: Machine

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def version(self) -> str | None:
        return get(self.url + "/version")

    def wait_version(self, want: str | None = None, tries: int = 250) -> str | None:
        return wait_answer(self.version, want, tries)

    def env(self) -> dict[str, str]:
        """For :func:`tests.helpers.install`: ``systemctl`` is this machine's."""
        return {"PATH": self.machine.env()["PATH"]}

    def install(self, *args: str | Path, env: dict[str, str] | None = None) -> object:
        return install("--root", self.root, *args, env={**self.env(), **(env or {})})

    def units(self, *names: str) -> dict[str, dict[str, str]]:
        """systemd's loaded view of each unit: where its file is, its state, enablement."""
        return {
            n: self.machine.show(
                n, "FragmentPath", "ActiveState", "UnitFileState", "LoadState", "DropInPaths"
            )
            for n in (names or UNITS)
        }

    def destroy(self) -> None:
        self.machine.stop()
        shutil.rmtree(self.root.parent, ignore_errors=True)


def make_systemd_sandbox(
    version: str, pub: Path, port: int, *, specs: Path = SYSTEMD_SPECS, start: bool = True
) -> SystemdSandbox:
    """A demo-manager ``version`` laid out as a fresh install, its socket on ``port`` (the
    operator's drop-in), booted under systemd with socket and service enabled and running."""
    root = short_tmp("jk-sd-") / "r"
    p = build("sandbox", "--specs", specs, "--version", version, "--root", root, "--trust", pub,
              "--set", f"server.port={port}")  # fmt: skip
    assert p.returncode == 0, p.stderr
    drop_in = root / PORT_DROP_IN
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text(f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
    machine = Machine(root)
    sb = SystemdSandbox(root, port, machine)
    try:
        machine.boot()
        if start:
            for unit in UNITS:
                r = machine.systemctl("enable", "--now", unit)
                assert r.returncode == 0, r.stderr
            assert sb.wait_version(version) == version, machine.systemctl("status", *UNITS).stdout
    except BaseException:
        sb.destroy()
        raise
    return sb


@dataclass
class Client:
    """A client sending ``GET /version`` every ``every`` seconds until stopped (at most
    ``limit`` requests): what it saw, for counting refusals."""

    url: str
    every: float = 0.005
    limit: int = 20000
    refused: int = 0
    reset: int = 0
    other: int = 0
    answers: list[str] = field(default_factory=list)
    longest: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _one(self, host: str, port: int) -> None:
        t0 = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=10) as s:
                s.sendall(b"GET /version HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            body = data.split(b"\r\n\r\n", 1)[-1].decode().strip()
            if not body:
                self.reset += 1  # accepted, then closed without an answer
            else:
                self.answers.append(body)
        except ConnectionRefusedError:
            self.refused += 1
        except ConnectionResetError:
            self.reset += 1
        except OSError:
            self.other += 1
        self.longest = max(self.longest, time.monotonic() - t0)

    def _loop(self) -> None:
        hostport = self.url.split("//", 1)[1]
        host, port = hostport.rsplit(":", 1)
        for _ in range(self.limit):
            if self._stop.is_set():
                return
            self._one(host, int(port))
            time.sleep(self.every)

    def __enter__(self) -> Client:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    @property
    def failures(self) -> int:
        return self.refused + self.reset + self.other


# the machine's id is made per boot of a fresh sandbox: not the manager's
SD_HARNESS = (*HARNESS, "etc/machine-id")


def sd_tree(root: Path) -> str:
    return tree_hash(root, SD_HARNESS)


def assert_exactly_sd(
    sb: SystemdSandbox, expected: dict[str, object], which: str, version: str, what: str
) -> None:
    """Files, database, the service answering ``version``, and systemd's loaded view of the
    units (file, state, enablement, drop-ins) as after a clean run."""
    tree, files, db, units = expected[which]  # type: ignore[misc]
    if sd_tree(sb.root) != tree:
        raise AssertionError(
            f"{what}: tree is not exactly {version}:\n{tree_diff(files, tree_listing(sb.root, SD_HARNESS))}"
        )
    assert db_state(sqlite_url(sb.root)) == db, f"{what}: database is not exactly {version}"
    assert sb.wait_version(version) == version, f"{what}: the service answers {sb.version()}"
    assert sb.units() == units, f"{what}: systemd sees {sb.units()}"

"""The systemd backend against a real systemd (PID 1 of its own namespaces, the sandbox
manager as its ``/``): socket-activated restarts that refuse no connection, the crash and
signal matrices ending exactly old or new with systemd's loaded state agreeing, units that
change, come and go, a crash-looping new version, operator drop-ins, a stop timeout."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import build, free_port, tree_listing
from tests.systemd import (
    SD_HARNESS,
    SYSTEMD_SPECS,
    Client,
    SystemdSandbox,
    assert_exactly_sd,
)

pytestmark = pytest.mark.systemd  # scripts/setup installs systemd: a machine that cannot boot fails


def test_socket_activated_apply_and_rollback_refuse_no_connection(
    sd_sandbox: Callable[..., SystemdSandbox], sd_bundle: Path, sd_expected: dict[str, object]
) -> None:
    """A client sends a request every 5 ms through the apply and through the rollback: the
    socket stays while the service stops, the files swap and the schema migrates, so not one
    connection is refused or reset; it is answered by 4.0.1 before and 4.1.1 after."""
    sb = sd_sandbox()
    with Client(sb.url) as c:
        time.sleep(0.2)
        p = sb.install("apply", sd_bundle)
        time.sleep(0.2)
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    assert (c.refused, c.reset, c.other) == (0, 0, 0), (c.refused, c.reset, c.other)
    assert set(c.answers) == {"4.0.1", "4.1.1"} and c.answers[-1] == "4.1.1"
    assert c.longest < 5, c.longest
    assert_exactly_sd(sb, sd_expected, "new", "4.1.1", "apply")
    with Client(sb.url) as c:
        time.sleep(0.2)
        p = sb.install("rollback")
        time.sleep(0.2)
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    assert (c.refused, c.reset, c.other) == (0, 0, 0), (c.refused, c.reset, c.other)
    assert c.answers[-1] == "4.0.1"
    assert_exactly_sd(sb, sd_expected, "old", "4.0.1", "rollback")
    # nothing of the run stays in systemd: the hold units are gone
    left = sb.machine.systemctl("list-units", "--all", "--plain", "--no-legend", "jumpkit-hold-*").stdout
    assert left.strip() == "", left


def test_plan_says_the_restart_refuses_no_connection(
    sd_sandbox: Callable[..., SystemdSandbox], sd_bundle: Path
) -> None:
    sb = sd_sandbox()
    p = sb.install("plan", sd_bundle)
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    out = p.stdout  # type: ignore[attr-defined]
    assert "demo-manager: restarts behind demo-manager.socket: no connection is refused" in out, out
    assert "operator drop-ins kept: /etc/systemd/system/demo-manager.socket.d/port.conf" in out, out


def _crash(sb: SystemdSandbox, bundle: Path, point: str) -> None:
    p = sb.install("apply", bundle, env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9, f"failpoint {point} did not fire: rc={p.returncode} {p.stderr}"  # type: ignore[attr-defined]


# --- a small product whose units change --------------------------------------------------

APP = """\
import os, socket, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
ANSWER = open("/opt/svc/VERSION").read().strip() + " " + os.environ.get("FLAVOUR", "-")
if os.environ.get("CRASH_AFTER"):
    import threading
    threading.Timer(float(os.environ["CRASH_AFTER"]), lambda: os._exit(1)).start()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        b = (ANSWER + "\\n").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a): pass
s = HTTPServer(("127.0.0.1", 0), H, bind_and_activate=False)
s.socket.close(); s.socket = socket.socket(fileno=3)
# a stop finishes the request in hand (an unanswered accepted connection is a reset the
# client sees); what waits in the backlog stays in systemd's socket for the next version
import signal, threading
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=s.shutdown).start())
s.serve_forever(poll_interval=0.05)
"""

UNIT = """\
[Unit]
Requires=svc.socket
After=svc.socket
[Service]
Environment=PYTHONDONTWRITEBYTECODE=1
Environment=FLAVOUR={flavour}
{extra}ExecStart=/usr/bin/python3 /opt/svc/app.py
TimeoutStopSec=30
[Install]
WantedBy=multi-user.target
"""
SOCKET = "[Socket]\nListenStream=127.0.0.1:9\n[Install]\nWantedBy=sockets.target\n"
SIDE = "[Service]\nExecStart=/usr/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"


def unit_product(tmp: Path, new_unit: dict[str, str], *, old_side: bool = False, new_side: bool = False,
                 stop_timeout: float = 10, settle: float = 0) -> Path:  # fmt: skip
    """Product svc 1.0.0 -> 1.1.0 under systemd: an HTTP app behind svc.socket whose unit
    1.1.0 may change (``new_unit``: flavour, extra [Service] lines); a side service
    ``side.service`` in 1.0.0 only (``old_side``, the jump removes it) or 1.1.0 only
    (``new_side``, the jump adds it)."""
    specs = tmp / "specs"
    d = specs / "svc"
    (d / "jumps").mkdir(parents=True)
    (d / "product.yaml").write_text(
        textwrap.dedent(f"""\
        product: svc
        version_file: opt/svc/VERSION
        lookups:
          port: {{file: etc/svc/svc.ini, key: server.port}}
        services:
          backend: systemd
          settle: {settle}
          services:
            - name: svc
              socket: svc.socket
              stop_timeout: {stop_timeout}
          health:
            - {{name: answers, kind: http, url: "http://127.0.0.1:{{port}}/", expect_body: "{{version}}",
                timeout: 1, interval: 0.02, retries: 150}}
        """)
    )
    for v, unit, side in (("1.0.0", {"flavour": "old"}, old_side), ("1.1.0", new_unit, new_side)):
        r = d / f"releases/{v}"
        (r / "root/opt/svc").mkdir(parents=True)
        (r / "root/opt/svc/VERSION").write_text(v + "\n")
        (r / "root/opt/svc/app.py").write_text(APP)
        units = r / "root/etc/systemd/system"
        units.mkdir(parents=True)
        (units / "svc.service").write_text(UNIT.format(flavour=unit["flavour"], extra=unit.get("extra", "")))
        (units / "svc.socket").write_text(SOCKET)
        if side:
            (units / "side.service").write_text(SIDE)
        (r / "config/etc/svc").mkdir(parents=True)
        (r / "config/etc/svc/svc.ini.j2").write_text("[server]\nport = 8080\n")
    (d / "jumps/1.0.0-1.1.0.yaml").write_text("from: 1.0.0\nto: 1.1.0\ndate: 2026-12-01\n")
    return specs


def unit_sandbox(
    specs: Path, keys: dict[str, Path], tmp: Path, *, side: bool = False
) -> tuple[SystemdSandbox, Path]:
    p = build(
        "--specs", specs, "--from", "1.0.0", "--to", "1.1.0", "--key", keys["key"], "--out", tmp / "dist"
    )
    assert p.returncode == 0, p.stderr
    port = free_port()
    root = tmp / "m" / "r"
    p = build("sandbox", "--specs", specs, "--version", "1.0.0", "--root", root, "--trust", keys["pub"],
              "--set", f"server.port={port}")  # fmt: skip
    assert p.returncode == 0, p.stderr
    drop = root / "etc/systemd/system/svc.socket.d/port.conf"
    drop.parent.mkdir(parents=True)
    drop.write_text(f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
    from builder.machine import Machine

    sb = SystemdSandbox(root, port, Machine(root))
    sb.machine.boot()
    for unit in ("svc.socket", "svc.service", *(("side.service",) if side else ())):
        r = sb.machine.systemctl("enable", "--now", unit)
        assert r.returncode == 0, r.stderr
    assert sb.wait_version() == "1.0.0 old"
    return sb, tmp / "dist/svc-1.0.0-to-1.1.0.zip"


@pytest.fixture
def units_made() -> Iterator[list[SystemdSandbox]]:
    made: list[SystemdSandbox] = []
    yield made
    for sb in made:
        sb.machine.stop()


def test_rollback_starts_the_old_unit_definition(
    tmp_path: Path, keys: dict[str, Path], units_made: list[SystemdSandbox]
) -> None:
    """The jump changes svc.service: the start after the swap runs the new definition
    (daemon-reload first), and the rollback's start the old one (a reload after the swap
    back); the socket is not restarted, so no client is refused either way."""
    specs = unit_product(tmp_path, {"flavour": "new"})
    sb, bundle = unit_sandbox(specs, keys, tmp_path)
    units_made.append(sb)
    before = tree_listing(sb.root, SD_HARNESS)
    with Client(sb.url) as c:
        p = sb.install("apply", bundle)
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    assert "units changed: daemon-reload" in p.stderr  # type: ignore[attr-defined]
    assert sb.wait_version("1.1.0 new") == "1.1.0 new"
    assert c.refused == 0 and c.reset == 0, (c.refused, c.reset)
    with Client(sb.url) as c:
        p = sb.install("rollback")
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    assert sb.wait_version() == "1.0.0 old"
    assert c.refused == 0 and c.reset == 0, (c.refused, c.reset)
    assert sb.machine.show("svc.service", "NeedDaemonReload")["NeedDaemonReload"] == "no"
    assert tree_listing(sb.root, SD_HARNESS) == before


def test_units_the_jump_adds_and_removes(
    tmp_path: Path, keys: dict[str, Path], units_made: list[SystemdSandbox]
) -> None:
    """1.1.0 drops side.service (running and enabled in 1.0.0) and a second jump's release
    adds it: a removed unit is stopped and disabled before its file goes, an added one
    enabled and started; rollbacks reverse both, the enablement links included."""
    specs = unit_product(tmp_path, {"flavour": "old"}, old_side=True)
    sb, bundle = unit_sandbox(specs, keys, tmp_path, side=True)
    units_made.append(sb)
    before = tree_listing(sb.root, SD_HARNESS)
    assert "etc/systemd/system/multi-user.target.wants/side.service" in before
    p = sb.install("apply", bundle)
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    side = sb.machine.show("side.service", "ActiveState", "LoadState", "UnitFileState")
    assert side["ActiveState"] == "inactive" and side["LoadState"] == "not-found", side
    assert not (sb.root / "etc/systemd/system/multi-user.target.wants/side.service").is_symlink()
    p = sb.install("rollback")
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    side = sb.machine.show("side.service", "ActiveState", "UnitFileState")
    assert side == {"ActiveState": "active", "UnitFileState": "enabled"}, side
    assert tree_listing(sb.root, SD_HARNESS) == before
    sb.machine.stop()

    add = tmp_path / "add"
    specs = unit_product(add, {"flavour": "old"}, new_side=True)
    sb, bundle = unit_sandbox(specs, keys, add)
    units_made.append(sb)
    before = tree_listing(sb.root, SD_HARNESS)
    p = sb.install("apply", bundle)
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    side = sb.machine.show("side.service", "ActiveState", "UnitFileState")
    assert side == {"ActiveState": "active", "UnitFileState": "enabled"}, side
    p = sb.install("rollback")
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    side = sb.machine.show("side.service", "ActiveState", "LoadState")
    assert side["ActiveState"] == "inactive" and side["LoadState"] == "not-found", side
    assert tree_listing(sb.root, SD_HARNESS) == before


def test_a_crash_looping_new_version_fails_health(
    tmp_path: Path, keys: dict[str, Path], units_made: list[SystemdSandbox]
) -> None:
    """1.1.0 answers its health check at once, then exits 1 after 0.3 s and systemd
    restarts it (Restart=always): polling the check alone would call it healthy. The
    backend's view (NRestarts) during the settle time fails health; the old version runs."""
    new = {"flavour": "new", "extra": "Environment=CRASH_AFTER=0.3\nRestart=always\nRestartSec=0.05\n"}
    specs = unit_product(tmp_path, new, settle=1.0)
    sb, bundle = unit_sandbox(specs, keys, tmp_path)
    units_made.append(sb)
    before = tree_listing(sb.root, SD_HARNESS)
    p = sb.install("apply", bundle)
    assert p.returncode == 5, p.stderr  # type: ignore[attr-defined]
    line = p.stderr.strip().splitlines()[-1]  # type: ignore[attr-defined]
    assert "the checks passed, but systemd: svc.service restarted" in line, line
    assert "journalctl -u svc.service" in line, line
    assert sb.wait_version() == "1.0.0 old"
    assert tree_listing(sb.root, SD_HARNESS) == before


def test_a_new_version_that_fails_is_reset_for_the_rollback(
    tmp_path: Path, keys: dict[str, Path], units_made: list[SystemdSandbox]
) -> None:
    """1.1.0 exits at once; with Restart=always it hits its start limit and is ``failed``:
    health names the exit, and the rollback's start of the old definition resets the
    failed unit first (systemd refuses to start it otherwise)."""
    new = {
        "flavour": "new",
        "extra": "Environment=CRASH_AFTER=0\nRestart=always\nRestartSec=0\n"
        "StartLimitBurst=3\nStartLimitIntervalSec=60\n",
    }
    specs = unit_product(tmp_path, new)
    (specs / "svc/product.yaml").write_text(
        (specs / "svc/product.yaml").read_text().replace("retries: 150", "retries: 40")
    )
    sb, bundle = unit_sandbox(specs, keys, tmp_path)
    units_made.append(sb)
    p = sb.install("apply", bundle)
    assert p.returncode == 5, p.stderr  # type: ignore[attr-defined]
    assert "systemd: svc.service" in p.stderr and "exited 1" in p.stderr, p.stderr  # type: ignore[attr-defined]
    assert sb.wait_version() == "1.0.0 old"
    assert sb.machine.show("svc.service", "ActiveState")["ActiveState"] == "active"
    # the limit failed the socket too (service-start-limit-hit): it listens again
    assert sb.machine.show("svc.socket", "ActiveState")["ActiveState"] == "active"


def test_operator_drop_in_kept_and_reported(
    tmp_path: Path, keys: dict[str, Path], units_made: list[SystemdSandbox]
) -> None:
    specs = unit_product(tmp_path, {"flavour": "new"})
    sb, bundle = unit_sandbox(specs, keys, tmp_path)
    units_made.append(sb)
    drop = sb.root / "etc/systemd/system/svc.service.d/operator.conf"
    drop.parent.mkdir()
    drop.write_text("[Service]\nEnvironment=FLAVOUR=operator\n")
    assert sb.machine.systemctl("daemon-reload").returncode == 0  # as systemctl edit does
    p = sb.install("plan", bundle)
    assert "svc: operator drop-ins kept: /etc/systemd/system/svc.service.d/operator.conf" in p.stdout, (
        p.stdout
    )  # type: ignore[attr-defined]
    p = sb.install("apply", bundle)
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    assert sb.wait_version("1.1.0 operator") == "1.1.0 operator"  # the drop-in still wins
    assert drop.read_text() == "[Service]\nEnvironment=FLAVOUR=operator\n"


def test_a_unit_that_does_not_stop_in_time_aborts_before_any_file(
    tmp_path: Path, keys: dict[str, Path], units_made: list[SystemdSandbox]
) -> None:
    """1.0.0 ignores SIGTERM (its unit waits 3 s before SIGKILL); stop_timeout is 1 s:
    the apply gives up before any file moved, exit 5, and 1.0.0 serves again."""
    specs = unit_product(tmp_path, {"flavour": "new"}, stop_timeout=1)
    u = specs / "svc/releases/1.0.0/root/etc/systemd/system/svc.service"
    text = u.read_text().replace(
        "Environment=FLAVOUR=old\n", "Environment=FLAVOUR=old\nEnvironment=IGNORE_TERM=1\n"
    )
    u.write_text(text.replace("TimeoutStopSec=30", "TimeoutStopSec=3"))  # systemd's own SIGKILL after 3 s
    sb, bundle = unit_sandbox(specs, keys, tmp_path)
    units_made.append(sb)
    before = tree_listing(sb.root, SD_HARNESS)
    t = time.monotonic()
    p = sb.install("apply", bundle)
    assert p.returncode == 5, p.stderr  # type: ignore[attr-defined]
    assert "did not stop within 1s" in p.stderr, p.stderr  # type: ignore[attr-defined]
    journal = (sb.root / "var/lib/jumpkit/svc/journal.jsonl").read_text()
    assert '"step":"swap-files"' not in journal
    assert tree_listing(sb.root, SD_HARNESS) == before
    assert sb.wait_version("1.0.0 old", tries=2000) == "1.0.0 old"
    assert time.monotonic() - t < 60


def test_machine_leaves_no_cgroup_or_process(tmp_path: Path) -> None:
    from builder.machine import Machine

    root = tmp_path / "r"
    root.mkdir()
    m = Machine(root).boot()
    pid, cgroup = m.pid, m.cgroup
    assert m.systemctl("is-system-running").stdout.strip() == "running"
    m.stop()
    assert not cgroup.exists()
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


def test_dependencies_order_start_and_stop_on_systemd(tmp_path: Path, keys: dict[str, Path]) -> None:
    """web needs api, api needs db: the apply stops web, api, db in that order and starts
    db, api, web (as systemd's own journal records them)."""
    from builder.machine import Machine

    specs = tmp_path / "specs"
    d = specs / "dep"
    (d / "jumps").mkdir(parents=True)
    (d / "product.yaml").write_text(
        "product: dep\nversion_file: opt/dep/VERSION\nservices:\n  backend: systemd\n  services:\n"
        "    - {name: web, depends_on: [api]}\n    - {name: api, depends_on: [db]}\n    - {name: db}\n"
    )
    for v in ("1.0.0", "1.1.0"):
        r = d / f"releases/{v}/root"
        (r / "opt/dep").mkdir(parents=True)
        (r / "opt/dep/VERSION").write_text(v + "\n")
        (r / "etc/systemd/system").mkdir(parents=True)
        for name in ("web", "api", "db"):
            (r / f"etc/systemd/system/{name}.service").write_text(SIDE)
    (d / "jumps/1.0.0-1.1.0.yaml").write_text("from: 1.0.0\nto: 1.1.0\ndate: 2026-12-01\n")
    p = build(
        "--specs", specs, "--from", "1.0.0", "--to", "1.1.0", "--key", keys["key"], "--out", tmp_path / "o"
    )
    assert p.returncode == 0, p.stderr
    root = tmp_path / "m/r"
    p = build("sandbox", "--specs", specs, "--version", "1.0.0", "--root", root, "--trust", keys["pub"])
    assert p.returncode == 0, p.stderr
    with Machine(root) as m:
        for name in ("db", "api", "web"):
            assert m.systemctl("start", f"{name}.service").returncode == 0
        sb = SystemdSandbox(root, 0, m)
        p = sb.install("apply", tmp_path / "o/dep-1.0.0-to-1.1.0.zip")  # type: ignore[assignment]
        assert p.returncode == 0, p.stderr
        log = m.run("journalctl", "--no-pager", "-o", "cat", "--since", "-1h").stdout.splitlines()
        after = log[max(i for i, line in enumerate(log) if line.startswith("Starting jumpkit-hold-")) :]
        stopped = [line.split()[1].removesuffix(".service.") for line in after if line.startswith("Stopped ")]
        started = [line.split()[1].removesuffix(".service.") for line in after if line.startswith("Started ")]
        assert stopped == ["web", "api", "db"] and started == ["db", "api", "web"], after


def test_test_jumps_runs_its_cells_under_systemd(frozen: Path, tmp_path: Path) -> None:
    """``test-jumps`` of the systemd product boots a real systemd per case; every cell of
    every jump and of the chain passes, the frozen installer driving systemd; a broken
    combination is refused in one line."""
    junit = tmp_path / "junit.xml"
    p = build("test-jumps", "--specs", SYSTEMD_SPECS, "--all", "--backend", "systemd", "--installer", frozen,
              "--junit", junit, "--json")  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["ok"] and len(doc["cases"]) == 4, doc
    for c in doc["cases"]:
        assert set(c["cells"].values()) == {"pass"}, c
    p = build("test-jumps", "--specs", SYSTEMD_SPECS, "--backend", "supervisord", "--installer", frozen)
    assert p.returncode == 2 and "demo-manager's services run under systemd" in p.stderr, p.stderr
    p = build("test-jumps", "--backend", "systemd", "--installer", frozen)
    assert p.returncode == 2 and "services run under supervisord" in p.stderr, p.stderr


NOTIFY_APP = APP.replace(
    "s.serve_forever(poll_interval=0.05)",
    "time.sleep(0.6)\n"
    "n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "n.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
    "s.serve_forever(poll_interval=0.05)",
)
assert NOTIFY_APP != APP


def test_a_notify_unit_is_started_when_it_says_ready(
    tmp_path: Path, keys: dict[str, Path], units_made: list[SystemdSandbox]
) -> None:
    """1.1.0 is Type=notify and says READY=1 0.6 s after its start: the start waits for it,
    so the first health probe already passes (a simple unit's start returns at once)."""
    specs = unit_product(tmp_path, {"flavour": "new", "extra": "Type=notify\n"})
    app = specs / "svc/releases/1.1.0/root/opt/svc/app.py"
    app.write_text(NOTIFY_APP)
    sb, bundle = unit_sandbox(specs, keys, tmp_path)
    units_made.append(sb)
    p = sb.install("apply", bundle)
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    status = json.loads(sb.install("status", "--json").stdout)  # type: ignore[attr-defined]
    phases = status["outage_phases"]
    start = next(v for k, v in phases.items() if "start" in k)
    assert start >= 0.6, phases  # the start returned once the service said it was ready
    assert phases["health"] < 0.3, phases  # its first probe passed


def test_report_holds_journald_lines_of_a_failed_start(
    tmp_path: Path, keys: dict[str, Path], units_made: list[SystemdSandbox]
) -> None:
    """A new version that fails: the support report's services.txt holds what the unit
    wrote to journald (read through the manager's journalctl)."""
    import tarfile

    new = {
        "flavour": "new",
        "extra": "ExecStartPre=/bin/echo svc-1.1.0-says-hello\nEnvironment=CRASH_AFTER=0\n",
    }
    specs = unit_product(tmp_path, new)
    (specs / "svc/product.yaml").write_text(
        (specs / "svc/product.yaml").read_text().replace("retries: 150", "retries: 20")
    )
    sb, bundle = unit_sandbox(specs, keys, tmp_path)
    units_made.append(sb)
    assert sb.install("apply", bundle).returncode == 5  # type: ignore[attr-defined]
    out = tmp_path / "report.tar.gz"
    p = sb.install("report", "--out", out)
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    with tarfile.open(out) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("services.txt"))
        text = t.extractfile(member).read().decode()  # type: ignore[union-attr]
    assert "-- journald:" in text and "svc-1.1.0-says-hello" in text, text


def test_a_jump_that_changes_the_socket_restarts_it_and_says_so(
    tmp_path: Path, keys: dict[str, Path], units_made: list[SystemdSandbox]
) -> None:
    """1.1.0 changes svc.socket itself: plan says its connections are refused for the
    restart; the apply restarts the socket with its new definition, the rollback with the
    old one, and both end with the socket listening."""
    specs = unit_product(tmp_path, {"flavour": "new"})
    sock = specs / "svc/releases/1.1.0/root/etc/systemd/system/svc.socket"
    sock.write_text(sock.read_text().replace("[Socket]\n", "[Socket]\nBacklog=77\n"))
    sb, bundle = unit_sandbox(specs, keys, tmp_path)
    units_made.append(sb)
    p = sb.install("plan", bundle)
    assert "svc: socket svc.socket changes: connections are refused for the restart" in p.stdout, p.stdout  # type: ignore[attr-defined]
    p = sb.install("apply", bundle)
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    assert "stopping svc.socket: it changes" in p.stderr  # type: ignore[attr-defined]
    assert sb.machine.show("svc.socket", "Backlog", "ActiveState") == {
        "Backlog": "77",
        "ActiveState": "active",
    }
    assert sb.wait_version("1.1.0 new") == "1.1.0 new"
    p = sb.install("rollback")
    assert p.returncode == 0, p.stderr  # type: ignore[attr-defined]
    after = sb.machine.show("svc.socket", "Backlog", "ActiveState")
    assert after["Backlog"] != "77" and after["ActiveState"] == "active", after  # the old definition
    assert sb.wait_version() == "1.0.0 old"


def test_start_clears_a_start_limit_that_failed_the_socket(
    sd_sandbox: Callable[..., SystemdSandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starts in quick succession (an apply soon after a rollback, a crash loop) hit the
    unit's start limit, and systemd then fails its socket too (service-start-limit-hit):
    the backend's start clears both and the socket listens again, as it did before."""
    from installer.format import Service
    from installer.services import Systemd

    sb = sd_sandbox()
    for unit in ("demo-manager.socket",) * 3 + ("demo-manager.service",) * 8:  # the socket's starts count too
        sb.machine.systemctl("restart", unit)
    sock = sb.machine.show("demo-manager.socket", "ActiveState", "Result")
    assert sock == {"ActiveState": "failed", "Result": "service-start-limit-hit"}, sock
    monkeypatch.setenv("PATH", sb.env()["PATH"])
    Systemd(sb.root).start(Service(name="demo-manager", socket="demo-manager.socket"))
    assert sb.machine.show("demo-manager.socket", "ActiveState")["ActiveState"] == "active"
    assert sb.machine.show("demo-manager.service", "ActiveState")["ActiveState"] == "active"
    assert sb.wait_version() == "4.0.1"

"""Service backends: systemd units rendered by the builder (the backend itself is tested
against a real systemd in test_systemd.py), command, and a supervised service that will
not stop."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

from tests.helpers import REPO, SPECS, Sandbox, build, install, tree_hash


def svc_product(tmp: Path, backend: str, services_yaml: str, jump_extra: str = "") -> Path:
    specs = tmp / "specs"
    d = specs / "svc"
    (d / "jumps").mkdir(parents=True)
    (d / "product.yaml").write_text(
        f"product: svc\nversion_file: opt/svc/VERSION\nservices:\n  backend: {backend}\n"
        + textwrap.indent(services_yaml, "  ")
    )
    for v in ("1.0.0", "1.1.0"):
        (d / f"releases/{v}/root/opt/svc").mkdir(parents=True)
        (d / f"releases/{v}/root/opt/svc/VERSION").write_text(v + "\n")
    (d / "jumps/1.0.0-1.1.0.yaml").write_text("from: 1.0.0\nto: 1.1.0\n" + jump_extra)
    return specs


def build_and_sandbox(specs: Path, keys: dict[str, Path], tmp: Path) -> tuple[Path, Path]:
    p = build(
        "--specs", specs, "--from", "1.0.0", "--to", "1.1.0", "--key", keys["key"], "--out", tmp / "dist"
    )
    assert p.returncode == 0, p.stderr
    root = tmp / "root"
    p = build("sandbox", "--specs", specs, "--version", "1.0.0", "--root", root, "--trust", keys["pub"])
    assert p.returncode == 0, p.stderr
    return root, tmp / "dist/svc-1.0.0-to-1.1.0.zip"


SYSTEMD_SERVICES = """services:
  - name: api
    stop_timeout: 20
  - name: worker
"""
SYSTEMD_JUMP = """units:
  worker:
    exec_start: ["/bin/sleep", "infinity"]
    exec_reload: ["/bin/kill", "-HUP", "$MAINPID"]
    description: svc background worker
    user: svc
    environment: {LANG: C.UTF-8}
    wants: [network-online.target]
    restart: always
    restart_sec: 0.5
    socket: {listen_stream: ["127.0.0.1:7001"], backlog: 512}
"""


def test_rendered_unit_passes_systemd_analyze(tmp_path: Path, keys: dict[str, Path]) -> None:
    specs = svc_product(tmp_path, "systemd", SYSTEMD_SERVICES, SYSTEMD_JUMP)
    _, bundle = build_and_sandbox(specs, keys, tmp_path)
    with zipfile.ZipFile(bundle) as z:
        unit = z.read("payload/etc/systemd/system/worker.service").decode()
        sock = z.read("payload/etc/systemd/system/worker.socket").decode()
        manifest = json.loads(z.read("manifest.json"))
    assert "ExecStart=/bin/sleep infinity" in unit and "TimeoutStopSec=30" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and "RestartSec=0.5" in unit
    assert "Wants=network-online.target" in unit and "Requires=worker.socket" in unit
    assert "ListenStream=127.0.0.1:7001" in sock and "Backlog=512" in sock
    worker = manifest["services"]["services"][1]
    assert [s["added"] for s in manifest["services"]["services"]] == [False, True]
    assert worker["socket"] == "worker.socket"
    for name, text in (("worker.service", unit), ("worker.socket", sock)):
        (tmp_path / name).write_text(text)
    p = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(tmp_path / "worker.service"),
            str(tmp_path / "worker.socket"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr


def test_units_spec_refuses_what_systemd_would(tmp_path: Path, keys: dict[str, Path]) -> None:
    """A relative ExecStart (systemd runs no shell), a dependency without its unit suffix:
    refused at build and by lint, naming the field."""
    bad = SYSTEMD_JUMP.replace('["/bin/sleep", "infinity"]', '["sleep", "infinity"]').replace(
        "network-online.target", "network-online"
    )
    specs = svc_product(tmp_path, "systemd", SYSTEMD_SERVICES, bad)
    p = build("lint", "--specs", specs)
    assert p.returncode != 0
    assert "units.worker.exec_start" in p.stdout + p.stderr and "absolute path" in p.stdout + p.stderr
    assert "units.worker.wants" in p.stdout + p.stderr


def test_command_backend(tmp_path: Path, keys: dict[str, Path]) -> None:
    log = tmp_path / "calls"
    flag = tmp_path / "running"
    flag.touch()
    sh = "/bin/sh"
    services = textwrap.dedent(f"""\
        services:
          - name: app
            start: ["{sh}", "-c", "echo start >> {log}; touch {flag}"]
            stop: ["{sh}", "-c", "echo stop >> {log}; rm -f {flag}"]
            status: ["test", "-f", "{flag}"]
        """)
    specs = svc_product(tmp_path, "command", services)
    root, bundle = build_and_sandbox(specs, keys, tmp_path)
    p = install("--root", root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert log.read_text().split() == ["stop", "start"] and flag.exists()


def test_service_that_will_not_stop_aborts_before_files(
    sandbox: Callable[..., Sandbox], keys: dict[str, Path], tmp_path: Path
) -> None:
    """stop_timeout 1s and a service that ignores its stop signal: the apply stops before
    touching any file, the service keeps running the old version, exit 5."""
    import shutil

    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs, symlinks=True)
    prod = specs / "demo-manager/product.yaml"
    prod.write_text(prod.read_text().replace("stop_timeout: 10", "stop_timeout: 1"))
    out = tmp_path / "dist"
    assert (
        build(
            "--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", out
        ).returncode
        == 0
    )
    sb = sandbox(supervise=False, specs=specs)
    conf = sb.root / "etc/supervisord.conf"
    conf.write_text(
        conf.read_text()
        .replace("stopsignal=TERM", "stopsignal=WINCH")
        .replace("stopwaitsecs=5", "stopwaitsecs=3")
    )
    sb.start_supervisord()
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "apply", out / "demo-manager-4.0.1-to-4.1.1.zip")
    assert p.returncode == 5, p.stderr
    assert "did not stop within 1s" in p.stderr
    assert tree_hash(sb.root) == before
    journal = (sb.root / "var/lib/jumpkit/demo-manager/journal.jsonl").read_text()
    assert '"step":"swap-files"' not in journal
    assert sb.wait_version("4.0.1") == "4.0.1"


def test_outage_recorded_below_health_timeout(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox()
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    st = json.loads(install("--root", sb.root, "status", "--json").stdout)
    # the demo's health budget: 500 tries x 20 ms interval
    assert 0 < st["outage_seconds"] < 10


def test_unhealthy_manager_refused_unless_forced(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox()
    ini = sb.root / "etc/demo-manager/manager.ini"
    # the operator moved the port but did not restart: the health check cannot reach 4.0.1
    ini.write_text(ini.read_text().replace(f"port = {sb.port}", "port = 1"))
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 4
    assert "unhealthy now" in p.stderr and "--force" in p.stderr
    assert tree_hash(sb.root) == before


def test_helper_scripts_are_executable() -> None:
    for script in ("scripts/setup", "scripts/test", "scripts/demo", ".ci/run"):
        assert (REPO / script).stat().st_mode & stat.S_IXUSR, script


def test_new_directory_moves_in_with_one_rename(tmp_path: Path, keys: dict[str, Path]) -> None:
    specs = svc_product(tmp_path, "none", "services: []\n")
    new = specs / "svc/releases/1.1.0/root/opt/svc/plugins"
    (new / "a").mkdir(parents=True)
    for i in range(50):
        (new / "a" / f"p{i}.py").write_text(f"# plugin {i}\n")
    (new / "b.py").write_text("# b\n")
    root, bundle = build_and_sandbox(specs, keys, tmp_path)
    before = tree_hash(root)
    report = json.loads(install("--root", root, "plan", bundle, "--json").stdout)
    assert [f["path"] for f in report["files"]] == ["opt/svc/VERSION", "opt/svc/plugins"]
    assert install("--root", root, "apply", bundle).returncode == 0
    assert (root / "opt/svc/plugins/a/p49.py").read_text() == "# plugin 49\n"
    assert install("--root", root, "rollback").returncode == 0
    assert not (root / "opt/svc/plugins").exists() and tree_hash(root) == before


DEPENDENT_SERVICES = """services:
  - name: web
    depends_on: [api]
  - name: api
    depends_on: [db]
  - name: db
"""


def test_dependency_cycle_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    specs = svc_product(
        tmp_path,
        "systemd",
        DEPENDENT_SERVICES.replace("  - name: db\n", "  - name: db\n    depends_on: [web]\n"),
    )
    p = build(
        "--specs", specs, "--from", "1.0.0", "--to", "1.1.0", "--key", keys["key"], "--out", tmp_path / "o"
    )
    assert p.returncode == 2 and "cycle" in p.stderr


def test_running_binary_replaced_by_rename(tmp_path: Path, keys: dict[str, Path]) -> None:
    """A process keeps running from the old inode while the swap renames its binary away;
    the next start runs the new binary (DRP's self-replacement)."""
    import hashlib
    import shutil as sh

    specs = svc_product(tmp_path, "none", "services: []\n")
    for v, tail in (("1.0.0", b""), ("1.1.0", b"\0jumpkit-1.1.0")):
        app = specs / f"svc/releases/{v}/root/opt/svc/bin/app"
        app.parent.mkdir(parents=True)
        sh.copyfile("/bin/sleep", app)
        with open(app, "ab") as f:
            f.write(tail)
        app.chmod(0o755)
    (specs / "svc/jumps/1.0.0-1.1.0.yaml").write_text(
        "from: 1.0.0\nto: 1.1.0\nfiles:\n  modes: {'opt/svc/bin/*': '0755'}\n"
    )
    root, bundle = build_and_sandbox(specs, keys, tmp_path)
    old = subprocess.Popen([str(root / "opt/svc/bin/app"), "300"])
    try:
        p = install("--root", root, "apply", bundle)
        assert p.returncode == 0, p.stderr
        assert old.poll() is None  # still running from the old inode
        assert "/var/lib/jumpkit/svc/backup/" in os.readlink(f"/proc/{old.pid}/exe")
        new = subprocess.Popen([str(root / "opt/svc/bin/app"), "300"])
        try:
            exe = Path(os.readlink(f"/proc/{new.pid}/exe"))
            assert exe == root / "opt/svc/bin/app"
            assert (
                hashlib.sha256(exe.read_bytes()).digest()
                == hashlib.sha256((specs / "svc/releases/1.1.0/root/opt/svc/bin/app").read_bytes()).digest()
            )
        finally:
            new.kill()
            new.wait()
    finally:
        old.kill()
        old.wait()


SLOW_STOP = """\
import signal, sys, time
def term(*_):
    time.sleep(0.3)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(sys.argv[1], "w").close()
while True:
    time.sleep(60)
"""


def test_supervisord_stop_waits_on_the_exit_not_on_polling() -> None:
    """A service that takes 0.3 s to exit: the stop returns once supervisord has reaped it,
    woken by the process's pidfd, with a handful of state queries (one each 20 ms slice at
    most). Polling supervisord every 2 ms, as before, made ~120 of them and noticed the exit
    up to a poll late, inside the outage window."""
    import sys
    import time

    from installer.format import Service
    from installer.services import Supervisord
    from tests.helpers import short_tmp, terminate

    d = short_tmp("jk-sv-")
    (d / "slow.py").write_text(SLOW_STOP)
    (d / "supervisord.conf").write_text(
        textwrap.dedent(f"""\
        [unix_http_server]
        file={d}/s.sock
        [supervisord]
        pidfile={d}/s.pid
        logfile={d}/s.log
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        [program:slow]
        command={sys.executable} {d}/slow.py {d}/ready
        startsecs=0
        stopwaitsecs=10
        """)
    )
    subprocess.run(
        [str(Path(sys.executable).parent / "supervisord"), "-c", str(d / "supervisord.conf")], check=True
    )
    try:
        sm = Supervisord(d / "s.sock")
        svc = Service(name="slow", stop_timeout=10)
        for _ in range(500):
            if (d / "ready").exists():  # its TERM handler is in place
                break
            time.sleep(0.02)
        calls: list[str] = []
        real = sm._call

        def counted(what: str, name: str, *args: object) -> object:
            calls.append(what)
            return real(what, name, *args)

        sm._call = counted  # type: ignore[method-assign]
        t = time.monotonic()
        sm.stop(svc)
        took = time.monotonic() - t
        assert not sm.is_running(svc)
        assert took >= 0.3
        queries = calls.count("getProcessInfo")
        assert queries <= took / 0.02 + 4, (queries, took)
        sm.start(svc)
        assert sm.is_running(svc)
    finally:
        terminate(int((d / "s.pid").read_text()))


def test_exit_watch(tmp_path: Path) -> None:
    """A pidfd watch wakes when its process exits; no watch for a pid that is gone or none."""
    import sys
    import time

    from installer.commands import ExitWatch

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    w = ExitWatch.of(p.pid)
    assert w is not None
    try:
        assert not w.wait(0)
        t = time.monotonic()
        assert w.wait(5)
        assert time.monotonic() - t < 2
        assert w.wait(0)  # stays exited
    finally:
        w.close()
        p.wait()
    assert ExitWatch.of(p.pid) is None  # reaped: no such process
    assert ExitWatch.of(0) is None and ExitWatch.of(None) is None and ExitWatch.of("12") is None


def test_a_failed_health_check_says_the_service_exited(
    sandbox: Callable[..., Sandbox], keys: dict[str, Path], tmp_path: Path
) -> None:
    """#35 item 16: the new version exits 1 at once; health fails and the line says what
    supervisord saw (exited 1 after ...s) and where its log is, not only 'connection refused'."""
    import shutil

    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs, symlinks=True)
    prod = specs / "demo-manager/product.yaml"
    prod.write_text(prod.read_text().replace("retries: 500", "retries: 40"))
    server = specs / "demo-manager/releases/4.1.1/root/opt/demo-manager/lib/demo_manager/server.py"
    server.write_text(
        server.read_text().replace("def main(argv):", "def main(argv):\n    raise SystemExit(1)", 1)
    )
    out = tmp_path / "dist"
    p = build("--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", out)
    assert p.returncode == 0, p.stderr
    sb = sandbox(specs=specs)
    p = install("--root", sb.root, "apply", out / "demo-manager-4.0.1-to-4.1.1.zip")
    assert p.returncode == 5, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "supervisord: demo-manager is EXITED: exited 1 after " in line, line
    assert f"its log: {sb.root.resolve()}/var/log/demo-manager.log" in line, line
    assert sb.wait_version("4.0.1") == "4.0.1"

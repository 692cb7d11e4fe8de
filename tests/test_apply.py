"""End-to-end apply on a sandbox manager with a real supervisord-run service."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, Sandbox, install, tree_hash


def status(sb: Sandbox) -> dict[str, object]:
    p = install("--root", sb.root, "status", "--json")
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


def test_apply_upgrades_running_manager(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox()
    assert sb.version() == "4.0.1"
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert sb.version() == "4.1.1"
    st = status(sb)
    assert st["status"] == "finished"
    assert isinstance(st["outage_seconds"], float) and 0 < st["outage_seconds"] < 10
    phases = st["outage_phases"]  # the window by step, stop to healthy (issue 23)
    assert isinstance(phases, dict) and next(iter(phases)) == "stop-services" and list(phases)[-1] == "health"
    assert {"swap-files", "migrate", "start-services"} <= set(phases)
    assert abs(sum(phases.values()) - st["outage_seconds"]) < 0.05, (phases, st["outage_seconds"])
    assert (sb.root / "opt/demo-manager/VERSION").read_text() == "4.1.1\n"
    assert not (sb.root / "opt/demo-manager/lib/demo_manager/legacy_tcp.py").exists()
    ini = (sb.root / "etc/demo-manager/manager.ini").read_text()
    assert "http://10.0.0.11:7000?role=peer" in ini and f"port = {sb.port}" in ini


def test_rollback_after_finished_restores_exact_tree(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox()
    before = tree_hash(sb.root)
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    after = tree_hash(sb.root)
    p = install("--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    assert tree_hash(sb.root) == before
    assert sb.wait_version("4.0.1") == "4.0.1"
    assert status(sb)["status"] == "rolled-back"
    # a rolled-back bundle is not re-run by a plain apply (a second outage for the same
    # failure): the rollback dropped its staging, and apply says to name the bundle
    assert not list((sb.root / "var/lib/jumpkit/demo-manager/staging").iterdir())
    p = install("--root", sb.root, "apply")
    assert p.returncode == 2 and "name the bundle" in p.stderr, p.stderr
    assert tree_hash(sb.root) == before
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    assert tree_hash(sb.root) == after
    assert sb.version() == "4.1.1"
    # after unstage the backup is gone and rollback says so
    assert install("--root", sb.root, "unstage").returncode == 0
    p = install("--root", sb.root, "rollback")
    assert p.returncode == 4 and "backup" in p.stderr


def test_wrong_from_version_refused_nothing_changed(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox("3.4.2", supervise=False)
    before = tree_hash(sb.root, exclude=())
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 4
    first = p.stderr.strip().splitlines()[0]
    assert first.startswith("bundle-install: pre-flight failed: installed version is 3.4.2;")
    # a refused run creates nothing, not even the state dir and its lock
    assert tree_hash(sb.root, exclude=()) == before
    assert not (sb.root / "var/lib/jumpkit").exists()


def test_to_version_installed_is_nothing_to_do(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    """dnf's "Nothing to do": re-running an apply (Ansible, yum) exits 0, one line, no writes."""
    sb = sandbox("4.1.1", supervise=False)
    before = tree_hash(sb.root, exclude=())
    p = install("--root", sb.root, "apply", bundle, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["summary"] == "nothing to do: demo-manager is already at 4.1.1"
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 0 and p.stdout.strip() == "nothing to do: demo-manager is already at 4.1.1"
    assert tree_hash(sb.root, exclude=()) == before


def test_drift_refused_then_accepted(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    """A file the jump replaces whole (a patched one cannot be: tests/test_delta.py)."""
    sb = sandbox()
    server = sb.root / "opt/demo-manager/lib/demo_manager/__init__.py"
    server.write_text(server.read_text() + "# hotfix\n")
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 4
    assert "__init__.py: modified" in p.stderr
    assert tree_hash(sb.root) == before
    p = install("--root", sb.root, "--accept-drift", "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert sb.version() == "4.1.1"
    assert install("--root", sb.root, "rollback").returncode == 0
    assert "# hotfix" in server.read_text()
    assert tree_hash(sb.root) == before


def test_lock_held_exits_7(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox(supervise=False)
    state = sb.root / "var/lib/jumpkit/demo-manager"
    state.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                f"fd = os.open({str(state / 'lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
                "print('locked', flush=True); time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = tree_hash(sb.root)
        p = install("--root", sb.root, "apply", bundle)
        assert p.returncode == 7
        assert f"pid {holder.pid}" in p.stderr
        assert tree_hash(sb.root) == before
    finally:
        holder.kill()
        holder.wait()


def test_plan_changes_nothing(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox()
    before = tree_hash(sb.root, exclude=("var/run", "var/log"))
    p = install("--root", sb.root, "plan", bundle, "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    steps = [s["step"] for s in report["steps"]]
    assert steps[:4] == ["verify", "stage", "backup-db", "stop-services"] and steps[-2:] == [
        "health",
        "commit",
    ]
    actions = {f["path"]: f["action"] for f in report["files"]}
    assert actions["opt/demo-manager/lib/demo_manager/legacy_tcp.py"] == "remove"
    assert actions["opt/demo-manager/lib/demo_manager/metrics.py"] == "add"
    assert actions["opt/demo-manager/VERSION"] == "replace"
    assert report["preflight"]["ok"] is True, report["preflight"]
    assert tree_hash(sb.root, exclude=("var/run", "var/log")) == before


def test_stage_then_apply_staged(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox()
    p = install("--root", sb.root, "stage", bundle)
    assert p.returncode == 0, p.stderr
    assert status(sb)["status"] == "staged"
    assert sb.version() == "4.0.1"
    p = install("--root", sb.root, "apply")
    assert p.returncode == 0, p.stderr
    assert sb.version() == "4.1.1"


def test_failed_health_check_rolls_back(
    sandbox: Callable[..., Sandbox], keys: dict[str, Path], tmp_path: Path
) -> None:
    """A 4.1.1 that cannot start: the apply rolls back by itself and 4.0.1 answers again."""
    specs = tmp_path / "specs"
    shutil.copytree(REPO / "specs", specs, symlinks=True)
    cluster = specs / "demo-manager/releases/4.1.1/root/opt/demo-manager/lib/demo_manager/cluster.py"
    cluster.write_text(cluster.read_text() + "\nraise SystemExit('broken release')\n")
    from tests.helpers import build

    out = tmp_path / "dist"
    assert (
        build(
            "--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", out
        ).returncode
        == 0
    )
    sb = sandbox()
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "apply", out / "demo-manager-4.0.1-to-4.1.1.zip")
    assert p.returncode == 5, p.stderr
    assert "health check 'version' failed" in p.stderr
    assert sb.wait_version("4.0.1") == "4.0.1"
    assert tree_hash(sb.root) == before
    st = status(sb)
    assert st["status"] == "rolled-back" and "version" in str(st["summary"])


def test_the_steps_run_with_the_cyclic_collector_paused(
    sandbox: Callable[..., Sandbox], bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full collection of a large heap took 82-87 ms: none may start inside the outage
    window. Every step (in-process apply) sees the collector off; it is on again after."""
    import gc

    from installer import steps
    from installer.engine import Engine
    from installer.options import Options

    seen: dict[str, bool] = {}
    for cls in (steps.BackupDatabases, steps.StopServices, steps.SwapGroup, steps.Migrate, steps.Health):
        real = cls.run

        def spy(self: Any, ctx: Any, real: Any = real) -> None:
            seen[self.name] = gc.isenabled()
            real(self, ctx)

        monkeypatch.setattr(cls, "run", spy)
    sb = sandbox()
    assert gc.isenabled()
    doc = Engine(Options(root=sb.root)).apply([bundle])
    assert doc.status == "finished" and gc.isenabled()
    assert set(seen) >= {"backup-db", "stop-services", "swap-files", "migrate", "health"}
    assert not any(seen.values()), seen


def test_log_lines_of_the_window_reach_the_caller_once_the_services_start(
    sandbox: Callable[..., Sandbox], bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blocked terminal or a full pipe must not lengthen the outage: lines logged between
    the stop and the start are echoed after the start, all of them, in order."""
    from installer import steps
    from installer.engine import Engine
    from installer.options import Options

    printed: list[str] = []
    at_start: list[str] = []
    real = steps.StartServices.run

    def spy(self: Any, ctx: Any) -> None:
        at_start.extend(printed)
        real(self, ctx)

    monkeypatch.setattr(steps.StartServices, "run", spy)
    sb = sandbox()
    doc = Engine(Options(root=sb.root), log=printed.append).apply([bundle])
    assert doc.status == "finished"
    assert any(line.startswith("stopping ") for line in at_start), at_start
    assert not any(line.startswith(("swapping ", "database main: at")) for line in at_start), at_start
    assert any(line.startswith("swapping ") for line in printed)
    logged = [line.split(" ", 1)[1] for line in doc.log]  # the run's own lines, time-stamped
    assert logged and printed[printed.index(logged[0]) :][: len(logged)] == logged  # all, in order


def test_a_step_with_nothing_to_do_writes_no_record_of_its_own(
    sandbox: Callable[..., Sandbox], bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo jump has no hooks: hooks-pre and hooks-post still begin and end in the
    journal, but their records ride with the next step's begin, so the window between the
    stop and the start holds four journal writes (the begins of swap-files, migrate,
    swap-configs and start-services), not six."""
    from installer.engine import Engine
    from installer.options import Options
    from tests.helpers import journal_writes

    writes = journal_writes(monkeypatch)

    sb = sandbox()
    doc = Engine(Options(root=sb.root)).apply([bundle])
    assert doc.status == "finished"
    first = next(i for i, w in enumerate(writes) if "Done:stop-services" in w)
    last = next(i for i, w in enumerate(writes) if "Begin:start-services" in w)
    window = writes[first : last + 1]
    assert window[0] == ["Done:stop-services", "Begin:hooks-pre", "Done:hooks-pre", "Begin:swap-files"]
    assert window[-1] == ["Done:swap-configs", "Begin:hooks-post", "Done:hooks-post", "Begin:start-services"]
    assert len(window) == 4, window
    lines = (sb.root / "var/lib/jumpkit/demo-manager/journal.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    order = [(e["event"], e.get("step")) for e in events]
    assert order.index(("begin", "hooks-pre")) < order.index(("done", "hooks-pre"))
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)  # times in order still


def test_status_after_a_ctrl_c_during_staging_says_the_run_changed_nothing(
    sandbox: Callable[..., Sandbox], bundle: Path
) -> None:
    """status.json keeps describing the last run that changed something (the rollback);
    a later apply stopped by Ctrl-C while it staged is named under it, not hidden, and the
    next run's document replaces both (issue 35, item 17)."""
    sb = sandbox()
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    assert install("--root", sb.root, "rollback").returncode == 0
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": "stage:member@2=int"})
    assert p.returncode == 5, p.stderr
    assert tree_hash(sb.root) == before
    st = status(sb)
    assert st["status"] == "rolled-back", st
    last = st["extra"]["last_attempt"]  # type: ignore[index]
    assert last["bundle"] == "demo-manager-4.0.1-to-4.1.1", last
    assert last["ended"].startswith("interrupted by SIGINT before it changed anything"), last
    text = install("--root", sb.root, "status").stdout
    assert "since:   a run of demo-manager-4.0.1-to-4.1.1 at " in text, text
    assert "was interrupted by SIGINT before it changed anything" in text, text
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    assert "last_attempt" not in status(sb).get("extra", {})  # type: ignore[operator]


def test_nothing_to_do_is_exit_0_for_every_command(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    """One rule (issue 36, item 5): apply, plan and verify of a bundle whose to-version is
    installed, rollback after a rollback, resume with nothing unfinished: one line, exit 0."""
    sb = sandbox()
    assert install("--root", sb.root, "apply", bundle).returncode == 0
    for argv, said in (
        (["apply", bundle], "nothing to do: demo-manager is already at 4.1.1"),
        (["plan", bundle], "nothing to do: demo-manager is already at 4.1.1"),
        (["resume"], "nothing to resume: the last apply finished"),
    ):
        p = install("--root", sb.root, *argv)
        assert (p.returncode, p.stdout.strip()) == (0, said), (argv, p.stdout, p.stderr)
    p = install("--root", sb.root, "verify", bundle)
    assert p.returncode == 0 and "nothing to do: demo-manager is already at 4.1.1" in p.stderr, p.stderr
    assert install("--root", sb.root, "rollback").returncode == 0
    for argv, said in (
        (["rollback"], "nothing to do: the last apply was already rolled back"),
        (["resume"], "nothing to resume: the last apply was rolled back"),
    ):
        p = install("--root", sb.root, *argv)
        assert (p.returncode, p.stdout.strip()) == (0, said), (argv, p.stdout, p.stderr)
    doc = json.loads(install("--root", sb.root, "rollback", "--json").stdout)
    assert doc["extra"]["nothing_to_do"] is True


def test_plan_exits_4_when_pre_flight_would_fail(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    """``plan && apply`` must stop where apply would refuse (issue 36, item 3); the failed
    health check's body stays on its one line (item 11)."""
    sb = sandbox()
    sb.stop()  # the service is down: pre-flight finds the manager unhealthy
    p = install("--root", sb.root, "plan", bundle)
    assert p.returncode == 4, p.stdout + p.stderr
    assert "pre-flight: WOULD FAIL" in p.stdout and "apply would refuse (exit 4)" in p.stderr
    p = install("--root", sb.root, "plan", bundle, "--json")
    assert p.returncode == 4 and json.loads(p.stdout)["preflight"]["ok"] is False
    sb.start_supervisord()
    (sb.root / "opt/demo-manager/VERSION").write_text("4.0.1\nand more\n")  # a body that is not the version
    p = install("--root", sb.root, "plan", bundle)
    lines = [ln for ln in p.stdout.splitlines() if "body lacks" in ln]
    assert len(lines) == 1 and lines[0].rstrip().endswith("--force proceeds anyway"), p.stdout

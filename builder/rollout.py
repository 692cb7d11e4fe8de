"""Fleet rollout: a bundle applied to a cluster of managers one host at a time, driven by
Ansible (templates/ansible/rollout.yml through ansible-runner), not a home-made SSH loop.

The controller verifies the bundle's signature and reads its installer's sha256 from the
manifest, then runs the playbook's phases, deciding between runs from what each host
reported. Each phase is one task per host (the ``jumpkit`` module, library/jumpkit.py,
runs that phase's installer calls in order and stops at the first failure):

1. prepare (every host at once): copy the bundle, take the installer out of it (checked
   against that sha256), ask each host whether it leads (the product's leader probe, with
   its status), stage. Nothing stops before every host has staged; a host that cannot
   stage stops the rollout with nothing stopped.
2. pre (leader): pin the leader, run the jump's cluster-pre hooks (one installer start).
3. roll (host by host, leader last by default, ``serial`` at a time): apply, then node hooks
   and the member health gate (one start). The first failure ends the run: that host
   rolled itself back, hosts already done stay upgraded, the rest stay staged.
4. post (leader, only when every host is done): cluster-post hooks, then unpin (also
   after a failed cluster-post). pre, roll and post are one ansible-playbook run.
5. after a failure in pre or roll: unpin, and status (every host's version and upgrade
   status) in one run; on success the probe and the applies have reported both.

Measured on 3 hosts (scripts/bench/rollout.py): docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from builder.errors import BuildError, RolloutError
from builder.resources import require_fleet, templates
from installer.archive import open_bundle, verify_bundle
from installer.errors import UsageError
from installer.format import INSTALLER_MEMBER, Manifest
from installer.signing import load_trusted_keys

Order = Literal["leader-last", "leader-first"]


@dataclass
class Host:
    """What the rollout knows of one host; updated from Ansible's events."""

    name: str
    state: str = "waiting"
    """The live state shown in the table (copying, staging, applying, upgraded, ...)."""
    before: str | None = None
    after: str | None = None
    leader: bool | None = None
    order: int | None = None
    copied: str | None = None
    """``copied`` or ``cached`` (the checksum already matched)."""
    staged_at: float | None = None
    apply_start: float | None = None
    apply_end: float | None = None
    outage_seconds: float | None = None
    status: str | None = None
    """The host's own upgrade status (bundle-install status) after the rollout."""
    result: str = "untouched"
    error: str | None = None
    task_seconds: dict[str, float] = field(default_factory=dict)
    """Each task's time on this host as Ansible measured it (ssh, module, the installer)."""


@dataclass
class RolloutReport:
    """The outcome: every host's versions and result, the order, where the logs are."""

    bundle: str
    from_version: str
    to_version: str
    hosts: dict[str, Host] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    leader: str | None = None
    ok: bool = False
    summary: str = ""
    seconds: float = 0.0
    artifacts: str = ""
    check: bool = False
    phases: list[dict[str, Any]] = field(default_factory=list)
    """Each ansible-playbook run: its tags and wall time (start-up, every host, every task)."""

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON document."""
        out = asdict(self)
        out["hosts"] = [asdict(h) for h in self.hosts.values()]
        return out

    def lines(self) -> list[str]:
        """One line per host: where it is and why."""
        return [
            f"{h.name}: {h.result}"
            + (f", on {h.after}" if h.after else "")
            + (f" ({h.error})" if h.error else "")
            for h in self.hosts.values()
        ]


Listener = Callable[[RolloutReport], None]


def inventory_hosts(inventory: Path, pattern: str) -> list[str]:
    """The hosts of ``inventory`` matching ``pattern``, in inventory order.

    Raises:
        UsageError: no such inventory, or no host matches.
    """
    if not inventory.exists():
        raise UsageError(f"inventory {inventory} does not exist")
    require_fleet("a rollout")
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    hosts = [
        h.name for h in InventoryManager(loader=DataLoader(), sources=[str(inventory)]).get_hosts(pattern)
    ]
    if not hosts:
        raise UsageError(f"no host in {inventory} matches {pattern!r}")
    return hosts


def load_release_bundle(bundle: Path, trust: list[Path]) -> tuple[Manifest, str, int]:
    """Verify ``bundle``'s signature and return its manifest with the sha256 and size of
    its frozen installer: each host takes the installer out of its copy of the bundle and
    checks it against these (library/jumpkit.py), then verifies the whole bundle again
    before staging.

    Raises:
        BundleRejectedError: bad signature. BuildError: a development bundle.
    """
    b = open_bundle(bundle)
    try:
        manifest, _, _ = verify_bundle(b, load_trusted_keys(trust))
    finally:
        b.close()
    if manifest.installer is None:
        raise BuildError(
            f"{bundle.name} is a development bundle (no bin/bundle-install): a rollout runs the "
            "frozen installer on every host; build a release bundle"
        )
    if manifest.installer.base is not None:
        raise BuildError(
            f"{bundle.name} carries its installer as a patch against the one its managers keep: a "
            f"rollout copies the installer to every host; roll out the full bundle {manifest.bundle_id}.zip"
        )
    sha, size = manifest.members()[INSTALLER_MEMBER]
    return manifest, sha, size


def plan_order(hosts: list[Host], order: Order) -> list[str]:
    """Hosts still to upgrade, followers in inventory order and the leader last (or first)."""
    todo = [h for h in hosts if h.result != "already"]
    leaders = [h.name for h in todo if h.leader]
    followers = [h.name for h in todo if not h.leader]
    return leaders + followers if order == "leader-first" else followers + leaders


def _iso(ts: str | None) -> float | None:
    if not ts:
        return None
    from datetime import datetime

    return datetime.fromisoformat(ts).timestamp()


def _error(res: dict[str, Any]) -> str:
    text = str(res.get("msg") or res.get("stderr") or "failed").strip()
    return text.splitlines()[-1][:300] if text else "failed"


def _steps(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps the ``jumpkit`` module ran in one task (library/jumpkit.py), in order."""
    steps = res.get("steps")
    return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []


class Runner:
    """Runs phases of the playbook through ansible-runner and folds events into a report.

    Each phase is one task per host (the ``jumpkit`` module runs its installer steps in
    order); the report is built per step from the task's result, as it was when every
    step was its own task."""

    STARTING: ClassVar[dict[str, str]] = {
        "jumpkit-copy-bundle": "copying",
        "jumpkit-prepare": "staging",
        "jumpkit-pre": "cluster-pre",
        "jumpkit-roll": "applying",
        "jumpkit-post": "cluster-post",
        "jumpkit-unpin": "unpinning",
    }

    def __init__(self, inventory: Path, work: Path, report: RolloutReport, listener: Listener) -> None:
        self.inventory = inventory
        self.work = work
        self.report = report
        self.listener = listener
        self.failed: list[str] = []
        """Hosts that failed in the last run."""
        self.failures: set[tuple[str, str, str]] = set()
        """(host, task, step) of every failure in every run."""
        self.runs = 0
        self._before: dict[str, str] = {}

    def phase(self, tags: str, extravars: dict[str, Any], forks: int) -> bool:
        """Run the plays tagged ``tags`` (comma-separated) in one ansible-playbook run;
        True when no host failed or was unreachable."""
        import ansible_runner

        self.failed = []
        self.runs += 1
        bindir = str(Path(sys.executable).parent)
        ident = f"{self.runs:02d}-{tags.replace(',', '-')}"  # artifacts/<ident>/: stdout and events
        t0 = time.monotonic()
        r = ansible_runner.run(
            private_data_dir=str(self.work),
            playbook=str(templates() / "ansible/rollout.yml"),
            inventory=str(self.inventory.resolve()),
            extravars=extravars,
            tags=tags,
            forks=forks,
            quiet=True,
            ident=ident,
            event_handler=self._event,
            envvars={
                "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
                "ANSIBLE_NOCOLOR": "1",
                # one SSH round trip per task instead of three (measured: ~2.1 s -> ~1.2 s a task);
                # safe as jumpkit runs as root without sudo's requiretty; the operator's setting wins
                "ANSIBLE_PIPELINING": os.environ.get("ANSIBLE_PIPELINING", "1"),
                # Ansible's default ssh_args less -C: the bundle is compressed already and
                # costs more CPU to compress than a LAN saves (measured on 3 hosts: copying
                # the 58 MB installer 5.3 s -> 2.4 s, the rollout 30.1 s -> 24.8 s)
                "ANSIBLE_SSH_ARGS": os.environ.get(
                    "ANSIBLE_SSH_ARGS", "-o ControlMaster=auto -o ControlPersist=60s"
                ),
            },
        )
        self.report.phases.append({"phase": tags, "seconds": round(time.monotonic() - t0, 3)})
        if r.rc != 0 and not self.failed:  # the playbook itself broke, not a host
            out = self.work / "artifacts" / ident / "stdout"
            errors = (
                [ln for ln in out.read_text(errors="replace").splitlines() if "ERROR" in ln]
                if out.exists()
                else []
            )
            why = errors[-1].strip() if errors else f"see {out}"
            raise BuildError(f"ansible-playbook ({tags}) exited {r.rc}: {why}")
        return not self.failed

    def _event(self, ev: dict[str, Any]) -> bool:
        kind = ev.get("event", "")
        data = ev.get("event_data", {})
        host = self.report.hosts.get(data.get("host", ""))
        if host is None or not kind.startswith("runner_on_"):
            return True
        task = data.get("task", "")
        res = data.get("res", {}) or {}
        start, end = _iso(data.get("start")), _iso(data.get("end"))
        if start is not None and end is not None and kind != "runner_on_start":
            host.task_seconds[task.removeprefix("jumpkit-")] = round(end - start, 3)
        if kind == "runner_on_start" and task in self.STARTING:
            self._before[host.name] = host.state
            host.state = self.STARTING[task]
        elif kind == "runner_on_skipped":
            host.state = self._before.get(host.name, host.state)
        elif kind == "runner_on_ok":
            self._done(host, task, res, data)
        elif kind in ("runner_on_failed", "runner_on_unreachable"):
            self._done(host, task, res, data)  # the steps that ran before the failing one
            self._failed(host, task, res, data, unreachable=kind == "runner_on_unreachable")
        self.listener(self.report)
        return True

    def _failed(
        self, host: Host, task: str, res: dict[str, Any], data: dict[str, Any], *, unreachable: bool
    ) -> None:
        first = res.get("failed_step") or task.removeprefix("jumpkit-")
        steps = [str(x) for x in res.get("failed_steps") or [first]]
        errors = [str(x) for x in res.get("errors") or []]
        self.failed.append(host.name)
        self.failures.update((host.name, task, st) for st in steps)
        if unreachable:
            host.error = f"{steps[0]}: unreachable: " + str(res.get("msg", "")).strip()[:300]
        elif errors:
            pairs = zip(steps, errors, strict=False)
            host.error = "; ".join(f"{st}: {_error({'msg': e})}" for st, e in pairs)
        else:
            host.error = f"{steps[0]}: {_error(res)}"
        host.state = "UNREACHABLE" if unreachable else "FAILED"
        if steps[0] == "apply":
            host.result = "failed, rolled back"
            host.apply_start, host.apply_end = _iso(data.get("start")), _iso(data.get("end"))
        elif host.result in ("untouched", "staged"):
            host.result = "unreachable" if unreachable else "failed"

    def _done(self, host: Host, task: str, res: dict[str, Any], data: dict[str, Any]) -> None:
        if task == "jumpkit-copy-bundle" and "changed" in res:
            host.copied = "copied" if res["changed"] else "cached"
        end = _iso(data.get("end"))
        steps = _steps(res)
        for i, st in enumerate(steps):
            name, out = str(st.get("step", "")), st.get("out") or {}
            seconds = float(st.get("seconds") or 0)
            host.task_seconds[name] = round(seconds, 3)
            if name == "apply" and end is not None and res.get("failed_step") != "apply":
                # its span on the controller's clock: back from the task's end by the later steps
                host.apply_end = end - sum(float(s.get("seconds") or 0) for s in steps[i + 1 :])
                host.apply_start = host.apply_end - seconds
            if res.get("failed_step") != name:
                self._ok(host, name, out if isinstance(out, dict) else {}, end)

    def _ok(self, host: Host, step: str, out: dict[str, Any], end: float | None) -> None:
        if step == "role":
            host.before = out.get("installed")
            host.leader = out.get("leader")
            host.status = (out.get("status") or {}).get("status")
            if host.before == self.report.to_version:
                host.result, host.state, host.after = "already", f"already {host.before}", host.before
            else:
                host.state = "probed"
        elif step == "stage":
            host.staged_at = end
            host.result, host.state = "staged", "staged"
        elif step == "plan":
            host.result, host.state = "would upgrade", "planned"
        elif step == "apply":  # its status document: what status would read now
            host.outage_seconds = out.get("outage_seconds")
            host.result, host.state = "upgraded", "applied"
            host.status = out.get("status")
            host.after = out.get("to") if host.status == "finished" else host.after
        elif step in ("member-health", "cluster-post", "unpin-leader"):
            host.state = "upgraded" if host.result == "upgraded" else self._before.get(host.name, host.state)
        elif step in ("pin-leader", "cluster-pre"):
            host.state = "pinned" if step == "pin-leader" else "cluster-pre done"
        elif step == "status":
            host.after = out.get("version")
            host.status = out.get("status")


def playbook_vars(hosts: list[str], version_file: str, **kw: Any) -> dict[str, Any]:
    """The extra variables every play of rollout.yml may name (each run sets the ones it needs)."""
    return {
        "jumpkit_hosts": hosts,
        "jumpkit_version_file": version_file,
        "jumpkit_bundle": "",
        "jumpkit_bundle_name": "",
        "jumpkit_installer_sha256": "",
        "jumpkit_installer_size": 0,
        "jumpkit_to": "",
        "jumpkit_check": False,
        "jumpkit_serial": 1,
        "jumpkit_leader": [],
        "jumpkit_order": [],
        **kw,
    }


def rollout(
    inventory: Path,
    bundle: Path,
    *,
    trust: list[Path],
    order: Order = "leader-last",
    serial: int = 1,
    check: bool = False,
    pattern: str = "all",
    work: Path | None = None,
    listener: Listener = lambda _: None,
) -> RolloutReport:
    """Roll ``bundle`` out to the hosts of ``inventory`` (see the module doc).

    Raises:
        RolloutError: a host failed (the report says where every host is).
        UsageError, BuildError, BundleRejectedError: nothing was started.
    """
    if serial < 1:
        raise UsageError("--serial must be at least 1")
    t0 = time.monotonic()
    work = work or Path(tempfile.mkdtemp(prefix="jumpkit-rollout-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest, installer_sha, installer_size = load_release_bundle(bundle, trust)
    names = inventory_hosts(inventory, pattern)
    report = RolloutReport(
        bundle=manifest.bundle_id,
        from_version=manifest.from_version,
        to_version=manifest.to_version,
        hosts={n: Host(n) for n in names},
        artifacts=str(work),
        check=check,
    )
    run = Runner(inventory, work, report, listener)
    xv = playbook_vars(
        names,
        manifest.version_file,
        jumpkit_bundle=str(bundle.resolve()),
        jumpkit_bundle_name=bundle.name,
        jumpkit_installer_sha256=installer_sha,
        jumpkit_installer_size=installer_size,
        jumpkit_to=manifest.to_version,
        jumpkit_check=check,
        jumpkit_serial=serial,
    )
    forks = max(5, len(names))
    listener(report)
    ok, summary, before = _roll(run, report, xv, forks, order, check)
    if before is not None:
        run.phase(f"{before},status" if before else "status", xv, forks)  # one run: no extra start-up
    report.ok, report.summary = ok, summary
    report.seconds = round(time.monotonic() - t0, 3)
    listener(report)
    if not ok:
        raise RolloutError(summary, report=report)
    return report


def _roll(
    run: Runner, report: RolloutReport, xv: dict[str, Any], forks: int, order: Order, check: bool
) -> tuple[bool, str, str | None]:
    """Prepare, pick the leader and the order, and (unless ``check``) upgrade: whether it
    went well, the summary, and the plays to run before a final status play (None: no
    status play, every host's state is known already)."""
    names, to = list(report.hosts), report.to_version
    if not run.phase("prepare", xv, forks):
        return False, f"preparing failed on {', '.join(run.failed)}: nothing was stopped on any host", ""
    hosts = list(report.hosts.values())
    leaders = [h.name for h in hosts if h.leader]
    if len(leaders) > 1:
        return False, f"{len(leaders)} hosts say they lead ({', '.join(leaders)}): nothing was stopped", ""
    if not leaders and any(h.leader is False for h in hosts):
        return False, "no host passes the product's leader probe: nothing was stopped", ""
    report.leader = leaders[0] if leaders else names[0]
    report.order = plan_order(hosts, order)
    for i, name in enumerate(report.order):
        report.hosts[name].order = i + 1
    if check:
        return (
            True,
            f"would upgrade {len(report.order)} host(s) in this order: {', '.join(report.order)}",
            None,
        )
    if not report.order:  # the probe read every host's version and status already
        return True, f"every host already runs {to}", None
    xv.update(jumpkit_leader=[report.leader], jumpkit_order=report.order)
    # One run: a failure in pre or roll ends it there (max_fail_percentage 0); post unpins
    # even when cluster-post failed. Every host's version and status are known without a
    # status play: from the probe (hosts already there) or from its apply.
    run.phase("pre,roll,post", xv, forks)
    failed = {(host, task) for host, task, _ in run.failures}
    if (report.leader, "jumpkit-pre") in failed:
        return False, f"pinning or cluster-pre failed on {report.leader}: nothing was stopped", "unpin"
    done = [n for n in report.order if report.hosts[n].result == "upgraded"]
    bad = [n for n in report.order if (n, "jumpkit-roll") in failed]
    if bad or len(done) < len(report.order):
        why = (
            f"stopped at {', '.join(bad) or '?'}: {len(done)} of {len(report.order)} host(s) upgraded to {to}"
        )
        return False, why, "unpin"
    if (report.leader, "jumpkit-post", "cluster-post") in run.failures:
        return False, f"every host is on {to}, but cluster-post failed on {report.leader}", None
    if (report.leader, "jumpkit-post", "unpin-leader") in run.failures:
        return False, f"every host is on {to}, but unpinning {report.leader} failed", None
    where = "last" if order == "leader-last" else "first"
    return True, f"{len(done)} host(s) upgraded to {to}, leader {report.leader} {where}", None


def fleet_status(
    inventory: Path, version_file: str, *, pattern: str = "all", work: Path | None = None
) -> RolloutReport:
    """Every host's installed version and upgrade status, gathered through Ansible."""
    names = inventory_hosts(inventory, pattern)
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jumpkit-status-")))
        work.mkdir(parents=True, exist_ok=True)
        report = RolloutReport(bundle="", from_version="", to_version="", hosts={n: Host(n) for n in names})
        run = Runner(inventory, work, report, lambda _: None)
        ok = run.phase("status", playbook_vars(names, version_file), max(5, len(names)))
        for h in report.hosts.values():
            h.result = "reachable" if h.name not in run.failed else "unreachable"
        report.ok = ok
        report.summary = ", ".join(f"{h.name} {h.after or '?'}" for h in report.hosts.values())
        return report

"""Service managers: the only code that starts and stops the manager's services.

Backends: ``supervisord`` (XML-RPC over its unix socket), ``systemd`` (systemctl),
``command`` (start/stop/status commands from the spec) and ``none``. The orchestration code sees only
:class:`ServiceManager`.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import time
import xmlrpc.client
from pathlib import Path
from typing import Protocol

from installer import commands
from installer.beneath import resolve
from installer.commands import ExitWatch
from installer.errors import ServiceError
from installer.format import Service, Services


class ServiceManager(Protocol):
    """Start, stop and query one service at a time."""

    def is_running(self, service: Service) -> bool:
        """Whether the service is up now."""
        ...

    def stop(self, service: Service) -> None:
        """Stop and wait (bounded by ``service.stop_timeout``).

        Raises:
            ServiceError: it did not stop in time.
        """
        ...

    def start(self, service: Service) -> None:
        """Start and wait until the manager reports it running.

        Raises:
            ServiceError: it did not start.
        """
        ...

    def log_tail(self, service: Service, lines: int) -> list[str]:
        """The last ``lines`` lines of the service's log, as the backend keeps it (for a
        support report; never raises: a log that cannot be read is one line saying why)."""
        ...

    def hold(self, service: Service) -> None:
        """Before the stop: keep anything but this run from starting the service again until
        :meth:`start` (systemd: a socket, a dependency, a timer would start it on a
        half-swapped tree). Survives a crash of the installer; :meth:`finish` ends it."""
        ...

    def reload(self) -> None:
        """Make the backend read service definitions as they are on disk now (systemd:
        ``daemon-reload`` after unit files or drop-ins changed, before any start)."""
        ...

    def prestart(self, service: Service) -> None:
        """Right after the stop of a service that will start again: queue its start behind
        the :meth:`hold`, so :meth:`start` only has to release it (no process to spawn in
        the clients' wait). Never raises: :meth:`start` is what must succeed."""
        ...

    def is_enabled(self, service: Service) -> bool:
        """Whether the service starts at boot (systemd's ``is-enabled``)."""
        ...

    def enable(self, service: Service, on: bool) -> None:
        """Enable (``on``) or disable the service for boot; idempotent.

        Raises:
            ServiceError: the backend refused.
        """
        ...

    def unhealthy(self, service: Service) -> str | None:
        """Why the backend's own view says the started service is not healthy (it exited,
        it restarted since the start), or None."""
        ...

    def drop_ins(self, service: Service) -> list[str]:
        """Operator drop-ins the backend applies to the service (kept by every jump)."""
        ...

    def finish(self) -> None:
        """End every :meth:`hold` still in place (the transaction is over); idempotent."""
        ...


class _Plain:
    """What a backend without units, holds or an own view of health does: nothing."""

    def hold(self, service: Service) -> None:
        """See :class:`ServiceManager`."""

    def reload(self) -> None:
        """See :class:`ServiceManager`."""

    def prestart(self, service: Service) -> None:
        """See :class:`ServiceManager`."""

    def is_enabled(self, service: Service) -> bool:
        """See :class:`ServiceManager`."""
        return True

    def enable(self, service: Service, on: bool) -> None:
        """See :class:`ServiceManager`."""

    def unhealthy(self, service: Service) -> str | None:
        """See :class:`ServiceManager`."""
        return None

    def drop_ins(self, service: Service) -> list[str]:
        """See :class:`ServiceManager`."""
        return []

    def finish(self) -> None:
        """See :class:`ServiceManager`."""


class NoServices(_Plain):
    """For managers whose services jumpkit does not control."""

    def is_running(self, service: Service) -> bool:
        """See :class:`ServiceManager`."""
        return False

    def stop(self, service: Service) -> None:
        """See :class:`ServiceManager`."""

    def start(self, service: Service) -> None:
        """See :class:`ServiceManager`."""

    def log_tail(self, service: Service, lines: int) -> list[str]:
        """See :class:`ServiceManager`."""
        return ["(jumpkit controls no services here: no log to read)"]


def _alive(pid: object) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class Supervisord(_Plain):
    """supervisord through XML-RPC on its unix socket."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._proxy = self._connect()
        self._seen_stopped: set[str] = set()
        """Services this object saw stopped: their start needs no state check first."""

    def _connect(self) -> xmlrpc.client.ServerProxy:
        from supervisor.xmlrpc import SupervisorTransport

        return xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{self.socket}")
        )

    def _call(self, what: str, name: str, *args: object) -> object:
        try:
            return getattr(self._proxy.supervisor, what)(name, *args)
        except xmlrpc.client.Fault as e:
            if what == "stopProcess" and "NOT_RUNNING" in e.faultString:
                return True
            if what == "startProcess" and "ALREADY_STARTED" in e.faultString:
                return True
            raise ServiceError(f"supervisord {what}({name}): {e.faultString}") from e
        except BaseException as e:
            # a call cut short (a stop signal between request and reply) leaves the HTTP
            # connection mid-request ("Request-sent"): the next call, an undo's start,
            # needs a new one
            self._proxy = self._connect()
            if isinstance(e, OSError | http.client.HTTPException | xmlrpc.client.Error):
                raise ServiceError(f"cannot talk to supervisord at {self.socket}: {e!r}") from e
            raise

    def _state(self, service: Service) -> str:
        info = self._call("getProcessInfo", service.name)
        return str(info.get("statename")) if isinstance(info, dict) else "UNKNOWN"

    def is_running(self, service: Service) -> bool:
        """See :class:`ServiceManager`."""
        return self._state(service) in ("RUNNING", "STARTING", "STOPPING")

    def stop(self, service: Service) -> None:
        """See :class:`ServiceManager`. supervisord escalates to SIGKILL after the
        program's own stopwaitsecs; we bound the wait by ``stop_timeout``.

        The process's exit is watched through a pidfd (:class:`ExitWatch`), so the stop
        returns as soon as supervisord has reaped it: polling its state every 2 ms (an
        XML-RPC round trip of ~0.3 ms each) noticed the exit 1.9 ms later in the median
        (13.4 ms against 11.5 ms for the demo service, 15 stops each, a client polling;
        supervisord's own ``stopProcess(wait=True)`` 12.5 ms), all of it inside the outage
        window. Without a pidfd (a kernel before 5.3, another pid namespace) it polls."""
        self._seen_stopped.discard(service.name)
        info = self._call("getProcessInfo", service.name)
        watch = ExitWatch.of(info.get("pid") if isinstance(info, dict) else None)
        try:
            self._call("stopProcess", service.name, False)
            deadline = time.monotonic() + service.stop_timeout
            while (left := deadline - time.monotonic()) > 0:
                exited = watch is not None and watch.wait(min(left, ExitWatch.SLICE))
                if not self.is_running(service):
                    self._seen_stopped.add(service.name)
                    return
                if watch is None:
                    time.sleep(0.002)  # no pidfd: poll supervisord
                elif exited:
                    time.sleep(0.0005)  # exited: supervisord reaps it within one of its loops
                # else: the watch's slice passed (a pid of another namespace?): look again
        finally:
            if watch is not None:
                watch.close()
        raise ServiceError(f"{service.name} did not stop within {service.stop_timeout:g}s")

    def start(self, service: Service) -> None:
        """See :class:`ServiceManager`. A process still STOPPING (a stop that timed out,
        which supervisord finishes with SIGKILL after its stopwaitsecs) is waited for."""
        deadline = time.monotonic() + service.start_timeout
        # one XML-RPC round trip less in the window when this run saw it stop
        while (
            service.name not in self._seen_stopped
            and self._state(service) == "STOPPING"
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        self._seen_stopped.discard(service.name)
        self._call("startProcess", service.name, True)

    def unhealthy(self, service: Service) -> str | None:
        """See :class:`ServiceManager`: supervisord's state of the program."""
        try:
            info = self._call("getProcessInfo", service.name)
            # supervisord reaps an exited child in its own loop: until then it says RUNNING for
            # a process that is gone (seen after a health check's 0.8 s of refused connections)
            deadline = time.monotonic() + 2.0
            while (
                isinstance(info, dict)
                and info.get("statename") == "RUNNING"
                and not _alive(info.get("pid"))
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
                info = self._call("getProcessInfo", service.name)
        except ServiceError as e:
            return e.message
        if not isinstance(info, dict) or info.get("statename") == "RUNNING":
            return None
        state, spawnerr = info.get("statename"), info.get("spawnerr") or ""
        exited = ""
        if state in ("EXITED", "BACKOFF", "FATAL"):
            ran = float(info.get("stop") or 0) - float(info.get("start") or 0)
            exited = f": exited {info.get('exitstatus')}" + (f" after {ran:.1f}s" if 0 <= ran < 86400 else "")
        log = info.get("stdout_logfile") or ""
        return (
            f"supervisord: {service.name} is {state}{exited}"
            + (f" ({spawnerr})" if spawnerr else "")
            + (f"; its log: {log}" if log else "")
        )

    def log_tail(self, service: Service, lines: int) -> list[str]:
        """See :class:`ServiceManager`: stdout and stderr, as supervisord's tail gives them."""
        out = []
        for which in ("Stdout", "Stderr"):
            try:
                text = str(self._call(f"tailProcess{which}Log", service.name, 0, 64 * 1024)[0])  # type: ignore[index]
            except (ServiceError, TypeError, IndexError) as e:
                text = f"(cannot read it: {e})"
            out += [f"-- {which.lower()}:", *text.splitlines()[-lines:]]
        return out


class Commands(_Plain):
    """Start/stop/status commands named in the spec (argv lists, no shell)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _run(self, argv: tuple[str, ...], timeout: float, what: str) -> int:
        if not argv:
            raise ServiceError(f"no {what} command in the spec")
        try:
            return commands.run(argv, cwd=self.root, timeout=timeout).returncode
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ServiceError(f"{what} command {argv[0]} failed: {e}") from e

    def is_running(self, service: Service) -> bool:
        """See :class:`ServiceManager`."""
        return self._run(service.status, 30, "status") == 0

    def stop(self, service: Service) -> None:
        """See :class:`ServiceManager`."""
        if self._run(service.stop, service.stop_timeout, "stop") != 0:
            raise ServiceError(f"stop command for {service.name} failed")

    def start(self, service: Service) -> None:
        """See :class:`ServiceManager`."""
        if self._run(service.start, service.start_timeout, "start") != 0:
            raise ServiceError(f"start command for {service.name} failed")

    def log_tail(self, service: Service, lines: int) -> list[str]:
        """See :class:`ServiceManager`."""
        return ["(the command backend keeps no log jumpkit can read)"]


UNIT_SUFFIXES = (".service", ".socket", ".target", ".timer", ".path", ".mount")


def unit_name(name: str) -> str:
    """The systemd unit of a service name: ``demo`` is ``demo.service``."""
    return name if name.endswith(UNIT_SUFFIXES) else f"{name}.service"


HEALTH_PROPS = (
    "ActiveState",
    "SubState",
    "Result",
    "NRestarts",
    "ExecMainCode",
    "ExecMainStatus",
    "ExecMainStartTimestampMonotonic",
    "ExecMainExitTimestampMonotonic",
)


class Systemd:
    """systemd through ``systemctl`` (found on PATH), which must be the systemd whose ``/``
    is the root (``--root /`` on a manager).

    Holds: a stopped unit can be started again by others than this run: its ``.socket``
    on the next connection, a unit that wants it, a timer. Before the stop, :meth:`hold`
    starts a transient ``jumpkit-hold-<unit>`` unit (``Type=oneshot``, ``Before=`` the
    unit) that waits on a FIFO in the state dir; a start job of the unit, whoever queues
    it, waits behind the hold's until :meth:`start` opens the FIFO (0.05 ms, no systemctl
    call in the window). A connection meanwhile waits in the socket's backlog and is
    answered by the new version. After a crash the hold stays until resume or rollback
    starts the service; a reboot ends it (``/run``)."""

    def __init__(self, root: Path, holds: Path | None = None, systemctl: str = "systemctl") -> None:
        self.root = root
        self.holds = holds
        self.systemctl = systemctl
        self._clean: set[str] = set()
        """Units this object stopped: inactive, not failed; their start needs no look first."""
        self._queued: dict[str, subprocess.Popen[bytes]] = {}
        """``systemctl start --no-block`` of units held after their stop (:meth:`prestart`)."""

    def _run(
        self, *args: str, timeout: float = 60, tool: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [tool or self.systemctl, *args]
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as e:
            raise ServiceError(f"{' '.join(argv[:3])} did not return within {timeout:g}s") from e
        except OSError as e:
            raise ServiceError(f"cannot run {argv[0]}: {e.strerror}") from e

    def _show(self, unit: str, *props: str) -> dict[str, str]:
        p = self._run("show", unit, *(f"--property={x}" for x in props))
        return dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)

    @staticmethod
    def _why(p: subprocess.CompletedProcess[str]) -> str:
        return " ".join((p.stderr or p.stdout).split())[-300:]

    def is_running(self, service: Service) -> bool:
        """See :class:`ServiceManager`."""
        return self._run("is-active", "--quiet", unit_name(service.name)).returncode == 0

    # --- holds ------------------------------------------------------------------------
    def _fifo(self, unit: str) -> Path | None:
        return None if self.holds is None else self.holds / unit

    def hold(self, service: Service) -> None:
        """See :class:`ServiceManager`."""
        unit = unit_name(service.name)
        fifo = self._fifo(unit)
        if fifo is None or not unit.endswith(".service"):
            return
        hold = "jumpkit-hold-" + unit.replace("@", "_")
        state = self._show(hold, "ActiveState", "Job")
        if state.get("Job") or state.get("ActiveState") in ("active", "activating"):
            if fifo.exists():
                return  # in place: a crashed run's, or this run's before a rollback's stop
            self._run("stop", hold)  # its FIFO is gone (the state dir was): nothing could end it
        elif state.get("ActiveState") == "failed":
            self._run("reset-failed", hold)  # a failed hold keeps its name taken
        fifo.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()
        os.mkfifo(fifo, 0o600)
        try:  # the path systemd sees: its / is the root
            inside = "/" + fifo.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:  # a --state-dir outside the root
            inside = str(fifo.resolve())
        p = self._run(
            "--no-block",
            "--quiet",
            f"--unit={hold}",
            "--description=jumpkit: hold " + unit,
            "--property=Type=oneshot",
            f"--property=Before={unit}",
            "--property=DefaultDependencies=no",
            "--property=CollectMode=inactive-or-failed",
            "cat",
            inside,
            tool="systemd-run",
        )
        if p.returncode != 0:
            fifo.unlink()
            raise ServiceError(f"cannot hold {unit} through the stop: {self._why(p)}")

    def _release(self, unit: str) -> None:
        fifo = self._fifo(unit)
        if fifo is None or not fifo.exists():
            return
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no hold reads it (it ended, or a reboot did)
            pass
        else:
            os.close(fd)  # the hold reads EOF, exits 0; the unit's start job goes on
        fifo.unlink()

    def finish(self) -> None:
        """See :class:`ServiceManager`."""
        if self.holds is not None and self.holds.is_dir():
            for fifo in sorted(self.holds.iterdir()):
                self._release(fifo.name)

    # --- stop and start --------------------------------------------------------------
    def stop(self, service: Service) -> None:
        """See :class:`ServiceManager`. ``systemctl stop`` waits for the unit's own stop
        (ExecStop, then its KillSignal, SIGKILL after its TimeoutStopSec); we wait at most
        ``stop_timeout``: a unit still stopping then fails the step, before any file moved."""
        unit = unit_name(service.name)
        self._clean.discard(unit)
        try:
            p = self._run("stop", unit, timeout=service.stop_timeout)
        except ServiceError as e:
            if "did not return" in e.message:
                raise ServiceError(f"{service.name} did not stop within {service.stop_timeout:g}s") from e
            raise
        if p.returncode != 0:
            raise ServiceError(f"systemctl stop {unit} failed: {self._why(p)}")
        self._clean.add(unit)

    def prestart(self, service: Service) -> None:
        """See :class:`ServiceManager`. Measured on the demo under systemd, an apply's
        client-seen outage was 1.24x a bare ``systemctl restart`` (113 against 91 ms, medians
        of 9) while it spawned ``systemctl start`` after the swap; the queued job starts the
        service the moment the hold's FIFO is opened."""
        unit = unit_name(service.name)
        fifo = self._fifo(unit)
        if fifo is None or not fifo.exists() or unit not in self._clean:
            return
        with contextlib.suppress(OSError):  # not waited for: it runs while the files swap
            self._queued[unit] = subprocess.Popen(
                [self.systemctl, "start", "--no-block", unit],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def start(self, service: Service) -> None:
        """See :class:`ServiceManager`. A unit that is ``failed`` (a crash loop's start
        limit, a failed stop) is reset first, or systemd would refuse the start. The start
        waits for ``Type=notify``'s READY=1 and the like, at most ``start_timeout``."""
        unit = unit_name(service.name)
        self._release(unit)
        queued = self._queued.pop(unit, None)
        if queued is not None:  # its job is queued, or runs now: the start below joins it
            with contextlib.suppress(subprocess.TimeoutExpired):
                queued.wait(service.start_timeout)
        if unit not in self._clean:
            state = self._show(unit, "ActiveState", "SubState")
            if state.get("ActiveState") == "failed":
                self._run("reset-failed", unit)
            elif state.get("ActiveState") == "deactivating":  # a stop that timed out: let it end
                deadline = time.monotonic() + service.start_timeout
                while (
                    time.monotonic() < deadline
                    and self._show(unit, "ActiveState").get("ActiveState") == "deactivating"
                ):
                    time.sleep(0.05)
        self._clean.discard(unit)
        deadline = time.monotonic() + service.start_timeout
        p = self._run("start", unit, timeout=service.start_timeout)
        if p.returncode != 0 and self._unblock(unit):
            p = self._run("start", unit, timeout=max(1.0, deadline - time.monotonic()))
        if p.returncode != 0:
            seen = self.unhealthy(service)
            why = self._why(p) + (f"; {seen}" if seen else "")
            raise ServiceError(f"systemctl start {unit} failed: {why}")

    def _unblock(self, unit: str) -> bool:
        """Clear systemd's start rate limit on ``unit`` and on the sockets that trigger it;
        True if there was one to clear (the start is worth a second try).

        ``StartLimitBurst=`` (5 starts in 10 s by default) counts deliberate starts and
        ``Restart=`` restarts alike: a new version that crash-loops through the health
        window, or an apply soon after a rollback, leaves the old unit refused for no fault
        of its own. A unit that hits the limit also fails its sockets (``Result=``
        ``service-start-limit-hit``): they stop listening, and a socket started again
        counts its own starts. Both are reset and the sockets started before the unit, so
        that a rollback leaves them listening as they were."""
        triggers = self._show(unit, "TriggeredBy").get("TriggeredBy", "").split()
        limited = [
            u
            for u in (unit, *triggers)
            if self._show(u, "Result").get("Result") in ("start-limit-hit", "service-start-limit-hit")
        ]
        if not limited:
            return False
        self._run("reset-failed", *limited)
        for sock in (u for u in limited if u != unit):
            self._run("start", sock)
        return True

    # --- units ------------------------------------------------------------------------
    def reload(self) -> None:
        """See :class:`ServiceManager`."""
        p = self._run("daemon-reload")
        if p.returncode != 0:
            raise ServiceError(f"systemctl daemon-reload failed: {self._why(p)}")

    def is_enabled(self, service: Service) -> bool:
        """See :class:`ServiceManager`."""
        return self._run("is-enabled", "--quiet", unit_name(service.name)).returncode == 0

    def enable(self, service: Service, on: bool) -> None:
        """See :class:`ServiceManager`. A unit whose file is gone is already disabled."""
        unit = unit_name(service.name)
        p = self._run("enable" if on else "disable", "--quiet", unit)
        if p.returncode != 0 and (on or "does not exist" not in p.stderr):
            raise ServiceError(f"systemctl {'enable' if on else 'disable'} {unit} failed: {self._why(p)}")

    def drop_ins(self, service: Service) -> list[str]:
        """See :class:`ServiceManager`: systemd's ``DropInPaths``."""
        try:
            return self._show(unit_name(service.name), "DropInPaths").get("DropInPaths", "").split()
        except ServiceError:
            return []

    def unhealthy(self, service: Service) -> str | None:
        """See :class:`ServiceManager`: ``NRestarts`` (systemd counts the restarts it made
        since the last start it was asked for), ``ActiveState`` and the main process's exit."""
        unit = unit_name(service.name)
        try:
            s = self._show(unit, *HEALTH_PROPS)
        except ServiceError as e:
            return e.message
        exited = ""
        if s.get("ExecMainExitTimestampMonotonic", "0") not in ("", "0"):
            took = (
                int(s["ExecMainExitTimestampMonotonic"]) - int(s.get("ExecMainStartTimestampMonotonic") or 0)
            ) / 1e6
            how = (
                "was killed by signal"
                if s.get("ExecMainCode") in ("2", "3", "killed", "dumped")
                else "exited"
            )
            last = "last " if s.get("ActiveState") == "inactive" else ""  # not a start just asked for
            exited = f"; its {last}main process {how} {s.get('ExecMainStatus', '?')} after {took:.1f}s"
        log = f" (journalctl -u {unit})"
        restarts = int(s.get("NRestarts") or 0)
        if restarts:
            return f"systemd: {unit} restarted {restarts} time(s) since its start{exited}{log}"
        if s.get("ActiveState") != "active":
            state = f"{s.get('ActiveState')} ({s.get('SubState')}, {s.get('Result')})"
            return f"systemd: {unit} is {state}{exited}{log}"
        return None

    def log_tail(self, service: Service, lines: int) -> list[str]:
        """See :class:`ServiceManager`: journald's, through journalctl."""
        try:
            p = self._run(
                "-u", unit_name(service.name), "-n", str(lines), "--no-pager", timeout=30, tool="journalctl"
            )
        except ServiceError as e:
            return [f"(cannot run journalctl: {e.message})"]
        return ["-- journald:", *(p.stdout or p.stderr).splitlines()]


def service_manager(spec: Services, root: Path, holds: Path | None = None) -> ServiceManager:
    """The backend the manifest names; ``holds`` is where a systemd backend keeps the
    FIFOs of its holds (the state dir's; None: no holds, for read-only commands).

    Raises:
        ServiceError: the backend is not available on this installer.
    """
    if spec.backend == "none" or not spec.services:
        return NoServices()
    if spec.backend == "supervisord":
        if spec.socket is None:
            raise ServiceError("supervisord backend needs 'socket'")
        canonical, _ = resolve(root, spec.socket, follow_last=True)  # a link out: RootLinkError
        return Supervisord(root / canonical)
    if spec.backend == "command":
        return Commands(root)
    return Systemd(root, holds)

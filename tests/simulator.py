"""An in-process service manager for apply-logic tests (python-tuf's RepositorySimulator
pattern): the transaction, the journal and ``plan`` run as in production, but each
service is an HTTP server thread of the test process, so a test needs no supervisord, no
systemd and no service process, and can make a stop or a start fail on demand.

A simulated service reads the root's version file when it starts and answers ``/version``
with it until it stops, as a process that loaded its code at start does; the demo's health
check (``/version`` says the to-version) then passes exactly when the new files were in
place at the start. End-to-end tests keep the real backends for what only they show."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from installer.errors import ServiceError
from installer.format import Service


class SimulatedServices:
    """A :class:`installer.services.ServiceManager` whose services live in this process."""

    def __init__(self, root: Path, port: int, version_file: str = "opt/demo-manager/VERSION") -> None:
        self.root, self.port, self.version_file = root, port, version_file
        self.events: list[str] = []
        """What the installer asked, in order: ``stop NAME``, ``start NAME@VERSION`` ..."""
        self.fail_start: set[str] = set()
        """Services whose next start fails (once each)."""
        self.hang_stop: set[str] = set()
        """Services that do not stop in time (the installer must abort before any file)."""
        self._servers: dict[str, ThreadingHTTPServer] = {}

    def up(self, name: str = "demo-manager") -> SimulatedServices:
        """The service running before the test's apply (as the sandbox's supervisor keeps it)."""
        self._serve(name)
        self.events.clear()
        return self

    def close(self) -> None:
        for name in list(self._servers):
            self._halt(name)

    def factory(self, manifest: object, root: Path) -> SimulatedServices:
        """What ``Engine(services=...)`` takes."""
        return self

    # --- the ServiceManager protocol ---------------------------------------------------
    def is_running(self, service: Service) -> bool:
        return service.name in self._servers

    def stop(self, service: Service) -> None:
        self.events.append(f"stop {service.name}")
        if service.name in self.hang_stop:
            raise ServiceError(f"{service.name} did not stop within {service.stop_timeout:g}s")
        self._halt(service.name)

    def start(self, service: Service) -> None:
        if service.name in self.fail_start:
            self.fail_start.discard(service.name)
            self.events.append(f"start {service.name} failed")
            raise ServiceError(f"{service.name} exited at once (simulated)")
        if service.name in self._servers:  # a start of a running service changes nothing
            self.events.append(f"start {service.name}: already running")
            return
        version = self._serve(service.name)
        self.events.append(f"start {service.name}@{version}")

    def log_tail(self, service: Service, lines: int) -> list[str]:
        return [e for e in self.events if e.split()[1].startswith(service.name)][-lines:]

    def hold(self, service: Service) -> None:
        pass

    def reload(self) -> None:
        self.events.append("reload")

    def prestart(self, service: Service) -> None:
        pass

    def is_enabled(self, service: Service) -> bool:
        return True

    def enable(self, service: Service, on: bool) -> None:
        self.events.append(f"{'enable' if on else 'disable'} {service.name}")

    def unhealthy(self, service: Service) -> str | None:
        return None if service.name in self._servers else "it is not running"

    def drop_ins(self, service: Service) -> list[str]:
        return []

    def finish(self) -> None:
        pass

    # --- the services themselves -----------------------------------------------------
    def _serve(self, name: str) -> str:
        version = (self.root / self.version_file).read_text().strip()
        body = (version + "\n").encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if self.path == "/version" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        self._servers[name] = server
        return version

    def _halt(self, name: str) -> None:
        server = self._servers.pop(name, None)
        if server is None:  # stopping a stopped service is no error, as with every backend
            return
        server.shutdown()
        server.server_close()

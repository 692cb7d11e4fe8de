"""systemd units a jump changes, and what a service's restart does to its clients: the
facts the steps (reload, socket restarts) and pre-flight (``plan``'s lines) share."""

from __future__ import annotations

from collections.abc import Iterable

from installer.format import Manifest, Service
from installer.services import ServiceManager

UNIT_DIRS = ("etc/systemd/system/", "run/systemd/system/", "usr/lib/systemd/system/", "lib/systemd/system/")
"""Where systemd reads unit files and drop-ins (``<unit>.d/``), beneath the root."""


def unit_changes(paths: Iterable[str]) -> set[str]:
    """The units whose file or drop-in is among ``paths`` (``demo.service`` for
    ``etc/systemd/system/demo.service.d/x.conf``; ``multi-user.target.wants`` for a link in it)."""
    out: set[str] = set()
    for path in paths:
        for d in UNIT_DIRS:
            if path.startswith(d):
                out.add(path[len(d) :].split("/", 1)[0].removesuffix(".d"))
    return out


def restart_lines(manifest: Manifest, services: ServiceManager) -> list[str]:
    """Per service, whether its restart refuses connections and which operator drop-ins it
    keeps (pre-flight and ``plan`` say so)."""
    changed = unit_changes([f.path for f in manifest.files] + [r.path for r in manifest.removed])
    out = []
    for s in manifest.services.services:
        sock = socket_of(s)
        if s.removed:
            out.append(f"{s.name}: the jump removes it (stopped and disabled; a rollback brings it back)")
        elif sock is None:
            out.append(f"{s.name}: its restart refuses connections (no socket unit holds them)")
        elif s.added or sock.name in changed:
            out.append(f"{s.name}: socket {sock.name} changes: connections are refused for the restart")
        else:
            out.append(f"{s.name}: restarts behind {sock.name}: no connection is refused")
        kept = services.drop_ins(s) + (services.drop_ins(sock) if sock else [])
        if kept:
            out.append(f"{s.name}: operator drop-ins kept: {', '.join(kept)}")
    return out


def socket_of(s: Service) -> Service | None:
    """The service's ``.socket`` unit as a service of its own backend, or None."""
    if s.socket is None:
        return None
    return Service(name=s.socket, stop_timeout=s.stop_timeout, start_timeout=s.start_timeout)

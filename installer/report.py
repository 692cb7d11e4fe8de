"""``bundle-install report``: one ``tar.gz`` that tells support what happened on a manager
whose upgrade failed, without a remote session (issue 24).

What goes in (``README.txt`` inside lists it, file by file): the state dir's status,
journal and history; the versions (product, installer running and kept, every bundle
manifest staged); the installed release's SBOM (:mod:`installer.sbom`); the drift of
the installed tree against the last manifest; the manifest's config files and lookup
files read beneath the root; free space, kernel,
glibc, distribution; each service's state and the last lines of its log (supervisord's
tail, or journald's); the ``JUMPKIT_*`` environment and the variables lookups read.

Nothing secret leaves in clear: every text goes through :func:`mask` before it is
written (a value whose key is named like password, secret, token, key or credential; the
password of every ``scheme://user:password@host`` URL). Reading never changes the
manager: files are read beneath the root, bounded, and a part that cannot be read is a
line in ``errors.txt``, not a failed report.
"""

from __future__ import annotations

import functools
import io
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from installer import __version__, sbom
from installer.attrs import get_label, load_policy
from installer.codec import parse_manifest
from installer.errors import JumpkitError, UsageError
from installer.format import MANIFEST_NAME, Manifest
from installer.paths import Targets, read_beneath
from installer.sbom import MAX_SBOM_BYTES
from installer.services import ServiceManager
from installer.state import StateDir, StatusDoc
from installer.swapplan import current_digest

MAX_FILE = 4 * 1024 * 1024
"""Largest config, lookup or state file copied (a report stays mail-sized)."""
LOG_LINES = 200
SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|credential|private|api[_-]?key|(^|[_.-])key$", re.I
)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_KEY_VALUE = re.compile(
    r"^(?P<lead>\s*(?:export\s+)?[\"']?)(?P<key>[A-Za-z0-9_.\-]+)(?P<sep>[\"']?\s*[:=]\s*)(?P<value>.*)$"
)
_JSON_PAIR = re.compile(r"\"(?P<key>[A-Za-z0-9_.\-]+)\"(?P<sep>\s*:\s*)\"(?P<value>(?:[^\"\\]|\\.)*)\"")
MASK = "***"


def mask(text: str) -> str:
    """``text`` with secrets replaced by ``***``: URL passwords anywhere, and the value of
    every ``key = value``, ``key: value``, ``KEY=value`` or ``"key": "value"`` whose key
    is named like a secret."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _JSON_PAIR.sub(
        lambda m: f'"{m["key"]}"{m["sep"]}"{MASK}"' if SECRET_NAME.search(m["key"]) else m[0], text
    )
    out = []
    for line in text.splitlines(keepends=True):
        m = _KEY_VALUE.match(line.rstrip("\r\n"))
        if m is not None and SECRET_NAME.search(m["key"]) and m["value"].strip():
            line = f"{m['lead']}{m['key']}{m['sep']}{MASK}" + line[len(line.rstrip("\r\n")) :]
        out.append(line)
    return "".join(out)


@dataclass
class Report:
    """The archive's members as they are gathered (text, masked on add)."""

    files: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, name: str, text: str) -> None:
        self.files[name] = mask(text)

    def attempt(self, what: str, fn: Callable[[], None]) -> None:
        """Run one gathering part; a failure is a line in errors.txt, not a failed report."""
        try:
            fn()
        except (OSError, JumpkitError, ValueError, subprocess.SubprocessError) as e:
            self.errors.append(f"{what}: {type(e).__name__}: {e}")


README = {
    "README.txt": "this list",
    "status.json": "the state dir's status: the last or current run, its log lines (masked)",
    "journal.jsonl": "the journal of the last run: every step begun, done, undone (what recovery reads)",
    "history.jsonl": "one line per finished, failed or rolled-back run",
    "versions.json": "product, installed version, this and the manager's kept installer, staged bundles",
    "manifests/": "each staged bundle's manifest.json (what it changes, with sha256s)",
    "sbom.cdx.json": "the installed release's CycloneDX SBOM, as its committed bundle shipped it",
    "drift.txt": "the installed tree against the last run's manifest: files that differ from what it left",
    "configs/": "the manifest's config files and the files lookups read, as on this manager (masked)",
    "system.txt": "free space, kernel, glibc, distribution, Python, time",
    "services.txt": "each service's state and the last lines of its log (supervisord or journald)",
    "environment.txt": "JUMPKIT_* variables and those the product's lookups read (masked)",
    "errors.txt": "parts of this report that could not be gathered, and why",
}


def gather(root: Path, state: StateDir, services: Callable[[Manifest], ServiceManager] | None) -> Report:
    """Everything the report holds (see the module docstring); reads only."""
    rep = Report()
    status = state.read_status() if state.status_path.exists() else StatusDoc()
    for name, path in (
        ("status.json", state.status_path),
        ("journal.jsonl", state.journal_path),
        ("history.jsonl", state.history_path),
    ):
        if path.exists():
            rep.attempt(name, _adder(rep, name, functools.partial(_read_tail, path)))
    manifests = _staged_manifests(state, rep)
    last = manifests.get(status.bundle_id or "") or next(reversed(manifests.values()), None)
    rep.attempt(
        "versions.json",
        lambda: rep.add("versions.json", _versions(root, status, manifests, _staged_ids(state))),
    )
    for bundle_id, (_, data) in manifests.items():
        rep.add(f"manifests/{bundle_id}.json", data.decode("utf-8", "replace"))
    if (bom := sbom.installed(state.path)) is not None:
        rep.attempt("sbom.cdx.json", _adder(rep, "sbom.cdx.json", functools.partial(_whole, bom)))
    if last is not None:
        m = last[0]
        rep.attempt("drift.txt", lambda: rep.add("drift.txt", _drift(root, m, status)))
        rep.attempt("configs/", lambda: _configs(root, m, rep))
        if services is not None:
            rep.attempt("services.txt", lambda: rep.add("services.txt", _services(m, services)))
        rep.attempt("environment.txt", lambda: rep.add("environment.txt", _environment(m)))
    else:
        rep.errors.append("no staged manifest: drift, configs, services and lookups are not in this report")
        rep.attempt("environment.txt", lambda: rep.add("environment.txt", _environment(None)))
    rep.attempt("system.txt", lambda: rep.add("system.txt", _system(root, state)))
    present = {n.split("/", 1)[0] + ("/" if "/" in n else "") for n in rep.files} | {"README.txt"}
    if rep.errors:
        rep.add("errors.txt", "\n".join(rep.errors) + "\n")
        present.add("errors.txt")
    lines = [f"jumpkit support report: {root} at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
             f"made by bundle-install {__version__}; secrets are masked as {MASK}", ""]  # fmt: skip
    lines += [f"{name:<16} {what}" for name, what in README.items() if name in present]
    rep.files = {"README.txt": "\n".join(lines) + "\n", **rep.files}
    return rep


def write(rep: Report, dest: Path) -> None:
    """The archive at ``dest`` (write-temp, rename: a half report never takes its name)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    now = int(time.time())
    with tarfile.open(tmp, "w:gz") as tar:
        top = dest.name.removesuffix(".tar.gz")
        for name, text in rep.files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), now, 0o600
            tar.addfile(info, io.BytesIO(data))
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest)


def default_name(product: str | None) -> str:
    return f"jumpkit-report-{product or 'manager'}-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz"


def make(
    root: Path, state: StateDir, dest: Path | None, services: Callable[[Manifest], ServiceManager] | None
) -> Path:
    """Gather and write a report; returns its path.

    Raises:
        UsageError: ``dest`` is in a directory that does not exist.
    """
    product = state.path.name
    out = dest if dest is not None else Path.cwd() / default_name(product)
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no such directory {out.parent}")
    write(gather(root, state, services), out)
    return out


# --- the parts --------------------------------------------------------------------------


def _adder(rep: Report, name: str, text: Callable[[], str]) -> Callable[[], None]:
    return lambda: rep.add(name, text())


def _whole(path: Path) -> str:
    """A document that is no use cut (JSON), read whole up to a bound."""
    if path.stat().st_size > MAX_SBOM_BYTES:
        raise OSError(f"{path.name} is larger than {MAX_SBOM_BYTES} bytes")
    return path.read_text(encoding="utf-8", errors="replace")


def _read_tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - MAX_FILE))
        return f.read().decode("utf-8", "replace")


def _staged_manifests(state: StateDir, rep: Report) -> dict[str, tuple[Manifest, bytes]]:
    """The last run's manifests (kept also after a rollback dropped the staging), then
    those staged since, oldest first, by bundle id."""
    found: list[Path] = sorted(state.last_run.glob("*.json")) if state.last_run.is_dir() else []
    if state.staging.is_dir():
        dirs = sorted(state.staging.iterdir(), key=lambda p: p.stat().st_mtime)
        found += [d / MANIFEST_NAME for d in dirs if (d / MANIFEST_NAME).is_file()]
    out: dict[str, tuple[Manifest, bytes]] = {}
    for path in found:
        try:
            data = path.read_bytes()
            m = parse_manifest(data)
        except (OSError, JumpkitError) as e:
            rep.errors.append(f"manifests: {path}: {e}")
            continue
        out.pop(m.bundle_id, None)
        out[m.bundle_id] = (m, data)
    return out


def _staged_ids(state: StateDir) -> set[str]:
    """Bundles staged now (a rolled-back apply's staging is gone; its manifest is kept)."""
    if not state.staging.is_dir():
        return set()
    return {d.name for d in state.staging.iterdir() if (d / MANIFEST_NAME).is_file()}


def _versions(
    root: Path, status: StatusDoc, manifests: dict[str, tuple[Manifest, bytes]], staged: set[str]
) -> str:
    from installer import resident
    from installer.preflight import read_version_file
    from installer.selfupdate import installed_info, installed_path

    some = next(iter(manifests.values()), None)
    info = installed_info(root)
    doc = {
        "installer_running": __version__,
        # the manager's own installer, and whether it starts from its unpacked tree
        "installer_kept": None
        if info is None
        else {**info, "unpacked": resident.is_kept(installed_path(root))},
        "product": some[0].product if some else None,
        "installed_version": read_version_file(root, some[0].version_file) if some else None,
        "last_run": {"status": status.status, "summary": status.summary, "bundle": status.bundle_id,
                     "from": status.from_version, "to": status.to_version, "step": status.step},
        "staged": [{"bundle": b, "from": m.from_version, "to": m.to_version, "format": m.format,
                    "installer": m.installer.version if m.installer else None}
                   for b, (m, _) in manifests.items() if b in staged],
        "last_run_bundles": [b for b in manifests if b not in staged],
    }  # fmt: skip
    return json.dumps(doc, indent=2) + "\n"


def _drift(root: Path, m: Manifest, status: StatusDoc) -> str:
    """Against what the last run should have left: the to-version after a finished apply,
    the from-version otherwise (rolled back, failed, never applied)."""
    applied = status.status == "finished" and status.bundle_id == m.bundle_id
    want = m.to_version if applied else m.from_version
    target = Targets(root)
    lines, differ = [], 0
    for f in m.files:
        expected = f.sha256 if applied else f.from_sha256
        if f.kind == "symlink" or (f.kind == "config" and f.policy != "replace"):
            continue
        current = current_digest(target(f.path))
        if current != expected:
            differ += 1
            lines.append(f"{f.path}: {'missing' if current is None else 'differs'} (want {want}'s)")
    head = f"{differ} of {len(m.files)} file(s) of {m.bundle_id} differ from {want}"
    head += " (configs the operator owns are not counted)"
    return "\n".join([head, *lines, *_label_drift(root, m)]) + "\n"


def _label_drift(root: Path, m: Manifest) -> list[str]:
    """Each file of the jump whose SELinux label is not the one the root's policy gives its
    path (``restorecon -n`` would change it), with owner and mode for context."""
    try:
        policy = load_policy(root)
    except JumpkitError as e:
        return ["", f"SELinux labels: not compared ({e.message})"]
    if policy is None:
        return []
    target = Targets(root)
    out = []
    for f in m.files:
        path = target(f.path)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        matched, want = policy.lookup("/" + f.path, st.st_mode)
        have = get_label(str(path))
        if matched and have != want:
            out.append(f"{f.path}: label {have or 'none'}, the policy says {want or 'none'}"
                       f" (owner {st.st_uid}:{st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o})")  # fmt: skip
    return ["", f"SELinux labels ({policy.source}): {len(out)} file(s) differ from the policy", *out]


def _configs(root: Path, m: Manifest, rep: Report) -> None:
    paths = [f.path for f in m.files if f.kind == "config"]
    paths += [lk.file for lk in m.lookups.values() if lk.file] + [
        db.url.file for db in m.databases if db.url.file
    ]
    for rel in dict.fromkeys(paths):
        for name in (rel, rel + ".jumpkit-new"):
            data = read_beneath(root, name, MAX_FILE)
            if data is not None:
                rep.add(f"configs/{name}", data.decode("utf-8", "replace"))


def _services(m: Manifest, services: Callable[[Manifest], ServiceManager]) -> str:
    mgr = services(m)
    lines = [f"backend: {m.services.backend}"]
    for svc in m.services.services:
        try:
            state = "running" if mgr.is_running(svc) else "stopped"
        except (JumpkitError, OSError) as e:
            state = f"unknown ({e})"
        lines += ["", f"== {svc.name}: {state}", *mgr.log_tail(svc, LOG_LINES)]
    return "\n".join(lines) + "\n"


def _environment(m: Manifest | None) -> str:
    wanted = {lk.env for lk in (m.lookups.values() if m else ()) if lk.env}
    wanted |= {db.url.env for db in (m.databases if m else ()) if db.url.env}
    names = sorted(n for n in os.environ if n.startswith("JUMPKIT_") or n in wanted)
    return "".join(f"{n}={MASK if SECRET_NAME.search(n) else os.environ[n]}\n" for n in names)


def _system(root: Path, state: StateDir) -> str:
    lines = []
    for label, path in (("root", root), ("state dir", state.path)):
        if path.exists():
            u = shutil.disk_usage(path)
            lines.append(f"free {label} {path}: {u.free / 2**20:.0f} MiB of {u.total / 2**20:.0f} MiB")
    un = os.uname()
    lines.append(f"kernel: {un.sysname} {un.release} {un.version} {un.machine}")
    try:
        lines.append(f"glibc: {os.confstr('CS_GNU_LIBC_VERSION')}")
    except (ValueError, OSError):
        lines.append("glibc: unknown")
    for rel in ("etc/os-release", "usr/lib/os-release"):
        data = read_beneath(root, rel, 64 * 1024) if root != Path("/") else None
        host = Path("/") / rel
        text = data.decode("utf-8", "replace") if data else (host.read_text() if host.is_file() else "")
        pretty = next(
            (ln.split("=", 1)[1].strip('"') for ln in text.splitlines() if ln.startswith("PRETTY_NAME=")),
            None,
        )
        if pretty:
            lines.append(f"distribution: {pretty}")
            break
    lines.append(f"python: {platform.python_version()}; bundle-install {__version__}")
    lines.append(f"time: {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    return "\n".join(lines) + "\n"


def members(path: Path) -> Iterator[str]:
    """The names inside a report (for the CLI's listing)."""
    with tarfile.open(path, "r:gz") as tar:
        yield from tar.getnames()

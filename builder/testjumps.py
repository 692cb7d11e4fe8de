"""``bundle-build test-jumps``: proof, before a release ships, that every supported jump
applies and rolls back cleanly, through the installer that ships (issue 24).

Per case (each jump of the product's graph, and with ``--all`` the chain from its lowest
to its highest release as one apply): a sandbox laid out at the from-release (files,
rendered configs, the init script's data, supervisord with the product's services
running; ports named by ``*port`` lookups get a free port each, so cases run in
parallel), its tree and databases snapshotted, the release bundle built (signed by a key
made for the run, the frozen installer inside) and applied by that embedded installer;
then ``rollback``, and the tree compared with the snapshot byte for byte (paths, kinds,
modes, contents, link targets) and every database with its revision and rows.

Cells of the matrix, in order: ``build`` (the bundle builds as a release build would,
migration rehearsal included), ``apply`` (exit 0), ``health`` (the manifest's health
checks pass afterwards), ``version`` (the version file says the to-version), ``schema``
(each database at the to-revision), ``rollback`` (exit 0, every downgrade ran: a failed
one that jumpkit repaired from its backup is still a failure of the jump), ``exact``
(tree and databases equal to the fresh from-release). A cell after a failed one is
``skip``.

``--format rpm`` applies the bundle RPMs instead, the way an operator's ``yum install``
does: ``rpm -U`` into the sandbox as ``--root`` (in a private mount namespace with the
root's ``/proc`` mounted: the frozen installer runs in ``%posttrans``, chrooted), with a
static busybox as the root's ``/usr/bin`` shell tools (what a manager's OS has and a
sandbox lacks). rpm exits 0 when ``%posttrans`` fails, so ``apply`` also needs the
installer's status ``finished``. ``rollback`` is the installer's, then ``rpm -e`` of the
bundle package (which must leave the manager as it is). rpm installs one version of a
package per transaction, so a chain is its RPMs one after another (one apply and one
outage each, as ``yum`` would go), and as the backup kept is the last apply's,
``rollback`` and ``exact`` of a chain check its last jump against the tree before it.
rpm's own state (``var/lib/rpm``, ``tmp``, ...) and ``/proc`` are never compared.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from builder.build import build_jump
from builder.errors import BuildError
from builder.frozen import FrozenInstaller
from builder.keys import keygen
from builder.machine import Machine, missing_tools
from builder.rpm import build_rpm, rpm_names
from builder.sandbox import SUPERVISOR_CONF, lay_out
from builder.spec import Product
from installer.attrs import CAPS_XATTR, SELINUX_XATTR
from installer.codec import parse_manifest
from installer.errors import JumpkitError
from installer.format import INSTALLER_MEMBER, MANIFEST_NAME, Manifest
from installer.graph import plan_chain
from installer.services import unit_name
from installer.version import Version

CELLS = ("build", "apply", "health", "version", "schema", "rollback", "exact")
HARNESS = ("var/lib/jumpkit", "var/run", "var/log", SUPERVISOR_CONF, "etc/jumpkit/trusted-keys")
"""The sandbox's own paths, never compared (the installer's state, supervisord's files)."""
PACKAGER_STATE = ("proc", "var/lib/rpm", "var/cache/ldconfig", "var/tmp", "tmp")
"""What ``rpm --root`` keeps in the root for itself, and the mount point of /proc."""
FORMATS = ("zip", "rpm")
RPM_TOOLS = ("rpm", "rpmbuild", "unshare", "mount", "busybox")
TIMEOUT = 600


def backend_problem(product: Product, backend: str | None, fmt: str) -> str | None:
    """Why the cases cannot run with ``backend`` (None: the product's own) here, or None.
    A product under systemd runs under a real systemd (:mod:`builder.machine`)."""
    own = product.spec.services.backend
    if backend not in (None, "supervisord", "systemd"):
        return f"--backend {backend!r}: supervisord or systemd"
    if backend not in (None, own):
        return f"--backend {backend}: {product.name}'s services run under {own}"
    if own != "systemd":
        return None
    if fmt != "zip":
        return "--backend systemd runs --format zip cases (rpm's sandboxes are not booted)"
    lacking = missing_tools()
    return f"--backend systemd needs {', '.join(lacking)}" if lacking else None


def rpm_problem() -> str | None:
    """Why ``--format rpm`` cannot run here (None when it can): rpm must chroot into the
    sandbox and mount its /proc, which takes root and these tools."""
    missing = [t for t in RPM_TOOLS if shutil.which(t) is None]
    if missing:
        return (f"--format rpm needs {', '.join(missing)} (Debian/Ubuntu: apt-get install rpm "
                "util-linux mount busybox-static)")  # fmt: skip
    if os.geteuid() != 0:
        return "--format rpm needs root: rpm --root chroots into each sandbox and mounts its /proc"
    return None


@dataclass
class Case:
    """One row of the matrix: a jump, or a chain of jumps applied as one."""

    name: str
    steps: list[tuple[str, str]]
    cells: dict[str, str] = field(default_factory=dict)
    """cell -> ``pass``, ``fail``, ``skip`` or ``run`` (under way)."""
    failure: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(v == "pass" for v in self.cells.values()) and len(self.cells) == len(CELLS)


def cases(
    product: Product, frm: str | None, to: str | None, everything: bool, fmt: str = "zip"
) -> list[Case]:
    """The cases to run: the named jump or chain, else every jump (and, ``everything``,
    the chain across all releases). A chain's name counts its jumps (``fmt`` zip: one
    apply) or its RPMs (``fmt`` rpm: one after another).

    Raises:
        NoPath: no chain ``frm`` -> ``to``.
    """
    graph = product.graph()
    unit = "RPMs" if fmt == "rpm" else "jumps"
    if frm is not None and to is not None:
        chain = plan_chain(graph, frm, to)
        return [Case(f"{frm} -> {to}" + (f" ({len(chain)} {unit})" if len(chain) > 1 else ""), list(chain))]
    out = [Case(f"{a} -> {b}", [(a, b)]) for a, b in graph.jumps]
    if everything and graph.jumps:
        versions = sorted({v for j in graph.jumps for v in j}, key=Version.parse)
        chain = plan_chain(graph, versions[0], versions[-1])
        if len(chain) > 1:
            out.append(Case(f"{versions[0]} -> {versions[-1]} ({len(chain)} {unit})", list(chain)))
    return out


def snapshot(root: Path, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every path under ``root`` but the harness's and ``skip`` (a path and all beneath
    it): kind, mode, owner and group, SELinux label and capabilities, link target or sha256."""
    out = {}
    left_out = (*HARNESS, *skip)
    for dirpath, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirs + files):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if any(rel == h or rel.startswith(h + "/") for h in left_out):
                continue
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            mode = f"{stat.S_IMODE(st.st_mode):04o} {st.st_uid}:{st.st_gid}{_security(p)}"
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link {os.readlink(p)} {st.st_uid}:{st.st_gid}{_security(p)}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = f"dir {mode}"
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = f"file {mode} {hashlib.file_digest(f, 'sha256').hexdigest()}"
            else:
                out[rel] = f"special {stat.S_IFMT(st.st_mode):o}"
    return out


def _security(path: str) -> str:
    """The SELinux label and capabilities of ``path`` (never a link's target), compared like
    owner and mode: a rollback restores them exactly."""
    out = ""
    for name, short in ((SELINUX_XATTR, "label"), (CAPS_XATTR, "caps")):
        with contextlib.suppress(OSError):
            value = os.getxattr(path, name, follow_symlinks=False)
            out += f" {short}={value.hex()}"
    return out


def differences(before: dict[str, str], after: dict[str, str], limit: int = 5) -> list[str]:
    diff = [f"+{p}" for p in sorted(after.keys() - before.keys())]
    diff += [f"-{p}" for p in sorted(before.keys() - after.keys())]
    diff += [f"~{p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return diff[:limit] + ([f"(+{len(diff) - limit} more)"] if len(diff) > limit else [])


def db_state(manifest: Manifest, root: Path) -> dict[str, Any]:
    """Per database: its revision and every table's rows (sorted), read through SQLAlchemy."""
    from sqlalchemy import MetaData, create_engine, pool, select

    from installer.migrate import current_revision, database_url, with_driver

    out: dict[str, Any] = {}
    for db in manifest.databases:
        url = database_url(db, root)
        rev = current_revision(url, missing_ok=True)
        engine = create_engine(with_driver(url), poolclass=pool.NullPool)
        meta = MetaData()
        tables: dict[str, list[str]] = {}
        with engine.connect() as conn:
            meta.reflect(conn)
            for t in sorted(meta.tables.values(), key=lambda t: t.name):
                # by column name: a downgrade that re-adds a column puts it last (batch mode)
                tables[t.name] = sorted(repr(sorted(r._mapping.items())) for r in conn.execute(select(t)))
        engine.dispose()
        out[db.name] = {"revision": rev, "tables": tables}
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Skip(Exception):
    """The case stops here: the rest of its cells are skipped."""


@dataclass
class _Box:
    """One case's sandbox: its root, environment and the services that run it."""

    root: Path
    env: dict[str, str]
    supervisord: int | None = None
    machine: Machine | None = None
    units: list[str] = field(default_factory=list)
    skip: frozenset[str] = frozenset()
    """Paths compared otherwise than by bytes (databases, the packager's state)."""

    def view(self) -> dict[str, str]:
        """The tree, and systemd's view of the units, for the exactness check."""
        return snapshot(self.root, self.skip) | systemd_view(self.machine, self.units)

    def close(self) -> None:
        if self.supervisord is not None:
            _stop(self.supervisord)
        if self.machine is not None:
            self.machine.stop()
        shutil.rmtree(self.root.parent, ignore_errors=True)


class Runner:
    """Builds the bundles once, then runs cases on sandboxes in parallel."""

    def __init__(
        self, product: Product, specs: Path, installer: FrozenInstaller, work: Path, fmt: str = "zip"
    ) -> None:
        self.product, self.specs, self.installer, self.work, self.fmt = product, specs, installer, work, fmt
        self.key, self.pub, _ = keygen(work / "keys", "test-jumps")
        self.bundles: dict[tuple[str, str], Path] = {}
        self.rpms: dict[tuple[str, str], Path] = {}
        self.broken: dict[tuple[str, str], str] = {}
        """Jumps whose bundle did not build, and why."""

    def build(self, jumps: set[tuple[str, str]], tick: Callable[[str], None]) -> None:
        """Build each jump's release bundle once (a failure is that jump's build cell)."""
        for frm, to in sorted(jumps, key=lambda j: (Version.parse(j[0]), Version.parse(j[1]))):
            tick(f"building {frm} -> {to}")
            try:
                res = build_jump(self.product, frm, to, self.work / "dist",
                                 key=self.key, installer=self.installer, level=1)  # fmt: skip
            except JumpkitError as e:
                self.broken[(frm, to)] = f"{frm} -> {to}: {e.message}"
                continue
            self.bundles[(frm, to)] = res.path
            self._extract_installer((frm, to))  # here, not in the parallel cases: one writer
            if self.fmt == "rpm":
                tick(f"building the RPM of {frm} -> {to}")
                try:
                    spec = self.product.spec
                    rpm = build_rpm(res.path, res.manifest, spec.package, spec.summary, self.work / "rpm")
                except JumpkitError as e:
                    self.broken[(frm, to)] = f"{frm} -> {to}: {e.message}"
                    continue
                self.rpms[(frm, to)] = rpm.path

    def run(self, case: Case, changed: Callable[[Case], None]) -> Case:
        t0 = time.monotonic()
        box = _Box(Path(tempfile.mkdtemp(prefix="jk-tj-", dir=_short_tmp())) / "r", dict(os.environ))
        try:
            self._cell(
                case,
                changed,
                "build",
                lambda: next((self.broken[s] for s in case.steps if s in self.broken), None),
            )
            if case.failure is not None:
                raise _Skip
            manifests = self._lay_out(case, box)
            installer = self._installer(case.steps[-1])
            before, dbs_before, first = self._apply(case, changed, box, manifests, installer)
            tail, root, env = manifests[-1], box.root, box.env
            self._cell(case, changed, "health", lambda: _health(tail, root))  # the to-version answers
            self._cell(case, changed, "version", lambda: _version(tail, root))
            self._cell(case, changed, "schema", lambda: _schema(tail, root))
            undo = (
                (lambda: _rollback(installer, root) or _rpm_erase(root, tail))
                if self.fmt == "rpm"
                else (lambda: _rollback(installer, root, env))
            )  # rpm: then rpm -e, which must leave the manager as it is
            self._cell(case, changed, "rollback", undo)
            self._cell(case, changed, "exact", lambda: _exact(
                before, box.view(), dbs_before, db_state(first, root)
            ))  # fmt: skip
        except _Skip:
            for c in CELLS:
                case.cells.setdefault(c, "skip")
        except (BuildError, OSError, subprocess.SubprocessError) as e:
            case.failure = case.failure or f"sandbox: {e}"
            for c in CELLS:
                case.cells.setdefault(c, "fail" if c == "apply" else "skip")
        finally:
            box.close()
            case.seconds = time.monotonic() - t0
            changed(case)
        return case

    def _lay_out(self, case: Case, box: _Box) -> list[Manifest]:
        """The case's from-release laid out, its services running and healthy; the
        manifests of its steps."""
        frm, root = case.steps[0][0], box.root
        overrides = {lk.key: str(_free_port()) for n, lk in self.product.spec.lookups.items()
                     if lk.file and lk.key and n.endswith("port")}  # fmt: skip
        lay_out(self.product, frm, root, overrides=overrides, trust=[self.pub])
        manifests = [self._manifest(s) for s in case.steps]
        if self.product.spec.services.backend == "systemd":
            box.machine = _boot_systemd(manifests[0], root, next(iter(overrides.values()), None))
            box.env["PATH"] = f"{box.machine.bin()}:{box.env['PATH']}"
            box.units = [unit_name(s.name) for s in manifests[0].services.services if not s.added]
        box.supervisord = _start_supervisord(self.product, root)
        running = box.supervisord is not None or box.machine is not None
        if running and (problem := _health(manifests[0], root, frm)) is not None:
            raise BuildError(f"the fresh {frm} sandbox never became healthy: {problem}")
        box.skip = _database_files(manifests[0], root)  # compared by revision and rows, not bytes
        if self.fmt == "rpm":
            box.skip |= frozenset(PACKAGER_STATE)
            as_manager(root)
        return manifests

    def _apply(
        self,
        case: Case,
        changed: Callable[[Case], None],
        box: _Box,
        manifests: list[Manifest],
        installer: Path,
    ) -> tuple[dict[str, str], dict[str, Any], Manifest]:
        """The apply cell: the bundles at once (zip), or one RPM after another; returns what
        a rollback must restore (tree and databases) and the manifest whose databases hold it."""
        root = box.root
        if self.fmt == "zip":
            before, dbs_before = box.view(), db_state(manifests[0], root)
            bundles = [str(self.bundles[s]) for s in case.steps]
            self._cell(
                case,
                changed,
                "apply",
                lambda: _ok(_run([installer, "--root", root, "apply", *bundles], box.env)),
            )
            return before, dbs_before, manifests[0]
        first = manifests[-1]  # the tree before the last RPM is what the rollback reaches
        holder: dict[str, Any] = {}

        def apply_rpms() -> str | None:
            for step, m in zip(case.steps, manifests, strict=True):
                if step == case.steps[-1]:
                    holder["before"], holder["dbs"] = snapshot(root, box.skip), db_state(first, root)
                if (problem := _rpm_apply(root, self.rpms[step], installer, m)) is not None:
                    return problem
            return None

        self._cell(case, changed, "apply", apply_rpms)
        return holder.get("before", {}), holder.get("dbs", {}), first

    def _cell(
        self, case: Case, changed: Callable[[Case], None], cell: str, check: Callable[[], str | None]
    ) -> None:
        if case.failure is not None:
            case.cells[cell] = "skip"
            return
        case.cells[cell] = "run"
        changed(case)
        try:
            problem = check()
        except Exception as e:  # a check's own error is that check failing, not the runner's
            problem = f"{type(e).__name__}: {e}"
        case.cells[cell] = "fail" if problem else "pass"
        if problem:
            case.failure = f"{cell}: {problem}"
        changed(case)

    def _manifest(self, jump: tuple[str, str]) -> Manifest:
        with zipfile.ZipFile(self.bundles[jump]) as z:
            return parse_manifest(z.read(MANIFEST_NAME))

    def _installer(self, jump: tuple[str, str]) -> Path:
        """The frozen installer the bundle of ``jump`` carries (taken out when built)."""
        return self.work / f"installer-{jump[0]}-{jump[1]}"

    def _extract_installer(self, jump: tuple[str, str]) -> None:
        dest = self._installer(jump)
        with zipfile.ZipFile(self.bundles[jump]) as z:
            tmp = dest.with_name(dest.name + ".tmp")
            tmp.write_bytes(z.read(INSTALLER_MEMBER))
            tmp.chmod(0o755)
            tmp.replace(dest)


def run_all(runner: Runner, todo: list[Case], changed: Callable[[Case], None], workers: int) -> list[Case]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda c: runner.run(c, changed), todo))


def junit(cases_: list[Case], seconds: float) -> str:
    """JUnit XML: a testsuite, one testcase per (case, cell), failures with their reason."""
    tests = [(c, cell) for c in cases_ for cell in CELLS]
    failures = sum(1 for c, cell in tests if c.cells.get(cell) == "fail")
    skipped = sum(1 for c, cell in tests if c.cells.get(cell, "skip") == "skip")
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuite name="test-jumps" tests="{len(tests)}" failures="{failures}" skipped="{skipped}" '
             f'time="{seconds:.1f}">']  # fmt: skip
    for c, cell in tests:
        head = f"  <testcase classname={quoteattr(c.name)} name={quoteattr(cell)}"
        state = c.cells.get(cell, "skip")
        if state == "fail":
            why = c.failure or cell
            failure = f"    <failure message={quoteattr(why)}>{escape(why)}</failure>"
            lines += [f"{head}>", failure, "  </testcase>"]
        elif state == "skip":
            lines += [f"{head}>", "    <skipped/>", "  </testcase>"]
        else:
            lines.append(f"{head}/>")
    lines.append("</testsuite>")
    return "\n".join(lines) + "\n"


# --- the checks: None when it passes, else why ------------------------------------------


def _run(argv: list[str | Path], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**(env or os.environ), "JUMPKIT_NO_REEXEC": "1", "PYINSTALLER_RESET_ENVIRONMENT": "1"}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=TIMEOUT, env=env)


def _boot_systemd(m: Manifest, root: Path, port: str | None) -> Machine:
    """A real systemd whose / is the sandbox, each service's socket listening on the case's
    port (an operator's drop-in, so cases run side by side), the from-release's sockets and
    services enabled and running."""
    for s in m.services.services:
        if s.socket is not None and port is not None and not s.added:
            drop = root / f"etc/systemd/system/{s.socket}.d/jumpkit-test-jumps.conf"
            drop.parent.mkdir(parents=True, exist_ok=True)
            drop.write_text(f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
    machine = Machine(root).boot()
    for s in m.services.services:
        for unit in ([s.socket] if s.socket else []) + [unit_name(s.name)]:
            if s.added or (s.removed and unit.endswith(".socket")):
                continue
            p = machine.systemctl("enable", "--now", unit)
            if p.returncode != 0:
                machine.stop()
                raise BuildError(f"systemctl enable --now {unit} failed: {p.stderr.strip()[-300:]}")
    return machine


def systemd_view(machine: Machine | None, units: list[str]) -> dict[str, str]:
    """systemd's loaded view of each unit, as snapshot entries: a rollback must leave each
    unit's file, state and enablement as they were."""
    if machine is None:
        return {}
    props = ("FragmentPath", "ActiveState", "UnitFileState", "DropInPaths")
    return {
        f"systemd:{u}": " ".join(f"{k}={v}" for k, v in sorted(machine.show(u, *props).items()))
        for u in units
    }


def _ok(p: subprocess.CompletedProcess[str]) -> str | None:
    if p.returncode == 0:
        return None
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    return f"exit {p.returncode}: {lines[-1] if lines else ''}"


def _health(m: Manifest, root: Path, version: str | None = None) -> str | None:
    from installer.errors import HealthCheckError
    from installer.health import lookup_variables, wait_healthy

    try:
        wait_healthy(m.services.health, lookup_variables(m.lookups, root, version or m.to_version), root)
    except HealthCheckError as e:
        return e.message
    return None


def _version(m: Manifest, root: Path) -> str | None:
    from installer.preflight import read_version_file

    got = read_version_file(root, m.version_file)
    return None if got == m.to_version else f"{m.version_file} says {got}, not {m.to_version}"


def _schema(m: Manifest, root: Path) -> str | None:
    from installer.migrate import current_revision, database_url

    for db in m.databases:
        rev = current_revision(database_url(db, root), missing_ok=True)
        if rev != db.to_revision:
            return f"database {db.name} is at {rev}, not {db.to_revision}"
    return None


def _rollback(installer: Path, root: Path, env: dict[str, str] | None = None) -> str | None:
    p = _run([installer, "--root", root, "rollback"], env)
    if (problem := _ok(p)) is not None:
        return problem
    status = json.loads(_run([installer, "--root", root, "status", "--json"], env).stdout or "{}")
    broken = [line for line in status.get("log", []) if "downgrade failed" in line]
    return f"a downgrade failed (jumpkit restored the backup): {broken[0]}" if broken else None


def _exact(before: dict[str, str], after: dict[str, str], dbs_before: Any, dbs_after: Any) -> str | None:
    diff = differences(before, after)
    if diff:
        return "tree differs from the fresh from-release: " + ", ".join(diff)
    for name, was in dbs_before.items():
        now = dbs_after.get(name)
        if now != was:
            what = "revision" if (now or {}).get("revision") != was["revision"] else "rows"
            return f"database {name}: {what} differ from the fresh from-release"
    return None


def rpm_in(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``rpm --root ROOT ARGS`` in a private mount namespace with ROOT/proc mounted (the
    frozen installer of ``%posttrans`` runs chrooted and needs it)."""
    argv = " ".join(f"'{a}'" for a in map(str, args))  # our own paths and names: no quotes in them
    script = f'mount -t proc proc "$R/proc" && exec rpm --root "$R" --dbpath /var/lib/rpm {argv}'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "R": str(root)},
    )  # fmt: skip


def _rpm_apply(root: Path, rpm: Path, installer: Path, m: Manifest) -> str | None:
    """``rpm -U`` the bundle RPM; rpm exits 0 when %posttrans fails: the status decides."""
    if (problem := _ok(rpm_in(root, "-U", rpm))) is not None:
        return f"rpm -U {rpm.name}: {problem}"
    status = json.loads(_run([installer, "--root", root, "status", "--json"]).stdout or "{}")
    if status.get("status") != "finished":
        why = status.get("summary") or status.get("error") or ""
        return (f"rpm -U {rpm.name} exited 0 but the apply {m.from_version} -> {m.to_version} did not "
                f"finish: {status.get('status')}: {why}")  # fmt: skip
    return None


def _rpm_erase(root: Path, m: Manifest) -> str | None:
    name = rpm_names(m)[0]
    problem = _ok(rpm_in(root, "-e", name))
    return None if problem is None else f"rpm -e {name}: {problem}"


def as_manager(root: Path) -> None:
    """What a manager's OS has and a sandbox lacks, for the chrooted %posttrans: a /proc
    mount point and shell tools (a static busybox with its applets in /usr/bin, where the
    release does not put its own), and the usrmerge layout, ``/bin`` and ``/sbin`` links
    into ``/usr``, so that a hook's ``#!/bin/sh`` finds its shell as on the manager."""
    (root / "proc").mkdir(exist_ok=True)
    bin_dir = root / "usr/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (root / "usr/sbin").mkdir(exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin")):
        if not (root / link).exists() and not (root / link).is_symlink():
            (root / link).symlink_to(target)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy(busybox, bin_dir / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for tool in applets:
        if tool and "/" not in tool and not (bin_dir / tool).exists() and not (bin_dir / tool).is_symlink():
            (bin_dir / tool).symlink_to("busybox")


def _database_files(m: Manifest, root: Path) -> frozenset[str]:
    """The SQLite files of ``m``'s databases (and their journals), relative to ``root``."""
    from installer.migrate import database_url

    out = set()
    for db in m.databases:
        url = database_url(db, root)
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[-1]
            rel = os.path.relpath(path, root)
            out |= {rel, rel + "-journal", rel + "-wal", rel + "-shm"}
    return frozenset(out)


def _short_tmp() -> str:
    """A short directory for sandboxes (supervisord's unix socket path has a 107-byte limit)."""
    d = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
    return str(d)


def _start_supervisord(product: Product, root: Path) -> int | None:
    if product.spec.services.backend != "supervisord":
        return None
    conf = root / SUPERVISOR_CONF
    exe = Path(sys.executable).parent / "supervisord"
    subprocess.run([str(exe if exe.exists() else "supervisord"), "-c", str(conf)], check=True, timeout=60)
    pidfile = root / "var/run/supervisord.pid"
    for _ in range(500):
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.02)
    raise BuildError(f"supervisord did not start for the sandbox {root}")


def _stop(pid: int) -> None:
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    for _ in range(500):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)

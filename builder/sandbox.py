"""Laying out a release as a fresh install under a sandbox root, for demos and tests:
the release tree, its rendered configs, the product's init script, a trust store and a
supervisord config. Nothing here runs on a production manager."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

from builder.collect import normalized_mode, render_configs
from builder.errors import BuildError
from builder.spec import Product
from builder.trees import walk_tree
from installer.preflight import PRODUCT_MARKER

SUPERVISOR_CONF = "etc/supervisord.conf"


def lay_out(
    product: Product,
    version: str,
    root: Path,
    *,
    overrides: dict[str, str] | None = None,
    trust: list[Path] | None = None,
    python: str = sys.executable,
) -> None:
    """Install ``version`` of ``product`` into an empty ``root``.

    ``overrides`` are operator edits applied after rendering: ``section.key=value`` in the
    product's INI configs (e.g. ``server.port=18080``), as an operator would make them.

    Raises:
        BuildError: ``root`` is not empty, or the init script fails.
    """
    if root.exists() and any(root.iterdir()):
        raise BuildError(f"{root} is not empty")
    release = product.release_dir(version)
    if not release.is_dir():
        raise BuildError(f"no release {version} in {release.parent}")
    made = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        _lay_out(product, version, release, root, overrides, trust, python)
    except BaseException:
        # a half-made root would refuse the rerun ("is not empty"): what this run made goes
        if made:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for child in root.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        raise


def _lay_out(
    product: Product,
    version: str,
    release: Path,
    root: Path,
    overrides: dict[str, str] | None,
    trust: list[Path] | None,
    python: str,
) -> None:
    for rel, src in walk_tree(release / "root").items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_link:
            os.symlink(os.readlink(src.path), dest)
        else:
            shutil.copyfile(src.path, dest)
            os.chmod(dest, normalized_mode(rel, src.mode, {}))
    for rel, data in render_configs(product, version, dict(product.spec.variables)).items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        os.chmod(dest, 0o644)
    for item, value in (overrides or {}).items():
        _edit_ini(root, item, value)
    keys = root / "etc/jumpkit/trusted-keys"
    keys.mkdir(parents=True, exist_ok=True)
    (root / PRODUCT_MARKER).write_text(product.spec.product + "\n")
    for pub in trust or []:
        shutil.copyfile(pub, keys / pub.name)
    for d in ("var/run", "var/log", "var/lib"):
        (root / d).mkdir(parents=True, exist_ok=True)
    sb = product.spec.sandbox
    if sb.init:
        env = {**os.environ, "JUMPKIT_ROOT": str(root), "JUMPKIT_VERSION": version,
               "JUMPKIT_RELEASE": str(product.release_dir(version).resolve())}  # fmt: skip
        p = subprocess.run(
            [python, str(product.dir / sb.init), str(root)], capture_output=True, text=True, env=env
        )
        if p.returncode != 0:
            raise BuildError(f"sandbox init failed: {p.stderr.strip()[-300:]}")
    if product.spec.services.backend == "supervisord":
        write_supervisor_conf(product, root, python)


def _edit_ini(root: Path, item: str, value: str) -> None:
    section, _, option = item.partition(".")
    for cfg in sorted((root / "etc").rglob("*.ini")):
        cp = configparser.ConfigParser(interpolation=None)
        cp.read(cfg)
        if cp.has_option(section, option):
            lines = cfg.read_text().splitlines(keepends=True)
            in_section = False
            for i, line in enumerate(lines):
                s = line.strip()
                if s.startswith("["):
                    in_section = s == f"[{section}]"
                elif in_section and s.split("=", 1)[0].strip() == option:
                    lines[i] = f"{option} = {value}\n"
            cfg.write_text("".join(lines))
            return
    raise BuildError(f"no config under {root}/etc sets {section}.{option}")


def write_supervisor_conf(product: Product, root: Path, python: str) -> Path:
    """A supervisord config whose socket, pid file and logs live under the root."""
    sock = product.spec.services.socket or "var/run/supervisor.sock"
    r = root.resolve()
    lines = [
        "[unix_http_server]",
        f"file={r / sock}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={r}/var/log/supervisord.log",
        f"pidfile={r}/var/run/supervisord.pid",
        f"childlogdir={r}/var/log",
        "nodaemon=false",
        "silent=true",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{r / sock}",
        "",
    ]
    for svc in product.spec.services.services:
        argv = product.spec.sandbox.programs.get(svc.name)
        if argv is None:
            raise BuildError(f"sandbox.programs has no command for service {svc.name}")
        cmd = " ".join(a.replace("{root}", str(r)).replace("{python}", python) for a in argv)
        lines += [
            f"[program:{svc.name}]",
            f"command={cmd}",
            f"directory={r}",
            "startsecs=0",
            "startretries=0",
            "autorestart=false",
            "stopwaitsecs=5",
            "stopsignal=TERM",
            f"stdout_logfile={r}/var/log/{svc.name}.log",
            "redirect_stderr=true",
            "",
        ]
    conf = root / SUPERVISOR_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("\n".join(lines))
    return conf


def start_hint(product: Product, root: Path) -> str | None:
    """The command that starts the laid-out sandbox's services, for its user to run: its
    supervisord (from this tool's own environment, where it is installed), or a systemd
    booted with the sandbox as its ``/``."""
    backend = product.spec.services.backend
    if backend == "supervisord":
        exe = Path(sys.executable).parent / "supervisord"
        return f"{exe if exe.exists() else 'supervisord'} -c {root.resolve() / SUPERVISOR_CONF}"
    if backend == "systemd":
        return f"{sys.executable} -m builder.machine boot {root.resolve()} --state {root.resolve()}.machine"
    return None

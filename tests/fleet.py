"""A test fleet of manager hosts: each host is a network namespace (iproute2) reached over a
veth pair at 10.213.<i>.2, running a real sshd bound to that address, with its own manager
root and its own supervisord (started inside the namespace, so every demo service binds
127.0.0.1:<port> in its own network). Ansible reaches the hosts over real SSH as root with
a key made for the fleet. Everything is stopped by pid and removed on close()."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import make_sandbox, short_tmp, terminate

SUBNET = "10.213"


def _sh(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True)


def _wait_pidfile(path: Path, what: str) -> int:
    for _ in range(250):
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"{what} did not write {path}")


@dataclass
class FleetHost:
    name: str
    index: int
    netns: str
    root: Path
    port: int
    sshd_pid: int | None = None
    supervisord_pid: int | None = None

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}.2"

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host's network namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True, timeout=timeout
        )

    def served_version(self) -> str | None:
        """What the demo service answers on /version inside this host's network."""
        url = f"http://127.0.0.1:{self.port}/version"
        code = (
            "import urllib.request,sys\n"
            f"try: print(urllib.request.urlopen({url!r}, timeout=2).read().decode())\n"
            "except OSError: sys.exit(1)\n"
        )
        p = self.run(sys.executable, "-c", code)
        return p.stdout.strip() if p.returncode == 0 else None

    def installed(self) -> str:
        return (self.root / "opt/demo-manager/VERSION").read_text().strip()


@dataclass
class Fleet:
    base: Path
    hosts: list[FleetHost] = field(default_factory=list)
    inventory: Path | None = None

    @classmethod
    def create(
        cls, n: int, pub: Path, port: int, *, leader: int = 0, host_vars: dict[str, str] | None = None
    ) -> Fleet:
        """``n`` hosts m1..mn at 4.0.1, ``m<leader+1>`` the leader; ``host_vars``: extra INI
        inventory variables per host name."""
        base = short_tmp("jkf-")
        fleet = cls(base)
        try:
            key = base / "id_ed25519"
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", base / "host_key")
            (base / "authorized_keys").write_text((base / "id_ed25519.pub").read_text())
            (base / "authorized_keys").chmod(0o600)
            Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation dir
            tag = f"{os.getpid() % 100000}"
            for i in range(1, n + 1):
                h = fleet._host(i, tag, pub, port)
                (h.root / "var/lib/demo-manager/role").write_text(
                    "leader\n" if i - 1 == leader else "member\n"
                )
            fleet.inventory = fleet._inventory(key, host_vars or {})
        except BaseException:
            fleet.close()
            raise
        return fleet

    def _host(self, i: int, tag: str, pub: Path, port: int) -> FleetHost:
        netns = f"jkf{tag}-{i}"
        sb = make_sandbox("4.0.1", pub, port, supervise=False)
        h = FleetHost(f"m{i}", i, netns, sb.root, port)
        self.hosts.append(h)
        outer, inner = f"jkf{tag}{i}o"[:15], f"jkf{tag}{i}i"[:15]
        _sh("ip", "netns", "add", netns)
        _sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _sh("ip", "link", "set", inner, "netns", netns)
        _sh("ip", "addr", "add", f"{SUBNET}.{i}.1/24", "dev", outer)
        _sh("ip", "link", "set", outer, "up")
        _sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{h.address}/24", "dev", inner)
        _sh("ip", "netns", "exec", netns, "ip", "link", "set", inner, "up")
        _sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        conf = self.base / f"sshd-{i}.conf"
        conf.write_text(
            f"ListenAddress {h.address}\nPort 22\nHostKey {self.base / 'host_key'}\n"
            f"PidFile {self.base / f'sshd-{i}.pid'}\nAuthorizedKeysFile {self.base / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nMaxStartups 50\n"
            "Subsystem sftp internal-sftp\n"
        )
        _sh("ip", "netns", "exec", netns, "/usr/sbin/sshd", "-f", conf, "-E", self.base / f"sshd-{i}.log")
        h.sshd_pid = _wait_pidfile(self.base / f"sshd-{i}.pid", "sshd")
        supervisord = str(Path(sys.executable).parent / "supervisord")
        _sh("ip", "netns", "exec", netns, supervisord, "-c", h.root / "etc/supervisord.conf")
        h.supervisord_pid = _wait_pidfile(h.root / "var/run/supervisord.pid", "supervisord")
        for _ in range(250):
            if h.served_version() == "4.0.1":
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"{h.name}: the demo service did not answer 4.0.1")
        return h

    def _inventory(self, key: Path, host_vars: dict[str, str]) -> Path:
        lines = ["[managers]"]
        for h in self.hosts:
            lines.append(
                f"{h.name} ansible_host={h.address} jumpkit_root={h.root} {host_vars.get(h.name, '')}"
            )
        lines += [
            "",
            "[managers:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={key}",
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
            "ansible_python_interpreter=/usr/bin/python3",
        ]
        inv = self.base / "inventory.ini"
        inv.write_text("\n".join(lines) + "\n")
        return inv

    def host(self, name: str) -> FleetHost:
        return next(h for h in self.hosts if h.name == name)

    def close(self) -> None:
        for h in self.hosts:
            terminate(h.supervisord_pid)
            terminate(h.sshd_pid)
            p = subprocess.run(["ip", "netns", "pids", h.netns], capture_output=True, text=True)
            for pid in p.stdout.split():
                terminate(int(pid))
            subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)
            shutil.rmtree(h.root.parent, ignore_errors=True)
        self.hosts = []  # closing twice stops nothing twice (a pid may be reused)
        shutil.rmtree(self.base, ignore_errors=True)

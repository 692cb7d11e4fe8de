"""Benchmark: `bundle-build rollout` of the demo jump 4.0.1 -> 4.1.1 to three manager hosts
over real SSH (network namespaces with sshd, tests/fleet.py), against the loop an operator
would otherwise type, in the same run on a fresh fleet: for each host scp the installer and
the bundle, ssh `bundle-install stage`, then for each host ssh `bundle-install apply`.
Prints the total time of both, the ratio, and every host's outage; never fails on time.

    uv run python scripts/bench/rollout.py [--hosts 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import frozen_installer  # noqa: E402

from tests.fleet import Fleet  # noqa: E402
from tests.helpers import free_port  # noqa: E402


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *map(str, args)], capture_output=True, text=True, cwd=REPO
    )


def ssh_loop(fleet: Fleet, installer: Path, bundle: Path) -> float:
    """The home-made baseline: copy and stage host by host, then apply host by host."""
    key = fleet.base / "id_ed25519"
    opts = ["-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-q"]
    t0 = time.monotonic()
    for h in fleet.hosts:
        d = h.root / "var/lib/jumpkit/loop"
        subprocess.run(["ssh", *opts, f"root@{h.address}", f"mkdir -p {d}"], check=True)
        subprocess.run(["scp", *opts, str(installer), str(bundle), f"root@{h.address}:{d}/"], check=True)
        subprocess.run(
            [
                "ssh",
                *opts,
                f"root@{h.address}",
                f"{d}/bundle-install --root {h.root} stage {d}/{bundle.name}",
            ],
            check=True,
            capture_output=True,
        )
    for h in fleet.hosts:
        d = h.root / "var/lib/jumpkit/loop"
        subprocess.run(
            [
                "ssh",
                *opts,
                f"root@{h.address}",
                f"{d}/bundle-install --root {h.root} apply {d}/{bundle.name}",
            ],
            check=True,
            capture_output=True,
        )
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=3)
    a = ap.parse_args()
    frozen = frozen_installer()
    with tempfile.TemporaryDirectory(prefix="jk-bench-rollout-") as tmp:
        t = Path(tmp)
        assert cli("keygen", "--out", t, "--name", "k").returncode == 0
        p = cli("--from", "4.0.1", "--to", "4.1.1", "--key", t / "k.key", "--out", t, "--installer", frozen)
        assert p.returncode == 0, p.stderr
        bundle = t / "demo-manager-4.0.1-to-4.1.1.zip"
        size = bundle.stat().st_size
        port = free_port()
        fleet = Fleet.create(a.hosts, t / "k.pub", port)
        try:
            assert fleet.inventory is not None
            t0 = time.monotonic()
            p = cli("rollout", "-i", fleet.inventory, "--bundle", bundle, "--trust", t / "k.pub", "--json")
            rollout_s = time.monotonic() - t0
            assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
            doc = json.loads(p.stdout)
        finally:
            fleet.close()
        fleet = Fleet.create(a.hosts, t / "k.pub", port)
        try:
            installer = t / "bundle-install"
            installer.write_bytes(Path(frozen).read_bytes())
            installer.chmod(0o755)
            loop_s = ssh_loop(fleet, installer, bundle)
        finally:
            fleet.close()
    print(f"hosts: {a.hosts}; bundle {size} bytes")
    print(f"bundle-build rollout (Ansible, stage in parallel, leader last, health gates): {rollout_s:.1f} s")
    print(f"baseline ssh loop (scp + stage per host, then apply per host, no gates):      {loop_s:.1f} s")
    print(f"ratio rollout / ssh loop: {rollout_s / loop_s:.2f}x")
    for h in doc["hosts"]:
        apply_s = (h["apply_end"] or 0) - (h["apply_start"] or 0)
        print(
            f"  {h['name']} ({'leader' if h['leader'] else 'member'}, #{h['order']}): outage {h['outage_seconds']:.3f} s, "
            f"apply task {apply_s:.2f} s"
        )
    # where the time goes: each ansible-playbook run, and each host's tasks inside it
    print(
        "ansible-playbook runs (wall): "
        + ", ".join(f"{p['phase']} {p['seconds']:.1f} s" for p in doc["phases"])
    )
    tasks = list(dict.fromkeys(t for h in doc["hosts"] for t in h["task_seconds"]))
    print(f"  {'task':<22}" + "".join(f"{h['name']:>8}" for h in doc["hosts"]))
    for t in tasks:
        print(f"  {t:<22}" + "".join(f"{h['task_seconds'].get(t, 0):>7.2f}s" for h in doc["hosts"]))
    busy = sum(p["seconds"] for p in doc["phases"])
    print(
        f"  sum of runs {busy:.1f} s of {rollout_s:.1f} s; tasks on hosts: "
        + ", ".join(f"{h['name']} {sum(h['task_seconds'].values()):.1f} s" for h in doc["hosts"])
    )


if __name__ == "__main__":
    main()

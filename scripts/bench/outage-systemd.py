"""Benchmark: what a client sees of the demo jump 4.0.1 -> 4.1.1 under a real systemd
(builder/machine.py: PID 1 of its own namespaces, a sandbox manager as its /), a request
every 5 ms (a new connection each), for
  (a) a bare ``systemctl restart`` of the plain service (it binds its own port),
  (b) ``bundle-install apply`` with that plain unit,
  (c) ``bundle-install apply`` with the service socket-activated (demo-manager.socket
      stays up while the service stops, the files swap, the schema migrates and it starts).
Each run counts refused connections and resets and records the client-seen outage (from
the first failed request to the first answer after it) or, where nothing failed, the
longest request (a connection waiting in the socket's backlog). Runs are interleaved; each
apply gets a fresh sandbox and machine. Target (issue 33): (c) 0 refused and 0 reset in
every run, its longest request <= 1.2x (b)'s outage; (b) <= 1.2x (a). Never fails on
absolute time.

    uv run python scripts/bench/outage-systemd.py [--repeat 9] [--json]
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cli, keygen, parser, python

sys.path.insert(0, str(REPO))
from builder.machine import Machine

EXAMPLE = REPO / "examples/systemd/demo-manager"
DEMO = REPO / "specs/demo-manager"


class Client(threading.Thread):
    """GET /version every ``every`` s on a new connection: (start, end, outcome) each."""

    def __init__(self, port: int, every: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.port, self.every, self.stop_flag = port, every, threading.Event()
        self.seen: list[tuple[float, float, str]] = []
        self.why: list[str] = []
        """What each reset was, and when (seconds after the action began)."""
        self.began = time.perf_counter()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            t0 = time.perf_counter()
            data, why = b"", ""
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.sendall(b"GET /version HTTP/1.0\r\n\r\n")
                    while chunk := s.recv(4096):
                        data += chunk
                ok = b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].strip()
                what, why = ("ok", "") if ok else ("reset", f"answer {data[:60]!r}")
            except ConnectionRefusedError:
                what = "refused"
            except OSError as e:  # a reset, or a timeout: named in the run's line
                what, why = "reset", f"{type(e).__name__} after {len(data)} bytes"
            self.seen.append((t0, time.perf_counter(), what))
            if why:
                self.why.append(f"{why} at {t0 - self.began:+.3f}s")
            time.sleep(self.every)

    def figures(self) -> dict[str, float]:
        refused = sum(1 for *_, w in self.seen if w == "refused")
        reset = sum(1 for *_, w in self.seen if w == "reset")
        longest = max((b - a for a, b, w in self.seen if w == "ok"), default=0.0)
        outage = 0.0
        bad = [i for i, (*_, w) in enumerate(self.seen) if w != "ok"]
        if bad:
            after = next(
                (self.seen[i] for i in range(bad[-1] + 1, len(self.seen)) if self.seen[i][2] == "ok"), None
            )
            end = after[1] if after else self.seen[-1][1]
            outage = end - self.seen[bad[0]][0]
        return {"refused": refused, "reset": reset, "outage": outage, "longest": longest,
                "seen": max(outage, longest)}  # fmt: skip


def specs(work: Path, socketed: bool) -> Path:
    """The systemd demo product, socket-activated or with a plain unit that binds itself,
    copied afresh from this checkout's demo on each run (a copy kept from an older
    checkout would measure that checkout's service)."""
    d = work / ("socket" if socketed else "plain") / "demo-manager"
    shutil.copytree(DEMO, d, symlinks=False, ignore=shutil.ignore_patterns("product.yaml", "sandbox-init.py"))
    shutil.copyfile(DEMO / "sandbox-init.py", d / "sandbox-init.py")
    text = (
        (EXAMPLE / "product.yaml")
        .read_text()
        .replace("releases: ../../../specs/demo-manager/releases", "releases: releases")
    )
    if not socketed:
        text = text.replace("      socket: demo-manager.socket\n", "")
        for unit in (d / "releases").glob("*/root/etc/systemd/system/demo-manager.service"):
            unit.write_text(
                unit.read_text()
                .replace("Requires=demo-manager.socket\n", "")
                .replace("After=demo-manager.socket ", "After=")
            )
        for sock in (d / "releases").glob("*/root/etc/systemd/system/demo-manager.socket"):
            sock.unlink()
    (d / "product.yaml").write_text(text)
    return d.parent


def sandbox(spec_dir: Path, pub: Path, port: int, base: Path, socketed: bool) -> Machine:
    root = Path(tempfile.mkdtemp(prefix="jk-bsd-", dir=base)) / "r"
    cli("builder.cli", "sandbox", "--specs", str(spec_dir), "--version", "4.0.1", "--root", str(root),
        "--trust", str(pub), "--set", f"server.port={port}")  # fmt: skip
    units = ["demo-manager.service"]
    if socketed:
        drop = root / "etc/systemd/system/demo-manager.socket.d/port.conf"
        drop.parent.mkdir(parents=True)
        drop.write_text(f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
        units.insert(0, "demo-manager.socket")
    m = Machine(root).boot()
    for u in units:
        m.systemctl("enable", "--now", u)
    for _ in range(250):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.02)
    return m


def around(action, port: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    c = Client(port)
    c.start()
    time.sleep(0.3)
    c.began = time.perf_counter()
    action()
    time.sleep(0.3)
    c.stop_flag.set()
    c.join()
    if c.why:
        print("  resets: " + "; ".join(c.why), file=sys.stderr, flush=True)
    return c.figures()


def main() -> int:
    ap = parser(__doc__)
    ap.set_defaults(repeat=9)
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="jk-bsd-"))
    work = base / "specs"
    key, pub = keygen(base)
    bundles = {}
    for socketed in (False, True):
        sd = specs(work, socketed)
        out = base / ("socket" if socketed else "plain")
        cli("builder.cli", "--specs", str(sd), "--from", "4.0.1", "--to", "4.1.1", "--key", str(key),
            "--out", str(out), "--no-installer")  # fmt: skip
        bundles[socketed] = (sd, out / "demo-manager-4.0.1-to-4.1.1.zip")
    rows: dict[str, list[dict[str, float]]] = {"restart": [], "plain": [], "socket": []}
    port = 0
    for i in range(a.repeat):
        for name in ("restart", "plain", "socket"):
            socketed = name == "socket"
            sd, bundle = bundles[socketed]
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            m = sandbox(sd, pub, port, base, socketed)
            try:
                if name == "restart":
                    fig = around(lambda m=m: m.systemctl("restart", "demo-manager.service"), port)
                else:
                    env = m.env()
                    argv = [python(), "-m", "installer.cli", "--root", str(m.root), "apply", str(bundle)]

                    def apply(argv: list[str] = argv, env: dict[str, str] = env) -> None:
                        p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO)
                        if p.returncode != 0:
                            raise SystemExit(f"apply failed: {p.stderr[-600:]}")

                    fig = around(apply, port)
            finally:
                m.stop()
                shutil.rmtree(m.root.parent, ignore_errors=True)
            rows[name].append(fig)
            if not a.json:
                print(f"run {i + 1} {name:8} refused {fig['refused']:3.0f} reset {fig['reset']:2.0f} "
                      f"outage {fig['outage'] * 1000:6.1f} ms  longest request {fig['longest'] * 1000:6.1f} ms",
                      flush=True)  # fmt: skip
    shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(r["seen"] for r in v) for k, v in rows.items()}
    doc = {
        "runs": a.repeat,
        "restart_outage_ms": [round(r["outage"] * 1000, 1) for r in rows["restart"]],
        "plain_outage_ms": [round(r["outage"] * 1000, 1) for r in rows["plain"]],
        "socket_longest_ms": [round(r["longest"] * 1000, 1) for r in rows["socket"]],
        "refused": {k: [int(r["refused"]) for r in v] for k, v in rows.items()},
        "reset": {k: [int(r["reset"]) for r in v] for k, v in rows.items()},
        "median_ms": {k: round(v * 1000, 1) for k, v in med.items()},
        "plain_vs_restart": round(med["plain"] / med["restart"], 2) if med["restart"] else None,
        "socket_vs_plain": round(med["socket"] / med["plain"], 2) if med["plain"] else None,
        "socket_zero_refused_every_run": all(r["refused"] == 0 and r["reset"] == 0 for r in rows["socket"]),
    }
    if a.json:
        print(json.dumps(doc, indent=2))
        return 0
    spread = {
        k: (min(r["seen"] for r in v) * 1000, max(r["seen"] for r in v) * 1000) for k, v in rows.items()
    }
    print()
    print(f"{'':34} {'median':>8} {'spread':>17} {'refused (sum)':>14} {'reset (sum)':>12}")
    for k, label in (("restart", "(a) systemctl restart, plain unit"), ("plain", "(b) apply, plain unit"),
                     ("socket", "(c) apply, socket-activated")):  # fmt: skip
        lo, hi = spread[k]
        print(f"{label:34} {med[k] * 1000:6.1f}ms {lo:7.1f}-{hi:6.1f} ms {sum(r['refused'] for r in rows[k]):14.0f}"
              f" {sum(r['reset'] for r in rows[k]):12.0f}")  # fmt: skip
    print(f"(b)/(a) = {doc['plain_vs_restart']}x (target <= 1.2x); (c) longest request/(b) outage = "
          f"{doc['socket_vs_plain']}x (target <= 1.2x); (c) refused nothing in every run: "
          f"{doc['socket_zero_refused_every_run']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

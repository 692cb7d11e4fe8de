"""Benchmark: downloading a bundle through TUF from an S3-speaking server (moto_server in
its own process) with `bundle-install`'s fetch path (ngclient: metadata refresh, then the
target streamed through jumpkit's S3 store, length and sha256 checked) against a plain
boto3 `download_file` of the same object, in the same run. Prints MB/s and the ratio.

Client start (issue 23): `scripts/tuf-client refresh` (a fresh process, a cold metadata
dir) per call, against the floor any python-tuf client pays in this environment (a fresh
interpreter importing tuf.ngclient the ordinary way, which drags in boto3 through
securesystemslib's AWS signer); target <= 0.35 s. Never fails on absolute time.

    uv run python scripts/bench/fetch.py [--size-mb 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [str(REPO / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})  # fmt: skip
    try:
        import boto3

        from builder.tufrepo import Repo
        from installer.fetch import Client
        from installer.store import open_store

        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory(prefix="jk-bench-", dir=REPO / ".cache") as tmp:
            work = Path(tmp)
            blob = work / "bench-1.0.0-to-1.1.0.zip"
            with open(blob, "wb") as f:
                for _ in range(args.size_mb):
                    f.write(os.urandom(1 << 20))
            repo = Repo.init(open_store("s3://bench/repo"), work / "keys")
            names = repo.publish(
                [(blob, {"product": "bench", "from": "1.0.0", "to": "1.1.0", "format": "zip"})]
            )
            key = next(
                o["Key"] for o in s3.list_objects_v2(Bucket="bench", Prefix="repo/targets/")["Contents"]
            )
            root = work / "root"
            (root / "etc/jumpkit/tuf").mkdir(parents=True)
            (root / "etc/jumpkit/tuf/root.json").write_bytes((work / "keys/root.json").read_bytes())
            plain, tuf = [], []
            for i in range(args.repeat):
                dest = work / f"plain{i}"
                t0 = time.perf_counter()
                s3.download_file("bench", key, str(dest))
                plain.append(time.perf_counter() - t0)
                dest.unlink()
                out = work / f"tuf{i}"
                out.mkdir()
                t0 = time.perf_counter()
                client = Client(root, "s3://bench/repo")
                client.download(client.refresh(), names[0], out)
                tuf.append(time.perf_counter() - t0)
                (out / names[0]).unlink()
                for f in client.meta_dir.iterdir():  # a cold client each time: full refresh
                    if f.is_file():
                        f.unlink()
            client_t, floor_t = [], []
            tuf_client = [str(REPO / "scripts/tuf-client"), "--metadata-url", "s3://bench/repo/metadata"]
            for i in range(max(args.repeat, 5)):  # interleaved
                md = work / f"md{i}"
                md.mkdir()
                (md / "root.json").write_bytes((work / "keys/root.json").read_bytes())
                t0 = time.perf_counter()
                subprocess.run([*tuf_client, "--metadata-dir", str(md), "refresh"], check=True)
                client_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                subprocess.run([str(REPO / ".venv/bin/python"), "-c", "import tuf.ngclient"], check=True)
                floor_t.append(time.perf_counter() - t0)
            mb = args.size_mb * 1.048576
            p, t = statistics.median(plain), statistics.median(tuf)
            print(f"object: {args.size_mb} MiB random, moto_server on 127.0.0.1, median of {args.repeat}")
            print(f"plain boto3 download_file: {p:.2f}s = {mb / p:.0f} MB/s")
            print(f"jumpkit TUF fetch (refresh + download + sha256): {t:.2f}s = {mb / t:.0f} MB/s")
            print(f"ratio (TUF fetch / plain boto3 time): {t / p:.2f}x")
            c, fl = statistics.median(client_t), statistics.median(floor_t)
            print(f"tuf-client refresh per call: median {c:.2f}s (min {min(client_t):.2f}, max {max(client_t):.2f}; "
                  f"target <= 0.35s); python-tuf import floor {fl:.2f}s; ratio {c / fl:.2f}x")  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

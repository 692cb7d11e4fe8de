"""Signed distribution through object storage: TUF metadata published to a real
S3-speaking server (moto_server, its own process) and to file://, fetched and applied;
each TUF attack refused with exit 3 and nothing kept; an interrupted download resumes."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.counts import count
from tests.crash.common import assert_exactly
from tests.helpers import REPO, Sandbox, build, free_port, install, tree_hash

BUCKET = "bundles"


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """moto_server on 127.0.0.1 (a subprocess, stopped by pid); boto3 is pointed at it the
    way an operator would point it at MinIO: AWS_ENDPOINT_URL and credentials in the env."""
    port = free_port()
    proc = subprocess.Popen(
        [str(REPO / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def obj(key: str) -> bytes:
    import boto3

    return bytes(boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())


def put(key: str, data: bytes) -> None:
    import boto3

    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=data)


@pytest.fixture(scope="module")
def published(
    s3: str, tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], chain_bundles: list[Path]
) -> dict[str, object]:
    """4.0.1 -> 4.1.1 and 4.1.1 -> 4.2.0 published to s3://bundles/prod and file://."""
    d = tmp_path_factory.mktemp("tuf")
    out: dict[str, object] = {"keys": d / "keys", "s3": f"s3://{BUCKET}/prod", "file": (d / "repo").as_uri()}
    for url in (out["s3"], out["file"]):
        k = d / "keys" if url == out["s3"] else d / "fkeys"
        p = build("repo", "init", "--repo", url, "--keys", k)
        assert p.returncode == 0, p.stderr
        p = build("publish", "--repo", url, "--keys", k, "--trust", keys["pub"], *chain_bundles[1:], "--json")
        assert p.returncode == 0, p.stderr
        assert len(json.loads(p.stdout)["published"]) == 2
        out["root" if url == out["s3"] else "froot"] = k / "root.json"
    return out


def pin(sb: Sandbox, root_json: object) -> None:
    (sb.root / "etc/jumpkit/tuf").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(str(root_json), sb.root / "etc/jumpkit/tuf/root.json")


def nothing_kept(sb: Sandbox) -> bool:
    d = sb.root / "var/lib/jumpkit/demo-manager"
    return not any((d / "downloads").glob("*")) and not any((d / "staging").glob("*"))


@pytest.mark.parametrize("where", ["s3", "file"])
def test_fetch_and_apply_through_tuf(
    where: str, published: dict[str, object], sandbox: Callable[..., Sandbox], expected: dict[str, object]
) -> None:
    sb = sandbox("4.0.1")
    pin(sb, published["root" if where == "s3" else "froot"])
    p = install("--root", sb.root, "apply", "--repo", published[where], "--to", "4.1.1")  # type: ignore[arg-type]
    assert p.returncode == 0, p.stderr
    assert "in 1 bundle(s)" in p.stderr and "upgraded 4.0.1 -> 4.1.1" in p.stdout
    assert_exactly(sb, expected, "new", "4.1.1")
    downloads = sb.root / "var/lib/jumpkit/demo-manager/downloads"
    assert not list(downloads.iterdir()), "the committed apply leaves the bundle it fetched"


def test_fetch_a_chain_and_without_a_pinned_root(
    published: dict[str, object], sandbox: Callable[..., Sandbox]
) -> None:
    sb = sandbox("4.0.1", supervise=False)
    p = install("--root", sb.root, "fetch", "--repo", published["s3"], "--to", "4.2.0")  # type: ignore[arg-type]
    assert p.returncode == 4 and "no trusted TUF root" in p.stderr
    pin(sb, published["root"])
    p = install("--root", sb.root, "fetch", "--repo", published["s3"], "--to", "4.2.0", "--json")  # type: ignore[arg-type]
    assert p.returncode == 0, p.stderr
    names = [Path(b).name for b in json.loads(p.stdout)["bundles"]]
    assert names == ["demo-manager-4.0.1-to-4.1.1.zip", "demo-manager-4.1.1-to-4.2.0.zip"]
    p = install("--root", sb.root, "fetch", "--repo", published["s3"], "--to", "5.0.0")  # type: ignore[arg-type]
    assert p.returncode == 4 and "offers no way from 4.0.1 to 5.0.0" in p.stderr


# --- attacks ----------------------------------------------------------------------------


def _repo(published: dict[str, object], **expiry: int):  # type: ignore[no-untyped-def]
    from builder.tufrepo import Keys, Repo
    from installer.store import open_store

    return Repo(open_store(str(published["s3"])), Keys.load(Path(str(published["keys"]))), expiry or None)


def attack_rollback(published: dict[str, object], sb: Sandbox) -> Callable[[], None]:
    """The client has seen a newer timestamp; the repository then serves an older one."""
    old = obj("prod/metadata/timestamp.json")
    _repo(published).refresh()
    assert install("--root", sb.root, "fetch", "--repo", published["s3"], "--to", "4.1.1").returncode == 0  # type: ignore[arg-type]
    shutil.rmtree(sb.root / "var/lib/jumpkit/demo-manager/downloads")  # not reused: fetched again
    newer = obj("prod/metadata/timestamp.json")
    put("prod/metadata/timestamp.json", old)
    return lambda: put("prod/metadata/timestamp.json", newer)


def attack_freeze(published: dict[str, object], sb: Sandbox) -> Callable[[], None]:
    """A timestamp that expired (a frozen repository or a stale mirror)."""
    good = obj("prod/metadata/timestamp.json")
    r = _repo(published)
    r.expiry["timestamp"] = -1
    r.refresh()
    return lambda: put("prod/metadata/timestamp.json", good)


def attack_mix_and_match(published: dict[str, object], sb: Sandbox) -> Callable[[], None]:
    """The targets file the snapshot names, replaced by an older (validly signed) one."""
    ts = json.loads(obj("prod/metadata/timestamp.json"))
    snap = json.loads(obj(f"prod/metadata/{ts['signed']['meta']['snapshot.json']['version']}.snapshot.json"))
    v = snap["signed"]["meta"]["targets.json"]["version"]
    key = f"prod/metadata/{v}.targets.json"
    good = obj(key)
    put(key, obj(f"prod/metadata/{v - 1}.targets.json"))
    return lambda: put(key, good)


def _target_key(name: str) -> str:
    import boto3

    keys = [
        o["Key"]
        for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="prod/targets/")["Contents"]
    ]
    return next(k for k in keys if k.endswith(name))


def attack_arbitrary_target(published: dict[str, object], sb: Sandbox) -> Callable[[], None]:
    """The bundle's bytes replaced in the bucket (same length)."""
    key = _target_key("demo-manager-4.0.1-to-4.1.1.zip")
    good = obj(key)
    put(key, good[:100] + bytes([good[100] ^ 1]) + good[101:])
    return lambda: put(key, good)


def attack_endless_data(published: dict[str, object], sb: Sandbox) -> Callable[[], None]:
    """The object is longer than its TUF length."""
    key = _target_key("demo-manager-4.0.1-to-4.1.1.zip")
    good = obj(key)
    put(key, good + b"\0" * (4 << 20))
    return lambda: put(key, good)


def attack_below_threshold(published: dict[str, object], sb: Sandbox) -> Callable[[], None]:
    """The current targets file re-signed by a key the root does not list for targets."""
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata

    ts = json.loads(obj("prod/metadata/timestamp.json"))
    snap = json.loads(obj(f"prod/metadata/{ts['signed']['meta']['snapshot.json']['version']}.snapshot.json"))
    key = f"prod/metadata/{snap['signed']['meta']['targets.json']['version']}.targets.json"
    good = obj(key)
    md = Metadata.from_bytes(good)
    md.signed.expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    md.sign(CryptoSigner.generate_ed25519())  # replaces the trusted signature
    put(key, md.to_bytes())
    return lambda: put(key, good)


ATTACKS = {
    "rollback": (attack_rollback, "rollback attack"),
    "freeze": (attack_freeze, "expired metadata"),
    "mix-and-match": (attack_mix_and_match, "TUF"),
    "arbitrary-target": (attack_arbitrary_target, "do not match the signed metadata"),
    "endless-data": (attack_endless_data, "longer than the signed length"),
    "below-threshold": (attack_below_threshold, "not signed by enough trusted keys"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_tuf_attack_is_refused(
    attack: str, published: dict[str, object], sandbox: Callable[..., Sandbox]
) -> None:
    sb = sandbox("4.0.1", supervise=False)
    pin(sb, published["root"])
    make, phrase = ATTACKS[attack]
    undo = make(published, sb)
    try:
        before = tree_hash(sb.root)
        for argv in (["fetch"], ["apply"]):
            p = install("--root", sb.root, *argv, "--repo", published["s3"], "--to", "4.1.1")  # type: ignore[arg-type]
            lines = [ln for ln in p.stderr.splitlines() if ln.startswith("bundle-install:")]
            assert p.returncode == 3, f"{argv}: {p.returncode} {p.stderr}"
            assert len(lines) == 1 and phrase in lines[0], p.stderr
            assert nothing_kept(sb) and tree_hash(sb.root) == before
    finally:
        undo()
    count("TUF attacks refused by fetch and apply --repo")


# --- resume, export, rotation ------------------------------------------------------------


class FlakyProxy(http.server.ThreadingHTTPServer):
    """In front of moto, counting the target bytes it serves: ``cut`` sends half of the next
    target and hangs up, then (``stay_away``) answers every target request with a 503, as a
    server gone for longer than a run's retries; ``away`` sets that directly."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str | None]] = []
        self.served = 0
        self.cut = False
        self.stay_away = True
        self.away = False
        super().__init__(("127.0.0.1", 0), _FlakyHandler)


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    server: FlakyProxy

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        target = "/targets/" in self.path
        if target:
            self.server.requests.append((self.path, rng))
            if self.server.away:
                self.send_error(503)
                return
        req = urllib.request.Request(self.server.upstream + self.path, headers={"Range": rng} if rng else {})
        try:
            with urllib.request.urlopen(req) as r:
                body, status, ctype = r.read(), r.status, r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            self.send_error(e.code)
            return
        cut = target and self.server.cut
        sent = body[: len(body) // 2] if cut else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(sent)
        if target:
            self.server.served += len(sent)
        if cut:
            self.server.cut, self.server.away = False, self.server.stay_away
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror(s3: str) -> Iterator[tuple[FlakyProxy, str]]:
    """A public read-only https-style mirror of the repository, through a FlakyProxy."""
    import boto3

    read = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{BUCKET}/prod/*",
    }
    boto3.client("s3").put_bucket_policy(
        Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [read]})
    )
    proxy = FlakyProxy(s3)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield proxy, f"http://127.0.0.1:{proxy.server_address[1]}/{BUCKET}/prod"
    finally:
        proxy.shutdown()


def test_interrupted_download_resumes_with_range(
    mirror: tuple[FlakyProxy, str], published: dict[str, object], sandbox: Callable[..., Sandbox]
) -> None:
    """Through https:// (a read-only mirror; plain http to the local test proxy): the
    connection is cut halfway through the bundle; the fetch asks for the rest with Range
    and the bundle verifies."""
    proxy, url = mirror
    proxy.cut, proxy.stay_away = True, False
    sb = sandbox("4.0.1", supervise=False)
    pin(sb, published["root"])
    p = install("--root", sb.root, "fetch", "--repo", url, "--to", "4.1.1")
    assert p.returncode == 0, p.stderr
    gets = proxy.requests
    assert (
        len(gets) == 2 and gets[0][1] is None and gets[1][1] is not None and gets[1][1].startswith("bytes=")
    )
    assert int(gets[1][1].removeprefix("bytes=").rstrip("-")) > 0


def test_a_second_fetch_transfers_no_bundle_byte_again(
    mirror: tuple[FlakyProxy, str], published: dict[str, object], sandbox: Callable[..., Sandbox]
) -> None:
    """Verified downloads are a cache keyed by the target's sha256, re-checked against the
    metadata of the new run; a committed apply removes what it used, unstage the rest
    (issue 36, item 2)."""
    proxy, url = mirror
    sb = sandbox("4.0.1", supervise=False)
    pin(sb, published["root"])
    p = install("--root", sb.root, "fetch", "--repo", url, "--to", "4.2.0")
    assert p.returncode == 0, p.stderr
    first = proxy.served
    assert first > 0 and "downloaded " in p.stderr
    p = install("--root", sb.root, "fetch", "--repo", url, "--to", "4.2.0")
    assert p.returncode == 0, p.stderr
    assert proxy.served == first, f"the second fetch transferred {proxy.served - first} bundle bytes"
    assert f"downloaded 0 bytes; {first} bytes reused" in p.stderr, p.stderr
    downloads = sb.root / "var/lib/jumpkit/demo-manager/downloads"
    assert len(list(downloads.iterdir())) == 2
    p = install("--root", sb.root, "unstage")
    assert p.returncode == 0 and "2 downloaded bundle(s) removed" in p.stdout + p.stderr, p.stdout + p.stderr
    assert not list(downloads.iterdir())


def test_a_fetch_cut_off_resumes_on_the_next_run(
    mirror: tuple[FlakyProxy, str], published: dict[str, object], sandbox: Callable[..., Sandbox]
) -> None:
    """The server goes away mid-transfer for longer than the retries: the run fails (its
    partial file stays, untrusted); the next run asks for the rest with a Range request,
    and the bytes are checked against the signed hash before anything uses them."""
    proxy, url = mirror
    sb = sandbox("4.0.1", supervise=False)
    pin(sb, published["root"])
    proxy.cut = True
    p = install("--root", sb.root, "fetch", "--repo", url, "--to", "4.1.1")
    assert p.returncode != 0 and "transfer failed" in p.stderr, p.stderr
    half = proxy.served
    parts = list((sb.root / "var/lib/jumpkit/demo-manager/downloads").glob("*/*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == half
    proxy.away, proxy.requests = False, []
    p = install("--root", sb.root, "fetch", "--repo", url, "--to", "4.1.1")
    assert p.returncode == 0, p.stderr
    (_, rng), *more = proxy.requests
    assert not more and rng == f"bytes={half}-", proxy.requests
    assert not list((sb.root / "var/lib/jumpkit/demo-manager/downloads").glob("*/*.part"))


def test_export_for_an_air_gapped_site(
    published: dict[str, object], tmp_path: Path, sandbox: Callable[..., Sandbox]
) -> None:
    p = build("repo", "export", "--repo", published["s3"], "--to", tmp_path / "carry", "--json")  # type: ignore[arg-type]
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["files"] >= 6
    sb = sandbox("4.0.1", supervise=False)
    pin(sb, published["root"])
    p = install("--root", sb.root, "fetch", "--repo", (tmp_path / "carry").as_uri(), "--to", "4.2.0")
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("role", ["timestamp", "targets"])
def test_key_rotation(role: str, published: dict[str, object], sandbox: Callable[..., Sandbox]) -> None:
    """A manager pinned to root v1 follows the rotation (root v2 signed by the root key)."""
    p = build("repo", "rotate", "--repo", published["s3"], "--keys", published["keys"], "--role", role)  # type: ignore[arg-type]
    assert p.returncode == 0, p.stderr
    assert (Path(str(published["keys"])) / f"{role}.key.retired").exists()
    sb = sandbox("4.0.1", supervise=False)
    pin(sb, published["root"])
    p = install("--root", sb.root, "fetch", "--repo", published["s3"], "--to", "4.1.1")  # type: ignore[arg-type]
    assert p.returncode == 0, p.stderr


def test_conformance_client_cli(published: dict[str, object], tmp_path: Path) -> None:
    """scripts/tuf-client speaks the tuf-conformance client-under-test protocol over our
    stores: init, refresh, download (cached the second time), exit 1 on failure."""
    cli = str(REPO / "scripts/tuf-client")
    repo = str(published["file"])
    md, tg = tmp_path / "md", tmp_path / "tg"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cli, "--metadata-dir", str(md), *args], capture_output=True, text=True, timeout=60
        )

    assert run("init", str(published["froot"])).returncode == 0
    assert sorted(p.name for p in md.iterdir()) == ["root.json"]
    assert run("--metadata-url", f"{repo}/metadata", "refresh").returncode == 0
    assert {"root.json", "timestamp.json", "snapshot.json", "targets.json"} <= {p.name for p in md.iterdir()}
    tg.mkdir()
    args = [
        "--metadata-url",
        f"{repo}/metadata",
        "--target-base-url",
        f"{repo}/targets",
        "--target-dir",
        str(tg),
    ]
    p = run(*args, "--target-name", "demo-manager-4.0.1-to-4.1.1.zip", "download")
    assert p.returncode == 0, p.stderr
    got = tg / "demo-manager-4.0.1-to-4.1.1.zip"
    mtime = got.stat().st_mtime_ns
    assert run(*args, "--target-name", "demo-manager-4.0.1-to-4.1.1.zip", "download").returncode == 0
    assert got.stat().st_mtime_ns == mtime  # cached: not downloaded again
    p = run(*args, "--target-name", "no-such-target.zip", "download")
    assert p.returncode == 1 and "no such target" in p.stderr
    # a repository serving expired metadata: refresh fails with exit 1
    ts = Path(repo.removeprefix("file://")) / "metadata/timestamp.json"
    doc = json.loads(ts.read_text())
    doc["signed"]["expires"] = "2000-01-01T00:00:00Z"
    doc["signed"]["version"] += 1
    ts.write_text(json.dumps(doc))
    p = run("--metadata-url", f"{repo}/metadata", "refresh")
    assert p.returncode == 1 and "tuf-client:" in p.stderr


def test_s3_reads_are_signed_with_sigv4(s3: str) -> None:
    from installer.store import S3Store

    url, headers = S3Store(f"s3://{BUCKET}/prod", BUCKET, "prod")._signed("prod/metadata/root.json", 10)
    assert url == f"{s3}/{BUCKET}/prod/metadata/root.json"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=test/")
    assert headers["Range"] == "bytes=10-" and "X-Amz-Date" in headers


def test_frozen_installer_fetches_and_applies_through_s3(
    frozen: Path, published: dict[str, object], sandbox: Callable[..., Sandbox], expected: dict[str, object]
) -> None:
    """The real frozen binary (no boto3 inside): TUF refresh, signed S3 GETs, apply."""
    sb = sandbox("4.0.1")
    pin(sb, published["root"])
    p = subprocess.run(
        [str(frozen), "--root", str(sb.root), "apply", "--repo", str(published["s3"]), "--to", "4.1.1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert_exactly(sb, expected, "new", "4.1.1")


def test_a_missing_bucket_is_named_and_no_key_is_left(
    published: dict[str, object], tmp_path: Path, keys: dict[str, Path], chain_bundles: list[Path]
) -> None:
    """repo init and publish on a bucket that does not exist say so in one line (not an
    internal error, not 'run repo init first'); init makes no key before the repository
    is known to be writable, --create-bucket makes it, and a rerun after an init that was
    cut off continues with the keys it left (issue 36, items 8, 9)."""
    url, k = "s3://no-such-bucket/prod", tmp_path / "k"
    p = build("repo", "init", "--repo", url, "--keys", k)
    assert p.returncode == 1, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line == (
        "bundle-build: s3://no-such-bucket/prod: bucket 'no-such-bucket' does not exist: create it first "
        "(aws s3 mb s3://no-such-bucket, or 'bundle-build repo init --create-bucket')"
    ), p.stderr
    assert not k.exists() or not list(k.iterdir())
    signing = Path(str(published["keys"]))
    p = build("publish", "--repo", url, "--keys", signing, "--trust", keys["pub"], chain_bundles[1])
    assert p.returncode != 0 and "bucket 'no-such-bucket' does not exist" in p.stderr, p.stderr
    assert "repo init' first" not in p.stderr
    k.mkdir(exist_ok=True)
    from builder.tufrepo import _new_key

    for role in ("root", "targets", "snapshot", "timestamp"):  # what an init cut off leaves
        _new_key(k / f"{role}.key")
    before = sorted(f.read_bytes() for f in k.glob("*.key"))
    p = build("repo", "init", "--repo", url, "--keys", k, "--create-bucket")
    assert p.returncode == 0, p.stderr
    assert sorted(f.read_bytes() for f in k.glob("*.key")) == before, "the rerun made new keys"
    p = build("repo", "init", "--repo", url, "--keys", k)
    assert p.returncode == 1 and "is initialised already" in p.stderr, p.stderr
    p = build("publish", "--repo", url, "--keys", k, "--trust", keys["pub"], chain_bundles[1])
    assert p.returncode == 0, p.stderr


def test_fetch_says_what_to_run_next(published: dict[str, object], sandbox: Callable[..., Sandbox]) -> None:
    sb = sandbox("4.0.1", supervise=False)
    pin(sb, published["root"])
    p = install("--root", sb.root, "fetch", "--repo", published["s3"], "--to", "4.1.1")  # type: ignore[arg-type]
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith(f"next: bundle-install --root {sb.root} apply ") and last.endswith(
        "demo-manager-4.0.1-to-4.1.1.zip"
    ), p.stdout


def test_trust_pin_root_checks_and_places_the_root(
    published: dict[str, object], sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """One command instead of mkdir and cp (issue 36, item 13): a TUF root signed by its own
    keys is placed; anything else is refused and nothing is placed; another pinned root is
    replaced only with --replace."""
    sb = sandbox("4.0.1", supervise=False)
    pinned = sb.root / "etc/jumpkit/tuf/root.json"
    junk = tmp_path / "junk.json"
    junk.write_text('{"signed": {"_type": "targets"}}')
    p = install("--root", sb.root, "trust", "pin-root", junk)
    assert p.returncode == 3 and "not a TUF root" in p.stderr and not pinned.exists(), p.stderr
    root_json = Path(str(published["root"]))
    tampered = tmp_path / "tampered.json"
    doc = json.loads(root_json.read_text())
    doc["signed"]["version"] = 7
    tampered.write_text(json.dumps(doc))
    p = install("--root", sb.root, "trust", "pin-root", tampered)
    assert p.returncode == 3 and "not a TUF root signed by its own keys" in p.stderr and not pinned.exists()
    p = install("--root", sb.root, "trust", "pin-root", root_json)
    assert p.returncode == 0 and "pinned TUF root version 1 at" in p.stdout, p.stdout + p.stderr
    assert pinned.read_bytes() == root_json.read_bytes()
    p = install("--root", sb.root, "trust", "pin-root", root_json)
    assert p.returncode == 0 and "nothing to do" in p.stdout
    other = Path(str(published["froot"]))
    p = install("--root", sb.root, "trust", "pin-root", other)
    assert p.returncode == 4 and "--replace" in p.stderr and pinned.read_bytes() == root_json.read_bytes()
    p = install("--root", sb.root, "trust", "pin-root", other, "--replace")
    assert p.returncode == 0 and pinned.read_bytes() == other.read_bytes()
    p = install("--root", sb.root, "trust", "pin-root", root_json, "--replace")
    assert p.returncode == 0 and pinned.read_bytes() == root_json.read_bytes()
    p = install("--root", sb.root, "fetch", "--repo", published["s3"], "--to", "4.1.1")  # type: ignore[arg-type]
    assert p.returncode == 0, p.stderr  # what is pinned is what fetch trusts

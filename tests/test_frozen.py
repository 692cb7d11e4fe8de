"""The frozen installer (issue 5): what it contains, that it runs where the managers are
(an empty chroot, a noexec /tmp), and the end-to-end paths driven through the binary that a
release bundle carries: apply with migrations under supervisord, a tampered bundle, a crash
then resume."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from builder.errors import BuildError
from builder.frozen import probe_installer
from installer import READABLE_FORMATS, __version__, resident
from installer.migrate import MIGRATION_STDLIB, current_revision
from tests.helpers import REPO, Sandbox, build, build_demo, sqlite_url, tree_hash
from tests.hostile.corpus import payload_byte_changed, read

FREEZE_PY = REPO / ".cache/freeze/venv/bin/python"


def run(exe: Path, *args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(exe), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def shipped(release_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/bundle-install taken out of the release bundle, as an operator does."""
    d = tmp_path_factory.mktemp("shipped")
    with zipfile.ZipFile(release_bundle) as z:
        exe = d / "bundle-install"
        exe.write_bytes(z.read("bin/bundle-install"))
    exe.chmod(0o755)
    return exe


def in_namespace(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a private mount namespace: its mounts vanish with it."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-euc", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def _entries_across_frames(binary: Path) -> list[str]:
    """The files of ``binary``'s tree whose data a frame boundary cuts."""
    p = resident.payload(binary)
    assert p is not None
    with binary.open("rb") as f:
        stream = resident._Stream(f, p)
        assert stream.frames is not None
        bounds, at = [], 0
        for _, dsize in reversed(stream.frames):
            at += dsize
            bounds.append(at)
        cut = []
        for kind, name, _, length, _ in resident.entries(stream):
            if kind == "f" and any(stream.pos < b < stream.pos + length for b in bounds):
                cut.append(name)
    return cut


def test_version_names_the_formats_it_reads(frozen: Path) -> None:
    """A portable start: the launcher unpacks frames cut inside entries (content-defined
    cuts: scripts/freeze/tree.py) before anything runs."""
    assert "app/bundle-install" in _entries_across_frames(frozen)
    assert frozen.stat().st_size <= 25_000_000  # what every full release bundle carries
    p = run(frozen, "--version")
    assert p.returncode == 0, p.stderr
    formats = ", ".join(map(str, READABLE_FORMATS))
    assert p.stdout.strip() == f"bundle-install {__version__} (bundle formats {formats})"


def test_contents_everything_the_installer_needs_and_nothing_of_the_builder(frozen: Path) -> None:
    script = (
        "import json, sys, tempfile, pathlib\n"
        f"sys.path.insert(0, {str(REPO / 'scripts/freeze')!r})\n"
        "from layers import unpack\n"
        "with tempfile.TemporaryDirectory() as t:\n"
        "    l = unpack(pathlib.Path(sys.argv[1]), pathlib.Path(t))\n"
        "    print(json.dumps({'layers': l.layers, 'modules': sorted(l.modules), 'elf': sorted(l.elf),\n"
        "                      'builtin': sys.builtin_module_names}))\n"
    )
    p = subprocess.run(
        [str(FREEZE_PY), "-c", script, str(frozen)], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [layer.split(": ")[1] for layer in doc["layers"]] == [
        "jumpkit launcher (static)",
        "jumpkit tree (loader, glibc, one-dir)",
        "PyInstaller one-dir",
    ]
    modules = set(doc["modules"])
    for needed in (
        "installer.cli",
        "installer.engine",
        "alembic.command",
        "alembic.runtime.migration",
        "sqlalchemy.dialects.sqlite.pysqlite",
        "sqlalchemy.dialects.postgresql.pg8000",
        "pg8000",
        "cryptography.hazmat.primitives.asymmetric.ed25519",
        "supervisor.xmlrpc",
        "installer.delta",
        "zstandard",  # zstd-patch deltas
        "bsdiff4",  # bsdiff deltas (its C core is checked among the ELF files below)
        "installer.confmerge",
        "installer.report",  # bundle-install report (support)
        "merge3",  # the 3-way merge of rewrite configs
    ):
        assert needed in modules, needed
    tops = {m.partition(".")[0] for m in modules}
    missing = [m for m in MIGRATION_STDLIB if m not in tops and m not in doc["builtin"]]
    assert not missing, f"modules migrations may import but the binary lacks: {missing}"
    assert not tops & {"builder", "jinja2", "yaml", "pytest"}, tops & {"builder", "jinja2", "yaml", "pytest"}
    assert any(e.endswith("libc.so.6") for e in doc["elf"]), "the portable build carries its own glibc"
    assert any("bsdiff4" in e and "core" in e for e in doc["elf"]), "bsdiff4's C core is missing"


def test_glibc_floor_of_the_portable_build_is_none(frozen: Path) -> None:
    p = subprocess.run(
        [str(REPO / "scripts/glibc-floor"), str(frozen), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["floor"] is None and doc["bundled_glibc"]
    assert re.fullmatch(r"GLIBC_2\.\d+(\.\d+)?", doc["highest_used"])


def test_runs_in_an_empty_chroot(frozen: Path, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    (root / "proc").mkdir(parents=True)
    (root / "tmp").mkdir(mode=0o1777)
    exe = root / "bundle-install"
    exe.write_bytes(frozen.read_bytes())
    exe.chmod(0o755)
    assert sorted(p.name for p in root.iterdir()) == ["bundle-install", "proc", "tmp"]
    p = in_namespace('mount -t proc proc "$R/proc"; chroot "$R" /bundle-install --version', R=str(root))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"bundle-install {__version__} ")


def test_noexec_tmpdir_still_runs_and_leaves_nothing(frozen: Path) -> None:
    """TMPDIR on a noexec mount: the launcher picks an exec-capable directory instead (/tmp,
    here a private tmpfs: other tests' installers unpack into the real /tmp meanwhile) and
    leaves nothing in either."""
    p = in_namespace(
        'exec 3<"$EXE"\n'
        "mount -t tmpfs tmpfs /tmp; mkdir /tmp/ne /tmp/bin; mount -t tmpfs -o noexec tmpfs /tmp/ne\n"
        "cat <&3 >/tmp/bin/bundle-install; chmod 755 /tmp/bin/bundle-install\n"
        "TMPDIR=/tmp/ne /tmp/bin/bundle-install --version\n"
        "ls -A /tmp/ne | wc -l; ls -A /tmp | tr '\\n' ' '",
        EXE=str(frozen),
    )
    assert p.returncode == 0, p.stderr
    version, leftovers, tmp = p.stdout.strip().splitlines()
    assert version.startswith("bundle-install ") and leftovers == "0"
    assert tmp.split() == ["bin", "ne"], tmp


def test_every_tmp_noexec_runs_from_the_binarys_directory(frozen: Path) -> None:
    """CIS-hardened host: /tmp and /var/tmp noexec; the bundle's own bin/ dir is used."""
    p = in_namespace(
        'exec 3<"$EXE"\n'
        "mount -t tmpfs -o noexec tmpfs /tmp; mount -t tmpfs -o noexec tmpfs /var/tmp\n"
        "mkdir /tmp/bin; mount -t tmpfs -o exec tmpfs /tmp/bin\n"
        "cat <&3 >/tmp/bin/bundle-install; chmod 755 /tmp/bin/bundle-install\n"
        "TMPDIR=/tmp /tmp/bin/bundle-install --version\n"
        "ls -A /tmp/bin",
        EXE=str(frozen),
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("bundle-install ") and lines[1:] == ["bundle-install"]


def test_no_exec_capable_directory_fails_with_one_line_naming_the_fix(frozen: Path) -> None:
    p = in_namespace(
        'exec 3<"$EXE"\n'
        "mount -t tmpfs -o noexec tmpfs /tmp; mount -t tmpfs -o noexec tmpfs /var/tmp\n"
        "mkdir /tmp/ro; mount -t tmpfs -o exec tmpfs /tmp/ro\n"
        "cat <&3 >/tmp/ro/bundle-install; chmod 755 /tmp/ro/bundle-install; mount -o remount,ro /tmp/ro\n"
        "rc=0; TMPDIR=/tmp /tmp/ro/bundle-install --version || rc=$?; exit $rc",
        EXE=str(frozen),
    )
    assert p.returncode == 4, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "noexec" in lines[0] and "set TMPDIR to a writable directory" in lines[0]


def test_release_bundle_records_the_installer(release_bundle: Path, frozen: Path) -> None:
    doc = json.loads(build("inspect", release_bundle, "--json").stdout)
    assert doc["development"] is False
    info = doc["manifest"]["installer"]
    assert info["version"] == __version__ and list(info["formats"]) == list(READABLE_FORMATS)
    assert info["sha256"] == hashlib.sha256(frozen.read_bytes()).hexdigest()
    member = next(m for m in doc["manifest"]["extras"] if m["name"] == "bin/bundle-install")
    assert member["mode"] == 0o755 and member["sha256"] == info["sha256"]
    human = build("inspect", release_bundle).stdout
    assert f"installer: bin/bundle-install {__version__}" in human and "DEVELOPMENT" not in human


def _fake_installer(path: Path, formats: str, note: str = "") -> Path:
    """A script that answers --version like bundle-install and counts its runs."""
    path.write_text(
        f"#!/bin/sh\n# {note}\necho run >> {path}.runs\n"
        f"echo 'bundle-install 9.9.9 (bundle formats {formats})'\n"
    )
    path.chmod(0o755)
    return path


def _runs(path: Path) -> int:
    runs = path.with_name(path.name + ".runs")
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_publishing_the_installer_never_leaves_it_missing(frozen: Path, tmp_path: Path) -> None:
    """Every pytest worker runs scripts/freeze-installer while the other may be building a
    bundle from dist/bundle-install: the same bytes stay untouched (same inode), and new bytes
    come in by a rename, so a reader never finds the path missing or half-written."""
    out = tmp_path / "bundle-install"
    freeze = [str(REPO / "scripts/freeze-installer"), "--out", str(out)]
    subprocess.run(freeze, check=True, capture_output=True, cwd=REPO, timeout=300)
    first = out.stat()
    subprocess.run(freeze, check=True, capture_output=True, cwd=REPO, timeout=300)
    assert out.stat().st_ino == first.st_ino, "the same bytes were copied again"
    with out.open("r+b") as f:
        f.seek(100)
        f.write(b"x")
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                size = out.stat().st_size
            except FileNotFoundError:
                seen.append("missing")
                continue
            if size != first.st_size:
                seen.append(f"size {size}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        subprocess.run(freeze, check=True, capture_output=True, cwd=REPO, timeout=300)
    finally:
        stop.set()
        watcher.join()
    assert seen == []
    assert out.stat().st_ino != first.st_ino
    assert out.read_bytes() == frozen.read_bytes()


def test_installer_probe_is_cached_by_content(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fake = _fake_installer(tmp_path / "bundle-install", "1")
    first = probe_installer(fake, cache=cache)
    second = probe_installer(fake, cache=cache)
    assert first == second and first.version == "9.9.9" and first.formats == (1,)
    assert _runs(fake) == 1  # the second build did not run it
    _fake_installer(fake, "1", note="other bytes, same path")
    probe_installer(fake, cache=cache)
    assert _runs(fake) == 2  # new content: probed afresh
    for entry in (cache / "installers").iterdir():
        entry.write_text("{not json")
    probe_installer(fake, cache=cache)
    assert _runs(fake) == 3  # an unreadable cache entry is a miss, not an error


def test_cached_probe_still_refuses_a_format_it_cannot_read(tmp_path: Path) -> None:
    fake = _fake_installer(tmp_path / "bundle-install", "99")
    for _ in range(2):
        with pytest.raises(BuildError, match="reads bundle formats"):
            probe_installer(fake, cache=tmp_path / "cache")
    assert _runs(fake) == 1


def test_build_refuses_an_installer_that_is_not_one(tmp_path: Path, keys: dict[str, Path]) -> None:
    fake = tmp_path / "bundle-install"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    p = build("--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", out, "--installer", fake)
    assert p.returncode != 0
    assert "'--version' failed" in p.stderr
    assert not out.exists() or not list(out.iterdir())


def test_apply_through_the_shipped_binary(
    sandbox: Callable[..., Sandbox], release_bundle: Path, shipped: Path
) -> None:
    sb = sandbox()
    assert current_revision(sqlite_url(sb.root)) == "0002"
    with zipfile.ZipFile(release_bundle) as z:  # built with the defaults: --delta, --solid, --sbom auto
        man = json.loads(z.read("manifest.json"))
    patched = [f for f in man["files"] if f.get("delta")]
    assert man["format"] == 5 and patched, "the release bundle carries no delta entry"
    assert man["sbom"] == "sbom/demo-manager-4.1.1.cdx.json" and man["changes"], (
        "no SBOM in the release bundle"
    )
    assert man["solids"], "the release bundle's small members are not in a solid member"
    p = run(shipped, "--root", sb.root, "apply", release_bundle)
    assert p.returncode == 0, p.stderr
    assert "replaying its rehearsal" in p.stderr, p.stderr  # the frozen code passes the audit hook
    assert sb.wait_version("4.1.1") == "4.1.1"
    for f in patched:  # built by the frozen binary from the 4.0.1 file and the patch
        assert hashlib.sha256((sb.root / f["path"]).read_bytes()).hexdigest() == f["sha256"], f["path"]
    assert current_revision(sqlite_url(sb.root)) == "0004"
    st = json.loads(run(shipped, "--root", sb.root, "status", "--json").stdout)
    assert st["status"] == "finished" and st["outage_seconds"] > 0


def test_the_managers_installer_starts_from_its_kept_tree(
    sandbox: Callable[..., Sandbox], release_bundle: Path, shipped: Path
) -> None:
    """Issue 23: the release bundle's installer becomes the manager's and is kept unpacked
    (bin/.trees/<id>, linked as bin/bundle-install.d). It then starts with no writable
    temporary directory at all (it unpacks nothing), where the same binary without its
    tree cannot (exit 4). A rollback of that apply removes the installer and its tree."""
    sb = sandbox()
    p = run(shipped, "--root", sb.root, "apply", release_bundle)
    assert p.returncode == 0, p.stderr
    bin_dir = sb.root / "var/lib/jumpkit/bin"
    inst = bin_dir / "bundle-install"
    payload = resident.payload(inst)
    assert payload is not None and resident.is_kept(inst)
    assert os.readlink(bin_dir / "bundle-install.d") == f".trees/{payload.id}"
    st = run(inst, "--root", sb.root, "status", "--json")
    assert st.returncode == 0 and json.loads(st.stdout)["status"] == "finished", st.stderr
    rep = run(inst, "--root", sb.root, "report", "--out", sb.root.parent / "report.tar.gz")
    assert rep.returncode == 0, rep.stderr
    with tarfile.open(sb.root.parent / "report.tar.gz") as tar:
        member = tar.extractfile("report/versions.json")
        assert member is not None
        versions = json.loads(member.read())
    managers = versions["installer_kept"]
    assert managers["unpacked"] is True and managers["version"] == __version__, managers
    p = in_namespace(
        'mkdir -p /mnt; mount -t tmpfs tmpfs /mnt; cp -a "$BIN" /mnt/kept; mkdir /mnt/bare\n'
        'cp "$BIN/bundle-install" /mnt/bare/; mount -o remount,ro /mnt\n'
        "mount -t tmpfs -o noexec tmpfs /tmp; mount -t tmpfs -o noexec tmpfs /var/tmp\n"
        'rc=0; TMPDIR=/tmp /mnt/kept/bundle-install --version || rc=$?; echo "kept exit $rc"\n'
        'rc=0; TMPDIR=/tmp /mnt/bare/bundle-install --version || rc=$?; echo "bare exit $rc"',
        BIN=str(bin_dir),
    )
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith(f"bundle-install {__version__} ") and lines[1:] == [
        "kept exit 0",
        "bare exit 4",
    ], p.stdout + p.stderr
    p = run(shipped, "--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    assert not inst.exists() and not (bin_dir / "bundle-install.d").is_symlink()
    assert not list((bin_dir / ".trees").iterdir()), "the rolled-back installer's tree is left"
    # the rollback run by the manager's installer itself runs from that tree: it stays
    # while in use, and the next run (here unstage) removes it (issue 36, item 6)
    assert run(shipped, "--root", sb.root, "apply", release_bundle).returncode == 0
    p = run(inst, "--root", sb.root, "rollback")
    assert p.returncode == 0, p.stderr
    assert not inst.exists() and len(list((bin_dir / ".trees").iterdir())) == 1
    p = run(shipped, "--root", sb.root, "unstage")
    assert p.returncode == 0 and "1 unused installer tree(s) removed" in p.stdout + p.stderr, (
        p.stdout + p.stderr
    )
    assert not list((bin_dir / ".trees").iterdir()), "unstage leaves the unused tree"


def test_tampered_bundle_rejected_by_the_binary(
    sandbox: Callable[..., Sandbox], release_bundle: Path, shipped: Path, tmp_path: Path
) -> None:
    sb = sandbox()
    before = tree_hash(sb.root)
    k = Ed25519PrivateKey.generate()
    man = json.loads(read(release_bundle)["manifest.json"])
    bad = payload_byte_changed(read(release_bundle), man, k, k, tmp_path / "bad.zip")
    p = run(shipped, "--root", sb.root, "apply", bad)
    assert p.returncode == 3, p.stderr
    assert tree_hash(sb.root) == before and sb.version() == "4.0.1"


def test_crash_then_resume_through_the_binary(
    sandbox: Callable[..., Sandbox], release_bundle: Path, shipped: Path
) -> None:
    sb = sandbox()
    p = run(shipped, "--root", sb.root, "apply", release_bundle, env={"JUMPKIT_FAILPOINT": "done:migrate"})
    assert p.returncode in (-9, 137), (p.returncode, p.stderr)
    st = json.loads(run(shipped, "--root", sb.root, "status", "--json").stdout)
    assert st["status"] == "working"
    p = run(shipped, "--root", sb.root, "resume")
    assert p.returncode == 0, p.stderr
    assert sb.wait_version("4.1.1") == "4.1.1"
    assert current_revision(sqlite_url(sb.root)) == "0004"


def test_the_bundles_installer_becomes_the_managers_and_the_next_run_uses_it(
    sandbox: Callable[..., Sandbox], keys: dict[str, Path], frozen: Path, tmp_path: Path
) -> None:
    """DRP's self-replacement: a jump that ships a newer installer leaves it on the manager,
    and the next run of the older binary hands over to it (same arguments)."""
    newer = tmp_path / "newer/bundle-install"
    newer.parent.mkdir()
    newer.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "bundle-install 9.9.9 (bundle formats 1)"; exit 0; fi\n'
        'echo "$@" > "$(dirname "$0")/ran-with"\n'
    )
    newer.chmod(0o755)
    p = build_demo(tmp_path / "dist", keys["key"], "--installer", newer)
    assert p.returncode == 0, p.stderr
    bundle = tmp_path / "dist/demo-manager-4.0.1-to-4.1.1.zip"
    sb = sandbox()
    p = run(frozen, "--root", sb.root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    installed = sb.root / "var/lib/jumpkit/bin/bundle-install"
    assert installed.read_bytes() == newer.read_bytes()
    assert json.loads((installed.parent / "bundle-install.json").read_text())["version"] == "9.9.9"

    p = run(frozen, "--root", sb.root, "status", "--json")
    assert p.returncode == 0, p.stderr
    assert "handing over to the manager's newer installer 9.9.9" in p.stderr
    assert (installed.parent / "ran-with").read_text().split() == ["--root", str(sb.root), "status", "--json"]

    p = run(frozen, "--root", sb.root, "rollback", env={"JUMPKIT_NO_REEXEC": "1"})
    assert p.returncode == 0, p.stderr
    assert sb.wait_version("4.0.1") == "4.0.1"
    assert not installed.exists(), "rollback puts the previous installer (here: none) back"


def test_the_lock_names_the_process_the_operator_started(
    sandbox: Callable[..., Sandbox], release_bundle: Path, shipped: Path
) -> None:
    """The shipped binary is a launcher that unpacks the installer and forks it: a second
    run is refused naming the launcher's pid (what the operator started and ``ps`` shows
    under that name), not its child's (issue 36, item 7)."""
    import signal
    import time

    sb = sandbox()
    first = subprocess.Popen(
        [str(shipped), "--root", str(sb.root), "apply", str(release_bundle)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JUMPKIT_FAILPOINT": "begin:stop-services=stop"},
    )  # fmt: skip
    lock = sb.root / "var/lib/jumpkit/demo-manager/lock"
    children = Path(f"/proc/{first.pid}/task/{first.pid}/children")
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip() and children.read_text().split()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    child = int(children.read_text().split()[0])
    while Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.02)  # frozen at its failpoint, holding the lock
    try:
        p = run(shipped, "--root", sb.root, "apply", release_bundle)
        assert p.returncode == 7, p.stderr
        assert f"another bundle-install run (pid {first.pid}) holds" in p.stderr, (first.pid, child, p.stderr)
        assert lock.read_text().strip() == str(first.pid)
    finally:
        os.kill(child, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err

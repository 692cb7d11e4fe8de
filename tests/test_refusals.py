"""Bad input and hostile-but-signed bundles end in one line with their documented exit
code (no traceback), and a refused run leaves the file system byte-identical."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import REPO, SPECS, Sandbox, build, free_port, install, short_tmp, tree_hash
from tests.hostile.corpus import _entry, read, write

MAX_SECONDS = 30  # a bounded read: a character device must not be read until memory runs out


def one_line(p: subprocess.CompletedProcess[str], prog: str = "bundle-install") -> str:
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith(f"{prog}:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def dir_hash(path: Path) -> str:
    """Every path under ``path`` (nothing excluded), with type, mode and content."""
    return tree_hash(path, exclude=())


# --- validly signed manifests that are wrong: exit 3 at verify ---------------------------
def _signed(bundle: Path, key: Path, out: Path, edit: Callable[[dict[str, object]], None]) -> Path:
    from builder.keys import load_private_key
    from installer.codec import canonical_json
    from installer.signing import sign_manifest

    members = read(bundle)
    manifest = json.loads(members["manifest.json"])
    edit(manifest)
    data = canonical_json(manifest).replace(b'"created":424242', b'"created":' + b"9" * 5000)
    return write(
        out, {**members, "manifest.json": data, "manifest.sig": sign_manifest(data, load_private_key(key))}
    )


def _huge_int(m: dict[str, object]) -> None:
    m["created"] = 424242  # written out as 5000 digits (Python itself refuses to print that)


def _non_semver(m: dict[str, object]) -> None:
    m["from_version"] = "4.0"


def _graph_non_semver(m: dict[str, object]) -> None:
    graph = m["graph"]
    assert isinstance(graph, dict)
    graph["jumps"] = [["4.0.1", "four"]]


def _long_component(m: dict[str, object]) -> None:
    files, entry, _ = _entry(m, {"payload/" + str(f["path"]): b"x" for f in m["files"]})  # type: ignore[attr-defined]
    entry["path"] = "opt/" + "a" * 256 + "/x"
    m["files"] = files


def _rule(pattern: str, replacement: str) -> Callable[[dict[str, object]], None]:
    def edit(m: dict[str, object]) -> None:
        for f in m["files"]:  # type: ignore[attr-defined]
            if f["rules"]:
                f["rules"] = [{"pattern": pattern, "replacement": replacement}]

    return edit


SIGNED_WRONG: dict[str, tuple[Callable[[dict[str, object]], None], str]] = {
    "integer-of-5000-digits": (_huge_int, "digits"),
    "non-semver-version": (_non_semver, "not a version"),
    "non-semver-in-graph": (_graph_non_semver, "not a version"),
    "component-over-255-bytes": (_long_component, "longer than 255 bytes"),
    "regex-does-not-compile": (_rule("tcp://([A-Z", "x"), "does not compile"),
    "replacement-names-missing-group": (_rule("tcp://(x)", r"\g<9>"), "invalid group reference"),
}


@pytest.mark.parametrize("case", sorted(SIGNED_WRONG))
def test_signed_but_wrong_manifest_exits_3(
    case: str, bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    edit, phrase = SIGNED_WRONG[case]
    bad = _signed(bundle, keys["key"], tmp_path / f"{case}.zip", edit)
    root = tmp_path / "root"
    root.mkdir()
    for command in ("verify", "stage", "apply"):
        p = install("--root", root, "--trust", keys["pub"], command, bad)
        assert p.returncode == 3, f"{command}: rc {p.returncode}: {p.stderr}"
        assert phrase in one_line(p), p.stderr
    assert not list(root.iterdir())


def _resigned(bundle: Path, key: Path, out: Path, version_file: bytes | None) -> Path:
    """``bundle`` with its version file's content replaced (None: its entry and member
    dropped), the manifest signed again: valid for its origin, wrong in content."""
    import hashlib

    from builder.keys import load_private_key
    from installer.codec import canonical_json
    from installer.signing import sign_manifest

    members = read(bundle)
    manifest = json.loads(members["manifest.json"])
    vf = manifest["version_file"]
    entry = next(f for f in manifest["files"] if f["path"] == vf)
    assert entry["kind"] == "file" and entry.get("delta") is None, entry
    if version_file is None:
        manifest["files"] = [f for f in manifest["files"] if f["path"] != vf]
        del members[f"payload/{vf}"]
    else:
        members[f"payload/{vf}"] = version_file
        entry["sha256"], entry["size"] = hashlib.sha256(version_file).hexdigest(), len(version_file)
    data = canonical_json(manifest)
    return write(
        out, {**members, "manifest.json": data, "manifest.sig": sign_manifest(data, load_private_key(key))}
    )


def test_a_signed_bundle_that_leaves_the_wrong_version_is_refused(
    sandbox: Callable[..., Sandbox], plain_bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """A jump whose version file says another version, or that does not replace it,
    "upgraded" the manager while its version file said the old version (or a third one):
    the next jump's pre-flight then refused it. Exit 3 now, before anything stops."""
    sb = sandbox()
    before = dir_hash(sb.root)
    for label, content, phrase in (
        ("missing", None, "does not replace its version file opt/demo-manager/VERSION"),
        ("other", b"4.1.0\n", "version file opt/demo-manager/VERSION says '4.1.0', not 4.1.1"),
    ):
        bad = _resigned(plain_bundle, keys["key"], tmp_path / f"{label}.zip", content)
        for command in ("verify", "stage", "apply") if content is None else ("stage", "apply"):
            p = install("--root", sb.root, command, bad)
            assert p.returncode == 3, f"{label} {command}: rc {p.returncode}: {p.stderr}"
            assert phrase in one_line(p), p.stderr
            assert "stopping" not in p.stderr
        assert dir_hash(sb.root) == before, label
    assert sb.version() == "4.0.1"


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (
            lambda d: (d / "releases/4.1.1/root/opt/demo-manager/VERSION").write_text("4.1.0\n"),
            "says '4.1.0'",
        ),
        (
            lambda d: (d / "jumps/4.0.1-4.1.1.yaml").write_text(
                (d / "jumps/4.0.1-4.1.1.yaml")
                .read_text()
                .replace("files:\n", "files:\n  exclude: [opt/demo-manager/VERSION]\n", 1)
            ),
            "the jump does not carry it",
        ),
    ],
)
def test_a_release_that_leaves_the_wrong_version_is_not_built(
    edit: Callable[[Path], None], phrase: str, keys: dict[str, Path], tmp_path: Path
) -> None:
    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs, symlinks=True)
    edit(specs / "demo-manager")
    p = build(
        "--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", tmp_path / "out"
    )
    assert p.returncode == 2, p.stderr
    assert phrase in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# --- the manager's tree differs from the vendor's picture: exit 4, one line ------------
def test_lookup_missing_is_one_line_and_json(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox()
    ini = sb.root / "etc/demo-manager/manager.ini"
    ini.unlink()
    before = dir_hash(sb.root)
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 4
    assert "no value for {port}" in one_line(p)
    p = install("--root", sb.root, "apply", bundle, "--json")
    assert p.returncode == 4 and "Traceback" not in p.stderr
    doc = json.loads(p.stdout)
    assert doc["ok"] is False and doc["exit"] == 4 and "no value for {port}" in doc["error"]
    assert dir_hash(sb.root) == before


@pytest.mark.parametrize("which", ["opt/demo-manager/VERSION", "etc/demo-manager/manager.ini"])
def test_device_in_place_of_a_small_file_is_bounded(
    which: str, sandbox: Callable[..., Sandbox], bundle: Path
) -> None:
    """A version or lookup file that is a character device (dev/zero) or a FIFO: read
    bounded, regular files only; refused in seconds, not read until memory runs out."""
    sb = sandbox()
    path = sb.root / which
    path.unlink()
    os.mknod(path, 0o20644, os.makedev(1, 5))  # /dev/zero's numbers
    t0 = time.monotonic()
    p = install("--root", sb.root, "apply", bundle)
    assert time.monotonic() - t0 < MAX_SECONDS
    assert p.returncode == 4, p.stderr
    one_line(p)
    path.unlink()
    os.mkfifo(path)
    p = install("--root", sb.root, "stage", bundle)
    assert p.returncode == 4, p.stderr
    one_line(p)


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_a_bundle_that_is_no_file_is_refused_at_once(
    kind: str, sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    """A FIFO given as the bundle hung every command until killed (``open`` waits for a
    writer); a device was read as a bundle. Both are exit 3 in one line now, in seconds,
    and the manager is untouched."""
    sb = sandbox()
    path = tmp_path / "b.zip"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.mknod(path, 0o20644, os.makedev(1, 5))  # /dev/zero's numbers
    before = dir_hash(sb.root)
    for cmd in ("verify", "stage", "apply", "plan"):
        t0 = time.monotonic()
        p = install("--root", sb.root, cmd, path)
        assert time.monotonic() - t0 < MAX_SECONDS
        assert p.returncode == 3, (cmd, p.stderr)
        assert "not a file" in one_line(p), p.stderr
    assert dir_hash(sb.root) == before


def test_a_trust_store_entry_or_tuf_root_that_is_no_file(
    sandbox: Callable[..., Sandbox], bundle: Path, tmp_path: Path
) -> None:
    """A FIFO among the trusted keys, or in place of the pinned TUF root, hung the run; a
    pinned root that is a link out of the root was followed. One line each now."""
    sb = sandbox()
    trust = tmp_path / "trust"
    trust.mkdir()
    os.mkfifo(trust / "stuck.pub")
    p = install("--root", sb.root, "--trust", trust, "verify", bundle)
    assert p.returncode == 3, p.stderr
    assert "is a FIFO, not a file" in one_line(p)
    pinned = sb.root / "etc/jumpkit/tuf/root.json"
    pinned.parent.mkdir(parents=True, exist_ok=True)
    for make, phrase in (
        (lambda: os.mkfifo(pinned), "a FIFO"),
        (lambda: pinned.symlink_to(tmp_path / "elsewhere.json"), "out of the root"),
    ):
        pinned.unlink(missing_ok=True)
        make()
        (tmp_path / "elsewhere.json").write_text("{}")
        t0 = time.monotonic()
        p = install("--root", sb.root, "fetch", "--repo", f"file://{tmp_path}/repo", "--to", "4.1.1")
        assert time.monotonic() - t0 < MAX_SECONDS
        assert p.returncode == 4, p.stderr
        assert phrase in one_line(p), p.stderr


def test_removal_of_a_directory(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    """The jump removes a file that is a directory on this manager: drift, one line; with
    --accept-drift it moves into the backup by rename and rollback puts it back."""
    sb = sandbox()
    legacy = sb.root / "opt/demo-manager/lib/demo_manager/legacy_tcp.py"
    legacy.unlink()
    legacy.mkdir()
    (legacy / "inside").write_text("operator's\n")
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 4
    assert "legacy_tcp.py: is a directory on this manager" in one_line(p)
    assert tree_hash(sb.root) == before
    p = install("--root", sb.root, "--accept-drift", "apply", bundle)
    assert p.returncode == 0, p.stderr
    assert not legacy.exists()
    assert install("--root", sb.root, "rollback").returncode == 0
    assert (legacy / "inside").read_text() == "operator's\n"
    assert tree_hash(sb.root) == before


# --- the build host: a spec that cannot build is one line, exit 2 -------------------------
def _spec_copy(tmp_path: Path) -> Path:
    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs)
    return specs


def test_migration_pointing_at_a_missing_revision(tmp_path: Path) -> None:
    specs = _spec_copy(tmp_path)
    f = specs / "demo-manager/releases/4.1.1/migrations/main/versions/0004_items_title.py"
    f.write_text(f.read_text().replace('down_revision = "0003"', 'down_revision = "gone"'))
    p = build("--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--unsigned", "--out", tmp_path / "o")
    assert p.returncode == 2
    line = one_line(p, "bundle-build")
    assert "0004_items_title.py: down_revision 'gone' is not a revision" in line
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


@pytest.mark.parametrize(
    ("pattern", "replacement", "phrase"),
    [("tcp://([A-Z", "x", "does not compile"), ("tcp://(x)", r"\g<9>", "invalid group reference")],
)
def test_rule_checked_at_build(pattern: str, replacement: str, phrase: str, tmp_path: Path) -> None:
    specs = _spec_copy(tmp_path)
    jump = specs / "demo-manager/jumps/4.0.1-4.1.1.yaml"
    text = jump.read_text()
    text = text.replace("pattern: 'tcp://([A-Za-z0-9_.:-]+)'", f"pattern: '{pattern}'")
    text = text.replace("replacement: 'http://\\1?role=peer'", f"replacement: '{replacement}'")
    jump.write_text(text)
    p = build("--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--unsigned", "--out", tmp_path / "o")
    assert p.returncode == 2, p.stderr
    assert phrase in one_line(p, "bundle-build")


# --- a refused run creates nothing ----------------------------------------------------------
def test_refused_on_a_directory_that_is_no_manager(
    bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    parent = tmp_path / "parent"
    (parent / "empty").mkdir(parents=True)
    (parent / "other").mkdir()
    (parent / "other/readme").write_text("not a manager\n")
    before = dir_hash(parent)
    for root in ("empty", "other"):
        for command in ("stage", "apply"):
            p = install("--root", parent / root, "--trust", keys["pub"], command, bundle)
            assert p.returncode == 4, p.stderr
            assert one_line(p).startswith(f"bundle-install: not a demo-manager manager: {parent / root}")
            assert dir_hash(parent) == before


def test_missing_root_is_refused_not_created(bundle: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    before = dir_hash(tmp_path)
    for args in (("apply", bundle), ("stage", bundle), ("status",), ("rollback",), ("verify", bundle)):
        p = install("--root", tmp_path / "nope", "--trust", keys["pub"], *args)
        assert p.returncode == 2, p.stderr
        assert "no such directory" in one_line(p)
        assert dir_hash(tmp_path) == before


def test_forgotten_root_creates_nothing_on_the_host(bundle: Path, keys: dict[str, Path]) -> None:
    """--root left out on a host that is no manager: refused before any state dir is made."""
    assert not Path("/etc/jumpkit/product").exists() and not Path("/opt/demo-manager/VERSION").exists()
    existed = Path("/var/lib/jumpkit").exists()
    p = install("--trust", keys["pub"], "apply", bundle)
    assert p.returncode == 4
    assert "not a demo-manager manager: /" in one_line(p)
    assert Path("/var/lib/jumpkit").exists() == existed


def test_failed_apply_is_not_rerun_by_a_plain_apply(sandbox: Callable[..., Sandbox], bundle: Path) -> None:
    sb = sandbox()
    before = tree_hash(sb.root)
    p = install("--root", sb.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": "run:health=fail"})
    assert p.returncode == 5
    assert "health" in one_line(p)
    assert tree_hash(sb.root) == before
    p = install("--root", sb.root, "apply")
    assert p.returncode == 2 and "name the bundle" in one_line(p)
    assert tree_hash(sb.root) == before
    assert sb.version() == "4.0.1"


def test_guard_folds_every_message_to_one_line(tmp_path: Path) -> None:
    """An error whose text holds newlines (a health check's body, a library's message) is
    still one line; anything not jumpkit's own is 'internal error', exit 1."""
    code = (
        "import sys; from installer import entry; from installer.errors import PreconditionError\n"
        "def boom(): raise PreconditionError('unhealthy (body: 4.1.1\\n); --force\\nproceeds')\n"
        "def bug(): raise KeyError('x')\n"
        "entry.run('bundle-install', boom if sys.argv[1] == 'a' else bug, interrupted_code=5)\n"
    )
    for arg, rc, phrase in (
        ("a", 4, "unhealthy (body: 4.1.1 ); --force proceeds"),
        ("b", 1, "internal error"),
    ):
        p = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, cwd=REPO)
        assert p.returncode == rc
        assert phrase in one_line(p)


def test_new_user_messages_name_what_is_wrong(tmp_path: Path) -> None:
    """#35 items 12 and 15: --root naming a file, a truncated ZIP, a --trust file that does
    not exist, an unknown --product: each one line that names the thing and, for the
    product, the ones there are."""
    from tests.helpers import build, install

    afile = tmp_path / "afile"
    afile.write_text("x")
    p = install("--root", afile, "status")
    assert p.returncode == 2 and f"--root {afile}: not a directory" in p.stderr, p.stderr
    trunc = tmp_path / "cut.zip"
    trunc.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    p = install("--root", tmp_path, "verify", trunc)
    assert p.returncode == 3 and f"{trunc}: not a readable ZIP bundle" in p.stderr, p.stderr
    p = install("--root", tmp_path, "--trust", tmp_path / "missing.pub", "verify", trunc)
    assert p.returncode == 2 and f"--trust {tmp_path / 'missing.pub'}: no such file" in p.stderr, p.stderr
    p = build("plan", "--product", "nope", "--from", "4.0.1", "--to", "4.1.1")
    assert p.returncode == 2 and "no product 'nope' in specs: it holds demo-manager" in p.stderr, p.stderr


def test_a_failpoint_the_run_never_passes_is_refused(
    sandbox: Callable[..., Sandbox], bundle: Path, chain_bundles: list[Path]
) -> None:
    """#35 item 8: ``run:migrate@2`` on a chain (its steps are ``migrate#<n>``), a typo,
    a bad count or action: refused in one line before anything is made, not ignored."""
    sb = sandbox()
    before = tree_hash(sb.root)
    for spec, want in (
        ("run:migrat", "passes no failpoint 'run:migrat'"),
        ("run:migrate@x", "is not NAME[@N][=ACTION]"),
        ("run:migrate=explode", "is not NAME[@N][=ACTION]"),
    ):
        p = install("--root", sb.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": spec})
        assert p.returncode == 2 and want in p.stderr, (spec, p.stderr)
        assert p.stderr.count("\n") == 1, p.stderr
    p = install("--root", sb.root, "apply", *chain_bundles, env={"JUMPKIT_FAILPOINT": "run:migrate@2"})
    assert (
        p.returncode == 2 and "passes no failpoint 'run:migrate'" in p.stderr and "run:migrate#2" in p.stderr
    )
    assert tree_hash(sb.root) == before and not (sb.root / "var/lib/jumpkit/demo-manager").exists()


def test_a_manager_at_another_version_is_not_also_called_unhealthy(
    sandbox: Callable[..., Sandbox], bundle: Path
) -> None:
    """#35 item 13: a 4.1.1 bundle on a healthy 4.2.0 manager is refused for its version,
    and its health is checked against 4.2.0 (it answers 4.2.0: healthy), not 4.0.1."""
    sb = sandbox("4.2.0")
    p = install("--root", sb.root, "plan", bundle, "--json")
    problems = json.loads(p.stdout)["preflight"].get("problems", [])
    assert any("4.2.0" in x for x in problems), problems
    assert not any("unhealthy" in x for x in problems), problems


def test_a_failed_sandbox_leaves_no_half_made_root(tmp_path: Path) -> None:
    """#35 item 6: the init script fails; the root is gone again, so the rerun says why it
    fails, not that the root is not empty."""
    specs = tmp_path / "specs"
    d = specs / "svc"
    (d / "releases/1.0.0/root/opt/svc").mkdir(parents=True)
    (d / "releases/1.0.0/root/opt/svc/VERSION").write_text("1.0.0\n")
    (d / "init.py").write_text("import sys\nsys.exit('no database server here')\n")
    (d / "product.yaml").write_text(
        "product: svc\nversion_file: opt/svc/VERSION\nsandbox:\n  init: init.py\n"
    )
    root = tmp_path / "root"
    for _ in range(2):
        p = build("sandbox", "--specs", specs, "--version", "1.0.0", "--root", root)
        assert p.returncode != 0 and "no database server here" in p.stderr, p.stderr
        assert not root.exists()


def test_sandbox_says_how_to_start_its_services(tmp_path: Path) -> None:
    """#35 item 18: supervisord is inside the tool's environment, not on PATH: the line
    names the exact command, and that command starts the demo."""
    root = short_tmp("jk-start-") / "r"  # supervisord's socket path must stay under 108 bytes
    port = free_port()
    p = build("sandbox", "--version", "4.0.1", "--root", root, "--set", f"server.port={port}")
    assert p.returncode == 0, p.stderr
    line = p.stdout.strip().splitlines()[-1]
    assert line.startswith("start its services: ") and str(root / "etc/supervisord.conf") in line, line
    q = subprocess.run(line.removeprefix("start its services: ").split(), capture_output=True, text=True)
    try:
        assert q.returncode == 0, q.stderr
        # it answers (and a stop now is a clean one: a SIGTERM in supervisord's first
        # moments reaches its child between fork and exec, and is lost there)
        assert Sandbox(root, port).wait_version("4.0.1", tries=500) == "4.0.1"
    finally:
        pid = root / "var/run/supervisord.pid"
        for _ in range(100):
            if pid.exists() and pid.read_text().strip():
                break
            time.sleep(0.02)
        from tests.helpers import terminate

        terminate(int(pid.read_text()))  # supervisord stops the demo service first
        shutil.rmtree(root.parent, ignore_errors=True)

"""The installer as a patch (bundle format 3, ``bundle-build --installer-base``): built
against the installer a manager at the from-version keeps, applied only where that one is
kept. Fake installers (bytes the builder is told are installers) keep these fast; the
frozen installer's own run of a patch form is in test_frozen-style end-to-end below."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from builder.build import build_jump
from builder.frozen import FrozenInstaller
from builder.installerbase import PATCH_SUFFIX, BaseInstaller, resolve_base
from builder.spec import load_product
from installer import selfupdate
from installer.format import INSTALLER_MEMBER, INSTALLER_PATCH_MEMBER, InstallerInfo
from tests.counts import count
from tests.crash.common import recover_after_kill
from tests.helpers import REPO, Sandbox, build, install, tree_listing
from tests.hostile.corpus import read, resign, write

SPECS = REPO / "specs"


def _bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def installers(tmp_path: Path) -> tuple[FrozenInstaller, BaseInstaller]:
    """A 'new installer' that differs from its base in a few places, as a release whose
    jumpkit changed in a few modules does."""
    old = _bytes(1, 600_000)
    new = bytearray(old)
    new[1000:1010] = b"0123456789"
    new[400_000:400_000] = b"a module that changed " * 40
    base_path, new_path = tmp_path / "base-install", tmp_path / "new-install"
    base_path.write_bytes(old)
    new_path.write_bytes(bytes(new))
    base = BaseInstaller(
        base_path, hashlib.sha256(old).hexdigest(), len(old), "0.0.9", (1, 2, 3), source=str(base_path)
    )
    return FrozenInstaller(new_path, "0.1.0", (1, 2, 3)), base


@dataclass(frozen=True)
class Lean:
    """The patch form of the demo jump (``bundle``): ``new`` as a patch against ``base``."""

    new: FrozenInstaller
    base: BaseInstaller
    bundle: Path


@pytest.fixture
def lean(tmp_path: Path, keys: dict[str, Path], installers: tuple[FrozenInstaller, BaseInstaller]) -> Lean:
    new, base = installers
    return Lean(new, base, _build(tmp_path / "out", keys["key"], new, base))


def _build(out: Path, key: Path, installer: FrozenInstaller, base: BaseInstaller | None) -> Path:
    product = load_product(SPECS, None)
    return build_jump(product, "4.0.1", "4.1.1", out, key=key, installer=installer, installer_base=base).path


def _keep(root: Path, base: BaseInstaller) -> None:
    """The manager keeps ``base``, as the apply of the from-version's release bundle left it."""
    info = InstallerInfo(sha256=base.sha256, version=base.version, formats=base.formats)
    selfupdate.install(root, base.path, info)


def test_patch_form_is_small_and_applies_where_its_base_is_kept(
    sandbox: Callable[..., Sandbox], lean: Lean
) -> None:
    new, base, bundle = lean.new, lean.base, lean.bundle
    assert bundle.name == f"demo-manager-4.0.1-to-4.1.1{PATCH_SUFFIX}.zip"
    with zipfile.ZipFile(bundle) as z:
        names = z.namelist()
        manifest = json.loads(z.read("manifest.json"))
        patch = z.getinfo(INSTALLER_PATCH_MEMBER).file_size
    assert INSTALLER_MEMBER not in names and manifest["format"] == 3
    assert manifest["installer"]["base"]["sha256"] == base.sha256
    assert patch < 5_000, patch  # 600 KB of installer, a few changes
    from installer.codec import parse_manifest

    parsed = parse_manifest(zipfile.ZipFile(bundle).read("manifest.json"))
    assert parsed.total_size() >= new.path.stat().st_size + patch, "pre-flight's space check counts it"
    sb = sandbox()
    _keep(sb.root, base)
    p = install("--root", sb.root, "plan", bundle)
    assert "is built from the kept bundle-install 0.0.9 and a patch" in p.stdout, p.stdout
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 0, p.stderr
    kept = selfupdate.installed_path(sb.root)
    assert kept.read_bytes() == new.path.read_bytes(), "the commit made the built installer the kept one"
    assert selfupdate.installed_info(sb.root) == {
        "version": "0.1.0",
        "sha256": manifest["installer"]["sha256"],
    }
    assert install("--root", sb.root, "rollback").returncode == 0
    assert kept.read_bytes() == base.path.read_bytes(), "the rollback put the base back"
    count("installer patch: applied where its base is kept, rolled back")


@pytest.mark.parametrize("kept", ["none", "other", "drifted"])
def test_patch_form_refused_where_its_base_is_not_kept(
    sandbox: Callable[..., Sandbox], lean: Lean, kept: str
) -> None:
    """No kept installer, another one, or the base's sidecar over bytes that drifted: exit 4
    in pre-flight, naming the base and the full bundle, nothing changed; plan says so too."""
    new, base, bundle = lean.new, lean.base, lean.bundle
    sb = sandbox()
    if kept == "other":
        _keep(sb.root, BaseInstaller(new.path, hashlib.sha256(new.path.read_bytes()).hexdigest(),
                                     new.path.stat().st_size, "0.0.8", (1, 2, 3), "x"))  # fmt: skip
    elif kept == "drifted":
        _keep(sb.root, base)
        path = selfupdate.installed_path(sb.root)
        path.write_bytes(path.read_bytes()[:-1] + b"\0")
    before = tree_listing(sb.root)
    p = install("--root", sb.root, "apply", bundle)
    assert p.returncode == 4, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "patch against bundle-install 0.0.9" in line and "demo-manager-4.0.1-to-4.1.1.zip" in line, line
    assert tree_listing(sb.root) == before
    p = install("--root", sb.root, "plan", bundle)
    assert p.returncode == 4 and "apply the full bundle demo-manager-4.0.1-to-4.1.1.zip" in p.stdout, p.stdout
    count("installer patch: refused where its base is not kept (exit 4)")


def test_a_patch_that_does_not_build_the_signed_installer_is_exit_3(
    tmp_path: Path, keys: dict[str, Path], sandbox: Callable[..., Sandbox], lean: Lean
) -> None:
    """Validly signed, but the installer's sha256 is not what the patch builds: staging
    refuses it (exit 3) before anything stops."""
    base, bundle = lean.base, lean.bundle
    members = read(bundle)
    manifest = json.loads(members["manifest.json"])
    manifest["installer"]["sha256"] = "0" * 64
    key = load_pem_private_key(keys["key"].read_bytes(), None)
    hostile = write(tmp_path / "hostile.zip", resign(members, manifest, key))  # type: ignore[arg-type]
    sb = sandbox()
    _keep(sb.root, base)
    before = tree_listing(sb.root)
    p = install("--root", sb.root, "apply", hostile)
    assert p.returncode == 3, p.stderr
    assert INSTALLER_PATCH_MEMBER in p.stderr and "sha256" in p.stderr, p.stderr
    assert tree_listing(sb.root) == before
    count("installer patch: a patch that builds other bytes (exit 3)")


def test_base_from_a_release_bundle_auto_and_refusals(
    tmp_path: Path, keys: dict[str, Path], installers: tuple[FrozenInstaller, BaseInstaller]
) -> None:
    """auto finds the from-version's full release bundle in --out; a development bundle, a
    patch form or a missing path is no base, said in one line."""
    new, base = installers
    out = tmp_path / "out"
    out.mkdir()
    assert resolve_base("auto", out=out, product="demo-manager", frm="4.1.1") is None
    full = _build(out, keys["key"], new, None)  # demo-manager-4.0.1-to-4.1.1.zip carries `new`
    found = resolve_base("auto", out=out, product="demo-manager", frm="4.1.1")
    assert found is not None and found.path.read_bytes() == new.path.read_bytes()
    assert (found.version, found.source) == ("0.1.0", str(full))
    patched = _build(out, keys["key"], new, base)
    p = build("--specs", SPECS, "--from", "4.1.1", "--to", "4.2.0", "--key", keys["key"], "--out", tmp_path,
              "--no-installer", "--installer-base", str(patched))  # fmt: skip
    assert p.returncode == 0, p.stderr  # no installer to patch: nothing asked of the base
    from builder.errors import BuildError

    with pytest.raises(BuildError, match="itself a patch"):
        resolve_base(str(patched), out=out, product="demo-manager", frm="4.1.1")
    with pytest.raises(BuildError, match="no such file"):
        resolve_base(str(tmp_path / "nope.zip"), out=out, product="demo-manager", frm="4.1.1")
    os.remove(full)
    assert resolve_base("auto", out=out, product="demo-manager", frm="4.1.1") is None


def test_auto_finds_the_base_among_the_tuf_repositorys_targets(
    tmp_path: Path, keys: dict[str, Path], release_bundle: Path, frozen: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--installer-base auto --repo URL: the from-release's full bundle is a target of the
    repository the release is published to (not in --out): the build downloads it once,
    checks it against the targets metadata, and writes the patch form; a target whose
    bytes differ from its metadata is refused in one line."""
    from builder.errors import BuildError

    url, tuf_keys = (tmp_path / "repo").as_uri(), tmp_path / "tuf-keys"
    assert build("repo", "init", "--repo", url, "--keys", tuf_keys).returncode == 0
    p = build("publish", "--repo", url, "--keys", tuf_keys, "--trust", keys["pub"], release_bundle)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out"
    p = build("--specs", SPECS, "--from", "4.1.1", "--to", "4.2.0", "--key", keys["key"], "--out", out,
              "--installer", frozen, "--installer-base", "auto", "--repo", url, "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    patch = json.loads(p.stdout)["installer_patch"]
    assert patch["base"]["sha256"] == hashlib.sha256(frozen.read_bytes()).hexdigest()
    assert patch["patch_bytes"] < 100_000 and Path(patch["bundle"]).name.endswith(PATCH_SUFFIX + ".zip")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_base("auto", out=empty, product="demo-manager", frm="4.0.1", repo=url) is None
    found = resolve_base("auto", out=empty, product="demo-manager", frm="4.1.1", repo=url)
    assert found is not None and found.source == f"{url} target {release_bundle.name}"
    monkeypatch.setenv("JUMPKIT_CACHE_DIR", str(tmp_path / "cold-cache"))
    (target,) = (tmp_path / "repo/targets").glob(f"*.{release_bundle.name}")
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(BuildError, match="does not match its targets metadata"):
        resolve_base("auto", out=empty, product="demo-manager", frm="4.1.1", repo=url)
    assert list((tmp_path / "cold-cache/installer-bases").iterdir()) == []
    count("installer patch: auto finds its base among the TUF repository's targets")


def test_base_by_url_is_downloaded_once(
    tmp_path: Path, release_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--installer-base http://...: the release bundle downloaded into the build cache once."""
    import functools
    import http.server
    import threading

    monkeypatch.setenv("JUMPKIT_CACHE_DIR", str(tmp_path / "cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(release_bundle.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{release_bundle.name}"
        found = resolve_base(url, out=tmp_path, product="demo-manager", frm="4.1.1")
        assert found is not None and found.source == url
        server.shutdown()  # the second resolve needs no server
        again = resolve_base(url, out=tmp_path, product="demo-manager", frm="4.1.1")
        assert again is not None and again.sha256 == found.sha256
    finally:
        server.shutdown()
        server.server_close()


def test_the_kept_frozen_installer_applies_a_patch_form(
    tmp_path: Path, keys: dict[str, Path], sandbox: Callable[..., Sandbox], frozen: Path
) -> None:
    """The real thing: the manager keeps the frozen installer (the from-version's release
    bundle left it), and the next release, whose jumpkit did not change, carries its
    installer in at most 100 KB; the kept binary builds it in staging and applies."""
    from tests.test_frozen import run

    out = tmp_path / "out"
    p = build("--specs", SPECS, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", out,
              "--installer", frozen, "--installer-base", frozen, "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)["installer_patch"]
    assert doc["patch_bytes"] <= 100_000, doc
    full = out / "demo-manager-4.0.1-to-4.1.1.zip"
    assert doc["size"] * 50 < full.stat().st_size, (doc["size"], full.stat().st_size)
    sb = sandbox()
    sha = hashlib.sha256(frozen.read_bytes()).hexdigest()
    version = json.loads(p.stdout)["installer"]
    selfupdate.install(sb.root, frozen, InstallerInfo(sha256=sha, version=version, formats=(1, 2, 3)))
    kept = selfupdate.installed_path(sb.root)
    p = run(kept, "--root", sb.root, "apply", Path(doc["bundle"]))
    assert p.returncode == 0, p.stderr
    assert sb.wait_version("4.1.1") == "4.1.1"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == sha
    count("installer patch: the kept frozen installer applied a patch form")
    print(
        f"patch form {doc['size']} bytes (installer patch {doc['patch_bytes']}) vs full {full.stat().st_size}"
    )


# --- the bundle RPM of a patch form -----------------------------------------------------


@pytest.fixture(scope="module")
def patch_repo(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], frozen: Path
) -> tuple[Path, Path, Path]:
    """Both RPMs of the demo jump, the full one and the patch form against the frozen
    installer, in a local repo (createrepo_c); returns (repo, dnf.conf, HOME)."""
    tmp = tmp_path_factory.mktemp("ipatch-rpm")
    repo = tmp / "repo"
    p = build("--specs", SPECS, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", repo,
              "--installer", frozen, "--installer-base", frozen, "--format", "rpm")  # fmt: skip
    assert p.returncode == 0, p.stderr
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True)
    home = tmp / "home"
    home.mkdir()
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    conf = tmp / "dnf.conf"
    conf.write_text(
        f"[main]\nreposdir=/dev/null\ngpgcheck=0\ncachedir={tmp / 'cache'}\n\n"
        f"[jumpkit]\nname=jumpkit bundles\nbaseurl=file://{repo}\ngpgcheck=0\n"
    )
    return repo, conf, home


def test_dnf_takes_the_patch_rpm_where_its_base_is_kept(
    sandbox: Callable[..., Sandbox], patch_repo: tuple[Path, Path, Path], frozen: Path
) -> None:
    from builder.testjumps import as_manager, rpm_in
    from tests.test_rpm import dnf_install

    repo, conf, home = patch_repo
    full = repo / "demo-manager-upgrade-4.1.1-from4.0.1.x86_64.rpm"
    lean = repo / "demo-manager-upgrade-4.1.1-from4.0.1.ipatch.x86_64.rpm"
    assert lean.stat().st_size * 50 < full.stat().st_size, (lean.stat().st_size, full.stat().st_size)
    sb = sandbox()
    as_manager(sb.root)
    sha = hashlib.sha256(frozen.read_bytes()).hexdigest()
    selfupdate.install(sb.root, frozen, InstallerInfo(sha256=sha, version="0.1.0", formats=(1, 2, 3)))
    p = dnf_install(sb.root, (conf, home))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "status:  finished" in p.stdout, p.stdout + p.stderr
    q = rpm_in(sb.root, "-q", "demo-manager-upgrade")
    assert q.stdout.strip() == "demo-manager-upgrade-4.1.1-from4.0.1.ipatch.x86_64", q.stdout
    assert sb.wait_version("4.1.1") == "4.1.1"
    count("installer patch: dnf installed the patch RPM where its base is kept")
    print(f"RPM: full {full.stat().st_size} bytes, patch form {lean.stat().st_size} bytes")


def test_the_patch_rpm_is_refused_in_pre_where_its_base_is_not_kept(
    sandbox: Callable[..., Sandbox], patch_repo: tuple[Path, Path, Path]
) -> None:
    from builder.testjumps import as_manager, rpm_in
    from tests.test_rpm import installed, manager_hash

    repo, _, _ = patch_repo
    rc = REPO / "templates/rpm/bundle.rpmlintrc"
    rpms = map(str, sorted(repo.glob("*.rpm")))
    lint = subprocess.run(["rpmlint", "-r", str(rc), *rpms], capture_output=True, text=True)
    assert lint.returncode == 0 and " 0 errors" in lint.stdout, lint.stdout
    sb = sandbox()
    as_manager(sb.root)
    before = manager_hash(sb.root)
    p = rpm_in(sb.root, "-U", repo / "demo-manager-upgrade-4.1.1-from4.0.1.ipatch.x86_64.rpm")
    assert p.returncode != 0, p.stdout
    said = p.stdout + p.stderr
    assert "install the full package demo-manager-upgrade-4.1.1-from4.0.1 instead" in said, said
    assert not installed(sb.root) and manager_hash(sb.root) == before
    p = rpm_in(sb.root, "-U", repo / "demo-manager-upgrade-4.1.1-from4.0.1.x86_64.rpm")
    assert p.returncode == 0 and "status:  finished" in p.stdout, p.stdout + p.stderr
    count("installer patch: the patch RPM refused in %pre without its base (nothing installed)")


# --- fetch: the smallest bundle this manager can apply ------------------------------------


def test_pick_takes_the_smallest_form_this_manager_can_apply() -> None:
    from installer.errors import PreconditionError
    from installer.fetch import Available, pick

    full = Available("a.zip", "p", "1.0.0", "1.1.0", "zip", 23_000_000, "VERSION", "n" * 64)
    lean = Available(
        "a.installer-patch.zip", "p", "1.0.0", "1.1.0", "zip", 20_000, "VERSION", "n" * 64, "b" * 64
    )
    assert pick([full, lean], "b" * 64) is lean
    assert pick([full, lean], "c" * 64) is full
    assert pick([full, lean], None) is full
    with pytest.raises(PreconditionError, match="publish the full bundle"):
        pick([lean], None)


def test_fetch_takes_the_patch_form_only_where_its_base_is_kept(
    tmp_path: Path,
    keys: dict[str, Path],
    sandbox: Callable[..., Sandbox],
    installers: tuple[FrozenInstaller, BaseInstaller],
) -> None:
    new, base = installers
    out = tmp_path / "out"
    full, patched = _build(out, keys["key"], new, None), _build(out, keys["key"], new, base)
    url, tuf_keys = (tmp_path / "repo").as_uri(), tmp_path / "tuf-keys"
    assert build("repo", "init", "--repo", url, "--keys", tuf_keys).returncode == 0
    p = build("publish", "--repo", url, "--keys", tuf_keys, "--trust", keys["pub"], full, patched)
    assert p.returncode == 0, p.stderr
    for keeps in (True, False):
        sb = sandbox()
        (sb.root / "etc/jumpkit/tuf").mkdir(parents=True, exist_ok=True)
        (sb.root / "etc/jumpkit/tuf/root.json").write_bytes((tuf_keys / "root.json").read_bytes())
        if keeps:
            _keep(sb.root, base)
        p = install("--root", sb.root, "fetch", "--repo", url, "--to", "4.1.1")
        assert p.returncode == 0, p.stderr
        took = [b.name for b in (sb.root / "var/lib/jumpkit/demo-manager/downloads").glob("*/*.zip")]
        assert took == [patched.name if keeps else full.name], (keeps, took, p.stderr)
        said = f"took {patched.name} ({patched.stat().st_size} bytes instead of {full.stat().st_size})"
        assert (said in p.stderr) is keeps, p.stderr
        p = install("--root", sb.root, "apply", "--repo", url, "--to", "4.1.1")
        assert p.returncode == 0, p.stderr
        sb.destroy()
    count("installer patch: fetch took the smallest form this manager can apply")


@pytest.mark.parametrize("recover", ["resume", "rollback"])
@pytest.mark.parametrize("point", ["stage:member", "done:swap-files", "commit", "committed"])
def test_a_patch_form_killed_then_recovered_ends_exactly_old_or_new(
    sandbox: Callable[..., Sandbox], lean: Lean, point: str, recover: str
) -> None:
    """SIGKILL while staging the patch form, in the window, around the commit record (the
    kept installer replaced just after it): resume ends at 4.1.1 keeping the built
    installer, rollback at 4.0.1 keeping the base, the tree exactly the old one."""
    new, base, bundle = lean.new, lean.base, lean.bundle
    sb = sandbox()
    _keep(sb.root, base)
    before = tree_listing(sb.root)
    p = install("--root", sb.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": point})
    assert p.returncode == -9, p.stderr

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return install("--root", sb.root, *args)

    version = sb.root / "opt/demo-manager/VERSION"
    recover_after_kill(run, recover, bundle, lambda: version.read_text().strip() == "4.1.1")
    kept = selfupdate.installed_path(sb.root).read_bytes()
    if recover == "resume":
        assert version.read_text().strip() == "4.1.1" and kept == new.path.read_bytes(), point
    else:
        assert kept == base.path.read_bytes(), point
        assert tree_listing(sb.root) == before, point
    count(f"installer patch: kill at a failpoint, then {recover} (exactly old or new)")


def test_the_patch_form_is_reproducible(
    tmp_path: Path, keys: dict[str, Path], installers: tuple[FrozenInstaller, BaseInstaller]
) -> None:
    new, base = installers
    one, two = (_build(tmp_path / d, keys["key"], new, base) for d in ("a", "b"))
    assert one.read_bytes() == two.read_bytes()

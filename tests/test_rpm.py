"""Bundle RPMs (issue 6): built by rpmbuild, gated in %pre, applied in %posttrans by the
frozen installer, GPG-signed, and erased without touching the manager. rpm runs for real
against a sandbox manager as its --root (scriptlets chroot into it)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builder.testjumps import as_manager, rpm_in
from installer.migrate import current_revision
from tests.helpers import HARNESS, REPO, SPECS, Sandbox, build, build_demo, install, sqlite_url, tree_hash

RPM = "demo-manager-upgrade-4.1.1-from4.0.1.x86_64.rpm"
BUNDLES = "var/lib/jumpkit/bundles/demo-manager-4.0.1-to-4.1.1"
RPMDB = "var/lib/rpm"


# what rpm and dnf keep in the root for themselves: their business, not the manager's
PACKAGER_STATE = (RPMDB, "var/lib/dnf", "var/cache/dnf", "var/cache/ldconfig", "etc/dnf", "var/tmp", "tmp")


def manager_hash(root: Path) -> str:
    return tree_hash(root, (*HARNESS, *PACKAGER_STATE))


@pytest.fixture(scope="module")
def rpm_file(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], frozen: Path) -> Path:
    out = tmp_path_factory.mktemp("rpm")
    p = build_demo(out, keys["key"], "--installer", frozen, "--format", "all", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["rpm"]["name"] == "demo-manager-upgrade" and doc["rpm"]["signed"] is False
    return out / RPM


def query(rpm: Path, fmt: str) -> str:
    return subprocess.run(
        ["rpm", "-qp", "--qf", fmt, str(rpm)], capture_output=True, text=True, check=True
    ).stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundle_manifest(rpm: Path) -> dict[str, Any]:
    return dict(json.loads(bundle_manifest_bytes(rpm.with_name("demo-manager-4.0.1-to-4.1.1.zip"))))


def test_the_rpm_carries_the_installer_once(rpm_file: Path) -> None:
    """Only inside the ZIP, stored, where %posttrans takes it by its byte range: the RPM is
    about the ZIP's size (it was the ZIP plus the installer again)."""
    from builder.rpm import stored_installer

    zip_path = rpm_file.with_name("demo-manager-4.0.1-to-4.1.1.zip")
    ratio = rpm_file.stat().st_size / zip_path.stat().st_size
    assert ratio <= 1.05, ratio
    offset, size = stored_installer(zip_path)
    with open(zip_path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    assert hashlib.sha256(data).hexdigest() == bundle_manifest(rpm_file)["installer"]["sha256"]
    print(f"RPM {rpm_file.stat().st_size} bytes / ZIP {zip_path.stat().st_size} bytes = {ratio:.3f}")


def test_an_installer_that_does_not_match_its_sha256_is_not_run(
    sandbox: Callable[..., Sandbox], rpm_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """%posttrans checks the installer it took out of the ZIP with sha256sum before it runs
    it: an RPM whose check file names another sha256 (as a wrong byte range would give)
    applies nothing and says so."""
    import builder.rpm
    from builder.spec import load_product
    from installer.codec import parse_manifest

    real = builder.rpm._tree

    def wrong_sha(zip_path: Path, manifest: Any, dest: Path) -> None:
        real(zip_path, manifest, dest)
        check = dest / "bin/bundle-install.sha256"
        check.write_text("0" * 64 + check.read_text()[64:])

    monkeypatch.setattr(builder.rpm, "_tree", wrong_sha)
    zip_path = rpm_file.with_name("demo-manager-4.0.1-to-4.1.1.zip")
    manifest = parse_manifest(bundle_manifest_bytes(zip_path))
    spec = load_product(SPECS, None).spec
    bad = builder.rpm.build_rpm(zip_path, manifest, spec.package, spec.summary, tmp_path).path
    sb = sandbox()
    as_manager(sb.root)
    before = manager_hash(sb.root)
    p = rpm_in(sb.root, "-i", bad)
    assert "THE UPGRADE DID NOT START" in p.stdout and "signed sha256" in p.stdout, p.stdout + p.stderr
    assert not (sb.root / BUNDLES / "bin/bundle-install").exists()
    assert manager_hash(sb.root) == before and sb.version() == "4.0.1"


def bundle_manifest_bytes(zip_path: Path) -> bytes:
    with zipfile.ZipFile(zip_path) as z:
        return z.read("manifest.json")


def installed(root: Path) -> bool:
    return rpm_in(root, "-q", "demo-manager-upgrade").returncode == 0


def gpg_signed_rpm(
    tmp_path: Path, keys: dict[str, Path], frozen: Path, out: Path, algo: str = "rsa2048"
) -> tuple[Path, Path]:
    """A fresh GPG key (``algo``: rsa2048, or ed25519 as modern GnuPG makes by default) and
    the demo RPM signed with it by bundle-build; (rpm, public key)."""
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    uid = "jumpkit release <release@example.com>"
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, algo, "sign", "never"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    pub = tmp_path / "RPM-GPG-KEY-jumpkit"
    exported = subprocess.run(["gpg", "--armor", "--export", uid], env=env, check=True, capture_output=True)
    pub.write_bytes(exported.stdout)
    p = subprocess.run(
        [sys.executable, "-m", "builder.cli", "--from", "4.0.1", "--to", "4.1.1", "--key", str(keys["key"]),
         "--out", str(out), "--installer", str(frozen), "--format", "rpm", "--gpg-key", uid],
        env=env, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    # gpg started an agent for this home: stop it (by its home), the tests leave nothing running
    subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"], env=env, capture_output=True)
    assert p.returncode == 0, p.stderr
    return out / RPM, pub


def test_rpm_headers_payload_and_no_shell_dependency(rpm_file: Path) -> None:
    assert (
        query(rpm_file, "%{NAME} %{VERSION} %{RELEASE} %{ARCH}")
        == "demo-manager-upgrade 4.1.1 from4.0.1 x86_64"
    )
    assert query(rpm_file, "%{LICENSE}|%{URL}|%{PACKAGER}|%{GROUP}") == (
        "Apache-2.0|https://example.com/demo-manager|Demo Release Engineering <release@example.com>|"
        "Applications/System"
    )
    assert "Demo control-plane manager" in query(rpm_file, "%{SUMMARY}")
    assert query(rpm_file, "%{PAYLOADCOMPRESSOR}") == "zstd"
    requires = subprocess.run(["rpm", "-qpR", str(rpm_file)], capture_output=True, text=True).stdout.split(
        "\n"
    )
    assert all(r.startswith("rpmlib(") for r in requires if r), requires  # Lua scriptlets: no /bin/sh
    files = query(rpm_file, "[%{FILENAMES}\n]").split()
    assert all(f.startswith("/" + BUNDLES) for f in files), files  # nothing in the manager's paths
    assert (
        f"/{BUNDLES}/bin/bundle-install" in files and f"/{BUNDLES}/demo-manager-4.0.1-to-4.1.1.zip" in files
    )


def test_xz_payload_for_old_rpm(tmp_path: Path, keys: dict[str, Path], frozen: Path) -> None:
    p = build_demo(tmp_path, keys["key"], "--installer", frozen, "--format", "rpm", "--rpm-compression", "xz")
    assert p.returncode == 0, p.stderr
    assert query(tmp_path / RPM, "%{PAYLOADCOMPRESSOR}") == "xz"
    assert not list(tmp_path.glob("*.zip")), "--format rpm leaves only the RPM"
    first = p.stdout.splitlines()[0]  # the file it leaves, not the ZIP it does not
    assert first.startswith(f"{tmp_path / RPM}  ") and "no ZIP is left" in first, p.stdout


def test_rpm_of_a_development_bundle_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    p = build_demo(tmp_path, keys["key"], "--format", "rpm")
    assert p.returncode != 0 and "pass --installer" in p.stderr
    assert not list(tmp_path.iterdir())


def test_rpm_install_applies_and_erase_does_not_roll_back(
    sandbox: Callable[..., Sandbox], rpm_file: Path
) -> None:
    sb = sandbox()
    as_manager(sb.root)
    p = rpm_in(sb.root, "-i", rpm_file)
    assert p.returncode == 0, p.stderr
    assert "jumpkit: applying demo-manager 4.0.1 -> 4.1.1" in p.stdout and "status:  finished" in p.stdout
    assert sb.wait_version("4.1.1") == "4.1.1" and installed(sb.root)
    st = json.loads(install("--root", sb.root, "status", "--json").stdout)
    assert st["status"] == "finished"
    exe = sb.root / BUNDLES / "bin/bundle-install"  # taken out of the ZIP by %posttrans
    assert os.access(exe, os.X_OK) and sha256(exe) == bundle_manifest(rpm_file)["installer"]["sha256"]
    after = manager_hash(sb.root)
    p = rpm_in(sb.root, "-e", "demo-manager-upgrade")
    assert p.returncode == 0, p.stderr
    assert not (sb.root / BUNDLES).exists() and not installed(sb.root)
    assert sb.version() == "4.1.1" and manager_hash(sb.root) == after, "erasing the RPM changed the manager"
    assert json.loads(install("--root", sb.root, "status", "--json").stdout)["status"] == "finished"


def test_a_refused_posttrans_is_kept_where_status_and_report_find_it(
    sandbox: Callable[..., Sandbox], rpm_file: Path
) -> None:
    """%pre passes, then the installer's pre-flight refuses (the service is down: the
    supervisord is not there to ask). rpm exits 0 whatever %posttrans says, so the refusal and the
    next step are kept in status.json (issue 36, item 4)."""
    sb = sandbox()
    as_manager(sb.root)
    sb.stop()
    before = manager_hash(sb.root)
    p = rpm_in(sb.root, "-i", rpm_file)
    assert p.returncode == 0 and "THE UPGRADE DID NOT FINISH" in p.stdout, p.stdout + p.stderr
    assert manager_hash(sb.root) == before and installed(sb.root)
    text = install("--root", sb.root, "status").stdout
    assert "was refused (exit 4), nothing changed: pre-flight failed: services:" in text, text
    zip_path = f"/{BUNDLES}/demo-manager-4.0.1-to-4.1.1.zip"
    assert (
        f"next:    the package demo-manager-upgrade stays installed with its bundle {zip_path}: fix the "
        f"cause, then run '/{BUNDLES}/bin/bundle-install apply {zip_path}', or remove the package "
        "(rpm -e demo-manager-upgrade)"
    ) in text, text
    report = sb.root.parent / "report.tar.gz"
    assert install("--root", sb.root, "report", "--out", report).returncode == 0
    import tarfile

    with tarfile.open(report) as tar:
        member = tar.extractfile("report/status.json")
        assert member is not None and b"refused (exit 4)" in member.read()


def test_pre_refuses_a_manager_at_another_version(sandbox: Callable[..., Sandbox], rpm_file: Path) -> None:
    sb = sandbox("4.1.1")
    as_manager(sb.root)
    before = manager_hash(sb.root)
    p = rpm_in(sb.root, "-i", rpm_file)
    assert p.returncode != 0
    assert "installed demo-manager is 4.1.1, but this package upgrades 4.0.1 -> 4.1.1" in p.stderr
    assert not (sb.root / BUNDLES).exists() and not installed(sb.root)
    assert manager_hash(sb.root) == before


def test_pre_refuses_while_an_upgrade_is_unfinished(
    sandbox: Callable[..., Sandbox], rpm_file: Path, bundle: Path
) -> None:
    sb = sandbox()
    as_manager(sb.root)
    p = install("--root", sb.root, "apply", bundle, env={"JUMPKIT_FAILPOINT": "done:swap-files"})
    assert p.returncode == -9
    before = manager_hash(sb.root)
    p = rpm_in(sb.root, "-i", rpm_file)
    assert p.returncode != 0 and "an upgrade of demo-manager is unfinished" in p.stderr
    assert not (sb.root / BUNDLES).exists() and manager_hash(sb.root) == before


def test_gpg_signed_rpm_verifies_and_a_tampered_one_does_not(
    tmp_path: Path, keys: dict[str, Path], frozen: Path, rpm_file: Path
) -> None:
    rpm, pub = gpg_signed_rpm(tmp_path, keys, frozen, tmp_path / "out")
    rc = REPO / "templates/rpm/bundle.rpmlintrc"
    lint = subprocess.run(["rpmlint", "-r", str(rc), str(rpm)], capture_output=True, text=True)
    assert lint.returncode == 0 and " 0 errors" in lint.stdout, lint.stdout
    db = tmp_path / "rpmdb"
    subprocess.run(["rpm", "--dbpath", str(db), "--import", str(pub)], check=True, capture_output=True)
    check = ["rpm", "--dbpath", str(db), "-K", "--define", "_pkgverify_level signature"]
    p = subprocess.run([*check, str(rpm)], capture_output=True, text=True)
    assert p.returncode == 0 and "signatures OK" in p.stdout, p.stdout + p.stderr
    bad = tmp_path / "bad.rpm"
    data = bytearray(rpm.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert subprocess.run([*check, str(bad)], capture_output=True, text=True).returncode != 0
    unsigned = subprocess.run([*check, str(rpm_file)], capture_output=True, text=True)
    assert unsigned.returncode != 0, "rpm -K passes unsigned packages unless the signature level is enforced"
    lint = subprocess.run(["rpmlint", "-r", str(rc), str(rpm_file)], capture_output=True, text=True)
    assert lint.returncode == 0 and " 0 errors" in lint.stdout, "unsigned: " + lint.stdout


@pytest.fixture(scope="module")
def dnf_repo(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], frozen: Path
) -> tuple[Path, Path]:
    """A local repo (createrepo_c) with the GPG-signed bundle RPM, and a dnf config with
    gpgcheck=1 and the throwaway key; returns (dnf.conf, HOME for dnf)."""
    tmp = tmp_path_factory.mktemp("dnf")
    repo = tmp / "repo"
    _, pub = gpg_signed_rpm(tmp, keys, frozen, repo)
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True)
    home = tmp / "home"
    home.mkdir()
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")  # Debian's rpm defaults to ~/.rpmdb
    conf = tmp / "dnf.conf"
    conf.write_text(
        "[main]\nreposdir=/dev/null\ngpgcheck=1\ncachedir=" + str(tmp / "cache") + "\n\n"
        f"[jumpkit]\nname=jumpkit bundles\nbaseurl=file://{repo}\ngpgcheck=1\ngpgkey=file://{pub}\n"
    )
    return conf, home


def dnf_install(root: Path, repo: tuple[Path, Path]) -> subprocess.CompletedProcess[str]:
    conf, home = repo
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c",
         'mount -t proc proc "$R/proc"; dnf -y -q --config "$C" --installroot "$R" --releasever 9 '
         "install demo-manager-upgrade"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "R": str(root), "C": str(conf), "HOME": str(home)},
    )  # fmt: skip


def test_dnf_install_from_a_gpgchecked_repo_applies(
    sandbox: Callable[..., Sandbox], dnf_repo: tuple[Path, Path]
) -> None:
    """What operators type: yum/dnf install from a repo with gpgcheck=1."""
    sb = sandbox()
    as_manager(sb.root)
    p = dnf_install(sb.root, dnf_repo)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "status:  finished" in p.stdout, p.stdout + p.stderr
    assert sb.wait_version("4.1.1") == "4.1.1" and installed(sb.root)
    assert (sb.root / "opt/demo-manager/VERSION").read_text().strip() == "4.1.1"
    assert current_revision(sqlite_url(sb.root)) == "0004"
    assert json.loads(install("--root", sb.root, "status", "--json").stdout)["status"] == "finished"


def test_dnf_install_on_the_wrong_version_aborts_in_pre(
    sandbox: Callable[..., Sandbox], dnf_repo: tuple[Path, Path]
) -> None:
    sb = sandbox("4.1.1")
    as_manager(sb.root)
    before = manager_hash(sb.root)
    listed = {str(q.relative_to(sb.root)) for q in sb.root.rglob("*")}
    p = dnf_install(sb.root, dnf_repo)
    new_paths = sorted({str(q.relative_to(sb.root)) for q in sb.root.rglob("*")} - listed)
    assert p.returncode != 0
    assert "Error in PREIN scriptlet" in p.stderr, p.stderr
    # dnf prints rpm's scriptlet output into the root's dnf.rpm.log (and without -q, here)
    said = p.stdout + p.stderr + (sb.root / "var/log/dnf.rpm.log").read_text(errors="replace")
    assert "installed demo-manager is 4.1.1, but this package upgrades 4.0.1 -> 4.1.1" in said, said
    assert not (sb.root / BUNDLES).exists() and not installed(sb.root)
    assert manager_hash(sb.root) == before, new_paths


AGENT_SPEC = """Name: demo-agent
Version: 1.0
Release: 1
Summary: demo-manager's node agent (a component RPM the jump carries)
License: MIT
BuildArch: noarch
%description
Component RPM for jumpkit's tests.
%install
mkdir -p %{buildroot}/opt/demo-agent
echo agent-1.0 > %{buildroot}/opt/demo-agent/VERSION
%files
/opt/demo-agent
"""


@pytest.fixture(scope="module")
def with_components(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], frozen: Path) -> Path:
    """The demo jump carrying a component RPM, built as ZIP and RPM; returns the out dir."""
    work = tmp_path_factory.mktemp("components")
    top = work / "rpmbuild"
    (top / "SPECS").mkdir(parents=True)
    (top / "SPECS/agent.spec").write_text(AGENT_SPEC)
    subprocess.run(
        ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}", str(top / "SPECS/agent.spec")],
        check=True, capture_output=True,
    )  # fmt: skip
    specs = work / "specs"
    shutil.copytree(SPECS, specs, symlinks=True)
    jumps = specs / "demo-manager/jumps"
    (jumps / "components").mkdir()
    shutil.copy(top / "RPMS/noarch/demo-agent-1.0-1.noarch.rpm", jumps / "components")
    with (jumps / "4.0.1-4.1.1.yaml").open("a") as f:
        f.write("\ncomponents: [components/demo-agent-1.0-1.noarch.rpm]\n")
    out = work / "dist"
    p = build("--specs", specs, "--from", "4.0.1", "--to", "4.1.1", "--key", keys["key"], "--out", out,
              "--installer", frozen, "--format", "all")  # fmt: skip
    assert p.returncode == 0, p.stderr
    return out


def agent_installed(root: Path) -> bool:
    q = subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-q", "demo-agent"],
                       capture_output=True, text=True)  # fmt: skip
    return q.returncode == 0 and (root / "opt/demo-agent/VERSION").read_text() == "agent-1.0\n"


def components_state(root: Path) -> str | None:
    doc = json.loads(install("--root", root, "status", "--json").stdout)
    return doc.get("extra", {}).get("components", {}).get("state")


def wait_components(root: Path, want: str, timeout: float = 120) -> str | None:
    deadline = time.monotonic() + timeout
    state = components_state(root)
    while state != want and time.monotonic() < deadline:
        time.sleep(0.3)
        state = components_state(root)
    return state


def test_component_rpms_installed_after_a_zip_apply(
    sandbox: Callable[..., Sandbox], with_components: Path, frozen: Path
) -> None:
    sb = sandbox()
    zip_path = with_components / "demo-manager-4.0.1-to-4.1.1.zip"
    p = subprocess.run([frozen, "--root", sb.root, "apply", zip_path], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "components: done (demo-agent-1.0-1.noarch.rpm)" in p.stdout
    assert sb.wait_version("4.1.1") == "4.1.1" and agent_installed(sb.root)


def test_detached_component_step_waits_for_the_rpm_lock(
    sandbox: Callable[..., Sandbox], with_components: Path, frozen: Path
) -> None:
    sb = sandbox()
    subprocess.run(["rpm", "--root", str(sb.root), "--dbpath", "/var/lib/rpm", "--initdb"], check=True)
    lock = os.open(sb.root / "var/lib/rpm/.rpm.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(lock, fcntl.LOCK_EX)  # as rpm holds it during the bundle RPM's transaction
    try:
        p = subprocess.run(
            [frozen, "--root", sb.root, "apply", "--detach-components",
             with_components / "demo-manager-4.0.1-to-4.1.1.zip"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert sb.wait_version("4.1.1") == "4.1.1"
        assert (
            wait_components(sb.root, "waiting for the rpm database lock")
            == "waiting for the rpm database lock"
        )
        assert not agent_installed(sb.root)
    finally:
        os.close(lock)  # the "transaction" ends
    assert wait_components(sb.root, "done") == "done"
    assert agent_installed(sb.root)


def test_bundle_rpm_installs_its_components_after_its_own_transaction(
    sandbox: Callable[..., Sandbox], with_components: Path
) -> None:
    """rpm -i of the bundle RPM inside a manager root that has rpm (the host's /usr bound in):
    %posttrans applies, then the detached step installs the component once rpm is done."""
    sb = sandbox()
    as_manager(sb.root)
    for link, target in (
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ):
        if not (sb.root / link).exists():
            (sb.root / link).symlink_to(target)
    rpm = with_components / RPM
    p = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c",
         'mount -t proc proc "$R/proc"; mount --bind /usr "$R/usr"; '
         f'rpm --root "$R" --dbpath /var/lib/rpm -i {rpm}'],
        capture_output=True, text=True, timeout=300, env={**os.environ, "R": str(sb.root)},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "status:  finished" in p.stdout, p.stdout + p.stderr
    assert sb.wait_version("4.1.1") == "4.1.1"
    log = sb.root / "var/lib/jumpkit/demo-manager/components.log"
    assert wait_components(sb.root, "done") == "done", log.read_text() if log.exists() else "no log"
    assert agent_installed(sb.root)


@pytest.mark.parametrize("algo", ["rsa2048", "ed25519"])
def test_verify_and_inspect_read_bundle_rpms_and_enforce_their_signature(
    tmp_path: Path, keys: dict[str, Path], frozen: Path, rpm_file: Path, algo: str
) -> None:
    """RSA and EdDSA signatures alike: an EdDSA one (in the DSA header tag) was called
    unsigned by inspect and verify (issue 36, item 1)."""
    signed, pub = gpg_signed_rpm(tmp_path, keys, frozen, tmp_path / "out", algo)
    root = tmp_path / "root"
    (root / "var/lib/rpm").mkdir(parents=True)
    subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "--import", str(pub)], check=True)
    # through the frozen binary: rpmfile and zstandard are frozen in
    p = subprocess.run(
        [frozen, "--root", root, "--trust", keys["pub"], "verify", signed], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert "RPM: signatures OK" in p.stderr and p.stdout.startswith("OK demo-manager-4.0.1-to-4.1.1")
    # a key imported without --dbpath (a Debian rpm puts it in its default, ~/.rpmdb) is found
    plain = tmp_path / "plain-root"
    (plain / "var/lib/rpm").mkdir(parents=True)
    subprocess.run(["rpm", "--root", str(plain), "--import", str(pub)], check=True)
    p = install("--root", plain, "--trust", keys["pub"], "verify", signed)
    assert p.returncode == 0 and "RPM: signatures OK" in p.stderr, p.stderr
    p = install("--root", root, "--trust", keys["pub"], "verify", rpm_file)
    assert p.returncode == 3, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("bundle-install: the RPM is unsigned"), p.stderr
    bad = tmp_path / "bad.rpm"
    data = bytearray(signed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    p = install("--root", root, "--trust", keys["pub"], "verify", bad)
    assert p.returncode == 3 and "GPG signature does not verify" in p.stderr, p.stderr
    assert "unsigned" not in p.stderr, p.stderr
    doc = json.loads(build("inspect", signed, "--json").stdout)
    assert doc["rpm"]["name"] == "demo-manager-upgrade" and doc["rpm"]["gpg_signature"] is True
    assert doc["manifest"]["from_version"] == "4.0.1" and doc["development"] is False
    assert json.loads(build("inspect", rpm_file, "--json").stdout)["rpm"]["gpg_signature"] is False
    assert (
        "rpm: demo-manager-upgrade-4.1.1-from4.0.1.x86_64, payload zstd, GPG-signed"
        in build("inspect", signed).stdout
    )


def cpio_renamed(rpm: Path, out: Path, old: bytes, new: bytes) -> Path:
    """The RPM with ``old`` replaced by ``new`` (same length) in every cpio entry name of
    its payload, recompressed: what an attacker with a stolen GPG key, or a broken
    packager, could ship."""
    import rpmfile
    import zstandard

    assert len(old) == len(new)
    with rpmfile.open(str(rpm)) as r:
        offset = r.data_offset
    raw = rpm.read_bytes()
    cpio = zstandard.ZstdDecompressor().decompressobj().decompress(raw[offset:])
    assert old in cpio
    out.write_bytes(raw[:offset] + zstandard.ZstdCompressor(level=1).compress(cpio.replace(old, new)))
    return out


def test_hostile_rpm_payload_with_dotdot_is_refused(
    tmp_path: Path, keys: dict[str, Path], frozen: Path, sandbox: Callable[..., Sandbox]
) -> None:
    """cpio names climbing out with ../: refused by the GPG check (the payload digest no
    longer matches), and, were the signature bypassed, by the payload path check."""
    from installer.errors import UnsafePathError
    from installer.rpmbundle import extract_bundle
    from tests.counts import count

    signed, pub = gpg_signed_rpm(tmp_path, keys, frozen, tmp_path / "out")
    evil = cpio_renamed(
        signed, tmp_path / "evil.rpm", b"./var/lib/jumpkit/bundles/", b"../../../../../tmp/jk-esc/"
    )
    sb = sandbox(supervise=False)
    (sb.root / "var/lib/rpm").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["rpm", "--root", str(sb.root), "--dbpath", "/var/lib/rpm", "--import", str(pub)], check=True
    )
    # rpm -K opens the root's rpmdb, and sqlite rewrites its -shm file even for a read
    ours = (*HARNESS, "var/lib/rpm")
    before = tree_hash(sb.root, ours)
    for command in ("verify", "stage", "apply"):
        p = install("--root", sb.root, command, evil)
        assert p.returncode == 3, f"{command}: {p.returncode} {p.stderr}"
        assert len([ln for ln in p.stderr.splitlines() if ln.startswith("bundle-install:")]) == 1, p.stderr
        assert tree_hash(sb.root, ours) == before
    dest = tmp_path / "x"
    dest.mkdir()
    with pytest.raises(UnsafePathError, match=r"'\.\.' component"):
        extract_bundle(evil, dest)
    assert not list(dest.iterdir()) and not Path("/tmp/jk-esc").exists()
    count("hostile bundles refused by verify, stage and apply")


def test_rpm_install_labels_placed_files_from_the_root_policy(
    sandbox: Callable[..., Sandbox], rpm_file: Path
) -> None:
    """The bundle RPM's %posttrans runs the frozen installer chrooted in the root: a root
    with an SELinux policy gets every placed file labelled as the policy says there too."""
    from tests.selinux import LibSelinux, label, write_policy

    sb = sandbox()
    lib = LibSelinux(write_policy(sb.root))
    lib.restorecon(sb.root)
    as_manager(sb.root)
    p = rpm_in(sb.root, "-i", rpm_file)
    assert p.returncode == 0 and "status:  finished" in p.stdout, p.stdout + p.stderr
    [manifest] = (sb.root / "var/lib/jumpkit/bundles").glob("*/manifest.json")
    placed = [f["path"] for f in json.loads(manifest.read_text())["files"]]
    assert "etc/demo-manager/manager.ini" in placed
    for rel in placed:
        path = sb.root / rel
        assert label(path) == lib.lookup("/" + rel, os.lstat(path).st_mode), rel


def test_the_component_rpm_is_in_the_sbom_and_the_site_lists_zip_and_rpm(with_components: Path) -> None:
    """A component RPM is part of the release it brings: in the jump's changes and SBOM;
    the upgrade-path site offers both bundle files, each with its check (issue 39)."""
    with zipfile.ZipFile(with_components / "demo-manager-4.0.1-to-4.1.1.zip") as z:
        man = json.loads(z.read("manifest.json"))
        doc = json.loads(z.read(man["sbom"]))
    assert {"kind": "rpm", "name": "demo-agent", "before": None, "after": "1.0-1"} in man["changes"]
    assert "pkg:rpm/demo-agent@1.0-1" in {c["purl"] for c in doc["components"]}
    specs = with_components.parent / "specs"
    site = with_components.parent / "site"
    p = build("site", "--specs", specs, "--out", site, "--dist", with_components, "--json")
    assert p.returncode == 0, p.stderr
    assert "bundles/" + RPM in json.loads(p.stdout)["files"]
    page = (site / "jumps/4.0.1-to-4.1.1.html").read_text()
    assert f"<code>rpm -K {RPM}</code>" in page
    assert "<code>bundle-install verify demo-manager-4.0.1-to-4.1.1.zip</code>" in page
    assert "<td>+</td><td>demo-agent</td><td>rpm</td><td></td><td>1.0-1</td>" in page

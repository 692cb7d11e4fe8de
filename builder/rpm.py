"""Bundle RPMs: ``yum install`` the bundle on a manager (issue 6).

The RPM carries the signed bundle unchanged (the installer verifies it exactly as it does
a ZIP it is handed: signature first, then every member's sha256) plus its frozen
installer, under ``/var/lib/jumpkit/bundles/<product>-<from>-to-<to>/``. It writes nothing
into the manager's own paths: ``%pre`` (Lua, so no /bin/sh is needed) refuses the
transaction when the installed version is not the from-version or an upgrade is unfinished,
and ``%posttrans`` runs the installer's ``apply``.

Naming: Name ``<product>-upgrade``, Version ``<to>``, Release ``from<from>`` (a '-' of a
pre-release becomes '~', which rpm sorts before the release). One package name per product,
so the next jump's RPM upgrades this one and ``rpm -q <product>-upgrade`` says which jump
was installed last.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jinja2

from builder.errors import BuildError
from builder.resources import templates
from builder.spec import PackageSpec
from installer.archive import ZipBundle, open_bundle
from installer.format import INSTALLER_MEMBER, MANIFEST_NAME, SIGNATURE_NAME, Manifest
from installer.selfupdate import INSTALLED

BUNDLES_DIR = "/var/lib/jumpkit/bundles"
MAX_MEMBER = 1 << 31  # our own freshly built ZIP; the limit only guards against a bad one
COMPRESSION = {"zstd": "w3.zstdio", "xz": "w6.xzdio", "gzip": "w6.gzdio"}
"""--rpm-compression -> rpm payload macro (zstd: rpm >= 4.14; xz for older rpm)."""


@dataclass(frozen=True)
class RpmResult:
    """A built bundle RPM."""

    path: Path
    name: str
    version: str
    release: str
    signed: bool


PATCH_RELEASE = ".ipatch"
"""Appended to the Release of the RPM whose bundle carries its installer as a patch: it sorts
after the full one, so dnf takes it where both are published, and its %pre refuses a
manager that does not keep the base, naming the full package."""


def rpm_names(manifest: Manifest) -> tuple[str, str, str]:
    """(Name, Version, Release) of the bundle RPM of ``manifest``."""
    patched = manifest.installer is not None and manifest.installer.base is not None
    return (
        f"{manifest.product}-upgrade",
        manifest.to_version,
        "from" + manifest.from_version.replace("-", "_") + (PATCH_RELEASE if patched else ""),
    )


def _lua(value: str) -> str:
    """A Lua string literal that survives rpm's macro expansion (no '%', no newline)."""
    out = []
    for ch in value:
        if ch.isascii() and ch.isprintable() and ch not in '"\\%':
            out.append(ch)
        else:
            out.extend(f"\\{b}" for b in ch.encode())
    return '"' + "".join(out) + '"'


def _header(value: str, field: str) -> str:
    """A spec header value: one line, rpm macros neutralised."""
    if "\n" in value or "\r" in value:
        raise BuildError(f"package.{field} must be one line")
    return value.replace("%", "%%") or "-"


def _tree(zip_path: Path, manifest: Manifest, dest: Path) -> None:
    """The RPM payload: the bundle, and its manifest + signature (readable without unzip),
    and ``bin/bundle-install.sha256`` for the check of the installer that %posttrans takes
    out of the bundle (the installer travels once: inside the ZIP)."""
    dest.mkdir(parents=True)
    if zip_path.stat().st_dev == dest.stat().st_dev:
        os.link(zip_path, dest / zip_path.name)  # rpmbuild copies it anyway: no second copy here
    else:
        shutil.copyfile(zip_path, dest / zip_path.name)
    bundle = open_bundle(zip_path)
    try:
        for member in (MANIFEST_NAME, SIGNATURE_NAME):
            if not bundle.has_member(member):
                continue
            target = dest / member
            with open(target, "wb") as out:
                for chunk in bundle.iter_member(member, MAX_MEMBER):
                    out.write(chunk)
            target.chmod(0o644)
    finally:
        bundle.close()
    assert manifest.installer is not None
    if manifest.installer.base is not None:
        return  # %posttrans runs the manager's kept installer, which builds the new one
    (dest / "bin").mkdir()
    exe = f"{BUNDLES_DIR}/{manifest.bundle_id}/{INSTALLER_MEMBER}"
    (dest / f"{INSTALLER_MEMBER}.sha256").write_text(f"{manifest.installer.sha256}  {exe}\n")


def stored_installer(zip_path: Path) -> tuple[int, int]:
    """Where the installer's bytes lie in the bundle ZIP: (offset, size) of its stored data.

    Raises:
        BuildError: the installer is deflated (a bundle built before installers were
            stored): rebuild the bundle.
    """
    bundle = ZipBundle(zip_path)
    try:
        at = bundle.stored_range(INSTALLER_MEMBER)
    finally:
        bundle.close()
    if at is None:
        raise BuildError(
            f"{zip_path.name}: its installer is deflated; rebuild the bundle with this bundle-build"
        )
    return at


def build_rpm(
    zip_path: Path,
    manifest: Manifest,
    package: PackageSpec,
    summary: str,
    out_dir: Path,
    *,
    compression: str = "zstd",
    sign_key: str | None = None,
    epoch: int | None = None,
) -> RpmResult:
    """Wrap the bundle ``zip_path`` into ``<out_dir>/<name>-<version>-<release>.x86_64.rpm``.

    Raises:
        BuildError: a development bundle (no installer to run), rpmbuild or rpmsign failed.
    """
    if manifest.installer is None:
        raise BuildError("an RPM needs a release bundle: this one has no installer (--no-installer?)")
    if compression not in COMPRESSION:
        raise BuildError(f"unknown RPM compression {compression!r}; one of {', '.join(COMPRESSION)}")
    for tool in ("rpmbuild",) + (("rpmsign",) if sign_key else ()):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed (Debian/Ubuntu: apt-get install rpm)")
    name, version, release = rpm_names(manifest)
    patched = manifest.installer.base is not None
    at = (0, 0) if patched else stored_installer(zip_path)
    spec_text = _spec(manifest, package, summary, compression, zip_path.name, at)
    out_dir = out_dir.absolute()  # rpmbuild runs %install elsewhere: a relative _topdir breaks it
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}-{version}-{release}.x86_64.rpm"
    with tempfile.TemporaryDirectory(prefix=".rpmbuild-", dir=out_dir) as tmp:
        top = Path(tmp)
        _tree(zip_path, manifest, top / "SOURCES/tree")
        spec = top / "SPECS/bundle.spec"
        spec.parent.mkdir()
        spec.write_text(spec_text)
        env_vars = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch if epoch is not None else manifest.created)}
        p = subprocess.run(
            [
                "rpmbuild", "-bb", "--quiet", "--target", "x86_64",
                "--define", f"_topdir {top}",
                "--define", f"_rpmdir {top}/RPMS",
                "--define", "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
                str(spec),
            ],
            capture_output=True, text=True, env=env_vars, check=False,
        )  # fmt: skip
        built = top / "RPMS" / final.name
        if p.returncode != 0 or not built.is_file():
            tail = (p.stderr.strip().splitlines() or ["no output"])[-3:]
            raise BuildError(f"rpmbuild failed (exit {p.returncode}): {' | '.join(tail)}")
        if sign_key:
            _sign(built, sign_key)
        os.replace(built, final)
    return RpmResult(final, name, version, release, signed=bool(sign_key))


def _spec(
    manifest: Manifest,
    package: PackageSpec,
    summary: str,
    compression: str,
    bundle_name: str,
    installer_at: tuple[int, int],
) -> str:
    """The bundle RPM's spec file, rendered from templates/rpm/bundle.spec.j2."""
    name, version, release = rpm_names(manifest)
    bundle_dir = f"{BUNDLES_DIR}/{manifest.bundle_id}"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates() / "rpm"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["lua"] = _lua
    return env.get_template("bundle.spec.j2").render(
        name=name,
        version=version,
        release=release,
        summary=_header(summary or f"{manifest.product} upgrade bundle", "summary"),
        license=_header(package.license, "license"),
        url=_header(package.url, "url"),
        packager=_header(package.packager, "packager"),
        group=_header(package.group, "group"),
        payload=COMPRESSION[compression],
        product=manifest.product,
        from_version=manifest.from_version,
        to_version=manifest.to_version,
        dir=bundle_dir,
        bundle=bundle_name,
        installer_offset=installer_at[0],
        installer_size=installer_at[1],
        base=manifest.installer.base if manifest.installer else None,
        kept=f"/{INSTALLED}",
        full_release=release.removesuffix(PATCH_RELEASE),
        version_file="/" + manifest.version_file,
        status_file=f"/var/lib/jumpkit/{manifest.product}/status.json",
        tree="%{_sourcedir}/tree",
        changelog_date=time.strftime("%a %b %d %Y", time.gmtime(manifest.created)),
        changelog_name=_header(package.packager or "jumpkit <jumpkit@localhost>", "packager"),
    )


def _sign(rpm: Path, key: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9@._<> +-]{1,200}", key):
        raise BuildError("--rpm-sign-key: give a GPG key id, fingerprint or e-mail")
    p = subprocess.run(
        ["rpmsign", "--addsign", "--define", f"_gpg_name {key}", "--define", "__gpg /usr/bin/gpg", str(rpm)],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-2:]
        raise BuildError(f"rpmsign failed (exit {p.returncode}): {' | '.join(tail)}")

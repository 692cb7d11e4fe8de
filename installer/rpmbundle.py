"""Bundle RPMs read by the installer (``verify``) and the builder (``inspect``).

An RPM bundle carries the signed ZIP unchanged under
``/var/lib/jumpkit/bundles/<id>/<id>.zip``. Verifying one is: the RPM's GPG signature
first (``rpm -K`` with signature enforcement, against the keys imported into the target's
rpm database; plain ``rpm -K`` passes unsigned packages), then the ZIP exactly as any
ZIP. The payload is read with rpmfile (no rpm binary needed for that), streamed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from installer.errors import BundleRejectedError, SignatureError, UnsafePathError
from installer.paths import check_relpath, open_regular

RPM_MAGIC = b"\xed\xab\xee\xdb"
BUNDLES_PREFIX = "var/lib/jumpkit/bundles/"
SIGNATURE_TAGS = ("rsaheader", "signature", "dsaheader", "rsa", "gpg", "pgp", "pgp5", "openpgp")
"""Signature-header tags that hold an OpenPGP signature, as rpmfile names them: RSA
signatures go in RSAHEADER (268); DSA, ECDSA and EdDSA ones (modern GnuPG's default key is
ed25519) in DSAHEADER (267), which rpmfile calls ``signature``; the legacy header+payload
ones in PGP, GPG and PGP5 (1002, 1005, 1006). The other spellings are other readers'."""


def is_rpm(path: Path) -> bool:
    """True when ``path`` starts with the RPM lead magic."""
    try:
        with open_regular(path) as f:
            return f.read(4) == RPM_MAGIC
    except OSError:  # not a file: open_bundle says so
        return False


def check_signature(path: Path, root: Path) -> str:
    """Enforce the RPM's GPG signature with the target's rpm and its imported keys.

    Raises:
        SignatureError: unsigned, unknown key, or tampered; or no rpm to check with.
    """
    if shutil.which("rpm") is None:
        raise SignatureError("cannot check the RPM's GPG signature: rpm is not installed here")
    # the keys are where the distribution's rpm keeps its database under the root: RHEL and
    # Fedora's /var/lib/rpm, or a Debian rpm's own default (~/.rpmdb) when the key was
    # imported without --dbpath; /var/lib/rpm first, then the default
    for dbpath in (["--dbpath", "/var/lib/rpm"], *_default_dbpath(root)):
        argv = ["rpm", *dbpath, "-K", "--define", "_pkgverify_level signature", str(path)]
        if root.resolve() != Path("/"):
            argv[1:1] = ["--root", str(root)]
        p = subprocess.run(argv, capture_output=True, text=True, input="")
        if p.returncode == 0 and "signatures OK" in p.stdout:
            return "signatures OK"
    said = [ln for ln in (p.stdout + p.stderr).splitlines() if str(path) in ln or "NOT OK" in ln]
    if p.returncode != 0 or "signatures OK" not in p.stdout:
        if not has_signature(path):
            raise SignatureError(
                "the RPM is unsigned (no GPG signature; bundle-build --rpm-sign-key signs one)"
            )
        detail = said[-1].replace(str(path), "").strip(" :") if said else f"rpm -K exit {p.returncode}"
        raise SignatureError(f"the RPM's GPG signature does not verify ({detail})")
    return "signatures OK"


def _default_dbpath(root: Path) -> list[list[str]]:
    """rpm's own default database path when it is not /var/lib/rpm and the root holds it
    already (a check must never make one in the manager's tree): ``[["--dbpath", P]]``."""
    p = subprocess.run(["rpm", "--eval", "%_dbpath"], capture_output=True, text=True, input="")
    default = p.stdout.strip()
    if p.returncode != 0 or not default.startswith("/") or default == "/var/lib/rpm":
        return []
    return [["--dbpath", default]] if (root / default.lstrip("/")).is_dir() else []


def has_signature(path: Path) -> bool:
    """True when the RPM's signature header holds any GPG signature (rpm -K alone says
    "digests SIGNATURES NOT OK" both for an unsigned package and for a bad signature)."""
    import rpmfile

    try:
        with rpmfile.open(str(path)) as rpm:
            return any(t in rpm.headers for t in SIGNATURE_TAGS)
    except (OSError, KeyError, ValueError, EOFError):
        return False


def _member(rpm: Any) -> Any:
    """The one bundle ZIP of the payload; every payload entry is checked first: a clean
    relative path under /var/lib/jumpkit/bundles/, a regular file or a directory."""
    zips = []
    for m in rpm.getmembers():
        name = m.name[2:] if m.name.startswith("./") else m.name.lstrip("/")
        check_relpath(name, what="RPM payload path")
        if not name.startswith(BUNDLES_PREFIX) and name + "/" != BUNDLES_PREFIX:
            raise UnsafePathError(f"RPM payload path is outside /{BUNDLES_PREFIX}", entry=name)
        if m.issymlink:
            raise UnsafePathError("RPM payload holds a symlink", entry=name)
        if name.endswith(".zip") and name.count("/") == BUNDLES_PREFIX.count("/") + 1:
            zips.append(m)
    if len(zips) != 1:
        raise BundleRejectedError(
            f"not a jumpkit bundle RPM: {len(zips)} bundle ZIPs under /{BUNDLES_PREFIX}"
        )
    return zips[0]


def extract_bundle(path: Path, dest: Path) -> Path:
    """Stream the bundle ZIP out of the RPM into ``dest``; returns its path.

    Raises:
        BundleRejectedError: not a readable RPM, or no single bundle ZIP inside.
    """
    import rpmfile

    try:
        with rpmfile.open(str(path)) as rpm:
            member = _member(rpm)
            name = Path(member.name).name
            out = dest / name
            with rpm.extractfile(member) as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
    except (OSError, KeyError, ValueError, EOFError) as e:  # rpmfile raises these on junk
        raise BundleRejectedError(f"not a readable RPM: {e}") from e
    return out


def describe(path: Path) -> dict[str, Any]:
    """Name, version, release, whether a GPG signature is present, and the payload listing."""
    import rpmfile

    def text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    try:
        with rpmfile.open(str(path)) as rpm:
            h = rpm.headers
            return {
                "name": text(h.get("name")),
                "version": text(h.get("version")),
                "release": text(h.get("release")),
                "arch": text(h.get("arch")),
                "gpg_signature": any(t in h for t in SIGNATURE_TAGS),  # see has_signature
                "payload": text(h.get("archive_compression", "")),
                "files": sorted("/" + m.name.lstrip("./") for m in rpm.getmembers()),
            }
    except (OSError, KeyError, ValueError, EOFError) as e:
        raise BundleRejectedError(f"not a readable RPM: {e}") from e

"""The installer as a patch (bundle format 3).

A release bundle carries the frozen installer that becomes the manager's (about 23 MB,
whatever the product's change). When the build knows the installer the from-version's
release bundle carried (``bundle-build --installer-base``), which is the one a manager at
that version keeps (:mod:`installer.selfupdate`), the bundle can carry
``bin/bundle-install.patch`` instead: a zstd patch of the new installer against that base.
The builder publishes it beside the full bundle; a bundle whose jumpkit did not change
carries a patch of a few hundred bytes.

On the manager the kept installer is the base: pre-flight refuses (exit 4) a manager that
keeps another one, or none, naming the base it needs and the full bundle to use instead;
staging builds the new installer from the kept one's bytes (checked against the base's
sha256 and size, so a kept installer that drifted is refused the same way) and the patch,
and checks the result against the signed sha256 (exit 3 when it differs), so the commit
hands over to it exactly as to a whole one. In a chain, a later jump's base is the
installer an earlier jump of the same run stages (the one the manager keeps once it has
committed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TypeGuard

from installer.delta import MAX_PATCHED_BYTES, apply_patch
from installer.errors import BundleRejectedError, JumpkitError, PatchError, PreconditionError
from installer.format import INSTALLER_MEMBER, INSTALLER_PATCH_MEMBER, InstallerBase, Manifest
from installer.paths import read_beneath
from installer.selfupdate import INSTALLED, installed_info


def full_bundle_name(manifest: Manifest) -> str:
    """The file name of the bundle that carries this jump's installer whole."""
    return f"{manifest.bundle_id}.zip"


def _refusal(manifest: Manifest, base: InstallerBase, how: str) -> PreconditionError:
    return PreconditionError(
        f"installer: this bundle carries its installer as a patch against bundle-install "
        f"{base.version} (sha256 {base.sha256[:12]}), and this manager {how}: "
        f"apply the full bundle {full_bundle_name(manifest)} instead"
    )


def _read_kept(root: Path, limit: int) -> bytes | None:
    """The kept installer's bytes (read beneath the root, at most ``limit``), or None: none
    kept, not a regular file, larger, or a link out of the root."""
    try:
        return read_beneath(root, INSTALLED, limit)
    except (OSError, JumpkitError):
        return None


def _is_base(data: bytes | None, base: InstallerBase) -> TypeGuard[bytes]:
    return data is not None and len(data) == base.size and hashlib.sha256(data).hexdigest() == base.sha256


def kept_sha256(root: Path) -> str | None:
    """sha256 of the bytes of the manager's kept installer (None: it keeps none)."""
    data = _read_kept(root, MAX_PATCHED_BYTES)
    return None if data is None else hashlib.sha256(data).hexdigest()


def _kept_state(root: Path) -> str:
    """How the manager's kept installer differs from a base, for the refusal."""
    info = installed_info(root)
    if not (root / INSTALLED).is_file():
        return f"keeps no installer at /{INSTALLED}"
    if info is None:
        return f"keeps an installer at /{INSTALLED} without its bundle-install.json"
    return (
        f"keeps bundle-install {info.get('version', '?')} (sha256 {str(info.get('sha256', '?'))[:12]}), "
        "or bytes that differ from it"
    )


def check_base(manifest: Manifest, root: Path) -> str | None:
    """Pre-flight: how the installer travels (None: a development bundle), and, for a
    patch, that the manager keeps its base.

    Raises:
        PreconditionError: it keeps another installer, none, or one that drifted (exit 4).
    """
    info = manifest.installer
    if info is None:
        return None
    if info.base is None:
        return f"installer: bundle-install {info.version} travels whole in the bundle"
    if not _is_base(_read_kept(root, info.base.size), info.base):
        raise _refusal(manifest, info.base, _kept_state(root))
    return (
        f"installer: bundle-install {info.version} is built from the kept bundle-install "
        f"{info.base.version} and a patch"
    )


def build(manifest: Manifest, root: Path, bundle_dir: Path, earlier: Mapping[str, Path | None]) -> None:
    """Staging: ``bundle_dir/bin/bundle-install`` from the base (an earlier jump's staged
    installer in a chain, else the kept one) and the staged patch, which is then removed.

    Raises:
        PreconditionError: the base is not there (exit 4).
        BundleRejectedError: the patch does not build the signed installer (exit 3).
    """
    info = manifest.installer
    if info is None or info.base is None:
        return
    assert info.size is not None  # the manifest's rules
    patch_path = bundle_dir / INSTALLER_PATCH_MEMBER
    src = earlier.get(INSTALLED)
    old = src.read_bytes() if src is not None else _read_kept(root, info.base.size)
    if not _is_base(old, info.base):
        raise _refusal(manifest, info.base, "its chain" if src is not None else _kept_state(root))
    try:
        new = apply_patch(info.base.method, old, patch_path.read_bytes(), info.size, info.sha256)
    except PatchError as e:
        raise BundleRejectedError(f"{INSTALLER_PATCH_MEMBER}: {e.message}") from e
    del old
    dest = bundle_dir / INSTALLER_MEMBER
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
    try:
        view = memoryview(new)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)
    patch_path.unlink()

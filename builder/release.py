"""A release build as one library call: ``bundle-build`` parses its options into
:class:`BuildOptions`, calls :func:`build` and prints what comes back; a script or a test can
do the same without the command line. The product is loaded once by the caller, however
many jumps the chain holds.

    product = load_product(Path("specs"), None)
    for built in build(product, chain_of(product, "4.0.1", "4.1.1"), BuildOptions(out, key)):
        print(built.to_json())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.build import BuildResult, build_jump
from builder.errors import BuildError, UnknownJumpError
from builder.frozen import FrozenInstaller
from builder.installerbase import BaseInstaller, resolve_base
from builder.rpm import RpmResult, build_rpm
from builder.spec import Product
from installer.errors import NoPath
from installer.format import INSTALLER_PATCH_FORMAT, INSTALLER_PATCH_MEMBER
from installer.graph import plan_chain

FORMATS = ("zip", "rpm", "all")


@dataclass(frozen=True)
class BuildOptions:
    """How to build each bundle of a chain."""

    out: Path
    key: Path | None
    """ed25519 private key; None builds unsigned (development) bundles."""
    formats: str = "zip"
    """zip, rpm (the ZIP then travels inside the RPM only) or all."""
    level: int = 6
    checksum: bool = False
    rehearse: bool = True
    installer: FrozenInstaller | None = None
    delta: bool = True
    solid: bool | None = None
    """Small members in solid members (format 4); None: where the bundle's installer reads them."""
    sbom: bool | None = None
    """The to-release's SBOM and the jump's component changes (format 5); None: as ``solid``."""
    rpm_compression: str = "zstd"
    rpm_sign_key: str | None = None
    installer_base: str = "none"
    """none, auto, a path or a URL (:mod:`builder.installerbase`): besides each full bundle,
    one whose installer is a patch against that base."""
    repo: str | None = None
    """The TUF repository where ``auto`` also looks for the from-release's full bundle."""


@dataclass(frozen=True)
class Built:
    """One jump's outputs: the bundle (whose ZIP may be gone for ``--format rpm``) and its RPM."""

    result: BuildResult
    rpm: RpmResult | None
    keeps_zip: bool
    signed: bool
    patched: BuildResult | None = None
    """The same jump with its installer as a patch (``--installer-base``), when there is a base."""
    patched_rpm: RpmResult | None = None
    base_note: str | None = None
    """Why there is no patch form although one was asked for."""

    def delta_stats(self) -> dict[str, int]:
        """Files shipped as patches, the patches' bytes, and what they would take whole."""
        m = self.result.manifest
        return {
            "files": len(m.deltas()),
            "patch_bytes": sum(f.delta.size for f in m.deltas() if f.delta),
            "whole_deflated_bytes": self.result.delta_whole_bytes,
            "whole_bytes": sum(f.size for f in m.deltas()),
        }

    def to_json(self) -> dict[str, Any]:
        """What ``bundle-build --json`` prints for this jump."""
        r, m, rpm = self.result, self.result.manifest, self.rpm
        return {
            "ok": True,
            "bundle": str(r.path) if self.keeps_zip else None,
            "sha256": r.sha256,
            "size": r.size,
            "files": len(m.files),
            "removed": len(m.removed),
            "signed": self.signed,
            "installer": m.installer.version if m.installer else None,
            "development": m.development,
            "seconds": round(r.seconds, 3),
            "format": m.format,
            "delta": self.delta_stats(),
            "rpm": _rpm_json(rpm),
            "installer_patch": self._patched_json(),
            "sbom": m.sbom,
            "changes": [c.model_dump() for c in m.changes],
        }

    def _patched_json(self) -> dict[str, Any] | None:
        """The patch form (``--installer-base``), or why there is none."""
        if self.patched is None:
            return None if self.base_note is None else {"bundle": None, "why_not": self.base_note}
        p, info = self.patched, self.patched.manifest.installer
        assert info is not None and info.base is not None
        return {
            "bundle": str(p.path) if self.keeps_zip else None,
            "size": p.size,
            "patch_bytes": next(m.size for m in p.manifest.extras if m.name == INSTALLER_PATCH_MEMBER),
            "base": {"version": info.base.version, "sha256": info.base.sha256},
            "rpm": _rpm_json(self.patched_rpm),
        }


def _rpm_json(rpm: RpmResult | None) -> dict[str, Any] | None:
    if rpm is None:
        return None
    return {
        "path": str(rpm.path),
        "name": rpm.name,
        "version": rpm.version,
        "release": rpm.release,
        "signed": rpm.signed,
    }


def chain_of(product: Product, frm: str, to: str) -> list[tuple[str, str]]:
    """The jumps to build for ``frm -> to``: that jump when the product defines it, else the
    chain ``plan`` finds (fewest jumps, policy and required stops honoured).

    Raises:
        UnknownJumpError: no jump and no chain (the message lists the defined jumps).
    """
    if (frm, to) in product.jump_files():
        return [(frm, to)]
    try:
        return plan_chain(product.graph(), frm, to)
    except NoPath as e:
        defined = ", ".join(f"{a} -> {b}" for a, b in product.graph().jumps) or "none"
        raise UnknownJumpError(
            f"{product.name} has no jump {frm} -> {to} and no chain of jumps ({e.message}); "
            f"defined: {defined}"
        ) from e


def build(
    product: Product,
    chain: list[tuple[str, str]],
    options: BuildOptions,
    *,
    progress: Callable[[int], None] | None = None,
    on_built: Callable[[Built], None] | None = None,
) -> list[Built]:
    """Build each jump of ``chain`` in order (``on_built`` hears of each as it is done).

    Raises:
        BuildError: an RPM asked for without an installer (its %posttrans runs it), or a
            build failed. SpecError: invalid specs.
    """
    if options.formats not in FORMATS:
        raise BuildError(f"format {options.formats!r}: one of {', '.join(FORMATS)}")
    if options.formats != "zip" and options.installer is None:
        raise BuildError("an RPM runs the bundle's installer in %posttrans: pass --installer (or freeze one)")
    out = []
    for frm, to in chain:
        built = build_one(product, frm, to, options, progress=progress)
        out.append(built)
        if on_built is not None:
            on_built(built)
    return out


def build_one(
    product: Product,
    frm: str,
    to: str,
    options: BuildOptions,
    *,
    progress: Callable[[int], None] | None = None,
) -> Built:
    """One jump's bundle, and its RPM when asked (``rpm`` alone: the ZIP is removed once the
    RPM carries it)."""
    o = options
    base, note = _base(product, frm, o)

    def one(patch_base: BaseInstaller | None) -> tuple[BuildResult, RpmResult | None]:
        result = build_jump(
            product, frm, to, o.out, key=o.key, level=o.level, checksum=o.checksum, rehearse=o.rehearse,
            installer=o.installer, progress=progress, delta=o.delta, installer_base=patch_base,
            solid=o.solid,
            sbom=o.sbom,
        )  # fmt: skip
        rpm = None
        if o.formats in ("rpm", "all"):
            spec = product.spec
            rpm = build_rpm(
                result.path, result.manifest, spec.package, spec.summary, o.out,
                compression=o.rpm_compression, sign_key=o.rpm_sign_key,
            )  # fmt: skip
            if o.formats == "rpm":
                result.path.unlink()
        return result, rpm

    result, rpm = one(None)
    patched, patched_rpm = one(base) if base is not None else (None, None)
    return Built(
        result, rpm, keeps_zip=o.formats != "rpm", signed=o.key is not None, patched=patched,
        patched_rpm=patched_rpm, base_note=note,
    )  # fmt: skip


def _base(product: Product, frm: str, o: BuildOptions) -> tuple[BaseInstaller | None, str | None]:
    """The base of the patch form, or why there is none (None, None: none was asked for)."""
    if o.installer is None or o.installer_base == "none":
        return None, None
    base = resolve_base(o.installer_base, out=o.out, product=product.name, frm=frm, repo=o.repo)
    if base is None:
        where = f"{o.out}" + (f" nor among the targets of {o.repo}" if o.repo else "")
        return None, f"--installer-base auto: no full release bundle {product.name}-*-to-{frm}.zip in {where}"
    if INSTALLER_PATCH_FORMAT not in base.formats:
        return None, (
            f"--installer-base {base.source}: bundle-install {base.version} reads bundle formats "
            f"{base.formats}, not {INSTALLER_PATCH_FORMAT}: it could not apply a patch form"
        )
    return base, None

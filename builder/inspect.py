"""Reading a built bundle back for humans and scripts (``bundle-build inspect``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from installer import rpmbundle
from installer.archive import open_bundle
from installer.attrs import describe_caps
from installer.codec import parse_manifest
from installer.errors import SignatureError
from installer.format import (
    INSTALLER_PATCH_MEMBER,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
)
from installer.sbom import ComponentChange, summary
from installer.signing import load_trusted_keys, verify_signature


def inspect_bundle(path: Path, trust: list[Path]) -> dict[str, Any]:
    """The manifest plus what the container and the signature say.

    Raises:
        BundleRejectedError: not a readable bundle, or (with ``trust``) a bad signature.
    """
    if rpmbundle.is_rpm(path):
        rpm = rpmbundle.describe(path)
        with tempfile.TemporaryDirectory(prefix="jumpkit-inspect-") as tmp:
            info = inspect_bundle(rpmbundle.extract_bundle(path, Path(tmp)), trust)
        return {**info, "bundle": str(path), "size": path.stat().st_size, "rpm": rpm}
    bundle = open_bundle(path)
    try:
        data = bundle.read_small(MANIFEST_NAME, MAX_MANIFEST_BYTES)
        sig = (
            bundle.read_small(SIGNATURE_NAME, MAX_SIGNATURE_BYTES)
            if bundle.has_member(SIGNATURE_NAME)
            else b""
        )
    finally:
        bundle.close()
    signature: dict[str, Any] = {"present": bool(sig)}
    if sig:
        try:
            signature["keyid"] = json.loads(sig).get("keyid")
        except (ValueError, AttributeError):
            signature["keyid"] = None
    if trust:
        if not sig:
            raise SignatureError("bundle is unsigned")
        signature["verified_by"] = verify_signature(data, sig, load_trusted_keys(trust))
    else:
        signature["verified_by"] = None
    manifest = parse_manifest(data)
    return {
        "bundle": str(path),
        "size": path.stat().st_size,
        "signature": signature,
        "development": manifest.installer is None,
        "manifest": manifest.model_dump(mode="json"),
    }


def describe(info: dict[str, Any]) -> list[str]:
    """Human lines for :func:`inspect_bundle`'s result."""
    m = info["manifest"]
    return [*_header(info), *_files(m), *_patches(m), *_solids(m), *_components(m), *_special(m), *_runs(m)]


def _header(info: dict[str, Any]) -> list[str]:
    """The jump, the signature, the installer and the RPM header."""
    m, sig, rpm = info["manifest"], info["signature"], info.get("rpm")
    lines = [
        f"{m['product']} {m['from_version']} -> {m['to_version']}   "
        f"({info['size']} bytes, format {m['format']}, "
        f"built by jumpkit {m['builder_version']})",
        "signature: "
        + (
            "none (unsigned development bundle)"
            if not sig["present"]
            else f"key {str(sig.get('keyid'))[:16]}, "
            + ("verified" if sig.get("verified_by") else "not verified (pass --trust)")
        ),
        "installer: none: DEVELOPMENT bundle (no bin/bundle-install)"
        if info["development"]
        else _installer(m),
    ]
    if rpm:
        lines.append(
            f"rpm: {rpm['name']}-{rpm['version']}-{rpm['release']}.{rpm['arch']}, payload {rpm['payload']}, "
            + ("GPG-signed (rpm -K checks it)" if rpm["gpg_signature"] else "NO GPG signature")
            + f", {len(rpm['files'])} files under /var/lib/jumpkit/bundles/"
        )
    return lines


def _installer(m: dict[str, Any]) -> str:
    """Whole, or a patch against the installer a manager at the from-version keeps."""
    info, base = m["installer"], m["installer"].get("base")
    if base is None:
        return f"installer: bin/bundle-install {info['version']} (whole)"
    patch = next((x["size"] for x in m["extras"] if x["name"] == INSTALLER_PATCH_MEMBER), 0)
    return (
        f"installer: bin/bundle-install {info['version']} as a {patch:,}-byte {base['method']} patch "
        f"against bundle-install {base['version']} (sha256 {base['sha256'][:12]}): applies only on a "
        f"manager that keeps that one; the full bundle is {m['product']}-{m['from_version']}-to-"
        f"{m['to_version']}.zip"
    )


def _files(m: dict[str, Any]) -> list[str]:
    """File counts by kind, and each config with its policy."""
    kinds: dict[str, int] = {}
    for f in m["files"]:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    total = sum(f["size"] for f in m["files"])
    lines = [
        f"files: {len(m['files'])} ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}), "
        f"{total} bytes; removed: {len(m['removed'])}"
    ]
    for f in m["files"]:
        if f["kind"] == "config":
            lines.append(
                f"  config {f['path']}: {f['policy']}"
                + (f" ({len(f['rules'])} rule(s))" if f["rules"] else "")
            )
    return lines


def _patches(m: dict[str, Any]) -> list[str]:
    """What the patches save, and the first 20 of them."""
    patched = [f for f in m["files"] if f.get("delta")]
    if not patched:
        return []
    sent = sum(f["delta"]["size"] for f in patched)
    whole = sum(f["size"] for f in patched)
    lines = [
        f"patches (format {m['format']}): {len(patched)} file(s) as {sent} bytes of patches for "
        f"{whole} bytes of files ({100 - 100 * sent // max(whole, 1)}% saved); "
        "the manager needs the exact old files"
    ]
    for f in patched[:20]:
        d = f["delta"]
        base = f" against {d['base']}" if d.get("base") else ""
        lines.append(f"  patch {f['path']}: {d['method']}{base}, {d['size']} bytes for {f['size']}")
    if len(patched) > 20:
        lines.append(f"  ... and {len(patched) - 20} more (--json lists every one)")
    return lines


def _solids(m: dict[str, Any]) -> list[str]:
    """Format 4: how many members travel in solid members, and what they weigh there."""
    solids = m.get("solids") or []
    if not solids:
        return []
    carried = sum(len(s["members"]) for s in solids)
    raw, packed = sum(s["raw_size"] for s in solids), sum(s["size"] for s in solids)
    return [
        f"solid members (format {m['format']}): {len(solids)}, carrying {carried} small member(s): "
        f"{raw} bytes in {packed}"
    ]


def _components(m: dict[str, Any]) -> list[str]:
    """Format 5: the SBOM member and what the jump changes in the components."""
    if not m.get("sbom"):
        return []
    changes = [ComponentChange.model_validate(c) for c in m.get("changes") or []]
    lines = [f"components since {m['from_version']}: {summary(changes)} (SBOM: {m['sbom']})"]
    lines += [f"  {c.line}" for c in changes[:50]]
    if len(changes) > 50:
        lines.append(f"  ... and {len(changes) - 50} more (--json lists every one)")
    return lines


def _special(m: dict[str, Any]) -> list[str]:
    """Special modes and file capabilities (loudly), and the first 20 removals."""
    modes = {f["path"]: f["mode"] for f in m["files"]}
    lines = [
        f"  SETUID/SETGID/STICKY {path} mode {modes[path]:04o} (allowed by the product spec)"
        for path in m.get("special_modes", [])
    ]
    caps = {f["path"]: f["caps"] for f in m.get("files", []) if f.get("caps")}
    lines += [
        f"  FILE CAPABILITIES {path}: {describe_caps(caps[path])} (allowed by the product spec)"
        for path in m.get("capabilities", [])
    ]
    return lines + [f"  remove {r['path']}" for r in m["removed"][:20]]


def _runs(m: dict[str, Any]) -> list[str]:
    """What an apply runs: services, migrations, checks, hooks, jobs, the cluster gate."""
    lines = []
    svc = m["services"]
    if svc["services"]:
        lines.append(
            f"services ({svc['backend']}): {', '.join(s['name'] for s in svc['services'])}; "
            f"health: {', '.join(h['name'] for h in svc['health']) or 'none'}"
        )
    for db in m.get("databases", []):
        revs = db.get("revisions") or []
        lines.append(
            f"migration: {db['name']} {db['from_revision'] or '(empty)'} -> {db['to_revision']}"
            + (
                f" ({len(revs)} revision(s): {', '.join(revs[:6])}{', ...' if len(revs) > 6 else ''})"
                if revs
                else ""
            )
            + (f"; rehearsed in {db['rehearsal_seconds']:.1f}s" if db.get("rehearsal_seconds") else "")
        )
    lines += [f"check: {c['kind']} {c.get('description') or c['path']}" for c in m["checks"]]
    lines += [f"hook: {h['name']} ({h['when']})" for h in m["hooks"]]
    lines += [
        f"job: {j['name']} (after commit, {j['retries']} retries, backoff {j['backoff']}s)"
        for j in m.get("jobs", [])
    ]
    cl = m.get("cluster")
    if cl:
        lines.append(
            "cluster: leader probe "
            + (cl["leader"]["name"] if cl["leader"] else "none (the first host leads)")
            + f"; member health: {', '.join(h['name'] for h in cl['member_health']) or 'none'}"
            + ("; pins the leader" if cl["pin_leader"] else "")
        )
    return lines

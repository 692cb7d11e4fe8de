"""Hostile bundles, each made from a good one by one precise change. Every case here
must be refused with exit 3 (or 4 for a valid bundle for the wrong target) and must
leave the root unchanged."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from builder.keys import load_private_key
from installer.format import canonical_json, sign_manifest

Members = dict[str, bytes]


def read(zip_path: Path) -> Members:
    with zipfile.ZipFile(zip_path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def write(
    dest: Path, members: Members | list[tuple[str, bytes]], modes: dict[str, int] | None = None
) -> Path:
    items = list(members.items()) if isinstance(members, dict) else members
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in items:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = ((modes or {}).get(name, 0o100644)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return dest


def resign(members: Members, manifest: dict[str, object], key: Ed25519PrivateKey) -> Members:
    data = canonical_json(manifest)
    return {**members, "manifest.json": data, "manifest.sig": sign_manifest(data, key)}


def first_payload(members: Members) -> str:
    return next(n for n in members if n.startswith("payload/") and members[n])


# each case: (good members, manifest dict, good key, evil key, out path) -> bundle path
Case = Callable[[Members, dict[str, object], Ed25519PrivateKey, Ed25519PrivateKey, Path], Path]


def payload_byte_changed(
    m: Members, man: dict[str, object], k: Ed25519PrivateKey, e: Ed25519PrivateKey, out: Path
) -> Path:
    name = first_payload(m)
    data = bytearray(m[name])
    data[len(data) // 2] ^= 0x01
    return write(out, {**m, name: bytes(data)})


def member_not_in_manifest(
    m: Members, man: dict[str, object], k: Ed25519PrivateKey, e: Ed25519PrivateKey, out: Path
) -> Path:
    return write(out, {**m, "payload/opt/demo-manager/backdoor.py": b"print('owned')\n"})


def untrusted_key(
    m: Members, man: dict[str, object], k: Ed25519PrivateKey, e: Ed25519PrivateKey, out: Path
) -> Path:
    return write(out, resign(m, man, e))


def dotdot_member(
    m: Members, man: dict[str, object], k: Ed25519PrivateKey, e: Ed25519PrivateKey, out: Path
) -> Path:
    return write(out, {**m, "payload/../../../tmp/jumpkit-escape": b"x"})


def dotdot_in_signed_manifest(
    m: Members, man: dict[str, object], k: Ed25519PrivateKey, e: Ed25519PrivateKey, out: Path
) -> Path:
    """A validly signed manifest (stolen key, buggy builder) that names ../ paths."""
    name = first_payload(m)
    files = json.loads(json.dumps(man["files"]))
    entry = next(f for f in files if "payload/" + f["path"] == name)
    evil = "opt/../../../tmp/jumpkit-escape"
    entry["path"] = evil
    members = {("payload/" + evil if n == name else n): v for n, v in m.items()}
    return write(out, resign(members, {**man, "files": files}, k))


CORE_CASES: dict[str, Case] = {
    "payload-byte-changed": payload_byte_changed,
    "member-not-in-manifest": member_not_in_manifest,
    "untrusted-key": untrusted_key,
    "dotdot-member": dotdot_member,
    "dotdot-in-signed-manifest": dotdot_in_signed_manifest,
}


def make(case: str, good: Path, key: Path, evil_key: Path, out_dir: Path) -> Path:
    members = read(good)
    manifest = json.loads(members["manifest.json"])
    return CORE_CASES[case](
        members, manifest, load_private_key(key), load_private_key(evil_key), out_dir / f"{case}.zip"
    )

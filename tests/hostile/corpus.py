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


def truncated_archive(
    m: Members, man: dict[str, object], k: Ed25519PrivateKey, e: Ed25519PrivateKey, out: Path
) -> Path:
    """The central directory survives, the data it points to does not."""
    write(out, m)
    data = out.read_bytes()
    cd = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x05\x06"))
    first_cd = data.find(b"PK\x01\x02")
    body, tail = data[:first_cd], data[first_cd:]
    out.write_bytes(body[: len(body) // 2] + b"\0" * (len(body) - len(body) // 2) + tail)
    assert cd > 0
    return out


def local_name_mismatch(
    m: Members, man: dict[str, object], k: Ed25519PrivateKey, e: Ed25519PrivateKey, out: Path
) -> Path:
    """The local header names a different file than the central directory (the trick
    that makes some extractors write one name while checking another)."""
    write(out, m)
    data = bytearray(out.read_bytes())
    name = first_payload(m).encode()
    at = data.find(b"PK\x03\x04")
    while at >= 0 and data[at + 30 : at + 30 + len(name)] != name:
        at = data.find(b"PK\x03\x04", at + 4)
    data[at + 30 + len(name) - 1] ^= 0x20
    out.write_bytes(bytes(data))
    return out


def zip_bomb(
    m: Members, man: dict[str, object], k: Ed25519PrivateKey, e: Ed25519PrivateKey, out: Path
) -> Path:
    """A member that declares (in the signed manifest and the ZIP) 1 KiB but inflates to
    64 MiB of zeros."""
    name = first_payload(m)
    bomb = b"\0" * (64 * 1024 * 1024)
    files = json.loads(json.dumps(man["files"]))
    entry = next(f for f in files if "payload/" + f["path"] == name)
    entry["size"] = 1024
    members = resign({**m, name: bomb}, {**man, "files": files}, k)
    write(out, members)
    data = bytearray(out.read_bytes())
    raw = name.encode()
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(sig)
        while at >= 0:
            name_at = at + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_at : name_at + len(raw)] == raw:
                data[at + size_at : at + size_at + 4] = (1024).to_bytes(4, "little")
                break
            at = data.find(sig, at + 4)
    out.write_bytes(bytes(data))
    return out


CORE_CASES: dict[str, Case] = {
    "payload-byte-changed": payload_byte_changed,
    "member-not-in-manifest": member_not_in_manifest,
    "untrusted-key": untrusted_key,
    "dotdot-member": dotdot_member,
    "dotdot-in-signed-manifest": dotdot_in_signed_manifest,
    "truncated-archive": truncated_archive,
    "local-name-mismatch": local_name_mismatch,
    "zip-bomb": zip_bomb,
}


def make(case: str, good: Path, key: Path, evil_key: Path, out_dir: Path) -> Path:
    members = read(good)
    manifest = json.loads(members["manifest.json"])
    return CORE_CASES[case](
        members, manifest, load_private_key(key), load_private_key(evil_key), out_dir / f"{case}.zip"
    )

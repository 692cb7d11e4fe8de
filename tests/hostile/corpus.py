"""Hostile bundles, each made from a good one by one precise change. Every case here
must be refused with exit 3 (or 4 for a valid bundle for the wrong target) and must
leave the root unchanged."""

from __future__ import annotations

import json
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from builder.keys import load_private_key
from installer.codec import canonical_json
from installer.format import MAX_MANIFEST_BYTES
from installer.signing import sign_manifest

Members = dict[str, bytes]
Key = Ed25519PrivateKey


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
    # a release bundle (format 4) carries its small files in solid members
    name = next((n for n in m if n.startswith("solid/")), None) or first_payload(m)
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


def _entry(man: dict[str, object], m: Members) -> tuple[list[dict[str, object]], dict[str, object], str]:
    """A deep copy of the manifest's files, the entry of the first payload member, its member."""
    name = first_payload(m)
    files: list[dict[str, object]] = json.loads(json.dumps(man["files"]))
    return files, next(f for f in files if "payload/" + str(f["path"]) == name), name


def _patch_name(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace a member name (same length) in its local header and central directory."""
    assert len(old) == len(new) and data.count(old) >= 2
    return data.replace(old, new)


def absolute_member(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    return write(out, {**m, "/tmp/jumpkit-escape": b"x"})


def symlink_out_of_root(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    """A validly signed symlink entry that points out of the root."""
    files, _, _ = _entry(man, m)
    files.append({"path": "opt/demo-manager/etc-link", "kind": "symlink", "link_target": "../../../../etc",
                  "mode": 0o777, "size": 0, "policy": "replace", "rules": [], "sha256": None,
                  "from_sha256": None})  # fmt: skip
    return write(out, resign(m, {**man, "files": files}, k))


def through_symlinked_dir(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    """A symlink entry to a directory inside the root, and a file written through it: the
    file would land in etc/ although the manifest names opt/demo-manager/cfg/."""
    files, entry, name = _entry(man, m)
    files.append({"path": "opt/demo-manager/cfg", "kind": "symlink", "link_target": "../../etc",
                  "mode": 0o777, "size": 0, "policy": "replace", "rules": [], "sha256": None,
                  "from_sha256": None})  # fmt: skip
    new = dict(entry, path="opt/demo-manager/cfg/passwd", from_sha256=None)
    files.append(new)
    return write(
        out, resign({**m, "payload/opt/demo-manager/cfg/passwd": m[name]}, {**man, "files": files}, k)
    )


def symlink_member(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    """A ZIP entry whose mode says symlink (some extractors create the link)."""
    name = first_payload(m)
    return write(out, {**m, name: b"/etc/passwd"}, modes={name: 0o120777})


def shared_record(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    """Two central-directory names pointing at one data record: the ZIP form of a hard
    link (one member's bytes appear under a second, undeclared name)."""
    write(out, m)
    data = out.read_bytes()
    eocd = data.rfind(b"PK\x05\x06")
    cd_size, cd_off = struct.unpack("<II", data[eocd + 12 : eocd + 20])
    cd = data[cd_off : cd_off + cd_size]
    name = first_payload(m).encode()
    at = cd.find(b"PK\x01\x02")
    while cd[at + 46 : at + 46 + len(name)] != name:
        at = cd.find(b"PK\x01\x02", at + 4)
    n, x, c = struct.unpack("<HHH", cd[at + 28 : at + 34])
    record = cd[at : at + 46 + n + x + c]
    alias = record[:46] + name[:-1] + (b"X" if name[-1:] != b"X" else b"Y") + record[46 + n :]
    count = struct.unpack("<H", data[eocd + 10 : eocd + 12])[0] + 1
    eocd_new = (data[eocd : eocd + 8] + struct.pack("<HH", count, count)
                + struct.pack("<II", cd_size + len(alias), cd_off) + data[eocd + 20 :])  # fmt: skip
    out.write_bytes(data[:cd_off] + cd + alias + eocd_new)
    return out


def duplicate_name(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    name = first_payload(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate: that is the point
        return write(out, [*m.items(), (name, b"second copy wins in some extractors")])


def case_only_names(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    name = first_payload(m)
    return write(out, {**m, name.upper().replace("PAYLOAD/", "payload/"): m[name]})


def non_utf8_name(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    """A name with bytes that are not UTF-8, in an entry flagged UTF-8."""
    write(out, {**m, "payload/opt/demo-manager/\u00e9vil": b"x"})
    return out.write_bytes(_patch_name(out.read_bytes(), "\u00e9".encode(), b"\xff\xfe")) and out


def fifo_member(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    name = first_payload(m)
    return write(out, {**m, name: b""}, modes={name: 0o010644})


def setuid_member(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    """The manifest says 0644; the ZIP entry carries setuid root."""
    name = first_payload(m)
    return write(out, m, modes={name: 0o104755})


def missing_member(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    name = first_payload(m)
    return write(out, {n: v for n, v in m.items() if n != name})


def size_mismatch(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    files, entry, _ = _entry(man, m)
    entry["size"] = int(entry["size"]) + 1  # type: ignore[call-overload]
    return write(out, resign(m, {**man, "files": files}, k))


def hash_mismatch(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    """The signed manifest records another sha256 than the member has."""
    files, entry, _ = _entry(man, m)
    entry["sha256"] = "0" * 64
    return write(out, resign(m, {**man, "files": files}, k))


def corrupt_central_directory(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    write(out, m)
    data = bytearray(out.read_bytes())
    at = data.find(b"PK\x01\x02", len(data) // 2)
    data[at : at + 4] = b"XX\x01\x02"
    out.write_bytes(bytes(data))
    return out


def declared_total_over_limit(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    """The signed manifest declares 100 GiB: refused before a byte is unpacked (the
    installer's --max-bundle-size, 64G by default)."""
    files, entry, _ = _entry(man, m)
    entry["size"] = 100 * 1024**3
    return write(out, resign(m, {**man, "files": files}, k))


def missing_signature(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    return write(out, {n: v for n, v in m.items() if n != "manifest.sig"})


def signature_over_other_bytes(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    """A genuine signature by the trusted key, but of a different manifest."""
    other = resign(m, {**man, "created": int(man["created"]) + 1}, k)  # type: ignore[call-overload]
    return write(out, {**m, "manifest.sig": other["manifest.sig"]})


def duplicate_json_keys(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    """Signed JSON whose first "to_version" says 9.9.9 and whose second says the real one:
    parsers disagree on which wins."""
    data = canonical_json(man)
    evil = b'{"to_version":"9.9.9",' + data[1:]
    return write(out, {**m, "manifest.json": evil, "manifest.sig": sign_manifest(evil, k)})


def unknown_format(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    return write(out, resign(m, {**man, "format": 99}, k))


def oversized_manifest(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    """A manifest.json 1 MiB over the cap (it deflates to ~130 KiB in the archive)."""
    data = canonical_json(man)
    big = data[:-1] + b',"x":"' + b" " * (MAX_MANIFEST_BYTES + (1 << 20)) + b'"}'
    return write(out, {**m, "manifest.json": big, "manifest.sig": sign_manifest(big, k)})


def wrong_product(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    return write(out, resign(m, {**man, "product": "other-manager"}, k))


def wrong_from_version(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    return write(out, resign(m, {**man, "from_version": "3.4.2"}, k))


def downgrade(m: Members, man: dict[str, object], k: Key, e: Key, out: Path) -> Path:
    return write(out, resign(m, {**man, "to_version": "3.4.2"}, k))


CORE_CASES: dict[str, Case] = {
    "payload-byte-changed": payload_byte_changed,
    "member-not-in-manifest": member_not_in_manifest,
    "untrusted-key": untrusted_key,
    "dotdot-member": dotdot_member,
    "dotdot-in-signed-manifest": dotdot_in_signed_manifest,
    "truncated-archive": truncated_archive,
    "local-name-mismatch": local_name_mismatch,
    "zip-bomb": zip_bomb,
    "absolute-member": absolute_member,
    "symlink-out-of-root": symlink_out_of_root,
    "through-symlinked-dir": through_symlinked_dir,
    "symlink-member": symlink_member,
    "shared-record-hard-link": shared_record,
    "duplicate-name": duplicate_name,
    "case-only-names": case_only_names,
    "non-utf8-name": non_utf8_name,
    "fifo-member": fifo_member,
    "setuid-not-declared": setuid_member,
    "manifest-entry-missing": missing_member,
    "size-mismatch": size_mismatch,
    "hash-mismatch": hash_mismatch,
    "corrupt-central-directory": corrupt_central_directory,
    "declared-total-over-limit": declared_total_over_limit,
    "missing-signature": missing_signature,
    "signature-over-other-bytes": signature_over_other_bytes,
    "duplicate-json-keys": duplicate_json_keys,
    "unknown-format": unknown_format,
    "oversized-manifest": oversized_manifest,
    "wrong-product": wrong_product,
    "wrong-from-version": wrong_from_version,
    "downgrade": downgrade,
}

# what each case must be refused with: exit code and a phrase of the one error line
EXPECT: dict[str, tuple[int, str]] = {
    "payload-byte-changed": (3, "sha256 does not match"),
    "member-not-in-manifest": (3, "not in the manifest"),
    "untrusted-key": (3, "key"),
    "dotdot-member": (3, "'..' component"),
    "dotdot-in-signed-manifest": (3, "'..' component"),
    "truncated-archive": (3, ""),
    "local-name-mismatch": (3, "local header names another member"),
    "zip-bomb": (3, "inflates past its declared size"),
    "absolute-member": (3, "absolute"),
    "symlink-out-of-root": (3, "outside the root"),
    "through-symlinked-dir": (3, "lies below another entry"),
    "symlink-member": (3, "not a regular file"),
    "shared-record-hard-link": (3, "overlaps"),
    "duplicate-name": (3, "appears twice"),
    "case-only-names": (3, "differs only in case"),
    "non-utf8-name": (3, "not a readable ZIP"),
    "fifo-member": (3, "not a regular file"),
    "setuid-not-declared": (3, "setuid"),
    "manifest-entry-missing": (3, "missing from the archive"),
    "size-mismatch": (3, "archive declares"),
    "hash-mismatch": (3, "sha256 does not match"),
    "corrupt-central-directory": (3, "not a readable ZIP"),
    "declared-total-over-limit": (3, "above the limit"),
    "missing-signature": (3, "not signed"),
    "signature-over-other-bytes": (3, "signature"),
    "duplicate-json-keys": (3, "duplicate JSON key"),
    "unknown-format": (3, "unknown bundle format"),
    "oversized-manifest": (3, "larger than"),
    "wrong-product": (4, "the bundle is for 'other-manager'"),
    "wrong-from-version": (4, "installed version is 4.0.1"),
    "downgrade": (3, "is not above"),
}


def make(case: str, good: Path, key: Path, evil_key: Path, out_dir: Path) -> Path:
    members = read(good)
    manifest = json.loads(members["manifest.json"])
    return CORE_CASES[case](
        members, manifest, load_private_key(key), load_private_key(evil_key), out_dir / f"{case}.zip"
    )

"""Trust: sha256 of files and streams, ed25519 keys, and the signature over a manifest's
canonical bytes (``manifest.sig``: ``{"keyid": ..., "sig": base64}``)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from installer.codec import canonical_json, loads_strict
from installer.errors import ManifestError, SignatureError
from installer.format import CHUNK, MAX_SIGNATURE_BYTES, SIGNATURE_NAME
from installer.paths import open_regular


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    """Hash a stream in chunks; returns (hex digest, size)."""
    h = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    """Hash a file without holding it in memory; returns (hex digest, size)."""
    with open(path, "rb") as f:
        return sha256_stream(f)


# --- keys and signatures ----------------------------------------------------------------


def key_id(public: Ed25519PublicKey) -> str:
    """The sha256 of the raw public key, hex: names a key in manifest.sig."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


MAX_PUBLIC_KEY_BYTES = 64 * 1024
"""A PEM ed25519 public key is 113 bytes; a trust-store file above this is not one."""


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM ed25519 public key.

    Raises:
        SignatureError: the file is not an ed25519 public key.
    """
    try:
        with open_regular(path) as f:  # a FIFO in the trust store must not hang the run
            data = f.read(MAX_PUBLIC_KEY_BYTES + 1)
    except OSError as e:
        raise SignatureError(f"cannot read public key {path}: {e.strerror or e}") from e
    if len(data) > MAX_PUBLIC_KEY_BYTES:
        raise SignatureError(f"cannot read public key {path}: larger than {MAX_PUBLIC_KEY_BYTES} bytes")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise SignatureError(f"cannot read public key {path}: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an ed25519 public key")
    return key


def load_trusted_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """Load every ``*.pub``/``*.pem`` public key from files or directories, by key id.

    Raises:
        SignatureError: a named file is not a public key.
    """
    keys: dict[str, Ed25519PublicKey] = {}
    for p in paths:
        files: Iterator[Path] | list[Path]
        if p.is_dir():
            files = sorted(x for x in p.iterdir() if x.suffix in (".pub", ".pem"))
        elif p.exists():
            files = [p]
        else:
            continue
        for f in files:
            k = load_public_key(f)
            keys[key_id(k)] = k
    return keys


def sign_manifest(data: bytes, private: Ed25519PrivateKey) -> bytes:
    """Return manifest.sig bytes for manifest.json bytes ``data``."""
    sig = private.sign(data)
    return canonical_json({"keyid": key_id(private.public_key()), "sig": base64.b64encode(sig).decode()})


def verify_signature(data: bytes, sig_file: bytes, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Check manifest.sig over manifest.json bytes against the trusted keys.

    Returns the key id that signed.

    Raises:
        SignatureError: the signature is malformed, by an unknown key, or does not match.
    """
    if len(sig_file) > MAX_SIGNATURE_BYTES:
        raise SignatureError("manifest.sig is too large")
    try:
        obj = loads_strict(sig_file, what=SIGNATURE_NAME)
    except ManifestError as e:
        raise SignatureError(e.message) from e
    if not isinstance(obj, dict) or set(obj) != {"keyid", "sig"}:
        raise SignatureError("manifest.sig must hold exactly keyid and sig")
    keyid, sig_b64 = obj["keyid"], obj["sig"]
    if not isinstance(keyid, str) or not isinstance(sig_b64, str):
        raise SignatureError("manifest.sig fields must be strings")
    if not trusted:
        raise SignatureError("no trusted keys: install one in the trust store or pass --trust")
    key = trusted.get(keyid)
    if key is None:
        raise SignatureError(f"bundle is signed by an untrusted key {keyid[:16]}")
    try:
        key.verify(base64.b64decode(sig_b64, validate=True), data)
    except (InvalidSignature, ValueError) as e:
        raise SignatureError("signature does not match manifest.json") from e
    return keyid

"""Signing keys: ed25519, PEM files (private key mode 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from builder.errors import BuildError, SigningKeyError
from installer.signing import key_id


def keygen(directory: Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path, str]:
    """Write ``<name>.key`` (0600) and ``<name>.pub``; returns (private, public, key id).

    Raises:
        BuildError: the key exists and ``overwrite`` is false.
    """
    directory.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    if priv_path.exists() and not overwrite:
        raise BuildError(f"{priv_path} exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(priv_path, 0o600)
    pub_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv_path, pub_path, key_id(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM ed25519 private key.

    Raises:
        SigningKeyError: missing, not a file, unreadable, a public key, not an ed25519
            private key, or readable by group/others (exit 2 for each).
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise SigningKeyError(f"signing key {path}: not a file")
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise SigningKeyError(f"signing key {path}: no such file (bundle-build keygen makes one)") from e
    except OSError as e:
        raise SigningKeyError(f"signing key {path}: cannot read it ({e.strerror})") from e
    if b"PUBLIC KEY-----" in data[:64]:
        raise SigningKeyError(
            f"signing key {path}: a public key; --key takes the private key (keygen's signing.key)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(f"signing key {path}: not a PEM private key without a passphrase") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path}: not an ed25519 private key")
    if st.st_mode & 0o077:
        raise SigningKeyError(
            f"signing key {path}: readable by others (mode {st.st_mode & 0o777:04o}); chmod 600 it"
        )
    return key

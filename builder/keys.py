"""Signing keys: ed25519, PEM files (private key mode 0600)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from builder.errors import BuildError
from installer.format import key_id


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
        BuildError: unreadable, not ed25519, or readable by group/others.
    """
    try:
        if os.stat(path).st_mode & 0o077:
            raise BuildError(f"{path} is readable by others; chmod 600 it")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise BuildError(f"cannot read signing key {path}: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise BuildError(f"{path} is not an ed25519 private key")
    return key

"""A TUF repository of bundles on a :mod:`installer.store` (python-tuf's Metadata API).

Layout (consistent snapshots, so a reader never mixes two publications)::

    metadata/root.json, metadata/<n>.root.json
    metadata/<n>.targets.json, metadata/<n>.snapshot.json, metadata/timestamp.json
    targets/<sha256>.<bundle file name>

Keys: one ed25519 key per role (``<role>.key``, PEM, 0600) in the keys directory, plus
``<role>.<i>.key`` when a role's threshold is above 1. ``root.json`` of the keys directory
is what managers pin (``<root>/etc/jumpkit/tuf/root.json``).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from builder.errors import BuildError
from installer.errors import NotFoundError
from installer.store import HttpsStore, S3Store, Store, missing_bucket

ROLES = ("root", "targets", "snapshot", "timestamp")
DEFAULT_EXPIRY_DAYS = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}
SERIALIZER = JSONSerializer(compact=False)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass
class Keys:
    """The signing keys of a repository, by role."""

    directory: Path
    signers: dict[str, list[CryptoSigner]]

    @classmethod
    def load(cls, directory: Path, roles: Iterable[str] = ROLES) -> Keys:
        """Read ``<role>.key`` and ``<role>.<i>.key`` files.

        Raises:
            BuildError: a role has no key here.
        """
        signers: dict[str, list[CryptoSigner]] = {}
        for role in roles:
            files = sorted(directory.glob(f"{role}.key")) + sorted(directory.glob(f"{role}.*.key"))
            if not files:
                raise BuildError(f"no {role} key in {directory} ({role}.key)")
            signers[role] = [_signer(p) for p in files]
        return cls(directory, signers)


def _signer(path: Path) -> CryptoSigner:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise BuildError(f"{path}: not an ed25519 private key")
    return CryptoSigner(key)


def _new_key(path: Path) -> CryptoSigner:
    key = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return CryptoSigner(key)


class Repo:
    """Publish bundles as TUF targets on a store."""

    def __init__(self, store: Store, keys: Keys, expiry_days: dict[str, int] | None = None) -> None:
        self.store = store
        self.keys = keys
        self.expiry = {**DEFAULT_EXPIRY_DAYS, **(expiry_days or {})}

    # --- I/O -------------------------------------------------------------------------
    def _get(self, path: str) -> Metadata[Any]:
        try:
            data = b"".join(self.store.read(path))
        except NotFoundError as e:
            if isinstance(self.store, S3Store) and not self.store.bucket_exists():
                raise BuildError(f"{self.store.url}: {missing_bucket(self.store.bucket)}") from e
            raise BuildError(f"{self.store.url}: no {path}: run 'bundle-build repo init' first") from e
        return Metadata.from_bytes(data)

    def _put(self, path: str, md: Metadata[Any]) -> None:
        with tempfile.NamedTemporaryFile() as tmp:
            tmp.write(md.to_bytes(SERIALIZER))
            tmp.flush()
            self.store.write(path, Path(tmp.name))

    def _sign(self, role: str, md: Metadata[Any]) -> None:
        md.signatures.clear()
        md.signed.expires = _now() + dt.timedelta(days=self.expiry[role])
        for signer in self.keys.signers[role]:
            md.sign(signer, append=True)

    def current(self) -> tuple[Metadata[Root], Metadata[Targets], Metadata[Snapshot], Metadata[Timestamp]]:
        """The published metadata, following timestamp -> snapshot -> targets."""
        ts: Metadata[Timestamp] = self._get("metadata/timestamp.json")
        snap: Metadata[Snapshot] = self._get(f"metadata/{ts.signed.snapshot_meta.version}.snapshot.json")
        tv = snap.signed.meta["targets.json"].version
        targets: Metadata[Targets] = self._get(f"metadata/{tv}.targets.json")
        root: Metadata[Root] = self._get("metadata/root.json")
        return root, targets, snap, ts

    # --- operations --------------------------------------------------------------------
    @staticmethod
    def init(store: Store, keys_dir: Path, thresholds: dict[str, int] | None = None,
             expiry_days: dict[str, int] | None = None, *, create_bucket: bool = False) -> Repo:  # fmt: skip
        """New keys (ed25519, one per role and threshold) and version 1 of every role. The
        repository is checked first (an S3 bucket must exist: ``create_bucket`` makes it),
        so a failure leaves no keys behind; keys an interrupted init left for a repository
        that holds no metadata yet are used again (the rerun continues).

        Raises:
            BuildError: the repository is initialised already, or cannot be written.
        """
        _writable(store, create_bucket)
        try:
            b"".join(store.read("metadata/root.json"))
            raise BuildError(f"{store.url} is initialised already (metadata/root.json exists)")
        except NotFoundError:
            pass
        keys_dir.mkdir(parents=True, exist_ok=True)
        if any(keys_dir.glob("*.key")):  # an init cut off after its keys: continue with them
            signers = Keys.load(keys_dir).signers
            thresholds = {role: len(signers[role]) for role in ROLES}
        else:
            thresholds = {r: 1 for r in ROLES} | (thresholds or {})
            signers = {
                role: [_new_key(keys_dir / (f"{role}.key" if i == 0 else f"{role}.{i + 1}.key"))
                       for i in range(thresholds[role])]
                for role in ROLES
            }  # fmt: skip
        repo = Repo(store, Keys(keys_dir, signers), expiry_days)
        root = Metadata(Root(consistent_snapshot=True))
        for role in ROLES:
            for s in signers[role]:
                root.signed.add_key(s.public_key, role)
            root.signed.roles[role].threshold = thresholds[role]
        repo._sign("root", root)
        repo._put("metadata/1.root.json", root)
        repo._put("metadata/root.json", root)
        (keys_dir / "root.json").write_bytes(root.to_bytes(SERIALIZER))
        repo._publish_targets(Metadata(Targets()), first=True)
        return repo

    def _publish_targets(self, targets: Metadata[Targets], *, first: bool = False) -> None:
        if not first:
            targets.signed.version += 1
        self._sign("targets", targets)
        self._put(f"metadata/{targets.signed.version}.targets.json", targets)
        try:
            snap: Metadata[Snapshot] = self.current()[2]
            snap.signed.version += 1
        except BuildError:
            snap = Metadata(Snapshot())
        snap.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        self._sign("snapshot", snap)
        self._put(f"metadata/{snap.signed.version}.snapshot.json", snap)
        self._timestamp(snap.signed.version)

    def _timestamp(self, snapshot_version: int) -> None:
        try:
            ts: Metadata[Timestamp] = self._get("metadata/timestamp.json")
            ts.signed.version += 1
        except BuildError:
            ts = Metadata(Timestamp())
        ts.signed.snapshot_meta = MetaFile(version=snapshot_version)
        self._sign("timestamp", ts)
        self._put("metadata/timestamp.json", ts)

    def publish(self, bundles: Iterable[tuple[Path, dict[str, Any]]]) -> list[str]:
        """Upload bundles as targets with their custom fields, then new targets, snapshot
        and timestamp. Returns the target names."""
        targets = self.current()[1]
        names = []
        for path, custom in bundles:
            target = TargetFile.from_file(path.name, str(path), ["sha256"])
            target.unrecognized_fields["custom"] = custom
            self.store.write(f"targets/{target.hashes['sha256']}.{path.name}", path)
            targets.signed.targets[path.name] = target
            names.append(path.name)
        self._publish_targets(targets)
        return names

    def refresh(self) -> int:
        """Re-sign the timestamp (a cron job: its expiry is what stops freeze attacks)."""
        ts: Metadata[Timestamp] = self._get("metadata/timestamp.json")
        self._timestamp(ts.signed.snapshot_meta.version)
        return ts.signed.version + 1

    def rotate(self, role: str) -> str:
        """Replace the key of ``role`` (targets or timestamp): a new root version lists the
        new key instead of the old one and is signed by the root key; the role is re-signed
        with the new key. Returns the new key id.

        Raises:
            BuildError: another role.
        """
        if role not in ("targets", "timestamp", "snapshot"):
            raise BuildError(
                f"rotate: {role} keys are not rotated here (root rotation is an offline ceremony)"
            )
        root: Metadata[Root] = self._get("metadata/root.json")
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        for old in list(self.keys.directory.glob(f"{role}.key")) + list(
            self.keys.directory.glob(f"{role}.*.key")
        ):
            old.rename(old.with_suffix(".key.retired"))
        new = [_new_key(self.keys.directory / f"{role}.key")]
        root.signed.add_key(new[0].public_key, role)
        root.signed.roles[role].threshold = 1
        root.signed.version += 1
        self._sign("root", root)
        self._put(f"metadata/{root.signed.version}.root.json", root)
        self._put("metadata/root.json", root)
        self.keys.signers[role] = new
        if role == "timestamp":
            self.refresh()
        else:
            self._publish_targets(self.current()[1])
        return str(new[0].public_key.keyid)

    def export(self, dest: Path) -> int:
        """Copy every metadata file and target reachable from the current timestamp into
        ``dest`` (a ``file://`` repository for an air-gapped site). Returns the file count."""
        from installer.store import FileStore

        out = FileStore(dest.as_uri(), dest)
        root, targets, snap, _ = self.current()
        paths = [f"metadata/{v}.root.json" for v in range(1, root.signed.version + 1)]
        paths += ["metadata/root.json", "metadata/timestamp.json",
                  f"metadata/{snap.signed.version}.snapshot.json",
                  f"metadata/{targets.signed.version}.targets.json"]  # fmt: skip
        paths += [f"targets/{t.hashes['sha256']}.{name}" for name, t in targets.signed.targets.items()]
        with tempfile.TemporaryDirectory() as tmp:
            for p in paths:
                local = Path(tmp) / "obj"
                with open(local, "wb") as f:
                    for chunk in self.store.read(p):
                        f.write(chunk)
                out.write(p, local)
        return len(paths)


def _writable(store: Store, create_bucket: bool) -> None:
    """Refuse a repository that cannot be written before anything is made for it.

    Raises:
        BuildError: an https:// mirror (read-only), or an S3 bucket that does not exist
            (unless ``create_bucket``: then it is created).
    """
    if isinstance(store, HttpsStore):
        raise BuildError(f"{store.url} is read-only (https://): initialise its s3:// or file:// origin")
    if isinstance(store, S3Store) and not store.bucket_exists():
        if not create_bucket:
            raise BuildError(f"{store.url}: {missing_bucket(store.bucket)}")
        store.create_bucket()

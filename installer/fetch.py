"""Fetching bundles from a TUF repository (python-tuf's ngclient).

The trusted root is pinned at ``<root>/etc/jumpkit/tuf/root.json``; the metadata the
client has seen is kept under ``<root>/var/lib/jumpkit/tuf/<repo hash>/`` so that a
repository (or a mirror, or an attacker) serving older metadata later is refused
(rollback), as are expired metadata (freeze), metadata that do not match each other
(mix-and-match), targets whose bytes or length differ from the signed ones, and
metadata signed below a role's threshold. Every TUF refusal is exit 3, nothing staged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from installer.errors import (
    BundleRejectedError,
    NoPath,
    NotFoundError,
    PreconditionError,
    StoreError,
    UsageError,
)
from installer.graph import Graph, Policy, plan_chain
from installer.paths import read_beneath
from installer.state import StateDir
from installer.store import Store, open_store, resuming
from installer.tufclient import FetcherInterface, Updater, UpdaterConfig
from installer.tufclient import exceptions as tuf_errors

if TYPE_CHECKING:
    from installer.format import Manifest

Progress = Callable[[str, int], Callable[[int], None]]
Verify = Callable[[Path, bool], "Manifest"]
"""Verify a downloaded bundle as any bundle; the flag: it must also fit this manager (the
first of a chain; the later ones fit the earlier ones, which apply checks)."""
PINNED_ROOT = "etc/jumpkit/tuf/root.json"
MAX_ROOT_BYTES = 512_000


def pin_root(root: Path, source: Path, *, replace: bool = False) -> str:
    """Check that ``source`` is a TUF root (root metadata signed by its own threshold of
    its root keys, not expired) and place it at ``<root>/etc/jumpkit/tuf/root.json`` (one
    rename). A different root pinned already is replaced only with ``replace``: the
    pinned root is what every later fetch trusts (a new root normally arrives through
    the repository, signed by the old one). Returns what was done.

    Raises:
        UsageError: not a readable file. BundleRejectedError: not a TUF root, too few of
            its own signatures, or expired. PreconditionError: another root is pinned.
    """
    import datetime as dt

    from tuf.api.metadata import Metadata, Root

    from installer.state import beneath_root, write_atomic

    try:
        data = source.read_bytes()[: MAX_ROOT_BYTES + 1]
    except OSError as e:
        raise UsageError(f"{source}: {e.strerror}") from e
    if len(data) > MAX_ROOT_BYTES:
        raise BundleRejectedError(f"{source}: larger than a TUF root may be ({MAX_ROOT_BYTES} bytes)")
    try:
        md = Metadata[Root].from_bytes(data)
        if not isinstance(md.signed, Root):
            raise ValueError(f"it is {md.signed.type} metadata, not root")
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except Exception as e:  # tuf raises its own tree, and ValueError/KeyError on junk
        raise BundleRejectedError(f"{source}: not a TUF root signed by its own keys: {e}") from e
    if md.signed.is_expired(dt.datetime.now(dt.UTC)):
        raise BundleRejectedError(f"{source}: the TUF root expired on {md.signed.expires:%Y-%m-%d}")
    current = read_beneath(root, PINNED_ROOT, MAX_ROOT_BYTES)
    if current == data:
        return f"{PINNED_ROOT} already holds this root (version {md.signed.version}); nothing to do"
    if current is not None and not replace:
        raise PreconditionError(
            f"{root / PINNED_ROOT} holds another TUF root: pass --replace to pin this one instead "
            "(a rotated root normally arrives through the repository, signed by the pinned one)"
        )
    dest = beneath_root(root, PINNED_ROOT)  # never through a link out of the root
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, data)
    os.chmod(dest, 0o644)
    return f"pinned TUF root version {md.signed.version} at {root / PINNED_ROOT}"


class StoreFetcher(FetcherInterface):
    """ngclient's I/O through :class:`Store` objects (the one whose URL prefixes the
    requested URL); resumes cut transfers with Range requests and reports the progress
    of targets."""

    def __init__(self, stores: list[Store], progress: Callable[[int], None] | None = None) -> None:
        self.stores = stores
        self.progress = progress

    def _fetch(self, url: str) -> Iterator[bytes]:
        store = next((s for s in self.stores if url.startswith(s.url + "/")), None)
        if store is None:
            raise tuf_errors.DownloadError(f"{url}: outside the repository")
        path = url[len(store.url) + 1 :]
        try:
            for chunk in resuming(store, path):
                if self.progress is not None and "targets/" in url:
                    self.progress(len(chunk))
                yield chunk
        except NotFoundError as e:
            raise tuf_errors.DownloadHTTPError(e.message, 404) from e
        except StoreError as e:
            raise tuf_errors.DownloadError(e.message) from e


@dataclass
class Available:
    """A bundle the repository offers (a TUF target and its custom fields)."""

    name: str
    product: str
    frm: str
    to: str
    format: str
    length: int
    version_file: str
    installer: str | None = None
    """sha256 of the installer it leaves on the manager (None: a development bundle)."""
    base: str | None = None
    """sha256 of the installer its installer is a patch against (None: it travels whole)."""


def pick(candidates: list[Available], kept: str | None) -> Available:
    """The smallest bundle of one jump that a manager keeping the installer ``kept`` can
    apply: one whose installer travels whole, or as a patch against ``kept``.

    Raises:
        PreconditionError: only patch forms against other installers are offered.
    """
    usable = [a for a in candidates if a.base is None or a.base == kept]
    if not usable:
        a = candidates[0]
        raise PreconditionError(
            f"every bundle of {a.frm} -> {a.to} offered carries its installer as a patch against "
            f"an installer this manager does not keep (sha256 {str(a.base)[:12]}); publish the full bundle"
        )
    return min(usable, key=lambda a: (a.length, a.name))


class Client:
    """A TUF client for one repository URL on one manager root."""

    def __init__(self, root: Path, url: str, progress: Callable[[int], None] | None = None) -> None:
        pinned = root / PINNED_ROOT
        # beneath the root, a regular file, bounded as python-tuf bounds a root (512,000 bytes)
        bootstrap = read_beneath(root, PINNED_ROOT, MAX_ROOT_BYTES)
        if bootstrap is None:
            raise PreconditionError(
                f"no trusted TUF root at {pinned}: install the repository's root.json there first"
            )
        self.store = open_store(url)
        self.meta_dir = root / "var/lib/jumpkit/tuf" / hashlib.sha256(url.encode()).hexdigest()[:16]
        self.meta_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fetcher = StoreFetcher([self.store], progress)
        self._bootstrap = bootstrap if not (self.meta_dir / "root.json").exists() else None

    def _updater(self, target_dir: Path | None = None) -> Updater:
        return Updater(
            metadata_dir=str(self.meta_dir),
            metadata_base_url=f"{self.store.url}/metadata/",
            target_dir=None if target_dir is None else str(target_dir),
            target_base_url=f"{self.store.url}/targets/",
            fetcher=self.fetcher,
            config=UpdaterConfig(prefix_targets_with_hash=True),
            bootstrap=self._bootstrap,
        )

    def refresh(self) -> Updater:
        """Update the trusted metadata (root chain, timestamp, snapshot, targets).

        Raises:
            BundleRejectedError: any TUF check failed (rollback, freeze, mix-and-match,
                signatures below threshold). StoreError: the repository cannot be read.
        """
        up = self._updater()
        _guard(up.refresh)
        return up

    def available(self, up: Updater) -> list[Available]:
        """Every bundle target with jumpkit's custom fields."""
        out = []
        for name, t in up._trusted_set.targets.targets.items():  # ngclient has no listing API
            c: dict[str, Any] = t.unrecognized_fields.get("custom", {})
            if isinstance(c, dict) and {"product", "from", "to", "format"} <= c.keys():
                vf = str(c.get("version_file", ""))
                installer, base = c.get("installer"), c.get("installer_base")
                out.append(Available(name, c["product"], c["from"], c["to"], c["format"], t.length, vf,
                                     installer if isinstance(installer, str) else None,
                                     base if isinstance(base, str) else None))  # fmt: skip
        return out

    def chain(
        self, up: Updater, product: str, installed: str, to: str, fmt: str, kept: str | None = None
    ) -> list[Available]:
        """The bundles from ``installed`` to ``to`` (fewest jumps the repository offers), of
        each jump the smallest this manager can apply (:func:`pick`; a later jump's base is
        the installer the earlier one leaves, else the one ``kept`` now).

        Raises:
            PreconditionError: no such chain (the message says what can be reached).
        """
        offered = [a for a in self.available(up) if a.product == product and a.format == fmt]
        forms: dict[tuple[str, str], list[Available]] = {}
        for a in offered:
            forms.setdefault((a.frm, a.to), []).append(a)
        out = []
        for jump in self._jumps(list(forms), installed, to, fmt):
            out.append(pick(forms[jump], kept))
            kept = out[-1].installer or kept
        return out

    def _jumps(
        self, jumps: list[tuple[str, str]], installed: str, to: str, fmt: str
    ) -> list[tuple[str, str]]:
        # the publisher's builder enforced the product's policy: offered jumps are allowed
        anything = Policy(skip_patch=True, skip_minor=True, major_to_zero=False, skip_major=True)
        graph = Graph(jumps=tuple(jumps), policy=anything)
        try:
            return plan_chain(graph, installed, to)
        except NoPath as e:
            near = ", ".join(e.reachable) or "none"
            raise PreconditionError(
                f"{self.store.url} offers no way from {installed} to {to} as {fmt}: {e.message}; "
                f"reachable: {near}"
            ) from e

    def download(self, up: Updater, name: str, cache: Path) -> tuple[Path, int]:
        """The target ``name`` in ``cache`` (``<sha256>/<name>``), checked against the
        current metadata (length and hashes, as TUF checks a download): a copy already
        there is re-checked and reused; a ``.part`` left by a run that was cut off is
        resumed with a Range request; otherwise it is downloaded. Returns the path and the
        bytes transferred.

        Raises:
            BundleRejectedError: unknown target, or bytes/length not as signed (the
                partial file is removed: the next run starts over).
            StoreError: the repository cannot be read (a partial file stays, to resume).
        """
        info = _guard(lambda: up.get_targetinfo(name))
        if info is None:
            raise BundleRejectedError(f"{name} is not a target of {self.store.url}")
        digest = info.hashes.get("sha256") or next(iter(info.hashes.values()))
        dest = cache / digest / Path(name).name
        if _guard(lambda: up.find_cached_target(info, str(dest))) is not None:
            if self.fetcher.progress is not None:
                self.fetcher.progress(info.length)
            return dest, 0  # the same bytes as signed now: no need to transfer them again
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.is_file() else 0
        if have > info.length:
            part.unlink()
            have = 0
        path = info.path
        if up._trusted_set.root.consistent_snapshot:  # as ngclient names it (prefix_targets_with_hash)
            head, sep, base = path.rpartition("/")
            path = f"{head}{sep}{next(iter(info.hashes.values()))}.{base}"
        got = 0
        with open(part, "ab") as f:
            for chunk in resuming(self.store, f"targets/{path}", start=have):
                if have + got + len(chunk) > info.length:
                    f.close()
                    _discard(part)
                    raise BundleRejectedError(f"TUF: longer than the signed length (endless data): {name}")
                f.write(chunk)
                got += len(chunk)
                if self.fetcher.progress is not None:
                    self.fetcher.progress(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        with open(part, "rb") as f:
            try:
                info.verify_length_and_hashes(f)
            except tuf_errors.LengthOrHashMismatchError as e:
                _discard(part)
                raise BundleRejectedError(f"TUF: bytes do not match the signed metadata: {e}") from e
        os.replace(part, dest)
        return dest, got


def _discard(path: Path) -> None:
    """Remove a cached file and its directory when that leaves it empty."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


# what each ngclient refusal means, most specific first
_REFUSALS: tuple[tuple[type[Exception], str], ...] = (
    (tuf_errors.ExpiredMetadataError, "expired metadata (freeze attack or a stale mirror)"),
    (tuf_errors.BadVersionNumberError, "older metadata than already seen (rollback attack)"),
    (tuf_errors.UnsignedMetadataError, "metadata not signed by enough trusted keys"),
    (tuf_errors.LengthOrHashMismatchError, "bytes do not match the signed metadata"),
    (tuf_errors.DownloadLengthMismatchError, "longer than the signed length (endless data)"),
    (tuf_errors.RepositoryError, "refused"),
)


def _guard(call: Callable[[], Any]) -> Any:
    """Run an ngclient call, translating its errors into jumpkit's tree.

    Raises:
        BundleRejectedError: a TUF check failed. StoreError: the download failed.
        UsageError: a bad argument.
    """
    try:
        return call()
    except (tuf_errors.RepositoryError, tuf_errors.DownloadLengthMismatchError) as e:
        what = next(w for t, w in _REFUSALS if isinstance(e, t))
        raise BundleRejectedError(f"TUF: {what}: {e}") from e
    except tuf_errors.DownloadError as e:
        raise StoreError(f"TUF download failed: {e}") from e
    except ValueError as e:
        raise UsageError(str(e)) from e


def fetch_chain(
    root: Path,
    repo: str,
    to: str,
    fmt: str,
    *,
    state_dir: Path | None,
    verify: Verify,
    log: Callable[[str], None],
    progress: Progress | None = None,
) -> list[Path]:
    """Download the bundles from the installed version to ``to`` through TUF into the
    state dir's ``downloads/``, then verify each as any bundle (signature first).

    Raises:
        BundleRejectedError: a TUF check or a bundle check failed (exit 3; nothing
            kept). PreconditionError: no product marker, no pinned root, no chain.
        StoreError: the repository cannot be read.
    """
    from installer import preflight
    from installer.paths import read_small
    from installer.state import default_state_dir

    product = read_small(root, preflight.PRODUCT_MARKER, 4096)
    product = product.strip() if product else None
    if not product:
        raise PreconditionError(f"no {preflight.PRODUCT_MARKER} under {root}: which product is this?")
    state = StateDir(state_dir) if state_dir is not None else StateDir(default_state_dir(root, product))
    client = Client(root, repo)
    up = client.refresh()
    offered = [a for a in client.available(up) if a.product == product]
    if not offered:
        raise PreconditionError(f"{repo} offers no bundle of {product}")
    version_file = offered[0].version_file
    installed = preflight.read_version_file(root, str(version_file))
    if installed is None:
        raise PreconditionError(f"cannot read the installed version from {version_file}")
    from installer.selfpatch import kept_sha256

    chain = client.chain(up, product, installed, to, fmt, kept=kept_sha256(root))
    for a in chain:
        if a.base is not None:
            whole = min(
                (b.length for b in offered if (b.frm, b.to, b.base) == (a.frm, a.to, None)), default=0
            )
            log(f"took {a.name} ({a.length} bytes{f' instead of {whole}' if whole else ''}): its installer "
                "is a patch against the one this manager keeps")  # fmt: skip
    state.ensure()
    downloads = state.path / DOWNLOADS
    downloads.mkdir(exist_ok=True, mode=0o700)
    total = sum(a.length for a in chain)
    tick = progress("download", total) if progress else None
    client.fetcher.progress = tick
    log(f"{repo}: {installed} -> {to} in {len(chain)} bundle(s), {total} bytes")
    paths = []
    moved = 0
    for n, a in enumerate(chain):
        path, got = client.download(up, a.name, downloads)
        moved += got
        try:
            verify(path, n == 0)  # the later ones fit the earlier ones (apply checks)
        except BaseException as e:
            if isinstance(e, BundleRejectedError):  # signed by TUF, refused by jumpkit: not kept
                _discard(path)
            raise
        paths.append(path)
    reused = total - moved
    again = f"; {reused} bytes reused from {downloads} (checked against the current metadata)"
    log(f"downloaded {moved} bytes" + (again if reused else ""))
    return paths


DOWNLOADS = "downloads"
"""Under the state dir: verified targets by their sha256 (``<sha256>/<name>``), kept until
the apply that uses them commits, or until unstage; a ``.part`` is a transfer to resume."""


def forget_downloads(state: StateDir, bundles: list[Path] | None = None) -> int:
    """Remove the cached targets among ``bundles`` (None: every one, and partial ones);
    returns how many went."""
    import shutil

    downloads = (state.path / DOWNLOADS).resolve()
    if not downloads.is_dir():
        return 0
    if bundles is None:
        dirs = [d for d in downloads.iterdir() if d.is_dir()]
    else:
        dirs = [b.resolve().parent for b in bundles if b.resolve().parent.parent == downloads]
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    return len(dirs)

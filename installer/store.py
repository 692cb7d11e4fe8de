"""Where bundle repositories live: ``file://DIR``, ``s3://BUCKET/PREFIX`` (boto3: endpoint,
region and credentials the usual AWS way, so AWS S3, MinIO and Ceph RGW all work; every
request is signed) and ``https://BASE`` (read-only: a CDN or a public bucket).

Reads stream in chunks and resume an interrupted transfer with a Range request from the
byte reached, so a cut connection costs what was left, not what was done.
"""

from __future__ import annotations

import http.client
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from installer.errors import NotFoundError, StoreError, UsageError

CHUNK = 1 << 20
RETRIES = 5


class Store(Protocol):
    """A flat namespace of objects under a repository URL."""

    url: str

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """The object's bytes from ``offset`` on, in chunks.

        Raises:
            NotFoundError: no such object. StoreError: any other failure.
        """
        ...

    def write(self, path: str, source: Path) -> None:
        """Upload ``source`` as ``path`` (replacing it).

        Raises:
            StoreError: read-only store, or the write failed.
        """
        ...


def resuming(store: Store, path: str, chunks: int = RETRIES, start: int = 0) -> Iterator[bytes]:
    """``store.read(path, start)``, reconnecting with a Range request from the byte reached
    when a transfer breaks (up to ``chunks`` times in a row without progress)."""
    got = start
    failures = 0
    while True:
        try:
            for chunk in store.read(path, got):
                got += len(chunk)
                failures = 0
                yield chunk
            return
        except NotFoundError:
            raise
        except (StoreError, OSError) as e:
            failures += 1
            if failures > chunks:
                raise StoreError(
                    f"{store.url}/{path}: transfer failed {failures} times at byte {got}: {e}"
                ) from e
            time.sleep(min(2.0, 0.1 * 2**failures))


class FileStore:
    """``file:///srv/repo``: a directory (air-gapped sites; what ``export`` writes)."""

    def __init__(self, url: str, base: Path) -> None:
        self.url = url
        self.base = base

    def _path(self, path: str) -> Path:
        from installer.paths import check_relpath

        return self.base / check_relpath(path, what="repository path")

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """See :class:`Store`."""
        try:
            f = open(self._path(path), "rb")  # noqa: SIM115  # closed by the with below
        except FileNotFoundError as e:
            raise NotFoundError(f"{self.url}/{path}: not found") from e
        except OSError as e:
            raise StoreError(f"{self.url}/{path}: {e.strerror}") from e
        with f:
            f.seek(offset)
            while chunk := f.read(CHUNK):
                yield chunk

    def write(self, path: str, source: Path) -> None:
        """See :class:`Store`. Write-temp-rename, so readers never see half an object."""
        dest = self._path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        except OSError as e:
            raise StoreError(f"{self.url}/{path}: {e.strerror}") from e


def _http_read(url: str, offset: int, headers: dict[str, str] | None = None) -> Iterator[bytes]:
    """GET ``url`` from ``offset`` (a Range request) in chunks; a response cut short
    raises :class:`StoreError` (so :func:`resuming` asks for the rest)."""
    req = urllib.request.Request(url, headers=headers or {})
    if offset and "Range" not in req.headers:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=30)
    except urllib.error.HTTPError as e:
        if e.code in (403, 404):
            raise NotFoundError(f"{url}: HTTP {e.code}") from e
        raise StoreError(f"{url}: HTTP {e.code}") from e
    except (urllib.error.URLError, OSError) as e:
        raise StoreError(f"{url}: {getattr(e, 'reason', e)}") from e
    with resp:
        if offset and resp.status != 206:
            raise StoreError(f"{url}: server ignored the Range request")
        length = resp.headers.get("Content-Length")
        want = int(length) if length and length.isdigit() else None
        got = 0
        try:
            while chunk := resp.read(CHUNK):
                got += len(chunk)
                yield chunk
        except (http.client.HTTPException, OSError) as e:  # a cut connection: resuming() retries
            raise StoreError(f"{url}: connection lost: {e!r}") from e
        if want is not None and got < want:  # http.client returns b"" when cut short
            raise StoreError(f"{url}: connection closed after {got} of {want} bytes")


class HttpsStore:
    """``https://cdn.example.com/repo`` (or ``http://`` for a local mirror): read-only."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """See :class:`Store`."""
        return _http_read(f"{self.url}/{path}", offset)

    def write(self, path: str, source: Path) -> None:
        """See :class:`Store`."""
        raise StoreError(f"{self.url} is read-only (https://); publish to its s3:// or file:// origin")


class S3Store:
    """``s3://bucket/prefix``. Reads are plain HTTP GETs signed with AWS Signature V4 by
    botocore's signer (credentials and region resolved the usual AWS way: environment,
    config files, profiles, instance roles; none found: unsigned, for public buckets), so
    the installer needs no S3 client and none of its service data. ``AWS_ENDPOINT_URL``
    points it at MinIO, Ceph RGW or a test server (path-style URLs); otherwise AWS
    (virtual-hosted URLs). Writes (the builder's publish) go through boto3."""

    def __init__(self, url: str, bucket: str, prefix: str) -> None:
        self.url = url.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._session: Any = None

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def _signed(self, key: str, offset: int) -> tuple[str, dict[str, str]]:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.session import get_session

        if self._session is None:
            self._session = get_session()
        region = self._session.get_config_variable("region") or "us-east-1"
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        quoted = urllib.parse.quote(key)
        if endpoint:
            url = f"{endpoint.rstrip('/')}/{self.bucket}/{quoted}"
        else:
            url = f"https://{self.bucket}.s3.{region}.amazonaws.com/{quoted}"
        req = AWSRequest(method="GET", url=url, headers={"Range": f"bytes={offset}-"} if offset else {})
        creds = self._session.get_credentials()
        if creds is not None:
            S3SigV4Auth(creds.get_frozen_credentials(), "s3", region).add_auth(req)
        return url, dict(req.headers.items())

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """See :class:`Store`."""
        from botocore.exceptions import BotoCoreError

        try:
            url, headers = self._signed(self._key(path), offset)
        except BotoCoreError as e:
            raise StoreError(f"{self.url}/{path}: cannot sign the request: {e}") from e
        yield from _http_read(url, offset, headers)

    def write(self, path: str, source: Path) -> None:
        """See :class:`Store`."""
        import boto3
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            boto3.client("s3").upload_file(str(source), self.bucket, self._key(path))
        except (ClientError, BotoCoreError, Boto3Error, OSError) as e:
            if "NoSuchBucket" in str(e):
                raise StoreError(f"{self.url}: {missing_bucket(self.bucket)}") from e
            raise StoreError(f"{self.url}/{path}: upload failed: {e}") from e

    def bucket_exists(self) -> bool:
        """Whether the bucket exists (HEAD bucket; any other failure is a StoreError).

        Raises:
            StoreError: the endpoint cannot be reached or refuses the request.
        """
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            boto3.client("s3").head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise StoreError(f"{self.url}: {e}") from e
        except BotoCoreError as e:
            raise StoreError(f"{self.url}: {e}") from e
        return True

    def create_bucket(self) -> None:
        """Create the bucket (in the configured region).

        Raises:
            StoreError: the endpoint refuses.
        """
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client("s3")
        region = client.meta.region_name
        args: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(**args)
        except (ClientError, BotoCoreError) as e:
            raise StoreError(f"{self.url}: cannot create bucket {self.bucket}: {e}") from e


def missing_bucket(bucket: str) -> str:
    """What to say of a bucket that does not exist."""
    return (
        f"bucket {bucket!r} does not exist: create it first (aws s3 mb s3://{bucket}, or "
        "'bundle-build repo init --create-bucket')"
    )


def open_store(url: str) -> Store:
    """The store for a repository URL.

    Raises:
        UsageError: an unknown scheme.
    """
    u = urlparse(url)
    if u.scheme == "file":
        return FileStore(url.rstrip("/"), Path(u.path))
    if u.scheme in ("https", "http"):
        return HttpsStore(url)
    if u.scheme == "s3":
        if not u.netloc:
            raise UsageError(f"{url}: s3:// URLs name a bucket: s3://BUCKET/PREFIX")
        return S3Store(url, u.netloc, u.path)
    raise UsageError(f"{url}: repository URLs are file://, s3:// or https://")

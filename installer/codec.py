"""The byte form of a manifest: canonical JSON (the only bytes jumpkit signs), strict
parsing (no duplicate keys, NaN or huge numbers), the streaming writer of large file lists,
and the format-1 form a bundle without patches keeps."""

from __future__ import annotations

import functools
import io
import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

from installer import READABLE_FORMATS
from installer.errors import BundleRejectedError, ManifestError, UnsafePathError, VersionError
from installer.format import (
    MANIFEST_NAME,
    MAX_EXTRAS,
    MAX_FILES,
    MAX_INT_DIGITS,
    MAX_MANIFEST_BYTES,
    MAX_REMOVED,
    FileEntry,
    Manifest,
)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8: the only byte form jumpkit signs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ManifestError(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def loads_strict(data: bytes, *, what: str) -> Any:
    """Parse JSON refusing duplicate keys, NaN and non-UTF-8.

    Raises:
        ManifestError: the bytes are not strict JSON.
    """

    def _no_constants(name: str) -> Any:
        raise ManifestError(f"{name} is not allowed")

    def _int(text: str) -> int:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            raise ManifestError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
        return int(text)

    def _float(text: str) -> float:
        if len(text) > MAX_INT_DIGITS + 20:
            raise ManifestError(f"a number of {len(text)} characters")
        return float(text)

    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_int=_int,
            parse_float=_float,
        )
    except ManifestError as e:
        raise ManifestError(f"{what}: {e.message}") from e
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise ManifestError(f"{what} is not valid JSON: {e}") from e


_FILES_MARK = "\x00jumpkit-files\x00"
_FILES_CHUNK = 1000


@functools.cache
def _file_list() -> TypeAdapter[tuple[FileEntry, ...]]:
    """Built on first use: only a builder serialises manifests."""
    return TypeAdapter(tuple[FileEntry, ...])


def _whole_as_v1(entry: dict[str, Any]) -> dict[str, Any]:
    """A whole file's entry as format 1 wrote it (no ``delta`` key): a bundle without
    patches stays byte-identical, and readable by installers that know only format 1;
    a same-path patch carries no ``base`` keys (as the first format-2 installers read it)."""
    for key, default in (("base", None), ("required", False)):  # format 2's, when unused
        if key in entry and entry[key] == default:
            del entry[key]
    delta = entry.get("delta", 1)
    if delta is None:
        del entry["delta"]
    elif isinstance(delta, dict) and delta.get("base") is None:
        delta.pop("base", None)
        delta.pop("base_sha256", None)
    return entry


def _without_unused(head: dict[str, Any]) -> None:
    """Format 5's keys leave a manifest that does not use them: an older installer's
    strict model refuses a key it does not know, even empty."""
    for key in ("sbom", "changes"):
        if not head.get(key):
            head.pop(key, None)


def manifest_dict(manifest: Manifest) -> dict[str, Any]:
    """The JSON object manifest.json holds (see :func:`manifest_bytes`)."""
    plain = manifest.model_dump(mode="json")
    _without_unused(plain)
    plain["files"] = [_whole_as_v1(d) for d in plain["files"]]
    return plain


def manifest_bytes(manifest: Manifest) -> bytes:
    """The canonical bytes of ``manifest`` (what manifest.json holds).

    The file list is encoded entry by entry straight into one buffer and spliced in:
    dumping a manifest of tens of thousands of files to dicts in one go held ~40 MiB of
    them at the peak of a build, and joining per-entry pieces held three copies."""
    head = manifest.model_dump(mode="json", exclude={"files"})
    _without_unused(head)
    head["files"] = _FILES_MARK
    data = canonical_json(head)
    mark = canonical_json(_FILES_MARK)
    if data.count(mark) != 1:  # the mark occurs elsewhere too: the plain way
        return canonical_json(manifest_dict(manifest))
    before, after = data.split(mark)
    out = io.BytesIO()
    out.write(before)
    out.write(b"[")
    files = manifest.files
    for i in range(0, len(files), _FILES_CHUNK):
        if i:
            out.write(b",")
        # a chunk at a time: one dump and one encode per chunk, the list's brackets cut
        chunk = _file_list().dump_python(files[i : i + _FILES_CHUNK], mode="json")
        out.write(canonical_json([_whole_as_v1(d) for d in chunk])[1:-1])
    out.write(b"]")
    out.write(after)
    return out.getvalue()


def parse_manifest(data: bytes) -> Manifest:
    """Parse manifest.json bytes. Call only after :func:`verify_signature` passed.

    Raises:
        ManifestError: not canonical JSON, or not a valid manifest.
        UnsafePathError: a path in it is unsafe.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    obj = loads_strict(data, what=MANIFEST_NAME)
    if not isinstance(obj, dict):
        raise ManifestError("manifest is not a JSON object")
    if obj.get("format") not in READABLE_FORMATS:
        raise ManifestError(
            f"unknown bundle format {obj.get('format')!r}; this installer reads {READABLE_FORMATS}"
        )
    for key, cap in (("files", MAX_FILES), ("removed", MAX_REMOVED), ("extras", MAX_EXTRAS)):
        if isinstance(obj.get(key), list) and len(obj[key]) > cap:
            raise ManifestError(f"manifest lists {len(obj[key])} {key}; at most {cap}")
    canonical = canonical_json(obj) == data
    del obj  # the parsed dicts go before the models are built: 300,000 files peaked at 1.15 GiB
    try:
        manifest = Manifest.model_validate_json(data, strict=True)
    except (VersionError, ValueError, RecursionError) as e:  # a validator's own error escaped
        if isinstance(e, ValidationError):
            raise _manifest_error(e) from e
        raise ManifestError(f"manifest: {getattr(e, 'message', None) or e}") from e
    if not canonical:
        raise ManifestError("manifest.json is not in canonical form")
    return manifest


def _manifest_error(e: ValidationError) -> BundleRejectedError:
    """The first problem of a manifest that does not validate, as jumpkit's error."""
    first = e.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    ctx = first.get("ctx", {})
    inner = ctx.get("error") if isinstance(ctx, dict) else None
    if isinstance(inner, UnsafePathError):
        return inner
    return ManifestError(f"manifest field {loc}: {first['msg']}")

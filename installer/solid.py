"""Solid members (bundle format 4): small payload files, patches and config bases end to
end in one zstd frame, ``solid/<n>``, instead of one archive member each.

Why: a ZIP entry costs ~100 bytes of headers plus twice its path, and each is compressed
alone; on a release of thousands of small files that is a large part of the bundle. The
builder (``builder/solid.py``) orders the small members so that similar files sit together
and cuts a new solid every few MiB, so that solids unpack on several threads.

Reading: the frame is decompressed as it streams out of the archive. Its header must
declare the stream's length the manifest says (``raw_size``, at most 16 MiB), and libzstd
refuses to write past a declared length, so no frame, however crafted, decompresses to
more than that: a reader holds one archive chunk and what it decompresses to. Each carried member's bytes are
checked against its own sha256 as they come, so a damaged byte is reported with the member
it falls in; the solid member's own size and sha256 are checked when its bytes end, and a
frame that ends early, or bytes after it, refuse the bundle. The manifest rule
``solids_tile_their_streams`` has checked beforehand that the members tile the stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from installer.errors import BundleRejectedError
from installer.format import Packed, Solid

Sink = Callable[[Packed, Iterator[bytes]], None]
"""Takes one carried member's bytes (verified as they are read)."""


class _Frame:
    """The decompressed stream of one solid member, taken member by member."""

    def __init__(self, raw: Iterator[bytes], solid: Solid) -> None:
        import zstandard

        self.raw, self.buf, self.current, self.solid = raw, memoryview(b""), "", solid
        self.d = zstandard.ZstdDecompressor().decompressobj()
        self.zstd, self.started = zstandard, False

    def _declared(self, head: bytes) -> None:
        """The frame's header declares the stream's length (a bound on what it writes)."""
        try:
            declared = self.zstd.frame_content_size(head)
        except self.zstd.ZstdError as e:
            raise BundleRejectedError(f"{self.solid.name} is no zstd frame ({e})") from e
        if declared != self.solid.raw_size:
            raise BundleRejectedError(
                f"{self.solid.name}: its frame declares {declared} bytes, the manifest {self.solid.raw_size}"
            )
        self.started = True

    def _fill(self) -> bool:
        while not self.buf:
            chunk = next(self.raw, None)
            if chunk is None:
                return False
            if self.d.eof:
                if chunk:
                    raise BundleRejectedError("bytes after the solid member's frame", entry=self.current)
                continue
            if not self.started:
                self._declared(chunk)
            try:
                self.buf = memoryview(self.d.decompress(chunk))
            except self.zstd.ZstdError as e:
                raise BundleRejectedError(
                    f"solid member does not decompress ({e})", entry=self.current
                ) from e
            if self.d.eof and self.d.unused_data:
                raise BundleRejectedError("bytes after the solid member's frame", entry=self.current)
        return True

    def take(self, p: Packed) -> Iterator[bytes]:
        self.current, left, h = p.name, p.size, hashlib.sha256()
        while left:
            if not self.buf and not self._fill():
                raise BundleRejectedError("the solid member ends inside it (truncated)", entry=p.name)
            piece = self.buf[:left]
            self.buf = self.buf[len(piece) :]
            left -= len(piece)
            h.update(piece)
            yield bytes(piece)
        if h.hexdigest() != p.sha256:
            raise BundleRejectedError("sha256 does not match the manifest", entry=p.name)

    def finish(self, solid: Solid) -> None:
        if self.buf or self._fill():
            raise BundleRejectedError(f"{solid.name} decompresses to more than its members")
        if not self.d.eof:
            raise BundleRejectedError(f"{solid.name}: its zstd frame is cut short (truncated)")


def unpack(raw: Iterator[bytes], solid: Solid, sink: Sink) -> None:
    """Give each member ``solid`` carries to ``sink``, in order, verified. ``raw`` is the
    solid member's bytes, checked against its own size and sha256 as they are read
    (:func:`installer.archive.iter_verified`).

    Raises:
        BundleRejectedError: a member's bytes differ from the manifest (the error names
            it), the frame is damaged, cut short or followed by other bytes, or the solid
            member differs from its own size and sha256.
    """
    frame = _Frame(raw, solid)
    for p in solid.members:
        chunks = frame.take(p)
        sink(p, chunks)
        for _ in chunks:  # what the sink left unread is still checked
            pass
    frame.finish(solid)

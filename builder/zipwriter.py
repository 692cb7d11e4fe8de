"""A reproducible ZIP writer that hashes and compresses entries in worker processes.

Why not :mod:`zipfile`: it compresses on one thread inside ``write()`` and cannot take
pre-compressed bytes, so a 600 MiB bundle took 19 s where two cores and stored
incompressible entries take a fraction of that. Why processes, not threads: for tens of
thousands of small files the per-file Python work (open, read, hash, headers) holds the
GIL, and two threads measured 2.2-3.0 s where two forked workers take 1.6-1.9 s for the
same 24k files.

How: entries are cut into batches of consecutive entries (up to ``BATCH_BYTES`` of input).
Forked workers take batches as they free up and write each one as a *segment*: the
entries' local headers and data, exactly as they will stand in the archive (a local
header holds no offset). The parent appends the segments to the archive in order with
``copy_file_range`` (a kernel-side copy; no byte passes through Python) and writes the
central directory. Segments wait in a temp directory beside the archive, at most
``WINDOW_BYTES`` of input ahead of the parent.

The format written is the plain PKWARE one (local headers with sizes known up front,
central directory, ZIP64 records when sizes, offsets or the entry count need them), read
back by :mod:`zipfile` and Info-ZIP ``unzip`` in the tests. Reproducible: entries in the
order given, one fixed timestamp, Unix mode bits only, no extra fields beyond ZIP64.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import os
import pickle
import shutil
import signal
import stat
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import BinaryIO, NoReturn

from isal import isal_zlib

CHUNK = 1024 * 1024
SAMPLE = 64 * 1024
SAMPLES = 5  # spread over the entry: its start, three quarters, its end
SMALL = 256 * 1024  # below this, compress and compare instead of sampling
STORE_RATIO = 0.95  # store an entry only if every sample compresses worse than this
ONESHOT_MAX = 4 * 1024 * 1024  # larger entries are streamed (bounded memory)
BATCH_BYTES = 4 * 1024 * 1024  # input bytes per batch (1 MiB batches measured 10% slower)
BATCH_ENTRIES = 256
WINDOW_BYTES = 32 * 1024 * 1024  # input bytes handed to workers ahead of the parent, at most
U32 = 0xFFFFFFFF
U16 = 0xFFFF
_UTF8 = 0x800
_LOCAL = struct.Struct("<IHHHHHIIIHH")
IOV_LIMIT = 512  # parts per writev (the kernel takes at most 1024)


class WorkerError(OSError):
    """A compression worker died without reporting an error (killed, out of memory)."""


@dataclass(frozen=True, slots=True)
class Source:
    """One entry to write: bytes in memory or a file on disk."""

    name: str
    mode: int
    path: str | Path | None = None
    data: bytes | None = None
    size: int | None = None
    """Known size of ``path`` (saves a stat); None: stat when needed."""
    store: bool = False
    """Write it stored whatever it would deflate to: its bytes can then be taken out of the
    archive by their byte range alone (the bundle RPM takes its installer out so)."""


@dataclass(frozen=True, slots=True)
class Written:
    """One entry as a worker wrote it into a segment: what the central directory needs."""

    name: str
    mode: int
    sha256: str
    size: int
    crc: int
    method: int  # 0 stored, 8 deflated
    csize: int
    length: int  # local header + data, bytes in the segment
    zip64: bool


def _dos_time(epoch: int) -> tuple[int, int]:
    t = time.gmtime(max(epoch, 315532800))
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((t.tm_year - 1980) << 9) | (
        t.tm_mon << 5
    ) | t.tm_mday


def _size(src: Source) -> int:
    if src.data is not None:
        return len(src.data)
    if src.size is not None:
        return src.size
    return os.stat(src.path).st_size if src.path is not None else 0


def _read_upto(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from ``fd``: fewer only at end of file."""
    data = os.read(fd, n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n and (more := os.read(fd, n - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _isal_level(level: int) -> int:
    """zlib-style 1-9 to ISA-L 1-3 (1-3 -> 1, 4-6 -> 2, 7-9 -> 3).

    ISA-L 2 is within a few per cent of zlib 6 in size at about seven times its speed."""
    return 0 if level <= 0 else min(3, (level + 2) // 3)


def _deflate_small(data: bytes, level: int) -> bytes:
    """Raw deflate of an entry of at most ``SMALL`` bytes, with the standard library's zlib.

    Why not ISA-L here too: a CI run built the demo bundle twice from the same inputs and
    one 396-byte migration came out of ISA-L 1.9.1 (level 2) as a different deflate stream
    (242 bytes instead of 243, both decoding to the same bytes), so the two bundles
    differed. It did not recur here in 600 fresh processes, 20,000 calls in one process
    or 100 builds under load, so its cause is unknown; zlib's output is fixed for a given
    zlib. zlib 1 matches ISA-L 2 in size on source text (0.293 against 0.291 of the
    input) at 159 MB/s against 447; the 600 MiB bench tree (24k files, most of them small)
    builds in 2.1 s instead of 1.2 s. Levels 7-9 ask for size: zlib at that level."""
    comp = zlib.compressobj(1 if level <= 6 else level, zlib.DEFLATED, -15)
    return comp.compress(data) + comp.flush()


def _sample_offsets(size: int) -> list[int]:
    """Where the samples of an entry of ``size`` bytes start: evenly from its start to its
    end (a 62 MB shared library whose first 64 KiB did not shrink was stored whole,
    though deflate shrinks the rest of it by half)."""
    last = max(0, size - SAMPLE)
    return sorted({last * i // (SAMPLES - 1) for i in range(SAMPLES)})


def _shrinks(sample: bytes) -> bool:
    return len(isal_zlib.compress(sample, 1, -15)) <= STORE_RATIO * len(sample)


def _compressible(data: bytes) -> bool:
    """Does any of the samples shrink? (ISA-L level 1 on 5 x 64 KiB: about a millisecond.)"""
    return any(_shrinks(data[o : o + SAMPLE]) for o in _sample_offsets(len(data)))


def _compressible_fd(fd: int, size: int) -> bool:
    """:func:`_compressible` of an open file of ``size`` bytes, read with ``pread``."""
    return any(_shrinks(os.pread(fd, SAMPLE, o)) for o in _sample_offsets(size) if size)


class _Format:
    """Header layout shared by the workers (local headers) and the parent (central
    directory, end records)."""

    def __init__(self, epoch: int, force_zip64: bool) -> None:
        self.dos_time, self.dos_date = _dos_time(epoch)
        self.force_zip64 = force_zip64

    def zip64(self, size: int) -> bool:
        # deflated entries are stored instead when deflate does not shrink them, so the
        # compressed size never exceeds the size: the size alone decides
        return self.force_zip64 or size >= U32

    def local(self, raw: bytes, zip64: bool, method: int, crc: int, size: int, csize: int) -> bytes:
        extra = struct.pack("<HHQQ", 1, 16, size, csize) if zip64 else b""
        return (
            _LOCAL.pack(
                0x04034B50,
                45 if zip64 else 20,
                _UTF8,
                method,
                self.dos_time,
                self.dos_date,
                crc,
                U32 if zip64 else csize,
                U32 if zip64 else size,
                len(raw),
                len(extra),
            )
            + raw
            + extra
        )

    def central(self, w: Written, offset: int) -> bytes:
        raw = w.name.encode("utf-8")
        version = 45 if w.zip64 else 20
        fields: list[int] = [w.size, w.csize] if w.zip64 else []
        far = self.force_zip64 or offset >= U32
        if far:
            fields.append(offset)
        extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
        return (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                (3 << 8) | version,
                version,
                _UTF8,
                w.method,
                self.dos_time,
                self.dos_date,
                w.crc,
                U32 if w.zip64 else w.csize,
                U32 if w.zip64 else w.size,
                len(raw),
                len(extra),
                0,
                0,
                0,
                (stat.S_IFREG | (w.mode & 0o777)) << 16,
                U32 if far else offset,
            )
            + raw
            + extra
        )


def _changed(name: str) -> OSError:
    return OSError(f"{name}: file changed while the bundle was being written")


class _Segment:
    """Writes entries, header and data, to one file descriptor (a worker's segment file,
    or the archive itself for the parent's in-memory entries)."""

    def __init__(self, fd: int, fmt: _Format, level: int) -> None:
        self.fd = fd
        self.fmt = fmt
        self.level = level
        self.pending: list[bytes] = []  # small entries, written with one writev
        self.pending_bytes = 0

    def add(self, src: Source) -> Written:
        if src.path is None:
            return self._oneshot(src, src.data or b"")
        fd = os.open(src.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = src.size if src.size is not None else os.fstat(fd).st_size
            if size <= ONESHOT_MAX:
                # the size seen when the tree was walked, and one more byte to notice growth
                head = os.read(fd, size + 1)
                if len(head) < size:  # shrank, or a short read: make sure it is the end
                    head += _read_upto(fd, size + 1 - len(head))
                if len(head) <= size:
                    return self._oneshot(src, head)
            else:
                head = _read_upto(fd, CHUNK)
            return self._stream(src, fd, head, max(size, os.fstat(fd).st_size))
        finally:
            os.close(fd)

    def _oneshot(self, src: Source, data: bytes) -> Written:
        """Hash, and deflate in one ISA-L call (both release the GIL); kept if smaller."""
        size = len(data)
        sha = hashlib.sha256(data).hexdigest()
        crc = isal_zlib.crc32(data)
        method, blob = 0, data
        if self.level > 0 and not src.store and size > 0 and (size <= SMALL or _compressible(data)):
            if size <= SMALL:
                deflated = _deflate_small(data, self.level)
            else:
                deflated = isal_zlib.compress(data, _isal_level(self.level), -15)
            if len(deflated) < size:
                method, blob = 8, deflated
        zip64 = self.fmt.zip64(size)
        header = self.fmt.local(src.name.encode("utf-8"), zip64, method, crc, size, len(blob))
        self.pending += (header, blob)
        self.pending_bytes += len(header) + len(blob)
        if self.pending_bytes >= CHUNK or len(self.pending) >= IOV_LIMIT:
            self.flush()
        return Written(src.name, src.mode, sha, size, crc, method, len(blob), len(header) + len(blob), zip64)

    def _stream(self, src: Source, fd: int, head: bytes, expect: int) -> Written:
        """A large entry: a placeholder header, the data streamed after it, then the real
        header written over the placeholder (same length: ZIP64 or not is decided from
        the size up front). Deflated unless the sample or the result does not shrink."""
        self.flush()
        raw = src.name.encode("utf-8")
        zip64 = self.fmt.zip64(expect)
        start = os.lseek(self.fd, 0, os.SEEK_CUR)
        hlen = len(self.fmt.local(raw, zip64, 0, 0, 0, 0))
        deflate = self.level > 0 and not src.store and _compressible_fd(fd, expect)
        while True:
            os.lseek(self.fd, start + hlen, os.SEEK_SET)
            os.lseek(fd, len(head), os.SEEK_SET)
            sha, crc, size, csize = self._copy(fd, head, deflate)
            if not deflate or csize < size:
                break
            deflate = False  # deflate did not shrink it: write it again, stored
            os.ftruncate(self.fd, start)
        if zip64 != self.fmt.zip64(size):
            raise _changed(src.name)
        method = 8 if deflate else 0
        os.pwrite(self.fd, self.fmt.local(raw, zip64, method, crc, size, csize), start)
        os.lseek(self.fd, start + hlen + csize, os.SEEK_SET)
        return Written(src.name, src.mode, sha, size, crc, method, csize, hlen + csize, zip64)

    def _copy(self, fd: int, head: bytes, deflate: bool) -> tuple[str, int, int, int]:
        sha = hashlib.sha256()
        crc = size = csize = 0
        comp = isal_zlib.compressobj(_isal_level(self.level), isal_zlib.DEFLATED, -15) if deflate else None
        chunk = head
        while chunk:
            sha.update(chunk)
            crc = isal_zlib.crc32(chunk, crc)
            size += len(chunk)
            out = chunk if comp is None else comp.compress(chunk)
            _write_all(self.fd, out)
            csize += len(out)
            chunk = os.read(fd, CHUNK)
        if comp is not None:
            tail = comp.flush()
            _write_all(self.fd, tail)
            csize += len(tail)
        return sha.hexdigest(), crc, size, csize

    def flush(self) -> None:
        if self.pending:
            _writev_all(self.fd, self.pending)
            self.pending, self.pending_bytes = [], 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _writev_all(fd: int, parts: list[bytes]) -> None:
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts)
    if done < total:  # a short write (full disk reports ENOSPC on the retry)
        _write_all(fd, b"".join(parts)[done:])


def _append(src: int, dst: int, length: int) -> None:
    """Copy ``length`` bytes from ``src`` (at its start) to ``dst`` (at its offset):
    in the kernel where it can, through a buffer across filesystems that cannot."""
    left = length
    try:
        while left:
            n = os.copy_file_range(src, dst, left)
            if n == 0:
                raise OSError(errno.EIO, "segment ended early")
            left -= n
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL) or left != length:
            raise
    while left:
        chunk = os.read(src, min(CHUNK, left))
        if not chunk:
            raise OSError(errno.EIO, "segment ended early")
        _write_all(dst, chunk)
        left -= len(chunk)


def _batches(sources: list[Source]) -> list[tuple[list[Source], int]]:
    """Consecutive entries, up to BATCH_BYTES of input each (a large file makes its own),
    with the input bytes of each batch."""
    out: list[tuple[list[Source], int]] = []
    cur: list[Source] = []
    size = 0
    for src in sources:
        n = _size(src)
        if cur and (size + n + 256 * len(cur) > BATCH_BYTES or len(cur) >= BATCH_ENTRIES):
            out.append((cur, size))
            cur, size = [], 0
        cur.append(src)
        size += n
    if cur:
        out.append((cur, size))
    return out


class _Workers:
    """Forked workers that write batches into segment files ``<spill>/<index>``.

    Fork, not spawn: the workers start in a millisecond and share the parent's pages
    (imports, and one pickled blob per batch) instead of importing everything again. They never return
    into the parent's code: each one ends with ``os._exit``."""

    def __init__(
        self, count: int, batches: list[tuple[list[Source], int]], spill: Path, fmt: _Format, level: int
    ) -> None:
        self.count = len(batches)
        self.costs = [cost for _, cost in batches]
        # The workers read their batches from one bytes object per batch: touching the
        # Source objects themselves (reference counts) would copy every page that holds
        # one into each worker (measured: +15 MiB each for 24k files; pickling: 12 ms).
        blobs = [
            pickle.dumps([(s.name, s.mode, s.path, s.data, s.size, s.store) for s in b], protocol=5)
            for b, _ in batches
        ]
        self.live: dict[Connection, int] = {}  # result pipe -> worker pid
        self.ready: dict[int, list[Written]] = {}
        self.sent = 0
        self.sent_bytes = 0
        tasks_r, self._tasks = os.pipe()
        try:
            for _ in range(count):
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child
                    os.close(r)
                    os.close(self._tasks)
                    _child(tasks_r, Connection(w, readable=False), blobs, spill, fmt, level)
                os.close(w)
                self.live[Connection(r, writable=False)] = pid
        except BaseException:
            self.close(kill=True)
            raise
        finally:
            os.close(tasks_r)

    def segments(self) -> Iterator[tuple[int, list[Written]]]:
        """(index, entries) of every batch, in order, as their segments are written."""
        for i in range(self.count):
            self._dispatch(i)
            while i not in self.ready:
                self._receive(i)
            yield i, self.ready.pop(i)
            self.sent_bytes -= self.costs[i]

    def _dispatch(self, consumed: int) -> None:
        while self.sent < self.count and (self.sent == consumed or self.sent_bytes < WINDOW_BYTES):
            os.write(self._tasks, self.sent.to_bytes(4, "little"))
            self.sent_bytes += self.costs[self.sent]
            self.sent += 1
        if self.sent == self.count and self._tasks >= 0:
            os.close(self._tasks)  # workers end when the task pipe runs dry
            self._tasks = -1

    def _receive(self, waiting_for: int) -> None:
        if not self.live:
            raise WorkerError(f"every compression worker ended before batch {waiting_for}")
        for conn in wait(list(self.live)):
            assert isinstance(conn, Connection)
            try:
                i, result = conn.recv()
            except EOFError:  # the worker ended: normal once the tasks ran out
                pid = self.live.pop(conn)
                conn.close()
                _, status = os.waitpid(pid, 0)
                if status != 0:
                    raise _died(pid, status) from None
                continue
            if isinstance(result, BaseException):
                raise result
            self.ready[i] = result

    def close(self, *, kill: bool) -> None:
        """Reap every worker (killing them first when the write failed)."""
        if self._tasks >= 0:
            os.close(self._tasks)
            self._tasks = -1
        if kill:
            for pid in self.live.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for conn, pid in self.live.items():
            os.waitpid(pid, 0)
            conn.close()
        self.live = {}


def _died(pid: int, status: int) -> WorkerError:
    if os.WIFSIGNALED(status):
        how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    else:
        how = f"exit status {os.waitstatus_to_exitcode(status)}"
    return WorkerError(f"a compression worker (pid {pid}) ended without a result: {how}")


def _child(
    tasks: int, out: Connection, batches: list[bytes], spill: Path, fmt: _Format, level: int
) -> NoReturn:  # pragma: no cover - runs in the child
    """A worker's whole life: batches from the task pipe until it runs dry."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # ^C: the parent cleans up
        gc.disable()  # nothing here makes cycles; a collection would touch shared pages
        while raw := os.read(tasks, 4):
            i = int.from_bytes(raw, "little")
            try:
                fd = os.open(spill / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    seg = _Segment(fd, fmt, level)
                    written = [seg.add(Source(*fields)) for fields in pickle.loads(batches[i])]
                    seg.flush()
                finally:
                    os.close(fd)
            except Exception as e:  # reported to the parent, which raises it
                out.send((i, e if _picklable(e) else OSError(str(e))))
                code = 1
                break
            out.send((i, written))
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _picklable(e: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        return False
    return True


class ZipWriter:
    """Writes entries in the order added, through ``dest``'s file descriptor.

    ``dest`` must be a real file opened for writing; the writer takes over from its
    current position and leaves it at the end of what was written. Segments wait in
    ``spill_dir`` (default: the archive's directory, so that appending them is a copy
    within one filesystem)."""

    def __init__(
        self,
        dest: BinaryIO,
        *,
        epoch: int,
        level: int = 6,
        workers: int = 2,
        force_zip64: bool = False,
        spill_dir: Path | None = None,
    ) -> None:
        self.dest = dest
        self.level = level
        self.workers = max(1, workers)
        self.fmt = _Format(epoch, force_zip64)
        dest.flush()
        self._fd = dest.fileno()
        self._pos = dest.tell()
        if spill_dir is None and isinstance(dest.name, str):
            spill_dir = Path(dest.name).parent
        self._spill = Path(tempfile.mkdtemp(prefix=".jumpkit-zip-", dir=spill_dir))
        # central directory records wait in a file, not in memory (tens of thousands)
        self._central = tempfile.TemporaryFile(dir=self._spill)  # noqa: SIM115
        self._count = 0
        self._digests: dict[str, tuple[str, int]] = {}

    def __enter__(self) -> ZipWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def discard(self) -> None:
        """Remove the temp files (segments, central directory); idempotent."""
        self._central.close()
        shutil.rmtree(self._spill, ignore_errors=True)

    def write_all(
        self, sources: Iterable[Source], progress: Callable[[int], None] | None = None
    ) -> dict[str, tuple[str, int]]:
        """Write every source; returns {name: (sha256, size)} of every entry written so far.

        Raises:
            ValueError: two entries with one name (checked before anything is written).
            OSError: a source cannot be read or changed while being written; WorkerError.
        """
        todo = list(sources)
        seen = set(self._digests)
        for src in todo:
            if src.name in seen:
                raise ValueError(f"duplicate entry {src.name}")
            seen.add(src.name)
        batches = _batches(todo)
        if not batches:
            return self._digests
        workers = _Workers(min(self.workers, len(batches)), batches, self._spill, self.fmt, self.level)
        try:
            for i, written in workers.segments():
                seg = self._spill / str(i)
                fd = os.open(seg, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self._record(written, progress)
                    _append(fd, self._fd, sum(w.length for w in written))
                finally:
                    os.close(fd)
                    seg.unlink()
        except BaseException:
            workers.close(kill=True)
            raise
        workers.close(kill=False)
        return self._digests

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Write one in-memory entry now (manifest, signature)."""
        if name in self._digests:
            raise ValueError(f"duplicate entry {name}")
        seg = _Segment(self._fd, self.fmt, self.level)
        written = seg.add(Source(name, mode, data=data))
        seg.flush()
        self._record([written], None)

    def _record(self, written: list[Written], progress: Callable[[int], None] | None) -> None:
        """Central directory records for entries about to stand at the current offset."""
        records = []
        for w in written:
            records.append(self.fmt.central(w, self._pos))
            self._pos += w.length
            self._digests[w.name] = (w.sha256, w.size)
            if progress is not None:
                progress(w.size)
        self._count += len(written)
        self._central.write(b"".join(records))

    def close(self) -> None:
        """Write the central directory and end records."""
        cd_offset = self._pos
        cd_size = self._central.tell()
        self._central.seek(0)
        _append(self._central.fileno(), self._fd, cd_size)
        end = b""
        n = self._count
        if self.fmt.force_zip64 or n >= U16 or cd_offset >= U32 or cd_size >= U32:
            z64_offset = cd_offset + cd_size
            end += struct.pack(
                "<IQHHIIQQQQ", 0x06064B50, 44, (3 << 8) | 45, 45, 0, 0, n, n, cd_size, cd_offset
            )
            end += struct.pack("<IIQI", 0x07064B50, 0, z64_offset, 1)
        end += struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, min(n, U16), min(n, U16), min(cd_size, U32), min(cd_offset, U32), 0
        )
        _write_all(self._fd, end)
        self._pos += cd_size + len(end)
        self.dest.seek(self._pos)
        self.discard()

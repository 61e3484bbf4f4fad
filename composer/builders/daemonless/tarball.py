"""The layer as a reproducible tar: sorted entries, fixed mtimes, root-owned, normalised modes,
compressed deterministically, so the same entries always give the same layer digest and diff_id.

Encoders (the bytes of a layer depend on the tar and on exactly one of these, with its settings;
the build record names it, see LayerEncoding):

  isal       gzip by ISA-L's threaded writer (PyPI `isal`, which brings its own ISA-L, so the
             bytes depend neither on the system's zlib nor on the core count): level 2, 1 MiB
             blocks, each deflated on its own with the previous block's last 32 KiB as its
             dictionary and ending on a sync flush. The default since composer 0.x (issue 14):
             about 10x faster than zlib level 6 here, 15% more bytes.
  zlib       gzip by ParallelGzip below (Python's zlib, the same block scheme): the encoder of
             earlier daemonless builds, kept so a rebuild from an older record gives its bytes.
  zstandard  zstd (PyPI `zstandard`, which bundles its libzstd), level 3, always in zstd's
             multi-threaded mode, whose output does not depend on the number of workers.

An encoder's library version is part of its output format: `isal` is pinned in pyproject.toml,
and the build record says which version made the bytes. Neither the number of cores, nor the
sizes in which the tar reaches the encoder change them (tests/unit/test_daemonless_tar.py).
"""

from __future__ import annotations

import collections
import hashlib
import os
import struct
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Optional

from composer.builders.daemonless.layout import Entry
from composer.errors import BuildError, UsageError

# Files in the layer carry this mtime unless SOURCE_DATE_EPOCH says otherwise:
# 1980-01-01T00:00:00Z, the earliest time a zip (hence a wheel) can hold.
DEFAULT_EPOCH = 315532800
# The zlib encoder's default: what Docker and BuildKit use.
GZIP_LEVEL = 6
GZIP_BLOCK = 1 << 20  # uncompressed bytes per independently deflated block: part of the output format
ZSTD_LEVEL = 3
# The isal encoder: level 2 of ISA-L's 0..3 (3: 3% smaller, 60% slower on pandas + scikit-learn).
ISAL_LEVEL = 2
ISAL_VERSION = "1.9.1"  # pinned: ISA-L's deflate may change between releases
ENCODERS = ("isal", "zlib", "zstandard")
DEFAULT_GZIP_ENCODER = "isal"
_LEVELS = {"isal": range(0, 4), "zlib": range(1, 10), "zstandard": range(1, 23)}
_DEFAULT_LEVEL = {"isal": ISAL_LEVEL, "zlib": GZIP_LEVEL, "zstandard": ZSTD_LEVEL}


@dataclass(frozen=True)
class LayerEncoding:
    """How the tar was compressed: everything the compressed bytes depend on besides the tar.
    Written to the build record's `layer` section (to_json) so a rebuild can ask for the same."""

    compression: str  # gzip | zstd
    encoder: str  # isal | zlib | zstandard
    version: str  # the encoder library's version (zlib: the runtime zlib's)
    level: int
    block: int  # uncompressed bytes per independently compressed block (0: the encoder's own framing)

    def to_json(self) -> dict:
        return {"compression": self.compression, "encoder": self.encoder, "version": self.version,
                "level": self.level, "block": self.block}


def encoder_version(encoder: str) -> Optional[str]:
    """The installed version of an encoder's library, or None when it is not importable."""
    if encoder == "zlib":
        return zlib.ZLIB_RUNTIME_VERSION
    try:
        if encoder == "isal":
            import isal  # type: ignore

            return str(isal.__version__)
        if encoder == "zstandard":
            import zstandard  # type: ignore

            return str(zstandard.__version__)
    except ImportError:
        return None
    raise ValueError(f"unknown layer encoder {encoder!r}")


def layer_encoding(compression: str = "gzip", encoder: Optional[str] = None, level: Optional[int] = None) -> LayerEncoding:
    """The encoding a layer will get: compression gzip (encoder isal by default, or zlib) or
    zstd (zstandard); level None is the encoder's default. Raises UsageError for a level the
    encoder does not have, BuildError when its library is missing or not the pinned version."""
    if compression == "zstd":
        if encoder not in (None, "zstandard"):
            raise UsageError(f"zstd layers are written by zstandard, not {encoder}", "unset COMPOSER_LAYER_ENCODER")
        encoder = "zstandard"
        level = ZSTD_LEVEL if level is None else level  # COMPOSER_GZIP_LEVEL is a gzip level: not used for zstd
    elif compression == "gzip":
        encoder = encoder or DEFAULT_GZIP_ENCODER
        if encoder not in ("isal", "zlib"):
            raise UsageError(f"gzip layers are written by isal or zlib, not {encoder}", "set COMPOSER_LAYER_ENCODER=isal or zlib")
        level = _DEFAULT_LEVEL[encoder] if level is None else level
    else:
        raise ValueError(f"unknown layer compression {compression!r}")
    if level not in _LEVELS[encoder]:
        r = _LEVELS[encoder]
        raise UsageError(f"level {level} is not a level of the {encoder} encoder ({r.start} to {r.stop - 1})",
                         f"set COMPOSER_GZIP_LEVEL between {r.start} and {r.stop - 1}, or unset it")
    version = encoder_version(encoder)
    if version is None:
        raise BuildError(f"the {encoder} layer encoder is not installed", f"pip install {encoder}, or choose another encoder")
    block = GZIP_BLOCK if encoder in ("isal", "zlib") else 0
    return LayerEncoding(compression, encoder, version, level, block)


@dataclass(frozen=True)
class Layer:
    digest: str  # of the compressed blob
    size: int  # compressed
    diff_id: str  # of the uncompressed tar
    tar_size: int
    compression: str  # gzip or zstd
    encoding: Optional[LayerEncoding] = None


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH (the reproducible-builds convention), else DEFAULT_EPOCH."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return DEFAULT_EPOCH
    try:
        epoch = int(value)
    except ValueError as exc:
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds", "unset it or set e.g. 315532800") from exc
    if epoch < 0:
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is negative", "unset it or set e.g. 315532800")
    return epoch


def zstd_module() -> Optional[str]:
    """'zstandard' when the zstd encoder (PyPI zstandard, pinned libzstd inside) is importable, else None."""
    return "zstandard" if encoder_version("zstandard") is not None else None


class _HashingWriter:
    """Passes bytes on, counting them and hashing them (sha256)."""

    def __init__(self, sink: BinaryIO):
        self.sink, self.hash, self.size = sink, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        flush = getattr(self.sink, "flush", None)
        if flush:
            flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class ParallelGzip:
    """A gzip stream compressed on several cores, with the same bytes whatever their number.

    The input is cut into fixed blocks; each block is deflated on its own (primed with the
    previous block's last 32 KiB, so matches may reach back across the cut) and ends on a
    byte boundary (sync flush), so the raw deflate pieces concatenate into one valid stream,
    as pigz does. Output depends only on the input, GZIP_BLOCK and the level: no file name,
    mtime 0, OS byte 255 in the header."""

    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

    def __init__(self, out: BinaryIO, level: int = GZIP_LEVEL, workers: Optional[int] = None, block: int = GZIP_BLOCK):
        if level not in range(1, 10):
            raise ValueError(f"gzip level {level!r} is not 1 to 9")
        self.out, self.block, self.level = out, block, level
        self.workers = max(1, workers or min(os.cpu_count() or 1, 8))
        self.pool = ThreadPoolExecutor(max_workers=self.workers) if self.workers > 1 else None
        self.pending: "collections.deque" = collections.deque()
        self.buf = bytearray()
        self.tail = b""
        self.crc = 0
        self.size = 0
        self.closed = False
        out.write(self.HEADER)

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self.buf += data
        while len(self.buf) >= self.block:
            chunk = bytes(self.buf[: self.block])
            del self.buf[: self.block]
            self._submit(chunk, False)
        return len(data)

    def flush(self) -> None:
        pass

    def _submit(self, chunk: bytes, last: bool) -> None:
        zdict, self.tail = self.tail, chunk[-32768:]
        if self.pool is None:
            self.out.write(_deflate_block(chunk, zdict, self.level, last))
            return
        self.pending.append(self.pool.submit(_deflate_block, chunk, zdict, self.level, last))
        while len(self.pending) > 2 * self.workers:  # bounded memory, output in order
            self.out.write(self.pending.popleft().result())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._submit(bytes(self.buf), True)
            self.buf = bytearray()
            while self.pending:
                self.out.write(self.pending.popleft().result())
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
        self.out.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))


def _deflate_block(chunk: bytes, zdict: bytes, level: int, last: bool) -> bytes:
    if zdict:
        c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, zdict)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
    return c.compress(chunk) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def default_workers() -> int:
    """Threads for compressing: the cores this process may run on (taskset counts), at most 8.
    The bytes never depend on it."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


class FixedBlocks:
    """Hands data on in pieces of exactly `block` bytes (the last one shorter), whatever sizes
    it is written in: the encoder's block boundaries, hence its bytes, depend on the data only.
    closer (default: sink) is closed by close(), after the last piece."""

    def __init__(self, sink, block: int, closer=None):
        self.sink, self.block, self.buf = sink, block, bytearray()
        self.closer = sink if closer is None else closer

    def write(self, data) -> int:
        block = self.block
        if not self.buf and len(data) == block:  # the tar writer's pieces: passed on as they are
            self.sink.write(data)
            return block
        self.buf += data
        if len(self.buf) >= block:
            view = memoryview(self.buf)
            n = len(self.buf) // block * block
            for i in range(0, n, block):
                self.sink.write(bytes(view[i : i + block]))
            view.release()
            del self.buf[:n]
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.buf:
            self.sink.write(bytes(self.buf))
            self.buf = bytearray()
        self.closer.close()


class _KeepOpen:
    """The sink for a writer that closes its file when it closes: keeps ours open."""

    def __init__(self, sink):
        self.sink = sink

    def write(self, data) -> int:
        return self.sink.write(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _isal_writer(out: BinaryIO, level: int, block: int, workers: int):
    from isal import igzip_threaded  # type: ignore

    # ISA-L's threaded gzip: the blocks go round-robin to the workers and come back in order, each
    # deflated with the previous block's last 32 KiB as dictionary: the bytes do not depend on
    # the number of threads as long as the blocks are the same, which FixedBlocks makes sure of.
    # Blocks go to the gzip writer itself (`raw`), not through the buffered writer open() puts in
    # front of it, which would copy each one once more.
    writer = igzip_threaded.open(_KeepOpen(out), "wb", compresslevel=level, threads=workers, block_size=block)
    return FixedBlocks(writer.raw, block, closer=writer)


def _zstd_writer(out: BinaryIO, level: int, workers: int):
    import zstandard  # type: ignore

    # threads >= 1 is zstd's multi-threaded mode, whose frames do not depend on the number of
    # workers (threads=0, the single-threaded mode, frames differently): never 0.
    return zstandard.ZstdCompressor(level=level, threads=max(1, workers), write_checksum=True).stream_writer(out, closefd=False)


def compressor(out: BinaryIO, encoding: LayerEncoding, workers: Optional[int] = None):
    """A writer that compresses into out as encoding says; close() ends the stream (out stays open)."""
    workers = workers or default_workers()
    if encoding.encoder == "isal":
        return _isal_writer(out, encoding.level, encoding.block, workers)
    if encoding.encoder == "zlib":
        return ParallelGzip(out, encoding.level, workers=workers, block=encoding.block)
    if encoding.encoder == "zstandard":
        return _zstd_writer(out, encoding.level, workers)
    raise ValueError(f"unknown layer encoder {encoding.encoder!r}")


class _TarStream:
    """The tar's bytes, cut into pieces of exactly `block` bytes for the encoder, with their
    sha256 (the diff_id). Files are read straight into the piece being filled: a layer is
    hundreds of MB, and every copy of it on this thread costs a tenth of a second."""

    def __init__(self, sink, block: int):
        self.sink, self.block = sink, block
        self.buf = bytearray(block)
        self.pos = 0
        self.hash = hashlib.sha256()
        self.size = 0
        # sha256 lets go of the GIL: hashing on a thread of its own takes it off this one's path.
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="composer-diff-id")
        self.hashing: "collections.deque" = collections.deque()

    def _emit(self) -> None:
        piece = bytes(self.buf[: self.pos]) if self.pos < self.block else bytes(self.buf)
        self.hashing.append(self.hasher.submit(self.hash.update, piece))  # one worker: in order
        while len(self.hashing) > 8:  # bounded memory
            self.hashing.popleft().result()
        self.size += len(piece)
        self.sink.write(piece)
        self.pos = 0

    def write(self, data) -> None:
        view, i, n = memoryview(data), 0, len(data)
        while i < n:
            k = min(self.block - self.pos, n - i)
            self.buf[self.pos : self.pos + k] = view[i : i + k]
            self.pos += k
            i += k
            if self.pos == self.block:
                self._emit()

    def write_file(self, fd: int, size: int, name: str) -> None:
        """size bytes of the open file fd, then the padding to the next 512-byte block."""
        left = size
        with memoryview(self.buf) as view:
            while left:
                got = os.readv(fd, [view[self.pos : self.pos + min(left, self.block - self.pos)]])
                if not got:
                    raise BuildError(f"{name} shrank while the layer was written", "rerun the build")
                self.pos += got
                left -= got
                if self.pos == self.block:
                    self._emit()
        self.pad(size)

    def pad(self, size: int) -> None:
        """Zeros from the end of size bytes of data to the next 512-byte block."""
        if size % tarfile.BLOCKSIZE:
            self.write(bytes(tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def close(self) -> None:
        """The end of the archive as tarfile writes it: two zero blocks, then zeros up to a
        whole record."""
        self.write(bytes(2 * tarfile.BLOCKSIZE))
        if (self.size + self.pos) % tarfile.RECORDSIZE:
            self.write(bytes(tarfile.RECORDSIZE - (self.size + self.pos) % tarfile.RECORDSIZE))
        if self.pos:
            self._emit()
        self.stop()

    def stop(self) -> None:
        while self.hashing:
            self.hashing.popleft().result()
        self.hasher.shutdown(wait=True, cancel_futures=True)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


_TYPES = {"file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE, "dir": tarfile.DIRTYPE}
_USTAR_MAX = 8 ** 11  # sizes and mtimes below this fit the header's 11 octal digits


def ustar_header(path: str, kind: str, mode: int, size: int, mtime: int, linkname: str = "") -> Optional[bytes]:
    """The 512-byte header tarfile's PAX format writes for a root-owned entry whose path and
    link are short ASCII: a plain ustar header. None for anything else (a long or non-ASCII path
    needs a PAX extended header: tarfile writes those). Every entry of a layer has a header, and
    tarfile takes ten times as long to make one; tests/unit/test_daemonless_tar.py checks the
    bytes are the same."""
    if kind == "dir" and not path.endswith("/"):
        path += "/"
    try:
        name, link = path.encode("ascii"), linkname.encode("ascii")
    except UnicodeEncodeError:
        return None
    if len(name) > 100 or len(link) > 100 or not (0 <= size < _USTAR_MAX and 0 <= mtime < _USTAR_MAX):
        return None
    head = b"".join((name.ljust(100, b"\0"), b"%07o\0" % (mode & 0o7777), b"0000000\0" * 2, b"%011o\0" % size,
                     b"%011o\0" % mtime, b" " * 8, _TYPES[kind], link.ljust(100, b"\0"), tarfile.POSIX_MAGIC)).ljust(512, b"\0")
    return head[:148] + b"%06o\0" % sum(head) + head[155:]  # the checksum counts its own field as spaces


# The bytes of tarfile's PAX format: utf-8 always (tarfile's default is the file system's
# encoding, which would make a non-ASCII path's bytes depend on the machine).
TAR_ENCODING = "utf-8"


def _header(path: str, kind: str, mode: int, size: int, mtime: int, linkname: str = "") -> bytes:
    fast = ustar_header(path, kind, mode, size, mtime, linkname)
    if fast is not None:
        return fast
    info = tarfile.TarInfo(path)
    info.type, info.mode, info.size, info.mtime, info.linkname = _TYPES[kind], mode, size, mtime, linkname
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, TAR_ENCODING, "surrogateescape")


def write_layer(entries: Iterable[Entry], out: BinaryIO, compression: str = "gzip", epoch: Optional[int] = None,
                gzip_level: Optional[int] = None, *, encoding: Optional[LayerEncoding] = None,
                workers: Optional[int] = None) -> Layer:
    """Write the entries as a reproducible, compressed tar to out (any object with write()).
    Entries are written sorted, root-owned with no user or group names, with mtime epoch
    (default: source_date_epoch()) and normalised modes: the bytes tarfile writes for them in
    PAX format, headers and all (tests/unit/test_daemonless_tar.py compares). encoding
    (default: layer_encoding(compression, level=gzip_level)) says how it is compressed;
    workers never changes the bytes."""
    epoch = source_date_epoch() if epoch is None else epoch
    encoding = encoding or layer_encoding(compression, level=gzip_level)
    compression = encoding.compression
    compressed = _HashingWriter(out)
    comp = compressor(compressed, encoding, workers)
    tar = _TarStream(comp, encoding.block or GZIP_BLOCK)
    try:
        for e in sorted(entries, key=lambda e: e.path):
            if e.kind not in _TYPES:
                raise ValueError(f"unknown entry kind {e.kind!r}")
            mode = 0o755 if e.kind == "dir" or (e.kind == "file" and e.mode & 0o111) else 0o777 if e.kind == "symlink" else 0o644
            if e.kind != "file":
                tar.write(_header(e.path, e.kind, mode, 0, epoch, e.linkname))
            elif e.data is not None:
                tar.write(_header(e.path, e.kind, mode, len(e.data), epoch))
                tar.write(e.data)
                tar.pad(len(e.data))
            else:
                fd = os.open(e.source or "", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                try:
                    size = os.fstat(fd).st_size
                    tar.write(_header(e.path, e.kind, mode, size, epoch))
                    tar.write_file(fd, size, e.path)
                finally:
                    os.close(fd)
        tar.close()
    finally:
        tar.stop()
        comp.close()
    return Layer(compressed.digest, compressed.size, tar.digest, tar.size, compression, encoding)

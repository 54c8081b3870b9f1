"""Read a text file (plain, gzip, bzip2 or xz) as blocks of whole lines in bounded memory.

The compression is recognised by the file's magic bytes, not its name. The raw (compressed)
bytes are hashed on the way in, so a conversion records the source's SHA-256 without reading
the file twice. Nothing seeks: the magic bytes are read ahead and served again, so the input
may be a pipe, a FIFO or `/dev/stdin`. Each block ends with a newline (one is appended to a last line without one);
a single line longer than the block size is read whole. A UTF-8 byte-order mark at the start of
the text is skipped.
"""
import bz2
import gzip
import hashlib
import lzma
import zlib
from dataclasses import dataclass, field

from mpimem.errors import MpimemError

_MAGIC = ((b"\x1f\x8b", "gzip", gzip.open),
          (b"BZh", "bzip2", bz2.open),
          (b"\xfd7zXZ\x00", "xz", lzma.open))

BOM = b"\xef\xbb\xbf"   # UTF-8 byte-order mark: skipped at the start of the (decompressed) text

# What a damaged or truncated compressed stream raises, by module.
_STREAM_ERRORS = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, OSError)


class _HashingReader:
    """A binary file wrapper that feeds every byte read into a SHA-256 and counts them;
    `head(size)` reads ahead without consuming (the next reads return those bytes first)."""

    def __init__(self, raw):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.nbytes = 0
        self._ahead = b""

    def head(self, size):
        """The first `size` bytes (fewer at the end of the input), left to be read again."""
        while len(self._ahead) < size:
            more = self.raw.read(size - len(self._ahead))
            if not more:
                break
            self._ahead += more
        return self._ahead

    def read(self, size=-1):
        if self._ahead:
            cut = len(self._ahead) if size is None or size < 0 else size
            chunk, self._ahead = self._ahead[:cut], self._ahead[cut:]
        else:
            chunk = self.raw.read(size)
        self.sha256.update(chunk)
        self.nbytes += len(chunk)
        return chunk

    def readinto(self, buf):
        chunk = self.read(len(buf))
        buf[:len(chunk)] = chunk
        return len(chunk)

    def readable(self):
        return True

    def close(self):
        self.raw.close()


@dataclass
class LineBlocks:
    """Iterate over `(block, first_line)`: `block` is bytes of whole lines, `first_line` the
    1-based number of its first line. After the iteration, `source_bytes` and `source_sha256`
    describe the raw file and `compression` names its format ("none", "gzip", "bzip2", "xz")."""

    path: str
    block_bytes: int
    compression: str = "none"
    source_bytes: int = 0
    source_sha256: str = ""
    _hasher: _HashingReader = field(default=None, repr=False)

    @property
    def bytes_read(self) -> int:
        """Raw (compressed) bytes of the file read so far."""
        return self._hasher.nbytes if self._hasher is not None else 0

    def __iter__(self):
        try:
            raw = open(self.path, "rb")
        except OSError as exc:
            raise MpimemError(f"{self.path}: cannot read input: {exc.strerror or exc}") from None
        self._hasher = _HashingReader(raw)
        try:
            yield from self._blocks()
        finally:
            self._hasher.close()
        self.source_bytes = self._hasher.nbytes
        self.source_sha256 = self._hasher.sha256.hexdigest()

    def _open_stream(self):
        head = self._hasher.head(8)
        for magic, name, opener in _MAGIC:
            if head.startswith(magic):
                self.compression = name
                return opener(self._hasher, "rb")
        return self._hasher

    def _blocks(self):
        stream = self._open_stream()
        first_line, carry, start = 1, b"", True
        while True:
            try:
                chunk = stream.read(self.block_bytes)
                while start and chunk and len(chunk) < len(BOM) and BOM.startswith(chunk):
                    more = stream.read(self.block_bytes)   # a pipe may hand over 1-2 bytes
                    if not more:
                        break
                    chunk += more
            except _STREAM_ERRORS as exc:
                line = first_line + carry.count(b"\n")
                raise MpimemError(f"{self.path}:{line}: truncated or corrupt {self.compression} "
                                  f"stream ({exc})") from None
            if not chunk:
                break
            if start:                               # a leading UTF-8 byte-order mark (Windows
                start = False                       # editors write one) is not text: skipped
                if chunk.startswith(BOM):
                    chunk = chunk[len(BOM):]
                    if not chunk:
                        continue
            cut = chunk.rfind(b"\n")
            if cut < 0:
                carry += chunk
                continue
            block, carry = carry + chunk[:cut + 1], chunk[cut + 1:]
            yield block, first_line
            first_line += block.count(b"\n")
        if carry:
            yield carry + b"\n", first_line


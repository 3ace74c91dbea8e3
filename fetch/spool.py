"""An answer's bytes as they arrive: in memory while small, past a limit in an unnamed temporary file, so that a
large answer (158 MB at 100,000 contracts) is never held whole in a worker's memory. The diff step reads a
spooled answer back a part at a time (domain.contracts.contract_batches)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import IO

# Parts read back from a spooled answer.
PART_BYTES = 1 << 20


class Spool:
    """Bytes written in order; in memory up to limit bytes, then in a temporary file that has no name (the
    system removes it when it is closed, or when the process dies)."""

    __slots__ = ("file", "limit", "memory", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.memory: bytearray | None = bytearray()
        self.file: IO[bytes] | None = None
        self.size = 0

    def write(self, part: bytes | bytearray | memoryview) -> None:
        """Append part."""
        size = memoryview(part).nbytes
        if self.memory is not None and self.size + size > self.limit:
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close(), or with the process
            self.file.write(self.memory)
            self.memory = None
        if self.memory is not None:
            self.memory += part  # grown in place: a large buffer is remapped, not copied
        else:
            assert self.file is not None
            self.file.write(part)
        self.size += size

    @property
    def spooled(self) -> bool:
        """Whether the bytes went to the file (the answer was larger than the limit)."""
        return self.file is not None

    def read(self, offset: int, size: int) -> bytes:
        """Up to size bytes from offset."""
        if self.memory is not None:
            return bytes(self.memory[offset:offset + size])
        assert self.file is not None
        self.file.flush()
        return os.pread(self.file.fileno(), size, offset)

    def head(self, size: int) -> bytes:
        """The first size bytes (or fewer)."""
        return self.read(0, size)

    def tail(self, size: int) -> bytes:
        """The last size bytes (or fewer)."""
        return self.read(max(self.size - size, 0), size)

    def parts(self, size: int = PART_BYTES) -> Iterator[bytes]:
        """Every byte, in order, size bytes at a time: only one part is held here at a time."""
        for offset in range(0, self.size, size):
            yield self.read(offset, size)

    def whole(self) -> bytearray:
        """Every byte at once (for an answer that must be decoded whole)."""
        if self.memory is not None:
            return self.memory
        whole = bytearray(self.size)
        offset = 0
        for part in self.parts():
            whole[offset:offset + len(part)] = part
            offset += len(part)
        return whole

    def close(self) -> None:
        """Free the memory or the file; the spool is empty after."""
        if self.file is not None:
            self.file.close()
            self.file = None
        self.memory = bytearray()
        self.size = 0

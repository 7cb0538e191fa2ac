"""Where a spool (geodns.observe.spool) writes: a stream such as stdout, or a file rotated by size.

Both run in the spool's writer thread only. A file output can frame its contents: `header` is
written at the start of every file and `footer` before it is closed or rotated (dnstap files
open with a Frame Streams START frame and end with STOP, so each rotated file reads alone).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, TextIO, cast

PIPE_BUF = 4096  # POSIX: a write of at most this many bytes to a pipe is never interleaved


class StreamOutput:
    """A text stream of ASCII lines (stdout): under systemd, stdout goes to the journal.

    Lines are written in chunks of whole lines no longer than PIPE_BUF, so that the workers
    sharing one pipe never interleave their lines."""

    ready = True

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def start(self) -> None:
        pass

    def write(self, chunks: list[bytes]) -> None:
        part: list[bytes] = []
        size = 0
        for chunk in chunks:
            if size + len(chunk) > PIPE_BUF and part:
                self.stream.write(b"".join(part).decode("ascii"))
                self.stream.flush()
                part, size = [], 0
            part.append(chunk)
            size += len(chunk)
        self.stream.write(b"".join(part).decode("ascii"))
        self.stream.flush()

    def idle(self) -> None:
        pass

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


class RotatingFile:
    """An append-only file rotated by size: path -> path.1 -> ... -> path.N, oldest deleted.

    The size check is made before each chunk, so no file grows past max_bytes (unless a single
    chunk is larger). max_bytes 0: never rotate. backups 0: the file is truncated when full.
    The file is opened by the constructor, so a path that cannot be written fails at start-up.
    """

    ready = True

    def __init__(
        self, path: Path, max_bytes: int, backups: int, header: bytes = b"", footer: bytes = b""
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.header = header
        self.footer = footer
        self.handle = self._open("ab")
        self.size = self.handle.tell()
        if self.header and self.size:
            # a framed file is never appended to: its readers expect one header at the start
            self.handle.close()
            self._shift()
            self.handle = self._open("ab")
            self.size = 0
        self._begin()

    def _open(self, mode: str) -> BinaryIO:
        return cast(BinaryIO, open(self.path, mode))  # noqa: SIM115 - closed by close()

    def _begin(self) -> None:
        if self.header and not self.size:
            self.handle.write(self.header)
            self.handle.flush()
            self.size = len(self.header)

    def start(self) -> None:
        pass

    def write(self, chunks: list[bytes]) -> None:
        part: list[bytes] = []
        size = self.size
        limit = self.max_bytes - len(self.footer)
        for chunk in chunks:
            if self.max_bytes and size > len(self.header) and size + len(chunk) > limit:
                self.handle.write(b"".join(part))
                part = []
                self._rotate()
                size = self.size
            part.append(chunk)
            size += len(chunk)
        self.handle.write(b"".join(part))
        self.handle.flush()
        self.size = size

    def idle(self) -> None:
        pass

    def _rotate(self) -> None:
        self.handle.write(self.footer)
        self.handle.close()
        if self.backups:
            self._shift()
            self.handle = self._open("ab")
        else:
            self.handle = self._open("wb")
        self.size = 0
        self._begin()

    def _shift(self) -> None:
        """path -> path.1 -> ... -> path.N (with backups 0: the old file is simply replaced)."""
        if not self.backups:
            self.path.unlink(missing_ok=True)
            return
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.footer:
                self.handle.write(self.footer)
            self.handle.close()


def worker_path(path: Path, worker: int) -> Path:
    """The file of worker process `worker` (0, the main process: `path` itself): a file cannot
    be rotated by several processes at once, so each worker writes its own beside the main one
    (queries.log -> queries.worker2.log)."""
    if worker == 0:
        return path
    return path.with_name(f"{path.stem}.worker{worker}{path.suffix}")

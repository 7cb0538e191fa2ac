"""The optional query log: one JSON line per sampled query, written off the query path.

Off by default (`query_log: {enabled: true}` turns it on). The query path pays for a sampling
draw, a length check and appending one tuple of references to a deque; it never formats, never
takes a lock and never blocks. When the queue is full the entry is dropped and counted: a slow
disk must cost log lines, not answers. A background thread wakes a few times a second, formats
the queued entries and writes them to stdout (`path: "-"`, for journald) or to a file it rotates
itself by size (`max_bytes`, keeping `backups` old files as path.1 ... path.N).

With `workers: N` every process logs its own queries. On stdout they share one pipe, so lines
are written in chunks of whole lines no longer than PIPE_BUF, which the kernel never interleaves.
A file cannot be rotated by several processes at once, so worker N writes its own file beside
the main one: queries.log -> queries.worker2.log.

A line (keys always present, null when not applicable):
  {"time": "2024-05-01T12:00:00.123456Z", "client": "192.0.2.7", "ecs": "36.64.0.0/24",
   "qname": "www.cdn.example.com.", "qtype": "A", "rcode": "NOERROR", "zone": "cdn.example.com.",
   "site": "jakarta", "rule": "nearest", "scope": 20, "located_by": "ecs", "truncated": false,
   "transport": "udp"}
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, cast

from geodns.common.logs import get_logger
from geodns.config.server import QueryLogConfig
from geodns.observe.metrics import qtype_text, rcode_text

log = get_logger("geodns.observe.querylog")

QUEUE_SIZE = 65_536
NUL = b"\x00"
WRITE_INTERVAL = 0.2  # seconds between the writer's wake-ups: the queue holds 0.2 s of 300k qps
PIPE_BUF = 4096  # POSIX: a write of at most this many bytes to a pipe is never interleaved

# (time, client, ecs, qname wire, qtype, outcome, transport): references only, nothing formatted
Entry = tuple[float, str, tuple[int, int, bytes] | None, bytes, int, Any, str]


class QueryLog:
    """Samples queries into a bounded queue; a daemon thread formats and writes them.

    `observe` has the signature of `geodns.serving.server.Observer`. Counters for metrics: `written`
    (lines written), `dropped` (queue full), `errors` (lines lost to write errors). `worker` is
    the worker process index (0: the main process). A file that cannot be opened raises OSError
    here, at start-up, rather than losing every line later.
    """

    def __init__(
        self,
        config: QueryLogConfig,
        *,
        worker: int = 0,
        queue_size: int = QUEUE_SIZE,
        stream: TextIO | None = None,
        interval: float = WRITE_INTERVAL,
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.enabled = config.enabled and config.sample_rate > 0
        self.sample_rate = config.sample_rate
        self.queue_size = queue_size
        self.interval = interval
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._clock = clock
        self._draw = draw
        self._pending: collections.deque[Entry] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._output: _Output | None = None
        if not self.enabled:
            return
        if config.path == "-":
            self._output = _StreamOutput(stream if stream is not None else sys.stdout)
        else:
            path = worker_path(Path(config.path), worker)
            self._output = _RotatingFile(path, config.max_bytes, config.backups)
        self._thread = threading.Thread(target=self._run, name="geodns-querylog", daemon=True)
        self._thread.start()

    def observe(self, query: Any, outcome: Any, client: str, transport: str) -> None:
        """Queue one query for the log (sampled); never blocks, never formats."""
        if not self.enabled:
            return
        if self.sample_rate < 1.0 and self._draw() >= self.sample_rate:
            return
        pending = self._pending
        if len(pending) >= self.queue_size:
            self.dropped += 1
            return
        pending.append(
            (self._clock(), client, query.ecs, query.qname, query.qtype, outcome, transport)
        )

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the thread and close the file. Idempotent."""
        self.enabled = False
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        assert self._output is not None
        try:
            while not self._stop.wait(self.interval):
                self._write_pending()
            self._write_pending()
        finally:
            self._output.close()

    def _write_pending(self) -> None:
        pending = self._pending
        lines: list[str] = []
        while pending:
            entry = pending.popleft()  # the only consumer: non-empty stays non-empty
            try:
                lines.append(format_entry(entry))
            except Exception:  # a formatting bug loses one line, not the log
                self.errors += 1
                log.exception("query_log_format_failed")
        if not lines:
            return
        assert self._output is not None
        try:
            self._output.write(lines)
        except (OSError, ValueError) as exc:
            if not self.errors:
                log.error("query_log_write_failed", error=str(exc), path=self.config.path)
            self.errors += len(lines)
            return
        self.written += len(lines)


def worker_path(path: Path, worker: int) -> Path:
    """The log file of worker process `worker` (0, the main process: `path` itself)."""
    if worker == 0:
        return path
    return path.with_name(f"{path.stem}.worker{worker}{path.suffix}")


def format_entry(entry: Entry) -> str:
    """One queued entry -> one JSON line (ASCII, newline-terminated)."""
    when, client, ecs, qname, qtype, outcome, transport = entry
    record = {
        "time": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "client": client,
        "ecs": ecs_text(ecs),
        "qname": name_text(qname),
        "qtype": qtype_text(qtype),
        "rcode": rcode_text(outcome.rcode),
        "zone": outcome.zone,
        "site": outcome.site,
        "rule": outcome.rule,
        "scope": outcome.scope,
        "located_by": outcome.located_by,
        "truncated": outcome.truncated,
        "transport": transport,
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


def ecs_text(ecs: tuple[int, int, bytes] | None) -> str | None:
    """An ECS option (family, source prefix, address bytes) as "address/prefix"."""
    if ecs is None:
        return None
    family, source, address = ecs
    if family == 1:
        return f"{ipaddress.IPv4Address(address.ljust(4, NUL))}/{source}"
    return f"{ipaddress.IPv6Address(address.ljust(16, NUL))}/{source}"


def name_text(wire: bytes) -> str:
    """An uncompressed wire name in presentation form, as the client spelled it (case kept).

    '.' and '\\' inside a label are escaped with a backslash, bytes outside printable ASCII as
    \\DDD (RFC 1035 section 5.1), so a line can always be read back unambiguously.
    """
    labels = []
    position = 0
    while position < len(wire) and wire[position]:
        length = wire[position]
        label = wire[position + 1 : position + 1 + length]
        position += 1 + length
        text = []
        for byte in label:
            if byte in (0x2E, 0x5C):
                text.append("\\" + chr(byte))
            elif 0x21 <= byte <= 0x7E:
                text.append(chr(byte))
            else:
                text.append(f"\\{byte:03d}")
        labels.append("".join(text))
    return ".".join(labels) + "." if labels else "."


class _Output:
    def write(self, lines: list[str]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _StreamOutput(_Output):
    """stdout (or any text stream): under systemd, stdout goes to the journal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, lines: list[str]) -> None:
        chunk: list[str] = []
        size = 0
        for line in lines:  # ASCII: characters are bytes
            if size + len(line) > PIPE_BUF and chunk:
                self.stream.write("".join(chunk))
                self.stream.flush()
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        self.stream.write("".join(chunk))
        self.stream.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


class _RotatingFile(_Output):
    """An append-only file rotated by size: path -> path.1 -> ... -> path.N, oldest deleted.

    The size check is made before each line, so no file grows past max_bytes (unless a single
    line is longer). max_bytes 0: never rotate. backups 0: the file is truncated when full.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.handle = self._open("a")
        self.size = self.handle.tell()

    def _open(self, mode: str) -> TextIO:
        return cast(TextIO, open(self.path, mode, encoding="ascii", newline="\n"))  # noqa: SIM115

    def write(self, lines: list[str]) -> None:
        chunk: list[str] = []
        size = self.size
        for line in lines:  # ASCII only (json.dumps escapes the rest): characters are bytes
            if self.max_bytes and size and size + len(line) > self.max_bytes:
                self.handle.write("".join(chunk))
                chunk = []
                self._rotate()
                size = 0
            chunk.append(line)
            size += len(line)
        self.handle.write("".join(chunk))
        self.handle.flush()
        self.size = size

    def _rotate(self) -> None:
        self.handle.close()
        if self.backups:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            self.handle = self._open("a")
        else:
            self.handle = self._open("w")
        self.size = 0

    def close(self) -> None:
        self.handle.close()

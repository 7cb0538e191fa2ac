"""A bounded spool of encoded bytes, written out by a thread that does nothing but write.

Both per-query outputs (the JSON query log and dnstap) encode their entry on the query path, in
the event loop's thread, and hand the bytes to a `Spool`. Encoding there costs a few
microseconds per sampled query and never more. The first query log formatted its lines in the
writer thread instead, and under load that thread held the interpreter lock for milliseconds at
a time: every system call of the event loop (each one releases the lock) then waited for the
lock's switch interval, 5 ms, and answers were delayed by tens of milliseconds (issue 12, item
7). The writer thread here only takes the queued bytes and calls write(): it holds the lock for
microseconds, and the lock is free while the write itself blocks.

What the spool keeps is bounded in bytes. An entry that does not fit, or that arrives while the
output has no reader (a Unix socket nobody listens on), is dropped and counted: a slow disk or a
slow reader costs entries, never answers. Counters for metrics: `accepted`, `dropped`,
`written` (entries), `errors` (entries lost to write errors).
"""

from __future__ import annotations

import collections
import threading
from typing import Protocol

from geodns.common.logs import get_logger

log = get_logger("geodns.observe.spool")

QUEUE_BYTES = 16 * 1024 * 1024  # what may wait for the writer: a few seconds of a busy server
WRITE_INTERVAL = 0.1  # seconds between the writer's wake-ups


class Output(Protocol):
    """Where a spool's bytes go. Every method runs in the writer thread, except `ready`,
    which the query path reads (a plain attribute: no lock, no call)."""

    ready: bool  # False: entries would be lost (no reader connected), so they are not queued

    def start(self) -> None:
        """Open, connect or write a header (the thread's first act)."""

    def write(self, chunks: list[bytes]) -> None:
        """Write the chunks in order; raise OSError on failure."""

    def idle(self) -> None:
        """Called on every wake-up with nothing to write (reconnect, heartbeat)."""

    def close(self) -> None:
        """Write a trailer, close; never raises."""


class Spool:
    """Bytes offered by the query path, written by a daemon thread, bounded by `max_bytes`."""

    def __init__(
        self,
        output: Output,
        *,
        max_bytes: int = QUEUE_BYTES,
        interval: float = WRITE_INTERVAL,
        name: str = "geodns-spool",
    ) -> None:
        self.output = output
        self.max_bytes = max_bytes
        self.interval = interval
        self.accepted = 0
        self.dropped = 0
        self.written = 0
        self.errors = 0
        # bytes offered (only the query path adds) and bytes taken (only the writer adds): each
        # is written by one thread, so what waits is their difference, without a lock
        self.offered_bytes = 0
        self.taken_bytes = 0
        self._pending: collections.deque[bytes] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name=name, daemon=True
        )
        self._thread.start()

    def offer(self, chunk: bytes) -> None:
        """Queue one encoded entry, or drop and count it; never blocks."""
        size = len(chunk)
        if not self.output.ready or self.offered_bytes - self.taken_bytes + size > self.max_bytes:
            self.dropped += 1
            return
        self.offered_bytes += size
        self.accepted += 1
        self._pending.append(chunk)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the thread, close the output. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        output = self.output
        try:
            output.start()
        except OSError as exc:
            log.error("output_start_failed", error=str(exc))
        try:
            while not self._stop.wait(self.interval):
                if not self._write_pending():
                    output.idle()
            self._write_pending()
        finally:
            output.close()

    def _write_pending(self) -> bool:
        """Write everything queued so far; False when there was nothing."""
        pending = self._pending
        count = len(pending)
        if not count:
            return False
        popleft = pending.popleft  # the only consumer: the first `count` entries stay there
        chunks = [popleft() for _ in range(count)]
        self.taken_bytes += sum(map(len, chunks))
        try:
            self.output.write(chunks)
        except (OSError, ValueError) as exc:
            if not self.errors:
                log.error("output_write_failed", error=str(exc))
            self.errors += count
            return True
        self.written += count
        return True

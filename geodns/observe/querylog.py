"""The optional query log: one JSON line per sampled query, with geodns's decision.

Off by default (`query_log: {enabled: true}` turns it on). It stays beside dnstap
(geodns.observe.dnstap) because it says what dnstap cannot: which site was chosen, by which
rule, how the user was located and the ECS scope returned; and it is read with nothing but
`journalctl` and `jq`. dnstap carries the packets themselves, for the tools that read them.

The line is formatted on the query path, for the sampled queries only (a few microseconds
each), and handed to a spool (geodns.observe.spool) whose thread only writes: formatting in the
writer thread made it hold the interpreter lock for milliseconds and delayed answers by tens of
milliseconds under load. When the spool is full the line is dropped and counted: a slow disk
costs log lines, never answers. Lines go to stdout (`path: "-"`, for journald) or to a file
rotated by size (`max_bytes`, keeping `backups` old files as path.1 ... path.N).

With `workers: N` every process logs its own queries: on stdout in chunks of whole lines that
the kernel never interleaves, to a file of its own beside the main one (queries.worker2.log).

A line (keys always present, null when not applicable):
  {"time": "2024-05-01T12:00:00.123456Z", "client": "192.0.2.7", "ecs": "36.64.0.0/24",
   "qname": "www.cdn.example.com.", "qtype": "A", "rcode": "NOERROR", "zone": "cdn.example.com.",
   "site": "jakarta", "rule": "nearest", "scope": 20, "located_by": "ecs", "truncated": false,
   "transport": "udp"}
"""

from __future__ import annotations

import ipaddress
import json
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from geodns.common.logs import get_logger
from geodns.config.server import QueryLogConfig
from geodns.dns.names import name_text
from geodns.observe.counters import qtype_text, rcode_text
from geodns.observe.outputs import PIPE_BUF, RotatingFile, StreamOutput, worker_path
from geodns.observe.spool import QUEUE_BYTES, WRITE_INTERVAL, Spool

log = get_logger("geodns.observe.querylog")

NUL = b"\x00"
__all__ = ["PIPE_BUF", "QueryLog", "ecs_text", "format_line", "name_text", "worker_path"]


class QueryLog:
    """Samples queries, formats their lines and hands them to a spool that writes them.

    `observe` has the signature of `geodns.serving.answer_path.Observer`. Counters for metrics:
    `written` (lines written), `dropped` (spool full), `errors` (lines lost to write or
    formatting errors). `worker` is the worker process index (0: the main process). A file that
    cannot be opened raises OSError here, at start-up, rather than losing every line later.
    """

    def __init__(
        self,
        config: QueryLogConfig,
        *,
        worker: int = 0,
        queue_bytes: int = QUEUE_BYTES,
        stream: TextIO | None = None,
        interval: float = WRITE_INTERVAL,
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.enabled = config.enabled and config.sample_rate > 0
        self.sample_rate = config.sample_rate
        self.format_errors = 0
        self._clock = clock
        self._draw = draw
        self._second = -1
        self._second_text = ""
        self.spool: Spool | None = None
        if not self.enabled:
            return
        output: Any
        if config.path == "-":
            output = StreamOutput(stream if stream is not None else sys.stdout)
        else:
            path = worker_path(Path(config.path), worker)
            output = RotatingFile(path, config.max_bytes, config.backups)
        self.spool = Spool(output, max_bytes=queue_bytes, interval=interval, name="geodns-querylog")

    @property
    def written(self) -> int:
        return self.spool.written if self.spool is not None else 0

    @property
    def dropped(self) -> int:
        return self.spool.dropped if self.spool is not None else 0

    @property
    def errors(self) -> int:
        return self.format_errors + (self.spool.errors if self.spool is not None else 0)

    def observe(
        self, asked: Any, outcome: Any, client: str, transport: str, size: int, path: int
    ) -> None:
        """Log one query (sampled): format its line and queue it; never blocks."""
        if not self.enabled:
            return
        if self.sample_rate < 1.0 and self._draw() >= self.sample_rate:
            return
        spool = self.spool
        assert spool is not None
        try:
            line = format_line(
                self._time_text(), client, asked.ecs, asked.qname, asked.qtype, outcome, transport
            )
        except Exception:  # a formatting bug loses one line, not the log and not the answer
            if not self.format_errors:
                log.exception("query_log_format_failed")
            self.format_errors += 1
            return
        spool.offer(line)

    def _time_text(self) -> str:
        """Now as 2024-05-01T12:00:00.123456Z; the part up to the second is made once a second."""
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((now - second) * 1e6):06d}Z"

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the thread and close the file. Idempotent."""
        self.enabled = False
        if self.spool is not None:
            self.spool.close(timeout)


def format_line(
    when: str,
    client: str,
    ecs: tuple[int, int, bytes] | None,
    qname: bytes,
    qtype: int,
    outcome: Any,
    transport: str,
) -> bytes:
    """One query -> one JSON line (ASCII, newline-terminated).

    `scope` is the ECS scope the reply carried: a static or negative answer to a query with ECS
    carries /0 (RFC 7871 section 7.2.1), which the outcome leaves unset."""
    scope = outcome.scope
    if scope is None and ecs is not None:
        scope = 0
    record = {
        "time": when,
        "client": client,
        "ecs": ecs_text(ecs),
        "qname": name_text(qname),
        "qtype": qtype_text(qtype),
        "rcode": rcode_text(outcome.rcode),
        "zone": outcome.zone,
        "site": outcome.site,
        "rule": outcome.rule,
        "scope": scope,
        "located_by": outcome.located_by,
        "truncated": outcome.truncated,
        "transport": transport,
    }
    return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


def ecs_text(ecs: tuple[int, int, bytes] | None) -> str | None:
    """An ECS option (family, source prefix, address bytes) as "address/prefix"."""
    if ecs is None:
        return None
    family, source, address = ecs
    if family == 1:
        return f"{ipaddress.IPv4Address(address.ljust(4, NUL))}/{source}"
    return f"{ipaddress.IPv6Address(address.ljust(16, NUL))}/{source}"

"""The asyncio transports: UDP datagrams and TCP streams (RFC 7766) around the engine.

They are thin on purpose: parse, take the current snapshot, call the engine, send. Policy for bad
input lives here, at the edge: a packet shorter than a header or with QR=1 is dropped, a malformed
one gets FORMERR, and an exception in our own code gets SERVFAIL and one log event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter
from typing import Any, Protocol

from geodns.common.logs import get_logger
from geodns.dns.names import name_text
from geodns.dns.resolve import RCODE_SERVFAIL
from geodns.dns.wire import Drop, FormError, parse_query
from geodns.observe.metrics import PATH_FULL, PATH_REPLY_CACHE, PATH_TEMPLATE, TCP_CLOSE_REASONS
from geodns.observe.timing import Histogram
from geodns.serving.engine import Asked, Outcome, Snapshot, asked_of, formerr, respond, servfail

log = get_logger("geodns.serving.server")


class Asking(Protocol):
    """What an observer reads of a query: a parsed `Query` or the `Asked` kept with a cached reply."""

    @property
    def qname(self) -> bytes: ...
    @property
    def qtype(self) -> int: ...
    @property
    def ecs(self) -> tuple[int, int, bytes] | None: ...
    @property
    def features(self) -> int: ...


Observer = Callable[[Asking, Outcome, str, str, int, int], None]
"""Called once per answered query: (what was asked, what was decided, client, "udp" or "tcp",
the response's size in bytes, how it was found: geodns.observe.metrics.PATH_*)."""
SERVFAIL_OUTCOME = Outcome(RCODE_SERVFAIL, None)


class Tap(Protocol):
    """Sees every query's bytes and reply at the transports (geodns.observe.dnstap.DnstapTap)."""

    def batched(self, listener: Any, offset: int, query: bytes, response: bytes | None) -> None: ...
    def datagram(
        self, transport: Any, address: Any, query: bytes, response: bytes | None
    ) -> None: ...
    def stream(self, connection: Any, query: bytes, response: bytes | None) -> None: ...


class ServerState:
    """The one reference a query reads: the current snapshot, swapped whole on reload."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.observer: Observer | None = None
        # when the observer only counts (no query log): its counts and their slots, so that a
        # reply from the reply cache is counted by one list increment (geodns.observe.metrics)
        self.tally: list[int] | None = None
        self.slot_of: Callable[[Asked, Outcome, int], int] | None = None
        self.tap: Tap | None = None  # dnstap, when configured
        self.malformed = 0
        self.dropped = 0
        self.errors = 0
        self.tcp_connections = 0
        self.tcp_closed = dict.fromkeys(TCP_CLOSE_REASONS, 0)
        self.udp_latency = Histogram()  # receive to send, seconds (geodns.observe.timing)
        self.tcp_latency = Histogram()

    def count_with(self, counters: Any) -> None:
        """Make `counters` (geodns.observe.metrics.QueryCounters) the observer, with its fast path."""
        self.observer = counters.observe
        self.tally = counters.tally
        self.slot_of = counters.cached_slot


def handle(state: ServerState, data: bytes, client: str, tcp: bool) -> bytes | None:
    """One query packet -> the response packet, or None when no reply is owed."""
    snapshot = state.snapshot
    key = b""
    if not tcp:
        key = data[2:]  # the reply cache's key: the query without its ID
        cached = snapshot.responses.get(key)
        if cached is not None:  # these bytes were answered before under this snapshot
            tally = state.tally
            if tally is not None and cached[3] >= 0:
                tally[cached[3]] += 1
            elif state.observer is not None:
                state.observer(
                    cached[1], cached[2], client, "udp", 2 + len(cached[0]), PATH_REPLY_CACHE
                )
            return data[:2] + cached[0]
        reused = snapshot.from_template(data)
        if reused is not None:  # the same question before, from another client subnet
            response, asked, outcome = reused
            snapshot.remember(key, response, asked, outcome, state.slot_of)
            observer = state.observer
            if observer is not None:
                observer(asked, outcome, client, "udp", len(response), PATH_TEMPLATE)
            return response
    try:
        query = parse_query(data)
    except Drop:
        state.dropped += 1
        return None
    except FormError as exc:
        state.malformed += 1
        return formerr(exc.query_id, exc.flags)
    except Exception:  # a bug in the parser must not stop the server
        state.errors += 1
        log.exception("parser_error", client=client, size=len(data))
        return None
    try:
        response, outcome = respond(query, client, snapshot, tcp)
    except Exception:
        state.errors += 1
        log.exception(
            "engine_error", client=client, qtype=query.qtype, qname=name_text(query.qname)
        )
        response, outcome = servfail(query, snapshot), SERVFAIL_OUTCOME  # counted like any
    if not tcp and outcome.cacheable:
        snapshot.remember(key, response, asked_of(query), outcome, state.slot_of)
        snapshot.learn_template(data, query, response, outcome)
    observer = state.observer
    if observer is not None:
        observer(query, outcome, client, "tcp" if tcp else "udp", len(response), PATH_FULL)
    return response


class UdpProtocol(asyncio.DatagramProtocol):
    """Answers each datagram in turn; never raises out of datagram_received."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        started = perf_counter()
        state = self.state
        response = handle(state, data, addr[0], False)
        if response is not None:
            self.transport.sendto(response, addr)
            state.udp_latency.observe(perf_counter() - started)
        if state.tap is not None:
            state.tap.datagram(self.transport, addr, data, response)

    def error_received(self, exc: Exception) -> None:  # ICMP errors and the like: not ours
        pass


class TcpProtocol(asyncio.Protocol):
    """One TCP connection: length-framed, pipelined, idle timeout, counted against a cap."""

    def __init__(self, state: ServerState, idle_timeout: float, max_connections: int) -> None:
        self.state = state
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.buffer = bytearray()
        self.transport: Any = None
        self.client = ""
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False
        self.closing: str | None = None  # why we close it (geodns_tcp_connections_closed_total)
        self.tap_peer: Any = None  # both ends, encoded once by a dnstap tap

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.state.tcp_connections >= self.max_connections:
            self.state.tcp_closed["limit"] += 1
            transport.abort()
            return
        self.state.tcp_connections += 1
        self.counted = True
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.idle_timeout, self._idle)

    def _idle(self) -> None:
        self.closing = self.closing or "idle_timeout"
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._arm()
        buffer = self.buffer
        state = self.state
        while len(buffer) >= 2:
            length = (buffer[0] << 8) | buffer[1]
            if len(buffer) < 2 + length:
                break
            started = perf_counter()
            message = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            response = handle(state, message, self.client, True)
            if response is not None:
                self.transport.write(len(response).to_bytes(2, "big") + response)
                state.tcp_latency.observe(perf_counter() - started)
            if state.tap is not None:
                state.tap.stream(self, message, response)
        if len(buffer) > 65537:
            self.closing = self.closing or "oversized"
            self.transport.close()

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.counted:
            self.state.tcp_connections -= 1
            self.counted = False
            reason = self.closing or ("reset" if exc is not None else "client_closed")
            self.state.tcp_closed[reason] += 1

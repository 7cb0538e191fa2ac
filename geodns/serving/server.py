"""The asyncio transports: UDP datagrams and TCP streams (RFC 7766) around the engine.

They are thin on purpose: parse, take the current snapshot, call the engine, send. Policy for bad
input lives here, at the edge: a packet shorter than a header or with QR=1 is dropped, a malformed
one gets FORMERR, and an exception in our own code gets SERVFAIL and one log event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from geodns.common.logs import get_logger
from geodns.dns.wire import Drop, FormError, parse_query
from geodns.serving.engine import Asked, Outcome, Snapshot, formerr, respond, servfail

log = get_logger("geodns.serving.server")


class Asking(Protocol):
    """What an observer reads of a query: a parsed `Query` or the `Asked` kept with a cached reply."""

    @property
    def qname(self) -> bytes: ...
    @property
    def qtype(self) -> int: ...
    @property
    def ecs(self) -> tuple[int, int, bytes] | None: ...


Observer = Callable[[Asking, Outcome, str, str], None]
"""Called once per answered query: (what was asked, what was decided, client, "udp" or "tcp")."""


class ServerState:
    """The one reference a query reads: the current snapshot, swapped whole on reload."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.observer: Observer | None = None
        # when the observer only counts (no query log): its counts and their slots, so that a
        # reply from the reply cache is counted by one list increment (geodns.observe.metrics)
        self.tally: list[int] | None = None
        self.slot_of: Callable[[int, Any, str], int] | None = None
        self.malformed = 0
        self.dropped = 0
        self.errors = 0
        self.tcp_connections = 0

    def count_with(self, counters: Any) -> None:
        """Make `counters` (geodns.observe.metrics.QueryCounters) the observer, with its fast path."""
        self.observer = counters.observe
        self.tally = counters.tally
        self.slot_of = counters.slot


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
                state.observer(cached[1], cached[2], client, "udp")
            return data[:2] + cached[0]
        reused = snapshot.from_template(data)
        if reused is not None:  # the same question before, from another client subnet
            response, asked, outcome = reused
            snapshot.remember(key, response, asked, outcome, state.slot_of)
            observer = state.observer
            if observer is not None:
                observer(asked, outcome, client, "udp")
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
        log.exception("engine_error", client=client, qtype=query.qtype, qname=query.qname.hex())
        return servfail(query, snapshot)
    if not tcp and outcome.cacheable:
        asked = Asked(query.qname, query.qtype, query.ecs)
        snapshot.remember(key, response, asked, outcome, state.slot_of)
        snapshot.learn_template(data, query, response, outcome)
    observer = state.observer
    if observer is not None:
        observer(query, outcome, client, "tcp" if tcp else "udp")
    return response


class UdpProtocol(asyncio.DatagramProtocol):
    """Answers each datagram in turn; never raises out of datagram_received."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        response = handle(self.state, data, addr[0], False)
        if response is not None:
            self.transport.sendto(response, addr)

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

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.state.tcp_connections >= self.max_connections:
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
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._arm()
        buffer = self.buffer
        while len(buffer) >= 2:
            length = (buffer[0] << 8) | buffer[1]
            if len(buffer) < 2 + length:
                break
            message = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            response = handle(self.state, message, self.client, True)
            if response is not None:
                self.transport.write(len(response).to_bytes(2, "big") + response)
        if len(buffer) > 65537:
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

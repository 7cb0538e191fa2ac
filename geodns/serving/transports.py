"""The asyncio transports around the answer path: UDP datagrams and TCP streams (RFC 7766).

UDP is answered in batches by geodns.serving.udpbatch where the platform allows; the
`UdpProtocol` here is the one-datagram-at-a-time fallback. Both hand each datagram to
`geodns.serving.answer_path.answer`.

TCP is where a slow or hostile client can hold resources, so each connection lives under four
limits (`tcp:` in the config, geodns.config.server.TcpSettings), as BIND and Knot DNS keep theirs:
- a whole message must arrive within `message_timeout` of its first byte: dripping one byte at
  a time does not keep a connection (the timer is not reset by each byte);
- an idle connection (no message under way) closes after `idle_timeout`;
- one address holds at most `max_per_address` connections;
- a process holds at most `max_connections`; when full, a new connection takes the place of
  one that never completed a message (the oldest such), else of the one idle the longest, so
  clients that send whole queries keep getting in while slots are held by ones that do not.
Every close is counted once, by its reason (geodns.observe.counters.TCP_CLOSE_REASONS, metric
geodns_tcp_connections_closed_total); every message's time from receipt to reply goes to a
latency histogram, and to dnstap when it is on. The limits are per
process: with `workers: N`, N times `max_connections` in all (metrics sum the processes).
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from geodns.common.caching import BoundedCache
from geodns.config.server import TcpSettings
from geodns.serving.answer_path import ServerState, answer
from geodns.serving.client import Client, ClientFactory

MAX_MESSAGE = 65535


@dataclass
class TcpRegistry:
    """The open TCP connections of one process, in eviction order, and their per-address counts.

    Two insertion-ordered dicts make every admission O(1) however many connections are open
    (a scan of 256 for the one to evict cost 43 µs in the soak, at every admission of a full
    process): `waiting` holds connections that never completed a message, oldest first;
    `useful` those that did, least recently useful first (a whole message moves its connection
    to the end)."""

    limits: TcpSettings
    clients: ClientFactory
    waiting: dict[TcpProtocol, None] = field(default_factory=dict)
    useful: dict[TcpProtocol, None] = field(default_factory=dict)
    per_address: dict[str, int] = field(default_factory=dict)
    accepted: int = 0

    def __len__(self) -> int:
        return len(self.waiting) + len(self.useful)

    def admit(self, connection: TcpProtocol, address: str) -> str | None:
        """Register a new connection; the reason it is refused, or None."""
        if self.per_address.get(address, 0) >= self.limits.max_per_address:
            return "per_address"
        if len(self) >= self.limits.max_connections:
            victim = self.eviction_candidate()
            if victim is None:
                return "limit"
            self.release(victim, victim.address)  # its slot is free now; counted when it is lost
            victim.close("evicted")
        self.waiting[connection] = None
        self.per_address[address] = self.per_address.get(address, 0) + 1
        self.accepted += 1
        return None

    def eviction_candidate(self) -> TcpProtocol | None:
        """The oldest connection that never completed a message, else the one idle longest."""
        for connections in (self.waiting, self.useful):
            if connections:
                return next(iter(connections))
        return None

    def completed_message(self, connection: TcpProtocol) -> None:
        """`connection` completed a message: it goes to the end of the useful ones."""
        if self._remove(connection):
            self.useful[connection] = None

    def release(self, connection: TcpProtocol, address: str) -> None:
        """`connection` leaves (closed, or evicted: its slot is free at once); counted once."""
        if self._remove(connection):
            left = self.per_address.get(address, 1) - 1
            if left > 0:
                self.per_address[address] = left
            else:
                self.per_address.pop(address, None)

    def _remove(self, connection: TcpProtocol) -> bool:
        """Take `connection` out of the eviction order; whether it was in it."""
        for connections in (self.waiting, self.useful):
            if connection in connections:
                del connections[connection]
                return True
        return False

    def close_all(self) -> None:
        for connection in [*self.waiting, *self.useful]:
            connection.close("shutdown")


class UdpProtocol(asyncio.DatagramProtocol):
    """Answers each datagram in turn; never raises out of datagram_received."""

    def __init__(self, state: ServerState, clients: ClientFactory) -> None:
        self.state = state
        self.factory = clients
        self.clients: BoundedCache[str, Client] = BoundedCache("clients")
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        client = self.clients.get(addr[0])
        if client is None:
            client = self.factory.from_text(addr[0])
            self.clients.put(addr[0], client, 100)
        started = perf_counter()
        state = self.state
        reply = answer(state, data, client, False, time.time())
        if reply is not None:
            self.transport.sendto(reply, addr)
            state.udp_latency.observe(perf_counter() - started)
        if state.tap is not None:
            state.tap.datagram(self.transport, addr, data, reply)

    def error_received(self, exc: Exception) -> None:  # ICMP errors and the like: not ours
        pass


class TcpProtocol(asyncio.Protocol):
    """One TCP connection: length-framed, pipelined, under the registry's limits."""

    def __init__(self, state: ServerState, registry: TcpRegistry) -> None:
        self.state = state
        self.registry = registry
        self.buffer = bytearray()
        self.transport: Any = None
        self.client: Client | None = None
        self.address = ""
        self.timer: asyncio.TimerHandle | None = None
        self.reason: str | None = None  # why we closed it, once we have (TCP_CLOSE_REASONS)
        self.tap_peer: Any = None  # both ends, encoded once by a dnstap tap

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        refused = self.registry.admit(self, self.address)
        if refused is not None:
            self.reason = refused
            self.state.tcp_closed[refused] += 1
            transport.abort()
            return
        self.state.tcp_connections += 1
        try:
            self.client = self.registry.clients.from_text(self.address)
        except ValueError:  # not an IP peer (cannot happen on our sockets): treat as exempt
            self.client = Client(self.address, 4, 0, b"", True)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self.registry.limits.idle_timeout, "idle_timeout")

    def _arm(self, seconds: float, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self.close, reason)

    def close(self, reason: str) -> None:
        """Close for `reason` (counted once, in connection_lost)."""
        if self.reason is None:
            self.reason = reason
        if self.transport is not None:
            self.transport.abort() if reason in ("evicted", "oversized") else self.transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        started_empty = not buffer
        buffer += data
        client = self.client
        assert client is not None
        answered = False
        state = self.state
        while len(buffer) >= 2:
            length = (buffer[0] << 8) | buffer[1]
            if len(buffer) < 2 + length:
                break
            message = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            answered = True
            started = perf_counter()
            reply = answer(state, message, client, True, time.time())
            if reply is not None:
                self.transport.write(len(reply).to_bytes(2, "big") + reply)
                state.tcp_latency.observe(perf_counter() - started)
            if state.tap is not None:
                state.tap.stream(self, message, reply)
        if len(buffer) > MAX_MESSAGE + 2:
            self.close("oversized")
            return
        limits = self.registry.limits
        if answered:
            self.registry.completed_message(self)
        if not buffer:
            if answered:
                self._arm(limits.idle_timeout, "idle_timeout")
        elif answered or started_empty:  # a new message began: it has message_timeout to arrive
            self._arm(limits.message_timeout, "slow_message")

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.client is not None:  # admitted
            self.state.tcp_connections -= 1
            self.registry.release(self, self.address)
            reason = self.reason or ("reset" if exc is not None else "client_closed")
            self.state.tcp_closed[reason] += 1
            self.client = None

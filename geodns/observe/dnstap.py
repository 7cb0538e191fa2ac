"""dnstap output: AUTH_QUERY and AUTH_RESPONSE messages of sampled queries, over Frame Streams.

dnstap is what BIND, Knot, NSD, Unbound, dnsdist and CoreDNS log queries in, so the tools
operators already run read geodns too: `dnstap-read` (bind9-dnsutils), `fstrm_capture`,
dnscollector, Vector's dnstap source. Each sampled query gives two messages, the query as it
arrived and the response as it left (none for a query that got no reply), with the peer's
address and port, our address and port, the transport and the time.

Off by default. The transports call a `DnstapTap` for every query only when one is configured;
it samples by counting down (the gap to the next sampled query is drawn from the geometric
distribution, which is exactly a coin toss per query at `sample_rate`, for the price of one
decrement per query), then encodes the protobuf by hand (two messages, ~2-4 us) and offers the
frames to a spool (geodns.observe.spool), which never blocks and drops and counts what does not
fit or has no reader.

The protobuf schema is dnstap.proto (public domain): Dnstap {identity 1, version 2, type 15 =
MESSAGE, message 14}, Message {type 1, socket_family 2, socket_protocol 3, query_address 4,
response_address 5, query_port 6, response_port 7, query_time_sec 8, query_time_nsec 9
(fixed32), query_message 10, response_time_sec 12, response_time_nsec 13 (fixed32),
response_message 14}.
"""

from __future__ import annotations

import math
import random
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from geodns import __version__
from geodns.config.server import DnstapConfig
from geodns.observe.framestream import SocketOutput, data_frame, file_footer, file_header
from geodns.observe.outputs import RotatingFile, worker_path
from geodns.observe.spool import Spool

CONTENT_TYPE = b"protobuf:dnstap.Dnstap"
AUTH_QUERY = 1
AUTH_RESPONSE = 2
FAMILY_INET = 1
FAMILY_INET6 = 2
PROTOCOL_UDP = 1
PROTOCOL_TCP = 2
NAME_BYTES = 28  # a sockaddr_in6; a sockaddr_in is 16


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def _bytes_field(field: int, value: bytes) -> bytes:
    return _key(field, 2) + varint(len(value)) + value


def _int_field(field: int, value: int) -> bytes:
    return _key(field, 0) + varint(value)


def _fixed32_field(field: int, value: int) -> bytes:
    return _key(field, 5) + struct.pack("<I", value)


class Peer:
    """Both ends of one query: family, protocol, addresses as bytes and ports, pre-encoded.

    The encoded part is the same for every message between the same two ends, so a connection
    (or a client seen again) encodes it once."""

    __slots__ = ("encoded",)

    def __init__(
        self,
        family: int,
        protocol: int,
        query_address: bytes,
        query_port: int,
        response_address: bytes,
        response_port: int,
    ) -> None:
        self.encoded = (
            _int_field(2, family)
            + _int_field(3, protocol)
            + _bytes_field(4, query_address)
            + _bytes_field(5, response_address)
            + _int_field(6, query_port)
            + _int_field(7, response_port)
        )


def peer_from_addresses(local: Any, remote: Any, protocol: int) -> Peer | None:
    """A Peer from two socket addresses as Python gives them ((host, port, ...) tuples)."""
    try:
        family = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
        return Peer(
            FAMILY_INET6 if family == socket.AF_INET6 else FAMILY_INET,
            protocol,
            socket.inet_pton(family, remote[0].split("%", 1)[0]),
            int(remote[1]),
            socket.inet_pton(family, local[0].split("%", 1)[0]),
            int(local[1]),
        )
    except (OSError, ValueError, TypeError, IndexError):
        return None


def encode_messages(
    identity: bytes, peer: Peer, query: bytes, response: bytes | None, when_ns: int
) -> bytes:
    """The Frame Streams data frames of one query: AUTH_QUERY, and AUTH_RESPONSE if answered."""
    seconds, nanoseconds = divmod(when_ns, 1_000_000_000)
    times = _int_field(8, seconds) + _fixed32_field(9, nanoseconds)
    message = _int_field(1, AUTH_QUERY) + peer.encoded + times + _bytes_field(10, query)
    frames = data_frame(identity + _bytes_field(14, message) + _TYPE_MESSAGE)
    if response is not None:
        message = (
            _int_field(1, AUTH_RESPONSE)
            + peer.encoded
            + times
            + _int_field(12, seconds)
            + _fixed32_field(13, nanoseconds)
            + _bytes_field(14, response)
        )
        frames += data_frame(identity + _bytes_field(14, message) + _TYPE_MESSAGE)
    return frames


_TYPE_MESSAGE = _int_field(15, 1)


class Sink(Protocol):
    """What a tap hands its frames to (geodns.observe.spool.Spool)."""

    def offer(self, chunk: bytes) -> None: ...


class DnstapTap:
    """Samples queries at the transports and offers their dnstap frames to a spool.

    Three entry points, one per transport, each called with what that transport has at hand;
    each starts with the countdown, so an unsampled query costs a call and a decrement:
      batched(listener, offset, query, response)  geodns.serving.udpbatch (peer in its names buffer)
      datagram(transport, address, query, response)  asyncio's UDP transport
      stream(transport, query, response)  a TCP connection
    """

    def __init__(
        self,
        sink: Sink,
        sample_rate: float = 1.0,
        identity: str = "",
        *,
        clock: Callable[[], int] = time.time_ns,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.sink = sink
        self.sample_rate = sample_rate
        self.clock = clock
        self.draw = draw
        self.identity = (_bytes_field(1, identity.encode()) if identity else b"") + _bytes_field(
            2, f"geodns {__version__}".encode()
        )
        self.sampled = 0
        self.countdown = self._gap()
        self._locals: dict[int, tuple[int, bytes, int]] = {}  # listener id -> our end
        self._peers: dict[tuple[int, bytes], Peer] = {}

    def _gap(self) -> int:
        """Queries until the next sampled one: geometric with mean 1 / sample_rate."""
        rate = self.sample_rate
        if rate >= 1.0:
            return 1
        if rate <= 0.0:
            return 1 << 62
        return 1 + int(math.log(1.0 - self.draw()) / math.log(1.0 - rate))

    def batched(self, listener: Any, offset: int, query: bytes, response: bytes | None) -> None:
        """A datagram of a batched UDP listener; its peer's sockaddr is in `listener.names`."""
        self.countdown -= 1
        if self.countdown > 0:
            return
        self.countdown = self._gap()
        name: bytes = listener.names[offset : offset + NAME_BYTES]
        key = (id(listener), name)
        peer = self._peers.get(key)
        if peer is None:
            peer = self._batched_peer(listener, name)
            if peer is None:
                return
            if len(self._peers) >= 4096:
                self._peers.clear()
            self._peers[key] = peer
        self._emit(peer, query, response)

    def _batched_peer(self, listener: Any, name: bytes) -> Peer | None:
        ours = self._locals.get(id(listener))
        if ours is None:
            local = listener.sock.getsockname()
            family = listener.sock.family
            ours = (
                FAMILY_INET6 if family == socket.AF_INET6 else FAMILY_INET,
                socket.inet_pton(family, local[0]),
                local[1],
            )
            self._locals[id(listener)] = ours
        family, local_address, local_port = ours
        port = int.from_bytes(name[2:4])
        address = name[4:8] if family == FAMILY_INET else name[8:24]
        return Peer(family, PROTOCOL_UDP, address, port, local_address, local_port)

    def datagram(self, transport: Any, address: Any, query: bytes, response: bytes | None) -> None:
        """A datagram of asyncio's UDP transport, from `address` (host, port, ...)."""
        self.countdown -= 1
        if self.countdown > 0:
            return
        self.countdown = self._gap()
        peer = peer_from_addresses(transport.get_extra_info("sockname"), address, PROTOCOL_UDP)
        if peer is not None:
            self._emit(peer, query, response)

    def stream(self, connection: Any, query: bytes, response: bytes | None) -> None:
        """A message of a TCP connection; `connection.tap_peer` caches its Peer."""
        self.countdown -= 1
        if self.countdown > 0:
            return
        self.countdown = self._gap()
        peer = getattr(connection, "tap_peer", None)
        if peer is None:
            transport = connection.transport
            peer = peer_from_addresses(
                transport.get_extra_info("sockname"),
                transport.get_extra_info("peername"),
                PROTOCOL_TCP,
            )
            if peer is None:
                return
            connection.tap_peer = peer
        self._emit(peer, query, response)

    def _emit(self, peer: Peer, query: bytes, response: bytes | None) -> None:
        self.sampled += 1
        self.sink.offer(encode_messages(self.identity, peer, query, response, self.clock()))


def open_dnstap(config: DnstapConfig, worker: int = 0) -> tuple[Spool, DnstapTap]:
    """The spool and the tap of a `dnstap:` config section (enabled), for process `worker`.

    A file is opened here, so a path that cannot be written stops the start; a socket is
    connected by the spool's thread, and a reader that is not there yet is tried again."""
    output: Any
    if config.socket:
        output = SocketOutput(config.socket, CONTENT_TYPE)
    else:
        assert config.file is not None
        output = RotatingFile(
            worker_path(Path(config.file), worker),
            config.max_bytes,
            config.backups,
            header=file_header(CONTENT_TYPE),
            footer=file_footer(),
        )
    spool = Spool(output, name="geodns-dnstap")
    identity = config.identity if config.identity is not None else socket.gethostname()
    return spool, DnstapTap(spool, config.sample_rate, identity)

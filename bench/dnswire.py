"""Queries and replies as bytes: what dnsperf reads (-B input) and what the answer checks parse.

Written by hand rather than with dnspython because the benchmark builds and reads millions of
messages of one simple shape, and a few struct calls do that in seconds.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

QTYPES = {"A": 1, "NS": 2, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33, "CAA": 257}
OPT = 41
ECS_OPTION = 8


def wire_name(name: str) -> bytes:
    """The uncompressed wire form of a dotted name."""
    labels = [label for label in name.rstrip(".").split(".") if label]
    return b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels) + b"\0"


def ecs_option(family: int, address: int, source: int, scope: int = 0) -> bytes:
    """An ECS option (RFC 7871 section 6), code and length included: FAMILY 1 (IPv4, `address`
    a 32-bit int) or 2 (IPv6, 128 bits), ADDRESS cut to the octets SOURCE PREFIX-LENGTH needs."""
    width = 4 if family == 1 else 16
    raw = address.to_bytes(width, "big")[: (source + 7) // 8]
    return struct.pack(">HHHBB", ECS_OPTION, 4 + len(raw), family, source, scope) + raw


def query(
    name: str,
    qtype: int,
    *,
    ident: int = 0,
    options: Sequence[bytes] | None = (),
    udp_size: int = 1232,
    do: bool = False,
) -> bytes:
    """A resolver-like query (RD=0): one question and, unless `options` is None, an OPT record
    (EDNS0, `udp_size`, DO=1 when `do`) carrying `options` (each a complete EDNS option, code
    and length included)."""
    arcount = 0 if options is None else 1
    message = struct.pack(">HHHHHH", ident, 0, 1, 0, 0, arcount)
    message += wire_name(name) + struct.pack(">HH", qtype, 1)
    if options is not None:
        rdata = b"".join(options)
        flags = 0x8000 if do else 0
        message += b"\0" + struct.pack(">HHIH", OPT, udp_size, flags, len(rdata)) + rdata
    return message


def query_wire(
    name: str, qtype: int, ecs: tuple[int, int] | None = None, ident: int = 0, do: bool = False
) -> bytes:
    """A resolver-like query: RD=0, EDNS0 (UDP 1232), optionally ECS for an IPv4 network given
    as (32-bit address, source prefix length), and DO=1 (DNSSEC OK) when `do`."""
    options = [] if ecs is None else [ecs_option(1, ecs[0], ecs[1])]
    return query(name, qtype, ident=ident, options=options, do=do)


def write_binary(path: Path, messages: Iterable[bytes]) -> int:
    """dnsperf -B input: each message after its 2-byte length (dnsperf rewrites the ID). Written
    whole or not at all (a temporary file renamed over `path`), so a file kept between runs is
    never half written."""
    count = 0
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        for message in messages:
            handle.write(struct.pack(">H", len(message)) + message)
            count += 1
    os.replace(temporary, path)
    return count


def skip_name(message: bytes, offset: int) -> int:
    """The offset after a (possibly compressed) name in a reply."""
    for _ in range(128):
        length = message[offset]
        if length == 0:
            return offset + 1
        if length >= 0xC0:
            return offset + 2
        offset += 1 + length
    raise ValueError("name too long")


@dataclass(frozen=True)
class GeoReply:
    """What the benchmark reads from a reply: the sorted A addresses of its answer section (or
    `rcode N` when it is not NOERROR) and the ECS scope prefix length (None without ECS)."""

    answer: tuple[str, ...] | str
    scope: int | None


def parse_reply(reply: bytes) -> GeoReply:
    flags, qdcount, ancount, nscount, arcount = struct.unpack_from(">HHHHH", reply, 2)
    offset = 12
    for _ in range(qdcount):
        offset = skip_name(reply, offset) + 4
    addresses: list[str] = []
    scope: int | None = None
    for index in range(ancount + nscount + arcount):
        offset = skip_name(reply, offset)
        rtype, _, _, length = struct.unpack_from(">HHIH", reply, offset)
        offset += 10
        if index < ancount and rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[offset : offset + 4]))
        elif rtype == OPT:
            scope = ecs_scope(reply[offset : offset + length])
        offset += length
    answer: tuple[str, ...] | str = tuple(sorted(addresses))
    if flags & 0xF:
        answer = f"rcode {flags & 0xF}"
    return GeoReply(answer, scope)


def ecs_scope(options: bytes) -> int | None:
    """The scope prefix length of the ECS option among an OPT record's options, if any."""
    offset = 0
    while offset + 4 <= len(options):
        code, length = struct.unpack_from(">HH", options, offset)
        if code == ECS_OPTION and length >= 4:
            return options[offset + 7]
        offset += 4 + length
    return None

"""DNS cookies (RFC 7873) with the interoperable server cookie of RFC 9018.

A client sends an 8-octet client cookie; the server answers with it and a server cookie:
version 1, three reserved octets, a 32-bit timestamp, and SipHash-2-4 of (client cookie,
version, reserved, timestamp, client address) under a 16-octet secret. A client that shows
that server cookie again proves it receives our answers at its address, so it cannot be a
spoofed source: response rate limiting lets it through (geodns.serving.rrl). Every server of a
fleet given the same secret (`cookies.secret_file`) accepts the others' cookies.

RFC 9018's rules kept here: a server cookie is valid for an hour from its timestamp (and up to
five minutes in the future, for clock skew); one older than half an hour is replaced by a
fresh one in the reply. An invalid server cookie is treated as if only the client cookie had
been sent (RFC 7873 section 5.2.3). Hashing costs ~10 us in Python, so validated cookies and
generated ones are memoised per (client, cookie) in a bounded table.

Time comes in as `now`.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

from geodns.common.caching import BoundedCache

VERSION = 1
LIFETIME = 3600
REFRESH_AFTER = 1800
FUTURE_SKEW = 300
SECRET_BYTES = 16
_MASK = 0xFFFFFFFFFFFFFFFF


class CookieCheck(NamedTuple):
    """What a query's COOKIE option amounts to."""

    reply: bytes  # the COOKIE option data to send back: client cookie + server cookie
    valid: bool  # the query carried a valid server cookie


class CookieJar:
    """Makes and checks server cookies under one secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret if secret is not None else os.urandom(SECRET_BYTES)
        if len(self.secret) != SECRET_BYTES:
            raise ValueError(f"a cookie secret is {SECRET_BYTES} octets")
        self.k0, self.k1 = struct.unpack("<QQ", self.secret)
        self.memo: BoundedCache[bytes, tuple[bytes, int, bool]] = BoundedCache("cookies")
        self.valid = 0
        self.invalid = 0
        self.new = 0

    def check(self, option: bytes, address: bytes, now: int) -> CookieCheck:
        """The cookie to answer with, for a query's COOKIE option from `address` (its packed
        IP address). `option` is 8 or 16-40 octets (the parser refused other lengths)."""
        key = address + option
        found = self.memo.get(key)
        if found is not None and now < found[1]:
            self.valid += found[2]
            return CookieCheck(found[0], found[2])
        client = option[:8]
        server = option[8:]
        valid = len(server) == 16 and self._valid(client, server, address, now)
        if valid:
            timestamp = struct.unpack_from(">I", server, 4)[0]
            fresh = now - timestamp < REFRESH_AFTER
            reply = option if fresh else client + self.server_cookie(client, address, now)
            until = timestamp + (REFRESH_AFTER if fresh else LIFETIME)
            self.valid += 1
        else:
            if server:
                self.invalid += 1
            reply = client + self.server_cookie(client, address, now)
            until = now + REFRESH_AFTER
            self.new += 1
        self.memo.put(key, (reply, until, valid), len(key) + len(reply))
        return CookieCheck(reply, valid)

    def server_cookie(self, client: bytes, address: bytes, now: int) -> bytes:
        head = struct.pack(">B3xI", VERSION, now & 0xFFFFFFFF)
        return head + siphash24(self.k0, self.k1, client + head + address)

    def _valid(self, client: bytes, server: bytes, address: bytes, now: int) -> bool:
        if server[0] != VERSION:
            return False
        timestamp = struct.unpack_from(">I", server, 4)[0]
        age = (now - timestamp) & 0xFFFFFFFF  # serial arithmetic: timestamps wrap in 2106
        if age >= LIFETIME and (timestamp - now) & 0xFFFFFFFF > FUTURE_SKEW:
            return False
        return siphash24(self.k0, self.k1, client + server[:8] + address) == server[8:]


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash24(k0: int, k1: int, data: bytes) -> bytes:
    """SipHash-2-4 (Aumasson and Bernstein) of `data` under the key (k0, k1), 8 octets,
    little-endian as RFC 9018's test vectors print it."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    length = len(data)
    tail = length & 7
    padded = (
        data[: length - tail] + data[length - tail :].ljust(7, b"\x00") + bytes((length & 0xFF,))
    )
    for (m,) in struct.iter_unpack("<Q", padded):
        v3 ^= m
        for _ in range(2):
            v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= m
    v2 ^= 0xFF
    for _ in range(4):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return struct.pack("<Q", v0 ^ v1 ^ v2 ^ v3)


def _round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3

"""The soak's packets: valid queries, the malformed and mutated ones, and the subnet walk.

Everything here is a pure function of its arguments (a `random.Random` is passed in), so the
soak is reproducible from its seed and the mutators can be tested without a server.

The mutations aim at the parsers' edges, and above all at the fast paths geodns keeps for the
common query (one question, an OPT record, one ECS option): a query cut short inside its ECS
option, a valid query with bytes after its end, two ECS options, a SCOPE PREFIX-LENGTH that is
not zero (RFC 7871 section 6: it MUST be zero in queries), an ADDRESS longer than its SOURCE
PREFIX-LENGTH needs, random bit flips and random lengths.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Callable, Iterable, Sequence

from .dnswire import ECS_OPTION, QTYPES, ecs_option, query

ECS_CODE = ECS_OPTION
QTYPE_A = QTYPES["A"]
QTYPE_AAAA = QTYPES["AAAA"]
QTYPE_TXT = QTYPES["TXT"]
FAMILY_V4 = 1
FAMILY_V6 = 2


def ecs_query(qname: str, family: int, address: int, source: int, *, ident: int = 0) -> bytes:
    """A valid geo query with one ECS option: A for an IPv4 subnet, AAAA for an IPv6 one."""
    qtype = QTYPE_A if family == FAMILY_V4 else QTYPE_AAAA
    return query(qname, qtype, ident=ident, options=[ecs_option(family, address, source)])


# ------------------------------------------------------------------------------------------------
# Mutators: each takes (rng, the geo name) and returns one datagram
# ------------------------------------------------------------------------------------------------


def _random_subnet(rng: random.Random) -> tuple[int, int, int]:
    """(family, address, source prefix): a /24 of a public-looking IPv4 block or a /56 in 2000::/3."""
    if rng.random() < 0.5:
        return FAMILY_V4, rng.randrange(1 << 24, 224 << 24) >> 8 << 8, 24
    return FAMILY_V6, (rng.randrange(1 << 53) | (1 << 53)) << 72, 56


def _valid_ecs(rng: random.Random, qname: str) -> bytes:
    family, address, source = _random_subnet(rng)
    return ecs_query(qname, family, address, source, ident=rng.randrange(1 << 16))


def ecs_cut(rng: random.Random, qname: str) -> bytes:
    """A valid ECS query cut short by 1 to 8 octets: the end of the ECS option is missing, so
    its OPTION-LENGTH and RDLENGTH promise octets that never come."""
    message = _valid_ecs(rng, qname)
    return message[: -rng.randint(1, 8)]


def ecs_padded(rng: random.Random, qname: str) -> bytes:
    """A valid ECS query with 1 to 16 random octets after its end (trailing junk)."""
    return _valid_ecs(rng, qname) + rng.randbytes(rng.randint(1, 16))


def ecs_two_options(rng: random.Random, qname: str) -> bytes:
    """Two well-formed ECS options in one OPT record (the same subnet or two different ones)."""
    family, address, source = _random_subnet(rng)
    first = ecs_option(family, address, source)
    if rng.random() < 0.5:
        second = first
    else:
        other_family, other_address, other_source = _random_subnet(rng)
        second = ecs_option(other_family, other_address, other_source)
    qtype = QTYPE_A if family == FAMILY_V4 else QTYPE_AAAA
    return query(qname, qtype, ident=rng.randrange(1 << 16), options=[first, second])


def ecs_scope_nonzero(rng: random.Random, qname: str) -> bytes:
    """A valid ECS query whose SCOPE PREFIX-LENGTH is not zero (RFC 7871 section 6: MUST be 0)."""
    family, address, source = _random_subnet(rng)
    option = ecs_option(family, address, source, scope=rng.randint(1, source))
    qtype = QTYPE_A if family == FAMILY_V4 else QTYPE_AAAA
    return query(qname, qtype, ident=rng.randrange(1 << 16), options=[option])


def ecs_bad_address(rng: random.Random, qname: str) -> bytes:
    """An ECS option whose ADDRESS disagrees with SOURCE PREFIX-LENGTH: more octets than the
    prefix needs, bits set beyond the prefix, a prefix longer than the family allows, or an
    unknown FAMILY (RFC 7871 section 6 and 7.2.1: FORMERR)."""
    family, address, source = _random_subnet(rng)
    width = 4 if family == FAMILY_V4 else 16
    raw = address.to_bytes(width, "big")
    how = rng.randrange(4)
    if how == 0:  # every octet of the address, whatever the prefix needs
        body = struct.pack(">HBB", family, source, 0) + raw
    elif how == 1:  # a bit set beyond the prefix
        needed = bytearray(raw[: (source + 7) // 8])
        needed[-1] |= 1
        body = struct.pack(">HBB", family, source - 1, 0) + bytes(needed)
    elif how == 2:  # a prefix longer than the address family has bits
        body = struct.pack(">HBB", family, rng.randint(width * 8 + 1, 255), 0) + raw
    else:  # an unknown family
        body = struct.pack(">HBB", rng.randint(3, 0xFFFF), source, 0) + raw[: (source + 7) // 8]
    option = struct.pack(">HH", ECS_CODE, len(body)) + body
    return query(qname, QTYPE_A, ident=rng.randrange(1 << 16), options=[option])


def _any_valid(rng: random.Random, qname: str) -> bytes:
    """A valid query of one of the shapes the server answers: ECS, plain EDNS, no EDNS."""
    shape = rng.randrange(3)
    if shape == 0:
        return _valid_ecs(rng, qname)
    qtype = rng.choice((QTYPE_A, QTYPE_AAAA, QTYPE_TXT))
    return query(qname, qtype, ident=rng.randrange(1 << 16), options=() if shape == 1 else None)


def bit_flips(rng: random.Random, qname: str) -> bytes:
    """A valid query with 1 to 8 random bits flipped (anywhere: header, name, OPT, ECS)."""
    message = bytearray(_any_valid(rng, qname))
    for _ in range(rng.randint(1, 8)):
        bit = rng.randrange(len(message) * 8)
        message[bit // 8] ^= 1 << (bit % 8)
    return bytes(message)


def random_length(rng: random.Random, qname: str) -> bytes:
    """A valid query cut to, or padded with random octets to, a random length (0 to 600)."""
    message = _any_valid(rng, qname)
    length = rng.randint(0, 600)
    if length <= len(message):
        return message[:length]
    return message + rng.randbytes(length - len(message))


def random_bytes(rng: random.Random, qname: str) -> bytes:
    """Random octets of a random length (1 to 600): no structure at all."""
    del qname
    return rng.randbytes(rng.randint(1, 600))


Mutator = Callable[[random.Random, str], bytes]

MUTATORS: dict[str, Mutator] = {
    "ecs_cut": ecs_cut,
    "ecs_padded": ecs_padded,
    "ecs_two_options": ecs_two_options,
    "ecs_scope_nonzero": ecs_scope_nonzero,
    "ecs_bad_address": ecs_bad_address,
    "bit_flips": bit_flips,
    "random_length": random_length,
    "random_bytes": random_bytes,
}
"""Every kind of bad packet the soak sends, by name (each kind has its own socket, so replies
are counted per kind)."""

RFC_FORMERR_KINDS = ("ecs_two_options", "ecs_scope_nonzero", "ecs_bad_address")
"""Kinds RFC 7871 says must get FORMERR (sections 6 and 7.2.1; two options: 7.1.1 asks a
resolver to send at most one, and an authority cannot tell which one to use)."""


# ------------------------------------------------------------------------------------------------
# Replies: what the soak reads of them without a full parser
# ------------------------------------------------------------------------------------------------

RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def reply_rcode(reply: bytes) -> str:
    """The header's RCODE of a reply (the 4 low bits: without EDNS's extended bits), by name;
    'short' when the reply is shorter than a header."""
    if len(reply) < 12:
        return "short"
    code = reply[3] & 0x0F
    return RCODE_NAMES.get(code, f"RCODE{code}")


def reply_truncated(reply: bytes) -> bool:
    return len(reply) >= 12 and bool(reply[2] & 0x02)


# ------------------------------------------------------------------------------------------------
# The walk: millions of distinct client subnets, each inside a network of the database
# ------------------------------------------------------------------------------------------------


def walk_subnets(
    networks: Sequence[tuple[int, int]], count: int, block: int, width: int
) -> list[int]:
    """`count` distinct subnets of prefix length `block` (addresses as ints of `width` bits),
    taken round-robin from `networks` ((start, prefix) pairs that do not overlap): the first
    block of every network, then the second block of every network that has one, and so on.

    Every network is visited before any is visited twice, so the walk meets as many database
    records as it can; the subnets are distinct because the networks do not overlap and each
    network's blocks are taken in order. Raises ValueError when the networks hold fewer blocks.
    """
    if count <= 0:
        return []
    shift = width - block
    sizes = [1 << max(0, block - prefix) for _, prefix in networks]
    starts = [start >> shift << shift for start, _ in networks]
    out: list[int] = []
    round_ = 0
    active = list(range(len(networks)))
    while len(out) < count and active:
        still = []
        for index in active:
            if round_ < sizes[index]:
                out.append(starts[index] + (round_ << shift))
                if len(out) == count:
                    return out
                if round_ + 1 < sizes[index]:
                    still.append(index)
        active = still
        round_ += 1
    if len(out) < count:
        raise ValueError(f"the networks hold only {len(out)} /{block} subnets, {count} asked")
    return out


def database_networks(
    entries: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, object]],
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(IPv4, IPv6) networks with a record, from a maxminddb reader's iteration. IPv6 is kept to
    the global unicast 2000::/3, so the IPv4-mapped and 6to4 aliases of IPv4 are not walked."""
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for network, record in entries:
        if record is None:
            continue
        start = int(network.network_address)
        if network.version == 4:
            v4.append((start, network.prefixlen))
        elif start >> 125 == 1 and network.prefixlen >= 3:  # 2000::/3
            v6.append((start, network.prefixlen))
    return v4, v6


def interleave(v4: Sequence[int], v6: Sequence[int]) -> list[tuple[int, int]]:
    """(family, subnet) pairs, IPv4 and IPv6 spread evenly through the sequence."""
    total = len(v4) + len(v6)
    out: list[tuple[int, int]] = []
    i4 = i6 = 0
    for n in range(total):
        # take IPv4 while its share of what has been taken is behind its share of the whole
        if i6 >= len(v6) or (i4 < len(v4) and i4 * total <= n * len(v4)):
            out.append((FAMILY_V4, v4[i4]))
            i4 += 1
        else:
            out.append((FAMILY_V6, v6[i6]))
            i6 += 1
    return out

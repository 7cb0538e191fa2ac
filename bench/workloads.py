"""The client networks and the dnsperf input files of every workload.

dnsperf reads binary input (-B: length-prefixed wire messages) because its -E would give every
query the same ECS option. Subnets are /24s drawn from a database's own IPv4 networks, a network
uniformly at a time, so small networks are as likely as big ones:

- warm: a few thousand distinct subnets, asked over and over (caches hold every one);
- cold: a million more, each asked once per pass, so no cache can hide the geo path;
- cold latency: never-seen subnets again, one share per latency attempt;
- static: a mix of names and types every server answers the same way;
- big zone: queries spread over the names of the zone of many nearest-PoP names.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from .common import BIG_ZONE, GEO_NAME, ZONE, Profile
from .dnswire import QTYPES, query_wire, write_binary

STATIC_MIX = (  # (name, type): every static kind of answer both servers give
    (ZONE, "SOA"),
    (ZONE, "NS"),
    (ZONE, "MX"),
    (ZONE, "TXT"),
    (ZONE, "CAA"),
    (f"mx1.{ZONE}", "A"),
    (f"mx1.{ZONE}", "AAAA"),  # NODATA
    (f"ns1.{ZONE}", "AAAA"),
    (f"ns2.{ZONE}", "A"),
    (f"_imap._tcp.{ZONE}", "SRV"),
    (f"nothing-here.{ZONE}", "A"),  # NXDOMAIN
)
STATIC_REPEAT = 200


def draw_subnets(
    networks: list[tuple[int, int]], count: int, rng: random.Random, exclude: set[int]
) -> list[int]:
    """`count` distinct /24s (as 32-bit ints) not in `exclude`, each inside a network drawn
    uniformly from `networks` ((start, prefix length) pairs), so small networks are as likely as
    big ones. A network longer than /24 gives the /24 it lies in."""
    chosen: list[int] = []
    seen = set(exclude)
    attempts = 0
    while len(chosen) < count and attempts < count * 20:
        attempts += 1
        start, prefix = networks[rng.randrange(len(networks))]
        blocks = 1 << max(0, 24 - prefix)
        subnet = (start >> 8 << 8) + (rng.randrange(blocks) << 8)
        if subnet not in seen:
            seen.add(subnet)
            chosen.append(subnet)
    if len(chosen) < count:
        raise RuntimeError(f"could draw only {len(chosen)} distinct /24s of {count}")
    return chosen


def split_shares(items: list[int], parts: int) -> list[list[int]]:
    """`parts` equal, disjoint consecutive shares of `items` (the remainder left out)."""
    share = len(items) // max(1, parts)
    return [items[i * share : (i + 1) * share] for i in range(parts)]


def geo_queries(subnets: list[int], name: str = GEO_NAME) -> list[bytes]:
    return [query_wire(name, QTYPES["A"], (subnet, 24)) for subnet in subnets]


def static_queries() -> list[bytes]:
    return [query_wire(name, QTYPES[rtype]) for name, rtype in STATIC_MIX] * STATIC_REPEAT


def big_zone_name(index: int) -> str:
    return f"n{index}.{BIG_ZONE}"


def big_zone_queries(names: int, subnets: list[int]) -> list[bytes]:
    """One query per subnet, for the names of the big zone in turn (every name is asked when
    there are at least as many subnets as names)."""
    return [
        query_wire(big_zone_name(i % names), QTYPES["A"], (subnet, 24))
        for i, subnet in enumerate(subnets)
    ]


@dataclass(frozen=True)
class Workloads:
    """The subnets of one database's workloads and the dnsperf files written from them."""

    warm: list[int]
    cold: list[int]
    cold_latency: list[list[int]]  # one never-seen share per latency attempt
    files: dict[str, Path] = field(default_factory=dict)

    def block_networks(self, count: int) -> list[int]:
        """The cold client networks a resolver asks for in the cache-block count."""
        return self.cold[:count]

    def latency_files(self, workload: str) -> list[Path]:
        if workload == "cold":
            return [self.files[f"cold-latency-{i}"] for i in range(len(self.cold_latency))]
        return [self.files[workload]]


def build(
    networks: list[tuple[int, int]], profile: Profile, out: Path, tag: str, seed: int = 6
) -> Workloads:
    """Draw the subnets from a database's IPv4 `networks` and write the dnsperf files into
    `out` (named after `tag`, the database)."""
    rng = random.Random(seed)
    warm = draw_subnets(networks, profile.warm_subnets, rng, set())
    cold = draw_subnets(networks, profile.cold_subnets, rng, set(warm))
    never_seen = draw_subnets(networks, profile.cold_latency_subnets, rng, set(warm) | set(cold))
    shares = split_shares(never_seen, profile.latency_attempts)
    loads = Workloads(warm, cold, shares)
    parts: list[tuple[str, list[bytes]]] = [
        ("warm", geo_queries(warm)),
        ("cold", geo_queries(cold)),
        ("static", static_queries()),
        ("big-zone", big_zone_queries(profile.big_zone_names, warm)),
    ]
    parts += [(f"cold-latency-{i}", geo_queries(share)) for i, share in enumerate(shares)]
    for name, messages in parts:
        path = out / f"queries-{tag}-{name}.bin"
        write_binary(path, messages)
        loads.files[name] = path
    return loads

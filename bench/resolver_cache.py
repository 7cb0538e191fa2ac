"""How kind a server's ECS scopes are to resolvers' caches.

A resolver with an ECS cache (RFC 7871, section 7.3) keeps one entry per answer and scope: an
answer with scope /S serves every client inside that /S block. Asked for many client networks
one after another, it asks the server only for a network no cached block covers. The number of
blocks it ends up holding is how often it had to ask: the fewer, the better for its users, and
the narrower the scopes a server returns, the more blocks. A scope longer than the query's
source prefix is cached for the source prefix alone (RFC 7871 7.3.1), so it counts as /24 here.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .dnswire import GeoReply

SOURCE_PREFIX = 24  # every benchmark query carries a /24 client subnet


def block_of(subnet: int, scope: int, source: int = SOURCE_PREFIX) -> tuple[int, int]:
    """The IPv4 block (start, prefix length) an answer with `scope` covers for `subnet`."""
    prefix = min(scope, source)
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF if prefix else 0
    return subnet & mask, prefix


@dataclass(frozen=True)
class CacheBlocks:
    """What a resolver's cache holds after asking for each client network once, in order."""

    networks: int  # client networks asked for
    blocks: int  # entries the cache holds: times the resolver had to ask the server
    from_cache: int  # networks answered by an entry made for an earlier network
    wrong_from_cache: int  # ... whose cached answer is not the one the server gives them
    unanswered: int  # networks the server gave no usable reply for (each counted as a block)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_blocks(networks: Sequence[int], replies: Mapping[int, GeoReply]) -> CacheBlocks:
    """Replay `networks` (/24 starts) through an ECS cache filled from `replies` (the server's
    reply for each network, asked alone). A cached block that covers the next network answers it;
    otherwise the server's reply for it makes a new block. A cached answer that differs from the
    network's own would be a wrong answer given out by the resolver: a scope wider than true."""
    cache: dict[tuple[int, int], tuple[str, ...] | str] = {}
    blocks = from_cache = wrong = unanswered = 0
    for subnet in networks:
        reply = replies.get(subnet)
        cached = None
        for prefix in range(SOURCE_PREFIX + 1):
            cached = cache.get(block_of(subnet, prefix))
            if cached is not None:
                break
        if cached is not None:
            from_cache += 1
            if reply is not None and reply.answer != cached:
                wrong += 1
            continue
        blocks += 1
        if reply is None or reply.scope is None or isinstance(reply.answer, str):
            unanswered += 1
            continue
        cache[block_of(subnet, reply.scope)] = reply.answer
    return CacheBlocks(len(networks), blocks, from_cache, wrong, unanswered)


def median_scope(subnets: Sequence[int], replies: Mapping[int, GeoReply]) -> float | None:
    """The median ECS scope prefix length the server returned for these subnets."""
    scopes = [
        reply.scope
        for subnet in subnets
        if (reply := replies.get(subnet)) is not None and reply.scope is not None
    ]
    return statistics.median(scopes) if scopes else None


def scope_histogram(replies: Mapping[int, GeoReply]) -> dict[int, int]:
    """How many replies carried each scope prefix length."""
    out: dict[int, int] = {}
    for reply in replies.values():
        if reply.scope is not None:
            out[reply.scope] = out.get(reply.scope, 0) + 1
    return dict(sorted(out.items()))


def kindness(
    warm: Sequence[int], cold: Sequence[int], replies: Mapping[int, GeoReply]
) -> dict[str, object]:
    """The report's figures for one server: median scope over the warm subnets, and the cache
    blocks needed for the warm pool and for the cold client networks."""
    return {
        "median_scope_warm": median_scope(warm, replies),
        "blocks_warm": count_blocks(warm, replies).as_dict(),
        "blocks_cold": count_blocks(cold, replies).as_dict(),
        "scopes_warm": scope_histogram({s: replies[s] for s in warm if s in replies}),
    }

"""The answer engine: a parsed query + where it came from + a snapshot -> response bytes.

Pure apart from caches derived from the snapshot: no sockets, no clock, no logging. The common
query costs a dictionary look-up of its pre-encoded answer and a header patch; only a name never
seen before in this snapshot goes through the resolver (geodns.dns.resolve), and only a dynamic answer
consults the client's location and the health view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from struct import pack
from typing import Any, NamedTuple

from geodns.common.caching import make_room
from geodns.config.loader import load_zones
from geodns.config.server import ServerConfig
from geodns.dns.resolve import (
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    Prepared,
    Resolver,
    Sections,
    split_wire,
)
from geodns.dns.wire import Query
from geodns.dns.zone import TYPE_AXFR, TYPE_IXFR, Zone
from geodns.geo.compile import DynamicCompilerForSites
from geodns.geo.locator import GeoLocator
from geodns.serving.subnet_templates import SubnetTemplates

CLASS_IN = 1
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
ECHO_FLAGS = 0x7900  # opcode and RD are echoed
FLAG_CD = 0x0010
BADVERS = 16
CACHE_LIMIT = 200_000
RESPONSE_CACHE_LIMIT = 65_536
NOTHING_DOWN: frozenset[str] = frozenset()
# sightings: one tag byte per slot of a table indexed by the query's hash; a query is seen
# again when its slot still holds its tag (a one-in-255 chance of a false "again" only
# keeps a reply one sighting early)
SIGHTING_BITS = 17
SIGHTING_SLOTS = 1 << SIGHTING_BITS


class Outcome(NamedTuple):
    """What the engine decided for one query, for metrics and the query log.

    A NamedTuple because one is made per dynamic answer: it must cost next to nothing.
    """

    rcode: int
    zone: str | None
    site: str | None = None
    rule: str | None = None
    scope: int | None = None
    located_by: str | None = None
    truncated: bool = False
    # the same query bytes always get the same reply under this snapshot: not located by the
    # resolver's address, not chosen by weight with the query ID
    cacheable: bool = False


class Asked(NamedTuple):
    """What observers (metrics, query log) read of a query, kept with a cached reply.

    A tuple of plain values rather than the Query: the collector stops tracking such tuples,
    so thousands of cached replies cost it nothing.
    """

    qname: bytes
    qtype: int
    ecs: tuple[int, int, bytes] | None
    features: int  # what the query carried: EDNS, DO, ECS (geodns.dns.wire.FEATURE_*)


def asked_of(query: Query) -> Asked:
    return Asked(query.qname, query.qtype, query.ecs, query.features)


@dataclass(eq=False)
class Snapshot:
    """Everything a query reads: zones, the geo locator, sites, health. Replaced whole on reload.

    `health` is swapped by `with_health`, which keeps the zone caches: answers are encoded per
    decision, so a health change only changes which pre-encoded variant is picked.
    """

    zones: dict[str, Zone]
    max_udp_size: int = 1232
    geo: Any = None
    health: Any = None
    sites: dict[str, Any] = field(default_factory=dict)
    generation: int = 0
    resolver: Resolver = field(init=False)
    cache: dict[tuple[bytes, int], Prepared] = field(init=False, default_factory=dict)
    # whole UDP replies by query bytes after the ID: (reply after the ID, query, outcome, the
    # metrics counter slot: geodns.observe.metrics.QueryCounters.slot, -1 when nothing counts).
    # Health-dependent, so a new health view starts empty (init=False: replace() makes a new one)
    responses: dict[bytes, tuple[bytes, Asked, Outcome, int]] = field(
        init=False, default_factory=dict
    )
    # query bytes seen once: a reply is kept from their second sighting, so the one-off queries
    # of a cold workload (a new client subnet each) cost a byte here rather than a cached reply
    sighted: bytearray = field(init=False, default_factory=lambda: bytearray(SIGHTING_SLOTS))
    # replies to reuse for queries that differ only in their ECS address (health-dependent too)
    templates: SubnetTemplates = field(init=False, default_factory=SubnetTemplates)

    def __post_init__(self) -> None:
        self.resolver = Resolver(self.zones)

    @property
    def down(self) -> frozenset[str]:
        """The sites and addresses the health view has out of rotation."""
        return self.health.down if self.health is not None else NOTHING_DOWN

    def with_health(self, health: Any) -> Snapshot:
        clone = replace(self, health=health)
        clone.cache = self.cache
        return clone

    def remember(
        self,
        key: bytes,
        response: bytes,
        asked: Asked,
        outcome: Outcome,
        slot_of: Callable[[Asked, Outcome, int], int] | None = None,
    ) -> None:
        """Keep a cacheable UDP reply so the same query bytes are answered by patching the ID.

        Only from the second time the bytes are seen: most one-off queries never come back.
        A sighting is a tag byte in a fixed table (no key kept, nothing to evict); it is
        forgotten when another query's hash takes its slot, typically after about a hundred
        thousand others.
        """
        hashed = hash(key)  # computed once per bytes object, by the reply cache's look-up
        at = hashed & (SIGHTING_SLOTS - 1)
        tag = (hashed >> SIGHTING_BITS) % 255 + 1  # never 0, which is an empty slot
        sighted = self.sighted
        if sighted[at] != tag:
            sighted[at] = tag
            return
        responses = self.responses
        make_room(responses, RESPONSE_CACHE_LIMIT)
        slot = slot_of(asked, outcome, len(response)) if slot_of is not None else -1
        responses[key] = (response[2:], asked, outcome, slot)

    def from_template(self, data: bytes) -> tuple[bytes, Asked, Outcome] | None:
        """The reply to a UDP query that differs from one answered before only in its ECS
        address (geodns.serving.subnet_templates), or None."""
        found = self.templates.answer(data, self.geo, self.down)
        if found is None:
            return None
        reply, template, ecs, outcome = found
        return reply, Asked(template.qname, template.qtype, ecs, template.features), outcome

    def learn_template(self, data: bytes, query: Query, response: bytes, outcome: Outcome) -> None:
        """Offer a fully answered UDP query to the templates."""
        prepared = self.cache.get((query.key, query.qtype))
        if prepared is not None:
            self.templates.learn(data, query, response, outcome, prepared, self.geo, self.down)

    def prepared(self, key: bytes, qtype: int) -> Prepared:
        cache_key = (key, qtype)
        prepared = self.cache.get(cache_key)
        if prepared is None:
            prepared = self.resolver.resolve(split_wire(key), qtype)
            make_room(self.cache, CACHE_LIMIT)
            self.cache[cache_key] = prepared
        return prepared


def respond(query: Query, client: str, snapshot: Snapshot, tcp: bool) -> tuple[bytes, Outcome]:
    """The response to a parsed query from `client` (an IP string), over UDP or TCP."""
    if query.opcode != 0:
        # header only: the sections of an opcode we do not implement (UPDATE's zone section,
        # NOTIFY's SOA) have their own rules, so echoing them back could itself be malformed
        return _bare(query, RCODE_NOTIMP, snapshot, question=False), Outcome(RCODE_NOTIMP, None)
    if query.edns and query.version > 0:
        return _bare(query, BADVERS, snapshot), Outcome(BADVERS, None)
    qtype = query.qtype
    if query.qclass != CLASS_IN or qtype in (TYPE_AXFR, TYPE_IXFR):
        return _bare(query, RCODE_REFUSED, snapshot), Outcome(RCODE_REFUSED, None)
    prepared = snapshot.prepared(query.key, qtype)
    scope = 0
    outcome = None
    if prepared.dynamic is None:
        sections = prepared.full
    else:
        decision, scope, located_by = prepared.dynamic.decide(query, client, snapshot)
        if decision.servfail:
            return _bare(query, RCODE_SERVFAIL, snapshot), Outcome(RCODE_SERVFAIL, prepared.zone)
        sections = prepared.variant(decision.addresses)
        ecs = query.ecs
        if ecs is None or not ecs[1]:
            scope = 0
        outcome = decision
    if query.edns:
        udp_limit = min(max(query.udp_size, 512), snapshot.max_udp_size)
        opt = _opt(query, 0, scope, snapshot.max_udp_size)
    else:
        udp_limit = 512
        opt = b""
    limit = 65535 if tcp else udp_limit
    flags = FLAG_QR | (query.flags & (ECHO_FLAGS | FLAG_CD)) | prepared.rcode
    if prepared.authoritative:
        flags |= FLAG_AA
    extra = 1 if opt else 0
    size = 12 + len(query.question) + len(sections.body) + len(opt)
    truncated = False
    if size > limit:
        reduced = prepared.reduced if prepared.dynamic is None else sections
        if (
            not prepared.referral
            and 12 + len(query.question) + len(reduced.body) + len(opt) <= limit
        ):
            sections = reduced
        else:
            sections = _EMPTY_SECTIONS
            flags |= FLAG_TC
            truncated = True
    header = pack(
        ">HHHHHH",
        query.id,
        flags,
        1,
        sections.ancount,
        sections.nscount,
        sections.arcount + extra,
    )
    response = header + query.question + sections.body + opt
    if outcome is None:
        return response, _outcome(prepared, truncated)
    return response, Outcome(
        prepared.rcode,
        prepared.zone,
        site=outcome.site,
        rule=outcome.rule,
        scope=scope if query.ecs is not None else None,
        located_by=located_by,
        truncated=truncated,
        cacheable=located_by == "ecs" and not outcome.varies,
    )


_EMPTY_SECTIONS = Sections(b"", 0, 0, 0)
_OUTCOMES: dict[tuple[int, str | None, bool], Outcome] = {}


def _outcome(prepared: Prepared, truncated: bool) -> Outcome:
    key = (prepared.rcode, prepared.zone, truncated)
    outcome = _OUTCOMES.get(key)
    if outcome is None:
        outcome = _OUTCOMES[key] = Outcome(
            prepared.rcode, prepared.zone, truncated=truncated, cacheable=True
        )
    return outcome


def _opt(query: Query, extended_rcode: int, scope: int, udp_size: int) -> bytes:
    """Our OPT record: our UDP size, DO copied (RFC 3225), ECS echoed with its scope."""
    ttl = (extended_rcode << 24) | (0x8000 if query.do else 0)
    ecs = query.ecs
    if ecs is None:
        return pack(">BHHIH", 0, 41, udp_size, ttl, 0)
    family, source, address = ecs
    option = pack(">HHHBB", 8, 4 + len(address), family, source, scope) + address
    return pack(">BHHIH", 0, 41, udp_size, ttl, len(option)) + option


def _bare(query: Query, rcode: int, snapshot: Snapshot, question: bool = True) -> bytes:
    """A reply with no records (NOTIMP, REFUSED, BADVERS, SERVFAIL): the question echoed unless
    told not to, and an OPT when the query had one (RFC 6891 section 7 requires it)."""
    flags = FLAG_QR | (query.flags & (ECHO_FLAGS | FLAG_CD)) | (rcode & 0xF)
    opt = _opt(query, rcode >> 4, 0, snapshot.max_udp_size) if query.edns else b""
    header = pack(">HHHHHH", query.id, flags, int(question), 0, 0, 1 if opt else 0)
    return header + (query.question if question else b"") + opt


def servfail(query: Query, snapshot: Snapshot) -> bytes:
    return _bare(query, RCODE_SERVFAIL, snapshot)


def formerr(query_id: int, flags: int) -> bytes:
    """FORMERR for a query we could not parse: ID, opcode and RD echoed, nothing else."""
    return pack(">HHHHHH", query_id, FLAG_QR | (flags & ECHO_FLAGS) | RCODE_FORMERR, 0, 0, 0, 0)


def build_snapshot(
    config: ServerConfig, geo: GeoLocator | None, health: Any = None, generation: int = 0
) -> Snapshot:
    """Zones + geo + health -> a new immutable Snapshot ready to be swapped in.

    The snapshot's sites are the config's plus one per value probed by an octoDNS
    `healthcheck`, so the health monitor can check those too.
    """
    compiler = DynamicCompilerForSites(config.sites)
    zones = load_zones(config, compiler)
    return Snapshot(
        zones=zones,
        max_udp_size=config.max_udp_size,
        geo=geo,
        health=health,
        sites={**config.sites, **compiler.implicit_sites},
        generation=generation,
    )

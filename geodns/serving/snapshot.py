"""The snapshot: everything a query reads, replaced whole by a reload or a health change.

A snapshot is zones + geography + the health view + the answer maps of that view, plus the
caches derived from them (geodns.common.caching's table says which). The answer path reads the
one snapshot the server state points at; a reload, a new database index or a health change
builds the next snapshot beside it (the expensive parts in a thread) and swaps one reference,
so a query sees either the old world or the new one, never a mix.

What survives a swap: the prepared answers (per zone set) and the answer maps whose inputs did
not change (a shape none of whose sites changed state keeps its map). Everything health- or
geography-dependent (replies, templates, place decisions) starts empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from geodns.common.caching import BoundedCache, collector_paused
from geodns.config.loader import ZoneBlocks, load_zones
from geodns.config.server import ServerConfig
from geodns.dns.resolve import Prepared, Resolver
from geodns.dns.zone import RRset, Zone, changed_names
from geodns.geo.answers import AnswerMap, Shape, build_map, shape_of
from geodns.geo.compile import DynamicCompilerForSites
from geodns.geo.dynamic import Decision, DynamicRecord
from geodns.geo.locator import Geo
from geodns.geo.places import Place
from geodns.geo.sites import Site
from geodns.serving.templates import Templates

if TYPE_CHECKING:
    from geodns.dnssec.signer import SignedZone
    from geodns.serving.engine import Outcome

SIGHTING_BITS = 17
SIGHTING_SLOTS = 1 << SIGHTING_BITS  # tag bytes noting query bytes seen once (answer_path)
SIGHTING_MASK = SIGHTING_SLOTS - 1
SIGNED = 1 << 16  # added to the type in the prepared cache's key: the signed twin (DO=1)


class Asked:
    """What observers read of a query whose reply came from a cache: a few plain values."""

    __slots__ = ("qname", "qtype", "ecs", "features")

    def __init__(
        self, qname: bytes, qtype: int, ecs: tuple[int, int, bytes] | None, features: int
    ) -> None:
        self.qname, self.qtype, self.ecs, self.features = qname, qtype, ecs, features


class CachedReply:
    """A reply in the reply cache: its bytes after the ID and what counting and RRL need.

    A repeat is counted by one increment of its counter slot; what was asked is kept only for
    a reply without a slot (the query log is on: observers read every query). It would
    otherwise be about a third of the entry (its Asked, ECS tuple and address: 160 of 520
    bytes), read by nothing."""

    __slots__ = ("body", "asked", "outcome", "slot")

    def __init__(self, body: bytes, asked: Asked, outcome: Outcome, slot: int) -> None:
        self.body, self.outcome, self.slot = body, outcome, slot
        self.asked: Asked | None = asked if slot < 0 else None


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One consistent world: read by every query, never changed (its caches only fill)."""

    zones: Mapping[str, Zone]
    geo: Geo | None = None
    down: frozenset[str] = frozenset()
    max_udp_size: int = 1232
    sites: Mapping[str, Site] = field(default_factory=dict)
    generation: int = 0
    shapes: Mapping[DynamicRecord, Shape] = field(default_factory=dict)
    maps: Mapping[Shape, AnswerMap] = field(default_factory=dict)
    signed: Mapping[str, SignedZone] = field(default_factory=dict)  # DNSSEC, by zone origin
    blocks: ZoneBlocks = field(default_factory=ZoneBlocks)  # the zone files' (for a reload)
    resolver: Resolver = field(init=False)
    prepared: BoundedCache[tuple[bytes, int], Prepared] = field(init=False)
    # health- and geography-dependent caches: new with every snapshot
    replies: BoundedCache[bytes, CachedReply] = field(init=False)
    sightings: bytearray = field(init=False)
    templates: Templates = field(init=False)
    place_decisions: BoundedCache[tuple[DynamicRecord, Place], Decision] = field(init=False)

    def __post_init__(self) -> None:
        served = {**self.zones, **{o: z.zone for o, z in self.signed.items()}}
        object.__setattr__(self, "resolver", Resolver(served, self.signed))
        object.__setattr__(self, "prepared", BoundedCache("prepared"))
        self._fresh_caches()

    def _fresh_caches(self) -> None:
        object.__setattr__(self, "replies", BoundedCache("replies"))
        object.__setattr__(self, "sightings", bytearray(SIGHTING_SLOTS))
        object.__setattr__(self, "templates", Templates())
        object.__setattr__(self, "place_decisions", BoundedCache("place_decisions"))

    def maps_pending(self) -> int:
        """Record shapes decided per place while their answer map is built (0 without a place
        index: then every record is decided per place, and nothing is pending)."""
        if self.geo is None or self.geo.index is None:
            return 0
        return len(set(self.shapes.values()) - set(self.maps))

    def caches(self) -> tuple[BoundedCache[Any, Any], ...]:
        return (self.prepared, self.replies, self.templates.templates, self.place_decisions)

    def answer_map(self, record: DynamicRecord) -> AnswerMap | None:
        """The record's answer map, by way of its shape (two look-ups by identity, on the full
        path only: a join of records to maps per snapshot cost every reload and health change
        a pass over every record, 0.9 ms for 10,000 once traffic has cooled them in the CPU's
        caches)."""
        shape = self.shapes.get(record)
        return self.maps.get(shape) if shape is not None else None

    def prepare(self, key: bytes, qtype: int, dnssec: bool = False) -> Prepared:
        """The resolved, encoded answer for a (lower-case wire name, type), cached; with
        `dnssec` (DO=1) and signed zones, the signed twin (RRSIGs, NSEC proofs)."""
        signed = dnssec and bool(self.signed)
        cache_key = (key, qtype | SIGNED if signed else qtype)
        prepared = self.prepared.get(cache_key)
        if prepared is None:
            prepared = self.resolver.resolve(key, qtype, signed)
            self.prepared.put(cache_key, prepared, len(key) + prepared.size)
        return prepared

    def with_view(
        self, down: frozenset[str], geo: Geo | None, maps: Mapping[Shape, AnswerMap]
    ) -> Snapshot:
        """The same zones under another health view or geography (maps built by the caller
        with `answer_maps`); prepared answers carry over, every other cache starts empty."""
        clone = replace(self, down=down, geo=geo, maps=maps)
        object.__setattr__(clone, "resolver", self.resolver)
        object.__setattr__(clone, "prepared", self.prepared)
        return clone

    def with_signatures(self, signed: Mapping[str, SignedZone]) -> Snapshot:
        """The same zones and view, signed anew (signatures refreshed, a key rolled): every
        answer is prepared again, the answer maps carry over."""
        return replace(self, signed=signed)


def retire(old: Snapshot, current: Snapshot) -> None:
    """Empty the caches of a snapshot swapped out, entry by entry, but those the current one
    shares with it (prepared answers survive a health change). Run in a thread: dropping a
    snapshot whose caches held 10,000 prepared answers and their replies took 27-33 ms, all of
    it on the event loop when the swap dropped it there, and every query waited (the longest
    answer during a reload of a 10,000-name zone); emptied this way, the loop takes the GIL
    between entries. The rest (zones, maps) is freed when the caller drops its reference."""
    shared = {id(cache) for cache in current.caches()}
    for cache in old.caches():
        if id(cache) not in shared:
            cache.empty_gradually()


_UNSEEN: Any = object()  # no shape worked out yet for these parts


def dynamic_records(zones: Mapping[str, Zone]) -> list[DynamicRecord]:
    return _records(node for zone in zones.values() for node in zone.nodes.values())


def _records(nodes: Iterable[dict[int, RRset]], owned: bool = False) -> list[DynamicRecord]:
    """The dynamic records of `nodes`; with `owned`, only those compiled for their node's name
    (an apex ALIAS holds its target's record: that one is its target's)."""
    return [
        rrset.dynamic
        for node in nodes
        for rrset in node.values()
        if rrset.dynamic is not None and (not owned or rrset.dynamic.owner == rrset.name)
    ]


def record_shapes(
    zones: Mapping[str, Zone],
    previous_zones: Mapping[str, Zone] | None = None,
    previous: Mapping[DynamicRecord, Shape] | None = None,
    fresh_names: Mapping[str, list[str]] | None = None,
) -> dict[DynamicRecord, Shape]:
    """The shape of every record that an answer map can decide; records of one shape share
    one Shape object (and so one map). On a reload, handed the zones and shapes of the
    snapshot in use: a node that snapshot's zone holds as it is (a reload takes the nodes of
    unchanged blocks as they were: see zonefile._ZoneLoader) holds the same records, so the
    shapes are carried over whole, but those of the nodes gone or replaced; only the records
    of the new nodes are looked at (a reload of a 10,000-name zone that changed one record
    looks at one; `fresh_names` has, by zone, those nodes' names when the load found them:
    see zonefile.LastLoad). A record of the previous snapshot keeps its shape object, and a
    new record of a shape already held shares that object."""
    if previous_zones is None or previous is None:
        by_record: dict[DynamicRecord, Shape] = {}
        new = dynamic_records(zones)
    else:
        gone: list[dict[int, RRset]] = []
        fresh: list[dict[int, RRset]] = []
        for origin, zone in zones.items():
            nodes = zone.nodes
            old = previous_zones[origin].nodes if origin in previous_zones else {}
            names = fresh_names.get(origin) if fresh_names else None
            if names is None:
                names = changed_names(nodes, old)
            replaced = [name for name in names if name in old]
            gone.extend(old[name] for name in replaced)
            if len(nodes) - len(names) + len(replaced) != len(old):  # names gone, too
                gone.extend(old[name] for name in old.keys() - nodes.keys())
            fresh.extend(nodes[name] for name in names)
        for origin, zone in previous_zones.items():
            if origin not in zones:
                gone.extend(zone.nodes.values())
        by_record = dict(previous)
        for record in _records(gone, owned=True):
            by_record.pop(record, None)  # (a record of a node replaced may be the new one's)
        new = _records(fresh)
    # records compiled from alike YAML share their values and candidates (the compiler makes
    # them once), so one look-up by those objects' identities skips shape_of for all but the
    # first of them: a zone of 10,000 alike records computes one shape, not 10,000
    by_parts: dict[Hashable, Shape | None] = {}
    shapes: dict[Hashable, Shape] | None = None  # the previous shapes by key, once one is made
    for record in new:
        carried = previous.get(record) if previous else None
        if carried is not None:
            by_record[record] = carried
            continue
        parts = (  # (identities: hashing the rules themselves walked every one of them)
            record.rtype,
            id(record.values),
            id(record.candidates),
            tuple(map(id, record.pools.values())),
            id(record.rules),
            record.nearest,
            record.answers,
            id(record.default_order),
            record.all_down,
            record.sticky_margin_km,
        )
        shape = by_parts.get(parts, _UNSEEN)
        if shape is _UNSEEN:
            shape = shape_of(record)
            if shape is not None:
                if shapes is None:  # (hashing a key walks its candidates: once per shape)
                    shapes = {held.key: held for held in set(previous.values())} if previous else {}
                shape = shapes.setdefault(shape.key, shape)
            by_parts[parts] = shape
        if shape is not None:
            by_record[record] = shape
    return by_record


def _fresh_names(blocks: ZoneBlocks, in_use: Snapshot) -> dict[str, list[str]]:
    """By zone, the names whose node a reload's load made anew (zonefile.LastLoad.fresh), of
    the zones whose file's last load made the zone that `in_use` serves (a scan of every name
    less per zone: 0.4-1 ms for 10,000 names)."""
    fresh: dict[str, list[str]] = {}
    for path, load in blocks.files.items():
        before = in_use.blocks.files.get(path)
        origin = load.zone.origin
        if (
            load.fresh is not None
            and before is not None
            and before.zone is in_use.zones.get(origin)
        ):
            fresh[origin] = load.fresh
    return fresh


MapMaker = Callable[
    [Geo | None, Iterable[Shape], frozenset[str], Mapping[Shape, AnswerMap] | None],
    dict[Shape, AnswerMap],
]
"""(geo, shapes, health view, maps that may still hold) -> the maps of those shapes."""


def answer_maps(
    geo: Geo | None,
    shapes: Iterable[Shape],
    down: frozenset[str],
    previous: Mapping[Shape, AnswerMap] | None = None,
    build: bool = True,
) -> dict[Shape, AnswerMap]:
    """The answer map of every shape under `down` (none without a place index). A previous
    map is kept when none of its shape's targets changed state. Up to seconds of numpy for
    many shapes on a City index: callers run it in a thread. Without `build`, only the maps
    that hold are returned (a worker's: the main process builds and shares the others)."""
    kept, stale = still_valid_maps(geo, shapes, down, previous)
    if build and geo is not None and geo.index is not None and geo.rankings is not None and stale:
        for shape in stale:
            kept[shape] = build_map(shape, geo.index, geo.rankings, down)
        geo.index.release_pages()  # read once per build; queries read the maps
    return kept


def still_valid_maps(
    geo: Geo | None,
    shapes: Iterable[Shape],
    down: frozenset[str],
    previous: Mapping[Shape, AnswerMap] | None,
) -> tuple[dict[Shape, AnswerMap], list[Shape]]:
    """(the previous maps that hold under `down`, the shapes whose maps must be rebuilt).
    Milliseconds: a health change swaps these in at once, so every query is answered under
    the new view from the next one on; records of the stale shapes are decided per place
    (correct, with each place's own block as scope) until their maps are rebuilt."""
    if geo is None or geo.index is None:
        return {}, []
    # a key may have several candidates (a worker's maps in service, then those the main
    # process shared): the first that holds is taken
    candidates: dict[Hashable, list[AnswerMap]] = {}
    for answer_map in previous.values() if previous else ():
        candidates.setdefault(answer_map.shape.key, []).append(answer_map)
    kept: dict[Shape, AnswerMap] = {}
    stale: list[Shape] = []
    for shape in set(shapes):
        old = next(
            (
                m
                for m in candidates.get(shape.key, ())
                if m.index is geo.index and _same_states(shape, m.down, down)
            ),
            None,
        )
        if old is not None:
            kept[shape] = old if old.shape is shape else replace(old, shape=shape, decisions={})
        else:
            stale.append(shape)
    return kept, stale


def _same_states(shape: Shape, before: frozenset[str], after: frozenset[str]) -> bool:
    targets = shape.canonical.targets()
    return all(t.up(before) == t.up(after) for t in targets)


def build_snapshot(
    config: ServerConfig,
    geo: Geo | None,
    down: frozenset[str] = frozenset(),
    generation: int = 0,
    previous_maps: Mapping[Shape, AnswerMap] | None = None,
    now: float | None = None,
    previous_signed: Mapping[str, SignedZone] | None = None,
    with_maps: bool = True,
    in_use: Snapshot | None = None,
    make_maps: MapMaker | None = None,
) -> Snapshot:
    """Zones + geography + health -> a new Snapshot ready to be swapped in (raises ConfigError
    with every problem of every zone file). Its sites are the config's plus one per value
    probed by an octoDNS `healthcheck`, so the health monitor checks those too. Zones the
    config signs are signed at `now` (the wall clock by default), carrying over the previous
    snapshot's signatures that still hold (geodns.serving.signing). Without `with_maps` the
    answer maps are left to the caller (a start builds them while it already answers). On a
    reload, the zone files' blocks unchanged since the snapshot `in_use` read them are taken as
    they were read then (see ZoneBlocks), and their records keep their shapes. The maps are
    made by `make_maps` (a server's own way: built by a child process, or taken from the main
    process), or by `answer_maps` here."""
    with collector_paused():  # loading makes millions of objects that all live on
        compiler = DynamicCompilerForSites(config.sites)
        blocks = ZoneBlocks(config.sites)
        if in_use is None:
            zones = load_zones(config, compiler, None, blocks)
            shapes = record_shapes(zones)
        else:
            zones = load_zones(config, compiler, in_use.blocks, blocks)
            fresh = _fresh_names(blocks, in_use)
            shapes = record_shapes(zones, in_use.zones, in_use.shapes, fresh)
        signed: Mapping[str, SignedZone] = {}
        if config.dnssec:  # DNSSEC's modules (dnspython, cryptography) only where it is on
            from geodns.serving.signing import sign_zones

            now = time.time() if now is None else now
            signed = sign_zones(config, zones, now, previous_signed)
    return Snapshot(
        zones=zones,
        geo=geo,
        down=down,
        max_udp_size=config.max_udp_size,
        sites={**config.sites, **compiler.implicit_sites},
        generation=generation,
        shapes=shapes,
        maps=(make_maps or answer_maps)(geo, shapes.values(), down, previous_maps)
        if with_maps
        else {},
        signed=signed,
        blocks=blocks,
    )

"""Dynamic A/AAAA/CNAME records: octoDNS `dynamic` pools and rules, plus geodns's `nearest`,
`answers` and `sticky` extensions under `octodns: {geodns: ...}`.

A record's values are addresses (A, AAAA) or target names (CNAME): the decision only chooses
among them; geodns.dns.resolve encodes the chosen values as the record's type.

The decision is a pure function of (record, where the client is, the health view, the query ID):
`evaluate()`. The query path calls it through `DynamicRecord.decide()`, which caches per place and
health view so that a repeat query from a known network does no geo work; `geodns explain` calls
`evaluate()` with a trace, so it explains the very code that answers.

Semantics (docs/geo.md has the user's version):
- rules are matched in order; a rule with `subnets` and `geos` needs both; the last is the
  catch-all. The matched pool answers one value, chosen by weight (or by rendezvous hash when
  sticky) among its values that are up; a pool with none up falls back along `fallback`; the
  record's plain `values` are the last resort.
- with `nearest`, a located user who reaches the catch-all rule gets the nearest pool or site
  that is up instead; an unlocated one gets the catch-all pool (or `default_order`).
- when nothing at all is up: `all_down: fail_open` (default: answer as if all were up),
  `servfail`, or the name of a pool to answer from regardless of health.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from geodns.dns.zone import TYPE_A, TYPE_AAAA
from geodns.geo.places import DISTANCE_DECIMALS, Place, Placement, distance_km

NO_HEALTH: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Target:
    """One answerable value (an address, or a CNAME's target name): the site whose health it
    follows, its weight and status."""

    value: str
    site: str | None
    weight: int = 1
    status: str = "obey"

    def up(self, down: frozenset[str]) -> bool:
        if self.status == "obey":
            return self.site is None or self.site not in down
        return self.status == "up"


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    targets: tuple[Target, ...]
    fallback: str | None
    location: tuple[float, float] | None
    site: str | None
    line: int = 0  # where the pool is written, for `geodns check`'s warnings
    column: int = 0


@dataclass(frozen=True, slots=True)
class Rule:
    number: int
    pool: str
    subnets: tuple[Any, ...]
    geos: tuple[str, ...]
    places: tuple[tuple[int, int], ...] = ()  # (line, column) of each geo, for `geodns check`

    @property
    def catch_all(self) -> bool:
        return not self.subnets and not self.geos

    @property
    def label(self) -> str:
        parts = []
        if self.subnets:
            parts.append("subnets " + ", ".join(str(s) for s in self.subnets))
        if self.geos:
            parts.append("geos " + ", ".join(self.geos))
        return f"rule {self.number} ({'; '.join(parts) or 'catch-all'}) -> pool {self.pool}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A nearest-mode choice: a site (its values in this record) or a pool."""

    name: str
    latitude: float
    longitude: float
    targets: tuple[Target, ...]
    pool: Pool | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one query and why: the chosen values (addresses, or a CNAME's target)."""

    values: tuple[str, ...]
    scope: int
    site: str | None
    rule: str
    located_by: str | None = None
    servfail: bool = False
    varies: bool = False  # chosen by weight with the query ID: not cacheable as it stands


@dataclass(slots=True)
class Trace:
    """What `geodns explain` prints: filled in by evaluate() when asked."""

    placement: Placement | None = None
    rules: list[str] = field(default_factory=list)
    candidates: list[tuple[str, float | None, bool, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class DynamicRecord:
    """One dynamic A/AAAA record as compiled from its zone file: frozen, shared by snapshots.

    Nothing is cached on it: the memos of the query path live in the snapshot (see
    geodns.geo.answers and docs/architecture.md's table of caches).
    """

    owner: str
    rtype: int
    ttl: int
    values: tuple[Target, ...]
    pools: dict[str, Pool]
    rules: tuple[Rule, ...]
    nearest: bool
    candidates: tuple[Candidate, ...]
    answers: int = 1
    sticky_margin_km: float | None = None
    sticky_prefix: tuple[int, int] = (24, 56)
    default_order: tuple[str, ...] = ()
    all_down: str = "fail_open"
    has_subnets: bool = field(init=False)  # a rule matches subnets: decided per network
    # it names lines of its zone file (its pools' and its rules' geos, for `geodns check`'s
    # warnings): a copy compiled alike names the first record's (asked once per name loaded)
    names_lines: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "has_subnets", any(rule.subnets for rule in self.rules))
        object.__setattr__(
            self,
            "names_lines",
            any(pool.line for pool in self.pools.values()) or any(r.places for r in self.rules),
        )

    def with_owner(self, owner: str) -> DynamicRecord:
        """The same record at another name (records written alike are compiled once): a
        shallow copy, so the values, pools and candidates stay the same shared objects."""
        clone = object.__new__(DynamicRecord)
        fields = clone.__dict__
        fields.update(self.__dict__)
        fields["owner"] = owner
        return clone

    @property
    def family(self) -> int:
        return 4 if self.rtype == TYPE_A else 6

    @property
    def per_network(self) -> bool:
        """Decided per client network (sticky hashing, subnet rules), not per place."""
        return self.sticky_margin_km is not None or self.has_subnets

    @property
    def depends_on_place(self) -> bool:
        return self.nearest or any(rule.geos for rule in self.rules)

    def ranked(self, place: Place) -> tuple[tuple[Candidate, float], ...]:
        """Candidates by distance from a place, nearest first; equal distances (to the metre's
        millionth, see geodns.geo.ranking) by name."""
        distances = [
            distance_km(place.latitude, place.longitude, c.latitude, c.longitude)
            for c in self.candidates
        ]
        order = sorted(
            range(len(self.candidates)),
            key=lambda i: (round(distances[i], DISTANCE_DECIMALS), self.candidates[i].name),
        )
        return tuple((self.candidates[i], distances[i]) for i in order)

    def targets(self) -> tuple[Target, ...]:
        """Every target of the record once, in a fixed order: values, pools, candidates."""
        seen: dict[int, Target] = {}
        for target in self.values:
            seen.setdefault(id(target), target)
        for pool in self.pools.values():
            for target in pool.targets:
                seen.setdefault(id(target), target)
        for candidate in self.candidates:
            for target in candidate.targets:
                seen.setdefault(id(target), target)
        return tuple(seen.values())


def _with_scope(decision: Decision, scope: int) -> Decision:
    if decision.scope == scope:
        return decision
    d = decision  # built directly: dataclasses.replace costs several microseconds
    return Decision(d.values, scope, d.site, d.rule, d.located_by, d.servfail, d.varies)


def evaluate(
    record: DynamicRecord,
    placement: Placement | None,
    down: frozenset[str],
    query_id: int,
    trace: Trace | None = None,
) -> Decision:
    """The decision for a client placement under a health view; pure."""
    place = placement.place if placement is not None else None
    if trace is not None:
        trace.placement = placement
    depends_on_place = False
    scope = 0
    matched: Rule | None = None
    for rule in record.rules:
        if rule.geos:
            depends_on_place = True
        if rule.subnets and placement is not None:
            scope = max(scope, _subnet_scope(rule, placement))
        if _rule_matches(rule, placement, place):
            matched = rule
            if trace is not None:
                trace.rules.append(f"{rule.label}: matched")
            break
        if trace is not None:
            trace.rules.append(f"{rule.label}: no match")
    decision: Decision | None = None
    if (matched is None or matched.catch_all) and record.nearest:
        depends_on_place = True
        if place is not None:
            decision = _nearest(record, place, placement, down, query_id, trace)
        elif record.default_order and not record.pools:
            decision = _in_order(record, down, query_id, trace)
        elif trace is not None:
            trace.notes.append("client not located: nearest does not apply")
    if decision is None and matched is not None:
        decision = _pool_chain(
            record, matched.pool, matched.label, placement, down, query_id, trace
        )
    if decision is None:
        up = tuple(t.value for t in record.values if t.up(down))
        if up:
            decision = Decision(up, 0, None, "record values (last resort)")
        else:
            decision = _all_down(record, placement, query_id, trace)
    if placement is not None and depends_on_place:
        scope = max(scope, placement.prefix)
    if record.sticky_margin_km is not None and placement is not None:
        scope = max(scope, min(_sticky_prefix(record, placement), _bits(placement)))
    if trace is not None:
        trace.notes.append(f"ECS scope: /{scope}")
    return _with_scope(decision, scope)


def _bits(placement: Placement) -> int:
    return 32 if placement.family == 4 else 128


def _rule_matches(rule: Rule, placement: Placement | None, place: Place | None) -> bool:
    if rule.catch_all:
        return True
    if rule.subnets:
        if placement is None:
            return False
        address = placement.address
        if not any(
            net.version == placement.family
            and (address >> (net.max_prefixlen - net.prefixlen)) == net.key
            for net in rule.subnets
        ):
            return False
    if rule.geos:
        if place is None:
            return False
        return any(_geo_matches(geo, place) for geo in rule.geos)
    return True


def rule_matches_place(rule: Rule, place: Place) -> bool:
    """Whether a rule without subnets matches a located place (the catch-all always does)."""
    return rule.catch_all or any(_geo_matches(geo, place) for geo in rule.geos)


def _geo_matches(geo: str, place: Place) -> bool:
    parts = geo.split("-")
    if parts[0] != place.continent:
        return False
    if len(parts) > 1 and parts[1] != place.country:
        return False
    return not (len(parts) > 2 and parts[2] != place.subdivision)


def _subnet_scope(rule: Rule, placement: Placement) -> int:
    """The prefix length a decision about these subnets needs to hold for the whole scope."""
    bits = _bits(placement)
    need = 0
    for net in rule.subnets:
        if net.version != placement.family:
            continue
        network_address = net.key << (bits - net.prefixlen)
        common = bits - (placement.address ^ network_address).bit_length()
        need = max(need, net.prefixlen if common >= net.prefixlen else common + 1)
    return min(need, bits)


def _weighted(targets: list[Target], query_id: int) -> Target:
    total = sum(t.weight for t in targets)
    point = (query_id * total) >> 16
    running = 0
    for target in targets:
        running += target.weight
        if point < running:
            return target
    return targets[-1]


def _pool_chain(
    record: DynamicRecord,
    pool_name: str,
    rule_label: str,
    placement: Placement | None,
    down: frozenset[str],
    query_id: int,
    trace: Trace | None,
) -> Decision | None:
    seen: set[str] = set()
    name: str | None = pool_name
    while name is not None and name not in seen:
        seen.add(name)
        pool = record.pools[name]
        up = [t for t in pool.targets if t.up(down)]
        if trace is not None:
            for t in pool.targets:
                state = "up" if t.up(down) else "down"
                trace.candidates.append((f"pool {name}: {t.value}", None, t.up(down), state))
        if up:
            if record.sticky_margin_km is not None and placement is not None and len(up) > 1:
                chosen = _rendezvous(record, placement, [(t.value, t) for t in up])[0][1]
                varies = False
            else:
                chosen = _weighted(up, query_id)
                varies = len(up) > 1
            via = f" (fallback from {pool_name})" if name != pool_name else ""
            return Decision(
                (chosen.value,), 0, chosen.site or name, rule_label + via, varies=varies
            )
        if trace is not None:
            trace.notes.append(f"pool {name}: every value is down; fallback {pool.fallback}")
        name = pool.fallback
    return None


def _nearest(
    record: DynamicRecord,
    place: Place,
    placement: Placement | None,
    down: frozenset[str],
    query_id: int,
    trace: Trace | None,
) -> Decision | None:
    ranking = record.ranked(place)
    up = [(c, d) for c, d in ranking if any(t.up(down) for t in c.targets)]
    if trace is not None:
        for candidate, distance in ranking:
            is_up = any(t.up(down) for t in candidate.targets)
            trace.candidates.append((candidate.name, distance, is_up, "up" if is_up else "down"))
    if not up:
        return None
    if record.sticky_margin_km is not None and placement is not None:
        limit = up[0][1] + record.sticky_margin_km
        eligible = [(c.name, c) for c, d in up if d <= limit]
        chosen = [c for _, c in _rendezvous(record, placement, eligible)][: record.answers]
        rule = f"nearest, sticky within {record.sticky_margin_km:g} km of the nearest"
    else:
        chosen = [c for c, _ in up[: record.answers]]
        rule = "nearest" if record.answers == 1 else f"nearest {record.answers}"
    return _answer(chosen, down, query_id, rule)


def _answer(chosen: list[Candidate], down: frozenset[str], query_id: int, rule: str) -> Decision:
    """The values of the chosen candidates: all of a site's, one (by weight) of a pool's."""
    values: list[str] = []
    varies = False
    for candidate in chosen:
        up = [t for t in candidate.targets if t.up(down)]
        if candidate.pool is not None and len(up) > 1:
            up = [_weighted(up, query_id)]
            varies = True
        values.extend(t.value for t in up)
    return Decision(tuple(values), 0, ",".join(c.name for c in chosen), rule, varies=varies)


def _in_order(
    record: DynamicRecord, down: frozenset[str], query_id: int, trace: Trace | None
) -> Decision | None:
    by_name = {c.name: c for c in record.candidates}
    chosen = []
    for name in record.default_order:
        candidate = by_name.get(name)
        if candidate is not None and any(t.up(down) for t in candidate.targets):
            chosen.append(candidate)
        if len(chosen) == record.answers:
            break
    if trace is not None:
        trace.notes.append("client not located: default_order " + ", ".join(record.default_order))
    if not chosen:
        return None
    return _answer(chosen, down, query_id, "default_order")


def _all_down(
    record: DynamicRecord, placement: Placement | None, query_id: int, trace: Trace | None
) -> Decision:
    mode = record.all_down
    if trace is not None:
        trace.notes.append(f"every candidate is down: all_down is {mode}")
    if mode == "servfail":
        return Decision((), 0, None, "all down: servfail", servfail=True)
    if mode != "fail_open":
        pool = record.pools[mode]
        target = _weighted(list(pool.targets), query_id)
        varies = len(pool.targets) > 1
        return Decision((target.value,), 0, target.site, f"all down: pool {mode}", varies=varies)
    everything_up = DynamicRecord(
        record.owner,
        record.rtype,
        record.ttl,
        tuple(Target(t.value, t.site, t.weight, "up") for t in record.values),
        {
            name: Pool(
                p.name,
                tuple(Target(t.value, t.site, t.weight, "up") for t in p.targets),
                p.fallback,
                p.location,
                p.site,
            )
            for name, p in record.pools.items()
        },
        record.rules,
        record.nearest,
        tuple(
            Candidate(
                c.name,
                c.latitude,
                c.longitude,
                tuple(Target(t.value, t.site, t.weight, "up") for t in c.targets),
                c.pool,
            )
            for c in record.candidates
        ),
        record.answers,
        record.sticky_margin_km,
        record.sticky_prefix,
        record.default_order,
        "servfail",
    )
    decision = evaluate(everything_up, placement, NO_HEALTH, query_id, trace)
    return replace(decision, rule=f"all down, fail open: {decision.rule}")


def _sticky_prefix(record: DynamicRecord, placement: Placement) -> int:
    return record.sticky_prefix[0] if placement.family == 4 else record.sticky_prefix[1]


def _rendezvous(
    record: DynamicRecord, placement: Placement, items: list[tuple[str, Any]]
) -> list[Any]:
    """Order items by highest-random-weight for the client's network (stable across processes)."""
    bits = _bits(placement)
    prefix = min(_sticky_prefix(record, placement), bits)
    network = placement.address >> (bits - prefix)
    seed = f"{placement.family}/{prefix}/{network}/".encode()
    scored = [
        (hashlib.blake2b(seed + name.encode(), digest_size=8).digest(), (name, item))
        for name, item in items
    ]
    scored.sort(reverse=True)
    return [pair for _, pair in scored]


def records_all_down(
    zones: Mapping[str, Any], down: frozenset[str]
) -> list[tuple[str, str, str, str]]:
    """Dynamic records none of whose targets is up: (zone, owner, type, all_down mode).

    Called when the health view changes (never per query), to log the fail-open case once.
    """
    found = []
    for origin, zone in zones.items():
        for node in zone.nodes.values():
            for rrset in node.values():
                record = rrset.dynamic
                if record is None:
                    continue
                targets = list(record.values) + [
                    t for p in record.pools.values() for t in p.targets
                ]
                if not any(t.up(down) for t in targets):
                    rtype = {TYPE_A: "A", TYPE_AAAA: "AAAA"}.get(record.rtype, "CNAME")
                    found.append((origin, record.owner, rtype, record.all_down))
    return found


class SubnetMatch:
    """An ip_network with its prefix pre-shifted, for one-comparison membership tests."""

    __slots__ = ("net", "version", "max_prefixlen", "prefixlen", "key")

    def __init__(self, net: Any) -> None:
        self.net = net
        self.version = net.version
        self.max_prefixlen = net.max_prefixlen
        self.prefixlen = net.prefixlen
        self.key = int(net.network_address) >> (net.max_prefixlen - net.prefixlen)

    def __str__(self) -> str:
        return str(self.net)

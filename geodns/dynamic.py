"""Dynamic A/AAAA records: octoDNS `dynamic` pools and rules, plus geodns's `nearest`, `answers`
and `sticky` extensions under `octodns: {geodns: ...}`.

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
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from geodns.caching import make_room
from geodns.errors import did_you_mean, report_unknown_keys
from geodns.geo import Place, Placement, distances_km, haversine_point
from geodns.sites import CheckSpec, Site
from geodns.yamlsrc import MarkedDict, MarkedList
from geodns.zone import TYPE_A

GEODNS_KEYS = ("nearest", "answers", "sticky", "default_order", "all_down", "pools")
NEAREST_KEYS = ("pools",)
STICKY_KEYS = ("margin_km", "prefix_v4", "prefix_v6")
POOL_KEYS = ("values", "fallback")
VALUE_KEYS = ("value", "weight", "status")
RULE_KEYS = ("pool", "geos", "subnets")
HEALTHCHECK_KEYS = ("host", "path", "port", "protocol")
PLAN_CACHE_LIMIT = 100_000
NO_HEALTH: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Target:
    """One answerable address: the site whose health it follows, its weight and status."""

    address: str
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


@dataclass(frozen=True, slots=True)
class Rule:
    number: int
    pool: str
    subnets: tuple[Any, ...]
    geos: tuple[str, ...]

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
    """The answer for one query and why."""

    addresses: tuple[str, ...]
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


@dataclass(eq=False)
class DynamicRecord:
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
    rank_cache: dict[Any, tuple[tuple[Candidate, float], ...]] = field(default_factory=dict)
    plan_cache: dict[Any, tuple[Any, Decision]] = field(default_factory=dict)
    has_subnets: bool = field(init=False)  # a rule matches subnets: decided per network
    points: tuple[tuple[float, float, float], ...] = field(init=False)  # candidates, for distances
    up_for: tuple[Any, frozenset[str]] = field(init=False)  # (health view, candidates up in it)

    def __post_init__(self) -> None:
        self.has_subnets = any(rule.subnets for rule in self.rules)
        self.points = tuple(haversine_point(c.latitude, c.longitude) for c in self.candidates)
        self.up_for = (None, frozenset())

    @property
    def family(self) -> int:
        return 4 if self.rtype == TYPE_A else 6

    def decide(self, query: Any, client: str, snapshot: Any) -> tuple[Decision, int, str]:
        """The hot-path entry: (decision, ECS scope, how the client was located).

        The client's placement is cached per network by the locator; the decision is cached per
        place and health view, so a repeat query from a known network does no geo work.
        """
        ecs = query.ecs
        if ecs is not None and ecs[1] > 0:
            key, located_by = ecs, "ecs"
        else:
            key, located_by = client, "resolver"
        geo = snapshot.geo
        placement = geo.placement(key) if geo is not None else None
        health = snapshot.health
        down = health.down if health is not None else NO_HEALTH
        if self.sticky_margin_km is not None or self.has_subnets or placement is None:
            decision = evaluate(self, placement, down, query.id)
            return decision, decision.scope, located_by
        decision = self.placed(placement, down)
        if decision.varies:
            decision = evaluate(self, placement, down, query.id)
        # a cached decision holds for every network placed here; its scope is this network's
        return decision, placement.prefix if decision.scope else 0, located_by

    def placed(self, placement: Placement, down: frozenset[str]) -> Decision:
        """The decision for a located client under a health view, for query ID 0 (a decision
        that `varies` is made again per query). Cached per place: it holds for every network
        placed there. Not for records with `subnets` rules or `sticky`, decided per network."""
        cached = self.plan_cache.get(placement.place)
        if cached is not None and cached[0] is down:
            return cached[1]
        decision = evaluate(self, placement, down, 0)
        make_room(self.plan_cache, PLAN_CACHE_LIMIT)
        self.plan_cache[placement.place] = (down, decision)
        return decision

    def ranked(self, place: Place) -> tuple[tuple[Candidate, float], ...]:
        """Candidates by distance from a place; health-independent, so cached per place."""
        ranking = self.rank_cache.get(place)
        if ranking is None:
            candidates = self.candidates
            distances = distances_km(place.latitude, place.longitude, self.points)
            by_distance = sorted(
                zip(distances, [c.name for c in candidates], range(len(candidates)), strict=True)
            )
            ranking = tuple((candidates[i], distance) for distance, _, i in by_distance)
            make_room(self.rank_cache, PLAN_CACHE_LIMIT)
            self.rank_cache[place] = ranking
        return ranking

    def up_names(self, down: frozenset[str]) -> frozenset[str]:
        """The names of the candidates with a value up under a health view (kept for the
        last view asked about: a view is one object shared by every query until it changes)."""
        view, names = self.up_for
        if view is not down:
            names = frozenset(c.name for c in self.candidates if any(t.up(down) for t in c.targets))
            self.up_for = (down, names)
        return names


def _with_scope(decision: Decision, scope: int) -> Decision:
    if decision.scope == scope:
        return decision
    d = decision  # built directly: dataclasses.replace costs several microseconds
    return Decision(d.addresses, scope, d.site, d.rule, d.located_by, d.servfail, d.varies)


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
        up = tuple(t.address for t in record.values if t.up(down))
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
                trace.candidates.append((f"pool {name}: {t.address}", None, t.up(down), state))
        if up:
            if record.sticky_margin_km is not None and placement is not None and len(up) > 1:
                chosen = _rendezvous(record, placement, [(t.address, t) for t in up])[0][1]
                varies = False
            else:
                chosen = _weighted(up, query_id)
                varies = len(up) > 1
            via = f" (fallback from {pool_name})" if name != pool_name else ""
            return Decision(
                (chosen.address,), 0, chosen.site or name, rule_label + via, varies=varies
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
    up_names = record.up_names(down)
    up = [(c, d) for c, d in ranking if c.name in up_names]
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
    """The addresses of the chosen candidates: all of a site's, one (by weight) of a pool's."""
    addresses: list[str] = []
    varies = False
    for candidate in chosen:
        up = [t for t in candidate.targets if t.up(down)]
        if candidate.pool is not None and len(up) > 1:
            up = [_weighted(up, query_id)]
            varies = True
        addresses.extend(t.address for t in up)
    return Decision(tuple(addresses), 0, ",".join(c.name for c in chosen), rule, varies=varies)


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
        return Decision((target.address,), 0, target.site, f"all down: pool {mode}", varies=varies)
    everything_up = DynamicRecord(
        record.owner,
        record.rtype,
        record.ttl,
        tuple(Target(t.address, t.site, t.weight, "up") for t in record.values),
        {
            name: Pool(
                p.name,
                tuple(Target(t.address, t.site, t.weight, "up") for t in p.targets),
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
                tuple(Target(t.address, t.site, t.weight, "up") for t in c.targets),
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
    return replace(decision, scope=0, rule=f"all down, fail open: {decision.rule}")


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


def records_all_down(snapshot: Any, down: frozenset[str]) -> list[tuple[str, str, str, str]]:
    """Dynamic records none of whose targets is up: (zone, owner, type, all_down mode).

    Called when the health view changes (never per query), to log the fail-open case once.
    """
    found = []
    for origin, zone in snapshot.zones.items():
        for node in zone.nodes.values():
            for rrset in node.values():
                record = rrset.dynamic
                if record is None:
                    continue
                targets = list(record.values) + [
                    t for p in record.pools.values() for t in p.targets
                ]
                if not any(t.up(down) for t in targets):
                    rtype = "A" if record.rtype == TYPE_A else "AAAA"
                    found.append((origin, record.owner, rtype, record.all_down))
    return found


# ---------------------------------------------------------------- compiling from the zone file


class DynamicCompilerForSites:
    """Compiles a record's dynamic settings against the config's sites (zonefile's hook)."""

    def __init__(self, sites: dict[str, Site]) -> None:
        self.sites = sites
        self.site_of: dict[str, str] = {}
        for site in sites.values():
            for address in site.ipv4 + site.ipv6:
                self.site_of[address] = site.name
        self.implicit_sites: dict[str, Site] = {}
        self.templates: dict[str, Site] = {}

    def compile(
        self,
        record: MarkedDict,
        owner: str,
        rtype: int,
        ttl: int,
        report: Callable[[int, str], None],
    ) -> DynamicRecord | None:
        problems_before = _Counter(report)
        add = problems_before.add
        octodns = record.get("octodns")
        settings = octodns.get("geodns") if isinstance(octodns, MarkedDict) else None
        if settings is None:
            settings = MarkedDict()
            settings.line, settings.key_lines = record.line, {}
        if not isinstance(settings, MarkedDict):
            add(record.line_of("octodns"), "octodns.geodns: expected a mapping")
            return None
        for key in settings:
            if key not in GEODNS_KEYS:
                add(
                    settings.line_of(key),
                    f"octodns.geodns: unknown key '{key}'{did_you_mean(str(key), GEODNS_KEYS)}; "
                    f"expected one of {', '.join(GEODNS_KEYS)}",
                )
        health_site = self._healthcheck(record, owner, add)
        raw_values = record.get("values", [record.get("value")])
        values = tuple(
            self._target(str(v), health_site, 1, "obey") for v in raw_values if v is not None
        )
        pools: dict[str, Pool] = {}
        rules: list[Rule] = []
        dynamic = record.get("dynamic")
        if dynamic is not None:
            pools, rules = self._dynamic(dynamic, record.line_of("dynamic"), health_site, add)
        nearest_value = settings.get("nearest", False)
        nearest_pools: list[str] | None = None
        if isinstance(nearest_value, MarkedDict):
            for key in nearest_value:
                if key not in NEAREST_KEYS:
                    add(nearest_value.line_of(key), f"nearest: unknown key '{key}'")
            nearest_pools = list(nearest_value.get("pools") or [])
            nearest_value = True
        if not isinstance(nearest_value, bool):
            add(settings.line_of("nearest"), "nearest: expected true, false or {pools: [...]}")
            nearest_value = False
        candidates: tuple[Candidate, ...] = ()
        if nearest_value:
            candidates = self._candidates(
                pools, values, nearest_pools, settings.line_of("nearest"), add
            )
        answers = settings.get("answers", 1)
        if isinstance(answers, bool) or not isinstance(answers, int) or not 1 <= answers <= 16:
            add(settings.line_of("answers"), "answers: expected a whole number from 1 to 16")
            answers = 1
        sticky_margin, sticky_prefix = self._sticky(settings, add)
        default_order = settings.get("default_order", [])
        if not isinstance(default_order, list) or not all(
            isinstance(s, str) for s in default_order
        ):
            add(settings.line_of("default_order"), "default_order: expected a list of site names")
            default_order = []
        for name in default_order:
            if name not in {c.name for c in candidates}:
                add(
                    settings.line_of("default_order"),
                    f"default_order: '{name}' is not a site of this record"
                    f"{did_you_mean(name, [c.name for c in candidates])}",
                )
        all_down = settings.get("all_down", "fail_open")
        if not isinstance(all_down, str) or (
            all_down not in ("fail_open", "servfail") and all_down not in pools
        ):
            add(
                settings.line_of("all_down"),
                f"all_down: expected fail_open, servfail or a pool name, got {all_down!r}",
            )
        if not pools and not nearest_value:
            add(record.line, "octodns.geodns needs nearest: true, or the record needs 'dynamic'")
        family = 4 if rtype == TYPE_A else 6
        for target in values + tuple(t for p in pools.values() for t in p.targets):
            if (":" in target.address) != (family == 6):
                add(record.line, f"value {target.address} is not of the record's address family")
                break
        if problems_before.count:
            return None
        return DynamicRecord(
            owner=owner,
            rtype=rtype,
            ttl=ttl,
            values=values,
            pools=pools,
            rules=tuple(rules),
            nearest=nearest_value,
            candidates=candidates,
            answers=answers,
            sticky_margin_km=sticky_margin,
            sticky_prefix=sticky_prefix,
            default_order=tuple(default_order),
            all_down=all_down if isinstance(all_down, str) else "fail_open",
        )

    def _target(self, address: str, health_site: str | None, weight: int, status: str) -> Target:
        canonical = str(ipaddress.ip_address(address)) if _is_ip(address) else address
        site = self.site_of.get(canonical)
        if site is None and health_site is not None:
            site = self._implicit_site(canonical, health_site)
        return Target(canonical, site, weight, status)

    def _implicit_site(self, address: str, template: str) -> str:
        """A value outside every site, under an octoDNS healthcheck: probe it by its own name."""
        spec = self.templates[template]
        name = f"{template}@{address}"
        if name not in self.implicit_sites:
            checks = tuple(replace(check, address=address) for check in spec.checks)
            v6 = ":" in address
            self.implicit_sites[name] = Site(
                name,
                "pop",
                0.0,
                0.0,
                () if v6 else (address,),
                (address,) if v6 else (),
                checks=checks,
            )
        return name

    def _healthcheck(
        self, record: MarkedDict, owner: str, add: Callable[[int, str], None]
    ) -> str | None:
        octodns = record.get("octodns")
        if not isinstance(octodns, MarkedDict) or "healthcheck" not in octodns:
            return None
        spec = octodns["healthcheck"]
        if not isinstance(spec, MarkedDict):
            add(octodns.line_of("healthcheck"), "octodns.healthcheck: expected a mapping")
            return None
        for key in spec:
            if key not in HEALTHCHECK_KEYS:
                add(spec.line_of(key), f"octodns.healthcheck: unknown key '{key}'")
        protocol = str(spec.get("protocol", "HTTPS")).upper()
        if protocol not in ("HTTP", "HTTPS", "TCP"):
            add(
                spec.line_of("protocol"),
                "octodns.healthcheck.protocol: geodns probes HTTP, HTTPS or TCP",
            )
            return None
        port = spec.get("port", 443 if protocol == "HTTPS" else 80)
        check = CheckSpec(
            type=protocol.lower(),
            address="0.0.0.0",
            port=int(port),
            path=str(spec.get("path", "/_dns")),
            host=str(spec.get("host", owner.rstrip("."))),
        )
        name = f"healthcheck:{owner.rstrip('.')}"
        self.templates[name] = Site(name, "pop", 0.0, 0.0, (), (), checks=(check,))
        return name

    def _dynamic(
        self, dynamic: Any, line: int, health_site: str | None, add: Callable[[int, str], None]
    ) -> tuple[dict[str, Pool], list[Rule]]:
        pools: dict[str, Pool] = {}
        rules: list[Rule] = []
        if not isinstance(dynamic, MarkedDict):
            add(line, "dynamic: expected a mapping with pools and rules")
            return pools, rules
        report_unknown_keys(dynamic, ("pools", "rules"), add, "dynamic: ")
        raw_pools = dynamic.get("pools")
        if not isinstance(raw_pools, MarkedDict) or not raw_pools:
            add(dynamic.line_of("pools"), "dynamic.pools: expected a mapping of pool names")
            return pools, rules
        for name, raw in raw_pools.items():
            pool = self._pool(str(name), raw, raw_pools.line_of(name), health_site, add)
            if pool is not None:
                pools[pool.name] = pool
        for pool in pools.values():
            if pool.fallback is not None and pool.fallback not in pools:
                add(
                    raw_pools.line_of(pool.name),
                    f"dynamic.pools.{pool.name}.fallback: no pool '{pool.fallback}'"
                    f"{did_you_mean(pool.fallback, pools)}",
                )
        raw_rules = dynamic.get("rules")
        if not isinstance(raw_rules, MarkedList) or not raw_rules:
            add(dynamic.line_of("rules"), "dynamic.rules: expected a list of rules")
            return pools, rules
        for index, raw in enumerate(raw_rules):
            rule = self._rule(index + 1, raw, raw_rules.line_of(index), pools, add)
            if rule is not None:
                rules.append(rule)
        if rules and not rules[-1].catch_all:
            add(
                raw_rules.line_of(len(raw_rules) - 1),
                "dynamic.rules: the last rule must be the catch-all (pool only, no subnets or geos)",
            )
        return pools, rules

    def _pool(
        self,
        name: str,
        raw: Any,
        line: int,
        health_site: str | None,
        add: Callable[[int, str], None],
    ) -> Pool | None:
        if not isinstance(raw, MarkedDict):
            add(line, f"dynamic.pools.{name}: expected a mapping with values")
            return None
        report_unknown_keys(raw, POOL_KEYS, add, f"dynamic.pools.{name}: ")
        raw_values = raw.get("values")
        if not isinstance(raw_values, MarkedList) or not raw_values:
            add(raw.line_of("values"), f"dynamic.pools.{name}.values: expected a list of values")
            return None
        targets = []
        for index, item in enumerate(raw_values):
            at = raw_values.line_of(index)
            if not isinstance(item, MarkedDict) or "value" not in item:
                add(
                    at,
                    f"dynamic.pools.{name}.values: each item is {{value: ADDRESS, weight: N, status: obey}}",
                )
                continue
            report_unknown_keys(item, VALUE_KEYS, add, f"dynamic.pools.{name}: ")
            address = str(item["value"])
            if not _is_ip(address):
                add(
                    item.line_of("value"), f"dynamic.pools.{name}: {address!r} is not an IP address"
                )
                continue
            weight = item.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
                add(
                    item.line_of("weight"), f"dynamic.pools.{name}: weight must be 1..100 (octoDNS)"
                )
                weight = 1
            status = item.get("status", "obey")
            if status not in ("up", "down", "obey"):
                add(
                    item.line_of("status"), f"dynamic.pools.{name}: status must be up, down or obey"
                )
                status = "obey"
            targets.append(self._target(address, health_site, weight, status))
        fallback = raw.get("fallback")
        located = [t.site for t in targets if t.site in self.sites]
        site = located[0] if located else None
        location = (self.sites[site].latitude, self.sites[site].longitude) if site else None
        return Pool(name, tuple(targets), str(fallback) if fallback else None, location, site)

    def _rule(
        self,
        number: int,
        raw: Any,
        line: int,
        pools: dict[str, Pool],
        add: Callable[[int, str], None],
    ) -> Rule | None:
        if not isinstance(raw, MarkedDict) or "pool" not in raw:
            add(line, f"dynamic.rules[{number}]: expected a mapping with a pool")
            return None
        report_unknown_keys(raw, RULE_KEYS, add, f"dynamic.rules[{number}]: ")
        pool = str(raw["pool"])
        if pool not in pools:
            add(
                raw.line_of("pool"),
                f"dynamic.rules[{number}]: no pool '{pool}'{did_you_mean(pool, pools)}",
            )
            return None
        subnets = []
        for subnet in raw.get("subnets") or []:
            try:
                net = ipaddress.ip_network(str(subnet), strict=False)
            except ValueError:
                add(raw.line_of("subnets"), f"dynamic.rules[{number}]: {subnet!r} is not a subnet")
                continue
            subnets.append(_Net(net))
        geos = []
        for geo in raw.get("geos") or []:
            text = str(geo).upper()
            parts = text.split("-")
            if not (1 <= len(parts) <= 3 and all(len(p) == 2 and p.isalpha() for p in parts)):
                add(
                    raw.line_of("geos"),
                    f"dynamic.rules[{number}]: geo {geo!r} must look like AS, AS-ID or NA-US-CA",
                )
                continue
            geos.append(text)
        return Rule(number, pool, tuple(subnets), tuple(geos))

    def _candidates(
        self,
        pools: dict[str, Pool],
        values: tuple[Target, ...],
        only: list[str] | None,
        line: int,
        add: Callable[[int, str], None],
    ) -> tuple[Candidate, ...]:
        candidates = []
        if pools:
            for name in only or list(pools):
                pool = pools.get(name)
                if pool is None:
                    add(line, f"nearest.pools: no pool '{name}'{did_you_mean(name, pools)}")
                    continue
                if pool.location is None:
                    add(
                        line,
                        f"nearest: pool '{name}' has no value that belongs to a site, so it has no location",
                    )
                    continue
                candidates.append(Candidate(name, *pool.location, pool.targets, pool))
            return tuple(candidates)
        by_site: dict[str, list[Target]] = {}
        for target in values:
            if target.site not in self.sites:
                add(
                    line,
                    f"nearest: value {target.address} belongs to no site in the config; declare it under sites",
                )
                continue
            by_site.setdefault(target.site, []).append(target)
        for site_name, targets in by_site.items():
            site = self.sites[site_name]
            candidates.append(Candidate(site_name, site.latitude, site.longitude, tuple(targets)))
        return tuple(candidates)

    def _sticky(
        self, settings: MarkedDict, add: Callable[[int, str], None]
    ) -> tuple[float | None, tuple[int, int]]:
        sticky = settings.get("sticky")
        if sticky is None or sticky is False:
            return None, (24, 56)
        if sticky is True:
            return 0.0, (24, 56)
        if not isinstance(sticky, MarkedDict):
            add(settings.line_of("sticky"), "sticky: expected true or {margin_km: N}")
            return None, (24, 56)
        report_unknown_keys(sticky, STICKY_KEYS, add, "sticky: ")
        margin = sticky.get("margin_km", 0)
        if isinstance(margin, bool) or not isinstance(margin, int | float) or margin < 0:
            add(sticky.line_of("margin_km"), "sticky.margin_km: expected kilometres >= 0")
            margin = 0
        v4 = sticky.get("prefix_v4", 24)
        v6 = sticky.get("prefix_v6", 56)
        if not (isinstance(v4, int) and 0 <= v4 <= 32 and isinstance(v6, int) and 0 <= v6 <= 128):
            add(sticky.line, "sticky: prefix_v4 must be 0..32 and prefix_v6 0..128")
            v4, v6 = 24, 56
        return float(margin), (v4, v6)


class _Net:
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


class _Counter:
    def __init__(self, report: Callable[[int, str], None]) -> None:
        self.report = report
        self.count = 0

    def add(self, line: int, message: str) -> None:
        self.count += 1
        self.report(line, message)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True

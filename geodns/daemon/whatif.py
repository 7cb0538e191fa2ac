"""What if a site went away: which users would move, where to, and what it would cost them.

Used by the console's what-if panel (geodns.daemon.console), by `geodns whatif drain SITE`
through the admin API, and by the same command without a running server. Nothing here is
approximated: the health rules are the health state's own (geodns.health.state.HealthState, on
a copy, so a data centre taken away takes the PoPs that depend on it only on it), and every
decision is the one the server would take, `geodns.geo.dynamic.evaluate`, for each network
under the health view of now and under the view after the change.

The users are the networks in the recent traffic sample (geodns.observe.sample): each sampled
(network, name, type) is located as the server locates it and decided for the record it asked
for. With no traffic sampled yet, every dynamic record is decided for one user per country, at
the country's representative point (the place a Country database gives).

Decisions are grouped by (record, place) first: networks in one place get one decision, unless
the record decides per network (`subnets` rules or `sticky`). The evaluation yields to the event
loop every EVALUATIONS_PER_SLICE decisions, so a what-if never holds queries up for long.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from geodns.dns.zone import TYPE_A, TYPE_AAAA
from geodns.geo.dynamic import DynamicRecord, evaluate
from geodns.geo.places import (
    CountryPoints,
    Place,
    Placement,
    distance_km,
    fibre_rtt_ms,
    load_country_points,
)
from geodns.health.state import HealthState
from geodns.observe.counters import qtype_text
from geodns.observe.querylog import ecs_text
from geodns.observe.sample import Entry
from geodns.serving.snapshot import dynamic_records

EVALUATIONS_PER_SLICE = 200  # ~2-4 ms of decisions between two turns of the event loop
RECENT_SECONDS = 600.0  # the sample's entries used: the last ten minutes
EXAMPLES = 3
ACTIONS = ("drain", "fail")
UNKNOWN_COUNTRY = "??"


@dataclass(slots=True)
class User:
    """One group of users decided alike: a place (and a network, if the record cares), for a
    record, with how many sampled queries and which networks stand behind it."""

    record: DynamicRecord
    placement: Placement
    weight: int = 0
    networks: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Move:
    """Users of one country moved from one site to another."""

    country: str
    name: str
    from_site: str | None
    to_site: str | None
    weight: int = 0
    networks: int = 0
    added_km: float = 0.0  # weighted sum; divided by weight in to_json
    known_km: int = 0  # weight with a distance on both sides
    records: set[str] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        added = self.added_km / self.known_km if self.known_km else None
        return {
            "country": self.country,
            "name": self.name,
            "from": self.from_site,
            "to": self.to_site,
            "weight": self.weight,
            "networks": self.networks,
            "added_km": None if added is None else round(added),
            "added_rtt_ms": None if added is None else round(fibre_rtt_ms(added), 1),
            "records": sorted(self.records),
            "examples": self.examples,
        }


def network_text(network: Any) -> str:
    """A sampled network as text: the ECS subnet (address/prefix) or the resolver's address."""
    if isinstance(network, str):
        return network
    return ecs_text(network) or ""


@lru_cache(maxsize=1)
def country_points() -> CountryPoints:
    """{country code: (continent, latitude, longitude, name)}, read once."""
    return load_country_points()


def locate(geo: Any, network: Any) -> Placement | None:
    """A sampled network located as the server locates it: the ECS address when the option
    has a source prefix, else the resolver's address; None if it is not an address."""
    if isinstance(network, str):
        try:
            address = ipaddress.ip_address(network)
        except ValueError:
            return None
        return geo.locate(address.version, int(address))
    family_code, source, raw = network
    if not source:
        return None
    if family_code == 1:
        return geo.locate(4, int.from_bytes(raw.ljust(4, b"\x00")))
    return geo.locate(6, int.from_bytes(raw.ljust(16, b"\x00")))


def down_after(health: HealthState, action: str, site: str, now: float) -> frozenset[str]:
    """The sites out of rotation if `site` were drained or failed now, by the health rules
    themselves (a data centre's PoPs that depend on it alone go with it)."""
    if action not in ACTIONS:
        raise ValueError(f"expected one of {', '.join(ACTIONS)}, got {action!r}")
    trial = copy.deepcopy(health)
    trial.drain(site, now, f"what-if: {action}", "whatif")  # a failure takes it out the same way
    return trial.view.down


def users_from_sample(snapshot: Any, entries: Iterable[Entry]) -> list[User]:
    """The sampled queries as groups of users, each with its dynamic record and placement."""
    geo = snapshot.geo
    groups: dict[tuple[Any, ...], User] = {}
    for network, qname, qtype, _when in entries:
        if geo is None or qtype not in (TYPE_A, TYPE_AAAA):
            continue
        record = snapshot.prepare(qname.lower(), qtype).dynamic
        if record is None:
            continue
        placement = locate(geo, network)
        if placement is None:
            continue
        key = (id(record), placement.place, network if record.per_network else None)
        user = groups.get(key)
        if user is None:
            user = groups[key] = User(record, placement)
        user.weight += 1
        text = network_text(network)
        if len(user.networks) < 50 and text not in user.networks:
            user.networks.append(text)
    return list(groups.values())


def users_from_database(snapshot: Any) -> list[User]:
    """No traffic yet: every dynamic record, for one user per country of the database."""
    geo = snapshot.geo
    if geo is None:
        return []
    places = [
        Place(continent, code, None, None, float(latitude), float(longitude), "country")
        for code, (continent, latitude, longitude, _name) in sorted(country_points().items())
    ]
    users = []
    for record in dynamic_records(snapshot.zones):
        family = 4 if record.rtype == TYPE_A else 6
        for place in places:
            users.append(User(record, Placement(place, family, 0, 0), 1))
    return users


def _distance(sites: Mapping[str, Any], site: str | None, place: Place) -> float | None:
    """Distance from a place to the (first) site of an answer, or None when it has no location."""
    if not site:
        return None
    known = sites.get(site.split(",")[0])
    if known is None or getattr(known, "latitude", None) is None:
        return None
    return distance_km(place.latitude, place.longitude, known.latitude, known.longitude)


def _country(place: Place | None, names: Mapping[str, Any]) -> tuple[str, str]:
    code = (place.country if place is not None else None) or UNKNOWN_COUNTRY
    point = names.get(code)
    return code, (point[3] if point and point[3] else code)


async def _decide_all(
    users: list[User], downs: tuple[frozenset[str], ...]
) -> list[tuple[User, list[Any]]]:
    """Each user's decision under each health view, yielding to the loop between slices."""
    decided = []
    count = 0
    for user in users:
        decided.append((user, [evaluate(user.record, user.placement, down, 0) for down in downs]))
        count += len(downs)
        if count >= EVALUATIONS_PER_SLICE:
            count = 0
            await asyncio.sleep(0)
    return decided


def _users(snapshot: Any, entries: list[Entry]) -> tuple[list[User], str]:
    users = users_from_sample(snapshot, entries)
    if users:
        return users, "traffic"
    return users_from_database(snapshot), "database"


async def what_if(
    snapshot: Any,
    health: HealthState,
    action: str,
    site: str,
    entries: list[Entry],
    now: float | None = None,
) -> dict[str, Any]:
    """Who would move if `site` were drained or failed: rows by country, from and to site."""
    now = time.time() if now is None else now
    before = health.view.down
    after = down_after(health, action, site, now)
    users, source = _users(snapshot, entries)
    moves: dict[tuple[str, str | None, str | None], Move] = {}
    total = 0
    names = country_points()
    for user, (old, new) in await _decide_all(users, (before, after)):
        total += user.weight
        if (old.site, old.values) == (new.site, new.values):
            continue
        code, name = _country(user.placement.place, names)
        move = moves.get((code, old.site, new.site))
        if move is None:
            move = moves[code, old.site, new.site] = Move(code, name, old.site, new.site)
        move.weight += user.weight
        move.networks += len(user.networks) or 1
        move.records.add(f"{user.record.owner.rstrip('.')} {qtype_text(user.record.rtype)}")
        place = user.placement.place
        if place is not None:
            was = _distance(snapshot.sites, old.site, place)
            will = _distance(snapshot.sites, new.site, place)
            if was is not None and will is not None:
                move.added_km += (will - was) * user.weight
                move.known_km += user.weight
        for network in user.networks:
            if len(move.examples) < EXAMPLES and network not in move.examples:
                move.examples.append(network)
    rows = sorted(moves.values(), key=lambda m: (-m.weight, m.country, m.from_site or ""))
    moved = sum(m.weight for m in rows)
    return {
        "action": action,
        "site": site,
        "source": source,
        "down_now": sorted(before),
        "down_after": sorted(after),
        "total": total,
        "moved": moved,
        "moves": [m.to_json() for m in rows],
    }


async def destinations(snapshot: Any, health: HealthState, entries: list[Entry]) -> dict[str, Any]:
    """Where users of each country are sent now: {country: {name, sites: {site: weight}}}."""
    users, source = _users(snapshot, entries)
    names = country_points()
    countries: dict[str, dict[str, Any]] = {}
    for user, (decision,) in await _decide_all(users, (health.view.down,)):
        code, name = _country(user.placement.place, names)
        entry = countries.setdefault(code, {"name": name, "sites": {}})
        for site in (decision.site or "").split(","):
            if site:
                entry["sites"][site] = entry["sites"].get(site, 0) + user.weight
    return {"source": source, "countries": countries}


def format_table(result: Mapping[str, Any], running: bool = True) -> str:
    """`geodns whatif` output: one row per country and move, then a summary line (`running`:
    decided by a running server, not by the config alone)."""
    if result["source"] == "traffic":
        source = "networks seen in recent traffic"
    elif running:
        source = "one user per country (no traffic sampled yet)"
    else:
        source = "one user per country (no running server: this config, every site up)"
    lines = [
        f"what if {result['site']} were {'drained' if result['action'] == 'drain' else 'failed'}:"
        f" decided for {source}",
        f"down now:   {', '.join(result['down_now']) or 'none'}",
        f"down after: {', '.join(result['down_after']) or 'none'}",
    ]
    rows = [("COUNTRY", "FROM", "TO", "SHARE", "ADDED KM", "ADDED RTT", "RECORDS", "E.G.")]
    total = result["total"] or 1
    for move in result["moves"]:
        rows.append(
            (
                (
                    "not located"
                    if move["country"] == UNKNOWN_COUNTRY
                    else f"{move['name']} ({move['country']})"
                ),
                move["from"] or "-",
                move["to"] or "(none)",
                f"{100 * move['weight'] / total:.1f}%",
                "-" if move["added_km"] is None else f"{move['added_km']:+d}",
                "-" if move["added_rtt_ms"] is None else f"{move['added_rtt_ms']:+.1f} ms",
                ", ".join(move["records"]),
                ", ".join(move["examples"]),
            )
        )
    if len(rows) == 1:
        lines.append("nobody would move")
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
    lines.append(
        f"{result['moved']} of {result['total']} sampled user-queries would move"
        if result["source"] == "traffic"
        else f"{result['moved']} of {result['total']} (country, record) pairs would move"
    )
    return "\n".join(lines)

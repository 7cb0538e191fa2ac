"""What the configured geo database can tell, and the rules it makes dead.

A rule for `NA-US-CA` never matches when the database gives no subdivisions (the bundled
country database, a City database whose records carry no subdivision code), and one for
`AS-CY` never matches when the database never places a user in Cyprus. Nothing is wrong with
such a zone for octoDNS, so `geodns check` warns: `DatabaseFacts` says what the database holds,
`unmatchable()` lists the geos, rules and pools that cannot be reached with it.

`database_facts()` reads the place index of the database (every place's codes: exact), or, when
the index is not built yet, records sampled across the address space (whether records carry
subdivisions; which countries it covers is then not known).
"""

from __future__ import annotations

from dataclasses import dataclass

from geodns.geo.codes import COUNTRIES_OF
from geodns.geo.dynamic import DynamicRecord
from geodns.geo.locator import Geo


@dataclass(frozen=True, slots=True)
class DatabaseFacts:
    """What a database can place a user by: subdivisions or not, and which countries (None:
    not known)."""

    database_type: str
    has_subdivisions: bool
    countries: frozenset[str] | None


def database_facts(geo: Geo) -> DatabaseFacts:
    """The facts of the database in use: exact from its place index (every place's codes),
    else from records sampled across the address space (countries then not known)."""
    if geo.index is not None:
        codes = geo.index.codes
        countries = frozenset(country for _, country, _ in codes if country)
        has_subdivisions = any(subdivision for _, _, subdivision in codes)
        return DatabaseFacts(geo.database_type, has_subdivisions, countries)
    assert geo.direct is not None
    database = geo.direct.database
    places = [database.places.place(record) for record in database.sample_records()]
    has_subdivisions = any(place is not None and place.subdivision for place in places)
    return DatabaseFacts(geo.database_type, has_subdivisions, None)


def unmatchable(record: DynamicRecord, facts: DatabaseFacts) -> list[tuple[int, int, str]]:
    """(line, column, why) for each geo of the record's rules that the database can never
    match, and for each pool that only such rules lead to."""
    found: list[tuple[int, int, str]] = []
    live_rules = []
    for rule in record.rules:
        live = bool(rule.subnets) or not rule.geos
        for geo, (line, column) in zip(rule.geos, rule.places, strict=False):
            why = _why_never(geo, facts)
            if why is None:
                live = True
            else:
                found.append((line, column, f"rule {rule.number}: geo {geo} never matches: {why}"))
        if live:
            live_rules.append(rule)
    reached: set[str] = set()
    for name in [r.pool for r in live_rules] + [c.pool.name for c in record.candidates if c.pool]:
        while name in record.pools and name not in reached:
            reached.add(name)
            name = record.pools[name].fallback or ""
    if record.all_down in record.pools:
        reached.add(record.all_down)
    for pool in record.pools.values():
        if pool.name not in reached:
            found.append(
                (
                    pool.line,
                    pool.column,
                    f"pool '{pool.name}' is reached by no rule that can match with the "
                    f"database {facts.database_type}",
                )
            )
    return found


def _why_never(geo: str, facts: DatabaseFacts) -> str | None:
    parts = geo.split("-")
    if len(parts) == 3 and not facts.has_subdivisions:
        return (
            f"the database ({facts.database_type}) gives no subdivisions, so users in "
            f"{parts[1]} match {parts[0]}-{parts[1]} or {parts[0]} rules only"
        )
    if facts.countries is None:
        return None
    if len(parts) >= 2 and parts[1] not in facts.countries:
        return f"the database ({facts.database_type}) never places a user in {parts[1]}"
    if len(parts) == 1 and not (COUNTRIES_OF[parts[0]] & facts.countries):
        return f"the database ({facts.database_type}) places no user in {parts[0]}"
    return None

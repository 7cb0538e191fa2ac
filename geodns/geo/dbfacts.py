"""What the configured geo database can tell, and the rules it makes dead.

A rule for `NA-US-CA` never matches when the database gives no subdivisions (the bundled
country database, a City database whose records carry no subdivision code), and one for
`AS-CY` never matches when the database never places a user in Cyprus. Nothing is wrong with
such a zone for octoDNS, so `geodns check` warns: `DatabaseFacts` says what the database holds,
`unmatchable()` lists the geos, rules and pools that cannot be reached with it.

`database_facts()` reads the database's distinct records through its search tree: all of them
for a database with few (a country database has one per country), a sample otherwise (a City
database: whether records carry subdivisions; which countries it covers is then not known).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any

from maxminddb.decoder import Decoder

from geodns.geo.codes import COUNTRIES_OF
from geodns.geo.dynamic import DynamicRecord
from geodns.geo.locator import GeoLocator

ALL_RECORDS_LIMIT = 5_000  # decode every record of a database with at most this many
SAMPLE_SIZE = 2_000  # else decode this many to see whether records carry subdivisions
DATA_SECTION_SEPARATOR = 16  # bytes between the search tree and the data (MaxMind DB 2.0)


@dataclass(frozen=True, slots=True)
class DatabaseFacts:
    """What a database can place a user by: subdivisions or not, and which countries (None:
    not known)."""

    database_type: str
    has_subdivisions: bool
    countries: frozenset[str] | None


def database_facts(locator: GeoLocator) -> DatabaseFacts:
    """The facts of an open database, read from its distinct records."""
    tree = locator.tree
    node_count = tree.node_count
    leaves = sorted(value for value in set(tree.children) if value > node_count)
    complete = len(leaves) <= ALL_RECORDS_LIMIT
    sample = leaves if complete else leaves[:: max(1, len(leaves) // SAMPLE_SIZE)]
    search_tree_size = node_count * tree.record_size // 4
    countries: set[str] = set()
    has_subdivisions = False
    with (
        locator.path.open("rb") as file,
        mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer,
    ):
        decoder = Decoder(buffer, search_tree_size + DATA_SECTION_SEPARATOR)
        for leaf in sample:
            record: Any = decoder.decode(search_tree_size + leaf - node_count)[0]
            if not isinstance(record, dict):
                continue
            country = (record.get("country") or record.get("registered_country") or {}).get(
                "iso_code"
            )
            if country:
                countries.add(country)
            subdivisions = record.get("subdivisions") or [{}]
            has_subdivisions = has_subdivisions or bool(subdivisions[0].get("iso_code"))
    return DatabaseFacts(
        locator.database_type, has_subdivisions, frozenset(countries) if complete else None
    )


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

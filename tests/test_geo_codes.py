"""Geo codes mean what they mean to octoDNS: the same codes accepted, the same continent of a
country, at check time and when a user is placed.

geodns/geo/codes_table.py is a copy of octoDNS's table (scripts/build_geo_codes.py): these tests
compare it with the installed octoDNS, so a new octoDNS that moves a country fails here until
the script is run again.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from mmdb_factory import city_record, country_record, write_city_db, write_country_db
from octodns.record.geo import GeoCodes
from octodns.record.geo_data import geo_data

from geodns.geo.codes import CONTINENT_OF, SUBDIVISIONS_OF, continent_of, geo_problem
from geodns.geo.database import GeoDatabase
from geodns.geo.dbfacts import database_facts, unmatchable
from geodns.geo.dynamic import DynamicRecord, Pool, Rule, Target
from geodns.geo.index import build_index
from geodns.geo.locator import Geo


def test_the_table_is_octodns_own() -> None:
    assert {c: cont for cont, cs in geo_data.items() for c in cs} == CONTINENT_OF
    provinces = {
        country: frozenset(data["provinces"])
        for countries in geo_data.values()
        for country, data in countries.items()
        if data.get("provinces")
    }
    assert provinces == SUBDIVISIONS_OF


def every_code() -> list[str]:
    codes = list(geo_data)
    for continent, countries in geo_data.items():
        for country, data in countries.items():
            codes.append(f"{continent}-{country}")
            codes += [f"{continent}-{country}-{p}" for p in data.get("provinces", ())]
    return codes


WRONG = ["EU-CY", "XX-ZZ", "XX", "AS-US", "NA-US-XX", "EU-DE-BY", "eu", "NA-US-CA-X", "EU-GB-"]


@pytest.mark.parametrize("code", [*WRONG, *every_code()[::7]])
def test_geodns_refuses_the_codes_octodns_refuses(code: str) -> None:
    try:
        octodns_refuses = bool(GeoCodes.validate(code, "", validator_id="geo"))
    except KeyError:  # octoDNS's own refusal of a subdivision in a country it has none for
        octodns_refuses = True
    assert (geo_problem(code) is not None) == octodns_refuses, geo_problem(code)


def test_every_code_octodns_knows_is_accepted() -> None:
    assert [code for code in every_code() if geo_problem(code)] == []


@pytest.mark.parametrize(
    "country,octodns_continent", [("CY", "AS"), ("CX", "AS"), ("TL", "AS"), ("GS", "SA")]
)
def test_a_user_is_placed_on_octodns_continent_not_the_database_one(
    tmp_path: Path, country: str, octodns_continent: str
) -> None:
    """The database (like GeoNames) puts these countries on another continent; a rule means
    octoDNS's continent, so the user is placed there."""
    other = "EU" if octodns_continent == "AS" else "AN"
    path = write_city_db(
        tmp_path / "city.mmdb", [("192.0.2.0/24", city_record(country, other, 1.0, 2.0))]
    )
    place = place_at(geo_of(path), "192.0.2.1")
    assert place is not None and (place.country, place.continent) == (  # type: ignore[attr-defined]
        country,
        octodns_continent,
    )
    assert continent_of(country) == octodns_continent


def test_the_database_continent_is_kept_for_a_country_octodns_does_not_know(tmp_path: Path) -> None:
    path = write_city_db(
        tmp_path / "city.mmdb", [("192.0.2.0/24", city_record("XK", "EU", 42.6, 21.2))]
    )
    assert place_at(geo_of(path), "192.0.2.1").continent == "EU"  # type: ignore[attr-defined]


def geo_of(path: Path) -> Geo:
    """The geography geodns serves from a database: its place index, built now."""
    database = GeoDatabase(path, str(path), 0, continent_of)
    return Geo.from_index(database, build_index(database))


def place_at(geo: Geo, address: str) -> object:
    value = int(ipaddress.ip_address(address))
    return geo.locate(4, value).place


def record(rules: tuple[Rule, ...], pools: dict[str, Pool]) -> DynamicRecord:
    return DynamicRecord("a.example.", 1, 60, (Target("192.0.2.9", None),), pools, rules, False, ())


def pool(name: str, line: int) -> Pool:
    return Pool(name, (Target("192.0.2.1", None),), None, None, None, line, 7)


def test_database_facts_and_the_rules_they_make_dead(tmp_path: Path) -> None:
    country_db = write_country_db(
        tmp_path / "country.mmdb",
        [
            ("192.0.2.0/25", country_record("US", "NA")),
            ("192.0.2.128/25", country_record("JP", "AS")),
        ],
    )
    city_db = write_city_db(
        tmp_path / "city.mmdb",
        [("192.0.2.0/24", city_record("US", "NA", 37.4, -122.1, None, "CA"))],
    )
    country, city = (database_facts(geo_of(path)) for path in (country_db, city_db))
    assert (country.has_subdivisions, country.countries) == (False, frozenset({"US", "JP"}))
    assert city.has_subdivisions
    rules = (
        Rule(1, "west", (), ("NA-US-CA",), ((10, 13),)),
        Rule(2, "cyprus", (), ("AS-CY",), ((12, 13),)),
        Rule(3, "rest", (), ()),
    )
    pools = {"west": pool("west", 3), "cyprus": pool("cyprus", 5), "rest": pool("rest", 7)}
    doubts = unmatchable(record(rules, pools), country)
    assert [(line, column) for line, column, _ in doubts] == [(10, 13), (12, 13), (3, 7), (5, 7)]
    assert "no subdivisions" in doubts[0][2] and "never places a user in CY" in doubts[1][2]
    assert "pool 'west' is reached by no rule" in doubts[2][2]
    assert (
        unmatchable(
            record(rules[:1] + rules[2:], {"west": pools["west"], "rest": pools["rest"]}), city
        )
        == []
    )


def test_the_bundled_database_covers_what_its_readme_says() -> None:
    facts = database_facts(
        geo_of(Path(__file__).resolve().parents[1] / "geodns" / "data" / "geodns-country.mmdb")
    )
    assert not facts.has_subdivisions
    assert facts.countries is not None and len(facts.countries) == 251

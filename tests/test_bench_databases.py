"""The benchmark's twin of a flat-schema database in MaxMind's City schema.

gdnsd (and Knot's mod-geoip) read only MaxMind's schema, so on ip-location-db's flat GeoLite2 City
the bench gives them a twin that bench.databases.maxmind_twin writes: its figures compare the two
servers only if the twin places every address exactly where the original does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import maxminddb
from mmdb_factory import write_db

from bench import databases, servers
from bench.popsets import six_pops


def flat(latitude: float, longitude: float, country: str) -> dict[str, Any]:
    """A record in ip-location-db's flat city schema."""
    return {
        "city": "",
        "country_code": country,
        "latitude": latitude,
        "longitude": longitude,
        "postcode": "",
        "state1": "",
        "state2": "",
        "timezone": "",
    }


ENTRIES = [
    ("192.0.2.0/24", flat(52.52000045776367, 13.404999732971191, "DE")),
    ("198.51.100.0/25", flat(40.71269989013672, -74.00599670410156, "US")),
    ("198.51.100.128/25", flat(-23.55049991607666, -46.63330078125, "BR")),
    ("203.0.113.0/26", flat(52.52000045776367, 13.404999732971191, "DE")),  # a place again
    ("2001:db8::/32", flat(35.68949890136719, 139.69169616699219, "JP")),
]
ADDRESSES = ("192.0.2.7", "198.51.100.1", "198.51.100.200", "203.0.113.9", "2001:db8::1", "8.8.8.8")


def test_the_twin_places_every_address_where_the_flat_database_does(tmp_path: Path) -> None:
    source = write_db(tmp_path / "flat.mmdb", ENTRIES, "city ipv4", alias_ipv4=False)
    twin = databases.maxmind_twin(source, tmp_path / "twin.mmdb", lambda _line: None)
    with maxminddb.open_database(str(source)) as flat_db, maxminddb.open_database(str(twin)) as db:
        assert db.metadata().database_type == "GeoIP2-City"
        for address in ADDRESSES:
            original, prefix = flat_db.get_with_prefix_len(address)
            copied, twin_prefix = db.get_with_prefix_len(address)
            if original is None:
                assert copied is None, address
                continue
            assert isinstance(original, dict)
            assert copied == {
                "location": {
                    "latitude": original["latitude"],
                    "longitude": original["longitude"],
                },
                "country": {"iso_code": original["country_code"]},
            }, address
            assert twin_prefix == prefix, address


def test_the_twin_is_written_once_per_source(tmp_path: Path) -> None:
    source = write_db(tmp_path / "flat.mmdb", ENTRIES, "city ipv4", alias_ipv4=False)
    lines: list[str] = []
    twin = databases.maxmind_twin(source, tmp_path / "twin.mmdb", lines.append)
    written = twin.stat().st_mtime_ns
    assert databases.maxmind_twin(source, tmp_path / "twin.mmdb", lines.append) == twin
    assert twin.stat().st_mtime_ns == written and len(lines) == 2  # one write, two lines
    write_db(source, ENTRIES[:2], "city ipv4", alias_ipv4=False)  # a new release of the source
    databases.maxmind_twin(source, tmp_path / "twin.mmdb", lines.append)
    with maxminddb.open_database(str(twin)) as db:
        assert db.get("203.0.113.9") is None


def test_gdnsd_is_given_the_twin_and_geodns_the_original(tmp_path: Path) -> None:
    setup = servers.Setup(tmp_path / "flat.mmdb", six_pops(), gdnsd_db=tmp_path / "twin.mmdb")
    geodns = servers.write_geodns(tmp_path / "geodns", 5300, setup).read_text()
    servers.write_gdnsd(tmp_path / "gdnsd", 5301, setup)
    gdnsd = (tmp_path / "gdnsd" / "config").read_text()
    assert str(tmp_path / "flat.mmdb") in geodns and "twin.mmdb" not in geodns
    assert f"geoip2_db => {tmp_path / 'twin.mmdb'}" in gdnsd

"""Where a user is: a MaxMind-format database (GeoIP2/GeoLite2/DB-IP City or Country) read
through geoip2's maxminddb reader, with a cache per client network.

A City database gives coordinates; a Country database gives only a country, which is placed at a
representative point (the population-weighted centre of its cities, geodns/data/country_points.csv).
A `Place` is interned, so thousands of networks in one city share one object and the per-record
decision caches stay small. The locator is immutable apart from its caches and is replaced whole
when the database file changes.
"""

from __future__ import annotations

import csv
import ipaddress
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import maxminddb

from geodns.common.caching import make_room
from geodns.geo.codes import continent_of
from geodns.geo.mmdbtree import NO_RECORD, SearchTree

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
COUNTRY_POINTS = DATA_DIR / "country_points.csv"
PLACEMENT_CACHE_LIMIT = 100_000  # resolver addresses
RECORD_CACHE_LIMIT = 1_000_000  # database records: more than any City database has
EARTH_RADIUS_KM = 6371.0
_UNSEEN: Any = object()  # a database record not decoded yet
FIBRE_KM_PER_MS = 200.0  # light in fibre: about 200,000 km/s


@dataclass(frozen=True, slots=True, eq=False)
class Place:
    """A located user: codes for octoDNS geo rules and coordinates for distances."""

    continent: str | None
    country: str | None
    subdivision: str | None
    city: str | None
    latitude: float
    longitude: float
    precision: str  # "city" (coordinates from the database) or "country" (representative point)


class Placement(NamedTuple):
    """One client network looked up: its place (None if unknown) and the database network.

    A NamedTuple because one is made per query from a network not seen before: a frozen
    dataclass costs about a microsecond more to build.
    """

    place: Place | None
    family: int  # 4 or 6
    address: int
    prefix: int  # the database network's prefix length; the answer holds for all of it

    @property
    def network(self) -> str:
        bits = 32 if self.family == 4 else 128
        base = self.address >> (bits - self.prefix) << (bits - self.prefix) if self.prefix else 0
        cls = ipaddress.IPv4Network if self.family == 4 else ipaddress.IPv6Network
        return str(cls((base, self.prefix)))


def load_country_points(path: Path = COUNTRY_POINTS) -> dict[str, tuple[str, float, float, str]]:
    """ISO country code -> (continent code, latitude, longitude, name)."""
    points: dict[str, tuple[str, float, float, str]] = {}
    if not path.exists():
        return points
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            points[row["iso_code"]] = (
                row["continent_code"],
                float(row["lat"]),
                float(row["lon"]),
                row.get("name", ""),
            )
    return points


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in kilometres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def haversine_point(latitude: float, longitude: float) -> tuple[float, float, float]:
    """A point as `distances_km` takes it: its latitude's radians and cosine, its longitude."""
    phi = math.radians(latitude)
    return phi, math.cos(phi), longitude


def distances_km(
    latitude: float, longitude: float, points: tuple[tuple[float, float, float], ...]
) -> list[float]:
    """The distance_km from one place to each of `points` (see haversine_point): the same
    arithmetic, so the very same values, with each point's trigonometry done once rather than
    per call (a new client place is ranked against every site)."""
    phi1 = math.radians(latitude)
    cos1 = math.cos(phi1)
    sin, radians = math.sin, math.radians
    return [
        2
        * EARTH_RADIUS_KM
        * math.asin(
            min(
                1.0,
                math.sqrt(
                    sin((phi2 - phi1) / 2) ** 2
                    + cos1 * cos2 * sin(radians(lon2 - longitude) / 2) ** 2
                ),
            )
        )
        for phi2, cos2, lon2 in points
    ]


def fibre_rtt_ms(km: float) -> float:
    """The round trip that a distance implies over fibre (both ways at ~200,000 km/s)."""
    return 2 * km / FIBRE_KM_PER_MS


class GeoLocator:
    """Looks up client addresses in one database file; caches per network, decodes each database
    record once and interns places."""

    def __init__(self, path: Path, points: dict[str, tuple[str, float, float, str]] | None = None):
        self.path = path
        stat = path.stat()
        self.signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        self.reader = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)
        metadata = self.reader.metadata()
        self.database_type: str = metadata.database_type
        self.build_epoch: int = metadata.build_epoch
        self.ip_version: int = metadata.ip_version
        self.tree = SearchTree(path, metadata.node_count, metadata.record_size, self.ip_version)
        self.points = load_country_points() if points is None else points
        self.places: dict[tuple[Any, ...], Place] = {}
        self.records: dict[int, Place | None] = {NO_RECORD: None}
        self.cache: dict[Any, Placement] = {}

    def changed_on_disk(self) -> bool:
        try:
            stat = os.stat(self.path)
        except OSError:
            return False
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino) != self.signature

    def placement(self, key: Any) -> Placement:
        """The placement of a client: `key` is an IP string or an ECS (family, source, bytes).

        Resolvers are few and each asks often: their placements are cached. An ECS subnet is
        looked up each time (a short tree walk): the server caches its whole answer whenever the
        answer depends on nothing else, so a cache here would mostly hold one-off networks.
        """
        if not isinstance(key, str):
            if key[0] == 1:
                return self.locate(4, int.from_bytes(key[2].ljust(4, b"\x00")))
            return self.locate(6, int.from_bytes(key[2].ljust(16, b"\x00")))
        found = self.cache.get(key)
        if found is None:
            address = ipaddress.ip_address(key.split("%", 1)[0])
            found = self.locate(address.version, int(address))
            make_room(self.cache, PLACEMENT_CACHE_LIMIT)
            self.cache[key] = found
        return found

    def locate(self, family: int, value: int) -> Placement:
        """The placement of an address given as its family (4 or 6) and integer value."""
        if family == 6 and value >> 32 == 0xFFFF:  # IPv4-mapped: the IPv4 address's place
            family, value = 4, value & 0xFFFFFFFF
        place, prefix = self.place_of(family, value)
        return Placement(place, family, value, prefix)

    def place_of(self, family: int, value: int) -> tuple[Place | None, int]:
        """(place, prefix length of its database network) of an address; no IPv4 mapping."""
        if family == 6 and self.ip_version == 4:
            return None, 0
        record, prefix = self.tree.lookup(family, value)
        place = self.records.get(record, _UNSEEN)
        if place is _UNSEEN:
            place = self.place_of_record(record, family, value)
        return place, prefix

    def place_of_record(self, record: int, family: int, value: int) -> Place | None:
        """The place of a database record (as `tree.lookup` names it) that holds the address
        `value`: decoded the first time, then cached."""
        place = self.records.get(record, _UNSEEN)
        if place is _UNSEEN:
            address = ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)
            place = self._place(self.reader.get(address))
            make_room(self.records, RECORD_CACHE_LIMIT)
            self.records[record] = place
        return place

    def _place(self, record: Any) -> Place | None:
        if not isinstance(record, dict):
            return None
        country = (record.get("country") or record.get("registered_country") or {}).get("iso_code")
        continent = continent_of(country) or (record.get("continent") or {}).get("code")
        subdivisions = record.get("subdivisions") or []
        subdivision = subdivisions[0].get("iso_code") if subdivisions else None
        city = ((record.get("city") or {}).get("names") or {}).get("en")
        location = record.get("location") or {}
        latitude, longitude = location.get("latitude"), location.get("longitude")
        precision = "city"
        if latitude is None or longitude is None:
            point = self.points.get(country or "")
            if point is None:
                return None
            continent = continent or point[0]
            latitude, longitude, precision = point[1], point[2], "country"
        elif continent is None and country in self.points:
            continent = self.points[country][0]
        key = (continent, country, subdivision, city, float(latitude), float(longitude), precision)
        place = self.places.get(key)
        if place is None:
            place = self.places[key] = Place(*key)
        return place

    def close(self) -> None:
        self.reader.close()
        self.tree.close()

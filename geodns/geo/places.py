"""Where a user is: `Place` (codes for octoDNS rules, coordinates for distances), the record
schemas a place is read from, and the distance arithmetic every ranking uses.

A database record becomes a Place by one of two readers, chosen once per database by
`schema_of` (geodns.geo.database checks it at check, start and reload):

- "geoip2": MaxMind's and DB-IP's City and Country databases (`country.iso_code`,
  `continent.code`, `subdivisions[0].iso_code`, `city.names.en`, `location.latitude/longitude`).
- "flat": one flat map per network, as ip-location-db (`country_code`, `latitude`,
  `longitude`, `city`) and ipinfo-style databases (`country`) write them. Flat databases carry
  subdivision names, not ISO codes, so subdivision rules never match with them.

A record without coordinates is placed at its country's representative point (the
population-weighted centre of its cities, geodns/data/country_points.csv). The continent is
always the one octoDNS gives the country, whatever the database says, so that a rule means what
it means in octoDNS.
"""

from __future__ import annotations

import csv
import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
COUNTRY_POINTS = DATA_DIR / "country_points.csv"
EARTH_RADIUS_KM = 6371.0
# sites are ordered by distance rounded to this many decimals of a kilometre (a micrometre), then
# by name: one place ranked in Python and all places ranked with numpy (geodns.geo.ranking) then
# agree, whatever the last bit of their trigonometry
DISTANCE_DECIMALS = 9
FIBRE_KM_PER_MS = 200.0  # light in fibre: about 200,000 km/s

CountryPoints = dict[str, tuple[str, float, float, str]]


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

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two places the same place (places are interned by it)."""
        return (
            self.continent,
            self.country,
            self.subdivision,
            self.city,
            self.latitude,
            self.longitude,
            self.precision,
        )


class Placement(NamedTuple):
    """One client address located: its place (None if unknown) and the widest block around it
    that has the same place (`prefix`), so a decision about the place holds for all of it.

    A NamedTuple because one is made per query on the slow path: a frozen dataclass costs
    about a microsecond more to build.
    """

    place: Place | None
    family: int  # 4 or 6
    address: int
    prefix: int

    @property
    def network(self) -> str:
        bits = 32 if self.family == 4 else 128
        base = self.address >> (bits - self.prefix) << (bits - self.prefix) if self.prefix else 0
        cls = ipaddress.IPv4Network if self.family == 4 else ipaddress.IPv6Network
        return str(cls((base, self.prefix)))


def load_country_points(path: Path = COUNTRY_POINTS) -> CountryPoints:
    """ISO country code -> (continent code, latitude, longitude, name)."""
    points: CountryPoints = {}
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


# -- reading places out of database records --------------------------------------------------

GEOIP2 = "geoip2"
FLAT = "flat"


def schema_of(record: Any) -> str | None:
    """Which reader a database record needs, or None when it has nothing to place a user by."""
    if not isinstance(record, Mapping):
        return None
    if any(isinstance(record.get(key), Mapping) for key in ("country", "location", "continent")):
        return GEOIP2
    if isinstance(record.get("registered_country"), Mapping):
        return GEOIP2
    if isinstance(record.get("country_code"), str) or _flat_country(record.get("country")):
        return FLAT
    if _number(record.get("latitude")) and _number(record.get("longitude")):
        return FLAT
    return None


def _flat_country(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 2 and value.isalpha()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class PlaceReader:
    """Turns database records of one schema into interned Places."""

    def __init__(
        self, schema: str, points: CountryPoints, continent_of: Callable[[str], str | None]
    ) -> None:
        self.fields = _geoip2_fields if schema == GEOIP2 else _flat_fields
        self.points = points
        self.continent_of = continent_of
        self.places: dict[tuple[Any, ...], Place] = {}

    def place(self, record: Any) -> Place | None:
        """The place of a record, or None when neither its country nor its coordinates are
        known. Equal places are one object."""
        if not isinstance(record, Mapping):
            return None
        country, subdivision, city, latitude, longitude, continent = self.fields(record)
        precision = "city"
        point = self.points.get(country or "")
        if not (_number(latitude) and _number(longitude)):
            if point is None:
                return None
            latitude, longitude, precision = point[1], point[2], "country"
        if country:  # octoDNS's continent; the database's only for a country octoDNS lacks
            continent = self.continent_of(country) or continent or (point[0] if point else None)
        key = (continent, country, subdivision, city, float(latitude), float(longitude), precision)
        place = self.places.get(key)
        if place is None:
            place = self.places[key] = Place(*key)
        return place


Fields = tuple[Any, Any, Any, Any, Any, Any]  # country, subdivision, city, lat, lon, continent


def _geoip2_fields(record: Mapping[str, Any]) -> Fields:
    country = (record.get("country") or record.get("registered_country") or {}).get("iso_code")
    subdivisions = record.get("subdivisions") or []
    subdivision = subdivisions[0].get("iso_code") if subdivisions else None
    city = ((record.get("city") or {}).get("names") or {}).get("en")
    location = record.get("location") or {}
    continent = (record.get("continent") or {}).get("code")
    latitude, longitude = location.get("latitude"), location.get("longitude")
    return country, subdivision, city, latitude, longitude, continent


def _flat_fields(record: Mapping[str, Any]) -> Fields:
    country = record.get("country_code")
    if country is None and _flat_country(record.get("country")):
        country = record["country"]
    city = record.get("city") or None
    continent = record.get("continent_code") or record.get("continent")
    if not (isinstance(continent, str) and len(continent) == 2):
        continent = None
    return country, None, city, record.get("latitude"), record.get("longitude"), continent


# -- distances ---------------------------------------------------------------------------------


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in kilometres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def fibre_rtt_ms(km: float) -> float:
    """The round trip that a distance implies over fibre (both ways at ~200,000 km/s)."""
    return 2 * km / FIBRE_KM_PER_MS

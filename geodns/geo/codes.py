"""octoDNS's geo codes: which continent a country is in, and which codes a rule may name.

A dynamic rule names `AS`, `AS-ID` or `NA-US-CA`: a continent, a country in it, a subdivision
of that country. The continent of a country is octoDNS's, not the database's, so a rule means
what it means to octoDNS: an `AS` rule matches a user in Cyprus, Christmas Island or Timor-Leste
and an `SA` rule one in South Georgia, whatever continent a GeoIP database or GeoNames gives
them (geodns.geo.locator places every user through `continent_of`). The table is octoDNS's own
(geodns/geo/codes_table.py, generated from the installed octoDNS by scripts/build_geo_codes.py).
"""

from __future__ import annotations

from geodns.geo.codes_table import COUNTRIES, SUBDIVISIONS

COUNTRIES_OF: dict[str, frozenset[str]] = {
    continent: frozenset(countries.split()) for continent, countries in COUNTRIES.items()
}
CONTINENT_OF: dict[str, str] = {
    country: continent for continent, countries in COUNTRIES_OF.items() for country in countries
}
SUBDIVISIONS_OF: dict[str, frozenset[str]] = {
    country: frozenset(codes.split()) for country, codes in SUBDIVISIONS.items()
}


def continent_of(country: str | None) -> str | None:
    """octoDNS's continent of an ISO 3166 country code; None for a code it does not know."""
    return CONTINENT_OF.get(country) if country else None


def geo_problem(code: str) -> str | None:
    """Why octoDNS refuses a rule's geo code, or None when it accepts it."""
    parts = code.split("-")
    if len(parts) > 3:
        return f"invalid geo code '{code}': expected AS, AS-ID or NA-US-CA"
    continent = parts[0]
    if continent not in COUNTRIES_OF:
        hint = " (codes are upper case)" if continent.upper() in COUNTRIES_OF else ""
        return (
            f"unknown continent code '{code}'{hint}: expected one of "
            f"{', '.join(sorted(COUNTRIES_OF))}"
        )
    if len(parts) > 1 and parts[1] not in COUNTRIES_OF[continent]:
        where = CONTINENT_OF.get(parts[1].upper())
        hint = f" ({parts[1].upper()} is in {where}: {where}-{parts[1].upper()})" if where else ""
        return f"unknown country code '{code}': {parts[1]} is not a country of {continent}{hint}"
    if len(parts) > 2 and parts[2] not in SUBDIVISIONS_OF.get(parts[1], frozenset()):
        known = ", ".join(sorted(SUBDIVISIONS_OF)) or "none"
        return (
            f"unknown subdivision code '{code}': octoDNS knows the subdivisions of {known} only"
            if parts[1] not in SUBDIVISIONS_OF
            else f"unknown subdivision code '{code}': {parts[2]} is not a subdivision of {parts[1]}"
        )
    return None

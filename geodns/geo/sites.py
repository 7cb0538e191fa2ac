"""Sites: the PoPs and data centres that dynamic records answer with.

A site is declared once in the config (where it is, its addresses, its health checks, the data
centres it depends on) and used by any number of records in any zone. An address in a record that
belongs to a site takes that site's location and health.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any

from geodns.common.errors import Problem, did_you_mean
from geodns.common.reader import Reader
from geodns.common.yamlsrc import MarkedDict, MarkedList

SITE_KEYS = ("kind", "location", "addresses", "weight", "datacenters", "checks", "city", "country")
CHECK_KEYS = (
    "type",
    "address",
    "port",
    "path",
    "host",
    "expect_status",
    "body",
    "verify_tls",
    "interval",
    "timeout",
    "fall",
    "rise",
    "query_name",
    "query_type",
)
CHECK_TYPES = ("http", "https", "tcp", "dns")


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One health check of a site. The probed address may differ from the answered one."""

    type: str
    address: str
    port: int
    path: str = "/"
    host: str | None = None
    expect_status: tuple[int, ...] = (200,)
    body: str | None = None
    verify_tls: bool = True
    interval: float = 5.0
    timeout: float = 2.0
    fall: int = 3
    rise: int = 2
    query_name: str = "."
    query_type: str = "SOA"

    @property
    def key(self) -> str:
        """Identifies the probe target, so one probe serves every site and record that uses it."""
        where = f"[{self.address}]" if ":" in self.address else self.address
        detail = self.path if self.type in ("http", "https") else self.query_name
        return f"{self.type}://{where}:{self.port}{detail if self.type != 'tcp' else ''}"


@dataclass(frozen=True, slots=True)
class Site:
    """A PoP or data centre: where it is, what it answers with, what it depends on."""

    name: str
    kind: str
    latitude: float
    longitude: float
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    weight: int = 1
    datacenters: tuple[str, ...] = ()
    checks: tuple[CheckSpec, ...] = ()
    city: str | None = None
    country: str | None = None


def parse_sites(path: str, value: Any, line: int) -> tuple[dict[str, Site], list[Problem]]:
    """Check the config's `sites:` mapping; return the sites and every problem found."""
    problems: list[Problem] = []
    sites: dict[str, Site] = {}
    if value is None:
        return sites, problems
    if not isinstance(value, MarkedDict):
        return sites, [Problem(path, line, "sites: expected a mapping of site name to settings")]
    owner: dict[str, str] = {}
    for name, spec in value.items():
        site = _parse_site(path, str(name), spec, value.line_of(name), problems)
        if site is None:
            continue
        for address in site.ipv4 + site.ipv6:
            if address in owner:
                problems.append(
                    Problem(
                        path,
                        value.line_of(name),
                        f"sites.{name}: address {address} already belongs to site '{owner[address]}'",
                    )
                )
            owner[address] = site.name
        sites[site.name] = site
    for site in sites.values():
        for dc in site.datacenters:
            target = sites.get(dc)
            if target is None or target.kind != "dc":
                problems.append(
                    Problem(
                        path,
                        value.line_of(site.name),
                        f"sites.{site.name}.datacenters: '{dc}' is not a site of kind dc"
                        f"{did_you_mean(dc, [s for s in sites if sites[s].kind == 'dc'])}",
                    )
                )
    return sites, problems


def _parse_site(path: str, name: str, spec: Any, line: int, problems: list[Problem]) -> Site | None:
    if not isinstance(spec, MarkedDict):
        problems.append(
            Problem(
                path, line, f"sites.{name}: expected a mapping with kind, location and addresses"
            )
        )
        return None
    before = len(problems)
    site = Reader(path, spec, f"sites.{name}", SITE_KEYS, problems)
    kind = site.choice("kind", ("pop", "dc"), "pop")
    latitude, longitude = _location(site)
    ipv4: list[str] = []
    ipv6: list[str] = []
    addresses = site.items("addresses", "a list of IPv4/IPv6 addresses")
    if not addresses:
        site.problem("addresses", "expected a list of IPv4/IPv6 addresses")
    for index, address in enumerate(addresses):
        try:
            parsed = ipaddress.ip_address(str(address))
        except ValueError:
            site.add(
                addresses.line_of(index),
                f"{site.where}.addresses: {address!r} is not an IP address",
            )
            continue
        (ipv4 if parsed.version == 4 else ipv6).append(str(parsed))
    weight = site.int_in("weight", 1, 1_000_000, 1)
    datacenters = site.strings("datacenters", [], "a list of dc site names")
    default_address = (ipv4 or ipv6 or ["127.0.0.1"])[0]
    checks = []
    raw_checks = site.items("checks", "a list of checks")
    for index, raw in enumerate(raw_checks):
        check = _parse_check(site, raw, raw_checks.line_of(index), default_address)
        if check is not None:
            checks.append(check)
    if len(problems) > before:
        return None
    return Site(
        name=name,
        kind=kind,
        latitude=latitude,
        longitude=longitude,
        ipv4=tuple(ipv4),
        ipv6=tuple(ipv6),
        weight=weight,
        datacenters=tuple(datacenters),
        checks=tuple(checks),
        city=site.text("city", None),
        country=site.text("country", None),
    )


def _location(site: Reader) -> tuple[float, float]:
    """`location: {lat: .., lon: ..}` (or `[lat, lon]`) in degrees, each in its range."""
    location = site.mapping.get("location")
    if isinstance(location, MarkedDict) and {"lat", "lon"} <= set(location):
        latitude, longitude = location["lat"], location["lon"]
    elif isinstance(location, MarkedList) and len(location) == 2:
        latitude, longitude = location
    else:
        site.problem("location", "expected {lat: ..., lon: ...} in degrees")
        return 0.0, 0.0
    if not (_number(latitude) and -90 <= latitude <= 90):
        site.problem("location", f"latitude must be -90..90, got {latitude!r}")
        latitude = 0.0
    if not (_number(longitude) and -180 <= longitude <= 180):
        site.problem("location", f"longitude must be -180..180, got {longitude!r}")
        longitude = 0.0
    return float(latitude), float(longitude)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_check(site: Reader, raw: Any, line: int, default_address: str) -> CheckSpec | None:
    where = f"{site.where}.checks"
    if not isinstance(raw, MarkedDict):
        site.add(line, f"{where}: each check is a mapping with a type (http, https, tcp, dns)")
        return None
    before = len(site.errors())
    check = Reader(site.path, raw, where, CHECK_KEYS, site.problems)
    if "type" not in raw:
        check.add(raw.line, f"{where}: type is required: one of {', '.join(CHECK_TYPES)}")
        return None
    kind = check.choice("type", CHECK_TYPES, "")
    if not kind:
        return None
    address = str(raw.get("address", default_address))
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        check.problem("address", f"must be an IP address, got {address!r}")
    default_port = {"http": 80, "https": 443, "tcp": 80, "dns": 53}[kind]
    port = check.int_in("port", 1, 65535, default_port)
    fall = check.int_in("fall", 1, 100, 3)
    rise = check.int_in("rise", 1, 100, 2)
    interval = check.number_in("interval", 0.001, 3600, 5.0)
    timeout = check.number_in("timeout", 0.001, 3600, 2.0)
    if timeout > interval:
        check.problem("timeout", "must not be longer than interval")
    statuses = raw.get("expect_status", [200])
    if isinstance(statuses, int):
        statuses = [statuses]
    if not isinstance(statuses, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in statuses
    ):
        check.problem("expect_status", "must be a list of status codes")
        statuses = [200]
    if len(site.errors()) > before:
        return None
    return CheckSpec(
        type=kind,
        address=address,
        port=port,
        path=str(raw.get("path", "/")),
        host=check.text("host", None),
        expect_status=tuple(statuses),
        body=check.text("body", None),
        verify_tls=check.boolean("verify_tls", True),
        interval=interval,
        timeout=timeout,
        fall=fall,
        rise=rise,
        query_name=str(raw.get("query_name", ".")),
        query_type=str(raw.get("query_type", "SOA")).upper(),
    )

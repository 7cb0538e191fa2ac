"""Sites: the PoPs and data centres that dynamic records answer with.

A site is declared once in the config (where it is, its addresses, its health checks, the data
centres it depends on) and used by any number of records in any zone. An address in a record that
belongs to a site takes that site's location and health.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from geodns.errors import Problem, did_you_mean, report_unknown_keys
from geodns.yamlsrc import MarkedDict, MarkedList

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

    def addresses(self, family: int) -> tuple[str, ...]:
        return self.ipv4 if family == 4 else self.ipv6


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
    def add(at: int, message: str) -> None:
        problems.append(Problem(path, at, f"sites.{name}: {message}"))

    if not isinstance(spec, MarkedDict):
        add(line, "expected a mapping with kind, location and addresses")
        return None
    before = len(problems)
    report_unknown_keys(spec, SITE_KEYS, add)
    kind = spec.get("kind", "pop")
    if kind not in ("pop", "dc"):
        add(spec.line_of("kind"), f"kind: expected pop or dc, got {kind!r}")
    location = spec.get("location")
    latitude = longitude = 0.0
    if isinstance(location, MarkedDict) and {"lat", "lon"} <= set(location):
        latitude, longitude = location["lat"], location["lon"]
    elif isinstance(location, MarkedList) and len(location) == 2:
        latitude, longitude = location
    else:
        add(spec.line_of("location"), "location: expected {lat: ..., lon: ...} in degrees")
    if not (_number(latitude) and -90 <= latitude <= 90):
        add(spec.line_of("location"), f"location: latitude must be -90..90, got {latitude!r}")
    if not (_number(longitude) and -180 <= longitude <= 180):
        add(spec.line_of("location"), f"location: longitude must be -180..180, got {longitude!r}")
    ipv4: list[str] = []
    ipv6: list[str] = []
    addresses = spec.get("addresses")
    if not isinstance(addresses, MarkedList) or not addresses:
        add(spec.line_of("addresses"), "addresses: expected a list of IPv4/IPv6 addresses")
        addresses = MarkedList()
        addresses.line, addresses.item_lines = line, []
    for index, address in enumerate(addresses):
        try:
            parsed = ipaddress.ip_address(str(address))
        except ValueError:
            add(addresses.line_of(index), f"addresses: {address!r} is not an IP address")
            continue
        (ipv4 if parsed.version == 4 else ipv6).append(str(parsed))
    weight = spec.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 < weight <= 1_000_000:
        add(spec.line_of("weight"), f"weight: expected a whole number from 1, got {weight!r}")
    datacenters = spec.get("datacenters", [])
    if isinstance(datacenters, str):
        datacenters = [datacenters]
    if not isinstance(datacenters, list) or not all(isinstance(d, str) for d in datacenters):
        add(spec.line_of("datacenters"), "datacenters: expected a list of dc site names")
        datacenters = []
    default_address = (ipv4 or ipv6 or ["127.0.0.1"])[0]
    checks = []
    raw_checks = spec.get("checks", MarkedList())
    if not isinstance(raw_checks, MarkedList):
        add(spec.line_of("checks"), "checks: expected a list of checks")
        raw_checks = []
    for index, raw in enumerate(raw_checks):
        check = _parse_check(raw, raw_checks.line_of(index), default_address, add)
        if check is not None:
            checks.append(check)
    if len(problems) > before:
        return None
    return Site(
        name=name,
        kind=kind,
        latitude=float(latitude),
        longitude=float(longitude),
        ipv4=tuple(ipv4),
        ipv6=tuple(ipv6),
        weight=weight,
        datacenters=tuple(datacenters),
        checks=tuple(checks),
        city=spec.get("city"),
        country=spec.get("country"),
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_check(raw: Any, line: int, default_address: str, add: Any) -> CheckSpec | None:
    if not isinstance(raw, MarkedDict):
        add(line, "checks: each check is a mapping with a type (http, https, tcp, dns)")
        return None
    ok = not report_unknown_keys(raw, CHECK_KEYS, add, "checks: ")
    kind = raw.get("type")
    if kind not in CHECK_TYPES:
        add(
            raw.line_of("type"),
            f"checks: type must be one of {', '.join(CHECK_TYPES)}, got {kind!r}",
        )
        return None
    default_port = {"http": 80, "https": 443, "tcp": 80, "dns": 53}[kind]
    address = str(raw.get("address", default_address))
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        add(raw.line_of("address"), f"checks: address must be an IP address, got {address!r}")
        ok = False
    values: dict[str, Any] = {}
    for key, low, high in (("port", 1, 65535), ("fall", 1, 100), ("rise", 1, 100)):
        value = raw.get(key, {"port": default_port, "fall": 3, "rise": 2}[key])
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            add(raw.line_of(key), f"checks: {key} must be a whole number from {low} to {high}")
            ok = False
        values[key] = value
    for key, default in (("interval", 5.0), ("timeout", 2.0)):
        value = raw.get(key, default)
        if not _number(value) or not 0 < value <= 3600:
            add(raw.line_of(key), f"checks: {key} must be seconds (0 < s <= 3600)")
            ok = False
        values[key] = float(value) if _number(value) else default
    if ok and values["timeout"] > values["interval"]:
        add(raw.line_of("timeout"), "checks: timeout must not be longer than interval")
        ok = False
    statuses = raw.get("expect_status", [200])
    if isinstance(statuses, int):
        statuses = [statuses]
    if not isinstance(statuses, list) or not all(isinstance(s, int) for s in statuses):
        add(raw.line_of("expect_status"), "checks: expect_status must be a list of status codes")
        ok = False
    if not ok:
        return None
    return CheckSpec(
        type=kind,
        address=address,
        port=values["port"],
        path=str(raw.get("path", "/")),
        host=raw.get("host"),
        expect_status=tuple(statuses),
        body=raw.get("body"),
        verify_tls=bool(raw.get("verify_tls", True)),
        interval=values["interval"],
        timeout=values["timeout"],
        fall=values["fall"],
        rise=values["rise"],
        query_name=str(raw.get("query_name", ".")),
        query_type=str(raw.get("query_type", "SOA")).upper(),
    )

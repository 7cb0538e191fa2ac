"""The server config file: where to listen, where the zones are, SOA defaults, sites, and more.

Every key is optional; `ServerConfig()` is what runs with no file at all (the bundled zones on
127.0.0.1 and ::1, port 5353). Values are checked here with file:line errors so that the rest of
the server can trust them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from geodns.common.errors import ConfigError, Problem
from geodns.common.reader import Reader
from geodns.common.yamlsrc import MarkedDict, MarkedList, load_yaml
from geodns.config.fleet import FleetConfig, parse_fleet
from geodns.config.zonefile import MAX_TTL, SoaSettings, check_name
from geodns.geo.sites import Site, parse_sites

PACKAGE_DIR = Path(__file__).resolve().parents[1]
BUNDLED_ZONES = PACKAGE_DIR.parent / "zones"
BUNDLED_GEOIP = PACKAGE_DIR / "data" / "geodns-country.mmdb"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The local admin API (status, drains, reload, metrics)."""

    listen: str | None = "127.0.0.1:8053"
    socket: str | None = None
    token_file: Path | None = None
    public_metrics: bool = False  # GET /metrics without the token (it shows no secrets)


@dataclass(frozen=True, slots=True)
class QueryLogConfig:
    """The optional per-query JSON log, off by default."""

    enabled: bool = False
    sample_rate: float = 1.0
    path: str = "-"
    max_bytes: int = 100_000_000
    backups: int = 5


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `geodns serve` needs besides the zone files themselves."""

    path: Path | None = None
    listen: tuple[str, ...] = ("127.0.0.1", "::1")
    port: int = 5353
    zones_dir: Path = BUNDLED_ZONES
    max_udp_size: int = 1232
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 256
    udp_batch: int = 32  # datagrams per recvmmsg/sendmmsg; 0: one at a time through asyncio
    log_level: str = "info"
    log_format: str = "auto"
    soa: SoaSettings = SoaSettings()
    zone_soa: dict[str, SoaSettings] = field(default_factory=dict)
    geoip_database: Path | None = None
    geoip_line: int = 0
    sites: dict[str, Site] = field(default_factory=dict)
    admin: AdminConfig = AdminConfig()
    state_file: Path | None = None
    workers: int = 0  # 0: one per core this process may run on
    watch_zones: bool = True
    query_log: QueryLogConfig = QueryLogConfig()
    fleet: FleetConfig | None = None  # a fleet of nameservers sharing drains and health (etcd)

    def soa_for(self, zone: str) -> SoaSettings:
        return self.zone_soa.get(zone, self.soa)

    @property
    def geoip_path(self) -> Path:
        return self.geoip_database or BUNDLED_GEOIP


TOP_KEYS = (
    "listen",
    "port",
    "zones_dir",
    "edns",
    "tcp",
    "udp",
    "logging",
    "soa",
    "zones",
    "geoip",
    "sites",
    "admin",
    "state_file",
    "workers",
    "watch_zones",
    "query_log",
    "fleet",
)


def load_config(path: Path | None) -> ServerConfig:
    """Read and check a config file (None: the built-in defaults); raise ConfigError."""
    if path is None:
        return ServerConfig()
    path = path.resolve()
    data = load_yaml(path)
    if data is None:
        data = MarkedDict(line=1)
    if not isinstance(data, MarkedDict):
        raise ConfigError([Problem(str(path), 1, "expected a mapping of settings")])
    base = path.parent
    top = Reader(str(path), data, "config", TOP_KEYS)
    defaults = ServerConfig()

    listen = data.get("listen", list(defaults.listen))
    if isinstance(listen, str):
        listen = [listen]
    addresses: list[str] = []
    if not isinstance(listen, list):
        top.add(data.line_of("listen"), "listen: expected a list of IP addresses")
    else:
        for index, address in enumerate(listen):
            try:
                addresses.append(str(ipaddress.ip_address(str(address))))
            except ValueError:
                line = listen.line_of(index) if isinstance(listen, MarkedList) else data.line
                top.add(line, f"listen: expected an IP address such as 127.0.0.1, got {address!r}")
    port = top.int_in("port", 0, 65535, defaults.port)
    zones_dir = top.get("zones_dir", str, None, "a directory path")
    edns = top.section("edns", ("max_udp_size",))
    tcp = top.section("tcp", ("idle_timeout", "max_connections"))
    logging = top.section("logging", ("level", "format"))
    log_level = logging.get("level", str, "info", "a level name").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        logging.add(
            logging.mapping.line_of("level"),
            "logging.level: expected debug, info, warning or error",
        )
    log_format = logging.get("format", str, "auto", "auto, json or console").lower()
    if log_format not in ("auto", "json", "console"):
        logging.add(
            logging.mapping.line_of("format"), "logging.format: expected auto, json or console"
        )
    idle = tcp.get("idle_timeout", (int, float), defaults.tcp_idle_timeout, "seconds")
    if idle <= 0:
        tcp.add(tcp.mapping.line_of("idle_timeout"), "tcp.idle_timeout: expected seconds > 0")
    soa = _soa(top.section("soa", SOA_KEYS), SoaSettings())
    zone_soa: dict[str, SoaSettings] = {}
    zones = top.section("zones", tuple(str(k) for k in data.get("zones") or {}))
    for zone_key in zones.mapping:
        name = str(zone_key).lower().rstrip(".") + "."
        if check_name(name):
            zones.add(zones.mapping.line_of(zone_key), f"zones: '{zone_key}' is not a zone name")
            continue
        zone_section = zones.section(zone_key, ("soa",))
        zone_soa[name] = _soa(zone_section.section("soa", SOA_KEYS), soa)
    geoip = top.section("geoip", ("database",))
    database = geoip.get("database", str, None, "a path to a .mmdb file")
    admin = top.section("admin", ("listen", "socket", "token_file", "public_metrics"))
    query_log = top.section("query_log", ("enabled", "sample_rate", "path", "max_bytes", "backups"))
    sample_rate = query_log.get("sample_rate", (int, float), 1.0, "a fraction from 0 to 1")
    if not 0 <= sample_rate <= 1:
        query_log.add(
            query_log.mapping.line_of("sample_rate"), "query_log.sample_rate: expected 0..1"
        )
    state_file = top.get("state_file", str, None, "a file path")
    sites_value = data.get("sites")
    sites, site_problems = parse_sites(str(path), sites_value, data.line_of("sites"))
    top.problems.extend(site_problems)
    max_udp_size = edns.int_in("max_udp_size", 512, 4096, defaults.max_udp_size)
    max_connections = tcp.int_in("max_connections", 1, 65535, defaults.tcp_max_connections)
    workers = top.int_in("workers", 0, 64, defaults.workers)
    udp_batch = top.section("udp", ("batch",)).int_in("batch", 0, 1024, defaults.udp_batch)
    watch_zones = top.get("watch_zones", bool, True, "true or false")
    query_log_config = QueryLogConfig(
        enabled=query_log.get("enabled", bool, False, "true or false"),
        sample_rate=float(sample_rate),
        path=query_log.get("path", str, "-", "a file path or '-' for stdout"),
        max_bytes=query_log.int_in("max_bytes", 0, 2**40, QueryLogConfig().max_bytes),
        backups=query_log.int_in("backups", 0, 100, QueryLogConfig().backups),
    )
    admin_config = AdminConfig(
        listen=admin.get("listen", (str, type(None)), AdminConfig().listen, "host:port"),
        socket=admin.get("socket", str, None, "a Unix socket path"),
        token_file=(base / t) if (t := admin.get("token_file", str, None, "a path")) else None,
        public_metrics=admin.boolean("public_metrics", False),
    )
    _check_admin_is_closed(admin, admin_config)
    fleet = parse_fleet(top, base)
    if top.problems:
        raise ConfigError(top.problems)
    return ServerConfig(
        path=path,
        listen=tuple(addresses),
        port=port,
        zones_dir=(base / zones_dir).resolve() if zones_dir else defaults.zones_dir,
        max_udp_size=max_udp_size,
        tcp_idle_timeout=float(idle),
        tcp_max_connections=max_connections,
        udp_batch=udp_batch,
        log_level=log_level,
        log_format=log_format,
        soa=soa,
        zone_soa=zone_soa,
        geoip_database=(base / database) if database else None,
        geoip_line=geoip.mapping.line_of("database"),
        sites=sites,
        admin=admin_config,
        state_file=(base / state_file) if state_file else None,
        workers=workers,
        watch_zones=watch_zones,
        query_log=query_log_config,
        fleet=fleet,
    )


def _check_admin_is_closed(admin: Reader, config: AdminConfig) -> None:
    """A TCP admin API beyond loopback without a token would let anyone drain and reload."""
    if not config.listen or config.token_file is not None:
        return
    host = config.listen.rpartition(":")[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        admin.problem(
            "listen",
            f"{config.listen} is not a loopback address and admin.token_file is not set: anyone "
            "who can reach it could drain sites and reload; set admin.token_file (a file holding "
            "a token, e.g. from `openssl rand -hex 32`) or listen on 127.0.0.1 / ::1",
        )


SOA_KEYS = tuple(f.name for f in fields(SoaSettings))


def _soa(section: Reader, base: SoaSettings) -> SoaSettings:
    changes: dict[str, Any] = {}
    for key in ("mname", "rname"):
        value = section.get(key, str, None, "a fully qualified name")
        if value is not None:
            value = value.lower() if value.endswith(".") else value.lower() + "."
            error = check_name(value)
            if error:
                section.add(section.mapping.line_of(key), f"soa.{key}: {error}")
            changes[key] = value
    if "serial" in section.mapping:
        changes["serial"] = section.int_in("serial", 0, 2**32 - 1, 1)
    for key in ("refresh", "retry", "expire", "minimum", "ttl"):
        if key in section.mapping:
            changes[key] = section.int_in(key, 0, MAX_TTL, getattr(base, key))
    return replace(base, **changes)

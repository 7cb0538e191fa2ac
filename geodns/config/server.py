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
from geodns.dnssec.policy import ALGORITHMS, DnssecPolicy, parse_duration
from geodns.geo.sites import Site, parse_sites

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# the bundled example zones: package data of an installed wheel (geodns/zones), the repository's
# zones/ in a source checkout or an editable install (pyproject maps it to geodns.zones)
BUNDLED_ZONES = next(
    (d for d in (PACKAGE_DIR / "zones", PACKAGE_DIR.parent / "zones") if d.is_dir()),
    PACKAGE_DIR / "zones",
)
BUNDLED_GEOIP = PACKAGE_DIR / "data" / "geodns-country.mmdb"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The local admin API (status, drains, reload, metrics)."""

    listen: str | None = "127.0.0.1:8053"
    socket: str | None = None  # None: the default path (geodns.config.loader.admin_socket)
    token_file: Path | None = None
    public_metrics: bool = False  # GET /metrics without the token (it shows no secrets)
    no_socket: bool = False  # `socket: false`: no Unix socket at all


@dataclass(frozen=True, slots=True)
class QueryLogConfig:
    """The optional per-query JSON log, off by default."""

    enabled: bool = False
    sample_rate: float = 1.0
    path: str = "-"
    max_bytes: int = 100_000_000
    backups: int = 5


@dataclass(frozen=True, slots=True)
class TcpSettings:
    """Limits on TCP connections, per process (geodns.serving.transports explains each)."""

    idle_timeout: float = 10.0
    message_timeout: float = 5.0
    max_connections: int = 256
    max_per_address: int = 16


@dataclass(frozen=True, slots=True)
class RrlSettings:
    """Response rate limiting (geodns.serving.rrl): on by default, loopback exempt."""

    enabled: bool = True
    rate: float = 200.0
    window: float = 15.0
    slip: int = 2
    prefix_v4: int = 24
    prefix_v6: int = 56
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class CookieSettings:
    """DNS cookies (geodns.serving.cookies): on by default; a fleet shares `secret_file`."""

    enabled: bool = True
    secret_file: Path | None = None


@dataclass(frozen=True, slots=True)
class DnstapConfig:
    """dnstap output of sampled queries (AUTH_QUERY/AUTH_RESPONSE), off unless a socket or a
    file is given. `socket`: a Unix socket a Frame Streams reader listens on; `file`: written
    directly, rotated by size like the query log."""

    socket: str | None = None
    file: str | None = None
    sample_rate: float = 1.0
    identity: str | None = None  # default: the host name
    max_bytes: int = 100_000_000
    backups: int = 5

    @property
    def enabled(self) -> bool:
        return bool(self.socket or self.file) and self.sample_rate > 0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `geodns serve` needs besides the zone files themselves."""

    path: Path | None = None
    listen: tuple[str, ...] = ("127.0.0.1", "::1")
    port: int = 5353
    zones_dir: Path = BUNDLED_ZONES
    max_udp_size: int = 1232
    tcp: TcpSettings = TcpSettings()
    rrl: RrlSettings = RrlSettings()
    cookies: CookieSettings = CookieSettings()
    cache_dir: Path | None = None  # where the geo index is kept (None: see cache_directory())
    udp_batch: int = 32  # datagrams per recvmmsg/sendmmsg; 0: one at a time through asyncio
    # SO_RCVBUF asked for each UDP socket (the kernel caps it at net.core.rmem_max); 0: the
    # system's default. Bursts wait here while the loop serves TCP or a reload's swap
    udp_receive_buffer: int = 4 << 20
    log_level: str = "info"
    log_format: str = "auto"
    soa: SoaSettings = SoaSettings()
    zone_soa: dict[str, SoaSettings] = field(default_factory=dict)
    # the NS set of a zone whose file has no apex NS (octoDNS zones often leave NS to providers)
    nameservers: tuple[str, ...] = ()
    zone_nameservers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    geoip_database: Path | None = None
    geoip_line: int = 0
    geoip_index: str = "auto"  # when the place index is built: INDEX_WHEN
    sites: dict[str, Site] = field(default_factory=dict)
    admin: AdminConfig = AdminConfig()
    state_file: Path | None = None
    workers: int = 0  # 0: one per core this process may run on
    watch_zones: bool = True
    query_log: QueryLogConfig = QueryLogConfig()
    dnstap: DnstapConfig = DnstapConfig()
    fleet: FleetConfig | None = None  # a fleet of nameservers sharing drains and health (etcd)
    dnssec: dict[str, DnssecPolicy] = field(default_factory=dict)  # signed zones (docs/dnssec.md)

    def soa_for(self, zone: str) -> SoaSettings:
        return self.zone_soa.get(zone, self.soa)

    def nameservers_for(self, zone: str) -> tuple[str, ...]:
        return self.zone_nameservers.get(zone, self.nameservers)

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
    "nameservers",
    "zones",
    "geoip",
    "sites",
    "admin",
    "state_file",
    "workers",
    "watch_zones",
    "query_log",
    "rrl",
    "cookies",
    "cache_dir",
    "dnstap",
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
    tcp = top.section(
        "tcp", ("idle_timeout", "message_timeout", "max_connections", "max_per_address")
    )
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
    tcp_settings = TcpSettings(
        idle_timeout=tcp.number_in("idle_timeout", 0.001, 86400, _TCP.idle_timeout),
        message_timeout=tcp.number_in("message_timeout", 0.001, 3600, _TCP.message_timeout),
        max_connections=tcp.int_in("max_connections", 1, 65535, _TCP.max_connections),
        max_per_address=tcp.int_in("max_per_address", 1, 65535, _TCP.max_per_address),
    )
    rrl_settings = _rrl(top.section("rrl", RRL_KEYS))
    cookies = top.section("cookies", ("enabled", "secret_file"))
    secret = cookies.text("secret_file", None, "a path to a file of 16 random octets (hex)")
    cookie_settings = CookieSettings(
        enabled=cookies.boolean("enabled", True),
        secret_file=(base / secret) if secret else None,
    )
    cache_dir = top.text("cache_dir", None, "a directory path")
    soa = _soa(top.section("soa", SOA_KEYS), SoaSettings())
    nameservers = _nameservers(top)
    zone_soa: dict[str, SoaSettings] = {}
    zone_nameservers: dict[str, tuple[str, ...]] = {}
    dnssec: dict[str, DnssecPolicy] = {}
    zones = top.section("zones", tuple(str(k) for k in data.get("zones") or {}))
    for zone_key in zones.mapping:
        name = str(zone_key).lower().rstrip(".") + "."
        if check_name(name):
            zones.add(zones.mapping.line_of(zone_key), f"zones: '{zone_key}' is not a zone name")
            continue
        zone_section = zones.section(zone_key, ("soa", "nameservers", "dnssec"))
        if zone_section.has("dnssec"):
            policy = _dnssec(zone_section.section("dnssec", DNSSEC_KEYS), base, name)
            if policy is not None:
                dnssec[name] = policy
        zone_soa[name] = _soa(zone_section.section("soa", SOA_KEYS), soa)
        if zone_section.has("nameservers"):
            zone_nameservers[name] = _nameservers(zone_section)
    geoip = top.section("geoip", ("database", "index"))
    database = geoip.get("database", str, None, "a path to a .mmdb file")
    geoip_index = geoip.text("index", "auto", " or ".join(INDEX_WHEN))
    if geoip_index not in INDEX_WHEN:
        geoip.problem("index", f"expected {' or '.join(INDEX_WHEN)}, got {geoip_index!r}")
        geoip_index = "auto"
    admin = top.section("admin", ("listen", "socket", "token_file", "public_metrics"))
    query_log = top.section("query_log", ("enabled", "sample_rate", "path", "max_bytes", "backups"))
    sample_rate = query_log.get("sample_rate", (int, float), 1.0, "a fraction from 0 to 1")
    if not 0 <= sample_rate <= 1:
        query_log.add(
            query_log.mapping.line_of("sample_rate"), "query_log.sample_rate: expected 0..1"
        )
    dnstap = top.section(
        "dnstap", ("socket", "file", "sample_rate", "identity", "max_bytes", "backups")
    )
    dnstap_rate = dnstap.get("sample_rate", (int, float), 1.0, "a fraction from 0 to 1")
    if not 0 <= dnstap_rate <= 1:
        dnstap.add(dnstap.mapping.line_of("sample_rate"), "dnstap.sample_rate: expected 0..1")
    dnstap_socket = dnstap.get("socket", str, None, "a Unix socket path")
    dnstap_file = dnstap.get("file", str, None, "a file path")
    if dnstap_socket and dnstap_file:
        dnstap.add(dnstap.mapping.line_of("file"), "dnstap: give either socket or file, not both")
    dnstap_config = DnstapConfig(
        socket=str(base / dnstap_socket) if dnstap_socket else None,
        file=str(base / dnstap_file) if dnstap_file else None,
        sample_rate=float(dnstap_rate),
        identity=dnstap.get("identity", str, None, "a name for this server"),
        max_bytes=dnstap.int_in("max_bytes", 0, 2**40, DnstapConfig().max_bytes),
        backups=dnstap.int_in("backups", 0, 100, DnstapConfig().backups),
    )
    state_file = top.get("state_file", str, None, "a file path")
    sites_value = data.get("sites")
    sites, site_problems = parse_sites(str(path), sites_value, data.line_of("sites"))
    top.problems.extend(site_problems)
    max_udp_size = edns.int_in("max_udp_size", 512, 4096, defaults.max_udp_size)
    workers = top.int_in("workers", 0, 64, defaults.workers)
    udp = top.section("udp", ("batch", "receive_buffer"))
    udp_batch = udp.int_in("batch", 0, 1024, defaults.udp_batch)
    udp_receive_buffer = udp.int_in("receive_buffer", 0, 1 << 30, defaults.udp_receive_buffer)
    watch_zones = top.get("watch_zones", bool, True, "true or false")
    query_log_config = QueryLogConfig(
        enabled=query_log.get("enabled", bool, False, "true or false"),
        sample_rate=float(sample_rate),
        path=_beside(base, query_log.get("path", str, "-", "a file path or '-' for stdout")),
        max_bytes=query_log.int_in("max_bytes", 0, 2**40, QueryLogConfig().max_bytes),
        backups=query_log.int_in("backups", 0, 100, QueryLogConfig().backups),
    )
    admin_config = AdminConfig(
        listen=admin.get("listen", (str, type(None)), AdminConfig().listen, "host:port"),
        socket=str(base / sock) if isinstance(sock := _admin_socket(admin), str) else None,
        no_socket=sock is False,
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
        tcp=tcp_settings,
        rrl=rrl_settings,
        cookies=cookie_settings,
        cache_dir=(base / cache_dir) if cache_dir else None,
        udp_batch=udp_batch,
        udp_receive_buffer=udp_receive_buffer,
        log_level=log_level,
        log_format=log_format,
        soa=soa,
        zone_soa=zone_soa,
        nameservers=nameservers,
        zone_nameservers=zone_nameservers,
        geoip_database=(base / database) if database else None,
        geoip_line=geoip.mapping.line_of("database"),
        geoip_index=geoip_index,
        sites=sites,
        admin=admin_config,
        state_file=(base / state_file) if state_file else None,
        workers=workers,
        watch_zones=watch_zones,
        query_log=query_log_config,
        dnstap=dnstap_config,
        fleet=fleet,
        dnssec=dnssec,
    )


def _beside(base: Path, path: str) -> str:
    """A path from the config file, relative to the config file's folder ('-' stays '-')."""
    return path if path == "-" else str(base / path)


def _admin_socket(admin: Reader) -> str | bool | None:
    """`admin.socket`: a path, false (no socket), or absent/null (the default path)."""
    value = admin.mapping.get("socket")
    if value is None or value is False or isinstance(value, str):
        return value
    admin.problem("socket", f"expected a Unix socket path, or false for none, got {value!r}")
    return None


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
# when a database's place index is built the first time it is seen (geodns.config.loader.load_geo):
# "start" before answering, "background" while the database answers directly, "auto" at start
# up to 16 MB, else in the background
INDEX_WHEN = ("auto", "start", "background")
_TCP = TcpSettings()
_RRL = RrlSettings()
RRL_KEYS = tuple(f.name for f in fields(RrlSettings))


DNSSEC_KEYS = (
    "enabled",
    "algorithm",
    "key_directory",
    "manage_keys",
    "signature_validity",
    "signature_refresh",
    "inception_offset",
    "dnskey_ttl",
    "zsk_lifetime",
    "propagation_delay",
    "ksk_lifetime",  # only for `geodns check`: the KSK is rolled by hand
)
DNSSEC_DURATIONS = DNSSEC_KEYS[4:]


def _dnssec(section: Reader, base: Path, zone: str) -> DnssecPolicy | None:
    """`zones.<zone>.dnssec`: None unless `enabled: true` (DNSSEC is off by default)."""
    enabled = section.boolean("enabled", False)
    algorithm_text = str(section.text("algorithm", "ecdsap256sha256", "an algorithm name"))
    algorithm = ALGORITHMS.get(algorithm_text.lower().replace("-", ""))
    if (
        algorithm is None
        and algorithm_text.isdigit()
        and int(algorithm_text) in ALGORITHMS.values()
    ):
        algorithm = int(algorithm_text)
    if algorithm is None:
        section.problem(
            "algorithm", f"{algorithm_text!r}: expected ecdsap256sha256 (13) or ed25519 (15)"
        )
        algorithm = 13
    directory = section.text("key_directory", "keys", "a directory path")
    times: dict[str, int] = {}
    for key in DNSSEC_DURATIONS:
        if section.has(key):
            seconds = parse_duration(section.mapping.get(key))
            if seconds is None:
                section.problem(
                    key, "expected a duration: seconds, or a number with s, m, h, d or w"
                )
                continue
            times[key] = seconds
    manage = section.boolean("manage_keys", True)
    policy = DnssecPolicy(Path(base / directory), algorithm, **times, manage_keys=manage)
    for problem in policy.problems():
        section.add(section.mapping.line, f"zones.{zone.rstrip('.')}.dnssec: {problem}")
    return policy if enabled else None


def _rrl(section: Reader) -> RrlSettings:
    exempt = section.strings("exempt", _RRL.exempt, "a list of networks")
    for index, text in enumerate(exempt):
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            section.problem("exempt", f"item {index + 1}: {text!r} is not a network")
    return RrlSettings(
        enabled=section.boolean("enabled", True),
        rate=section.number_in("rate", 1, 1_000_000, _RRL.rate),
        window=section.number_in("window", 1, 3600, _RRL.window),
        slip=section.int_in("slip", 0, 10, _RRL.slip),
        prefix_v4=section.int_in("prefix_v4", 8, 32, _RRL.prefix_v4),
        prefix_v6=section.int_in("prefix_v6", 16, 128, _RRL.prefix_v6),
        exempt=tuple(exempt),
    )


def _nameservers(section: Reader) -> tuple[str, ...]:
    """`nameservers`: fully qualified names, the NS set of zones whose file has none."""
    names = section.strings("nameservers", [], "a list of nameserver names")
    result = []
    for value in names:
        name = value.lower() if value.endswith(".") else value.lower() + "."
        error = check_name(name)
        if error:
            section.problem("nameservers", f"{value!r}: {error}")
            continue
        if name not in result:
            result.append(name)
    return tuple(result)


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

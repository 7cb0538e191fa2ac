"""Load what the config names: every zone file and the geo database.

All or nothing: the zones are returned only when every file is valid; otherwise ConfigError
carries every problem of every file (the warnings of the valid ones too), and the caller keeps
serving whatever it had. A valid zone's warnings are on the Zone (`Zone.warnings`).
"""

from __future__ import annotations

from pathlib import Path

import maxminddb

from geodns.common.errors import ConfigError, Problem
from geodns.config.server import ServerConfig
from geodns.config.zonefile import load_zone_file, zone_name_from_file
from geodns.dns.zone import Zone
from geodns.geo.compile import DynamicCompilerForSites
from geodns.geo.dbfacts import database_facts, unmatchable
from geodns.geo.locator import GeoLocator

ZONE_SUFFIXES = (".yaml", ".yml")


def zone_files(zones_dir: Path) -> list[Path]:
    """The zone files of a directory, in a stable order."""
    return sorted(p for p in zones_dir.iterdir() if p.suffix in ZONE_SUFFIXES and p.is_file())


def load_zones(
    config: ServerConfig, compiler: DynamicCompilerForSites | None = None
) -> dict[str, Zone]:
    """Load every zone file; raise ConfigError listing every problem in every file."""
    zones_dir = config.zones_dir
    if not zones_dir.is_dir():
        where = str(config.path) if config.path else str(zones_dir)
        raise ConfigError([Problem(where, 0, f"zones_dir '{zones_dir}' is not a directory")])
    return load_zone_files(config, zone_files(zones_dir), compiler)


def load_zone_files(
    config: ServerConfig, paths: list[Path], compiler: DynamicCompilerForSites | None = None
) -> dict[str, Zone]:
    """Load the given zone files (one zone each, named by the file); ConfigError listing every
    problem of every file when one has an error."""
    problems: list[Problem] = []
    zones: dict[str, Zone] = {}
    first_file: dict[str, Path] = {}
    compiler = compiler or DynamicCompilerForSites(config.sites)
    for path in paths:
        origin = zone_name_from_file(path)
        if origin in first_file:
            problems.append(
                Problem(
                    str(path),
                    1,
                    f"duplicate zone '{origin}': already loaded from {first_file[origin]}",
                )
            )
            continue
        first_file[origin] = path
        try:
            zones[origin] = load_zone_file(
                path, config.soa_for(origin), compiler.compile, config.nameservers_for(origin)
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    if any(p.is_error for p in problems):
        raise ConfigError(problems + [w for zone in zones.values() for w in zone.warnings])
    return zones


def database_warnings(zones: dict[str, Zone], geo: GeoLocator) -> list[Problem]:
    """Warnings for rules and pools of dynamic records that the database can never match."""
    facts = database_facts(geo)
    found = []
    for zone in zones.values():
        for node in zone.nodes.values():
            for rrset in node.values():
                if rrset.dynamic is None or rrset.dynamic.owner != rrset.name:
                    continue  # not dynamic, or an apex ALIAS sharing its target's record
                for line, column, why in unmatchable(rrset.dynamic, facts):
                    found.append(
                        Problem(zone.path, line, f"'{rrset.name}': {why}", column, "warning")
                    )
    return found


def open_geo(config: ServerConfig) -> GeoLocator:
    """Open the configured (or bundled) database; a ConfigError names the file when it cannot."""
    path = config.geoip_path
    try:
        return GeoLocator(path)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        where = str(config.path) if config.path else str(path)
        line = config.geoip_line if config.geoip_database else 0
        raise ConfigError(
            [Problem(where, line, f"cannot open GeoIP database {path}: {exc}")]
        ) from exc

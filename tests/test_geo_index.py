"""The place index finds, for every address, the place maxminddb's own reader gives, over a
block at least as wide as the database network and never crossing into another place.

The index is what every query's location comes from (geodns.geo.index): the whole tree walked
once with numpy, merged into runs of one place. These tests hold it to the reader for every
record size real databases use, on the bundled database and on a small one with nested and empty
networks, through a save and a load of the cache files, and check the direct locator (what
serves while a new database's index builds) the same way.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import maxminddb
import numpy as np
import pytest
from mmdb_factory import city_record, rewrite_record_size, write_city_db

from geodns.geo.codes import continent_of
from geodns.geo.database import GeoDatabase
from geodns.geo.index import build_index, load_index, save_index
from geodns.geo.locator import DirectLocator, Geo
from geodns.geo.mmdbtree import unpack_children

BUNDLED = Path(__file__).resolve().parent.parent / "geodns" / "data" / "geodns-country.mmdb"

NETWORKS = [
    ("1.0.0.0/8", city_record("AU", "OC", -33.9, 151.2, "Sydney")),
    ("1.2.0.0/16", city_record("JP", "AS", 35.7, 139.7, "Tokyo")),  # nested in the /8
    ("1.2.3.0/24", city_record("KR", "AS", 37.6, 127.0, "Seoul")),  # nested again
    ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
    ("85.0.0.0/17", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
    ("85.0.128.0/17", city_record("FR", "EU", 48.9, 2.35, "Paris")),
    ("223.255.255.255/32", city_record("CN", "AS", 39.9, 116.4, "Beijing")),
    ("0.0.0.0/32", city_record("US", "NA", 40.7, -74.0, "New York")),
    ("2a00:1000::/32", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
    ("2a00:1000:8000::/33", city_record("NL", "EU", 52.4, 4.9, "Amsterdam")),
    ("2400:1000::/32", city_record("MY", "AS", 3.1, 101.7, "Kuala Lumpur")),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", city_record("BR", "SA", -23.5, -46.6)),
]


def sample_addresses(seed: int, count: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Random addresses plus the ones next to every network boundary of the small database."""
    rng = random.Random(seed)
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for cidr, _ in NETWORKS:
        network = ipaddress.ip_network(cidr)
        for value in (int(network[0]) - 1, int(network[0]), int(network[-1]), int(network[-1]) + 1):
            limit = (1 << network.max_prefixlen) - 1
            found.append(ipaddress.ip_address(min(max(value, 0), limit)))
    for _ in range(count):
        found.append(ipaddress.IPv4Address(rng.getrandbits(32)))
        found.append(ipaddress.IPv6Address(rng.getrandbits(128)))
        found.append(
            ipaddress.IPv6Address((0x2000 | rng.getrandbits(12)) << 112 | rng.getrandbits(112))
        )
    return found


def open_database(path: Path) -> GeoDatabase:
    return GeoDatabase(path, str(path), 0, continent_of)


def key(place: object) -> object:
    return None if place is None else place.key  # type: ignore[attr-defined]


def assert_same_as_the_reader(path: Path, addresses: list, tmp_path: Path) -> None:
    database = open_database(path)
    built = build_index(database)
    save_index(built, tmp_path / "cache")
    index = load_index(tmp_path / "cache", database.digest)
    assert index is not None, "the saved index loads back"
    direct = DirectLocator(open_database(path))
    with maxminddb.open_database(str(path)) as reader:
        for address in addresses:
            record, prefix = reader.get_with_prefix_len(address)
            expected = database.places.place(record)
            placement = index.locate(address.version, int(address))
            if address.version == 6 and int(address) >> 32 == 0xFFFF:
                continue  # placed as IPv4 (test below)
            assert key(placement.place) == key(expected), f"{address}: {placement} vs {record}"
            assert placement.prefix <= prefix, f"{address}: /{placement.prefix} inside /{prefix}"
            # the whole block has the same place: check its first and last address
            bits = 32 if address.version == 4 else 128
            base = int(address) >> (bits - placement.prefix) << (bits - placement.prefix)
            last = base + (1 << (bits - placement.prefix)) - 1
            for edge in (base, last):
                edge_place = database.places.place(reader.get(ipaddress.ip_address(edge)))
                assert key(edge_place) == key(expected), f"{address}: block edge {edge:x}"
            direct_placement = direct.locate(address.version, int(address))
            assert key(direct_placement.place) == key(expected)
            assert direct_placement.prefix == prefix


@pytest.mark.parametrize("record_size", [24, 28, 32])
def test_every_record_size_matches_the_reader(tmp_path: Path, record_size: int) -> None:
    path = write_city_db(tmp_path / "city.mmdb", NETWORKS)
    if record_size != 24:
        path = rewrite_record_size(path, tmp_path / f"city-{record_size}.mmdb", record_size)
    with maxminddb.open_database(str(path)) as reader:
        assert reader.metadata().record_size == record_size
    assert_same_as_the_reader(path, sample_addresses(record_size, 1_500), tmp_path)


def test_the_bundled_database_matches_the_reader(tmp_path: Path) -> None:
    assert_same_as_the_reader(BUNDLED, sample_addresses(7, 2_000), tmp_path)


def test_a_cached_index_loads_and_answers_without_numpy(tmp_path: Path) -> None:
    """Loading a cached index maps its files as memoryviews (a restart answers before it needs
    numpy, 80 ms of imports): in a process of its own, it places every sampled address as the
    index built here does, and numpy is still not imported. Its numpy arrays, made when asked
    for, are the built ones."""
    import json
    import subprocess
    import sys

    path = write_city_db(tmp_path / "city.mmdb", NETWORKS)
    database = open_database(path)
    built = build_index(database)
    save_index(built, tmp_path / "cache")
    addresses = [(a.version, int(a)) for a in sample_addresses(11, 400)]
    expected = []
    for family, value in addresses:
        placement = built.locate(family, value)
        expected.append([key(placement.place) and list(key(placement.place)), placement.prefix])
    probe = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from geodns.geo.index import load_index\n"
        f"index = load_index(Path({str(tmp_path / 'cache')!r}), {database.digest!r})\n"
        "found = []\n"
        f"for family, value in {addresses!r}:\n"
        "    placement = index.locate(family, value)\n"
        "    place = placement.place and list(placement.place.key)\n"
        "    found.append([place, placement.prefix])\n"
        "print(json.dumps({'numpy': 'numpy' in sys.modules, 'found': found}))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    result = json.loads(ran.stdout)
    assert result["numpy"] is False
    assert result["found"] == json.loads(json.dumps(expected))
    loaded = load_index(tmp_path / "cache", database.digest)
    assert loaded is not None
    for name in ("latitude", "longitude", "code", "city", "precision"):
        assert np.array_equal(getattr(loaded, name), getattr(built, name)), name
    assert np.array_equal(loaded.runs4.starts, built.runs4.starts)
    pairs = zip(loaded.runs4.tables(), built.runs4.tables(), strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
    assert loaded.runs6 is not None and built.runs6 is not None
    assert np.array_equal(loaded.runs6.lo, built.runs6.lo)


@pytest.mark.parametrize("damage", ["cut", "header", "type", "empty", "table"])
def test_a_damaged_cached_index_is_not_used(tmp_path: Path, damage: str) -> None:
    """A cache file cut short, with a header that is not numpy's, of another type, empty, or an
    IPv4 /16 table of another size: the index is not loaded (the server then builds it again),
    and nothing raises."""
    database = open_database(write_city_db(tmp_path / "city.mmdb", NETWORKS))
    saved = save_index(build_index(database), tmp_path / "cache")
    if damage == "table":  # a well-formed array, too short for a /16 table
        np.save(saved / "v4_whole.npy", np.zeros(10, dtype=np.int64), allow_pickle=False)
        assert load_index(tmp_path / "cache", database.digest) is None
        return
    target = saved / "lat.npy"
    data = target.read_bytes()
    if damage == "cut":
        data = data[: len(data) - 8]
    elif damage == "header":
        data = b"\x93NUMPY\x01\x00\x10\x00{'descr': <f8}  \n" + data[26:]
    elif damage == "type":
        data = data.replace(b"<f8", b"<f4", 1)
    else:
        data = b""
    target.write_bytes(data)
    assert load_index(tmp_path / "cache", database.digest) is None


def test_ipv4_mapped_addresses_are_placed_as_ipv4(tmp_path: Path) -> None:
    index = build_index(open_database(write_city_db(tmp_path / "city.mmdb", NETWORKS)))
    mapped = index.locate(6, int(ipaddress.IPv6Address("::ffff:1.2.3.4")))
    plain = index.locate(4, int(ipaddress.IPv4Address("1.2.3.4")))
    assert (mapped.family, mapped.prefix) == (4, 24)
    assert mapped.place is plain.place and plain.place is not None and plain.place.city == "Seoul"


def test_neighbouring_networks_of_one_place_are_one_block(tmp_path: Path) -> None:
    """85.0.0.0/17 and 85.0.128.0/17 in one place are one /16: the scope a resolver gets."""
    same = [
        ("85.0.0.0/17", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
        ("85.0.128.0/17", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
    ]
    index = build_index(open_database(write_city_db(tmp_path / "city.mmdb", same)))
    placement = index.locate(4, int(ipaddress.IPv4Address("85.0.200.1")))
    assert placement.prefix == 16 and placement.place is not None


@pytest.mark.parametrize(
    ("record_size", "left", "right"),
    [
        (24, 0xABCDEF, 0x123456),
        (28, 0xABCDEF1, 0x1234567),  # the shared middle byte holds both high nibbles
        (28, 0x0000011, 0xF000011),
        (32, 0xFEDCBA98, 0x12345678),
    ],
)
def test_large_record_values_unpack_in_every_size(record_size: int, left: int, right: int) -> None:
    """Values beyond 24 bits only occur in databases of millions of nodes: a one-node tree."""
    if record_size == 24:
        node = left.to_bytes(3) + right.to_bytes(3)
    elif record_size == 28:
        node = left.to_bytes(4)[1:] + bytes([(left >> 24) << 4 | right >> 24])
        node += right.to_bytes(4)[1:]
    else:
        node = left.to_bytes(4) + right.to_bytes(4)
    children = np.frombuffer(unpack_children(node, 1, record_size), dtype=np.uint32)
    assert children.tolist() == [left, right]


def test_a_search_tree_cut_short_is_refused() -> None:
    """A file shorter than its metadata's node count says is an error, not a bad answer."""
    with pytest.raises(ValueError, match="cut short"):
        unpack_children(bytes(6 * 2 - 1), 2, 24)  # two 24-bit nodes need 12 bytes


def test_an_index_read_under_another_continent_table_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache is shared across geodns versions: an index whose places were read with another
    continent table (a geodns that took the database's continent: Cyprus in EU) must be built
    anew, not loaded, or an `AS` rule would silently stop matching Cyprus."""
    path = write_city_db(
        tmp_path / "cy.mmdb", [("31.153.0.0/16", city_record("CY", "EU", 35.2, 33.4))]
    )
    cache = tmp_path / "cache"
    with monkeypatch.context() as patched:
        import geodns.geo.codes as codes

        patched.setitem(codes.CONTINENT_OF, "CY", "EU")
        stale = GeoDatabase(path, str(path), 0, codes.continent_of)
        save_index(build_index(stale), cache)
        stale.close()
        assert load_index(cache, stale.digest) is not None  # the same tables: reused
    assert continent_of("CY") == "AS"
    assert load_index(cache, stale.digest) is None
    fresh = open_database(path)
    save_index(build_index(fresh), cache)
    index = load_index(cache, fresh.digest)
    assert index is not None
    place = index.locate(4, int(ipaddress.IPv4Address("31.153.1.1"))).place
    assert place is not None and place.continent == "AS"


def test_the_cache_keeps_indexes_in_use_and_drops_month_old_ones(tmp_path: Path) -> None:
    import os
    import time

    from geodns.geo.index import cache_key, prune_cache

    database = open_database(write_city_db(tmp_path / "city.mmdb", NETWORKS))
    cache = tmp_path / "cache"
    save_index(build_index(database), cache)
    month = 31 * 86400
    now = time.time()
    old_other, fresh_other, dead_build = (
        cache / "geo-index-v1-x-old",
        cache / "geo-index-v1-x-new",
        cache / ".building-abc",
    )
    for path in (old_other, fresh_other, dead_build):
        path.mkdir()
    os.utime(old_other, (now - month, now - month))
    os.utime(dead_build, (now - 2 * 86400, now - 2 * 86400))
    ours = cache / cache_key(database.digest)
    os.utime(ours, (now - month, now - month))
    assert load_index(cache, database.digest) is not None  # loading marks it used
    assert prune_cache(cache, now) == 2
    assert sorted(p.name for p in cache.iterdir()) == sorted([ours.name, fresh_other.name])


def test_a_database_whose_index_is_cached_is_not_read_into_memory(tmp_path: Path) -> None:
    """A reload onto a database whose place index is cached (the one served before, put back)
    finds the index by the file's digest, read in chunks: it never holds a copy of the database
    beside the snapshot in use (with a 100 MB database that was 200 MB more for a moment, and
    the soak's per-process RSS bound failed)."""
    import tracemalloc

    from geodns.config.loader import load_geo
    from geodns.config.server import ServerConfig

    database = tmp_path / "city.mmdb"
    database.write_bytes(BUNDLED.read_bytes())
    config = ServerConfig(geoip_database=database, cache_dir=tmp_path / "cache")
    built = load_geo(config, build=True)  # builds and caches the index
    assert built.index is not None
    built.close()

    def peak_of(load: Callable[[], object]) -> int:
        tracemalloc.start()
        try:
            load()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    index_alone = peak_of(lambda: load_index(tmp_path / "cache", built.digest))
    found: list[Geo] = []
    peak = peak_of(lambda: found.append(load_geo(config)))
    (geo,) = found
    assert geo.index is not None and geo.digest == built.digest
    assert geo.signature == built.signature and geo.path == database
    # loading the index itself makes arrays of its own; a copy of the file would be its size
    assert peak - index_alone < database.stat().st_size // 2, (peak, index_alone)
    geo.close()


def test_a_new_database_is_hashed_once_unless_it_changed_between_the_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start whose cache holds no index at all has none to look up: the file is read but
    not hashed before the server answers; its digest is taken of the private copy when first
    asked for (the server asks, in a thread, when the background build's index is ready). A
    start whose cache holds indexes hashes the file to look for one, then reads it: its bytes are
    not hashed again while the file's (mtime, size, inode) is the one the first look saw (25
    ms of a City database's start); a file changed between the two reads is hashed from the
    bytes read, and either way the digest is the SHA-256 of the bytes in use."""
    import hashlib
    import os

    from geodns.config.loader import load_geo
    from geodns.config.server import ServerConfig
    from geodns.geo import database as database_module

    path = tmp_path / "city.mmdb"
    path.write_bytes(BUNDLED.read_bytes())
    cache = tmp_path / "cache"
    config = ServerConfig(geoip_database=path, cache_dir=cache)
    hashed: list[int] = []  # the sizes of what was hashed whole, a database's size or more
    real = hashlib.sha256

    def counted(data: bytes = b"") -> Any:
        if len(data) >= len(BUNDLED.read_bytes()):
            hashed.append(len(data))
        return real(data)

    copies: list[int] = []  # what was hashed from a descriptor (the private copy), not a path
    file_digest = hashlib.file_digest

    def counted_copy(handle: Any, name: str) -> Any:
        if isinstance(handle.name, int):
            copies.append(handle.name)
        return file_digest(handle, name)

    monkeypatch.setattr(database_module.hashlib, "sha256", counted)
    monkeypatch.setattr(database_module.hashlib, "file_digest", counted_copy)
    geo = load_geo(config, build=False)  # an empty cache: nothing hashed yet
    assert geo.index is None and hashed == [] and copies == [] and geo.direct is not None
    assert geo.direct.database.data == b""  # not held for the digest either
    assert geo.digest == real(path.read_bytes()).hexdigest()  # of the private copy, once
    assert geo.digest == real(path.read_bytes()).hexdigest()
    assert hashed == [] and len(copies) == 1
    geo.close()
    copies.clear()

    (cache / "geo-index-of-another-database").mkdir(parents=True)
    hashed.clear()
    geo = load_geo(config, build=False)  # looked up by the file's digest: not hashed again
    assert hashed == [] and geo.direct is not None and geo.direct.database.data == b""
    assert geo.digest == real(path.read_bytes()).hexdigest() and copies == []
    geo.close()

    first_look = database_module.file_identity
    changed = BUNDLED.read_bytes()[:-1] + b"\x00"  # other bytes, the same size

    def then_changed(where: Path) -> tuple[tuple[int, int, int], str]:
        identity = first_look(where)
        stat = where.stat()
        where.write_bytes(changed)
        os.utime(where, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        return identity

    monkeypatch.setattr("geodns.config.loader.file_identity", then_changed)
    geo = load_geo(config, build=False)  # hashed from the bytes read, to look the index up
    assert hashed == [len(changed)] and copies == []
    assert geo.digest == real(changed).hexdigest()
    geo.close()


def test_a_truncated_database_is_refused_without_being_read_into_memory(tmp_path: Path) -> None:
    """A copy in progress or cut short (no metadata at its end, where every MaxMind DB has it)
    is refused from its last octets: a reload every second while `cp` rewrites a 100 MB file
    would otherwise read and copy up to 200 MB each time, only to fail."""
    import tracemalloc

    from geodns.common.errors import ConfigError

    database = tmp_path / "city.mmdb"
    data = BUNDLED.read_bytes()
    database.write_bytes(data[: len(data) * 6 // 10])
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="metadata"):
            GeoDatabase(database, str(database), 3, continent_of)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < database.stat().st_size // 4, peak


def test_a_database_rewritten_with_the_same_bytes_keeps_the_index_in_use(tmp_path: Path) -> None:
    """`cp` of the same file, a touch, or a geoipupdate run with nothing new: the reload finds
    the digest of the database in use and keeps its index (and so its answer maps) instead of
    mapping the index a second time beside it and rebuilding every map; another database
    gets its own."""
    import os

    from geodns.config.loader import load_geo
    from geodns.config.server import ServerConfig

    database = tmp_path / "city.mmdb"
    database.write_bytes(BUNDLED.read_bytes())
    config = ServerConfig(geoip_database=database, cache_dir=tmp_path / "cache")
    first = load_geo(config, build=True)
    assert first.index is not None
    os.utime(database, ns=(first.signature[0] + 10**9, first.signature[0] + 10**9))
    again = load_geo(config, current=first)
    assert again.index is first.index and again.rankings is first.rankings
    assert again.signature != first.signature and not again.changed_on_disk()
    other = tmp_path / "other.mmdb"
    data = bytearray(BUNDLED.read_bytes())
    data[100] ^= 0xFF  # a different database (its tree's bytes differ)
    other.write_bytes(bytes(data))
    assert (
        load_geo(
            ServerConfig(geoip_database=other, cache_dir=tmp_path / "cache"),
            build=True,
            current=first,
        ).index
        is not first.index
    )


def test_a_database_served_while_its_index_builds_keeps_no_second_copy(tmp_path: Path) -> None:
    """While a big database's index is built in the background (a process of its own, which
    reads the file itself), the direct locator answers from the private mapping alone: the bytes
    read to make it are let go, not kept beside it (100 MB more per process for the 100 MB City
    database, until the index was ready), and not hashed first (the digest is taken of the
    private copy when the index is ready: GeoDatabase.digest)."""
    import tracemalloc

    from geodns.config.loader import load_geo
    from geodns.config.server import ServerConfig

    database = tmp_path / "city.mmdb"
    database.write_bytes(BUNDLED.read_bytes())
    config = ServerConfig(geoip_database=database, cache_dir=tmp_path / "cache")
    tracemalloc.start()
    try:
        geo = load_geo(config, build=False)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert geo.index is None and geo.direct is not None
    assert held < database.stat().st_size // 2, held
    assert geo.digest == hashlib.sha256(database.read_bytes()).hexdigest()  # of the copy
    with maxminddb.open_database(str(BUNDLED)) as reader:
        for address in sample_addresses(5, 50):
            expected = reader.get(address)
            placed = geo.direct.database.place_at(address)
            assert (placed is None) == (expected is None), address
    geo.close()


def test_a_small_database_is_indexed_at_start_by_a_child_and_a_failed_one_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's start (load_geo with `apart`) has a small database's index built by a real
    `python -m geodns.geo.index` child and maps it from the cache, so numpy stays out of the
    server; a child that fails is logged (`geo_index_failed`, with its last error line) and
    the server builds the index itself."""
    import os
    import sys

    from structlog.testing import capture_logs

    from geodns.config import loader
    from geodns.config.server import ServerConfig

    database = tmp_path / "country.mmdb"
    database.write_bytes(BUNDLED.read_bytes())
    started: list[tuple[str, ...]] = []
    real_command = loader.child_command

    def recorded(module: str, *arguments: str) -> tuple[list[str], dict[str, str]]:
        started.append((module, *arguments))
        return real_command(module, *arguments)

    monkeypatch.setattr(loader, "child_command", recorded)
    config = ServerConfig(geoip_database=database, cache_dir=tmp_path / "cache")
    geo = loader.load_geo(config, build=True, apart=True)
    assert geo.index is not None
    assert [entry[0] for entry in started] == ["geodns.geo.index"]
    assert started[0][3] == str(os.getpid())  # it ends with us
    assert load_index(tmp_path / "cache", geo.digest) is not None  # saved by the child
    geo.close()

    def failing(module: str, *arguments: str) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", "raise SystemExit('numpy is missing')"], dict(os.environ)

    monkeypatch.setattr(loader, "child_command", failing)
    config = ServerConfig(geoip_database=database, cache_dir=tmp_path / "other-cache")
    with capture_logs() as logs:
        geo = loader.load_geo(config, build=True, apart=True)
    assert geo.index is not None  # built here
    failed = [entry for entry in logs if entry["event"] == "geo_index_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "numpy is missing", logs
    geo.close()

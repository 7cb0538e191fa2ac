"""The search-tree walk finds the same record and network as maxminddb's own reader.

The locator walks the tree itself so that a new client network costs a few steps rather than a
full record decode; these tests hold it to the reader's answers for every record size real
databases use, on the bundled database and on a small one with nested and empty networks.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import maxminddb
import pytest
from mmdb_factory import city_record, rewrite_record_size, write_city_db

from geodns.geo.locator import GeoLocator
from geodns.geo.mmdbtree import SearchTree

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


def assert_same_as_the_reader(path: Path, addresses: list) -> None:
    locator = GeoLocator(path)
    with maxminddb.open_database(str(path)) as reader:
        for address in addresses:
            record, prefix = reader.get_with_prefix_len(address)
            placement = locator.locate(address.version, int(address))
            assert placement.prefix == prefix, f"{address}: prefix {placement.prefix} != {prefix}"
            expected = locator._place(record)
            got = placement.place
            assert (got is None) == (expected is None), f"{address}: {got} vs {expected}"
            if got is not None:
                assert got is expected, f"{address}: {got} vs {expected}"
    locator.close()


@pytest.mark.parametrize("record_size", [24, 28, 32])
def test_every_record_size_matches_the_reader(tmp_path: Path, record_size: int) -> None:
    path = write_city_db(tmp_path / "city.mmdb", NETWORKS)
    if record_size != 24:
        path = rewrite_record_size(path, tmp_path / f"city-{record_size}.mmdb", record_size)
    with maxminddb.open_database(str(path)) as reader:
        assert reader.metadata().record_size == record_size
    assert_same_as_the_reader(path, sample_addresses(record_size, 2_000))


def test_the_bundled_database_matches_the_reader() -> None:
    assert_same_as_the_reader(BUNDLED, sample_addresses(7, 5_000))


def test_ipv4_mapped_addresses_are_placed_as_ipv4(tmp_path: Path) -> None:
    locator = GeoLocator(write_city_db(tmp_path / "city.mmdb", NETWORKS))
    mapped = locator.locate(6, int(ipaddress.IPv6Address("::ffff:1.2.3.4")))
    plain = locator.locate(4, int(ipaddress.IPv4Address("1.2.3.4")))
    assert (mapped.family, mapped.prefix, mapped.place) == (4, 24, plain.place)
    assert plain.place is not None and plain.place.city == "Seoul"
    locator.close()


@pytest.mark.parametrize(
    ("record_size", "left", "right"),
    [
        (24, 0xABCDEF, 0x123456),
        (28, 0xABCDEF1, 0x1234567),  # the shared middle byte holds both high nibbles
        (28, 0x0000011, 0xF000011),
        (32, 0xFEDCBA98, 0x12345678),
    ],
)
def test_large_record_values_decode_in_every_size(
    tmp_path: Path, record_size: int, left: int, right: int
) -> None:
    """Values beyond 24 bits only occur in databases of millions of nodes: a one-node tree."""
    if record_size == 24:
        node = left.to_bytes(3) + right.to_bytes(3)
    elif record_size == 28:
        node = left.to_bytes(4)[1:] + bytes([(left >> 24) << 4 | right >> 24])
        node += right.to_bytes(4)[1:]
    else:
        node = left.to_bytes(4) + right.to_bytes(4)
    path = tmp_path / "tree.bin"
    path.write_bytes(node)
    tree = SearchTree(path, node_count=1, record_size=record_size, ip_version=4)
    assert tree.lookup(4, 0x00000001) == (left - 1 - 16, 1)  # first bit 0: left
    assert tree.lookup(4, 0x80000000) == (right - 1 - 16, 1)  # first bit 1: right
    tree.close()


def test_a_search_tree_cut_short_is_refused_at_load(tmp_path: Path) -> None:
    """A file shorter than its metadata's node count says is an error when opened, not a
    failed query later."""
    path = tmp_path / "tree.bin"
    path.write_bytes(bytes(6 * 2 - 1))  # two 24-bit nodes need 12 bytes
    with pytest.raises(ValueError, match="cut short"):
        SearchTree(path, node_count=2, record_size=24, ip_version=4)

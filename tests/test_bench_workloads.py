"""The benchmark's pure parts that make its input: client subnets, query bytes, reply parsing,
the IPv4 networks read from a database's tree, PoP sets and the servers' configurations.

No server and no dnsperf run here: these check what the benchmark sends and how it reads what
comes back, so a wrong figure cannot come from a wrong query or a misread reply.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import dns.edns
import dns.message
import dns.rrset
import pytest
from mmdb_factory import city_record, rewrite_record_size, write_city_db

from bench import databases, popsets, servers, workloads
from bench.dnswire import QTYPES, parse_reply, query_wire, write_binary

NETWORKS = [(0x0A000000, 16), (0xC0000200, 24), (0xC6336400, 26)]  # 10.0/16, 192.0.2/24, /26


def test_subnets_are_distinct_24s_inside_their_networks_and_skip_the_excluded() -> None:
    rng = random.Random(1)
    excluded = {0xC0000200}
    subnets = workloads.draw_subnets(NETWORKS, 50, rng, excluded)
    assert len(subnets) == len(set(subnets)) == 50
    assert 0xC0000200 not in subnets
    for subnet in subnets:
        assert subnet & 0xFF == 0
        assert any(
            start >> 8 <= subnet >> 8 <= (start + (1 << (32 - prefix)) - 1) >> 8
            for start, prefix in NETWORKS
        )
    assert workloads.draw_subnets(NETWORKS, 50, random.Random(1), excluded) == subnets


def test_a_network_longer_than_24_gives_the_24_it_lies_in() -> None:
    assert workloads.draw_subnets([(0xC6336440, 26)], 1, random.Random(0), set()) == [0xC6336400]


def test_drawing_more_subnets_than_exist_fails_clearly() -> None:
    with pytest.raises(RuntimeError, match="only 1"):
        workloads.draw_subnets([(0xC0000200, 24)], 2, random.Random(0), set())


def test_shares_are_equal_and_disjoint() -> None:
    shares = workloads.split_shares(list(range(11)), 3)
    assert shares == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_a_geo_query_carries_the_subnet_as_ecs_and_reads_back_with_dnspython(
    tmp_path: Path,
) -> None:
    wire = query_wire("www.cdn.example.com", QTYPES["A"], (0xC6336400, 24), ident=7)
    message = dns.message.from_wire(wire)
    assert message.id == 7 and message.flags == 0
    assert str(message.question[0].name) == "www.cdn.example.com."
    (option,) = message.options
    assert isinstance(option, dns.edns.ECSOption)
    assert (option.address, option.srclen, option.scopelen) == ("198.51.100.0", 24, 0)
    path = tmp_path / "q.bin"
    assert write_binary(path, [wire, wire]) == 2
    data = path.read_bytes()
    assert int.from_bytes(data[:2], "big") == len(wire) and len(data) == 2 * (len(wire) + 2)


def test_big_zone_queries_ask_every_name_in_turn() -> None:
    messages = workloads.big_zone_queries(3, [0x01020300, 0x01020400, 0x01020500, 0x01020600])
    names = [str(dns.message.from_wire(m).question[0].name) for m in messages]
    assert names == [f"n{i}.big.example.com." for i in (0, 1, 2, 0)]


def reply_with(answer: list[str], scope: int | None, rcode: int = 0) -> bytes:
    query = dns.message.from_wire(query_wire("www.cdn.example.com", 1, (0x08080800, 24)))
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    if answer:
        reply.answer.append(dns.rrset.from_text("www.cdn.example.com.", 30, "IN", "A", *answer))
    if scope is None:
        reply.use_edns(0, options=[])
    else:
        reply.use_edns(0, options=[dns.edns.ECSOption("8.8.8.0", 24, scope)])
    return reply.to_wire()


def test_a_reply_is_read_as_its_sorted_addresses_and_ecs_scope() -> None:
    parsed = parse_reply(reply_with(["198.51.100.31", "198.51.100.21"], 14))
    assert parsed.answer == ("198.51.100.21", "198.51.100.31")
    assert parsed.scope == 14
    assert parse_reply(reply_with(["198.51.100.31"], None)).scope is None
    assert parse_reply(reply_with([], 0, rcode=2)).answer == "rcode 2"


@pytest.mark.parametrize("record_size", [24, 28, 32])
def test_ipv4_networks_are_read_from_the_search_tree(tmp_path: Path, record_size: int) -> None:
    entries = [
        ("1.0.0.0/24", city_record("AU", "OC", -33.5, 151.0)),
        ("2.16.0.0/13", city_record("FR", "EU", 48.8, 2.3)),
        ("81.2.69.160/27", city_record("GB", "EU", 51.5, -0.1)),
        ("2001:db8::/32", city_record("DE", "EU", 50.1, 8.7)),
    ]
    path = write_city_db(tmp_path / "city.mmdb", entries)
    if record_size != 24:
        path = rewrite_record_size(path, tmp_path / f"city{record_size}.mmdb", record_size)
    found = databases.v4_networks(path)
    expected = [
        (int(ipaddress.ip_network(c).network_address), ipaddress.ip_network(c).prefixlen)
        for c, _ in entries[:3]
    ]
    assert sorted(found) == expected
    assert databases.v4_networks(path) == found  # the second time from the cache beside it


def test_a_hundred_pops_are_spread_apart_and_get_distinct_documentation_addresses() -> None:
    cities = [
        popsets.City(f"c{i}", "ZZ", lat, lon, 1_000_000 - i)
        for i, (lat, lon) in enumerate(
            (a, b) for a in range(-60, 70, 10) for b in range(-170, 180, 20)
        )
    ]
    cities.append(popsets.City("next-door", "ZZ", -60.0, -169.9, 2_000_000))
    chosen = popsets.spread_cities(cities, 100, spread_km=500)
    assert chosen[0].name == "next-door" and "c0" not in [c.name for c in chosen]
    pops = popsets.pops_in_cities(chosen, "100-pop")
    assert len({p.ipv4 for p in pops.pops}) == len({p.name for p in pops.pops}) == 100
    assert all(
        ipaddress.ip_address(p.ipv4) in ipaddress.ip_network("203.0.113.0/24") for p in pops.pops
    )
    assert pops.default_order == tuple(p.name for p in pops.pops[:3])
    with pytest.raises(ValueError):
        popsets.spread_cities(cities[:5], 10)


def test_site_names_are_ascii() -> None:
    assert popsets.slug("São Paulo") == "sao-paulo"
    assert popsets.slug("Xi'an") == "xi-an"


def test_both_servers_get_the_same_pops_and_the_big_zone(tmp_path: Path) -> None:
    six = popsets.six_pops()
    assert [p.name for p in six.pops][:2] == ["jakarta", "singapore"]
    setup = servers.Setup(tmp_path / "db.mmdb", six, big_zone_names=5)
    config = servers.write_geodns(tmp_path / "geodns", 5300, setup)
    import yaml

    settings = yaml.safe_load(config.read_text())
    assert set(settings["sites"]) == {p.name for p in six.pops}
    big = yaml.safe_load((tmp_path / "geodns" / "zones" / "big.example.com.yaml").read_text())
    assert {f"n{i}" for i in range(5)} < set(big)
    assert big["n4"]["values"] == sorted(p.ipv4 for p in six.pops)
    servers.write_gdnsd(tmp_path / "gdnsd", 5301, setup, generation=3)
    text = (tmp_path / "gdnsd" / "config").read_text()
    for pop in six.pops:
        assert f"{pop.name} => [ {pop.latitude}, {pop.longitude} ]" in text
    assert "datacenters => [ ashburn, frankfurt, singapore," in text
    zone = (tmp_path / "gdnsd" / "zones" / "big.example.com").read_text()
    assert "n4 30 DYNA geoip!www" in zone and '"generation 3"' in zone


def test_answer_differences_are_told_apart_by_distance_or_a_missing_location(
    tmp_path: Path,
) -> None:
    from bench.answers import compare_geo
    from bench.dnswire import GeoReply

    path = write_city_db(
        tmp_path / "city.mmdb",
        [
            ("1.0.0.0/24", city_record("DE", "EU", 50.0, 8.0)),
            ("1.0.1.0/24", city_record("DE", "EU", 50.0, 8.0)),
            ("1.0.2.0/24", {"registered_country": {"iso_code": "NL"}}),
        ],
    )
    six = popsets.six_pops()
    frankfurt, ashburn = ("198.51.100.21",), ("198.51.100.31",)
    mine = {0x01000000: GeoReply(frankfurt, 16), 0x01000100: GeoReply(frankfurt, 16)}
    mine[0x01000200] = GeoReply(frankfurt, 24)
    theirs = {0x01000000: GeoReply(frankfurt, 14), 0x01000100: GeoReply(ashburn, 14)}
    theirs[0x01000200] = GeoReply(ashburn, 24)
    check = compare_geo(path, mine, theirs, six, "warm")
    assert (check["compared"], check["same"], check["mismatches"]) == (3, 1, 2)
    assert (check["near_ties"], check["no_location"]) == (0, 1)
    far, unlocated = check["examples"]
    assert far["km"]["geodns"] < 100 < far["km"]["gdnsd"]
    assert unlocated["no_location"] and unlocated["record_countries"] == ["NL"]

"""Geo answers over the wire: octoDNS rules and pools, nearest, answers: N, sticky, ECS scope.

A small real GeoIP2-City database is built for the test with known networks. The answers come from
the answer path in-process, with the snapshot `geodns serve` builds (`geo_in_process`); a real
`geodns serve` process, queried over UDP and TCP, answers the end-to-end checks: users kept put
by `sticky` on both transports, the resolver's own address over IPv4 and IPv6, `geodns explain`
beside it, a database replaced under it. 127.0.0.0/8 and ::1 are in the database too, so queries
without ECS are located by the resolver (source) address.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from inprocess import InProcessServer
from mmdb_factory import city_record, write_city_db
from server_process import GeodnsServer, build_header, encode_name

ZONE = "geo.test"

SITES = {
    "jkt": {
        "kind": "pop",
        "location": {"lat": -6.2, "lon": 106.8},
        "addresses": ["192.0.2.1", "2001:db8::1"],
    },
    "sin": {
        "kind": "pop",
        "location": {"lat": 1.35, "lon": 103.8},
        "addresses": ["192.0.2.2", "2001:db8::2"],
    },
    "kul": {"kind": "pop", "location": {"lat": 3.14, "lon": 101.7}, "addresses": ["192.0.2.3"]},
    "fra": {
        "kind": "pop",
        "location": {"lat": 50.1, "lon": 8.7},
        "addresses": ["192.0.2.4", "2001:db8::4"],
    },
    "iad": {
        "kind": "pop",
        "location": {"lat": 39.0, "lon": -77.5},
        "addresses": ["192.0.2.5", "2001:db8::5"],
    },
    "gru": {
        "kind": "pop",
        "location": {"lat": -23.5, "lon": -46.6},
        "addresses": ["192.0.2.6", "2001:db8::6"],
    },
}
SITE_OF = {a: name for name, s in SITES.items() for a in s["addresses"]}
V4 = [a for s in SITES.values() for a in s["addresses"] if ":" not in a]
V6 = [a for s in SITES.values() for a in s["addresses"] if ":" in a]

NETWORKS = [
    ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
    ("60.48.0.0/16", city_record("MY", "AS", 3.1, 101.7, "Kuala Lumpur")),
    ("85.0.0.0/16", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
    ("177.0.0.0/16", city_record("BR", "SA", -23.5, -46.6, "Sao Paulo")),
    ("66.0.0.0/16", city_record("US", "NA", 37.4, -122.1, "Mountain View", "CA")),
    ("67.0.0.0/16", city_record("US", "NA", 39.0, -77.5, "Ashburn", "VA")),
    ("127.0.0.0/8", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
    ("2a00:1000::/32", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
    ("2400:1000::/32", city_record("MY", "AS", 3.1, 101.7, "Kuala Lumpur")),
    ("::1/128", city_record("BR", "SA", -23.5, -46.6, "Sao Paulo")),
]


def _nearest(values: list[str], **extra: object) -> dict:
    return {
        "type": "AAAA" if ":" in values[0] else "A",
        "ttl": 30,
        "values": values,
        "octodns": {"geodns": {"nearest": True, **extra}},
    }


def _pool(*values: str, fallback: str | None = None, **item: object) -> dict:
    pool: dict = {"values": [{"value": v, **item} for v in values]}
    if fallback:
        pool["fallback"] = fallback
    return pool


GEO_ZONE = {
    "": {"type": "NS", "values": ["ns1.geo.test."]},
    "ns1": {"type": "A", "value": "192.0.2.53"},
    "static": {"type": "A", "value": "192.0.2.77"},
    "v4only": _nearest(V4),
    "near": [_nearest(V4), _nearest(V6)],
    "three": _nearest(V4, answers=3),
    "pin": _nearest(["192.0.2.1", "192.0.2.2", "192.0.2.3"], sticky={"margin_km": 5000}),
    "rules": {
        "type": "A",
        "ttl": 60,
        "value": "192.0.2.99",
        "dynamic": {
            "pools": {
                "p_sub": _pool("192.0.2.1"),
                "p_ca": _pool("192.0.2.5"),
                "p_id": _pool("192.0.2.3"),
                "p_us": _pool("192.0.2.6"),
                "p_as": _pool("192.0.2.2"),
                "p_default": _pool("192.0.2.4"),
            },
            "rules": [
                {"subnets": ["85.0.5.0/24"], "pool": "p_sub"},
                {"geos": ["NA-US-CA"], "pool": "p_ca"},
                {"geos": ["AS-ID"], "pool": "p_id"},
                {"geos": ["NA-US"], "pool": "p_us"},
                {"geos": ["AS"], "pool": "p_as"},
                {"pool": "p_default"},
            ],
        },
    },
    "weighted": {
        "type": "A",
        "value": "192.0.2.99",
        "dynamic": {
            "pools": {
                "w": {
                    "values": [
                        {"value": "192.0.2.1", "weight": 1},
                        {"value": "192.0.2.2", "weight": 3},
                    ]
                }
            },
            "rules": [{"pool": "w"}],
        },
    },
    "chain": {
        "type": "A",
        "value": "192.0.2.99",
        "dynamic": {
            "pools": {
                "a": _pool("192.0.2.1", fallback="b", status="down"),
                "b": _pool("192.0.2.2", fallback="c", status="down"),
                "c": _pool("192.0.2.3", status="up"),
            },
            "rules": [{"pool": "a"}],
        },
    },
    "exhausted": {
        "type": "A",
        "value": "192.0.2.99",
        "dynamic": {
            "pools": {
                "a": _pool("192.0.2.1", fallback="b", status="down"),
                "b": _pool("192.0.2.2", status="down"),
            },
            "rules": [{"pool": "a"}],
        },
    },
    "narrow": {
        "type": "A",
        "value": "192.0.2.99",
        "dynamic": {
            "pools": {"inside": _pool("192.0.2.1"), "rest": _pool("192.0.2.4")},
            "rules": [{"subnets": ["85.0.128.0/17"], "pool": "inside"}, {"pool": "rest"}],
        },
        "octodns": {"geodns": {"nearest": {"pools": ["rest", "inside"]}}},
    },
}


@pytest.fixture(scope="module")
def geo_config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    db = tmp_path_factory.mktemp("geo") / "city.mmdb"
    write_city_db(db, NETWORKS)
    return {"sites": SITES, "geoip": {"database": str(db)}}


@pytest.fixture(scope="module")
def geo_server(geo_config: dict):
    with GeodnsServer(geo_config, {ZONE: GEO_ZONE}) as server:
        yield server


@pytest.fixture(scope="module")
def geo_in_process(geo_config: dict, tmp_path_factory: pytest.TempPathFactory) -> InProcessServer:
    return InProcessServer(tmp_path_factory.mktemp("in-process"), geo_config, {ZONE: GEO_ZONE})


def addresses(reply: dns.message.Message) -> list[str]:
    return [rr.address for rrset in reply.answer for rr in rrset if rrset.rdtype in (1, 28)]


def scope_of(reply: dns.message.Message) -> int | None:
    for option in reply.options:
        if isinstance(option, dns.edns.ECSOption):
            return option.scopelen
    return None


def ask(
    server: GeodnsServer | InProcessServer,
    name: str,
    ecs: str | None = None,
    rdtype: str = "A",
    tcp: bool = False,
):
    reply = server.query(f"{name}.{ZONE}", rdtype, ecs=ecs, tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR, reply
    return reply


@pytest.mark.parametrize("tcp", [False, True])
@pytest.mark.parametrize(
    ("subnet", "site"),
    [
        ("36.64.7.0/24", "jkt"),
        ("60.48.1.0/24", "kul"),
        ("85.0.1.0/24", "fra"),
        ("177.0.9.0/24", "gru"),
        ("67.0.3.0/24", "iad"),
        ("66.0.0.0/24", "iad"),
    ],
)
def test_nearest_site_for_ecs_clients(
    geo_in_process: InProcessServer, subnet: str, site: str, tcp: bool
) -> None:
    reply = ask(geo_in_process, "near", subnet, tcp=tcp)
    assert [SITE_OF[a] for a in addresses(reply)] == [site]
    assert scope_of(reply) == 16  # the database network's prefix
    echoed = next(o for o in reply.options if isinstance(o, dns.edns.ECSOption))
    assert (echoed.address, echoed.srclen) == (subnet.split("/")[0], 24)


def test_nearest_ipv6_and_family_filtering(geo_in_process: InProcessServer) -> None:
    reply = ask(geo_in_process, "near", "2a00:1000:5::/48", "AAAA")
    assert addresses(reply) == ["2001:db8::4"]
    assert scope_of(reply) == 32
    # Kuala Lumpur is nearest to this user but has no IPv6 address: Singapore answers AAAA
    reply = ask(geo_in_process, "near", "2400:1000:1::/48", "AAAA")
    assert addresses(reply) == ["2001:db8::2"]
    reply = ask(geo_in_process, "near", "60.48.1.0/24", "A")
    assert addresses(reply) == ["192.0.2.3"]
    # no AAAA record at all: NODATA with the SOA
    reply = ask(geo_in_process, "v4only", "2a00:1000::/32", "AAAA")
    assert reply.answer == [] and reply.authority[0].rdtype == dns.rdatatype.SOA


def test_nearest_by_resolver_address_without_ecs(geo_server: GeodnsServer) -> None:
    reply = ask(geo_server, "near")  # from 127.0.0.1, which the test database places in Frankfurt
    assert addresses(reply) == ["192.0.2.4"]
    assert scope_of(reply) is None  # no ECS asked, none answered
    if geo_server.ipv6:
        reply = geo_server.query(f"near.{ZONE}", "A", host="::1")  # ::1 is in Sao Paulo
        assert addresses(reply) == ["192.0.2.6"]


def test_ecs_source_zero_uses_resolver_and_scope_zero(geo_in_process: InProcessServer) -> None:
    option = dns.edns.ECSOption("0.0.0.0", 0)
    reply = geo_in_process.query(f"near.{ZONE}", "A", ecs=option)
    assert addresses(reply) == ["192.0.2.4"]  # located by 127.0.0.1 -> Frankfurt
    assert scope_of(reply) == 0


def test_answers_n_in_distance_order(geo_in_process: InProcessServer) -> None:
    reply = ask(geo_in_process, "three", "36.64.1.0/24")
    assert [SITE_OF[a] for a in addresses(reply)] == ["jkt", "sin", "kul"]
    reply = ask(geo_in_process, "three", "85.0.1.0/24")
    assert [SITE_OF[a] for a in addresses(reply)] == ["fra", "iad", "jkt"] or [
        SITE_OF[a] for a in addresses(reply)
    ][:2] == ["fra", "iad"]


@pytest.mark.parametrize(
    ("subnet", "expected", "why"),
    [
        ("85.0.5.0/24", "192.0.2.1", "subnet rule wins over everything after it"),
        ("66.0.1.0/24", "192.0.2.5", "province NA-US-CA"),
        ("36.64.1.0/24", "192.0.2.3", "country AS-ID before continent AS"),
        ("67.0.1.0/24", "192.0.2.6", "country NA-US (Virginia is not CA)"),
        ("60.48.1.0/24", "192.0.2.2", "continent AS"),
        ("177.0.1.0/24", "192.0.2.4", "catch-all"),
        ("10.1.0.0/24", "192.0.2.4", "not located: catch-all"),
    ],
)
def test_octodns_rule_order(
    geo_in_process: InProcessServer, subnet: str, expected: str, why: str
) -> None:
    assert addresses(ask(geo_in_process, "rules", subnet)) == [expected], why


def test_subnet_rule_scope_is_the_rule_subnet(geo_in_process: InProcessServer) -> None:
    assert scope_of(ask(geo_in_process, "rules", "85.0.5.0/24")) == 24


def test_static_answers_have_scope_zero(geo_in_process: InProcessServer) -> None:
    reply = ask(geo_in_process, "static", "36.64.1.0/24")
    assert addresses(reply) == ["192.0.2.77"] and scope_of(reply) == 0


def test_scope_never_covers_a_rule_subnet_the_user_is_not_in(
    geo_in_process: InProcessServer,
) -> None:
    outside = ask(geo_in_process, "narrow", "85.0.1.0/24")
    assert addresses(outside) == ["192.0.2.4"]
    # 85.0.0.0/16 is one database network, but 85.0.128.0/17 answers differently: /17 at least
    assert scope_of(outside) == 17
    inside = ask(geo_in_process, "narrow", "85.0.200.0/24")
    assert addresses(inside) == ["192.0.2.1"] and scope_of(inside) == 17


def test_weights_within_a_pool(geo_in_process: InProcessServer) -> None:
    counts: Counter[str] = Counter()
    for _ in range(400):
        counts.update(addresses(ask(geo_in_process, "weighted")))
    assert sum(counts.values()) == 400
    share = counts["192.0.2.2"] / 400
    assert 0.65 <= share <= 0.85, counts  # weight 3 of 4


def test_status_and_fallback_chain(geo_in_process: InProcessServer) -> None:
    assert addresses(ask(geo_in_process, "chain", "36.64.1.0/24")) == ["192.0.2.3"]
    # every pool in the chain is down: the record's plain values are the last resort
    assert addresses(ask(geo_in_process, "exhausted", "36.64.1.0/24")) == ["192.0.2.99"]


def test_sticky_keeps_users_put(geo_server: GeodnsServer) -> None:
    seen: dict[str, str] = {}
    for third in range(0, 250, 5):
        subnet = f"36.64.{third}.0/24"
        reply = ask(geo_server, "pin", subnet)
        (answer,) = addresses(reply)
        assert scope_of(reply) == 24
        seen[subnet] = answer
    assert len(set(seen.values())) >= 2, "rendezvous hashing should spread users"
    for subnet, answer in list(seen.items())[:10]:
        assert addresses(ask(geo_server, "pin", subnet, tcp=True)) == [answer]


def _ecs_query(family: int, source: int, address: bytes) -> bytes:
    option = struct.pack("!HHHBB", 8, 4 + len(address), family, source, 0) + address
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(option)) + option
    return build_header(0x4242, arcount=1) + encode_name(f"near.{ZONE}") + b"\x00\x01\x00\x01" + opt


@pytest.mark.parametrize(
    ("family", "source", "address", "why"),
    [
        (1, 33, bytes(5), "source prefix too long for IPv4"),
        (2, 129, bytes(17), "source prefix too long for IPv6"),
        (3, 8, b"\x01", "unknown family"),
        (1, 24, b"\x24\x40\x01\x00", "address longer than the prefix needs"),
        (1, 24, b"\x24\x40", "address shorter than the prefix needs"),
        (1, 20, b"\x24\x40\x0f", "bits set beyond the prefix"),
    ],
)
def test_malformed_ecs_is_formerr(
    geo_in_process: InProcessServer, family: int, source: int, address: bytes, why: str
) -> None:
    reply = geo_in_process.raw_udp(_ecs_query(family, source, address))
    assert reply is not None, why
    (qid, flags) = struct.unpack("!HH", reply[:4])
    assert qid == 0x4242 and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR, why
    assert addresses(ask(geo_in_process, "near", "36.64.1.0/24")) == ["192.0.2.1"]  # still serving


def test_explain_runs_the_server_decision(geo_server: GeodnsServer) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "geodns",
            "explain",
            "60.48.1.0/24",
            f"near.{ZONE}",
            "--config",
            str(geo_server.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=str(geo_server.dir),
        env=geo_server.environment(),
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Kuala Lumpur" in out and "60.48.0.0/16" in out
    assert "192.0.2.3" in out and "kul" in out and "ECS scope: /16" in out
    lines = [line for line in out.splitlines() if " km " in line]
    assert [line.split()[0] for line in lines][:2] == ["kul", "sin"]
    assert "ms fibre RTT" in lines[0]


def test_database_is_reread_when_it_changes(tmp_path: Path) -> None:
    db = tmp_path / "city.mmdb"
    write_city_db(db, [("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8))])
    with GeodnsServer({"sites": SITES, "geoip": {"database": str(db)}}, {ZONE: GEO_ZONE}) as server:
        assert addresses(ask(server, "near", "36.64.1.0/24")) == ["192.0.2.1"]
        moved = tmp_path / "new.mmdb"
        write_city_db(moved, [("36.64.0.0/16", city_record("BR", "SA", -23.5, -46.6))])
        moved.replace(db)
        deadline = time.monotonic() + 10
        answer = None
        while time.monotonic() < deadline:
            answer = addresses(ask(server, "near", "36.64.1.0/24"))
            if answer == ["192.0.2.6"]:
                break
            time.sleep(0.2)
        assert answer == ["192.0.2.6"]


def test_right_after_ready_answers_come_from_the_answer_maps(tmp_path: Path) -> None:
    """The main process answers before its answer maps are built (records decided per place,
    each place's own block as the scope) and says READY=1 once they are: the first query after
    READY gets the map's block. Jakarta and Bandung are two places in neighbouring /16s, both
    nearest to jkt: the place index keeps them apart (/16 each), the answer map merges them."""
    db = tmp_path / "city.mmdb"
    write_city_db(
        db,
        [
            ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
            ("36.65.0.0/16", city_record("ID", "AS", -6.9, 107.6, "Bandung")),
            ("127.0.0.0/8", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
        ],
    )
    config = {"sites": SITES, "geoip": {"database": str(db)}}
    with GeodnsServer(config, {ZONE: GEO_ZONE}) as server:
        reply = ask(server, "near", "36.64.7.0/24")
        assert [SITE_OF[a] for a in addresses(reply)] == ["jkt"]
        scope = scope_of(reply)
        assert scope is not None and scope < 16, scope

"""Reply templates for queries that differ only in their ECS address (geodns.serving.subnet_templates).

The template path must give, byte for byte, the reply the full path gives, and must never be
used where the answer depends on more than the client's place. These tests compare the two
paths on many subnets in-process, then check the real server over UDP: the right site, the
client's own address echoed, the scope of its database network, and a drain taking effect.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import pytest
from mmdb_factory import city_record, write_city_db
from server_process import GeodnsServer

from geodns.config.loader import open_geo
from geodns.config.server import load_config
from geodns.dns.wire import parse_query
from geodns.health.state import HealthView
from geodns.serving.engine import build_snapshot, respond
from geodns.serving.server import ServerState, handle

ZONE = "tpl.test"
SITES = {
    "jkt": {"kind": "pop", "location": {"lat": -6.2, "lon": 106.8}, "addresses": ["192.0.2.1"]},
    "fra": {"kind": "pop", "location": {"lat": 50.1, "lon": 8.7}, "addresses": ["192.0.2.4"]},
}
NETWORKS = [
    ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
    ("36.65.0.0/20", city_record("ID", "AS", -6.9, 107.6, "Bandung")),
    ("85.0.0.0/16", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
    ("85.1.0.0/22", city_record("DE", "EU", 52.5, 13.4, "Berlin")),
]
TEMPLATE_ZONE = {
    "": {"type": "NS", "value": "ns1.tpl.test."},
    "ns1": {"type": "A", "value": "192.0.2.53"},
    "static": {"type": "A", "value": "192.0.2.77"},
    "near": {
        "type": "A",
        "ttl": 30,
        "values": ["192.0.2.1", "192.0.2.4"],
        "octodns": {"geodns": {"nearest": True}},
    },
    "sticky": {
        "type": "A",
        "ttl": 30,
        "values": ["192.0.2.1", "192.0.2.4"],
        "octodns": {"geodns": {"nearest": True, "sticky": {"margin_km": 20000}}},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeodnsServer]:
    db = tmp_path_factory.mktemp("geo") / "city.mmdb"
    write_city_db(db, NETWORKS)
    config = {"sites": SITES, "geoip": {"database": str(db)}}
    with GeodnsServer(config, {ZONE: TEMPLATE_ZONE}) as running:
        yield running


def wire(name: str, subnet: str, query_id: int = 0) -> bytes:
    option = dns.edns.ECSOption.from_text(subnet)
    message = dns.message.make_query(f"{name}.{ZONE}", "A", use_edns=0, options=[option])
    message.id = query_id
    return message.to_wire()


def subnets(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    bases = ["36.64", "36.65", "85.0", "85.1", "10.9"]  # 10.9/16 is in no network
    return [f"{rng.choice(bases)}.{rng.randrange(256)}.0/24" for _ in range(count)]


def test_template_replies_are_the_full_path_replies_byte_for_byte(server: GeodnsServer) -> None:
    config = load_config(Path(server.config_path))
    geo = open_geo(config)
    try:
        snapshot = build_snapshot(config, geo)
        state = ServerState(snapshot)
        used = 0
        for number, subnet in enumerate(subnets(600, seed=3)):
            name = ("near", "static", "sticky")[number % 3]
            data = wire(name, subnet, query_id=number)
            reused = snapshot.from_template(data)
            full, outcome = respond(parse_query(data), "127.0.0.1", snapshot, False)
            if reused is not None:
                used += 1
                assert name != "sticky", "a sticky answer depends on the address, not the place"
                assert reused[0] == full, subnet
                assert reused[2] == outcome, subnet
            assert handle(state, data, "127.0.0.1", False) == full
        # near and static: after the first query of each place, every one comes from a template
        assert used >= 350, used
        # a new health view starts without templates
        probe = wire("near", "36.64.1.0/24")
        assert snapshot.from_template(probe) is not None
        assert snapshot.with_health(snapshot.health).from_template(probe) is None
    finally:
        geo.close()


def test_a_new_place_reuses_the_reply_of_a_place_with_the_same_answer(
    server: GeodnsServer,
) -> None:
    config = load_config(Path(server.config_path))
    geo = open_geo(config)
    try:
        for down in (frozenset(), frozenset({"jkt"})):
            snapshot = build_snapshot(config, geo).with_health(HealthView(down))
            state = ServerState(snapshot)
            handle(state, wire("near", "36.64.1.0/24"), "127.0.0.1", False)  # Jakarta: learned
            # Bandung: never asked from, but its answer is Jakarta's (under this health view)
            bandung = wire("near", "36.65.1.0/24", query_id=7)
            reused = snapshot.from_template(bandung)
            assert reused is not None
            full, outcome = respond(parse_query(bandung), "127.0.0.1", snapshot, False)
            assert (reused[0], reused[2]) == (full, outcome)
            assert outcome.scope == 20  # Bandung's own network, not Jakarta's /16
            # Berlin is answered from Frankfurt: the same reply only when Jakarta is drained
            berlin = snapshot.from_template(wire("near", "85.1.1.0/24"))
            if down:
                assert berlin is not None
                assert berlin[2].scope == 22
            else:
                assert berlin is None
    finally:
        geo.close()


def ask(server: GeodnsServer, name: str, subnet: str) -> tuple[list[str], str, int]:
    query = dns.message.make_query(
        f"{name}.{ZONE}", "A", use_edns=0, options=[dns.edns.ECSOption.from_text(subnet)]
    )
    reply = dns.query.udp(query, server.host, port=server.port, timeout=2)
    (ecs,) = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
    addresses = [rr.address for rrset in reply.answer for rr in rrset]
    return addresses, f"{ecs.address}/{ecs.srclen}", ecs.scopelen


def test_each_subnet_gets_its_own_address_echoed_with_its_network_scope(
    server: GeodnsServer,
) -> None:
    # the same place (Jakarta's /16), many subnets: the template is reused for all but the first
    for third in (9, 10, 200):
        assert ask(server, "near", f"36.64.{third}.0/24") == (
            ["192.0.2.1"],
            f"36.64.{third}.0/24",
            16,
        )
    # another place in the same region: its own database network's scope
    assert ask(server, "near", "36.65.3.0/24") == (["192.0.2.1"], "36.65.3.0/24", 20)
    assert ask(server, "near", "85.1.2.0/24") == (["192.0.2.4"], "85.1.2.0/24", 22)
    # a static answer holds for every subnet: scope 0
    assert ask(server, "static", "85.0.7.0/24") == (["192.0.2.77"], "85.0.7.0/24", 0)
    assert ask(server, "static", "36.64.7.0/24") == (["192.0.2.77"], "36.64.7.0/24", 0)


def test_a_drain_reaches_subnets_answered_from_a_template(server: GeodnsServer) -> None:
    for third in (20, 21):
        assert ask(server, "near", f"36.64.{third}.0/24")[0] == ["192.0.2.1"]
    assert server.cli("drain", "jkt").returncode == 0
    try:
        assert ask(server, "near", "36.64.22.0/24")[0] == ["192.0.2.4"]
    finally:
        assert server.cli("undrain", "jkt").returncode == 0
    assert ask(server, "near", "36.64.23.0/24")[0] == ["192.0.2.1"]

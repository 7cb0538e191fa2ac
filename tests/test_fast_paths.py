"""The fast paths (reply cache, templates) answer exactly what the full path answers.

geodns.serving.answer_path serves a repeat query from the reply cache and a query that differs
only in its ECS address from a template; both only reuse bytes the full path produced. These
tests feed the same packets, valid and mutated (cut short, padded, bit-flipped, with a second
ECS option, with a non-zero scope), to a server state whose caches are warm and to the full path
(parse + engine, no cache of replies), and require identical bytes or an identical refusal. Then
the real server over UDP: each subnet's own address echoed, the scope of its block, a drain
reaching subnets answered from a template.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest
import yaml
from dnslib import AAAA, CNAME, QTYPE, RR, A, DNSLabel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocess import client, snapshot_for
from mmdb_factory import city_record, write_city_db
from server_process import GeodnsServer

from geodns.common.errors import Drop, FormError
from geodns.config.server import load_config
from geodns.dns.resolve import address_answers, encode
from geodns.dns.wire import parse_query
from geodns.dns.zone import TYPE_A, TYPE_AAAA
from geodns.serving.answer_path import ServerState, answer
from geodns.serving.engine import formerr, respond
from geodns.serving.snapshot import Snapshot

ZONE = "tpl.test"
SITES = {
    "jkt": {
        "kind": "pop",
        "location": {"lat": -6.2, "lon": 106.8},
        "addresses": ["192.0.2.1", "2001:db8::1"],
    },
    "fra": {
        "kind": "pop",
        "location": {"lat": 50.1, "lon": 8.7},
        "addresses": ["192.0.2.4", "2001:db8::4"],
    },
}
NETWORKS = [
    ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
    ("36.65.0.0/20", city_record("ID", "AS", -6.9, 107.6, "Bandung")),
    ("85.0.0.0/16", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
    ("85.1.0.0/22", city_record("DE", "EU", 52.5, 13.4, "Berlin")),
    ("2400:1000::/32", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
    ("2a00:1000::/32", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
]
TEMPLATE_ZONE = {
    "": {"type": "NS", "value": "ns1.tpl.test."},
    "ns1": {"type": "A", "value": "192.0.2.53"},
    "static": {"type": "A", "value": "192.0.2.77"},
    "alias": {"type": "CNAME", "value": "near.tpl.test."},
    "near": [
        {
            "type": "A",
            "ttl": 30,
            "values": ["192.0.2.1", "192.0.2.4"],
            "octodns": {"geodns": {"nearest": True}},
        },
        {
            "type": "AAAA",
            "ttl": 30,
            "values": ["2001:db8::1", "2001:db8::4"],
            "octodns": {"geodns": {"nearest": True}},
        },
    ],
    "sticky": {
        "type": "A",
        "ttl": 30,
        "values": ["192.0.2.1", "192.0.2.4"],
        "octodns": {"geodns": {"nearest": True, "sticky": {"margin_km": 20000}}},
    },
}
RESOLVER = "192.0.2.200"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeodnsServer]:
    db = tmp_path_factory.mktemp("geo") / "city.mmdb"
    write_city_db(db, NETWORKS)
    config = {"sites": SITES, "geoip": {"database": str(db)}, "rrl": {"enabled": False}}
    with GeodnsServer(config, {ZONE: TEMPLATE_ZONE}) as running:
        yield running


@pytest.fixture(scope="module")
def snapshot(server: GeodnsServer) -> Snapshot:
    return snapshot_for(load_config(Path(server.config_path)))


def wire(name: str, subnet: str, query_id: int = 0, rdtype: str = "A") -> bytes:
    option = dns.edns.ECSOption.from_text(subnet)
    message = dns.message.make_query(f"{name}.{ZONE}", rdtype, use_edns=0, options=[option])
    message.id = query_id
    return message.to_wire()


def subnets(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    v4 = ["36.64", "36.65", "85.0", "85.1", "10.9"]  # 10.9/16 is in no network
    out = []
    for _ in range(count):
        if rng.random() < 0.75:
            out.append(f"{rng.choice(v4)}.{rng.randrange(256)}.0/24")
        else:
            top = rng.choice(["2400:1000", "2a00:1000", "2001:db9"])
            out.append(f"{top}:{rng.randrange(65536):x}:{rng.randrange(256):x}00::/56")
    return out


def full_path(snapshot: Snapshot, data: bytes) -> bytes | None:
    """The reference: parse and answer, no reply cache, no template."""
    try:
        query = parse_query(data)
    except Drop:
        return None
    except FormError as exc:
        return formerr(exc.query_id, exc.flags)
    return respond(query, client(RESOLVER), snapshot, False)[0]


def warm_state(snapshot: Snapshot) -> ServerState:
    """A state whose reply cache and templates have learned from valid queries of every kind."""
    state = ServerState(snapshot)
    for number, subnet in enumerate(subnets(400, seed=1)):
        name = ("near", "static", "sticky")[number % 3]
        rdtype = "AAAA" if ":" in subnet and name == "near" else "A"
        for _ in range(2):  # a second sighting puts replies in the reply cache
            answer(state, wire(name, subnet, number, rdtype), client(RESOLVER), False, 0.0)
    assert len(snapshot.templates.templates) >= 3
    assert len(snapshot.replies) >= 100
    return state


def mutations(data: bytes, rng: random.Random) -> list[bytes]:
    """The packets a fast path could get wrong: cut short, padded, flipped, doubled options."""
    out = [data[:-k] for k in (1, 2, 3, 4, 7, 8) if k < len(data)]
    out += [data + bytes(rng.randrange(256) for _ in range(k)) for k in (1, 3, 4, 7, 8)]
    for _ in range(6):
        flipped = bytearray(data)
        flipped[rng.randrange(2, len(data))] ^= 1 << rng.randrange(8)
        out.append(bytes(flipped))
    # a non-zero SCOPE PREFIX-LENGTH: the byte before the address of the (last) ECS option
    ecs_at = data.rfind(b"\x00\x08")
    if ecs_at > 0:
        scoped = bytearray(data)
        scoped[ecs_at + 7] = 24
        out.append(bytes(scoped))
        # the ECS option twice: RDLENGTH grows by the option's size
        option = data[ecs_at:]
        doubled = bytearray(data + option)
        rdlen_at = ecs_at - 2
        rdlen = struct.unpack_from(">H", doubled, rdlen_at)[0]
        struct.pack_into(">H", doubled, rdlen_at, rdlen + len(option))
        out.append(bytes(doubled))
    return out


def test_fast_paths_answer_valid_and_mutated_packets_as_the_full_path_does(
    snapshot: Snapshot,
) -> None:
    state = warm_state(snapshot)
    rng = random.Random(5)
    compared = fast = 0
    for number, subnet in enumerate(subnets(300, seed=1) + subnets(300, seed=2)):
        name = ("near", "static", "sticky")[number % 3]
        rdtype = "AAAA" if ":" in subnet and name == "near" else "A"
        data = wire(name, subnet, rng.randrange(65536), rdtype)
        for packet in [data, *mutations(data, rng)]:
            hit = len(snapshot.replies) and (
                snapshot.replies.get(packet[2:]) is not None
                or snapshot.templates.answer(packet) is not None
            )
            fast += bool(hit)
            got = answer(state, packet, client(RESOLVER), False, 0.0)
            assert got == full_path(snapshot, packet), (name, subnet, packet.hex())
            compared += 1
    assert fast >= 300, f"only {fast} of {compared} packets met a fast path"


def test_signed_answers_to_do_queries_take_the_fast_paths_byte_for_byte(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A signed zone (geodns.dnssec): DO=1 and DO=0 ECS queries, valid and mutated, from warm
    caches and from the full path, byte for byte."""
    from dnssec_support import signed_snapshot, write_config

    signed = signed_snapshot(load_config(write_config(tmp_path_factory.mktemp("signed"))))
    state = ServerState(signed)
    rng = random.Random(7)

    def signed_wire(name: str, subnet: str, query_id: int, do: bool) -> bytes:
        option = dns.edns.ECSOption.from_text(subnet)
        message = dns.message.make_query(
            f"{name}.cdn.example.com", "A", use_edns=0, options=[option], want_dnssec=do
        )
        message.id = query_id
        return message.to_wire()

    asked = [
        (name, subnet, do)
        for number, subnet in enumerate(subnets(120, seed=3))
        if ":" not in subnet
        for name in (("www", "mx1", "api")[number % 3],)
        for do in (True, False)
    ]
    for name, subnet, do in asked:  # twice: the reply cache and the templates learn
        for _ in range(2):
            answer(state, signed_wire(name, subnet, 1, do), client(RESOLVER), False, 0.0)
    assert len(signed.replies) >= 50 and signed.templates.templates
    compared = fast = 0
    for name, subnet, do in asked + [(n, s, d) for n, s, d in asked if n == "www"]:
        data = signed_wire(name, subnet, rng.randrange(65536), do)
        for packet in [data, *mutations(data, rng)]:
            fast += signed.replies.get(packet[2:]) is not None or (
                signed.templates.answer(packet) is not None
            )
            got = answer(state, packet, client(RESOLVER), False, 0.0)
            assert got == full_path(signed, packet), (name, subnet, do, packet.hex())
            compared += 1
    assert fast >= 100, f"only {fast} of {compared} packets met a fast path"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_edits_of_learned_queries_never_split_the_paths(
    snapshot: Snapshot, data: st.DataObject
) -> None:
    state = ServerState(snapshot) if len(snapshot.replies) >= 100 else warm_state(snapshot)
    subnet = data.draw(st.sampled_from(subnets(50, seed=1)))
    name = data.draw(st.sampled_from(["near", "static"]))
    packet = bytearray(wire(name, subnet, data.draw(st.integers(0, 65535))))
    for _ in range(data.draw(st.integers(1, 3))):
        if not packet:
            break
        at = data.draw(st.integers(0, len(packet) - 1))
        edit = data.draw(st.sampled_from(["flip", "cut", "pad", "set"]))
        if edit == "flip":
            packet[at] ^= 1 << data.draw(st.integers(0, 7))
        elif edit == "cut":
            del packet[at:]
        elif edit == "pad":
            packet += data.draw(st.binary(min_size=1, max_size=8))
        else:
            packet[at] = data.draw(st.integers(0, 255))
    sent = bytes(packet)
    assert answer(state, sent, client(RESOLVER), False, 0.0) == full_path(snapshot, sent)


def test_the_reported_malformed_ecs_queries_get_formerr_from_every_path(snapshot: Snapshot) -> None:
    """issue 12.3: a /56 cut short by 4 bytes got a NOERROR reply, a /24 with 4 bytes appended
    an IndexError; two ECS options and a non-zero scope got normal answers. RFC 7871: FORMERR."""
    state = warm_state(snapshot)
    cases = {
        "cut": wire("near", "2400:1000:1:100::/56", 1, "AAAA")[:-4],
        "padded": wire("near", "36.64.1.0/24", 2) + b"\x00\x00\x00\x00",
    }
    for packet in mutations(wire("near", "36.64.2.0/24", 3), random.Random(1))[-2:]:
        cases[f"option {len(cases)}"] = packet  # the non-zero scope and the doubled option
    for label, packet in cases.items():
        for _ in range(3):
            reply = answer(state, packet, client(RESOLVER), False, 0.0)
            assert reply is not None and reply[3] & 0x0F == 1, (label, reply)  # FORMERR
    assert state.errors == 0


def test_a_new_health_view_starts_without_templates(snapshot: Snapshot) -> None:
    state = warm_state(snapshot)
    probe = wire("near", "36.64.1.0/24")
    assert state.snapshot.templates.answer(probe) is not None
    fresh = snapshot.with_view(frozenset({"jkt"}), snapshot.geo, {})
    assert fresh.templates.answer(probe) is None


def test_every_name_of_a_zone_bigger_than_four_thousand_names_keeps_its_template(
    server: GeodnsServer, tmp_path: Path
) -> None:
    """A template is per question, so per name: a zone of 5,000 nearest-PoP names asked from
    one subnet each, then from another subnet of the same place, must answer every second
    question from its template. With the bound of 4,096 templates this cache once had, the
    first 904 names' templates were pushed out before their second question, and a zone's
    cold queries cost its full path (parse, engine) once it passed 4,096 names."""
    names = 5_000
    zone = {
        "": {"type": "NS", "value": "ns1.tpl.test."},
        "ns1": {"type": "A", "value": "192.0.2.53"},
        **{
            f"n{i}": {
                "type": "A",
                "ttl": 30,
                "values": ["192.0.2.1", "192.0.2.4"],
                "octodns": {"geodns": {"nearest": True}},
            }
            for i in range(names)
        },
    }
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / f"{ZONE}.yaml").write_text(yaml.safe_dump(zone), encoding="utf-8")
    settings = yaml.safe_load(Path(server.config_path).read_text(encoding="utf-8"))
    settings["zones_dir"] = str(zones)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    state = ServerState(snapshot_for(load_config(config_path)))
    for i in range(names):
        assert answer(state, wire(f"n{i}", "36.64.1.0/24", i), client(RESOLVER), False, 0.0)
    missing = [
        i
        for i in range(names)
        if state.snapshot.templates.answer(wire(f"n{i}", "36.64.2.0/24", i)) is None
    ]
    assert missing == []


def ask(server: GeodnsServer, name: str, subnet: str) -> tuple[list[str], str, int]:
    query = dns.message.make_query(
        f"{name}.{ZONE}", "A", use_edns=0, options=[dns.edns.ECSOption.from_text(subnet)]
    )
    reply = dns.query.udp(query, server.host, port=server.port, timeout=2)
    (ecs,) = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
    addresses = [rr.address for rrset in reply.answer for rr in rrset]
    return addresses, f"{ecs.address}/{ecs.srclen}", ecs.scopelen


def test_each_subnet_gets_its_own_address_echoed_with_its_blocks_scope(
    server: GeodnsServer,
) -> None:
    # the same place (Jakarta's /16), many subnets: the template is reused for all but the first
    for third in (9, 10, 200):
        assert ask(server, "near", f"36.64.{third}.0/24") == (
            ["192.0.2.1"],
            f"36.64.{third}.0/24",
            16,
        )
    # Bandung gets Jakarta too, and its block is its own /20 (beyond it: unlocated space)
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


labels_strategy = st.lists(
    st.binary(min_size=1, max_size=20), min_size=1, max_size=4
)  # not the root: Prepared.owner_is_question leaves it to dnslib.filter(lambda ls: sum(len(label) + 1 for label in ls) < 250)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@settings(max_examples=300, deadline=None)
@given(
    labels=labels_strategy,
    six=st.booleans(),
    ttl=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_address_answers_are_written_as_dnslib_encodes_them(
    labels: list[bytes], six: bool, ttl: int, data: st.DataObject
) -> None:
    """The answer of a nearest-site decision, written directly (resolve.address_answers), is
    what encoding the records with dnslib gives, byte for byte, for any question name."""
    rtype = TYPE_AAAA if six else TYPE_A
    values = tuple(data.draw(st.lists(ipv6 if six else ipv4, min_size=1, max_size=8)))
    owner = DNSLabel(tuple(labels))
    records = [RR(owner, rtype, ttl=ttl, rdata=(AAAA if six else A)(v)) for v in values]
    qtype = data.draw(st.sampled_from([rtype, 255]))
    assert address_answers(rtype, ttl, values) == encode(tuple(labels), qtype, records, [], [])


def test_a_decision_of_no_value_is_nodata_with_the_zones_soa(snapshot: Snapshot) -> None:
    """A dynamic answer for which nothing is chosen is NODATA with the zone's SOA in the
    authority section (RFC 2308), as dnslib encodes it; a decision of addresses is the address
    records alone, written directly, and both are what encoding the records gives."""
    prepared = snapshot.prepare(b"\x04near\x03tpl\x04test\x00", TYPE_A)
    nodata = prepared.variant(())
    assert (nodata.ancount, nodata.nscount, nodata.arcount) == (0, 1, 0)
    message = dns.message.from_wire(
        b"\x00\x00\x84\x00\x00\x01\x00\x00\x00\x01\x00\x00"
        + b"\x04near\x03tpl\x04test\x00\x00\x01\x00\x01"
        + nodata.body
    )
    (soa,) = message.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.name == dns.name.from_text("tpl.test.")
    chosen = prepared.variant(("192.0.2.4",))
    owner = DNSLabel((b"near", b"tpl", b"test"))
    record = RR(owner, TYPE_A, ttl=30, rdata=A("192.0.2.4"))
    assert chosen == encode((b"near", b"tpl", b"test"), TYPE_A, [record], [], [])


def test_a_decision_behind_a_cname_keeps_the_cname(snapshot: Snapshot) -> None:
    """A name whose CNAME leads to a nearest-site record: its answer is the CNAME, then the
    chosen address owned by the CNAME's target (not written as if owned by the question)."""
    labels = (b"alias", b"tpl", b"test")
    prepared = snapshot.prepare(b"\x05alias\x03tpl\x04test\x00", TYPE_A)
    cname = RR(DNSLabel(labels), QTYPE.CNAME, ttl=3600, rdata=CNAME(DNSLabel("near.tpl.test.")))
    address = RR(DNSLabel("near.tpl.test."), TYPE_A, ttl=30, rdata=A("192.0.2.1"))
    expected = encode(labels, TYPE_A, [cname, address], [], [])
    assert prepared.variant(("192.0.2.1",)) == expected


def _name_is_valid(name: str) -> bool:
    """RFC 1035's limits on an absolute name, written out: the reference for check_name."""
    if not name.endswith("."):
        return False
    if name == ".":
        return True
    if len(name.encode("ascii", "replace")) + 1 > 255:
        return False
    return all(0 < len(label) <= 63 and label.isascii() for label in name[:-1].split("."))


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet="ab-*_.é\\ ", max_size=8),
            st.sampled_from(["a" * 63, "b" * 64, "c" * 62 + "é"]),
        ),
        max_size=40,
    ).map(".".join)
    | st.text(max_size=300)
)
def test_check_name_takes_its_short_way_only_where_the_rules_agree(name: str) -> None:
    """check_name (geodns.dns.zone) accepts a zone's usual names without walking their labels:
    any name, of any label lengths, characters and dots, gets the verdict of the rules."""
    from geodns.dns.zone import check_name

    for candidate in (name, name + "."):
        assert (check_name(candidate) is None) == _name_is_valid(candidate), candidate

"""The UDP reply cache: identical query bytes are answered by patching the ID in, but only when
the reply cannot differ between them.

A reply is reused only when nothing outside the query bytes chose it: not for answers located by
the resolver's address (two resolvers can send the same bytes), not for a weighted pick made
with the query ID, and never across a health change or a reload (the drain and reload tests in
test_failover.py and test_reload.py send identical ECS queries before and after). The queries go
to the answer path in-process, from the client address a datagram would come from
(`in_process`); two resolvers at a real server show that the address is the socket's.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections import Counter

import dns.edns
import dns.message
import dns.name
import dns.rcode
import pytest
from inprocess import InProcessServer
from mmdb_factory import city_record, write_city_db
from server_process import GeodnsServer

from geodns.dns.wire import parse_query
from geodns.observe.counters import QueryCounters
from geodns.serving.answer_path import ServerState, _remember, answer
from geodns.serving.client import ClientFactory
from geodns.serving.engine import Outcome
from geodns.serving.snapshot import SIGHTING_BITS, SIGHTING_SLOTS, Asked, Snapshot, retire

ZONE = "cache.test"

SITES = {
    "jkt": {"kind": "pop", "location": {"lat": -6.2, "lon": 106.8}, "addresses": ["192.0.2.1"]},
    "fra": {"kind": "pop", "location": {"lat": 50.1, "lon": 8.7}, "addresses": ["192.0.2.4"]},
}

NETWORKS = [
    ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
    ("85.0.0.0/16", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
    # two resolvers on loopback that the database places 11,000 km apart
    ("127.0.0.0/25", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
    ("127.0.0.128/25", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
]

CACHE_ZONE = {
    "": {"type": "NS", "value": "ns1.cache.test."},
    "ns1": {"type": "A", "value": "192.0.2.53"},
    "static": {"type": "A", "value": "192.0.2.77"},
    "near": {
        "type": "A",
        "ttl": 30,
        "values": ["192.0.2.1", "192.0.2.4"],
        "octodns": {"geodns": {"nearest": True}},
    },
    "weighted": {
        "type": "A",
        "ttl": 30,
        "value": "192.0.2.99",
        "dynamic": {
            "pools": {
                "both": {
                    "values": [
                        {"value": "192.0.2.1", "weight": 1},
                        {"value": "192.0.2.2", "weight": 1},
                    ]
                }
            },
            "rules": [{"pool": "both"}],
        },
    },
}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    db = tmp_path_factory.mktemp("geo") / "city.mmdb"
    write_city_db(db, NETWORKS)
    return {"sites": SITES, "geoip": {"database": str(db)}}


@pytest.fixture(scope="module")
def server(config: dict):
    with GeodnsServer(config, {ZONE: CACHE_ZONE}) as running:
        yield running


@pytest.fixture(scope="module")
def in_process(config: dict, tmp_path_factory: pytest.TempPathFactory) -> InProcessServer:
    return InProcessServer(tmp_path_factory.mktemp("in-process"), config, {ZONE: CACHE_ZONE})


def wire(name: str, ecs: str | None = None) -> bytes:
    options = [dns.edns.ECSOption.from_text(ecs)] if ecs else []
    return dns.message.make_query(f"{name}.{ZONE}", "A", use_edns=0, options=options).to_wire()


def ask_from(
    server: GeodnsServer | InProcessServer, data: bytes, query_id: int, source: str
) -> dns.message.Message:
    """Send `data` over UDP with its ID replaced, from a chosen loopback source address."""
    wire = server.raw_udp(query_id.to_bytes(2, "big") + data[2:], timeout=2, source=source)
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == query_id
    assert reply.rcode() == dns.rcode.NOERROR
    return reply


def addresses(reply: dns.message.Message) -> list[str]:
    return [rr.address for rrset in reply.answer for rr in rrset]


@pytest.mark.parametrize(("name", "ecs"), [("static", None), ("near", "36.64.9.0/24")])
def test_repeated_bytes_get_their_own_id_and_the_same_answer(
    in_process: InProcessServer, name: str, ecs: str | None
) -> None:
    data = wire(name, ecs)
    replies = [
        ask_from(in_process, data, query_id, "127.0.0.1") for query_id in (1, 0xBEEF, 0xFFFF)
    ]
    assert {tuple(addresses(r)) for r in replies} == {tuple(addresses(replies[0]))}
    assert addresses(replies[0]) == (["192.0.2.77"] if name == "static" else ["192.0.2.1"])


def test_resolver_located_answers_are_not_shared_between_resolvers(server: GeodnsServer) -> None:
    data = wire("near")  # no ECS: the resolver's own address locates the user
    for _ in range(3):
        assert addresses(ask_from(server, data, 7, "127.0.0.1")) == ["192.0.2.4"]  # Frankfurt
        assert addresses(ask_from(server, data, 7, "127.0.0.200")) == ["192.0.2.1"]  # Jakarta


def test_ecs_source_zero_is_located_by_the_resolver_every_time(in_process: InProcessServer) -> None:
    data = wire("near", "0.0.0.0/0")
    assert addresses(ask_from(in_process, data, 9, "127.0.0.1")) == ["192.0.2.4"]
    assert addresses(ask_from(in_process, data, 9, "127.0.0.200")) == ["192.0.2.1"]


def test_weighted_choice_still_varies_for_identical_ecs_queries(
    in_process: InProcessServer,
) -> None:
    data = wire("weighted", "85.0.1.0/24")
    counts = Counter(
        address
        for query_id in range(0, 65536, 1024)  # 64 IDs spread over the whole range
        for address in addresses(ask_from(in_process, data, query_id, "127.0.0.1"))
    )
    assert set(counts) == {"192.0.2.1", "192.0.2.2"}, counts
    assert min(counts.values()) >= 16, counts


def test_a_reply_is_kept_from_the_second_sighting_of_its_bytes() -> None:
    """One-off queries (a cold workload's new subnets) must not fill the cache of whole replies."""
    snapshot = Snapshot(zones={})
    data = wire("static")
    query, key = parse_query(data), data[2:]
    asked = Asked(query.qname, query.qtype, query.ecs, query.features)
    outcome = Outcome(0, ZONE, cacheable=True)
    reply = data[:2] + b"reply"
    _remember(ServerState(snapshot), snapshot, key, reply, asked, outcome)
    assert key not in snapshot.replies
    _remember(ServerState(snapshot), snapshot, key, reply, asked, outcome)
    assert snapshot.replies[key].body == b"reply"


def fresh(server: InProcessServer) -> Snapshot:
    """The in-process server's snapshot with empty caches (the same zones, view and maps)."""
    snapshot = server.state.snapshot
    return snapshot.with_view(snapshot.down, snapshot.geo, snapshot.maps)


def test_a_counted_reply_keeps_no_question_and_a_logged_one_keeps_it_for_every_repeat(
    in_process: InProcessServer,
) -> None:
    """Counting by slot (no query log), a cached reply holds its bytes, outcome and slot, not
    what was asked (a third of the entry); with an observer that reads every query (the query
    log), it keeps what was asked, and every repeat from the cache is observed with it."""
    data = wire("near", "36.64.7.0/24")
    client = ClientFactory().from_text("127.0.0.1")
    counting = ServerState(fresh(in_process))
    counting.count_with(QueryCounters())
    seen: list[tuple[bytes, int, object]] = []
    logging = ServerState(fresh(in_process))
    logging.observer = lambda asked, outcome, *rest: seen.append(
        (asked.qname, asked.qtype, asked.ecs)
    )
    for state in (counting, logging):
        for _ in range(4):  # kept from the second, answered from the cache twice
            assert answer(state, data, client, False, 0.0) is not None
    (kept,) = counting.snapshot.replies.values()
    assert kept.asked is None and kept.slot >= 0
    assert counting.tally is not None and sum(counting.tally) == 4
    (logged,) = logging.snapshot.replies.values()
    assert logged.asked is not None and logged.slot == -1
    assert len(seen) == 4 and len(set(seen)) == 1
    assert seen[0][2] == (1, 24, bytes((36, 64, 7)))


def test_one_off_queries_keep_no_replies_and_a_repeat_is_still_seen() -> None:
    """Ten thousand one-off queries between two sightings of the same bytes: the repeat is
    still recognised, and the one-offs leave (next to) nothing in the reply cache; a false
    "seen before" is a one-in-255 tag match and only keeps a reply one sighting early."""
    snapshot = Snapshot(zones={})
    data = wire("static")
    query, key = parse_query(data), data[2:]
    asked = Asked(query.qname, query.qtype, query.ecs, query.features)
    outcome = Outcome(0, ZONE, cacheable=True)
    _remember(ServerState(snapshot), snapshot, key, data[:2] + b"reply", asked, outcome)
    slot = hash(key) % SIGHTING_SLOTS
    for index in range(10_000):
        other = key + index.to_bytes(4, "big")
        if hash(other) % SIGHTING_SLOTS != slot:  # one that took the slot would make it forget
            _remember(ServerState(snapshot), snapshot, other, data[:2] + b"other", asked, outcome)
    assert len(snapshot.replies) <= 20
    _remember(ServerState(snapshot), snapshot, key, data[:2] + b"reply", asked, outcome)
    assert snapshot.replies[key].body == b"reply"


def test_two_queries_whose_sightings_share_a_slot_both_reach_the_reply_cache() -> None:
    """Sightings are tag bytes in a table indexed by the query bytes' hash. Two queries of a
    warm pool whose first slots collide, asked in turn, must not erase each other's sighting
    for ever: each is kept from its second sighting (with one slot per query, 7% of a pool of
    10,000 subnets never reached the reply cache)."""
    snapshot = Snapshot(zones={})
    data = wire("static")
    query, key = parse_query(data), data[2:]
    asked = Asked(query.qname, query.qtype, query.ecs, query.features)
    outcome = Outcome(0, ZONE, cacheable=True)

    def slots(value: bytes) -> tuple[int, int, int]:  # first slot, second slot, tag
        hashed = hash(value)
        tag = (hashed >> SIGHTING_BITS) % 255 + 1
        return hashed % SIGHTING_SLOTS, (hashed >> 32) % SIGHTING_SLOTS, tag

    first, second, tag = slots(key)
    # shares the first slot only (not the second, not the tag: hash seed free); one candidate
    # in SIGHTING_SLOTS shares the first slot, so 4 * SIGHTING_SLOTS of them found none for
    # about one hash seed in 50 (the search stops at the first found: about SIGHTING_SLOTS)
    rival = next(
        other
        for other in (key + index.to_bytes(4, "big") for index in range(64 * SIGHTING_SLOTS))
        if slots(other)[0] == first
        and slots(other)[1] not in (first, second)
        and slots(other)[2] != tag
    )
    for _ in range(2):  # each asked twice, in turn
        for which in (key, rival):
            _remember(ServerState(snapshot), snapshot, which, data[:2] + b"reply", asked, outcome)
    assert key in snapshot.replies and rival in snapshot.replies


def test_a_retired_snapshot_is_emptied_but_what_it_shares_is_kept(
    config: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """retire() (run in a thread after every swap) empties the old snapshot's own caches and
    leaves the prepared answers a health change carries over to the new one."""
    server = InProcessServer(tmp_path_factory.mktemp("retire"), config, {ZONE: CACHE_ZONE})
    for subnet in ("36.64.1.0/24", "85.0.1.0/24"):
        for _ in range(3):  # a reply is kept from its second sighting
            server.query(f"near.{ZONE}", "A", ecs=subnet)
    old = server.snapshot
    assert len(old.prepared) and len(old.replies) and len(old.templates.templates)
    healthier = old.with_view(frozenset({"fra"}), old.geo, {})
    assert healthier.prepared is old.prepared
    retire(old, healthier)
    assert not old.replies and not old.templates.templates and not old.place_decisions
    assert old.replies.bytes == 0 and not old.replies.sizes
    assert len(healthier.prepared) > 0  # shared: kept
    reloaded = Snapshot(zones=old.zones, geo=old.geo)
    retire(healthier, reloaded)
    assert not healthier.prepared and healthier.prepared.bytes == 0


def test_many_nearest_names_keep_about_1_4_kb_each_and_a_second_answer_is_kept_too(
    config: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A zone of many nearest-PoP names of one pool, each asked once: what the caches keep per
    name (its prepared answer, its template, its record's decision) is measured with
    tracemalloc. A name mostly gets one decision and one template answer, so the first of each
    is held inline (no dict), the records share one Decision per answer, and the question's
    labels and owner are made again when needed: 1.4 KB a name, 2.2 KB before (CPython 3.11).
    A second answer for a name (another subnet's) is kept beside the first and answered as
    the full path answers it."""
    names = 500
    zone: dict = {"": {"type": "NS", "value": f"ns1.{ZONE}."}}
    for index in range(names):
        zone[f"n{index}"] = {
            "type": "A",
            "values": ["192.0.2.1", "192.0.2.4"],
            "octodns": {"geodns": {"nearest": True}},
        }
    server = InProcessServer(tmp_path_factory.mktemp("many"), config, {ZONE: zone})
    client = ClientFactory().from_text("127.0.0.1")
    state = server.state
    questions = [wire(f"n{index}", "36.64.9.0/24") for index in range(names)]
    answer(state, wire("ns1"), client, False, 0.0)  # the first query's one-off allocations
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for data in questions:
            assert answer(state, data, client, False, 0.0) is not None
        gc.collect()
        per_name = (tracemalloc.get_traced_memory()[0] - before) / names
    finally:
        tracemalloc.stop()
    assert per_name < 1_800, f"{per_name:.0f} bytes a name"
    snapshot = state.snapshot
    prepared = [
        snapshot.prepared.get((dns.name.from_text(f"n{i}.{ZONE}").to_wire(), 1))
        for i in range(names)
    ]
    assert all(p is not None and p.more_variants is None and p.owner is None for p in prepared)
    templates = list(snapshot.templates.templates.values())
    assert len(templates) == names and all(t.more is None for t in templates)
    (answer_map,) = snapshot.maps.values()
    shared = [d for by_values in answer_map.shared.values() for d in by_values.values()]
    assert len(shared) == 1  # one Decision for every name's Jakarta answer

    for subnet, address in (("85.0.9.0/24", "192.0.2.4"), ("36.64.10.0/24", "192.0.2.1")):
        data = wire("n0", subnet)
        reply = dns.message.from_wire(answer(state, data, client, False, 0.0) or b"")
        assert addresses(reply) == [address]
    (first,) = [t for t in snapshot.templates.templates.values() if t.more is not None]
    assert len(first.answers()) == 2
    assert prepared[0] is not None and prepared[0].more_variants is not None
    assert sum(len(by_values) for by_values in answer_map.shared.values()) == 2

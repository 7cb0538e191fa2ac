"""Metrics: real query packets through the server's own handler, counted by QueryCounters, turned
into metric families by the collector and read back through prometheus-client's own parsers.

The snapshot is the bundled example (zones/cdn.example.com.yaml with the sites of
geodns/data/example-config.yaml) with a small City database written for the test, so the
outcomes are the engine's own: 36.64.0.0/24 (placed in Jakarta) is answered from Jakarta,
192.0.2.1 (in no database) by the record's default order.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import netaddr
import pytest
from inprocess import ask
from mmdb_writer import MMDBWriter
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from geodns.config.loader import load_geo
from geodns.config.server import ServerConfig, load_config
from geodns.daemon.app import ReloadStatus
from geodns.dns.wire import parse_query
from geodns.geo.locator import Geo
from geodns.observe.metrics import OTHER_QTYPE, Metrics, QueryCounters, worker_report
from geodns.serving.answer_path import ServerState
from geodns.serving.engine import Outcome
from geodns.serving.snapshot import build_snapshot

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "geodns" / "data" / "example-config.yaml"
RESOLVER = "192.0.2.1"  # a documentation address: in no database, so not locatable


def wire(name: str, rdtype: str | int = "A", ecs: str | None = None) -> bytes:
    options = [dns.edns.ECSOption.from_text(ecs)] if ecs else None
    return dns.message.make_query(name, rdtype, use_edns=0, options=options).to_wire()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> ServerConfig:
    """The bundled example config with a City database that places 36.64.0.0/16 in Jakarta."""
    tmp = tmp_path_factory.mktemp("metrics")
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    writer.insert_network(
        netaddr.IPSet(["36.64.0.0/16"]),
        {
            "continent": {"code": "AS"},
            "country": {"iso_code": "ID"},
            "location": {"latitude": -6.2, "longitude": 106.8},
        },
    )
    writer.to_db_file(str(tmp / "city.mmdb"))
    return replace(load_config(EXAMPLE_CONFIG), geoip_database=tmp / "city.mmdb")


@pytest.fixture(scope="module")
def geo(config: ServerConfig) -> Iterator[Geo]:
    locator = load_geo(config, build=True)
    yield locator
    locator.close()


@pytest.fixture
def state(config: ServerConfig, geo: Geo) -> ServerState:
    return ServerState(build_snapshot(config, geo))


def samples(payload: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, from the Prometheus text format."""
    found = {}
    for family in text_string_to_metric_families(payload.decode()):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_counts_from_real_queries(state: ServerState, geo: Geo) -> None:
    health = {
        "jakarta": {
            "state": "up",
            "drained": False,
            "checks": {"https://[203.0.113.11]:443/healthz": {"ok": True, "latency": 0.012}},
        },
        "frankfurt": {
            "state": "down",
            "drained": True,
            "checks": [{"key": "tcp://198.51.100.21:443", "ok": False, "latency": None}],
        },
    }
    reload_status = ReloadStatus(ok=False, successes=3, failures=1, errors=("a:1: bad", "b:2: x"))
    metrics = Metrics(
        server_state=state,
        reload_status=lambda: reload_status,
        health_status=lambda: health,
        geo=lambda: geo,
    )
    state.observer = metrics.observe
    traffic = [
        (wire("mx1.cdn.example.com"), False),
        (wire("mx1.cdn.example.com"), False),
        (wire("MX1.cdn.example.com"), True),  # case does not split the counts
        (wire("www.cdn.example.com", ecs="36.64.0.0/24"), False),  # Indonesia -> Jakarta
        (wire("www.cdn.example.com", ecs="36.64.0.0/24"), False),
        (wire("www.cdn.example.com"), False),  # 192.0.2.1: default order -> Ashburn
        (wire("img.cdn.example.com"), False),  # two PoPs in one answer
        (wire("nope.cdn.example.com"), False),
        (wire("example.org"), False),  # outside every zone
        (wire("cdn.example.com", 65534), False),  # a type nobody registered
        (wire("cdn.example.com", 65533), True),
        (b"\x12\x34\x01", False),  # shorter than a header: dropped
        (wire("www.cdn.example.com")[:-3], False),  # cut short: FORMERR
    ]
    for data, tcp in traffic:
        ask(state, data, RESOLVER, tcp)
    state.tcp_connections = 2  # as TcpProtocol keeps it

    payload, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    found = samples(payload)
    zone = "cdn.example.com."

    def queries(qtype: str, rcode: str, transport: str, zone: str = zone) -> float | None:
        return value(
            found,
            "geodns_queries_total",
            zone=zone,
            qtype=qtype,
            rcode=rcode,
            transport=transport,
        )

    assert queries("A", "NOERROR", "udp") == 6
    assert queries("A", "NOERROR", "tcp") == 1
    assert queries("A", "NXDOMAIN", "udp") == 1
    assert queries("A", "REFUSED", "udp", zone="") == 1
    assert queries("other", "NOERROR", "udp") == 1
    assert queries("other", "NOERROR", "tcp") == 1
    assert sum(v for (name, _), v in found.items() if name == "geodns_queries_total") == 11

    assert value(found, "geodns_answers_total", zone=zone, site="jakarta") == 2
    assert value(found, "geodns_answers_total", zone=zone, site="ashburn") == 2
    assert value(found, "geodns_answers_total", zone=zone, site="frankfurt") == 1
    assert value(found, "geodns_located_queries_total", by="ecs") == 2
    assert value(found, "geodns_located_queries_total", by="resolver") == 2

    assert value(found, "geodns_dropped_packets_total") == 1
    assert value(found, "geodns_malformed_packets_total") == 1
    assert value(found, "geodns_internal_errors_total") == 0
    assert value(found, "geodns_tcp_connections") == 2
    assert value(found, "geodns_zones") == 1
    assert value(found, "geodns_snapshot_generation") == 0

    assert value(found, "geodns_reloads_total", result="success") == 3
    assert value(found, "geodns_reloads_total", result="failure") == 1
    assert value(found, "geodns_reload_ok") == 0
    assert value(found, "geodns_reload_errors") == 2
    last = value(found, "geodns_reload_last_success_timestamp_seconds")
    assert last is not None and abs(last - time.time()) < 60

    assert value(found, "geodns_site_up", site="jakarta") == 1
    assert value(found, "geodns_site_up", site="frankfurt") == 0
    assert value(found, "geodns_site_drained", site="jakarta") == 0
    assert value(found, "geodns_site_drained", site="frankfurt") == 1
    check = "https://[203.0.113.11]:443/healthz"
    assert value(found, "geodns_check_up", site="jakarta", check=check) == 1
    assert value(found, "geodns_check_latency_seconds", site="jakarta", check=check) == 0.012
    assert value(found, "geodns_check_up", site="frankfurt", check="tcp://198.51.100.21:443") == 0
    assert not any(
        name == "geodns_check_latency_seconds" and ("site", "frankfurt") in labels
        for name, labels in found
    )

    build = value(
        found,
        "geodns_geoip_build_timestamp_seconds",
        database_type=geo.database_type,
        path=str(geo.path),
    )
    assert build == geo.build_epoch > 1_500_000_000
    assert geo.database_type == "GeoIP2-City"
    info = [labels for name, labels in found if name == "geodns_build_info"]
    assert len(info) == 1 and ("version", __import__("geodns").__version__) in info[0]
    assert value(found, "process_resident_memory_bytes") > 0  # process metrics ride along


def test_truncated_answers_and_zero_series() -> None:
    """Truncation is counted by zone and transport; located_by series exist before any query."""
    metrics = Metrics(process=False)
    found = samples(metrics.render()[0])
    assert value(found, "geodns_located_queries_total", by="ecs") == 0
    assert value(found, "geodns_located_queries_total", by="resolver") == 0

    query = parse_query(wire("big.cdn.example.com", "TXT"))
    truncated = Outcome(0, "cdn.example.com.", truncated=True)
    for _ in range(3):
        metrics.observe(query, truncated, RESOLVER, "udp")
    metrics.observe(query, Outcome(0, "cdn.example.com."), RESOLVER, "tcp")
    found = samples(metrics.render()[0])
    assert (
        value(found, "geodns_truncated_answers_total", zone="cdn.example.com.", transport="udp")
        == 3
    )
    assert not any(
        name == "geodns_truncated_answers_total" and ("transport", "tcp") in labels
        for name, labels in found
    )
    assert (
        value(
            found,
            "geodns_queries_total",
            zone="cdn.example.com.",
            qtype="TXT",
            rcode="NOERROR",
            transport="udp",
        )
        == 3
    )


def test_query_counters_keys_are_plain_and_bounded() -> None:
    counters = QueryCounters()
    outcome = Outcome(3, "cdn.example.com.")
    for qtype in range(60000, 60100):  # unregistered types fold into one key
        counters.observe(parse_query(wire("x.cdn.example.com", qtype)), outcome, RESOLVER, "udp")
    assert counters.snapshot() == {
        ("cdn.example.com.", OTHER_QTYPE, 3, "udp", None, None, False): 100
    }
    copy = counters.snapshot()
    counters.observe(parse_query(wire("x.cdn.example.com")), outcome, RESOLVER, "udp")
    assert len(copy) == 1 and len(counters.snapshot()) == 2  # the copy is detached


def test_replies_from_the_reply_cache_are_counted(state: ServerState) -> None:
    """A repeat query answered from the reply cache is counted through its reply's counter
    slot (no observer call): the counts must be those of the observer, query for query."""
    metrics = Metrics(server_state=state, process=False)
    state.count_with(metrics.counters)
    repeated = wire("www.cdn.example.com", ecs="36.64.0.0/24")  # Jakarta, cached from 2nd
    for _ in range(5):
        ask(state, repeated, RESOLVER, False)
    for subnet in ("36.64.1.0/24", "36.64.2.0/24", "36.64.3.0/24"):  # subnet templates
        ask(state, wire("www.cdn.example.com", ecs=subnet), RESOLVER, False)
    for _ in range(4):  # a static answer, cached from its second sighting
        ask(state, wire("mx1.cdn.example.com"), RESOLVER, False)
    assert len(state.snapshot.replies) == 2
    found = samples(metrics.render()[0])
    zone = "cdn.example.com."
    assert value(found, "geodns_answers_total", zone=zone, site="jakarta") == 8
    assert value(found, "geodns_located_queries_total", by="ecs") == 8
    labels = {"zone": zone, "qtype": "A", "rcode": "NOERROR", "transport": "udp"}
    assert value(found, "geodns_queries_total", **labels) == 12


def test_openmetrics_negotiation(state: ServerState) -> None:
    metrics = Metrics(server_state=state, process=False)
    ask(state, wire("mx1.cdn.example.com"), RESOLVER, False)
    state.observer = metrics.observe
    ask(state, wire("mx1.cdn.example.com"), RESOLVER, False)
    payload, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert payload.endswith(b"# EOF\n")
    families = {
        f.name: f for f in openmetrics_parser.text_string_to_metric_families(payload.decode())
    }
    assert families["geodns_queries"].type == "counter"
    assert [s.value for s in families["geodns_queries"].samples if s.name.endswith("_total")] == [1]


def test_a_failing_source_does_not_empty_the_scrape(state: ServerState) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("health monitor not started")

    metrics = Metrics(server_state=state, health_status=broken, process=False)
    found = samples(metrics.render()[0])
    assert value(found, "geodns_dropped_packets_total") == 0
    assert not any(name.startswith("geodns_site_") for name, _ in found)


def test_render_is_fast_enough_to_scrape_often(state: ServerState) -> None:
    """A scrape over a realistic key set (sites x located_by x transport) stays cheap."""
    metrics = Metrics(server_state=state, process=False)
    query = parse_query(wire("www.cdn.example.com"))
    sites = ["jakarta", "singapore", "frankfurt", "ashburn", "sao-paulo", None]
    for site in sites:
        for by in ("ecs", "resolver", None):
            for transport in ("udp", "tcp"):
                outcome = Outcome(0, "cdn.example.com.", site=site, located_by=by)
                metrics.observe(query, outcome, RESOLVER, transport)
    started = time.perf_counter()
    payload, _ = metrics.render()
    assert time.perf_counter() - started < 0.5
    assert b"geodns_answers_total" in payload


def test_worker_reports_are_added_to_the_main_process(state: ServerState) -> None:
    """With `workers: N` each worker sends worker_report() over a pipe; one scrape sums them."""
    reports: dict[int, dict] = {}
    main = Metrics(server_state=state, workers=lambda: reports.values(), process=False)
    state.count_with(main.counters)
    ask(state, wire("mx1.cdn.example.com"), RESOLVER, False)
    ask(state, b"\x00", RESOLVER, False)

    worker_state = ServerState(state.snapshot)
    worker = QueryCounters()
    worker_state.observer = worker.observe
    for _ in range(4):
        ask(worker_state, wire("mx1.cdn.example.com"), RESOLVER, False)
    ask(worker_state, wire("www.cdn.example.com", ecs="36.64.0.0/24"), RESOLVER, True)
    ask(worker_state, wire("www.cdn.example.com")[:-1], RESOLVER, False)
    worker_state.tcp_connections = 3
    report = pickle.loads(pickle.dumps(worker_report(worker, worker_state)))  # the pipe

    reports[1] = report
    found = samples(main.render()[0])
    zone = "cdn.example.com."
    labels = {"zone": zone, "qtype": "A", "rcode": "NOERROR"}
    assert value(found, "geodns_queries_total", transport="udp", **labels) == 5
    assert value(found, "geodns_queries_total", transport="tcp", **labels) == 1
    assert value(found, "geodns_answers_total", zone=zone, site="jakarta") == 1
    assert value(found, "geodns_dropped_packets_total") == 1
    assert value(found, "geodns_malformed_packets_total") == 1
    assert value(found, "geodns_tcp_connections") == 3

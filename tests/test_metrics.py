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
from geodns.observe.counters import (
    OTHER_QTYPE,
    PATH_FULL,
    REPORTED_SAMPLE,
    QueryCounters,
    worker_report,
)
from geodns.observe.metrics import Metrics
from geodns.observe.sample import SAMPLE_EVERY
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
    maps = len(state.snapshot.maps)
    assert maps > 0 and value(found, "geodns_answer_maps") == maps
    assert value(found, "geodns_answer_maps_pending") == 0

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


def test_shapes_waiting_for_their_maps_are_counted(config: ServerConfig, geo: Geo) -> None:
    """A snapshot swapped in before its maps (a start, a health change): its record shapes
    are counted as pending, as `geodns status` counts them."""
    snapshot = build_snapshot(config, geo, with_maps=False)
    found = samples(Metrics(server_state=ServerState(snapshot), process=False).render()[0])
    assert value(found, "geodns_answer_maps") == 0
    pending = value(found, "geodns_answer_maps_pending")
    assert pending == snapshot.maps_pending() == len(set(snapshot.shapes.values())) > 0


def test_truncated_answers_and_zero_series() -> None:
    """Truncation is counted by zone and transport; located_by series exist before any query."""
    metrics = Metrics(process=False)
    found = samples(metrics.render()[0])
    assert value(found, "geodns_located_queries_total", by="ecs") == 0
    assert value(found, "geodns_located_queries_total", by="resolver") == 0

    query = parse_query(wire("big.cdn.example.com", "TXT"))
    truncated = Outcome(0, "cdn.example.com.", truncated=True)
    for _ in range(3):
        metrics.observe(query, truncated, RESOLVER, "udp", 50, PATH_FULL)
    metrics.observe(query, Outcome(0, "cdn.example.com."), RESOLVER, "tcp", 900, PATH_FULL)
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
        asked = parse_query(wire("x.cdn.example.com", qtype))
        counters.observe(asked, outcome, RESOLVER, "udp", 90, PATH_FULL)
    assert counters.snapshot() == {
        ("cdn.example.com.", OTHER_QTYPE, 3, "udp", None, None, False, 90, 1, PATH_FULL): 100
    }
    copy = counters.snapshot()
    asked = parse_query(wire("x.cdn.example.com"))
    counters.observe(asked, outcome, RESOLVER, "udp", 90, PATH_FULL)
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


def test_render_covers_a_realistic_key_set(state: ServerState) -> None:
    """A scrape over a realistic key set (sites x located_by x transport) renders every
    series (what it costs is the benchmark's: docs/benchmark.md, Counting)."""
    metrics = Metrics(server_state=state, process=False)
    query = parse_query(wire("www.cdn.example.com"))
    sites = ["jakarta", "singapore", "frankfurt", "ashburn", "sao-paulo", None]
    for site in sites:
        for by in ("ecs", "resolver", None):
            for transport in ("udp", "tcp"):
                outcome = Outcome(0, "cdn.example.com.", site=site, located_by=by)
                metrics.observe(query, outcome, RESOLVER, transport, 60, PATH_FULL)
    payload, _ = metrics.render()
    assert b"geodns_answers_total" in payload
    for site in sites[:-1]:
        assert f'site="{site}"'.encode() in payload


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


def test_features_sizes_and_cache_lookups(state: ServerState) -> None:
    """EDNS/DO/ECS counters, the response size histogram and reply-cache/template hits come
    from the same one-increment counts, on every path (reply cache, template, full, TCP)."""
    metrics = Metrics(server_state=state, process=False)
    state.count_with(metrics.counters)
    repeated = wire("www.cdn.example.com", ecs="36.64.0.0/24")
    sizes = []
    for _ in range(3):  # full, its template (kept from the second sighting), the reply cache
        reply = ask(state, repeated, RESOLVER, False)
        assert reply is not None
        sizes.append(len(reply))
    for subnet in ("36.64.1.0/24", "36.64.2.0/24"):  # the same question, other subnets
        reply = ask(state, wire("www.cdn.example.com", ecs=subnet), RESOLVER, False)
        assert reply is not None
        sizes.append(len(reply))
    do = dns.message.make_query("mx1.cdn.example.com", "A", want_dnssec=True).to_wire()
    plain = dns.message.make_query("mx1.cdn.example.com", "A").to_wire()  # no EDNS at all
    for data, tcp in ((do, False), (do, True), (plain, False)):
        reply = ask(state, data, RESOLVER, tcp)
        assert reply is not None
        sizes.append(len(reply))
    found = samples(metrics.render()[0])

    def feature(name: str, transport: str = "udp") -> float | None:
        return value(found, "geodns_query_features_total", feature=name, transport=transport)

    assert feature("edns") == 6 and feature("edns", "tcp") == 1
    assert feature("ecs") == 5 and feature("ecs", "tcp") == 0
    assert feature("do") == 1 and feature("do", "tcp") == 1
    assert value(found, "geodns_cache_lookups_total", cache="reply", result="hit") == 1
    assert value(found, "geodns_cache_lookups_total", cache="reply", result="miss") == 6
    assert value(found, "geodns_cache_lookups_total", cache="template", result="hit") == 3
    assert value(found, "geodns_cache_lookups_total", cache="template", result="miss") == 1
    udp_sizes = sizes[:6] + sizes[7:]
    assert value(found, "geodns_response_size_bytes_count", transport="udp") == 7
    assert value(found, "geodns_response_size_bytes_sum", transport="udp") == sum(udp_sizes)
    assert value(found, "geodns_response_size_bytes_sum", transport="tcp") == sizes[6]
    assert value(found, "geodns_response_size_bytes_bucket", transport="udp", le="128") == sum(
        1 for size in udp_sizes if size <= 128
    )
    assert not any(name == "geodns_start_time_seconds" for name, _ in found)  # process_*'s


def test_an_internal_error_is_a_counted_servfail(state: ServerState, monkeypatch) -> None:
    """A bug in the engine answers SERVFAIL; that query is in geodns_queries_total too."""
    import geodns.serving.answer_path as server_module

    metrics = Metrics(server_state=state, process=False)
    state.count_with(metrics.counters)

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server_module, "respond", broken)
    reply = ask(state, wire("www.cdn.example.com"), RESOLVER, False)
    assert reply is not None and dns.message.from_wire(reply).rcode() == 2
    found = samples(metrics.render()[0])
    labels = {"zone": "", "qtype": "A", "rcode": "SERVFAIL", "transport": "udp"}
    assert value(found, "geodns_queries_total", **labels) == 1
    assert value(found, "geodns_internal_errors_total") == 1


def test_latency_and_tcp_close_reasons_from_a_real_server(make_server) -> None:
    """The transports time every answer (batched UDP per batch, TCP per message) and count why
    each TCP connection ended; a scrape of the running server shows both."""
    import urllib.request

    from conftest import BASE_ZONES, base_config
    from server_process import frame, recv_frame

    server = make_server(base_config(tcp={"idle_timeout": 0.3}), BASE_ZONES)
    url = f"http://127.0.0.1:{server.admin_port}/metrics"

    def scrape() -> dict[Any, float]:
        with urllib.request.urlopen(url, timeout=10) as response:
            return samples(response.read())

    before = scrape()  # the start-up probes
    for _ in range(20):
        server.query("www.example.test")
    server.query("www.example.test", tcp=True)  # dnspython closes: client_closed
    idle = server.tcp_connect()
    idle.sendall(frame(dns.message.make_query("www.example.test", "A").to_wire()))
    assert recv_frame(idle) is not None
    deadline = time.monotonic() + 10  # then it waits past tcp.idle_timeout
    while idle.recv(1) and time.monotonic() < deadline:
        pass
    idle.close()
    time.sleep(0.2)
    after = scrape()

    def grew(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert grew("geodns_answer_latency_seconds_count", transport="udp") == 20
    assert grew("geodns_answer_latency_seconds_count", transport="tcp") == 2
    assert 0 < grew("geodns_answer_latency_seconds_sum", transport="udp") < 20
    assert grew("geodns_answer_latency_seconds_bucket", transport="tcp", le="+Inf") == 2
    assert grew("geodns_tcp_connections_closed_total", reason="client_closed") == 1
    assert grew("geodns_tcp_connections_closed_total", reason="idle_timeout") == 1
    assert value(after, "geodns_tcp_connections_closed_total", reason="limit") == 0


def test_the_dashboard_and_the_docs_name_only_exported_metrics(state: ServerState) -> None:
    """Every metric the Grafana dashboard and docs/operations.md's PromQL use is exported."""
    import json
    import re
    from types import SimpleNamespace

    counters = SimpleNamespace(written=1, dropped=0, errors=0)
    metrics = Metrics(
        server_state=state,
        reload_status=lambda: ReloadStatus(),
        health_status=lambda: {"x": {"state": "up", "drained": False, "checks": {}}},
        geo=lambda: state.snapshot.geo,
        query_log=lambda: counters,
        dnstap=lambda: counters,
    )
    state.count_with(metrics.counters)
    ask(state, wire("www.cdn.example.com", ecs="36.64.0.0/24"), RESOLVER, False)
    exported = set()
    for family in text_string_to_metric_families(metrics.render()[0].decode()):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        exported |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    dashboard = json.loads((ROOT / "docs" / "grafana" / "geodns-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    docs = (ROOT / "docs" / "operations.md").read_text()
    expressions += re.findall(r"```promql\n(.*?)```", docs, re.S)
    named = {name for text in expressions for name in re.findall(r"\bgeodns_[a-z_]+", text)}
    assert len(named) > 15
    assert named <= exported, sorted(named - exported)
    # and every metric exported is in docs/operations.md's table (fully, or as the `_suffix`
    # of the name before it, as `geodns_query_log_lines_total`, `_dropped_total`)
    histograms = {name[: -len("_bucket")] for name in exported if name.endswith("_bucket")}
    families = {name for name in exported if not name.endswith(("_bucket", "_sum", "_count"))}
    undocumented = {
        name
        for name in families | histograms
        if name.startswith("geodns_")
        and f"`{name}`" not in docs
        and not any(
            f"`_{name[cut + 1 :]}`" in docs and f"`{name[:cut]}_" in docs
            for cut in range(len("geodns"), len(name))
            if name[cut] == "_"
        )
    }
    assert not undocumented, sorted(undocumented)


def test_a_workers_sampled_networks_reach_the_main_process(state: ServerState) -> None:
    """The console decides over the main process's network sample; a worker's report carries
    the networks it sampled since its last report, once."""
    worker = QueryCounters()
    worker_state = ServerState(state.snapshot)
    worker_state.count_with(worker)
    for index in range(200):
        ask(worker_state, wire("www.cdn.example.com", ecs=f"36.64.{index}.0/24"), RESOLVER, False)
    first = pickle.loads(pickle.dumps(worker_report(worker, worker_state, sample_added=0)))
    assert 10 < len(first["sample"]) <= worker.sample.added
    assert {entry[0][2][:2] for entry in first["sample"]} == {bytes([36, 64])}
    again_added = worker.sample.added
    again = worker_report(worker, worker_state, sample_added=again_added)
    assert again["sample"] == []
    # a busy second samples more than a report carries: the newest go
    for index in range(4 * REPORTED_SAMPLE * SAMPLE_EVERY):
        ask(
            worker_state,
            wire("www.cdn.example.com", ecs=f"41.{index % 256}.{index // 256}.0/24"),
            RESOLVER,
            False,
        )
    busy = worker_report(worker, worker_state, sample_added=again_added)
    assert len(busy["sample"]) == REPORTED_SAMPLE
    assert busy["sample"] == worker.sample.entries()[-REPORTED_SAMPLE:]
    main = QueryCounters()
    main.sample.add(first["sample"])
    assert main.sample.entries() == first["sample"]

"""Prometheus metrics, counted on the query path for the price of one list increment.

prometheus-client's `Counter.inc()` takes a lock and walks a label dictionary: about a
microsecond, which is a measurable share of a query that costs a few. So the query path never
touches prometheus-client: `QueryCounters.observe` (a `geodns.serving.server.Observer`) adds one
to a plain count kept per tuple of everything the metrics are cut by (what the engine decided,
the response's size, the query's EDNS features, how the reply was found), and `GeodnsCollector`
turns those counts, the transports' latency histograms (geodns.observe.timing) and the server's
other state into metric families when Prometheus scrapes. The rules it keeps:

* Counting is single-threaded (the event loop); a scrape from another thread copies the dict
  first (an atomic C-level copy under the GIL), so it never sees it change under it.
* Label values are bounded: zones and sites come from the config, query types outside the
  registered ones are counted as `other`, rcodes are the handful the engine produces.
* Everything else (health, reloads, GeoIP, packet counters) is read at scrape time from callables
  given at construction, so nothing is pushed and nothing goes stale.
* With `workers: N` each worker process counts its own queries and sends `worker_report()` (plain,
  picklable data) to the main process, whose collector adds the latest report of each worker to
  its own counts: one scrape shows the whole server.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from geodns import __version__
from geodns.common.logs import get_logger
from geodns.dns.wire import FEATURE_ECS
from geodns.observe.counters import (
    FEATURE_NAMES,
    OTHER_QTYPE,
    PATH_REPLY_CACHE,
    PATH_TEMPLATE,
    QUERY_LOG_COUNTERS,
    SERVER_COUNTERS,
    SIZE_BOUNDS,
    SPOOL_COUNTERS,
    TCP_CLOSE_REASONS,
    CountKey,
    QueryCounters,
    qtype_text,
    rcode_text,
)
from geodns.observe.timing import Histogram

log = get_logger("geodns.observe.metrics")


class GeodnsCollector:
    """A prometheus-client collector: builds every geodns metric family at scrape time.

    Sources, each optional:
      server_state   geodns.serving.answer_path.ServerState (`.malformed`, `.dropped`, `.errors`,
                     `.tcp_connections`, `.snapshot` with `.zones` and `.generation`)
      reload_status  () -> an object with `.ok`, `.successes`, `.failures`, `.last_success`,
                     `.last_attempt`, `.errors` (geodns.daemon.app.ReloadStatus)
      health_status  () -> {site: {"state": "up"|"down"|..., "drained": bool,
                     "checks": {check_key: {"ok": bool|None, "latency": seconds|None}}}}
                     ("checks" may also be a list of such dicts with a "key")
      geo            () -> the geodns.geo.locator.Geo in use (`.build_epoch`, `.database_type`, `.path`)
      query_log      () -> the QueryLog or None (`.written`, `.dropped`, `.errors`)
      dnstap         () -> the dnstap Spool or None (`.written`, `.dropped`, `.errors`)
      workers        () -> the latest `worker_report()` of each worker process; added to the
                     query, packet, latency, TCP, query log and dnstap counts of this process
    A source that raises is skipped for that scrape and logged; the rest is still served.
    """

    def __init__(
        self,
        counters: QueryCounters,
        *,
        server_state: Any = None,
        reload_status: Callable[[], Any] | None = None,
        health_status: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
        geo: Callable[[], Any] | None = None,
        query_log: Callable[[], Any] | None = None,
        workers: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
        dnstap: Callable[[], Any] | None = None,
    ) -> None:
        self.counters = counters
        self.server_state = server_state
        self.reload_status = reload_status
        self.health_status = health_status
        self.geo = geo
        self.query_log = query_log
        self.workers = workers
        self.dnstap = dnstap

    def collect(self) -> Iterator[Metric]:
        for name, part in (
            ("build", self._build),
            ("queries", self._queries),
            ("server", self._server),
            ("reload", self._reload),
            ("health", self._health),
            ("geoip", self._geoip),
            ("query_log", self._query_log),
            ("dnstap", self._dnstap),
        ):
            try:
                families = list(part())
            except Exception:  # one broken source must not empty the whole scrape
                log.exception("metrics_source_failed", source=name)
                continue
            yield from families

    def _build(self) -> Iterable[Metric]:
        info = InfoMetricFamily("geodns_build", "geodns version and the Python running it")
        info.add_metric(
            [],
            {
                "version": __version__,
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
            },
        )
        return (info,)  # the start time is process_start_time_seconds

    def _reports(self) -> list[Mapping[str, Any]]:
        if self.workers is None:
            return []
        try:
            return list(self.workers())
        except Exception:  # the workers' share is missing from this scrape, the rest is not
            log.exception("metrics_source_failed", source="workers")
            return []

    def _all_counts(self) -> dict[CountKey, int]:
        counts = self.counters.snapshot()
        for report in self._reports():
            for key, count in report.get("counts", {}).items():
                counts[key] = counts.get(key, 0) + count
        return counts

    def answers_by_site(self) -> dict[str, int]:
        """Geo answers per site since start, every process included (the console's share)."""
        totals: dict[str, int] = {}
        for key, count in self._all_counts().items():
            if key[4] is not None:
                for site in key[4].split(","):
                    totals[site] = totals.get(site, 0) + count
        return totals

    def _queries(self) -> Iterable[Metric]:
        queries: dict[tuple[str, str, str, str], int] = {}
        answers: dict[tuple[str, str], int] = {}
        located: dict[str, int] = {}
        truncated: dict[tuple[str, str], int] = {}
        features: dict[tuple[str, str], int] = {}
        sizes: dict[str, tuple[list[int], int]] = {}
        lookups = {
            (cache, result): 0 for cache in ("reply", "template") for result in ("hit", "miss")
        }
        for key, count in self._all_counts().items():
            (zone, qtype, rcode, transport, site, located_by, was_truncated) = key[:7]
            size, carried, path = key[7:]
            zone_label = zone or ""
            labels = (
                zone_label,
                "other" if qtype == OTHER_QTYPE else qtype_text(qtype),
                rcode_text(rcode),
                transport,
            )
            queries[labels] = queries.get(labels, 0) + count
            if site is not None:  # "ashburn,frankfurt": an answer with two sites counts for each
                for one in site.split(","):
                    answers[zone_label, one] = answers.get((zone_label, one), 0) + count
            if located_by is not None:
                located[located_by] = located.get(located_by, 0) + count
            if was_truncated:
                cut = (zone_label, transport)
                truncated[cut] = truncated.get(cut, 0) + count
            for bit, name in FEATURE_NAMES:
                if carried & bit:
                    features[name, transport] = features.get((name, transport), 0) + count
            buckets, total = sizes.get(transport) or ([0] * (len(SIZE_BOUNDS) + 1), 0)
            buckets[bisect_left(SIZE_BOUNDS, size)] += count
            sizes[transport] = (buckets, total + size * count)
            if transport == "udp":
                lookups["reply", "hit" if path == PATH_REPLY_CACHE else "miss"] += count
                if path != PATH_REPLY_CACHE and carried & FEATURE_ECS:
                    lookups["template", "hit" if path == PATH_TEMPLATE else "miss"] += count
        queries_family = CounterMetricFamily(
            "geodns_queries",
            "Queries answered, by zone ('' when outside every zone), type, rcode and transport",
            labels=("zone", "qtype", "rcode", "transport"),
        )
        for labels, count in sorted(queries.items()):
            queries_family.add_metric(labels, count)
        yield queries_family
        family = CounterMetricFamily(
            "geodns_answers",
            "Geo answers, by site chosen (an answer with several sites counts for each)",
            labels=("zone", "site"),
        )
        for site_labels, count in sorted(answers.items()):
            family.add_metric(site_labels, count)
        yield family
        family = CounterMetricFamily(
            "geodns_located_queries",
            "Geo answers by how the user was located: ecs (EDNS Client Subnet) or resolver",
            labels=("by",),
        )
        for by in ("ecs", "resolver"):
            located.setdefault(by, 0)
        for by, count in sorted(located.items()):
            family.add_metric((by,), count)
        yield family
        family = CounterMetricFamily(
            "geodns_truncated_answers",
            "Answers sent with TC=1 because they did not fit the client's UDP size",
            labels=("zone", "transport"),
        )
        for cut_labels, count in sorted(truncated.items()):
            family.add_metric(cut_labels, count)
        yield family
        family = CounterMetricFamily(
            "geodns_query_features",
            "Answered queries that carried an EDNS OPT record (edns), the DO bit (do) or an "
            "EDNS Client Subnet option (ecs)",
            labels=("feature", "transport"),
        )
        for _, name in FEATURE_NAMES:
            for transport in ("udp", "tcp"):
                family.add_metric((name, transport), features.get((name, transport), 0))
        yield family
        family = CounterMetricFamily(
            "geodns_cache_lookups",
            "UDP queries by whether the reply cache (cache=reply) had their reply, and ECS "
            "queries it had not by whether a subnet template (cache=template) answered them",
            labels=("cache", "result"),
        )
        for lookup_labels, count in sorted(lookups.items()):
            family.add_metric(lookup_labels, count)
        yield family
        histogram = HistogramMetricFamily(
            "geodns_response_size_bytes",
            "Size of the responses sent, in bytes (TCP: without the length prefix)",
            labels=("transport",),
        )
        for transport in ("udp", "tcp"):
            buckets, total = sizes.get(transport) or ([0] * (len(SIZE_BOUNDS) + 1), 0)
            histogram.add_metric((transport,), _cumulative(SIZE_BOUNDS, buckets), total)
        yield histogram

    def _server(self) -> Iterable[Metric]:
        state = self.server_state
        if state is None:
            return
        totals = self._totals(state, SERVER_COUNTERS, "server")
        yield from _counters(
            totals,
            (
                "geodns_dropped_packets",
                "dropped",
                "Packets dropped unanswered: short, QR=1, oversized, or a reply the kernel refused",
            ),
            ("geodns_malformed_packets", "malformed", "Malformed queries answered with FORMERR"),
            ("geodns_internal_errors", "errors", "Bugs caught at the edge (SERVFAIL or no reply)"),
        )
        family = GaugeMetricFamily("geodns_tcp_connections", "TCP connections open now")
        family.add_metric([], totals["tcp_connections"])
        yield family
        rrl = CounterMetricFamily(
            "geodns_rrl_responses",
            "Responses held back by response rate limiting: dropped, sent truncated (slipped), "
            "or BADCOOKIE to a client that sent a cookie",
            labels=("action",),
        )
        rrl.add_metric(("dropped",), totals["rrl_dropped"])
        rrl.add_metric(("slipped",), totals["rrl_slipped"])
        rrl.add_metric(("badcookie",), totals["badcookie"])
        yield rrl
        cookies = CounterMetricFamily(
            "geodns_cookies",
            "DNS cookies seen: a valid server cookie, an invalid one, or a new one made",
            labels=("result",),
        )
        for result in ("valid", "invalid", "new"):
            cookies.add_metric((result,), totals[f"cookies_{result}"])
        yield cookies
        closed = dict.fromkeys(TCP_CLOSE_REASONS, 0)
        for source in [getattr(state, "tcp_closed", {})] + [
            report.get("tcp_closed", {}) for report in self._reports()
        ]:
            for reason, count in source.items():
                closed[reason] = closed.get(reason, 0) + count
        closed_family = CounterMetricFamily(
            "geodns_tcp_connections_closed",
            "TCP connections ended, by reason: client_closed, reset, idle_timeout, "
            "slow_message, oversized, evicted (to make room), per_address and limit (refused), "
            "shutdown",
            labels=("reason",),
        )
        for reason, count in closed.items():
            closed_family.add_metric((reason,), count)
        yield closed_family
        yield from self._latency(state)
        snapshot = getattr(state, "snapshot", None)
        if snapshot is not None:
            family = GaugeMetricFamily("geodns_zones", "Zones being served")
            family.add_metric([], len(snapshot.zones))
            yield family
            family = GaugeMetricFamily(
                "geodns_snapshot_generation", "Serial of the zone snapshot in use (+1 per reload)"
            )
            family.add_metric([], snapshot.generation)
            yield family
            family = GaugeMetricFamily(
                "geodns_answer_maps", "Answer maps in service (one per dynamic record shape)"
            )
            family.add_metric([], len(snapshot.maps))
            yield family
            family = GaugeMetricFamily(
                "geodns_answer_maps_pending",
                "Record shapes decided per place while their answer map is built",
            )
            family.add_metric([], snapshot.maps_pending())
            yield family

    def _latency(self, state: Any) -> Iterable[Metric]:
        histogram = HistogramMetricFamily(
            "geodns_answer_latency_seconds",
            "Time from reading a query to sending its answer, by transport (UDP in batches: "
            "every query of a batch waited from the batch's read to its send)",
            labels=("transport",),
        )
        for transport in ("udp", "tcp"):
            own = getattr(state, f"{transport}_latency", None)
            if own is None:
                continue
            total = Histogram(own.bounds)
            total.add(own.report())
            for report in self._reports():
                latency = report.get("latency", {}).get(transport)
                if latency is not None:
                    total.add(latency)
            histogram.add_metric((transport,), _cumulative(total.bounds, total.counts), total.total)
        yield histogram

    def _reload(self) -> Iterable[Metric]:
        if self.reload_status is None:
            return
        status = self.reload_status()
        reloads = CounterMetricFamily(
            "geodns_reloads", "Reloads of config and zones, by result", labels=("result",)
        )
        reloads.add_metric(("success",), status.successes)
        reloads.add_metric(("failure",), status.failures)
        yield reloads
        family = GaugeMetricFamily(
            "geodns_reload_ok",
            "1 if the last reload succeeded; 0: the previous snapshot is still served",
        )
        family.add_metric([], 1 if status.ok else 0)
        yield family
        family = GaugeMetricFamily(
            "geodns_reload_errors", "Problems found by the last reload (0 after a success)"
        )
        family.add_metric([], 0 if status.ok else len(status.errors))
        yield family
        family = GaugeMetricFamily(
            "geodns_reload_last_success_timestamp_seconds",
            "When config and zones were last loaded successfully (start-up counts; Unix time)",
        )
        family.add_metric([], status.last_success)
        yield family
        family = GaugeMetricFamily(
            "geodns_reload_last_attempt_timestamp_seconds",
            "When a reload was last attempted (Unix time)",
        )
        family.add_metric([], status.last_attempt)
        yield family

    def _health(self) -> Iterable[Metric]:
        if self.health_status is None:
            return ()
        sites = self.health_status()
        up = GaugeMetricFamily(
            "geodns_site_up",
            "1 if the site's health state is up, 0 if it is anything else (down, unknown)",
            labels=("site",),
        )
        drained = GaugeMetricFamily(
            "geodns_site_drained", "1 if an operator drained the site", labels=("site",)
        )
        check_up = GaugeMetricFamily(
            "geodns_check_up",
            "1 if the check's last probe succeeded, 0 if it failed",
            labels=("site", "check"),
        )
        latency = GaugeMetricFamily(
            "geodns_check_latency_seconds",
            "Duration of the check's last probe",
            labels=("site", "check"),
        )
        for site, info in sorted(sites.items()):
            up.add_metric((site,), 1 if info.get("state") == "up" else 0)
            drained.add_metric((site,), 1 if info.get("drained") else 0)
            for key, check in _checks(info.get("checks")):
                ok = check.get("ok")
                if ok is not None:
                    check_up.add_metric((site, key), 1 if ok else 0)
                seconds = check.get("latency")
                if seconds is not None:
                    latency.add_metric((site, key), float(seconds))
        return up, drained, check_up, latency

    def _geoip(self) -> Iterable[Metric]:
        if self.geo is None:
            return
        geo = self.geo()
        if geo is None:
            return
        family = GaugeMetricFamily(
            "geodns_geoip_build_timestamp_seconds",
            "Build date of the GeoIP database in use (Unix time)",
            labels=("database_type", "path"),
        )
        family.add_metric((str(geo.database_type), str(geo.path)), geo.build_epoch)
        yield family

    def _query_log(self) -> Iterable[Metric]:
        if self.query_log is None:
            return
        query_log = self.query_log()
        if query_log is None:
            return
        yield from _counters(
            self._totals(query_log, QUERY_LOG_COUNTERS, "query_log"),
            ("geodns_query_log_lines", "written", "Query log lines written"),
            ("geodns_query_log_dropped", "dropped", "Query log entries dropped: queue full"),
            ("geodns_query_log_errors", "errors", "Query log lines lost to write errors"),
        )

    def _dnstap(self) -> Iterable[Metric]:
        if self.dnstap is None:
            return
        spool = self.dnstap()
        if spool is None:
            return
        yield from _counters(
            self._totals(spool, SPOOL_COUNTERS, "dnstap"),
            ("geodns_dnstap_queries", "written", "Sampled queries written to the dnstap output"),
            (
                "geodns_dnstap_dropped",
                "dropped",
                "Sampled queries dropped: the dnstap spool was full or no reader was connected",
            ),
            ("geodns_dnstap_errors", "errors", "Sampled queries lost to dnstap write errors"),
        )

    def _totals(self, source: Any, names: Iterable[str], section: str) -> dict[str, int]:
        """This process's counters named `names` plus the workers' reports of `section`."""
        totals = {name: getattr(source, name) for name in names}
        for report in self._reports():
            for name, count in report.get(section, {}).items():
                totals[name] = totals.get(name, 0) + count
        return totals


def _counters(totals: Mapping[str, int], *specs: tuple[str, str, str]) -> Iterable[Metric]:
    """One unlabelled counter family per (metric name, key in totals, help text)."""
    for name, key, text in specs:
        family = CounterMetricFamily(name, text)
        family.add_metric([], totals[key])
        yield family


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last is +Inf) -> Prometheus's cumulative (le, count) pairs."""
    running = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else _le(bound), running))
    return buckets


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def _checks(checks: Any) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """A site's checks as (key, details), from a mapping or a list of dicts with "key"."""
    if isinstance(checks, Mapping):
        return sorted((str(key), value) for key, value in checks.items())
    if isinstance(checks, list):
        return [(str(check.get("key", index)), check) for index, check in enumerate(checks)]
    return []


class Metrics:
    """Everything GET /metrics serves: geodns's families plus process and platform metrics.

    Its own CollectorRegistry, so nothing registered globally by a library leaks in and tests
    can build as many as they like. `observe` is `QueryCounters.observe`. The process metrics
    (memory, CPU, open files) are the main process's only.
    """

    def __init__(
        self,
        *,
        server_state: Any = None,
        reload_status: Callable[[], Any] | None = None,
        health_status: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
        geo: Callable[[], Any] | None = None,
        query_log: Callable[[], Any] | None = None,
        workers: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
        dnstap: Callable[[], Any] | None = None,
        process: bool = True,
        counters: QueryCounters | None = None,
    ) -> None:
        self.counters = counters if counters is not None else QueryCounters()
        self.observe = self.counters.observe
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = GeodnsCollector(
            self.counters,
            server_state=server_state,
            reload_status=reload_status,
            health_status=health_status,
            geo=geo,
            query_log=query_log,
            workers=workers,
            dnstap=dnstap,
        )
        self.registry.register(self.collector)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(payload, Content-Type): Prometheus text, or OpenMetrics when `accept` asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

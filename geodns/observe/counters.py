"""Per-query counting for the metrics, for the price of one list increment, without
prometheus-client.

prometheus-client's `Counter.inc()` takes a lock and walks a label dictionary: about a
microsecond, which is a measurable share of a query that costs a few. So the query path never
touches prometheus-client: `QueryCounters.observe` (a `geodns.serving.answer_path.Observer`)
adds one to a plain count kept per tuple of everything the metrics are cut by (what the engine
decided, the response's size, the query's EDNS features, how the reply was found), and
geodns.observe.metrics turns those counts into metric families when Prometheus scrapes. Only
the main process, which serves /metrics, imports prometheus-client, and only once it answers
queries: a worker sends `worker_report()` (plain, picklable data) instead.

Counting is single-threaded (the event loop); a scrape from another thread copies the dict
first (an atomic C-level copy under the GIL), so it never sees it change under it. Label values
are bounded: zones and sites come from the config, query types outside the registered ones are
counted as `other`, rcodes are the handful the engine produces.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from geodns.dns.wire import FEATURE_DO, FEATURE_ECS, FEATURE_EDNS
from geodns.observe.sample import NetworkSample

# IANA DNS RR types (the ones anyone asks for); anything else is TYPEnnn (RFC 3597).
QTYPE_NAMES: dict[int, str] = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    13: "HINFO",
    15: "MX",
    16: "TXT",
    17: "RP",
    18: "AFSDB",
    24: "SIG",
    25: "KEY",
    28: "AAAA",
    29: "LOC",
    33: "SRV",
    35: "NAPTR",
    36: "KX",
    37: "CERT",
    38: "A6",
    39: "DNAME",
    41: "OPT",
    43: "DS",
    44: "SSHFP",
    45: "IPSECKEY",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    49: "DHCID",
    50: "NSEC3",
    51: "NSEC3PARAM",
    52: "TLSA",
    53: "SMIMEA",
    55: "HIP",
    59: "CDS",
    60: "CDNSKEY",
    61: "OPENPGPKEY",
    62: "CSYNC",
    63: "ZONEMD",
    64: "SVCB",
    65: "HTTPS",
    99: "SPF",
    108: "EUI48",
    109: "EUI64",
    249: "TKEY",
    250: "TSIG",
    251: "IXFR",
    252: "AXFR",
    255: "ANY",
    256: "URI",
    257: "CAA",
}
RCODE_NAMES: dict[int, str] = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    16: "BADVERS",
}
OTHER_QTYPE = -1  # the counter key of every type not in QTYPE_NAMES
MAX_KEYS = 100_000  # a safety net; the bounded labels above keep real use far below it


def qtype_text(qtype: int) -> str:
    """A type's mnemonic, or its RFC 3597 form TYPEnnn."""
    return QTYPE_NAMES.get(qtype) or f"TYPE{qtype}"


def rcode_text(rcode: int) -> str:
    """An rcode's mnemonic, or RCODEnn."""
    return RCODE_NAMES.get(rcode) or f"RCODE{rcode}"


# How a UDP reply was found (the `path` of a count): the full path (parser and engine), a subnet
# template (geodns.serving.subnet_templates), or the reply cache. TCP is always the full path.
PATH_FULL = 0
PATH_TEMPLATE = 1
PATH_REPLY_CACHE = 2
# what the query carried (Query.features, Asked.features): bits, so one int in the key
FEATURE_NAMES = ((FEATURE_EDNS, "edns"), (FEATURE_DO, "do"), (FEATURE_ECS, "ecs"))
# bytes: a plain A answer is under 100, 512 is the old UDP limit, 1232 the usual EDNS size
SIZE_BOUNDS = (64, 128, 256, 512, 768, 1024, 1232, 1472, 2048, 4096, 16384, 65535)

# (zone, qtype, rcode, transport, site, located_by, truncated, response size, features, path)
CountKey = tuple[str | None, int, int, str, str | None, str | None, bool, int, int, int]


class QueryCounters:
    """Per-query counting on the hot path: no lock, no labels, one list increment per query.

    Each distinct key (the tuple of everything the metrics are cut by) gets a slot in a flat
    list of counts; the collector sums the keys into each family at scrape time. `observe` has
    the signature of `geodns.serving.answer_path.Observer`; `slot` gives the slot of a reply
    kept in the reply cache or a template, so that the reply carries it and a repeat of its
    query is counted by `tally[slot] += 1` alone (geodns.serving.answer_path.answer). A key holds the
    response's size and the query's EDNS features, so a cached reply's one increment counts
    its size and features too.

    `observe` also feeds the network sample (geodns.observe.sample) about once every
    `sample.every` queries it sees: a decrement and a comparison per query.
    """

    __slots__ = ("slots", "tally", "sample", "countdown")

    def __init__(self, sample: NetworkSample | None = None) -> None:
        self.slots: dict[CountKey, int] = {}
        self.tally: list[int] = []
        self.sample = sample if sample is not None else NetworkSample()
        self.countdown = self.sample.gap()

    def observe(
        self, asked: Any, outcome: Any, client: str, transport: str, size: int, path: int
    ) -> None:
        """Count one answered query (asked: a geodns.dns.wire.Query or the
        geodns.serving.snapshot.Asked kept of one, outcome: geodns.serving.engine.Outcome, size: the
        response's bytes, path: PATH_*)."""
        self.tally[self.slot(asked, outcome, transport, size, path)] += 1
        self.countdown -= 1
        if self.countdown <= 0:
            self.countdown = self.sample.take(asked, client)

    def slot(self, asked: Any, outcome: Any, transport: str, size: int, path: int) -> int:
        """The slot in `tally` of the queries asked so, answered so, over `transport`."""
        key = (
            outcome.zone,
            asked.qtype,
            outcome.rcode,
            transport,
            outcome.site,
            outcome.located_by,
            outcome.truncated,
            size,
            asked.features,
            path,
        )
        slot = self.slots.get(key)
        if slot is None:
            slot = self._new_slot(key)
        return slot

    def _new_slot(self, key: CountKey) -> int:
        """A key not seen before: fold unregistered query types, cap the number of keys."""
        if key[1] not in QTYPE_NAMES:
            key = (key[0], OTHER_QTYPE) + key[2:]
        elif len(self.slots) >= MAX_KEYS:
            size = SIZE_BOUNDS[min(bisect_left(SIZE_BOUNDS, key[7]), len(SIZE_BOUNDS) - 1)]
            key = (None, OTHER_QTYPE, key[2], key[3], None, None, False, size) + key[8:]
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = len(self.tally)
            self.tally.append(0)
        return slot

    def snapshot(self) -> dict[CountKey, int]:
        """The counts by key (a new dict, safe to iterate while queries keep being counted)."""
        tally = self.tally
        return {key: tally[slot] for key, slot in list(self.slots.items()) if tally[slot]}


SERVER_COUNTERS = (
    "dropped",
    "malformed",
    "errors",
    "tcp_connections",
    "rrl_dropped",
    "rrl_slipped",
    "badcookie",
    "cookies_valid",
    "cookies_invalid",
    "cookies_new",
)
SPOOL_COUNTERS = ("written", "dropped", "errors")
QUERY_LOG_COUNTERS = SPOOL_COUNTERS
# why a TCP connection ended (geodns.serving.transports counts each once)
TCP_CLOSE_REASONS = (
    "client_closed",  # the client closed it
    "reset",  # the client reset it, or an error did
    "idle_timeout",  # no message under way for tcp.idle_timeout
    "slow_message",  # a message did not arrive whole within tcp.message_timeout
    "oversized",  # a length prefix past 64 KiB
    "evicted",  # the process was full and this one had gone longest without a message
    "per_address",  # refused: its address held tcp.max_per_address connections
    "limit",  # refused: tcp.max_connections reached and nothing could be evicted
    "shutdown",  # the server stopped
)


REPORTED_SAMPLE = 256
"""Sampled networks a worker report carries at most (a second's worth): under cold traffic a
worker samples its whole ring (2,048) every second, 200-300 KB pickled, which the main process
unpickled for every worker each second to keep a sample of 2,048 in all."""


def worker_report(
    counters: QueryCounters,
    server_state: Any,
    query_log: Any = None,
    dnstap: Any = None,
    sample_added: int | None = None,
) -> dict:
    """What a worker process sends to the main process for the metrics endpoint (picklable).

    Counters are totals since the worker started, so a lost or repeated report does no harm:
    the main process keeps the latest one per worker. The exception is "sample": the network
    sample's entries added since `sample_added` (the sample's `added` at the last report), which
    the main process adds to its own sample once.
    """
    report: dict[str, Any] = {
        "counts": counters.snapshot(),
        "server": {name: getattr(server_state, name) for name in SERVER_COUNTERS},
        "latency": {
            "udp": server_state.udp_latency.report(),
            "tcp": server_state.tcp_latency.report(),
        },
        "tcp_closed": dict(server_state.tcp_closed),
    }
    if query_log is not None:
        report["query_log"] = {name: getattr(query_log, name) for name in QUERY_LOG_COUNTERS}
    if dnstap is not None:
        report["dnstap"] = {name: getattr(dnstap, name) for name in SPOOL_COUNTERS}
    if sample_added is not None:  # the newest, at most REPORTED_SAMPLE a report
        report["sample"] = counters.sample.newer_than(sample_added)[-REPORTED_SAMPLE:]
    return report

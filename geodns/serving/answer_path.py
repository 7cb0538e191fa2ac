"""The answer path: one query's bytes in, the reply's bytes out. Everything a query meets, in
the order it meets it, lives in `answer()`:

1. the reply cache: UDP query bytes answered before under this snapshot -> the same reply with
   the query's ID (the repeat of a warm query costs one dict look-up);
2. the templates: the same question from another client subnet -> the learned reply, cut at
   the ECS scope, joined with the scope and address of this query (geodns.serving.templates);
3. the full path: parse (geodns.dns.wire), DNS cookies, the engine (geodns.serving.engine);
   what it answers may teach 1 and 2;
and, for UDP, response rate limiting (geodns.serving.rrl) before anything leaves.

Bad input is handled here and only here: a packet shorter than a header or with QR=1 is
dropped; a malformed one gets FORMERR; a bug in geodns gets SERVFAIL and one log event (rate
limited: a flood of one bad packet cannot flood the log), and the server goes on.

No sockets, no clock: the transports pass the client, `now` and the per-process state (counts,
limiter, cookie jar) in. The snapshot's caches fill as queries come; they derive only from the
snapshot, so the same bytes always get the same reply from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from geodns.common.errors import Drop, FormError
from geodns.common.lograte import RateLimitedLog
from geodns.common.logs import get_logger
from geodns.dns.names import name_text
from geodns.dns.resolve import RCODE_SERVFAIL
from geodns.dns.wire import Query, parse_query
from geodns.observe.counters import (
    PATH_FULL,
    PATH_REPLY_CACHE,
    PATH_TEMPLATE,
    TCP_CLOSE_REASONS,
    QueryCounters,
)
from geodns.observe.timing import Histogram
from geodns.serving.client import Client
from geodns.serving.cookies import CookieJar
from geodns.serving.engine import (
    BADCOOKIE,
    RRL_ERROR,
    Outcome,
    bare,
    formerr,
    respond,
    servfail,
)
from geodns.serving.engine import truncated_copy as slip_copy
from geodns.serving.rrl import DROP, SEND, ResponseRateLimiter
from geodns.serving.snapshot import SIGHTING_BITS, SIGHTING_MASK, Asked, CachedReply, Snapshot
from geodns.serving.templates import Template

log = get_logger("geodns.serving.answer_path")
MAX_CACHED_QUERY = 512  # bytes: longer queries are answered but not kept


class Asking(Protocol):
    """What an observer reads of a query: a parsed `Query` or the `Asked` kept with a reply."""

    @property
    def qname(self) -> bytes: ...
    @property
    def qtype(self) -> int: ...
    @property
    def ecs(self) -> tuple[int, int, bytes] | None: ...
    @property
    def features(self) -> int: ...


Observer = Callable[[Asking, Outcome, str, str, int, int], None]
"""Called once per answered query: (what was asked, what was decided, client, "udp" or "tcp",
the reply's size in bytes, how it was found: geodns.observe.counters.PATH_*)."""

SlotOf = Callable[[Asking, Outcome, str, int, int], int]
"""The counter slot of (asked, outcome, transport, reply size, path): geodns.observe.counters."""


class Tap(Protocol):
    """Sees every query's bytes and reply at the transports (geodns.observe.dnstap.DnstapTap)."""

    def batched(self, listener: Any, offset: int, query: bytes, response: bytes | None) -> None: ...
    def datagram(
        self, transport: Any, address: Any, query: bytes, response: bytes | None
    ) -> None: ...
    def stream(self, connection: Any, query: bytes, response: bytes | None) -> None: ...


SERVFAIL_OUTCOME = Outcome(RCODE_SERVFAIL, None, rrl=RRL_ERROR)


class ServerState:
    """What one process keeps for the answer path: the current snapshot (the one reference a
    reload or health change swaps), the counts, and the guards (rate limiter, cookies)."""

    def __init__(
        self,
        snapshot: Snapshot,
        limiter: ResponseRateLimiter | None = None,
        cookies: CookieJar | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.limiter = limiter
        self.cookies = cookies
        self.observer: Observer | None = None
        # when the observer only counts (no query log): its counts and their slots, so that a
        # reply from a cache is counted by one list increment (geodns.observe.metrics)
        self.tally: list[int] | None = None
        self.slot_of: SlotOf | None = None
        self.counters: QueryCounters | None = None  # for the network sample of template hits
        self.malformed = 0
        self.dropped = 0
        self.errors = 0
        self.badcookie = 0
        self.tcp_connections = 0
        self.tcp_closed = dict.fromkeys(TCP_CLOSE_REASONS, 0)  # by reason (transports)
        self.udp_latency = Histogram()  # receive to send, seconds (geodns.observe.timing)
        self.tcp_latency = Histogram()
        self.tap: Tap | None = None  # dnstap, when configured
        self.error_log = RateLimitedLog(log)

    @property
    def rrl_dropped(self) -> int:
        return self.limiter.dropped if self.limiter is not None else 0

    @property
    def rrl_slipped(self) -> int:
        return self.limiter.slipped if self.limiter is not None else 0

    @property
    def cookies_valid(self) -> int:
        return self.cookies.valid if self.cookies is not None else 0

    @property
    def cookies_invalid(self) -> int:
        return self.cookies.invalid if self.cookies is not None else 0

    @property
    def cookies_new(self) -> int:
        return self.cookies.new if self.cookies is not None else 0

    def count_with(self, counters: QueryCounters) -> None:
        """Make `counters` the observer, with its slot-counting fast path for cached replies."""
        self.observer = counters.observe
        self.tally = counters.tally
        self.slot_of = counters.slot
        self.counters = counters


def answer(state: ServerState, data: bytes, client: Client, tcp: bool, now: float) -> bytes | None:
    """One query packet -> the reply packet, or None when nothing is to be sent."""
    snapshot = state.snapshot
    if not tcp:
        key = data[2:]
        cached = snapshot.replies.get(key)
        if cached is not None:  # these bytes were answered before under this snapshot
            outcome = cached.outcome
            reply = data[:2] + cached.body
            limiter = state.limiter
            if limiter is not None and not client.exempt:
                verdict = limiter.check(client.network, outcome.rrl, now)
                if verdict != SEND:
                    return slip_copy(reply) if verdict != DROP else None
            tally = state.tally
            if tally is not None and cached.slot >= 0:
                tally[cached.slot] += 1
            elif state.observer is not None and cached.asked is not None:
                state.observer(
                    cached.asked, outcome, client.text, "udp", len(reply), PATH_REPLY_CACHE
                )
            return reply
        hit = snapshot.templates.answer(data)
        if hit is not None:  # the same question before, from another client subnet
            reply, template, found, scope, address = hit
            outcome = found.outcome
            limiter = state.limiter
            if limiter is not None and not client.exempt:
                verdict = limiter.check(client.network, outcome.rrl, now)
                if verdict != SEND:
                    return slip_copy(reply) if verdict != DROP else None
            # the first sighting of these bytes only notes them (see _seen_before); the
            # second keeps the reply, with what observers read of the query
            asked = None
            if _seen_before(snapshot.sightings, key):
                asked = _template_asked(template, address)
                stored = _slot(state, asked, outcome, len(reply), PATH_REPLY_CACHE)
                snapshot.replies.put(
                    key,
                    CachedReply(reply[2:], asked, outcome, stored),
                    len(key) + len(reply),
                )
            tally = state.tally
            slot = found.slot
            if tally is not None and slot >= 0:
                tally[slot] += 1
                # a template hit is a new network: the network sample sees them as the full
                # path's queries (a repeat from the reply cache is not a new one)
                counters = state.counters
                if counters is not None:
                    counters.countdown -= 1
                    if counters.countdown <= 0:
                        asked = asked or _template_asked(template, address)
                        counters.countdown = counters.sample.take(asked, client.text)
            elif state.observer is not None:
                if asked is None:
                    asked = _template_asked(template, address)
                state.observer(
                    asked,
                    outcome._replace(scope=scope),
                    client.text,
                    "udp",
                    len(reply),
                    PATH_TEMPLATE,
                )
            return reply
    try:
        query = parse_query(data)
    except Drop:
        state.dropped += 1
        return None
    except FormError as exc:
        state.malformed += 1
        return formerr(exc.query_id, exc.flags)
    except Exception:  # a bug in the parser must not stop the server
        state.errors += 1
        state.error_log.exception("parser_error", client=client.text, size=len(data))
        return None
    try:
        return _full_path(state, snapshot, data, query, client, tcp, now)
    except Exception:
        state.errors += 1
        state.error_log.exception(
            "engine_error", client=client.text, qtype=query.qtype, qname=name_text(query.qname)
        )
        reply = servfail(query, snapshot)
        if state.observer is not None:  # counted like any answer
            transport = "tcp" if tcp else "udp"
            state.observer(query, SERVFAIL_OUTCOME, client.text, transport, len(reply), PATH_FULL)
        return reply


def _full_path(
    state: ServerState,
    snapshot: Snapshot,
    data: bytes,
    query: Query,
    client: Client,
    tcp: bool,
    now: float,
) -> bytes | None:
    cookie = b""
    cookie_valid = False
    if query.cookie is not None and state.cookies is not None:
        checked = state.cookies.check(query.cookie, _packed(client), int(now))
        cookie, cookie_valid = checked.reply, checked.valid
    response, outcome = respond(query, client, snapshot, tcp, cookie)
    if not tcp:
        limiter = state.limiter
        if limiter is not None and not client.exempt and not cookie_valid:
            verdict = limiter.check(client.network, outcome.rrl, now)
            if verdict != SEND:
                if cookie:  # a client with a cookie is told to come back with ours
                    state.badcookie += 1
                    return bare(query, BADCOOKIE, snapshot, cookie)
                return slip_copy(response, query) if verdict != DROP else None
        if outcome.cacheable and not cookie and len(data) <= MAX_CACHED_QUERY:
            asked = Asked(query.qname, query.qtype, query.ecs, query.features)
            _remember(state, snapshot, data[2:], response, asked, outcome)
            if query.ecs is not None and query.ecs_at_end:
                record = snapshot.prepare(query.key, query.qtype).dynamic
                answer_map = snapshot.answer_map(record) if record is not None else None
                if record is None or answer_map is not None:
                    slot = _slot(state, asked, outcome, len(response), PATH_TEMPLATE)
                    snapshot.templates.learn(data, query, response, outcome, answer_map, slot)
    if state.observer is not None:
        transport = "tcp" if tcp else "udp"
        state.observer(query, outcome, client.text, transport, len(response), PATH_FULL)
    return response


def _remember(
    state: ServerState, snapshot: Snapshot, key: bytes, reply: bytes, asked: Asked, outcome: Outcome
) -> None:
    """Keep a cacheable UDP reply, from the second time its query bytes are seen: most
    one-off queries (a cold workload's new subnets) never come back."""
    if not _seen_before(snapshot.sightings, key):
        return
    slot = _slot(state, asked, outcome, len(reply), PATH_REPLY_CACHE)
    snapshot.replies.put(key, CachedReply(reply[2:], asked, outcome, slot), len(key) + len(reply))


def _seen_before(sighted: bytearray, key: bytes) -> bool:
    """Whether these query bytes were sighted before under this snapshot; if not, note them.

    A sighting is a tag byte in a fixed table (no key kept, nothing to evict), in one of two
    slots chosen by the bytes' hash: a new sighting takes its first slot if free, else its
    second if free, else its first. With one slot, two queries of a warm pool whose slots
    collided erased each other's sighting at every turn and never reached the reply cache
    (7% of a pool of 10,000 subnets); with two, that takes three queries sharing slots."""
    hashed = hash(key)  # computed once per bytes object, by the reply cache's look-up
    tag = (hashed >> SIGHTING_BITS) % 255 + 1  # never 0, which is an empty slot
    first = hashed & SIGHTING_MASK
    if sighted[first] == tag:
        return True
    second = (hashed >> 32) & SIGHTING_MASK
    if sighted[second] == tag:
        return True
    if sighted[first] and not sighted[second]:
        sighted[second] = tag
    else:
        sighted[first] = tag
    return False


def _slot(state: ServerState, asked: Asking, outcome: Outcome, size: int, path: int) -> int:
    """The counter slot a cached reply carries, so its repeats are counted by one increment;
    -1 when nothing counts by slot (the query log is on: every query goes to the observer)."""
    slot_of = state.slot_of
    return slot_of(asked, outcome, "udp", size, path) if slot_of is not None else -1


def _template_asked(template: Template, address: bytes) -> Asked:
    ecs = (template.ecs_family, template.source, address)
    return Asked(template.qname, template.qtype, ecs, template.features)


def _packed(client: Client) -> bytes:
    return client.value.to_bytes(4 if client.family == 4 else 16, "big")

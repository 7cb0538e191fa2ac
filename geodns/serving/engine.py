"""The full path: a parsed query + who asked + a snapshot -> the reply and what was decided.

Pure apart from the snapshot's caches: no sockets, no clock, no logging. The resolution of a
(name, type) is prepared once per zone set (geodns.dns.resolve) and a repeat only patches the
header; a dynamic answer asks the snapshot's answer map of its record's shape for the client's
address (one bisection: the answer and the widest true ECS scope), or, for records decided per
network and while no place index exists, places the client and evaluates the record.

Everything the reply cache and the templates (geodns.serving.answer_path) serve was made here;
they only reuse its bytes.
"""

from __future__ import annotations

from struct import pack
from typing import NamedTuple

from geodns.dns.resolve import (
    RCODE_FORMERR,
    RCODE_NOERROR,
    RCODE_NOTIMP,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    Prepared,
    Sections,
)
from geodns.dns.wire import Query
from geodns.dns.zone import TYPE_AXFR, TYPE_IXFR
from geodns.geo.dynamic import Decision, DynamicRecord, evaluate
from geodns.serving.client import Client
from geodns.serving.snapshot import Snapshot

CLASS_IN = 1
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
ECHO_FLAGS = 0x7900  # opcode and RD are echoed
FLAG_CD = 0x0010
BADVERS = 16
BADCOOKIE = 23
NO_ANSWER = -1


class Outcome(NamedTuple):
    """What the engine decided for one query, for metrics, the query log and rate limiting.

    A NamedTuple because one is made per dynamic answer: it must cost next to nothing.
    """

    rcode: int
    zone: str | None
    site: str | None = None
    rule: str | None = None
    scope: int | None = None
    located_by: str | None = None
    truncated: bool = False
    # the same query bytes always get the same reply under this snapshot: not located by the
    # resolver's address, not chosen by weight with the query ID
    cacheable: bool = False
    answer: int = NO_ANSWER  # the answer map's answer id (templates key replies by it)
    rrl: bytes = b""  # what response rate limiting counts this response as (see rrl.py)


def respond(
    query: Query, client: Client, snapshot: Snapshot, tcp: bool, cookie: bytes = b""
) -> tuple[bytes, Outcome]:
    """The reply to a parsed query from `client`, over UDP or TCP. `cookie` is the COOKIE
    option to send back (geodns.serving.cookies), empty when none."""
    if query.opcode != 0:
        # header only: the sections of an opcode we do not implement (UPDATE's zone section,
        # NOTIFY's SOA) have their own rules, so echoing them back could itself be malformed
        return bare(query, RCODE_NOTIMP, snapshot, cookie, question=False), _ERROR_OUTCOMES[
            RCODE_NOTIMP
        ]
    if query.edns and query.version > 0:
        return bare(query, BADVERS, snapshot, cookie), _ERROR_OUTCOMES[BADVERS]
    qtype = query.qtype
    if query.qclass != CLASS_IN or qtype in (TYPE_AXFR, TYPE_IXFR):
        return bare(query, RCODE_REFUSED, snapshot, cookie), _ERROR_OUTCOMES[RCODE_REFUSED]
    prepared = snapshot.prepare(query.key, qtype, query.do)
    scope = 0
    decision: Decision | None = None
    located_by: str | None = None
    answer = NO_ANSWER
    record = prepared.dynamic
    if record is None:
        sections = prepared.full
    else:
        decision, scope, located_by, answer = decide(record, query, client, snapshot)
        if decision.servfail:
            return bare(query, RCODE_SERVFAIL, snapshot, cookie), Outcome(
                RCODE_SERVFAIL, prepared.zone, rrl=RRL_ERROR
            )
        sections = prepared.variant(decision.values)
        if query.ecs is None or not query.ecs[1]:
            scope = 0
    if query.edns:
        udp_limit = min(max(query.udp_size, 512), snapshot.max_udp_size)
        opt = opt_record(query, 0, scope, snapshot.max_udp_size, cookie)
    else:
        udp_limit = 512
        opt = b""
    limit = 65535 if tcp else udp_limit
    flags = FLAG_QR | (query.flags & (ECHO_FLAGS | FLAG_CD)) | prepared.rcode
    if prepared.authoritative:
        flags |= FLAG_AA
    size = 12 + len(query.question) + len(sections.body) + len(opt)
    truncated = False
    if size > limit:
        reduced = prepared.reduced if record is None else sections
        if (
            not prepared.referral
            and 12 + len(query.question) + len(reduced.body) + len(opt) <= limit
        ):
            sections = reduced
        else:
            sections = _EMPTY_SECTIONS
            flags |= FLAG_TC
            truncated = True
    header = pack(
        ">HHHHHH",
        query.id,
        flags,
        1,
        sections.ancount,
        sections.nscount,
        sections.arcount + (1 if opt else 0),
    )
    response = header + query.question + sections.body + opt
    if decision is None:
        return response, _static_outcome(prepared, truncated, query)
    return response, Outcome(
        prepared.rcode,
        prepared.zone,
        site=decision.site,
        rule=decision.rule,
        scope=scope if query.ecs is not None else None,
        located_by=located_by,
        truncated=truncated,
        cacheable=located_by == "ecs" and not decision.varies,
        answer=answer,
        rrl=_rrl_key(prepared, query),
    )


def decide(
    record: DynamicRecord, query: Query, client: Client, snapshot: Snapshot
) -> tuple[Decision, int, str, int]:
    """(decision, ECS scope, how the client was located, answer id or NO_ANSWER)."""
    ecs = query.ecs
    if ecs is not None and ecs[1] > 0:
        family_code, _, address = ecs
        if family_code == 1:
            family, value = 4, int.from_bytes(address.ljust(4, b"\x00"))
        else:
            family, value = 6, int.from_bytes(address.ljust(16, b"\x00"))
        located_by = "ecs"
    else:
        family, value, located_by = client.family, client.value, "resolver"
    down = snapshot.down
    answer_map = snapshot.answer_map(record)
    if answer_map is not None:
        answer, scope = answer_map.lookup(family, value)
        decision = answer_map.decision(record, answer)
        if decision.varies:  # chosen by weight per query, among what this place gets
            placement = answer_map.placement(answer, family, value, scope)
            decision = evaluate(record, placement, down, query.id)
        return decision, scope, located_by, answer
    geo = snapshot.geo
    if geo is None:
        decision = evaluate(record, None, down, query.id)
        return decision, decision.scope, located_by, NO_ANSWER
    placement = geo.locate(family, value)
    if record.per_network or placement.place is None:
        decision = evaluate(record, placement, down, query.id)
        return decision, decision.scope, located_by, NO_ANSWER
    key = (record, placement.place)
    decision_for_place = snapshot.place_decisions.get(key)
    if decision_for_place is None:
        decision_for_place = evaluate(record, placement, down, 0)
        snapshot.place_decisions.put(key, decision_for_place, 64)
    decision = decision_for_place
    if decision.varies:
        decision = evaluate(record, placement, down, query.id)
    # a decision for a place holds for every network placed there; its scope is this block's
    return decision, placement.prefix if decision.scope else 0, located_by, NO_ANSWER


# -- response rate limiting keys (what a response counts as: geodns.serving.rrl) ----------------

RRL_ERROR = b"e"  # errors: counted per client network only


def _rrl_key(prepared: Prepared, query: Query) -> bytes:
    """Positive answers count per name and type; negative answers and referrals per zone
    (so random names under one zone share one budget, as in BIND's and Knot's RRL)."""
    if prepared.rcode == RCODE_NOERROR and (prepared.full.ancount or prepared.dynamic):
        return b"p" + query.key + query.qtype.to_bytes(2, "big")
    zone = (prepared.zone or "").encode()
    if prepared.rcode == RCODE_NXDOMAIN:
        return b"n" + zone
    if prepared.referral:
        return b"r" + zone
    if prepared.rcode == RCODE_NOERROR:
        return b"d" + zone  # NODATA
    return RRL_ERROR


_EMPTY_SECTIONS = Sections(b"", 0, 0, 0)
_STATIC_OUTCOMES: dict[tuple[int, str | None, bool, bytes], Outcome] = {}
STATIC_OUTCOME_LIMIT = 65_536  # one per (rcode, zone, truncated, RRL key): names x types at most


def _static_outcome(prepared: Prepared, truncated: bool, query: Query) -> Outcome:
    rrl = _rrl_key(prepared, query)
    key = (prepared.rcode, prepared.zone, truncated, rrl)
    outcome = _STATIC_OUTCOMES.get(key)
    if outcome is None:
        outcome = Outcome(
            prepared.rcode, prepared.zone, truncated=truncated, cacheable=True, rrl=rrl
        )
        if len(_STATIC_OUTCOMES) < STATIC_OUTCOME_LIMIT:
            _STATIC_OUTCOMES[key] = outcome
    return outcome


_ERROR_OUTCOMES = {
    rcode: Outcome(rcode, None, rrl=RRL_ERROR)
    for rcode in (RCODE_NOTIMP, BADVERS, RCODE_REFUSED, RCODE_SERVFAIL, RCODE_FORMERR, BADCOOKIE)
}


def opt_record(
    query: Query, extended_rcode: int, scope: int, udp_size: int, cookie: bytes
) -> bytes:
    """Our OPT record: our UDP size, DO copied (RFC 3225), the COOKIE and ECS (with its scope)
    options. ECS is last, so a reply ends with the client's address (templates rely on it)."""
    ttl = (extended_rcode << 24) | (0x8000 if query.do else 0)
    options = pack(">HH", 10, len(cookie)) + cookie if cookie else b""
    ecs = query.ecs
    if ecs is not None:
        family, source, address = ecs
        options += pack(">HHHBB", 8, 4 + len(address), family, source, scope) + address
    return pack(">BHHIH", 0, 41, udp_size, ttl, len(options)) + options


def bare(
    query: Query, rcode: int, snapshot: Snapshot, cookie: bytes = b"", question: bool = True
) -> bytes:
    """A reply with no records (NOTIMP, REFUSED, BADVERS, BADCOOKIE, SERVFAIL): the question
    echoed unless told not to, and an OPT when the query had one (RFC 6891 section 7)."""
    flags = FLAG_QR | (query.flags & (ECHO_FLAGS | FLAG_CD)) | (rcode & 0xF)
    opt = opt_record(query, rcode >> 4, 0, snapshot.max_udp_size, cookie) if query.edns else b""
    header = pack(">HHHHHH", query.id, flags, int(question), 0, 0, 1 if opt else 0)
    return header + (query.question if question else b"") + opt


def servfail(query: Query, snapshot: Snapshot) -> bytes:
    return bare(query, RCODE_SERVFAIL, snapshot)


def formerr(query_id: int, flags: int) -> bytes:
    """FORMERR for a query we could not parse: ID, opcode and RD echoed, nothing else."""
    return pack(">HHHHHH", query_id, FLAG_QR | (flags & ECHO_FLAGS) | RCODE_FORMERR, 0, 0, 0, 0)


def truncated_copy(reply: bytes, query: Query | None = None) -> bytes:
    """The reply cut to its header and question with TC set (RRL's slip answer): the client
    asks again over TCP, where it is never limited."""
    flags = (reply[2] << 8 | reply[3]) | FLAG_TC
    qdcount = reply[4] << 8 | reply[5]
    end = 12
    if qdcount and query is not None:
        end += len(query.question)
    elif qdcount:
        end = _question_end(reply)
    return pack(">HHHHHH", reply[0] << 8 | reply[1], flags, qdcount, 0, 0, 0) + reply[12:end]


def _question_end(reply: bytes) -> int:
    position = 12
    while reply[position]:
        position += 1 + reply[position]
    return position + 5


__all__ = ["Outcome", "respond", "decide", "formerr", "servfail", "bare", "truncated_copy"]

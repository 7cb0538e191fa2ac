"""Replies to queries that differ from one answered before only in their ECS address.

A resolver behind many client networks asks the same question again and again, each time with
another Client Subnet address at the very end of the packet. Such a query is byte for byte the
one answered before except for its ID and that address; so the reply to the first one, cut just
before its ECS scope byte, is kept as a template per answer id (geodns.geo.answers), and the
next one costs a dictionary look-up, the bisection of the record's answer map, and a join: the
query's ID, the template, the scope, the query's address.

Only what is provably the same is reused, so a template answers exactly what the full path
would (tests/test_fast_paths.py feeds both the same mutated packets):
- the template is found by the query's bytes between its ID and its address AND the address
  has the template's length: the bytes before it then hold the same header counts, question,
  OPT length and ECS option length, so the packet parses exactly as the learned one did; an
  ECS option cut short or followed by junk has another length and misses;
- the source prefix is a whole number of octets, so no address bit can be out of bounds, and
  the scope byte (part of the key) was 0, as RFC 7871 requires;
- the learned reply carried no cookie and was decided by an answer map (or
  is static): not per network, not weighted per query ID.
A new snapshot (reload, health change, drain) starts with no templates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from geodns.common.caching import BoundedCache

if TYPE_CHECKING:
    from geodns.dns.wire import Query
    from geodns.geo.answers import AnswerMap
    from geodns.serving.engine import Outcome

SCOPE_BYTES = tuple(bytes((n,)) for n in range(129))
STATIC = -2  # the answer id of a reply that does not depend on the client's address


@dataclass(slots=True, eq=False)
class Template:
    """One question asked with ECS, as learned from fully parsed queries. (Slots, not a
    NamedTuple: a template hit reads five of its fields, and a slot is read at half the cost
    of a NamedTuple's field.)"""

    length: int  # octets of the ECS address
    shift: int  # bits to shift the address's integer value by to make a full address
    answer_map: AnswerMap | None  # None: a static answer
    lookup: Callable[[int], tuple[int, int]] | None  # the answer map's, for this family
    qname: bytes  # what was asked, for observers: the question's name as sent, its type,
    qtype: int  # and the ECS family code and source prefix of every query it answers
    ecs_family: int
    source: int
    features: int  # what its queries carry (EDNS, DO, ECS): the same bytes, so the same bits
    # its answers by answer id: the first inline, the others in a dict made for the second (a
    # name mostly gets one answer per snapshot; an empty dict and its entry are 224 bytes, 2.2
    # MB for a zone of 10,000 nearest-PoP names)
    first_id: int
    first: TemplateAnswer
    more: dict[int, TemplateAnswer] | None = None

    def answer_for(self, answer: int) -> TemplateAnswer | None:
        if answer == self.first_id:
            return self.first
        more = self.more
        return more.get(answer) if more is not None else None

    def answers(self) -> list[TemplateAnswer]:
        return [self.first, *(self.more.values() if self.more is not None else ())]


@dataclass(slots=True, eq=False)
class TemplateAnswer:
    """One answer of a template: what a query that gets it is sent and counted as."""

    head: bytes  # the reply after the ID, up to the scope byte
    outcome: Outcome  # what it is counted as (scope: per query)
    slot: int  # its counter slot (geodns.observe.metrics), or -1


TEMPLATE_BYTES = 140  # a Template with its first answer inline, beyond the key (traced)
MORE_BYTES = 230  # the dict of its other answers, once it has two
ANSWER_BYTES = 110  # a TemplateAnswer and its head's bytes object, beyond the head's data

TemplateHit = tuple[bytes, Template, TemplateAnswer, int, bytes]
"""(the reply, the template, its answer, the scope, the query's ECS address)"""


class Templates:
    """Per snapshot: templates by the query's bytes between its ID and its ECS address."""

    def __init__(self) -> None:
        self.templates: BoundedCache[bytes, Template] = BoundedCache("templates")
        self.lengths: tuple[int, ...] = ()  # ECS address lengths seen, to cut the key

    def answer(self, data: bytes) -> TemplateHit | None:
        """The reply from a template (and what it was), or None to take the full path."""
        templates = self.templates
        for length in self.lengths:
            template = templates.get(data[2:-length])
            if template is not None and template.length == length:
                break
        else:
            return None
        address = data[-length:]
        lookup = template.lookup
        if lookup is None:
            answer, scope = STATIC, 0
        else:
            answer, scope = lookup(int.from_bytes(address) << template.shift)
        found = template.first
        if answer != template.first_id:  # (Template.answer_for, inlined: a call per hit)
            more = template.more
            other = more.get(answer) if more is not None else None
            if other is None:
                return None
            found = other
        reply = b"".join((data[:2], found.head, SCOPE_BYTES[scope], address))
        return reply, template, found, scope, address

    def learn(
        self,
        data: bytes,
        query: Query,
        reply: bytes,
        outcome: Outcome,
        answer_map: AnswerMap | None,
        slot: int,
    ) -> None:
        """Keep a fully answered query's reply as a template, when it is safe to reuse (the
        caller checked: ECS last in the query, no cookie, not truncated, cacheable)."""
        assert query.ecs is not None
        family_code, source, address = query.ecs
        if source == 0 or source % 8 or not reply.endswith(address):
            return
        length = len(address)
        if answer_map is None:
            answer = STATIC
        elif outcome.answer < 0:
            return
        else:
            answer = outcome.answer
        key = data[2:-length]
        learned = TemplateAnswer(reply[2 : -(length + 1)], outcome, slot)
        template = self.templates.get(key)
        if template is None:
            bits = 32 if family_code == 1 else 128
            lookup = None
            if answer_map is not None:
                lookup = answer_map.runs4.lookup if family_code == 1 else answer_map.lookup6
            template = Template(
                length,
                bits - 8 * length,
                answer_map,
                lookup,
                query.qname,
                query.qtype,
                family_code,
                source,
                query.features,
                answer,
                learned,
            )
            self.templates.put(key, template, _size(key, template))
            if length not in self.lengths:
                self.lengths = (*self.lengths, length)
        elif template.answer_map is not answer_map:
            return
        elif template.answer_for(answer) is None:
            if template.more is None:
                template.more = {}
            template.more[answer] = learned
            self.templates.put(key, template, _size(key, template))


def _size(key: bytes, template: Template) -> int:
    """About the bytes a template keeps (its key, the Template, its answers: as traced), for
    its cache's byte bound."""
    heads = sum(len(known.head) + ANSWER_BYTES for known in template.answers())
    more = MORE_BYTES if template.more is not None else 0
    return 2 * len(key) + TEMPLATE_BYTES + more + heads

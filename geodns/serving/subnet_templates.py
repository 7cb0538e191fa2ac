"""Answers for queries that differ from one already answered only in their ECS address.

A resolver behind many client networks sends the same question again and again, each time with
another Client Subnet address at the very end of the packet. Under one snapshot, such a query
parses exactly like the one before it except for that address, and the decision depends only
on where the address is placed (the per-place decision cache in geodns.geo.dynamic relies on the
same fact). So the first such query goes through the parser and the engine, and its reply is
kept as a template: everything up to the ECS scope byte, per place. A later query with the same
bytes before its address costs a dictionary look-up, the walk of the database tree, and a join:
the query ID, the template, the scope of the client's database network, and the address.
A place no query came from yet is decided once (the per-place decision cache) and takes the
reply kept for any place that got the same answer, so a cold workload meeting thousands of
places needs one full answer per distinct answer, not per place.

Only what is provably the same is reused: the ECS option must end the packet, its source prefix
must be a whole number of octets (so no address bits need checking), the reply must not have
been truncated, and the record must decide by place alone (no `subnets` rules, no `sticky`, no
weighted pick). A new snapshot (reload, health change, drain) starts with no templates.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from geodns.common.caching import make_room
from geodns.geo.locator import Placement

TEMPLATE_LIMIT = 4_096  # distinct questions (name, type, flags, EDNS) asked with ECS
PLACES_PER_TEMPLATE = 65_536
RECORDS_PER_TEMPLATE = 131_072  # database records, each with its place's reply parts
SCOPE_BYTES = tuple(bytes((n,)) for n in range(129))
STATIC = object()  # the place key of an answer that does not depend on the client's place


class Template(NamedTuple):
    """One question asked with ECS, as learned from its first fully parsed query."""

    family: int  # 4 or 6
    source: int
    shift: int  # bits to shift the address's integer value by to make a full address
    qname: bytes
    qtype: int
    static: bool  # the answer does not depend on the client's place
    replies: dict[Any, tuple[bytes, bool, dict[int, Any], Any]]  # place -> reply parts
    record: Any  # the DynamicRecord that decides the answer (None when static)
    by_answer: dict[Any, tuple[bytes, bool, dict[int, Any], Any]]  # answer -> reply parts
    # IPv4 database record -> its place's reply parts: a client lands in a record, so the
    # place need not be looked up again once its record has answered
    by_record: dict[int, tuple[bytes, bool, dict[int, Any], Any]]
    features: int  # what its queries carry (EDNS, DO, ECS): the same bytes, so the same bits


class SubnetTemplates:
    """Per snapshot: templates by the query's bytes between its ID and its ECS address."""

    def __init__(self) -> None:
        self.templates: dict[bytes, Template] = {}
        self.lengths: tuple[int, ...] = ()  # ECS address lengths seen, to cut the key

    def answer(
        self, data: bytes, geo: Any, down: frozenset[str]
    ) -> tuple[bytes, Template, tuple[int, int, bytes], Any] | None:
        """(reply, template, ECS as parsed, outcome) from a template, or None to take the full
        path (no template for these bytes, or no reply yet with the answer for the client's
        place under the health view `down`)."""
        templates = self.templates
        template = None
        length = 0
        for length in self.lengths:
            template = templates.get(data[2:-length])
            if template is not None:
                break
        if template is None:
            return None
        address = data[-length:]
        if template.static:
            parts = template.replies.get(STATIC)
            if parts is None:
                return None
            head, _, _, outcome = parts
            scope = 0
        else:
            value = int.from_bytes(address) << template.shift
            if template.family == 4:
                record, prefix = geo.tree.lookup(4, value)
                parts = template.by_record.get(record)
                if parts is None:
                    place = geo.place_of_record(record, 4, value)
                    parts = template.replies.get(place)
                    if parts is None:
                        placement = Placement(place, 4, value, prefix)
                        parts = self._first_in_place(template, placement, down)
                        if parts is None:
                            return None
                    make_room(template.by_record, RECORDS_PER_TEMPLATE)
                    template.by_record[record] = parts
            else:  # through locate(), which places IPv4-mapped addresses as IPv4
                placement = geo.locate(6, value)
                prefix = placement.prefix
                parts = template.replies.get(placement.place)
                if parts is None:
                    parts = self._first_in_place(template, placement, down)
                    if parts is None:
                        return None
            head, scoped, outcomes, base = parts
            scope = prefix if scoped else 0
            outcome = outcomes.get(scope)
            if outcome is None:
                outcome = outcomes[scope] = base._replace(scope=scope)
        ecs = (1 if template.family == 4 else 2, template.source, address)
        return data[:2] + head + SCOPE_BYTES[scope] + address, template, ecs, outcome

    def _first_in_place(
        self, template: Template, placement: Placement, down: frozenset[str]
    ) -> tuple[bytes, bool, dict[int, Any], Any] | None:
        """The reply parts for a place no query of this template came from yet: those of a
        place with the same answer, if one was seen. A decision taken by weight per query, or
        a network of prefix 0, leaves it to the full path."""
        if placement.prefix == 0:
            return None
        decision = template.record.placed(placement, down)
        if decision.varies or decision.servfail:
            return None
        parts = template.by_answer.get(_answer_key(decision))
        if parts is not None:
            replies = template.replies
            make_room(replies, PLACES_PER_TEMPLATE)
            replies[placement.place] = parts
        return parts

    def learn(
        self,
        data: bytes,
        query: Any,
        response: bytes,
        outcome: Any,
        prepared: Any,
        geo: Any,
        down: frozenset[str],
    ) -> None:
        """Keep the reply to a fully answered query as a template, when it is safe to reuse."""
        ecs = query.ecs
        if ecs is None or not query.ecs_at_end or outcome.truncated or not outcome.cacheable:
            return
        family_code, source, address = ecs
        if source == 0 or source % 8:
            return
        dynamic = prepared.dynamic
        if dynamic is not None and (
            geo is None
            or outcome.located_by != "ecs"
            or dynamic.sticky_margin_km is not None
            or dynamic.has_subnets
        ):
            return
        length = len(address)
        family, bits = (4, 32) if family_code == 1 else (6, 128)
        key = data[2:-length]
        template = self.templates.get(key)
        if template is None:
            make_room(self.templates, TEMPLATE_LIMIT)
            template = self.templates[key] = Template(
                family,
                source,
                bits - 8 * length,
                query.qname,
                query.qtype,
                dynamic is None,
                {},
                dynamic,
                {},
                {},
                query.features,
            )
            if length not in self.lengths:
                self.lengths = (*self.lengths, length)
        if dynamic is None:
            place, scoped = STATIC, False
        else:
            placement = geo.locate(family, int.from_bytes(address) << (bits - 8 * length))
            place = placement.place
            if outcome.scope == placement.prefix != 0:
                scoped = True
            elif outcome.scope == 0 != placement.prefix:
                scoped = False
            else:  # a network of prefix 0: whether the answer is scoped cannot be told
                return
        replies = template.replies
        if place not in replies:
            make_room(replies, PLACES_PER_TEMPLATE)
            head = response[2 : -(length + 1)]
            parts = replies[place] = (head, scoped, {outcome.scope: outcome}, outcome)
            if dynamic is not None:
                decision = dynamic.placed(placement, down)
                if bool(decision.scope) == scoped and not decision.varies:
                    by_answer = template.by_answer
                    make_room(by_answer, PLACES_PER_TEMPLATE)
                    by_answer.setdefault(_answer_key(decision), parts)


def _answer_key(decision: Any) -> tuple[Any, ...]:
    """What a reply's bytes before the ECS scope depend on: the answer, not the place."""
    return (decision.addresses, decision.site, decision.rule, bool(decision.scope))

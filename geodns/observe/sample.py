"""A small, bounded sample of the networks that asked recently, for the console and `whatif`.

The console shows where users of each country are sent, and the what-if panel which of them
would move if a site went away; both run the server's own decision code over the networks in
this sample. Filling it must cost the query path next to nothing: the metrics observer
(geodns.observe.counters.QueryCounters.observe) counts down and, about once every `every`
queries it sees (the gap drawn at random), writes one tuple into a ring of fixed size,
overwriting the oldest. Queries answered from
the reply cache do not reach the observer, so the sample holds distinct networks and questions
more than it weighs busy ones: it answers "which networks", which is what a what-if asks.

An entry is (network, qname, qtype, time): the network is the ECS option (family, source
prefix, address bytes) when the query had one with a non-zero prefix, else the resolver's
address as text, which is what the decision code locates (geodns.daemon.whatif.locate).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import Any

SAMPLE_SIZE = 2048
SAMPLE_EVERY = 8
GAPS = 251  # a prime: the cycle of gaps does not line up with a rotation of resolvers

Entry = tuple[Any, bytes, int, float]


class NetworkSample:
    """A ring of the last `size` sampled (network, qname, qtype, time) entries."""

    __slots__ = ("ring", "size", "every", "next", "added", "clock", "gaps", "turn")

    def __init__(
        self,
        size: int = SAMPLE_SIZE,
        every: int = SAMPLE_EVERY,
        clock: Callable[[], float] = time.time,
        draw: Callable[[int, int], int] = random.randrange,
    ) -> None:
        self.ring: list[Entry | None] = [None] * size
        self.size = size
        self.every = every
        self.next = 0
        self.added = 0  # entries ever added: a consumer can tell what is new since it last looked
        self.clock = clock
        # gaps drawn once, used in turn: a random stride without a draw per kept query
        self.gaps = [draw(1, 2 * every) if every > 1 else 1 for _ in range(GAPS)]
        self.turn = 0

    def gap(self) -> int:
        """Queries until the next one kept: 1 to 2 x every - 1, at random, so that traffic
        arriving in a fixed rotation is not seen through a fixed stride (every 8th query of a
        rotation of 8 resolvers would always be the same resolver's)."""
        self.turn = (self.turn + 1) % GAPS
        return self.gaps[self.turn]

    def take(self, asked: Any, client: str) -> int:
        """Keep one query (anything with qname, qtype and ecs; the client's address); the gap
        to the next one to keep."""
        ecs = asked.ecs
        at = self.next
        self.ring[at] = (
            ecs if ecs is not None and ecs[1] else client,
            asked.qname,
            asked.qtype,
            self.clock(),
        )
        self.next = (at + 1) % self.size
        self.added += 1
        return self.gap()

    def add(self, entries: Iterable[Entry]) -> None:
        """Keep entries taken elsewhere (a worker process's report), oldest first."""
        ring, size = self.ring, self.size
        for entry in entries:
            ring[self.next] = entry
            self.next = (self.next + 1) % size
            self.added += 1

    def entries(self, since: float = 0.0) -> list[Entry]:
        """The kept entries not older than `since`, oldest first."""
        ring = self.ring
        ordered = ring[self.next :] + ring[: self.next]
        return [entry for entry in ordered if entry is not None and entry[3] >= since]

    def newer_than(self, added: int) -> list[Entry]:
        """The entries added after `self.added` was `added` (at most the whole ring)."""
        fresh = min(self.added - added, self.size)
        if fresh <= 0:
            return []
        ring = self.ring
        ordered = ring[self.next :] + ring[: self.next]
        return [entry for entry in ordered[-fresh:] if entry is not None]

"""Every cache of geodns: one table (CACHES) and one bounded dict type for all of them.

A nameserver on the internet meets millions of distinct names, subnets and clients; a cache
without a bound is a memory leak with extra steps. So every cache is a `BoundedCache` made
from a `CacheSpec` of the table below: a bound in entries and in bytes (each insert says how
big its entry is), a lifetime, and what it saves. docs/architecture.md prints the table, and
tests/test_caches.py holds the two together and fills each cache past its bound.

The caches are dicts (the fastest lookup CPython has) kept in insertion order; `get` is dict's
own. Emptying a full cache at once would free all its entries in one go, which for 100,000
entries stalls the event loop for tens of milliseconds; making room by dropping the oldest
sixty-fourth spreads that cost thinly over the inserts.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Generic, TypeVar

EVICT_SHARE = 64
ENTRY_OVERHEAD = 200  # bytes a dict slot, its key and value objects cost beyond their data
SIZE_UNIT = 64  # an entry's size is kept in these units, rounded up: a count of up to 256 is
# one of CPython's shared small ints, where a size in bytes was a new int of 32 bytes per entry
# (0.9 MB for the caches of a zone of 10,000 names, 8 MB for a full rate limiter)

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """One line of the table of caches."""

    name: str
    key: str
    holds: str
    max_entries: int
    max_bytes: int
    lifetime: str
    saves: str


MB = 1 << 20

CACHES: dict[str, CacheSpec] = {
    spec.name: spec
    for spec in (
        CacheSpec(
            "prepared",
            "(lower-case query name, type; + 65536 for DO=1 to a signed zone)",
            "the answer's encoded sections (geodns.dns.resolve.Prepared), or their signed twin",
            100_000,
            64 * MB,
            "a zone set (kept across health changes, new on reload and on signing again)",
            "the resolution and dnslib encoding of a name (100-300 us)",
        ),
        CacheSpec(
            "replies",
            "the UDP query's bytes after its ID",
            "the reply's bytes after the ID, with what metrics and RRL need",
            65_536,
            48 * MB,
            "a snapshot (new on every health change or reload)",
            "parsing and answering a repeat query (about 5 us of 7)",
        ),
        CacheSpec(
            "templates",
            "the UDP query's bytes between its ID and its ECS address",
            "per answer id, the reply's bytes up to the ECS scope",
            32_768,  # one per question (name, type, EDNS layout): a big zone has tens of thousands
            32 * MB,
            "a snapshot",
            "parsing and answering a question asked from a new client subnet",
        ),
        CacheSpec(
            "place_decisions",
            "(dynamic record, place)",
            "the decision for a place, on the slow path (no answer map)",
            100_000,
            32 * MB,
            "a snapshot",
            "evaluate() per query for records without an answer map",
        ),
        CacheSpec(
            "clients",
            "a UDP peer's address (bytes; IPv4's as one native 32-bit word)",
            "the peer as text, family, integer and network",
            65_536,
            24 * MB,
            "a socket",
            "formatting a peer address per datagram",
        ),
        CacheSpec(
            "direct_places",
            "(family, address)",
            "a Placement looked up in the database itself",
            65_536,
            24 * MB,
            "the seconds before a new database's place index is built",
            "a record decode per query while the index builds",
        ),
        CacheSpec(
            "rrl",
            "(client network, response kind)",
            "a token bucket: balance, last refill, limited responses",
            262_144,
            96 * MB,
            "until pushed out by newer accounts (a flood of new networks recycles it)",
            "nothing: it is the rate limiter's memory of who was answered",
        ),
        CacheSpec(
            "cookies",
            "(client address, client cookie, server cookie)",
            "that the server cookie was valid, and until when",
            65_536,
            16 * MB,
            "a process; an entry lives until its cookie ages",
            "a SipHash-2-4 per query with a cookie (about 10 us)",
        ),
    )
}


class BoundedCache(dict[K, V], Generic[K, V]):
    """A dict with a bound in entries and bytes, from its CacheSpec. Read it with `get` (the
    dict's own, so as fast as a plain dict); write with `put`, which makes room first."""

    def __init__(self, spec: CacheSpec | str) -> None:
        super().__init__()
        self.spec = CACHES[spec] if isinstance(spec, str) else spec
        self.max_entries = self.spec.max_entries
        self.max_bytes = self.spec.max_bytes
        self.bytes = 0
        self.sizes: dict[K, int] = {}  # in SIZE_UNITs
        self.evictions = 0

    def put(self, key: K, value: V, size: int) -> None:
        """Insert (or replace) an entry of about `size` bytes of data."""
        units = (size + ENTRY_OVERHEAD + SIZE_UNIT - 1) // SIZE_UNIT
        size = units * SIZE_UNIT
        old = self.sizes.get(key)
        if old is not None:
            self.bytes -= old * SIZE_UNIT
        elif len(self) >= self.max_entries or self.bytes + size > self.max_bytes:
            self._make_room(size)
        self[key] = value
        self.sizes[key] = units
        self.bytes += size

    def _make_room(self, size: int) -> None:
        share = max(1, self.max_entries // EVICT_SHARE)
        while self and (len(self) >= self.max_entries or self.bytes + size > self.max_bytes):
            for key in list(islice(self, share)):
                del self[key]
                self.bytes -= self.sizes.pop(key) * SIZE_UNIT
                self.evictions += 1

    def discard(self, key: K) -> None:
        if key in self.sizes:
            del self[key]
            self.bytes -= self.sizes.pop(key) * SIZE_UNIT

    def clear(self) -> None:
        super().clear()
        self.sizes.clear()
        self.bytes = 0

    def empty_gradually(self) -> None:
        """Remove every entry, one at a time: run in a thread, this lets another thread take
        the GIL between entries, where clear() (or dropping the cache) frees them all at once
        (tens of milliseconds for tens of thousands of replies)."""
        sizes = self.sizes
        while True:
            try:
                key, _ = self.popitem()
            except KeyError:
                break
            sizes.pop(key, None)
        self.clear()


_heap_frozen = False  # freeze_heap was called: this process keeps what lives on frozen


def freeze_heap() -> None:
    """Move every object the cyclic collector tracks out of its sight for good (gc.freeze: an
    object is still freed by reference counting when dropped), and from now on what a build
    under collector_paused makes too."""
    global _heap_frozen
    gc.freeze()
    _heap_frozen = True


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while building something big: every object a zone load or
    an index build makes lives on, so the collector's repeated scans of them are pure cost
    (a third of a 10,000-record zone's load). Reference counting still frees garbage.

    What a build that succeeded made is then moved out of the youngest generation: left there,
    the first allocation after the collector is on again scanned all of it at once (16-26 ms
    after a 10,000-name zone's first load). A process that keeps its heap frozen (the server:
    freeze_heap) has it frozen as well; any other has it handed to the oldest generation
    (gc.freeze then gc.unfreeze, two list splices). Never both in the server: the unfreeze
    would hand its whole frozen heap back, and the next full collection, due at any time, would
    scan all of it while holding the interpreter. (Which process this is, is told by
    freeze_heap: gc.get_freeze_count() walks the whole frozen heap, 10-20 ms a reload.)"""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
        if not _heap_frozen:
            gc.unfreeze()
    finally:
        if was_enabled:
            gc.enable()

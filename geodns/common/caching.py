"""Bounded caches for the query path that never pause it.

The caches are plain dicts (the fastest lookup CPython has) kept in insertion order. Emptying a
full one at once frees all its entries in one go, which for 100,000 entries stalls the event
loop for tens of milliseconds: a p99 spike for every query waiting behind it. Making room by
dropping the oldest sixty-fourth instead spreads that cost thinly over the inserts.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

EVICT_SHARE = 64


def make_room(cache: dict[Any, Any], limit: int) -> None:
    """If `cache` holds `limit` entries or more, drop its oldest entries (1/64 of the limit)."""
    if len(cache) >= limit:
        for key in list(islice(cache, max(1, limit // EVICT_SHARE))):
            del cache[key]

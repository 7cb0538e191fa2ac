"""The guards of the answer path, with time passed in: DNS cookies (RFC 7873, RFC 9018's test
vector), response rate limiting, rate-limited error logs, and the bounds of every cache.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.edns
import dns.message
from inprocess import ask, client, state_for

from geodns.common.caching import CACHES, ENTRY_OVERHEAD, SIZE_UNIT, BoundedCache
from geodns.common.lograte import BURST, RateLimitedLog
from geodns.config.server import RrlSettings
from geodns.serving.cookies import LIFETIME, REFRESH_AFTER, CookieJar, siphash24
from geodns.serving.rrl import DROP, SEND, SLIP, ResponseRateLimiter

EXAMPLE = Path(__file__).resolve().parents[1] / "geodns" / "data" / "example-config.yaml"


def test_siphash_matches_the_reference_vector() -> None:
    """The SipHash paper's vector: key 00..0f, message 00..0e -> a129ca6149be45e5."""
    key = bytes(range(16))
    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    assert siphash24(k0, k1, bytes(range(15))) == bytes.fromhex("e545be4961ca29a1")


def test_server_cookie_matches_rfc_9018_appendix_a1() -> None:
    jar = CookieJar(bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf"))
    client = bytes.fromhex("2464c4abcf10c957")
    address = ipaddress.ip_address("198.51.100.100").packed
    cookie = jar.server_cookie(client, address, 1559731985)
    assert cookie.hex() == "010000005cf79f111f8130c3eee29480"


def test_cookie_lifecycle() -> None:
    jar = CookieJar(bytes(16))
    client, address, now = bytes(range(8)), bytes([192, 0, 2, 7]), 1_700_000_000
    first = jar.check(client, address, now)
    assert not first.valid and first.reply[:8] == client and len(first.reply) == 24
    again = jar.check(first.reply, address, now + 60)
    assert again.valid and again.reply == first.reply  # fresh: echoed as it is
    refreshed = jar.check(first.reply, address, now + REFRESH_AFTER + 1)
    assert refreshed.valid and refreshed.reply != first.reply  # older than 30 min: renewed
    assert not jar.check(first.reply, address, now + LIFETIME + 1).valid  # older than an hour
    assert not jar.check(first.reply, bytes([192, 0, 2, 8]), now + 60).valid  # another address
    other = CookieJar(bytes(16))  # a fleet member with the same secret accepts it
    assert other.check(first.reply, address, now + 60).valid


def test_rate_limiter_allows_the_rate_then_slips_and_drops() -> None:
    limiter = ResponseRateLimiter(RrlSettings(rate=10, window=5, slip=2))
    network, kind = b"\x04\xc0\x00\x02", b"pwww"
    verdicts = [limiter.check(network, kind, 100.0) for _ in range(30)]
    assert verdicts[:10] == [SEND] * 10
    assert verdicts[10:] == [DROP, SLIP] * 10
    assert limiter.check(network, b"pother", 100.0) == SEND  # another response kind: its own
    assert limiter.check(b"\x04\xc0\x00\x03", kind, 100.0) == SEND  # another network
    # a flood's debt keeps it limited for a while after it stops; then it is forgiven
    assert limiter.check(network, kind, 100.5) != SEND
    assert limiter.check(network, kind, 100.0 + 5 + 2) == SEND


def test_error_logs_are_rate_limited_and_count_what_they_suppress() -> None:
    events: list[tuple[str, str, dict]] = []

    class Sink:
        def exception(self, event: str, **fields: object) -> None:
            events.append(("exception", event, fields))

        def error(self, event: str, **fields: object) -> None:
            events.append(("error", event, fields))

    now = [0.0]
    limited = RateLimitedLog(Sink(), clock=lambda: now[0])
    for _ in range(20_000):
        limited.exception("engine_error", qname="x.")
    assert len(events) == BURST
    assert [kind for kind, _, _ in events] == ["exception"] + ["error"] * (BURST - 1)
    now[0] = 10.0
    limited.exception("engine_error", qname="x.")
    assert events[-1][2]["suppressed"] == 20_000 - BURST


def test_every_cache_keeps_its_bounds_in_entries_and_bytes() -> None:
    for spec in CACHES.values():
        cache: BoundedCache[int, bytes] = BoundedCache(spec)
        big = spec.max_bytes // 1000  # entries of a thousandth of the byte bound
        for key in range(spec.max_entries * 2):
            cache.put(key, b"", big if key % 2 else 10)
            assert len(cache) <= spec.max_entries
            assert cache.bytes <= spec.max_bytes
        assert cache.evictions > 0
        assert cache.bytes == sum(cache.sizes.values()) * SIZE_UNIT
        assert all(units * SIZE_UNIT >= ENTRY_OVERHEAD for units in cache.sizes.values())


def test_an_entry_size_is_kept_without_an_int_of_its_own() -> None:
    """A size is kept as a count of SIZE_UNITs, rounded up: for entries under 16 KB a shared
    small int, not an int object of 32 bytes per entry (8 MB for a full rate limiter). Two
    entries of one size keep the very same object; the bound still counts in bytes."""
    cache: BoundedCache[int, bytes] = BoundedCache("replies")
    for key, size in ((1, 900), (2, 900), (3, 16_000)):
        cache.put(key, b"", size)
    assert cache.sizes[1] is cache.sizes[2]
    assert cache.bytes == sum(cache.sizes.values()) * SIZE_UNIT
    assert 900 + ENTRY_OVERHEAD <= cache.sizes[1] * SIZE_UNIT < 900 + ENTRY_OVERHEAD + SIZE_UNIT


_SHAPES: dict[tuple[int, int], bytes] = {}


def _query(subnet: str, query_id: int) -> bytes:
    """An ECS query for www.cdn.example.com: dnspython builds one per address length, and the
    rest are that one with another ID and address (dnspython takes ~0.4 ms a message)."""
    network = ipaddress.ip_network(subnet)
    length = (network.prefixlen + 7) // 8
    shape = _SHAPES.get((network.version, network.prefixlen))
    if shape is None:
        message = dns.message.make_query(
            "www.cdn.example.com", "A", use_edns=0, options=[dns.edns.ECSOption.from_text(subnet)]
        )
        shape = _SHAPES[(network.version, network.prefixlen)] = message.to_wire()[:-length]
    return query_id.to_bytes(2, "big") + shape[2:] + network.network_address.packed[:length]


def test_a_flood_of_distinct_subnets_fills_no_cache_past_its_bound() -> None:
    """issue 12.4: memory grew with distinct subnets. New /24s and /56s from many resolver
    networks, each twice (a second sighting is what puts a reply in the reply cache): every
    cache the answer path fills is a BoundedCache, and stays within its bounds (the bounds
    themselves are held by the test above, and the soak measures the plateau: docs/
    reliability.md)."""
    state = state_for(EXAMPLE)
    snapshot = state.snapshot
    resolvers = [client(f"10.{n // 256}.{n % 256}.1") for n in range(2048)]
    count = 0
    for first in range(1, 224):
        for second in range(0, 256, 4):
            data = _query(f"{first}.{second}.7.0/24", count & 0xFFFF)
            for _ in range(2):
                assert ask(state, data, resolvers[count % len(resolvers)]) is not None
            count += 1
    for number in range(10_000):
        data = _query(f"2400:{number:x}:{number % 256:x}00::/56", number & 0xFFFF)
        assert ask(state, data, resolvers[number % len(resolvers)]) is not None
    caches = [snapshot.replies, snapshot.templates.templates, snapshot.prepared]
    assert state.limiter is not None
    caches += [snapshot.place_decisions, state.limiter.accounts]
    for cache in caches:
        assert isinstance(cache, BoundedCache)
        assert len(cache) <= cache.max_entries and cache.bytes <= cache.max_bytes
    assert len(snapshot.replies) >= 14_000  # the flood did go through the caches
    assert len(state.limiter.accounts) >= 2048


def test_the_architecture_doc_lists_every_cache_with_its_bounds() -> None:
    """One table of caches: docs/architecture.md states what geodns.common.caching.CACHES holds."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    for spec in CACHES.values():
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{spec.name}` |")), "")
        assert row, f"docs/architecture.md has no row for the {spec.name} cache"
        assert f"{spec.max_entries:,} / {spec.max_bytes >> 20} MB" in row, row

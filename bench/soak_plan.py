"""What one soak does, in numbers: durations, rates, counts and the loopback addresses used.

A `Plan` is immutable and passed to every activity; `--quick` and the default differ only in
their numbers. Each stream of traffic comes from its own loopback address in its own /24, so
that per-client limits (RRL counts per /24 and /56, TCP caps count per address) meet each
stream separately and the figures of one do not mix with another's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

SERVER = "127.0.0.1"  # the only target, ever
VALID_SOURCE = "127.0.1.1"  # the valid load at a fixed rate (dnsperf)
WALK_SOURCE = "127.0.2.1"  # the distinct-subnet walk (dnsperf)
MALFORMED_SOURCE = "127.0.3.1"  # malformed and mutated packets
PROBE_SOURCE = "127.0.0.1"  # new-TCP probes and the reload check
SLOW_ONE_SOURCE = "127.0.4.1"  # slow TCP clients all from one address
SLOW_MANY_NET = (127, 100)  # slow TCP clients from 127.100.x.y, one address each


def slow_many_addresses(count: int) -> list[str]:
    """`count` distinct loopback addresses 127.100.x.y (y in 1..250): one per slow client."""
    if count > 250 * 256:
        raise ValueError("at most 64,000 distinct slow-client addresses")
    return [f"{SLOW_MANY_NET[0]}.{SLOW_MANY_NET[1]}.{i // 250}.{1 + i % 250}" for i in range(count)]


@dataclass(frozen=True)
class Plan:
    seconds: float = 240.0  # per server
    valid_qps: int = 1_000
    walk_qps: int = 9_000
    walk_v6_share: float = 1 / 3  # of the distinct subnets, IPv6 /56 (the rest IPv4 /24)
    malformed_pps: int = 4_500
    malformed_min: int = 1_000_000  # the count the full plan must reach (printed when missed)
    parse_per_s: int = 320  # replies to malformed packets checked with dnspython, per second
    slow_many: int = 1_000  # slow TCP clients, each from its own address
    slow_one: int = 500  # slow TCP clients from one address
    slow_ramp_s: float = 8.0  # they connect spread over this long
    slow_release_before_end_s: float = 4.0
    drip_s: float = 4.0  # one byte per slow client this often
    reconnect_s: float = 1.0  # a slow client closed by the server reconnects after this
    probe_interval_s: float = 0.25  # one new-TCP probe this often
    probe_timeout_s: float = 2.0
    reload_interval_s: float = 1.0
    # Reloads and GeoIP file changes pause for this part of the soak (fractions of it): a reload
    # may start the server's caches afresh, so memory growth with distinct subnets shows only
    # while nothing reloads. RSS must level off in this stretch; everything else goes on.
    churn_pause: tuple[float, float] = (0.25, 0.75)
    flip_s: float = 6.0  # the health target changes state this often
    geoip_period_s: float = 10.0  # one GeoIP file step this often (outside the pause)
    rss_interval_s: float = 10.0
    dnsperf_timeout_s: float = 2.0
    quiet_wait_s: float = 30.0  # wait at most this long for other sessions' load to drop
    index_wait_s: float = 600.0  # wait at most this long for geodns's geo index after a start
    seed: int = 12

    @property
    def walk_count(self) -> int:
        return int(self.walk_qps * self.seconds)

    @property
    def walk_outstanding(self) -> int:
        """Walk queries dnsperf keeps in flight: a second's worth for every second of its
        timeout, so the walk keeps its rate even when the server answers none of it (geodns's
        response rate limiting drops most of a flood from one network, and an attacker walking
        subnets does not wait for answers either)."""
        return int(self.walk_qps * self.dnsperf_timeout_s)

    @property
    def malformed_count(self) -> int:
        return int(self.malformed_pps * self.seconds)

    @property
    def slow_window(self) -> tuple[float, float]:
        """When every slow client has been started and none has been let go (seconds)."""
        return (self.slow_ramp_s + 1.0, self.seconds - self.slow_release_before_end_s)

    @property
    def pause_window(self) -> tuple[float, float]:
        """When nothing reloads and the GeoIP file stays as it is (seconds)."""
        return (self.seconds * self.churn_pause[0], self.seconds * self.churn_pause[1])

    def churning(self, t: float) -> bool:
        """May a reload or a GeoIP change happen at `t` seconds?"""
        start, end = self.pause_window
        return not start <= t < end


FULL = Plan()
QUICK = replace(
    FULL,
    seconds=25.0,
    walk_qps=8_000,
    malformed_pps=5_000,
    malformed_min=0,
    slow_ramp_s=5.0,
    slow_release_before_end_s=2.0,
    churn_pause=(0.25, 0.5),
    flip_s=4.0,
    geoip_period_s=3.0,
    quiet_wait_s=5.0,
)


@dataclass(frozen=True)
class Clock:
    """Seconds since the soak of one server began (monotonic)."""

    began: float

    @classmethod
    def start(cls) -> Clock:
        return cls(time.monotonic())

    def now(self) -> float:
        return time.monotonic() - self.began


@dataclass(frozen=True)
class GeoipStep:
    how: str  # "in_place", "truncated" (in place, with a truncated copy) or "atomic"
    source: str  # "other", "good" or "truncated"


ATOMIC_CYCLE = (GeoipStep("atomic", "other"), GeoipStep("atomic", "good"))
IN_PLACE_CYCLE = (
    GeoipStep("in_place", "other"),
    GeoipStep("in_place", "good"),
    GeoipStep("truncated", "truncated"),
    GeoipStep("in_place", "good"),
)


def geoip_schedule(plan: Plan) -> list[tuple[float, GeoipStep]]:
    """(when, step): one step every `geoip_period_s`; atomic replacements before the pause (the
    last one puts the right database back), none in it, in-place overwrites after it. A server that dies of an in-place overwrite
    (before the fixes, geodns did) has by then shown how its memory grows."""
    schedule = []
    atomic = in_place = 0
    when = plan.geoip_period_s
    pause_start, _ = plan.pause_window
    while when < plan.seconds - 1.0:
        if not plan.churning(when):
            pass
        elif when < pause_start:
            step = ATOMIC_CYCLE[atomic % len(ATOMIC_CYCLE)]
            if step.source == "good" or when + plan.geoip_period_s < pause_start:
                schedule.append((when, step))  # the pause starts with the right database
                atomic += 1
        else:
            schedule.append((when, IN_PLACE_CYCLE[in_place % len(IN_PLACE_CYCLE)]))
            in_place += 1
        when += plan.geoip_period_s
    return schedule

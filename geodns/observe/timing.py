"""Histograms counted by the transports: how long an answer took, from receive to send.

The batched UDP transport reads up to 32 queries with one system call and sends their replies
with one more, so it observes once per batch: every query of the batch waited from the read to
the send, and `observe(seconds, count)` counts them all in one step (a bisect and two list
increments per batch, well under a tenth of a microsecond per query under load). asyncio's UDP
transport and TCP observe once per message. Buckets and counts are plain lists; the collector
(geodns.observe.metrics) turns them into Prometheus histograms at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left

# seconds: an answer from memory takes tens of microseconds, one behind a queue of others or a
# garbage collection a few milliseconds; past a second something is wrong
LATENCY_BOUNDS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


class Histogram:
    """Counts per bucket (the last is +Inf) and the sum of what was observed."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """Count `count` observations of `value` (bucket "le": the first bound >= value)."""
        self.counts[bisect_left(self.bounds, value)] += count
        self.total += value * count

    def report(self) -> tuple[list[int], float]:
        """(counts, sum): plain data for a worker's report."""
        return list(self.counts), self.total

    def add(self, report: tuple[list[int], float]) -> None:
        """Add a report of a histogram with the same bounds."""
        counts, total = report
        for index, count in enumerate(counts[: len(self.counts)]):
            self.counts[index] += count
        self.total += total

"""Error logs that a flood cannot turn into a flood of logs.

One malformed packet that trips a bug must cost one log event, not one per packet: 20,000 such
packets a second would write megabytes of tracebacks and slow everything else down. Each event
name gets a budget of BURST events, refilled at RATE per second; events over budget are
counted, and the next event that is let through says how many were suppressed. The traceback
is logged only for the first event of a name in each REPEAT_TRACEBACK seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

BURST = 5
RATE = 1.0  # events per second per name, once the burst is spent
REPEAT_TRACEBACK = 60.0


class RateLimitedLog:
    """Wraps a structlog logger: `exception(event, **fields)` and `error(event, **fields)`."""

    def __init__(self, logger: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.clock = clock
        self.budgets: dict[str, list[float]] = {}  # name -> [tokens, last refill, suppressed]
        self.tracebacks: dict[str, float] = {}
        self.suppressed_total = 0

    def _allow(self, event: str) -> int | None:
        """None when over budget, else how many were suppressed since the last one logged."""
        now = self.clock()
        budget = self.budgets.get(event)
        if budget is None:
            budget = self.budgets[event] = [float(BURST), now, 0.0]
        budget[0] = min(float(BURST), budget[0] + (now - budget[1]) * RATE)
        budget[1] = now
        if budget[0] < 1.0:
            budget[2] += 1
            self.suppressed_total += 1
            return None
        budget[0] -= 1.0
        suppressed, budget[2] = int(budget[2]), 0.0
        return suppressed

    def exception(self, event: str, **fields: Any) -> None:
        suppressed = self._allow(event)
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        now = self.clock()
        if now - self.tracebacks.get(event, -REPEAT_TRACEBACK) >= REPEAT_TRACEBACK:
            self.tracebacks[event] = now
            self.logger.exception(event, **fields)
        else:
            self.logger.error(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        suppressed = self._allow(event)
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        self.logger.error(event, **fields)

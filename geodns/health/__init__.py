"""Health checks and drains: which sites the DNS engine may answer with.

`state` is the pure part (rise/fall machines, drains, data centre dependencies, the view a query
reads); `probes` are the asyncio HTTP(S)/TCP/DNS checks; `monitor` runs them in the background,
logs, persists and publishes. Only the pure names are imported here, so that reading a
`HealthView` does not pull in aiohttp.
"""

from geodns.health.state import (
    DOWN,
    UP,
    CheckState,
    Drain,
    HealthState,
    HealthView,
    Result,
    SiteChange,
    Transition,
)

__all__ = [
    "DOWN",
    "UP",
    "CheckState",
    "Drain",
    "HealthState",
    "HealthView",
    "Result",
    "SiteChange",
    "Transition",
]

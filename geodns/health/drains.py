"""Who takes drain and undrain orders: this server alone, or the fleet it belongs to.

The admin API calls a `DrainControl`; an order is acknowledged only once it is durable, so an
acknowledged drain survives a crash of the server right after the answer:

- `LocalDrains` (a server without `fleet:`): the health monitor applies the drain, then the state
  file is written and fsynced before the call returns. If the file cannot be written the drain
  is undone and StateFileError says why: the API never says yes to a change it would forget.
- geodns.fleet.FleetMember: the drain is written to etcd (which has committed it to a quorum of
  its nodes, on disk, when it answers), then applied here, and every other member applies it from
  its watch.
"""

from __future__ import annotations

from typing import Protocol

from geodns.health.monitor import HealthMonitor
from geodns.health.state import Drain


class DrainControl(Protocol):
    """Drain and undrain, answering once the change is durable."""

    async def drain(self, site: str, reason: str, by: str, duration_s: float | None) -> Drain:
        """Take `site` out of rotation (for `duration_s`, or until undrained); the drain made."""
        ...

    async def undrain(self, site: str) -> Drain | None:
        """End the drain of `site`; the drain that ended, or None when it was not drained."""
        ...


class LocalDrains:
    """Drains of a server that runs alone: its monitor's, saved in its state file."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self.monitor = monitor

    async def drain(self, site: str, reason: str, by: str, duration_s: float | None) -> Drain:
        before = self.monitor.health.drains.get(site)
        drain = self.monitor.drain(site, reason, by, duration_s)
        await self._save_or_undo(site, before)
        return drain

    async def undrain(self, site: str) -> Drain | None:
        before = self.monitor.health.drains.get(site)
        drain = self.monitor.undrain(site)
        if drain is not None:
            await self._save_or_undo(site, before)
        return drain

    async def _save_or_undo(self, site: str, before: Drain | None) -> None:
        try:
            await self.monitor.save()
        except Exception:
            self.monitor.put_drain(site, before)
            raise

"""The fleet's Prometheus families, a collector registered beside geodns.observe.metrics's.

Built at scrape time from the member's status, like the other families; nothing is counted on
the query path. Labels are bounded by the fleet's members and the config's sites.

    geodns_fleet_etcd_connected                      1 connected, 0 failing static
    geodns_fleet_etcd_state_since_timestamp_seconds  when that last changed
    geodns_fleet_sessions_total                      connections to etcd begun
    geodns_fleet_watch_events_total                  changes received from etcd
    geodns_fleet_members                             members with a live record (this one too)
    geodns_fleet_member_reported_timestamp_seconds   {member} when it last published a change
    geodns_fleet_member_differs                      {member, what} 1: zones / config differ
    geodns_fleet_site_down_votes, _site_voters       {site} the quorum's inputs
    geodns_fleet_site_disagrees                      {site} 1: this member's probes disagree
    geodns_fleet_drains                              drains in effect (a timed one until its end)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from geodns.common.logs import get_logger
from geodns.health.state import Drain

log = get_logger("geodns.fleet.metrics")


class FleetSource(Protocol):
    """What the collector reads: geodns.fleet.member.FleetMember."""

    @property
    def sessions(self) -> int: ...

    @property
    def events(self) -> int: ...

    @property
    def drains(self) -> Mapping[str, Drain]: ...

    def status(self) -> dict[str, Any]: ...


class FleetCollector:
    """A prometheus-client collector of the fleet's families."""

    def __init__(self, source: FleetSource, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._families())
        except Exception:  # a broken source must not empty the rest of the scrape
            log.exception("metrics_source_failed", source="fleet")
            return
        yield from families

    def _families(self) -> Iterator[Metric]:
        source = self.source
        status = source.status()
        etcd = status["etcd"]
        yield _gauge(
            "geodns_fleet_etcd_connected",
            "1 while this member reaches etcd; 0 while it fails static on the last state seen",
            1 if etcd["connected"] else 0,
        )
        yield _gauge(
            "geodns_fleet_etcd_state_since_timestamp_seconds",
            "When this member last connected to etcd or lost it (Unix time)",
            etcd["since"],
        )
        sessions = CounterMetricFamily(
            "geodns_fleet_sessions", "Connections to etcd begun (the first and every retry)"
        )
        sessions.add_metric([], source.sessions)
        yield sessions
        events = CounterMetricFamily(
            "geodns_fleet_watch_events", "Changes of drains and member records received from etcd"
        )
        events.add_metric([], source.events)
        yield events
        members = status["members"]
        yield _gauge(
            "geodns_fleet_members",
            "Members with a live record in etcd, this one included (as last seen)",
            len(members),
        )
        reported = GaugeMetricFamily(
            "geodns_fleet_member_reported_timestamp_seconds",
            "When a member last published a change of its votes or zones (Unix time)",
            labels=("member",),
        )
        differs = GaugeMetricFamily(
            "geodns_fleet_member_differs",
            "1 when a member's zones or answer-relevant config differ from most members'",
            labels=("member", "what"),
        )
        for name, member in sorted(members.items()):
            if member.get("reported") is not None:
                reported.add_metric((name,), float(member["reported"]))
            for what in ("zones", "config"):
                differs.add_metric((name, what), 1 if what in member["differs"] else 0)
        yield reported
        yield differs
        down_votes = GaugeMetricFamily(
            "geodns_fleet_site_down_votes",
            "Vantage points (members) whose own probes say the site is down",
            labels=("site",),
        )
        voters = GaugeMetricFamily(
            "geodns_fleet_site_voters",
            "Vantage points (members) with a probe result for the site",
            labels=("site",),
        )
        disagrees = GaugeMetricFamily(
            "geodns_fleet_site_disagrees",
            "1 when this member's own probes disagree with the fleet's verdict (it follows the fleet)",
            labels=("site",),
        )
        for site, info in sorted(status["sites"].items()):
            down_votes.add_metric((site,), info["down_votes"])
            voters.add_metric((site,), info["voters"])
            disagrees.add_metric((site,), 1 if info["disagrees"] else 0)
        yield down_votes
        yield voters
        yield disagrees
        now = self.clock()  # a timed drain stays in etcd for a while after its end
        yield _gauge(
            "geodns_fleet_drains",
            "Drains in effect that the fleet holds in etcd",
            sum(1 for drain in source.drains.values() if drain.active(now)),
        )


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text)
    family.add_metric([], value)
    return family

"""The health monitor against real HTTP servers on loopback ports, with 0.2 s intervals.

Each test runs its own event loop with a hard time limit; every wait polls a condition with a
bound, so a broken monitor fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from test_health_probes import LOOPBACK, HttpEndpoint, hung_server

from geodns.geo.sites import CheckSpec, Site
from geodns.health.monitor import HealthMonitor
from geodns.health.probes import run_probe
from geodns.health.state import HealthView

INTERVAL = 0.2


class EventLog:
    """Stands in for the structlog logger: keeps (event, fields) of every call at any level."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **fields: self.events.append((event, fields))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.events if event == name]


def site(name: str, *checks: CheckSpec, kind: str = "pop") -> Site:
    return Site(name, kind, 0.0, 0.0, ("192.0.2.1",), (), checks=checks)


def fast(check: CheckSpec, **settings: Any) -> CheckSpec:
    values = {"interval": INTERVAL, "timeout": INTERVAL, "fall": 2, "rise": 3, **settings}
    return CheckSpec(**{**{f: getattr(check, f) for f in check.__slots__}, **values})


class Harness:
    """A monitor with its published views and log events recorded."""

    def __init__(self, sites: list[Site], state_file: Path | None = None, jitter: float = 0.0):
        self.views: list[HealthView] = []
        self.log = EventLog()
        self.monitor = HealthMonitor(
            {s.name: s for s in sites},
            state_file,
            self.views.append,
            self.log,
            jitter=lambda: jitter,
        )


async def until(condition: Callable[[], bool], limit: float = 3.0) -> float:
    """Wait until `condition()` holds; the seconds it took. AssertionError after `limit`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > limit:
            raise AssertionError(f"condition not met within {limit}s")
        await asyncio.sleep(0.01)
    return loop.time() - start


def run(main: Callable[[], Awaitable[Any]], limit: float = 10.0) -> Any:
    return asyncio.run(asyncio.wait_for(main(), limit))


def test_a_stopped_endpoint_goes_down_after_fall_failures_and_back_after_rise() -> None:
    async def main() -> None:
        endpoint = await HttpEndpoint().start()
        check = fast(endpoint.check())  # fall 2, rise 3
        harness = Harness([site("lon", check), site("ams")])
        monitor = harness.monitor
        await monitor.start()
        try:
            await until(lambda: monitor.probes >= 1)
            assert monitor.view.down == frozenset() and harness.views == []

            await endpoint.stop()
            took = await until(lambda: "lon" in monitor.view.down)
            assert took <= 2 * INTERVAL + 0.3  # fall x interval (+ the probe and polling)
            assert harness.views == [HealthView(frozenset({"lon"}))]

            await endpoint.start()  # same port
            before = endpoint.requests
            took = await until(lambda: "lon" not in monitor.view.down)
            assert endpoint.requests - before == 3  # exactly `rise` successes
            assert 2 * INTERVAL - 0.05 <= took <= 3 * INTERVAL + 0.3
            assert harness.views[-1] == HealthView() and len(harness.views) == 2
        finally:
            await monitor.stop()
            await endpoint.stop()
        changes = harness.log.named("site_state")
        assert [(c["site"], c["old"], c["new"], c["streak"]) for c in changes] == [
            ("lon", "up", "down", 2),
            ("lon", "down", "up", 3),
        ]
        assert changes[0]["cause"] == f"check {check.key} down: connection refused"
        assert changes[1]["cause"] == f"check {check.key} up: HTTP 200"
        status = monitor.status()["sites"]["lon"]
        assert status["state"] == "up" and status["last"]["ok"] and status["streak"] >= 3

    run(main)


def test_one_probe_in_flight_per_target_however_many_sites_share_it() -> None:
    async def main() -> None:
        endpoint = await HttpEndpoint(delay=0.15).start()  # a slow endpoint
        # a timeout no probe reaches however loaded the machine: one cut short would leave its
        # request in flight at the endpoint while the next one starts
        check = fast(endpoint.check(), timeout=5.0)
        harness = Harness([site("lon", check), site("ams", check), site("par", check)])
        monitor = harness.monitor
        loop = asyncio.get_running_loop()
        started = loop.time()
        await monitor.start()
        try:
            assert len(monitor.tasks) == 1
            await until(lambda: endpoint.requests >= 5, limit=30.0)
            elapsed, requests = loop.time() - started, endpoint.requests
        finally:
            await monitor.stop()
            await endpoint.stop()
        # one per interval, not one per site: probes start at least an interval apart, so a
        # slow machine sees fewer of them in a given time, never more
        assert requests <= elapsed / INTERVAL + 1, (requests, elapsed)
        assert endpoint.max_in_flight == 1

    run(main, limit=60.0)


def test_first_probe_waits_for_its_jitter() -> None:
    async def main() -> None:
        endpoint = await HttpEndpoint().start()
        harness = Harness([site("lon", fast(endpoint.check(), interval=0.4))], jitter=0.5)
        await harness.monitor.start()
        try:
            await asyncio.sleep(0.15)
            assert endpoint.requests == 0
            took = await until(lambda: endpoint.requests == 1, limit=1.0)
            assert took <= 0.15
        finally:
            await harness.monitor.stop()
            await endpoint.stop()

    run(main)


def test_a_hung_target_blocks_neither_other_checks_nor_the_loop() -> None:
    """Told by the order of events, not by how long they took: while a probe of the hung target
    is in flight, a ticker on the loop keeps ticking and probes of the other target complete.
    A probe that blocked the loop would have nothing happen between its start and its end."""

    async def main() -> None:
        server, held = await hung_server()
        hung = CheckSpec(
            type="http",
            address=LOOPBACK,
            port=server.sockets[0].getsockname()[1],
            interval=0.4,
            timeout=0.3,
        )
        endpoint = await HttpEndpoint().start()
        fine = fast(endpoint.check())
        events: list[str] = []  # "start stuck", "end fine", "tick", ... in the order they happen

        async def recorded(spec: CheckSpec, session: Any) -> Any:
            name = "stuck" if spec.key == hung.key else "fine"
            events.append(f"start {name}")
            try:
                return await run_probe(spec, session)
            finally:
                events.append(f"end {name}")

        async def ticker() -> None:
            while True:
                events.append("tick")
                await asyncio.sleep(0.01)

        def during_hung_probes() -> list[list[str]]:
            """The events between each start and end of a hung probe (finished ones only)."""
            windows, current = [], None
            for event in events:
                if event == "start stuck":
                    current = []
                elif event == "end stuck" and current is not None:
                    windows.append(current)
                    current = None
                elif current is not None:
                    current.append(event)
            return windows

        monitor = HealthMonitor(
            {"stuck": site("stuck", hung), "fine": site("fine", fine)},
            None,
            lambda view: None,
            EventLog(),
            probe=recorded,
            jitter=lambda: 0.0,
        )
        ticks = asyncio.ensure_future(ticker())
        await monitor.start()
        try:
            await until(
                lambda: (
                    "stuck" in monitor.view.down
                    and endpoint.requests >= 4
                    and len(during_hung_probes()) >= 2
                ),
                limit=30.0,
            )
            windows = during_hung_probes()
            assert all("tick" in window for window in windows), f"the loop stood still: {windows}"
            # and the other target's probes go on meanwhile (however long that takes here)
            await until(
                lambda: sum(w.count("end fine") for w in during_hung_probes()) >= 2, limit=30.0
            )
        finally:
            ticks.cancel()
            await monitor.stop()
            await endpoint.stop()
            for writer in held:
                writer.close()
            server.close()
        assert monitor.view.down == {"stuck"}
        assert monitor.status()["sites"]["stuck"]["last"]["detail"] == "timeout after 0.3s"
        assert endpoint.requests >= 4

    run(main, limit=90.0)


def test_state_file_round_trip_and_drains_survive_a_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "health.json"

    async def first_run() -> int:
        endpoint = await HttpEndpoint().start()
        port = endpoint.port
        await endpoint.stop()  # lon's endpoint is dead
        check = fast(endpoint.check())
        harness = Harness(sites(check), state_file)
        monitor = harness.monitor
        await monitor.start()
        try:
            await until(lambda: "lon" in monitor.view.down)
            monitor.drain("ams", "failover drill", "alice")
            monitor.drain("fra", "", "bob", duration_s=60)
            monitor.drain("par", "short", "carol", duration_s=0.2)
        finally:
            await monitor.stop()
        return port

    def sites(check: CheckSpec) -> list[Site]:
        return [site("lon", check), site("ams"), site("fra"), site("par")]

    port = run(first_run)
    saved = json.loads(state_file.read_text())
    assert [d["site"] for d in saved["drains"]] == ["ams", "fra", "par"]
    assert list(tmp_path.iterdir()) == [state_file]  # no temp file left behind
    time.sleep(0.25)  # par's drain ends while the server is stopped

    async def second_run() -> None:
        endpoint = HttpEndpoint()
        endpoint.port = port
        check = fast(endpoint.check())
        harness = Harness(sites(check), state_file)
        monitor = harness.monitor
        assert monitor.view.down == {"lon", "ams", "fra"}  # before start: for the first snapshot
        status = monitor.status()["sites"]
        assert status["ams"]["drain"]["reason"] == "failover drill"
        assert status["ams"]["drain"]["by"] == "alice"
        assert status["fra"]["drain"]["until"] is not None and status["par"]["drain"] is None
        await endpoint.start()
        await monitor.start()
        try:
            await until(lambda: "lon" not in monitor.view.down)
            assert endpoint.requests == 3  # a restored outage needs `rise` successes
            assert monitor.view.down == {"ams", "fra"}
        finally:
            await monitor.stop()
            await endpoint.stop()
        restored = harness.log.named("state_restored")[0]
        assert restored["dropped"] == ["drain of par: ended while the server was stopped"]

    run(second_run)
    saved = json.loads(state_file.read_text())
    assert [c["state"] for c in saved["checks"].values()] == ["up"]
    assert [d["site"] for d in saved["drains"]] == ["ams", "fra"]


def test_a_timed_drain_ends_by_itself() -> None:
    async def main() -> None:
        harness = Harness([site("lon"), site("ams")])
        monitor = harness.monitor
        await monitor.start()
        try:
            drain = monitor.drain("lon", "drill", "alice", duration_s=0.3)
            assert drain.until is not None and harness.views == [HealthView(frozenset({"lon"}))]
            took = await until(lambda: "lon" not in monitor.view.down, limit=2.0)
            assert 0.25 <= took <= 0.6
            assert harness.views[-1] == HealthView()
        finally:
            await monitor.stop()
        changes = harness.log.named("site_state")
        assert [(c["site"], c["new"], c["cause"]) for c in changes] == [
            ("lon", "down", "drained by alice: drill"),
            ("lon", "up", "drain expired"),
        ]
        assert monitor.status()["sites"]["lon"]["drain"] is None

    run(main)


def test_reload_starts_new_checks_stops_removed_ones_and_keeps_state() -> None:
    async def main() -> None:
        kept, removed, added = HttpEndpoint(), HttpEndpoint(), HttpEndpoint()
        for endpoint in (kept, removed, added):
            await endpoint.start()
        await kept.stop()  # lon is down before and after the reload
        harness = Harness([site("lon", fast(kept.check())), site("ams", fast(removed.check()))])
        monitor = harness.monitor
        await monitor.start()
        try:
            await until(lambda: monitor.view.down == {"lon"})
            monitor.drain("ams", "drill", "alice")
            monitor.update_sites(
                {"lon": site("lon", fast(kept.check())), "fra": site("fra", fast(added.check()))}
            )
            assert set(monitor.tasks) == {fast(kept.check()).key, fast(added.check()).key}
            assert monitor.view.down == {"lon"}  # ams and its drain are gone; lon stays down
            await asyncio.sleep(0.05)  # a probe already on the wire when its task was cancelled
            seen, wanted = removed.requests, added.requests + 2
            await until(lambda: added.requests >= wanted)
            assert removed.requests == seen
        finally:
            await monitor.stop()
            for endpoint in (removed, added):
                await endpoint.stop()
        assert set(monitor.status()["sites"]) == {"lon", "fra"}

    run(main)


def test_an_unreadable_or_unwritable_state_file_is_logged_not_fatal(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    harness = Harness([site("lon")], corrupt)
    assert harness.monitor.view.down == frozenset()
    assert harness.log.named("state_file_unreadable")[0]["path"] == str(corrupt)

    async def main() -> None:
        harness = Harness([site("lon"), site("ams")], tmp_path / "missing-dir" / "state.json")
        monitor = harness.monitor
        await monitor.start()
        try:
            monitor.drain("lon", "drill", "alice")
            monitor.drain("ams", "drill", "alice")
            await asyncio.sleep(0.05)
            assert monitor.view.down == {"lon", "ams"}  # the drains hold, in memory
        finally:
            await monitor.stop()
        assert len(harness.log.named("state_file_write_failed")) == 1  # not once per change

    run(main)

"""The health monitor: runs the probes in the background, logs, persists and publishes the view.

The decisions are geodns.health.state's; this module only feeds it. One asyncio task per distinct
check target (`CheckSpec.key`), however many sites and records share it, so there is at most one
probe in flight per target. Each task waits a random part of its interval before its first probe,
so a restart does not probe everything at once, then probes every `interval` (measured from the
start of the previous probe). Nothing here runs on the query path: the DNS engine reads the last
published `HealthView`, and a slow or hung probe only delays its own task.

Every site state change is one `site_state` event (site, old, new, cause, streak). `on_change` is
called only when the set of down sites changes. The state file keeps the known state of every
checked target and every drain, written atomically (temp file, fsync, rename) in a thread
whenever that changes, and is read back in the constructor, so the first snapshot can already
carry the restored view. `save()` waits until the file holds the current state: the admin API
acknowledges a drain only then, so an acknowledged drain survives a crash.

In a fleet (geodns.fleet) the monitor still probes and decides its own checks; the fleet reads
its votes (`health.own_votes()`, after every change it is told of through `subscribe`) and
hands back the fleet's drains and verdicts (`set_fleet`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geodns.common.errors import StateFileError
from geodns.common.logs import get_logger
from geodns.geo.sites import CheckSpec, Site
from geodns.health.state import DOWN, Drain, HealthState, HealthView, SharedVerdict, SiteChange

if TYPE_CHECKING:  # the probes (and aiohttp) are imported when probing starts, not before
    import aiohttp

    from geodns.health.probes import ProbeResult

Probe = Callable[[CheckSpec, "aiohttp.ClientSession | None"], Awaitable["ProbeResult"]]
GRACE = 1.0  # beyond a probe's own timeout, before the monitor gives up on it
EXPIRY_SLACK = 0.01  # the drain timer fires this late, so the drain has surely ended


class HealthMonitor:
    """Probes every site's checks, keeps the drains, publishes a HealthView on every change."""

    def __init__(
        self,
        sites: Mapping[str, Site],
        state_file: Path | None,
        on_change: Callable[[HealthView], None],
        log: Any = None,
        *,
        probe: Probe | None = None,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.state_file = state_file
        self.on_change = on_change
        self.log = log if log is not None else get_logger("geodns.health")
        self.probe = probe  # None: geodns.health.probes.run_probe, imported by start()
        self.clock = clock
        self.jitter = jitter
        self.health = HealthState(sites, clock())
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.running: dict[str, CheckSpec] = {}
        self.probes = 0  # completed probes, for tests and metrics
        self.session: aiohttp.ClientSession | None = None
        self.started = False
        self._timer: asyncio.TimerHandle | None = None
        self._saved_revision = -1
        self._writer: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()  # one writer of the state file at a time
        self._write_error: str | None = None
        self._listeners: list[Callable[[], None]] = []
        self._errors_logged: set[str] = set()
        self._published = self.health.view
        self._warn_conflicts()
        self._load()

    @property
    def view(self) -> HealthView:
        """The current view: the set of sites the engine must not answer with."""
        return self.health.view

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start one probe task per check target and the drain expiry timer."""
        # aiohttp is imported here, after the first answers: restoring states and drains
        # (the constructor) needs none of it, and its import is a third of a start-up
        from geodns.health.probes import new_session, run_probe

        self.started = True
        if self.probe is None:
            self.probe = run_probe
        self.session = new_session()
        self._sync_tasks()
        self._expire()
        self.log.info("health_started", sites=len(self.health.sites), targets=len(self.tasks))

    async def stop(self) -> None:
        """Stop every probe and timer, save the state, close the HTTP client."""
        self.started = False
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
        self.running.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self._writer is not None:
            await self._writer
        if self.state_file is not None and self.health.revision != self._saved_revision:
            self._write(self.health.revision, self.health.to_saved())

    def update_sites(self, sites: Mapping[str, Site]) -> None:
        """A reload: probe new targets, stop removed ones, keep the state and drains of the rest."""
        changes = self.health.set_sites(sites, self.clock())
        self._warn_conflicts()
        if self.started:
            self._sync_tasks()
        self._apply(changes)

    # -- drains ----------------------------------------------------------------------------

    def drain(
        self, site: str, reason: str = "", by: str = "", duration_s: float | None = None
    ) -> Drain:
        """Take a site out of rotation now, for `duration_s` or until undrained. UnknownSiteError: no such site."""
        now = self.clock()
        until = now + duration_s if duration_s is not None else None
        drain, changes = self.health.drain(site, now, reason, by, until)
        self.log.info("drained", site=site, reason=reason, by=by, until=until)
        self._apply(changes)
        self._schedule_expiry()
        return drain

    def undrain(self, site: str) -> Drain | None:
        """End a site's drain; the drain that ended, or None. UnknownSiteError: no such site."""
        drain, changes = self.health.undrain(site, self.clock())
        if drain is not None:
            self.log.info("undrained", site=site)
        self._apply(changes)
        self._schedule_expiry()
        return drain

    def put_drain(self, site: str, drain: Drain | None) -> None:
        """Put a site's drain back as it was (None: not drained), e.g. when saving a change failed."""
        self._apply(self.health.put_drain(site, drain, self.clock()))
        self._schedule_expiry()

    def set_fleet(
        self, drains: Mapping[str, Drain] | None, verdicts: Mapping[str, SharedVerdict] | None
    ) -> None:
        """Adopt the fleet's drains (replacing this server's own; None: keep them) and its
        verdicts by site (None: back to this server's own checks); one published view for both
        (geodns.fleet)."""
        now = self.clock()
        changes = self.health.set_drains(drains, now) if drains is not None else []
        changes += self.health.set_shared(verdicts, now)
        self._apply(changes)
        self._schedule_expiry()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every probe result, drain or reload (it must be cheap)."""
        self._listeners.append(listener)

    async def save(self) -> None:
        """Return once the state file holds the current state (written, fsynced, renamed).

        StateFileError when it cannot be written; at once when there is no state file.
        """
        if self.state_file is None:
            return
        async with self._write_lock:
            if self.health.revision == self._saved_revision:
                return
            revision, saved = self.health.revision, self.health.to_saved()
            if not await asyncio.to_thread(self._write, revision, saved):
                raise StateFileError(
                    f"cannot write state_file {self.state_file}: {self._write_error}"
                )

    def status(self) -> dict[str, Any]:
        """Every site's state, since when, last result, streak, drain and down cause (JSON-able)."""
        self._expire()
        return self.health.status(self.clock())

    # -- internals -------------------------------------------------------------------------

    def _sync_tasks(self) -> None:
        wanted = self.health.specs
        for key in list(self.tasks):
            if wanted.get(key) != self.running[key]:
                self.tasks.pop(key).cancel()
                del self.running[key]
        for key, spec in wanted.items():
            if key not in self.tasks:
                self.running[key] = spec
                self.tasks[key] = asyncio.ensure_future(self._probe_loop(key, spec))

    async def _probe_loop(self, key: str, spec: CheckSpec) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.jitter() * spec.interval)
        while self.running.get(key) is spec:  # a lost cancellation must not keep a loop alive
            started = loop.time()
            try:
                # asyncio.timeout, not wait_for: wait_for can swallow a cancellation on 3.11
                async with asyncio.timeout(spec.timeout + GRACE):
                    assert self.probe is not None  # set by start()
                    result = await self.probe(spec, self.session)
            except TimeoutError:
                result = (False, f"timeout after {spec.timeout:g}s", loop.time() - started)
            except Exception as exc:  # a bug in a probe must not end the checks of its target
                result = (False, f"probe error: {exc!r}", loop.time() - started)
                if key not in self._errors_logged:
                    self._errors_logged.add(key)
                    self.log.exception("probe_error", check=key)
            self.probes += 1
            ok, detail, latency = result
            self._apply(self.health.observe(key, ok, self.clock(), detail, latency))
            await asyncio.sleep(max(0.0, spec.interval - (loop.time() - started)))

    def _apply(self, changes: list[SiteChange], publish: bool = True) -> None:
        """Log each site change once, save what is worth keeping, publish a changed view.

        The constructor does not publish: its view is read through `view` for the first snapshot.
        """
        for change in changes:
            level = self.log.warning if change.new == DOWN else self.log.info
            level(
                "site_state",
                site=change.site,
                old=change.old,
                new=change.new,
                cause=change.cause,
                streak=change.streak,
            )
        self._save()
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # the listener's bug; the monitor goes on
                self.log.exception("health_listener_failed")
        view = self.health.view
        if not publish:
            self._published = view
        elif view is not self._published:
            self._published = view
            try:
                self.on_change(view)
            except Exception:  # the subscriber's bug; the monitor goes on
                self.log.exception("health_publish_failed")

    def _expire(self) -> None:
        self._apply(self.health.expire(self.clock()))
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        until = self.health.next_expiry()
        if until is None or not self.started:
            return
        delay = max(0.0, until - self.clock()) + EXPIRY_SLACK
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _warn_conflicts(self) -> None:
        for key in self.health.conflicts:
            self.log.warning(
                "check_conflict",
                check=key,
                note="sites define this target with different settings; the first one is used",
            )

    def _load(self) -> None:
        if self.state_file is None:
            return
        try:
            saved = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.log.error("state_file_unreadable", path=str(self.state_file), error=str(exc))
            return
        if not isinstance(saved, dict):
            self.log.error("state_file_unreadable", path=str(self.state_file), error="not a map")
            return
        changes, dropped = self.health.restore(saved, self.clock())
        self.log.info(
            "state_restored",
            path=str(self.state_file),
            down=sorted(self.health.view.down),
            drains=sorted(self.health.drains),
            dropped=dropped,
        )
        self._apply(changes, publish=False)

    def _save(self) -> None:
        """Have the state file written if what it keeps has changed, off the event loop."""
        if self.state_file is None or self.health.revision == self._saved_revision:
            return
        if self._writer is not None and not self._writer.done():
            return  # the running writer picks the new revision up when it is done
        try:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        except RuntimeError:  # no loop yet (the constructor): write here
            self._write(self.health.revision, self.health.to_saved())

    async def _write_loop(self) -> None:
        while self.health.revision != self._saved_revision:
            async with self._write_lock:
                if self.health.revision == self._saved_revision:
                    return
                revision, saved = self.health.revision, self.health.to_saved()
                if not await asyncio.to_thread(self._write, revision, saved):
                    return  # retried on the next change

    def _write(self, revision: int, saved: dict[str, Any]) -> bool:
        """Write atomically: temp file, fsync, rename. A crash leaves the old file or the new."""
        assert self.state_file is not None
        path = self.state_file
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "w") as out:
                json.dump(saved, out, indent=1, sort_keys=True)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            if str(exc) != self._write_error:  # retried on every change; said once
                self._write_error = str(exc)
                self.log.error("state_file_write_failed", path=str(path), error=str(exc))
            return False
        self._saved_revision, self._write_error = revision, None
        return True

"""One member of a fleet of nameservers that acts as one through etcd (docs/fleet.md).

What lives in etcd, under the configured prefix (default /geodns/):

    <prefix>drains/<site>    a drain (Drain.to_json). A timed drain carries its end as a time
                             and is put under a lease that outlives that end by
                             DRAIN_LEASE_GRACE, so etcd tidies it away by itself.
    <prefix>members/<name>   a member's record (JSON): its vote on every site from its own probes,
                             zone serials, digests, version. Under the member's lease, so the
                             record, and its votes, vanish lease_ttl after the member dies.

How a member runs (one task, `_run`):

- connect: renew or grant its lease, put its record, read every key under the prefix, apply
  them, then watch from the next revision; renew the lease every lease_ttl / 3 and put the record
  again whenever its votes or identity change. A watch event is applied when it arrives (a few
  milliseconds after the write), so every member sees a drain within one round trip.
- any failure (etcd stopped, a node that lost its leader, a request without answer within
  `timeout`): **fail static**. The member keeps the drains and records it saw last and its own
  live votes, says so in status, metrics and the log, and tries again after RETRY_MIN seconds,
  doubling up to RETRY_MAX. Reconnecting reads everything again, so whatever changed meanwhile
  (a drain made through another member) is applied at once.
- timed drains end at their `until` by each member's own timer (geodns.health.monitor), not
  when etcd deletes them: every member ends them at the same moment (clocks kept by NTP), also a
  member cut off from etcd.

Drain orders from the admin API go to etcd first and are acknowledged once etcd has committed
them; while etcd is out of reach they are refused with a clear error, not queued: a queued drain
would take effect at an unknown later moment, perhaps after an undrain made elsewhere.

Nothing here is on the query path: the fleet's drains and verdicts reach the snapshot through
the health monitor's view, like any other health change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geodns import __version__
from geodns.common.errors import ConfigError, FleetError, Problem, StateFileError
from geodns.common.logs import get_logger
from geodns.config.fleet import FleetConfig
from geodns.fleet.etcd import EtcdClient, EtcdError, EtcdUnavailable, WatchCompacted
from geodns.fleet.quorum import decide
from geodns.health.monitor import HealthMonitor
from geodns.health.state import DOWN, Drain

RETRY_MIN = 0.2
RETRY_MAX = 1.0  # a member is back in the fleet within about a second of etcd's return
DRAIN_LEASE_GRACE = 60  # seconds etcd keeps a timed drain after its end (members ignore it)
MAX_RECORD_BYTES = 256 * 1024  # a member record larger than this is ignored (and logged)
MAX_BAD_KEYS = 1000  # unreadable key versions remembered, so each is logged once


class FleetMember:
    """This server's part in the fleet: drains through etcd, votes, the fleet's verdicts."""

    def __init__(
        self,
        config: FleetConfig,
        monitor: HealthMonitor,
        *,
        client: EtcdClient | None = None,
        clock: Callable[[], float] = time.time,
        log: Any = None,
    ) -> None:
        self.config = config
        self.name = config.member
        self.monitor = monitor
        self.client = client if client is not None else client_for(config)
        self.clock = clock
        self.log = log if log is not None else get_logger("geodns.fleet")
        self.prefix = config.prefix
        self.started = clock()
        self.kv: dict[str, tuple[int, str | None]] = {}  # etcd's keys as last seen; None: deleted
        self.records: dict[str, dict[str, Any]] = {}  # member name -> record (ours: live)
        self.drains: dict[str, Drain] = {}
        self.unknown_drains: list[str] = []  # drained sites this member's config does not have
        self.identity: dict[str, Any] = {}
        self.votes = monitor.health.own_votes()
        self.lease = 0
        self.connected = False
        self.changed_at = self.started  # when `connected` last changed
        self.error: str | None = "not connected yet"
        self.sessions = 0  # connections made (a metric)
        self.events = 0  # watch events received (a metric)
        self.last_sync = 0.0  # when every key was last read
        self._published: str | None = None
        self._dirty = asyncio.Event()
        self._synced = asyncio.Event()
        self._up = asyncio.Event()  # set while connected
        self._task: asyncio.Task[None] | None = None
        self._bad_keys: set[tuple[str, int]] = set()
        self.name_clash: str | None = None  # another process writes our record: said in status
        monitor.subscribe(self._local_changed)

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background; wait (bounded) for the first full read, so a starting
        member answers with the fleet's drains from its first query when etcd is there."""
        self._task = asyncio.ensure_future(self._run())
        try:
            async with asyncio.timeout(2 * self.config.timeout):
                await self._synced.wait()
        except TimeoutError:
            self.log.warning(
                "fleet_start_unsynced",
                error=self.error,
                note="serving with the state file's drains; connecting in the background",
            )

    async def stop(self) -> None:
        """Leave: end the session and revoke the lease, so this member's votes go at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.lease and self.connected:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(self.lease)
        await self.client.close()

    def set_identity(self, identity: dict[str, Any]) -> None:
        """What this member serves (geodns.fleet.identity), after start and every reload; a
        reload may have added sites that the fleet's drains name, so decide again."""
        self.identity = dict(identity)
        self._dirty.set()
        self._apply()

    # -- drains ----------------------------------------------------------------------------

    async def drain(self, site: str, reason: str, by: str, duration_s: float | None) -> Drain:
        """Drain `site` for the whole fleet; returns once etcd has committed it."""
        await self._require_connected("drain")
        now = self.clock()
        drain = Drain(site, reason, by, now, now + duration_s if duration_s is not None else None)
        key = self._key("drains", site)
        value = json.dumps(drain.to_json(), sort_keys=True)
        try:
            lease = 0
            if duration_s is not None:
                lease = await self.client.grant(math.ceil(duration_s) + DRAIN_LEASE_GRACE)
            revision = await self.client.put(key, value, lease)
        except EtcdError as exc:
            raise FleetError(
                f"etcd did not confirm the drain ({exc}); it may or may not be recorded: "
                "see `geodns status`"
            ) from None
        self.log.info(
            "fleet_drain", site=site, reason=reason, by=by, until=drain.until, revision=revision
        )
        if self._learn(key, revision, value):
            self._apply()
        await self._save_copy()
        return drain

    async def undrain(self, site: str) -> Drain | None:
        """End the drain of `site` for the whole fleet; the drain that ended, or None."""
        await self._require_connected("undrain")
        before = self.monitor.health.drains.get(site)
        key = self._key("drains", site)
        try:
            revision, deleted = await self.client.delete(key)
        except EtcdError as exc:
            raise FleetError(
                f"etcd did not confirm the undrain ({exc}); it may or may not be recorded: "
                "see `geodns status`"
            ) from None
        self.log.info("fleet_undrain", site=site, revision=revision, was_drained=bool(deleted))
        if self._learn(key, revision, None):
            self._apply()
        await self._save_copy()
        return before if deleted else None

    async def _require_connected(self, order: str) -> None:
        """Refuse an order while etcd is out of reach; a reconnect already under way (a node
        stopped, the next one being tried) is waited for, up to one request timeout."""
        if self.connected:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.timeout):
                await self._up.wait()
                return
        since = time.strftime("%H:%M:%S", time.localtime(self.changed_at))
        raise FleetError(
            f"etcd is out of reach since {since} ({self.error}); this member keeps serving the "
            f"last fleet state it saw. Make the {order} through a member that reaches etcd, or "
            "again once etcd is back"
        )

    async def _save_copy(self) -> None:
        """This member's copy in its state file, for a restart while etcd is out of reach."""
        try:
            await self.monitor.save()
        except StateFileError as exc:  # etcd holds the change; only the local copy is behind
            self.log.error("fleet_state_copy_failed", error=str(exc))

    # -- the session -----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RETRY_MIN
        while True:
            self.sessions += 1
            synced = self.last_sync
            try:
                await self._session()
            except WatchCompacted as exc:  # read everything again, at once
                self.log.info("fleet_resync", reason=str(exc))
            except FleetError as exc:
                self._disconnected(str(exc))
            except Exception as exc:  # a bug here must not end the fleet for this member
                self.log.exception("fleet_error")
                self._disconnected(f"{type(exc).__name__}: {exc}")
            if self.last_sync != synced:  # this session had connected: start over quickly
                delay = RETRY_MIN
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _session(self) -> None:
        self.lease = await self._renewed_lease()
        await self._publish(force=True)
        revision, kvs = await self.client.get_prefix(self.prefix)
        self.kv = {kv.key: (kv.mod_revision, kv.value) for kv in kvs}
        self.last_sync = self.clock()
        self._apply()
        self._connected()
        tasks = [
            asyncio.ensure_future(self._watch(revision + 1)),
            asyncio.ensure_future(self._keep_lease()),
            asyncio.ensure_future(self._publisher()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # raises what ended the session
        raise EtcdUnavailable("the session with etcd ended")

    async def _renewed_lease(self) -> int:
        if self.lease and await self.client.keepalive(self.lease) > 0:
            return self.lease
        self._published = None  # a new lease: our record went with the old one
        return await self.client.grant(self.config.lease_ttl)

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_ttl / 3)
            if await self.client.keepalive(self.lease) <= 0:  # expired while we were away
                self.log.warning("fleet_lease_expired", lease=self.lease)
                self.lease = await self.client.grant(self.config.lease_ttl)
                self._published = None
                self._dirty.set()

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._publish()

    async def _publish(self, force: bool = False) -> None:
        record = {
            "member": self.name,
            "version": __version__,
            "started": self.started,
            "votes": self.votes,
            **self.identity,
        }
        text = json.dumps(record, sort_keys=True)
        if text == self._published and not force:
            return
        record["at"] = self.clock()
        value = json.dumps(record, sort_keys=True)
        key = self._key("members", self.name)
        revision = await self.client.put(key, value, self.lease)
        self._published = text
        self._learn(key, revision, value)

    async def _watch(self, start: int) -> None:
        async for _, events in self.client.watch(self.prefix, start):
            self.events += len(events)
            changed = False
            for event in events:
                value = event.value if event.kind == "put" else None
                changed = self._learn(event.key, event.mod_revision, value) or changed
                if value is not None and event.key == self._key("members", self.name):
                    self._check_name(value)
            if changed:
                self._apply()

    def _check_name(self, value: str) -> None:
        """Our record as etcd has it: written by another process, two members share a name."""
        try:
            started = json.loads(value).get("started")
        except (ValueError, AttributeError):
            return
        if started != self.started and self.name_clash is None:
            self.name_clash = (
                f"another process writes the record of member {self.name!r}: give every member "
                "its own fleet.member name"
            )
            self.log.error("fleet_name_clash", member=self.name, note=self.name_clash)

    def _learn(self, key: str, revision: int, value: str | None) -> bool:
        """Take a key's new value unless a newer one is known (a write's answer may arrive
        after the watch has already shown a later change of the same key)."""
        known = self.kv.get(key)
        if known is not None and known[0] >= revision:
            return False
        self.kv[key] = (revision, value)
        return True

    def _connected(self) -> None:
        if not self.connected:
            self.connected, self.changed_at = True, self.clock()
            self.log.info(
                "fleet_connected", member=self.name, endpoint=self.client.endpoint, lease=self.lease
            )
        self.error = None
        self._synced.set()
        self._up.set()

    def _disconnected(self, error: str) -> None:
        if self.connected or self.error != error:
            level = self.log.error if self.connected else self.log.warning
            level(
                "fleet_unreachable",
                member=self.name,
                error=error,
                note="fail static: serving the last fleet state seen, plus this member's probes",
            )
        if self.connected:
            self.connected, self.changed_at = False, self.clock()
        self._up.clear()
        self.error = error

    # -- what the fleet decides ------------------------------------------------------------

    def _local_changed(self) -> None:
        """The health monitor changed something: if our votes did, tell the fleet and decide again."""
        votes = self.monitor.health.own_votes()
        if votes != self.votes:
            self.votes = votes
            self._dirty.set()
            self._apply()

    def _apply(self) -> None:
        """Decide from what etcd holds (as last seen) and our live votes; hand it to the monitor."""
        drains: dict[str, Drain] = {}
        records: dict[str, dict[str, Any]] = {}
        sites = self.monitor.health.sites
        unknown = []
        for key, (revision, value) in self.kv.items():
            if value is None or not key.startswith(self.prefix):
                continue
            kind, _, name = key[len(self.prefix) :].partition("/")
            if kind not in ("drains", "members"):
                continue
            parsed = self._parse(key, revision, value)
            if parsed is None:
                continue
            if kind == "members":
                records[name] = parsed
                continue
            try:
                drain = Drain.from_json({**parsed, "site": name})
            except (KeyError, TypeError, ValueError) as exc:
                self._bad(key, revision, f"not a drain: {exc}")
                continue
            if name in sites:
                drains[name] = drain
            else:
                unknown.append(name)
        records[self.name] = {
            **records.get(self.name, {}),
            "member": self.name,
            "version": __version__,
            "started": self.started,
            "votes": self.votes,
            **self.identity,
        }
        self.records, self.drains, self.unknown_drains = records, drains, sorted(unknown)
        votes = {name: record.get("votes") or {} for name, record in records.items()}
        # before the first full read, keep the drains the state file had: nothing seen is not
        # "no drains" (a member starting while etcd is out of reach fails static too)
        known = drains if self.last_sync else None
        self.monitor.set_fleet(known, decide(votes, self.config.down_share))

    def _parse(self, key: str, revision: int, value: str) -> dict[str, Any] | None:
        if len(value) > MAX_RECORD_BYTES:
            self._bad(key, revision, f"larger than {MAX_RECORD_BYTES} bytes")
            return None
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            self._bad(key, revision, f"not JSON: {exc}")
            return None
        if not isinstance(parsed, dict):
            self._bad(key, revision, "not a JSON object")
            return None
        return parsed

    def _bad(self, key: str, revision: int, why: str) -> None:
        if (key, revision) not in self._bad_keys:  # said once per version of the key
            if len(self._bad_keys) >= MAX_BAD_KEYS:  # someone writes garbage in a loop
                self._bad_keys.clear()
            self._bad_keys.add((key, revision))
            self.log.error("fleet_bad_key", key=key, revision=revision, error=why)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}/{name}"

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The fleet as this member sees it (JSON-able): etcd, members, votes per site."""
        records = self.records
        members: dict[str, Any] = {}
        common = {
            field: _most_common([r.get(field) for r in records.values()], self.identity.get(field))
            for field in ("zones_digest", "config_digest")
        }
        for name, record in sorted(records.items()):
            differs = [
                field.removesuffix("_digest")
                for field, usual in common.items()
                if record.get(field) != usual
            ]
            members[name] = {
                "self": name == self.name,
                "reported": record.get("at"),
                "started": record.get("started"),
                "version": record.get("version"),
                "zones": record.get("zones") or {},
                "zones_digest": record.get("zones_digest"),
                "config_digest": record.get("config_digest"),
                "geoip_build": record.get("geoip_build"),
                "differs": differs,
            }
        sites: dict[str, Any] = {}
        shared = self.monitor.health.shared or {}
        for site in sorted(self.monitor.health.sites):
            votes = {
                name: (record.get("votes") or {}).get(site, {}).get("state")
                for name, record in sorted(records.items())
            }
            votes = {name: vote for name, vote in votes.items() if vote is not None}
            if not votes:
                continue
            verdict = shared.get(site)
            own = self.votes.get(site, {}).get("state")
            fleet = None if verdict is None else (DOWN if verdict.down else "up")
            sites[site] = {
                "fleet": fleet,
                "votes": votes,
                "down_votes": verdict.down_votes if verdict else 0,
                "voters": verdict.voters if verdict else 0,
                "own": own,
                "disagrees": fleet is not None and own in ("up", DOWN) and own != fleet,
            }
        return {
            "member": self.name,
            "etcd": {
                "connected": self.connected,
                "since": self.changed_at,
                "error": self.error,
                "endpoint": self.client.endpoint,
                "endpoints": list(self.config.endpoints),
                "last_sync": self.last_sync or None,
            },
            "mode": "connected" if self.connected else "fail static",
            "down_share": self.config.down_share,
            "lease_ttl": self.config.lease_ttl,
            "members": members,
            "sites": sites,
            "drains_of_unknown_sites": self.unknown_drains,
            "name_clash": self.name_clash,
        }


def client_for(config: FleetConfig) -> EtcdClient:
    """The etcd client the config describes: endpoints, TLS, credentials (read from files)."""
    context = None
    if any(p is not None for p in (config.ca_file, config.cert_file)) or any(
        e.startswith("https://") for e in config.endpoints
    ):
        try:
            context = ssl.create_default_context(
                cafile=str(config.ca_file) if config.ca_file else None
            )
            if config.cert_file is not None and config.key_file is not None:
                context.load_cert_chain(str(config.cert_file), str(config.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise _problem(f"fleet.tls: {exc}") from exc
    password = None
    if config.password_file is not None:
        password = _read(config.password_file, "fleet.password_file")
    return EtcdClient(
        config.endpoints,
        timeout=config.timeout,
        ssl_context=context,
        username=config.username,
        password=password,
    )


def _read(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise _problem(f"cannot read {what} {path}: {exc.strerror}") from exc
    if not text:
        raise _problem(f"{what} {path} is empty")
    return text


def _problem(message: str) -> ConfigError:
    return ConfigError([Problem("fleet", 0, message)])


def _most_common(values: list[Any], tie: Any) -> Any:
    """The value most members have; `tie` (ours) wins a tie."""
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    if not counts:
        return tie
    best = max(counts.values())
    return tie if counts.get(tie) == best else max(counts, key=lambda v: counts[v])

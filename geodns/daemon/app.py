"""Start-up, signals, reload and shutdown of `geodns serve`.

Start-up is all or nothing: the config and every zone are loaded before any socket is bound, so a
broken file stops the server with the same errors `geodns check` prints. A reload builds a new
snapshot beside the old one and swaps one reference; if anything is wrong the old one stays.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import signal
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from geodns import __version__
from geodns.common.errors import ConfigError, Problem
from geodns.common.logs import get_logger
from geodns.config.loader import open_geo, zone_files
from geodns.config.server import ServerConfig, load_config
from geodns.daemon import sdnotify
from geodns.daemon.admin import make_admin_app, start_admin
from geodns.daemon.workers import STATS_INTERVAL, PushedHealth, WorkerPool, worker_count
from geodns.fleet.identity import member_identity
from geodns.fleet.member import FleetMember
from geodns.fleet.metrics import FleetCollector
from geodns.geo.dynamic import records_all_down
from geodns.geo.locator import GeoLocator
from geodns.health.monitor import HealthMonitor
from geodns.health.state import HealthView
from geodns.observe.metrics import Metrics, worker_report
from geodns.observe.querylog import QueryLog
from geodns.serving import udpbatch
from geodns.serving.engine import Snapshot, build_snapshot
from geodns.serving.server import Observer, ServerState, TcpProtocol, UdpProtocol

log = get_logger("geodns")
GC_FULL_EVERY = 1000  # middle-generation collections between full ones (CPython: 10)
WATCH_INTERVAL = 1.0
WATCH_DEBOUNCE = 0.5


@dataclass
class ReloadStatus:
    """The outcome of the last reload, shown by `geodns status` and in metrics."""

    ok: bool = True
    last_success: float = field(default_factory=time.time)
    last_attempt: float = field(default_factory=time.time)
    errors: tuple[str, ...] = ()
    successes: int = 0
    failures: int = 0


class App:
    """One running server process: its config, its snapshot holder and its listeners.

    The main process (index 0) also runs the file watchers and the worker pool; a worker
    (index > 0) takes its health views and reload orders from the main process over `control`.
    """

    def __init__(
        self,
        config: ServerConfig,
        config_path: Path | None,
        index: int = 0,
        control: Connection | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.index = index
        self.control = control
        self.pool: WorkerPool | None = None
        self.worker_count = worker_count(config.workers)
        self.state: ServerState | None = None
        self.transports: list[Any] = []
        self.servers: list[asyncio.base_events.Server] = []
        self.stopping = asyncio.Event()
        self.reload_status = ReloadStatus()
        self.generation = 0
        self.reload_lock = asyncio.Lock()  # one reload at a time: SIGHUP, admin API, file watcher
        self.started = time.time()
        self.tasks: list[asyncio.Future[Any]] = []
        self.worker_stats: dict[int, Any] = {}
        self.monitor: HealthMonitor | None = None
        self.fleet: FleetMember | None = None
        self.admin: Any = None
        self.metrics: Metrics
        self.query_log: QueryLog | None = None
        self.geo: GeoLocator

    async def start(self) -> None:
        """Load everything, bind, and (main process) start health checks, workers, admin API."""
        config = self.config
        self.geo = open_geo(config)
        snapshot = build_snapshot(config, self.geo, generation=self.generation)
        if self.control is None:
            self.monitor = HealthMonitor(
                snapshot.sites, config.state_file, self._health_changed, log
            )
            snapshot = snapshot.with_health(self.monitor.view)  # restored states and drains
        self.state = ServerState(snapshot)
        self.metrics = Metrics(
            server_state=self.state,
            reload_status=lambda: self.reload_status,
            health_status=lambda: self.monitor.status()["sites"] if self.monitor else {},
            geo=lambda: self.geo,
            query_log=lambda: self.query_log,
            workers=lambda: list(self.worker_stats.values()),
            process=self.control is None,
        )
        if config.query_log.enabled:
            self.query_log = QueryLog(config.query_log, worker=self.index)
        if self.query_log is None:  # counting only: cached replies carry their counter slot
            self.state.count_with(self.metrics.counters)
        else:
            self.state.observer = _observer(self.metrics.observe, self.query_log)
        token = _read_token(config.admin.token_file) if self.control is None else None
        if self.monitor is not None and config.fleet is not None:
            await self._start_fleet(snapshot)
        await self._bind()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        if self.control is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the main process reloads us
            loop.add_reader(self.control.fileno(), self._control_message)
            self.control.send(("ready", None))
            self.tasks.append(asyncio.ensure_future(self._report_stats()))
            return
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        assert self.monitor is not None
        await self.monitor.start()
        if self.worker_count > 1 and self.config_path is not None:
            self.pool = WorkerPool(
                self.config_path, self.worker_count, self._worker_stats, run_worker
            )
            await self.pool.start()
            self.pool.broadcast("health", sorted(self.monitor.view.down))
        if config.admin.listen or config.admin.socket:
            self.admin = await start_admin(
                make_admin_app(
                    self.monitor,
                    self._admin_reload,
                    self._status,
                    self.metrics.render,
                    self.fleet,
                    public_metrics=config.admin.public_metrics,
                ),
                config.admin.listen,
                config.admin.socket,
                token,
            )
        log.info(
            "started",
            version=__version__,
            listen=list(self.config.listen),
            port=self.config.port,
            zones=sorted(snapshot.zones),
            zones_dir=str(self.config.zones_dir),
            workers=self.worker_count,
            geoip=str(self.geo.path),
            geoip_type=self.geo.database_type,
        )
        self.tasks.append(asyncio.ensure_future(self._watch_files()))
        self.tasks.append(asyncio.ensure_future(sdnotify.watchdog_loop()))
        settle_heap()
        sdnotify.ready(self._status_line())

    async def _start_fleet(self, snapshot: Snapshot) -> None:
        """Join the fleet before answering (bounded by fleet.timeout), so the first answers
        already follow the fleet's drains when etcd is reachable (geodns.fleet.member)."""
        assert self.monitor is not None and self.config.fleet is not None
        self.fleet = FleetMember(self.config.fleet, self.monitor, log=log)
        self.metrics.registry.register(FleetCollector(self.fleet))
        await self._fleet_identity(snapshot)
        await self.fleet.start()

    async def _fleet_identity(self, snapshot: Snapshot) -> None:
        """Tell the fleet what this member serves now: zone serials and digests."""
        if self.fleet is not None:
            self.fleet.set_identity(
                await asyncio.to_thread(
                    member_identity, self.config, snapshot.zones, self.geo.build_epoch
                )
            )

    def _status_line(self) -> str:
        assert self.state is not None
        zones = len(self.state.snapshot.zones)
        where = ", ".join(self.config.listen)
        return f"serving {zones} zone(s) on {where} port {self.config.port}, generation {self.generation}"

    def _health_changed(self, view: HealthView) -> None:
        """A new health view from the monitor: swap it in here and push it to the workers."""
        if self.state is None:
            return
        self.state.snapshot = self.state.snapshot.with_health(view)
        if self.pool is not None:
            self.pool.broadcast("health", sorted(view.down))
        for zone, owner, rtype, mode in records_all_down(self.state.snapshot, view.down):
            log.error("all_down", zone=zone, record=owner, type=rtype, answer=mode)

    async def _admin_reload(self) -> tuple[bool, list[str]]:
        ok = await self.reload("admin API")
        return ok, list(self.reload_status.errors)

    def _status(self) -> dict[str, Any]:
        """What GET /status (and `geodns status`) adds to the health monitor's report."""
        assert self.state is not None
        status = self.reload_status
        return {
            "version": __version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "workers": self.worker_count,
            "generation": self.generation,
            "zones": sorted(self.state.snapshot.zones),
            "geoip": {"path": str(self.geo.path), "type": self.geo.database_type},
            "last_reload": _reload_text(status),
            "reload": {
                "ok": status.ok,
                "last_success": status.last_success,
                "last_attempt": status.last_attempt,
                "errors": list(status.errors),
            },
            **({"fleet": self.fleet.status()} if self.fleet is not None else {}),
        }

    async def _report_stats(self) -> None:
        """A worker sends its counters to the main process once a second (for /metrics)."""
        assert self.control is not None
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            try:
                self.control.send(
                    ("stats", worker_report(self.metrics.counters, self.state, self.query_log))
                )
            except OSError:
                return

    def _control_message(self) -> None:
        """A worker's orders from the main process: new health view, reload, stop."""
        assert self.control is not None and self.state is not None
        try:
            kind, payload = self.control.recv()
        except (EOFError, OSError):  # the main process is gone: so are we
            asyncio.get_running_loop().remove_reader(self.control.fileno())
            self.stopping.set()
            return
        if kind == "health":
            self.state.snapshot = self.state.snapshot.with_health(PushedHealth(frozenset(payload)))
        elif kind == "reload":
            asyncio.ensure_future(self.reload("main process"))
        elif kind == "stop":
            self.stopping.set()

    def _worker_stats(self, index: int, stats: Any) -> None:
        """Counters a worker reports; the metrics endpoint adds them to the main process's."""
        self.worker_stats[index] = stats

    async def _watch_files(self) -> None:
        """Re-read the GeoIP database when it changes on disk, and the zones when they do."""
        zones_seen = self._zones_signature()
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if self.geo.changed_on_disk():
                await self.reload("geoip database changed")
            if self.config.watch_zones:
                signature = self._zones_signature()
                if signature != zones_seen:
                    await asyncio.sleep(WATCH_DEBOUNCE)  # let an editor or rsync finish
                    zones_seen = self._zones_signature()
                    await self.reload("zone files changed")

    def _zones_signature(self) -> tuple[tuple[str, int, int], ...]:
        try:
            paths = zone_files(self.config.zones_dir)
            return tuple((p.name, (st := p.stat()).st_mtime_ns, st.st_size) for p in paths)
        except OSError:
            return ()

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        state = self.state
        assert state is not None
        config = self.config
        shared = self.worker_count > 1  # SO_REUSEPORT only when we share ports on purpose
        bound = 0
        for address in config.listen:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            try:
                transport = await self._bind_udp(address, family, shared)
                server = await loop.create_server(
                    lambda: TcpProtocol(state, config.tcp_idle_timeout, config.tcp_max_connections),
                    host=address,
                    port=config.port,
                    family=family,
                    reuse_address=True,
                    reuse_port=shared,
                    backlog=1024,
                )
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno in (
                    errno.EADDRNOTAVAIL,
                    errno.EAFNOSUPPORT,
                ):
                    log.warning("listen_skipped", address=address, reason=exc.strerror)
                    continue
                raise
            self.transports.append(transport)
            self.servers.append(server)
            bound += 1
        if not bound:
            raise OSError(errno.EADDRNOTAVAIL, "no listen address could be bound")

    async def _bind_udp(self, address: str, family: int, shared: bool) -> Any:
        """A UDP listener: batched system calls where the platform has them (geodns.serving.udpbatch),
        asyncio's datagram transport otherwise or when `udp.batch` is 0."""
        loop = asyncio.get_running_loop()
        state = self.state
        assert state is not None
        port = self.config.port
        if self.config.udp_batch and udpbatch.available():
            listener = udpbatch.BatchedUdp(
                udpbatch.open_socket(address, port, family, shared),
                state,
                self.config.udp_batch,
            )
            listener.start(loop)
            return listener
        transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpProtocol(state),
            local_addr=(address, port),
            family=family,
            reuse_port=shared,
        )
        return transport

    async def reload(self, cause: str) -> bool:
        """Re-read config and zones; swap them in whole, or keep the old snapshot and say why."""
        self.reload_status.last_attempt = time.time()
        if self.index == 0:
            sdnotify.reloading(f"reloading: {cause}")
        try:
            async with self.reload_lock:
                return await self._reload(cause)
        finally:
            if self.index == 0:
                sdnotify.ready(self._status_line())

    def _build(self) -> tuple[ServerConfig, GeoLocator, Snapshot]:
        """Read config, zones and (if changed) the geo database into a new snapshot; no swap."""
        assert self.state is not None
        config = load_config(self.config_path) if self.config_path else self.config
        geo = self.geo
        if geo.changed_on_disk() or config.geoip_path != geo.path:
            geo = open_geo(config)
        snapshot = build_snapshot(config, geo, self.state.snapshot.health, self.generation + 1)
        return config, geo, snapshot

    async def _reload(self, cause: str) -> bool:
        try:
            # built in a thread so the event loop keeps answering from the old snapshot meanwhile
            config, geo, snapshot = await asyncio.to_thread(self._build)
            self.generation += 1
        except ConfigError as exc:
            self.reload_status.ok = False
            self.reload_status.failures += 1
            self.reload_status.errors = tuple(str(p) for p in exc.problems)
            log.error("reload_failed", cause=cause, errors=list(self.reload_status.errors))
            return False
        assert self.state is not None
        if (config.listen, config.port) != (self.config.listen, self.config.port):
            log.warning("reload_listen_unchanged", reason="listen addresses change on restart only")
        if self.monitor is not None:
            self.monitor.update_sites(snapshot.sites)  # stop removed sites' checks, start new ones
            snapshot = snapshot.with_health(self.monitor.view)
        else:  # a worker: keep the health the main process pushed while we were building
            snapshot = snapshot.with_health(self.state.snapshot.health)
        self.config = config
        old_geo, self.geo = self.geo, geo
        self.state.snapshot = snapshot
        settle_heap()
        if old_geo is not geo:
            old_geo.close()  # no query holds it: the loop is single-threaded and just swapped
        self.reload_status = ReloadStatus(
            ok=True,
            successes=self.reload_status.successes + 1,
            failures=self.reload_status.failures,
        )
        if self.pool is not None:
            self.pool.broadcast("reload")
        if self.fleet is not None:
            if config.fleet != self.fleet.config:
                log.warning(
                    "reload_fleet_unchanged", reason="fleet settings change on restart only"
                )
            await self._fleet_identity(snapshot)
        if self.index == 0:
            log.info(
                "reloaded", cause=cause, zones=sorted(snapshot.zones), generation=self.generation
            )
        return True

    async def stop(self) -> None:
        if self.index == 0:
            sdnotify.stopping("stopping")
        for task in self.tasks:
            task.cancel()
        if self.admin is not None:
            await self.admin.cleanup()
        if self.fleet is not None:
            await self.fleet.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        if self.pool is not None:
            await self.pool.stop()
        for transport in self.transports:
            transport.close()
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        if self.query_log is not None:
            self.query_log.close()
        if self.index == 0:
            log.info("stopped")


def settle_heap() -> None:
    """Keep the cyclic garbage collector's full collections off the query path.

    What start-up (or a reload) loaded, the zones, the database's places, the pre-encoded
    answers, is moved out of the collector's sight (`gc.freeze`; an old snapshot is still freed
    by reference counting when it is dropped). Young collections keep CPython's default
    pace, which keeps each one short (well under a millisecond); full collections, which would
    rescan every cached client network (over 100 ms with a few hundred thousand), wait for
    GC_FULL_EVERY young-generation rounds instead of 10. Measured in-process on a cold workload
    of 400,000 new client networks: mean 32 -> 19 us per query, worst pause 475 -> 6 ms.
    """
    gc.freeze()
    gc.set_threshold(700, 10, GC_FULL_EVERY)


async def serve(config: ServerConfig, config_path: Path | None) -> int:
    app = App(config, config_path)
    try:
        await app.start()
    except ConfigError:
        raise
    except OSError as exc:
        log.error("listen_failed", error=str(exc), port=config.port)
        return 1
    await app.stopping.wait()
    await app.stop()
    return 0


def _reload_text(status: ReloadStatus) -> str:
    """One line for `geodns status`: did the last reload work, and if not, why."""
    if status.ok:
        return "ok"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(status.last_attempt))
    more = f" (+{len(status.errors) - 1} more)" if len(status.errors) > 1 else ""
    first = status.errors[0] if status.errors else "unknown error"
    return f"FAILED at {when}, still serving the previous config: {first}{more}"


def _observer(counters: Observer, query_log: QueryLog) -> Observer:
    """The per-query observer when the query log is on: the metrics counters, then the log."""
    log_query = query_log.observe

    def both(query: Any, outcome: Any, client: str, transport: str) -> None:
        counters(query, outcome, client, transport)
        log_query(query, outcome, client, transport)

    return both


def _read_token(path: Path | None) -> str | None:
    """The admin token; an empty or unreadable token file stops the start (it must never mean
    "no authentication")."""
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            [Problem(str(path), 0, f"cannot read admin.token_file: {exc.strerror}")]
        ) from exc
    if not token:
        raise ConfigError(
            [
                Problem(
                    str(path),
                    0,
                    "admin.token_file is empty: that would turn the admin API's authentication "
                    "off; put a token in it (e.g. `openssl rand -hex 32 > FILE`) or remove "
                    "admin.token_file",
                )
            ]
        )
    return token


def _runner() -> Any:
    try:
        import uvloop  # a faster event loop where it is available

        return uvloop.run
    except ImportError:
        return asyncio.run


def run(config: ServerConfig, config_path: Path | None) -> int:
    return _runner()(serve(config, config_path))


def run_worker(config_path: Path, control: Connection, index: int) -> int:
    """A spawned worker: same config and zones, sockets shared with SO_REUSEPORT."""
    from geodns.common.logs import configure

    config = load_config(config_path)
    configure(config.log_level, config.log_format)

    async def main() -> int:
        app = App(config, config_path, index, control)
        try:
            await app.start()
        except (ConfigError, OSError) as exc:
            log.error("worker_start_failed", worker=index, error=str(exc))
            return 1
        await app.stopping.wait()
        await app.stop()
        return 0

    return _runner()(main())

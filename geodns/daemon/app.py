"""Start-up, signals, reload and shutdown of `geodns serve`.

Start-up is all or nothing: the config, every zone and the GeoIP database are loaded (and the
ports checked) before any socket is bound, so a broken file stops the server with the errors
`geodns check` prints. A change of any input builds the next snapshot beside the current one,
the expensive parts in a thread, and swaps one reference (geodns.serving.snapshot):
- a reload (SIGHUP, the admin API, a changed zone file or database): config, zones, and the
  database when it changed; if anything is wrong the old snapshot stays and says why;
- a health change: the answer maps of the shapes whose sites changed state;
- a new database's place index, built in a background process the first time a database is
  seen (geodns.geo.index): until it is ready that database answers through its direct locator.

The main process (index 0) also runs the health monitor, the admin API, the file watchers and
the worker pool; a worker (index > 0) takes its health views, reloads and index notices from
the main process over `control`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import importlib
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geodns import __version__
from geodns.common.caching import freeze_heap
from geodns.common.errors import ConfigError, GeodnsError, MapBuildError, Problem
from geodns.common.logs import get_logger
from geodns.common.memory import release_free_memory
from geodns.common.pipes import child_command, receive_message, send_message
from geodns.config.loader import admin_socket, cache_directory, load_geo, zone_files
from geodns.config.server import ServerConfig, load_config
from geodns.daemon import sdnotify
from geodns.daemon.mapbuilder import MapBuilder
from geodns.daemon.workers import (
    STATS_INTERVAL,
    ForkedWorkers,
    WorkerPool,
    fork_workers,
    release_forked,
    worker_count,
)
from geodns.dns.zone import Zone
from geodns.geo.answers import AnswerMap, Shape
from geodns.geo.dynamic import records_all_down
from geodns.geo.index import load_index, prune_cache
from geodns.geo.locator import Geo
from geodns.geo.sharedmaps import SharedMapsIn, SharedMapsOut, sharing_supported
from geodns.health.monitor import HealthMonitor
from geodns.health.state import HealthView
from geodns.observe.counters import QueryCounters, worker_report
from geodns.observe.dnstap import open_dnstap
from geodns.observe.querylog import QueryLog
from geodns.observe.spool import Spool
from geodns.serving import udpbatch
from geodns.serving.answer_path import Observer, ServerState
from geodns.serving.client import ClientFactory
from geodns.serving.cookies import CookieJar
from geodns.serving.rrl import ResponseRateLimiter
from geodns.serving.snapshot import (
    Snapshot,
    answer_maps,
    build_snapshot,
    retire,
    still_valid_maps,
)
from geodns.serving.transports import TcpProtocol, TcpRegistry, UdpProtocol

if TYPE_CHECKING:
    # imported where they are used, not here: the admin API and health probes (aiohttp), the
    # metrics (prometheus-client), DNSSEC (dnspython, cryptography) and the fleet are a third of
    # a start-up's time and 20 MB of every process; a worker never uses the admin API, the
    # metrics, the probes or the fleet, and a server
    # without DNSSEC never signs (docs/architecture.md, "Start-up")
    from geodns.dnssec.keys import ZoneKey
    from geodns.dnssec.rollover import Plan
    from geodns.fleet.member import FleetMember
    from geodns.observe.metrics import Metrics

log = get_logger("geodns")
GC_FULL_EVERY = 1000  # middle-generation collections between full ones (CPython: 10)
WATCH_INTERVAL = 1.0
WATCH_DEBOUNCE = 0.5
STOP_GRACE = 1.0  # seconds a stopping server gives open connections and tasks
WORKER_ENTRY = "geodns.daemon.app:run_worker"  # what a worker runs (workers.WorkerEntry)
DNSSEC_INTERVAL = 60.0  # seconds between looks at signature expiry and the key schedule
# How long a thread holding the GIL keeps it while another waits (CPython: 5 ms). A reload or a
# map rebuild runs in a thread; the event loop takes the GIL several times per query, and waited
# up to 5 ms each time: replies took 15-22 ms while a 10,000-name zone was read, 6-7 ms with
# 0.5 ms. Only matters while two threads want the GIL: a serving process has one otherwise.
SWITCH_INTERVAL = 0.0005


class PortInUse(GeodnsError):
    """A listen address and port is held by another process."""


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
    """One running server process: its config, its server state and its listeners."""

    def __init__(
        self,
        config: ServerConfig,
        config_path: Path | None,
        index: int = 0,
        control: Connection | None = None,
        cookie_secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
        forked: ForkedWorkers | None = None,
    ) -> None:
        self.config = config
        self.forked = forked or {}  # workers forked at start, for the pool (workers.fork_workers)
        self.clock = clock  # DNSSEC's notion of now (a test passes its own to roll keys)
        self.key_lock = threading.Lock()  # one key schedule step at a time (upkeep, reload)
        self.config_path = config_path
        self.index = index
        self.control = control
        self.cookie_secret = cookie_secret
        self.pool: WorkerPool | None = None
        self.worker_count = worker_count(config.workers)
        # the main process has its answer maps built by a child process and keeps their files
        # to hand to the workers (maps_out; None: no memory files here, it builds its own); a
        # worker builds none but takes those (maps_in; None: told to build its own)
        self.maps_out: SharedMapsOut | None = (
            SharedMapsOut() if control is None and sharing_supported() else None
        )
        self.map_builder = MapBuilder()
        self.sharing = True  # False once the workers were told to build their own maps
        self.maps_in: SharedMapsIn | None = SharedMapsIn() if control is not None else None
        self.state: ServerState | None = None
        self.geo: Geo | None = None
        self.transports: list[Any] = []
        self.servers: list[asyncio.base_events.Server] = []
        self.stopping = asyncio.Event()
        self.reload_status = ReloadStatus()
        self.generation = 0
        self.reload_lock = asyncio.Lock()  # one rebuild at a time: reloads, health, index
        self.started = time.time()
        self.tasks: list[asyncio.Future[Any]] = []
        self.worker_stats: dict[int, Any] = {}
        self.monitor: HealthMonitor | None = None
        self.fleet: FleetMember | None = None
        self.admin: Any = None
        self.admin_socket: str | None = None  # removed at stop
        self.counters = QueryCounters()  # the query path's counts (the main's and a worker's)
        self.metrics: Metrics | None = None  # GET /metrics, the main process's (see _metrics)
        self.query_log: QueryLog | None = None
        self.tcp: TcpRegistry | None = None
        self.receive_buffer_warned = False  # udp.receive_buffer capped: said once
        self.early_orders: list[tuple[str, Any]] = []  # a worker's orders read before binding
        self.index_build: asyncio.Future[Any] | None = None
        self.pending_down: frozenset[str] | None = None
        self.last_down: frozenset[str] = frozenset()  # a worker: the newest view it was sent
        self.index_ready_at: float | None = None
        self.failed_database: tuple[int, int, int] | None = None  # its stat signature
        self.dnstap: Spool | None = None
        self.sample_reported = 0  # a worker: its network sample's `added` at the last report
        # the zone files as they were when the snapshot in use was read from them: a change
        # made while a start or a reload reads them is seen by the watcher, not lost
        self.zones_seen: tuple[tuple[str, int, int], ...] = ()

    # -- start ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load everything, bind, and (main process) start health checks, workers, admin API."""
        config = self.config
        if self.control is None:
            check_ports_free(config)
        self.geo = await asyncio.to_thread(functools.partial(load_geo, config, apart=True))
        if self.control is None:  # indexes of databases no server has used for a month
            await asyncio.to_thread(prune_cache, cache_directory(config))
        down: frozenset[str] = frozenset()
        self.zones_seen = self._zones_signature()
        if self.control is None and config.dnssec:  # first start: make the zones' keys
            _log_key_steps(await asyncio.to_thread(self._keep_keys, config, {}, self.clock()))
        # every process answers before its answer maps are there (records are decided per
        # place meanwhile, as while a health change's maps are rebuilt): the main process
        # builds them next, and says READY=1 once they are; a worker is handed them by the
        # main process (geodns.geo.sharedmaps)
        snapshot = await asyncio.to_thread(
            functools.partial(
                build_snapshot, config, self.geo, down, 0, None, self.clock(), with_maps=False
            )
        )
        await asyncio.to_thread(release_free_memory)  # what the build freed
        if self.index == 0:
            _log_zone_warnings(snapshot)
        if self.control is None:
            self.monitor = HealthMonitor(snapshot.sites, config.state_file, self._health_changed)
            down = self.monitor.view.down  # restored states and drains
        else:
            down = self.last_down = self._handed_over_view()
        if down:
            snapshot = snapshot.with_view(down, self.geo, {})
        self.state = ServerState(
            snapshot,
            ResponseRateLimiter(config.rrl) if config.rrl.enabled else None,
            self._cookie_jar(),
        )
        clients = client_factory(config)
        self.tcp = TcpRegistry(config.tcp, clients)
        if config.query_log.enabled:
            self.query_log = QueryLog(config.query_log, worker=self.index)
        if config.dnstap.enabled:
            self.dnstap, self.state.tap = open_dnstap(config.dnstap, worker=self.index)
        if self.query_log is None:  # counting only: cached replies carry their counter slot
            self.state.count_with(self.counters)
        else:
            self.state.observer = _observer(self.counters.observe, self.query_log)
        token = _read_token(config.admin.token_file) if self.control is None else None
        if self.monitor is not None and config.fleet is not None:
            await self._start_fleet(snapshot)
        await self._bind(clients)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        if self.control is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the main process reloads us
            loop.add_reader(self.control.fileno(), self._control_message)
            for kind, payload in self.early_orders:
                self._obey(kind, payload)
            self.early_orders.clear()
            send_message(self.control, "ready", None)
            self.tasks.append(asyncio.ensure_future(self._report_stats()))
            self.tasks.append(asyncio.ensure_future(self._dnssec_upkeep()))
            settle_heap()
            return
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        assert self.monitor is not None
        self.pending_down = self.monitor.view.down
        first_maps = asyncio.ensure_future(self._apply_pending())  # see above: READY waits
        self.tasks.append(first_maps)
        # the bound sockets answer while the modules of the probes and the admin API load
        await asyncio.to_thread(_import_main_modules)
        await self.monitor.start()
        if self.worker_count > 1 and self.config_path is not None:
            self.pool = WorkerPool(
                self.config_path,
                self.worker_count,
                self._worker_stats,
                WORKER_ENTRY,
                self.state.cookies.secret if self.state.cookies else None,
                on_failed=self.stopping.set,
                forked=self.forked,
            )
            self.pool.latest["health"] = sorted(self.monitor.view.down)  # handed over at spawn
            await self.pool.start()
            self.pool.broadcast("health", sorted(self.monitor.view.down))
            if self.maps_out is None:  # no memory files to share: each builds its own
                self.sharing = False
                self.pool.broadcast("maps", None)
            if not self.reload_lock.locked():  # a build under way shares its own when done
                self._share_maps()  # (its maps, received and not yet swapped in, stay open)
        socket_path = admin_socket(config)
        if config.admin.listen or socket_path:
            from geodns.daemon.admin import (
                DEFAULT_SOCKET_MODE,
                SOCKET_MODE,
                make_admin_app,
                parse_listen,
                start_admin,
            )
            from geodns.daemon.console import ConsoleSource

            metrics = self._metrics()
            try:
                self.admin = await start_admin(
                    make_admin_app(
                        self.monitor,
                        self._admin_reload,
                        self._status,
                        metrics.render,
                        ConsoleSource(
                            lambda: self.state.snapshot if self.state is not None else None,
                            lambda: self.counters.sample,
                            metrics.collector.answers_by_site,
                        ),
                        self.fleet,
                        public_metrics=config.admin.public_metrics,
                    ),
                    config.admin.listen,
                    socket_path,
                    token,
                    SOCKET_MODE if config.admin.socket else DEFAULT_SOCKET_MODE,
                )
            except OSError as exc:
                if exc.errno is None:  # the socket: another server's, or not a socket
                    raise PortInUse(str(exc)) from None
                host, port = parse_listen(config.admin.listen or ":0")
                raise _bind_error(exc, host, "admin API, tcp", port) from None
            self.admin_socket = socket_path
        self._start_index_build()
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
            geo_index=self.geo.index is not None,
        )
        self.tasks.append(asyncio.ensure_future(self._watch_files()))
        self.tasks.append(asyncio.ensure_future(self._dnssec_upkeep()))
        self.tasks.append(asyncio.ensure_future(sdnotify.watchdog_loop()))
        await first_maps
        settle_heap()
        sdnotify.ready(self._status_line())

    def _cookie_jar(self) -> CookieJar | None:
        settings = self.config.cookies
        if not settings.enabled:
            return None
        secret = self.cookie_secret
        if settings.secret_file is not None:
            secret = read_cookie_secret(settings.secret_file)
        return CookieJar(secret)

    def _metrics(self) -> Metrics:
        """What GET /metrics serves (the main process's only: a worker sends its counts to the
        main process). Made, and prometheus-client imported, when the admin API starts, once
        the server answers: a fifth of the imports a start would make before it."""
        if self.metrics is None:
            from geodns.observe.dnssec_metrics import DnssecCollector
            from geodns.observe.metrics import Metrics

            self.metrics = Metrics(
                counters=self.counters,
                server_state=self.state,
                reload_status=lambda: self.reload_status,
                health_status=lambda: self.monitor.status()["sites"] if self.monitor else {},
                geo=lambda: self.geo,
                query_log=lambda: self.query_log,
                workers=lambda: list(self.worker_stats.values()),
                dnstap=lambda: self.dnstap,
                process=self.control is None,
            )
            state = self.state
            assert state is not None
            collector = DnssecCollector(lambda: state.snapshot.signed, self.clock)
            self.metrics.registry.register(collector)
        return self.metrics

    async def _start_fleet(self, snapshot: Snapshot) -> None:
        """Join the fleet before answering (bounded by fleet.timeout), so the first answers
        already follow the fleet's drains when etcd is reachable (geodns.fleet.member)."""
        from geodns.fleet.member import FleetMember
        from geodns.fleet.metrics import FleetCollector

        assert self.monitor is not None and self.config.fleet is not None
        self.fleet = FleetMember(self.config.fleet, self.monitor)
        self._metrics().registry.register(FleetCollector(self.fleet))
        await self._fleet_identity(snapshot)
        await self.fleet.start()

    async def _fleet_identity(self, snapshot: Snapshot) -> None:
        """Tell the fleet what this member serves now: zone serials and digests."""
        from geodns.fleet.identity import member_identity

        if self.fleet is not None:
            self.fleet.set_identity(
                await asyncio.to_thread(
                    member_identity,
                    self.config,
                    snapshot.zones,
                    snapshot.geo.build_epoch if snapshot.geo is not None else 0,
                )
            )

    def _status_line(self) -> str:
        assert self.state is not None
        zones = len(self.state.snapshot.zones)
        where = ", ".join(self.config.listen)
        return f"serving {zones} zone(s) on {where} port {self.config.port}, generation {self.generation}"

    async def _bind(self, clients: ClientFactory) -> None:
        loop = asyncio.get_running_loop()
        state, registry = self.state, self.tcp
        assert state is not None and registry is not None
        config = self.config
        shared = self.worker_count > 1  # SO_REUSEPORT only when our workers share the ports
        bound = 0
        for address in config.listen:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            try:
                transport = await self._bind_udp(address, family, shared, clients)
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno in (
                    errno.EADDRNOTAVAIL,
                    errno.EAFNOSUPPORT,
                ):
                    log.warning("listen_skipped", address=address, reason=exc.strerror)
                    continue
                raise _bind_error(exc, address, "udp", config.port) from None
            try:
                server = await loop.create_server(
                    lambda: TcpProtocol(state, registry),
                    host=address,
                    port=config.port,
                    family=family,
                    reuse_address=True,
                    reuse_port=shared,
                    backlog=1024,
                )
            except OSError as exc:
                transport.close()
                raise _bind_error(exc, address, "tcp", config.port) from None
            self.transports.append(transport)
            self.servers.append(server)
            bound += 1
        if not bound:
            raise OSError(errno.EADDRNOTAVAIL, "no listen address could be bound")

    async def _bind_udp(
        self, address: str, family: int, shared: bool, clients: ClientFactory
    ) -> Any:
        """A UDP listener: batched system calls where the platform has them (geodns.serving.
        udpbatch), asyncio's datagram transport otherwise or when `udp.batch` is 0; either
        with the receive buffer `udp.receive_buffer` asks for (warned once when capped)."""
        loop = asyncio.get_running_loop()
        state = self.state
        assert state is not None
        port = self.config.port
        listener: Any
        if self.config.udp_batch and udpbatch.available():
            sock = udpbatch.open_socket(address, port, family, shared)
            listener = udpbatch.BatchedUdp(sock, state, self.config.udp_batch, clients)
            listener.start(loop)
        else:
            listener, _ = await loop.create_datagram_endpoint(
                lambda: UdpProtocol(state, clients),
                local_addr=(address, port),
                family=family,
                reuse_port=shared,
            )
            sock = listener.get_extra_info("socket")
        wanted = self.config.udp_receive_buffer
        got = udpbatch.set_receive_buffer(sock, wanted)
        if got < wanted and not self.receive_buffer_warned:
            self.receive_buffer_warned = True
            log.warning(
                "udp_receive_buffer_capped",
                wanted=wanted,
                got=got,
                hint="raise the sysctl net.core.rmem_max (docs/operations.md)",
            )
        return listener

    # -- rebuilding the snapshot ---------------------------------------------------------------

    def _swap(self, snapshot: Snapshot) -> None:
        """Serve `snapshot` from the next query on; the old one is emptied and freed in a thread
        (geodns.serving.snapshot.retire), not on the event loop, and the heap's free pages are
        then handed back (its caches can hold tens of MB: trimmed before they were emptied, the
        process kept them)."""
        assert self.state is not None
        old, self.state.snapshot = self.state.snapshot, snapshot
        settle_heap()
        if old is not snapshot:
            asyncio.get_running_loop().run_in_executor(None, _retire, [old], snapshot)
            del old  # the thread holds the last reference, so it frees what is left too

    def _health_changed(self, view: HealthView) -> None:
        """A new health view from the monitor: rebuild the affected answer maps off the event
        loop, then swap; push it to the workers at once (they do the same)."""
        if self.state is None:
            return
        if self.pool is not None:
            self.pool.broadcast("health", sorted(view.down))
        self._apply_down(view.down)
        for zone, owner, rtype, mode in records_all_down(self.state.snapshot.zones, view.down):
            log.error("all_down", zone=zone, record=owner, type=rtype, answer=mode)

    def _apply_down(self, down: frozenset[str]) -> None:
        """Swap in a health view at once, with the answer maps it leaves valid (records of the
        others are decided per place meanwhile): a drain is answered by the next query, even
        while a rebuild or a reload holds the lock (a drain acknowledged with 200 was then
        still answered the old way for as long as the rebuild took). The maps it needs are
        rebuilt by a task; views that arrive meanwhile are coalesced (the newest wins)."""
        self._swap_view(down)
        waiting = self.pending_down is not None
        self.pending_down = down
        if not waiting:
            self.tasks.append(asyncio.ensure_future(self._apply_pending()))

    def _swap_view(self, down: frozenset[str]) -> list[Shape]:
        """Swap in `down` with the maps still valid under it (milliseconds); the stale shapes."""
        assert self.state is not None
        current = self.state.snapshot
        shapes = set(current.shapes.values())
        kept, stale = still_valid_maps(current.geo, shapes, down, current.maps)
        if current.down != down or len(kept) != len(current.maps):
            self._swap(current.with_view(down, current.geo, kept))
        return stale

    async def _apply_pending(self) -> None:
        """Rebuild, off the event loop, the answer maps the newest view needs, and swap them
        in (the view itself was swapped in by _apply_down; a reload that held the lock
        meanwhile may have swapped in its own snapshot, so the view is applied again first)."""
        async with self.reload_lock:
            while self.pending_down is not None:
                assert self.state is not None
                down = self.pending_down
                self.pending_down = None
                stale = self._swap_view(down)
                if not stale or self.pending_down is not None:
                    continue  # a newer view is waiting: rebuild for that one instead
                current = self.state.snapshot  # with `down` and the maps that hold under it
                shapes = set(current.shapes.values())
                maps = await asyncio.to_thread(self._maps, current.geo, shapes, down, current.maps)
                if self.pending_down is None and self.state.snapshot.down == down:
                    self._swap(self.state.snapshot.with_view(down, current.geo, maps))
                    self._share_maps()
                await asyncio.to_thread(release_free_memory)  # the build's temporaries

    def _under_newest_view(self, snapshot: Snapshot) -> Snapshot:
        """`snapshot` under the newest health view this process was given: one that came
        while it was built (a drain during a reload or an index switch) is not undone by its
        swap. Only the maps that hold under that view are kept; `_apply_down`, run when the
        view came, left the rebuild of the others pending."""
        down = self.monitor.view.down if self.monitor is not None else self.last_down
        if down == snapshot.down:
            return snapshot
        kept, _ = still_valid_maps(snapshot.geo, snapshot.shapes.values(), down, snapshot.maps)
        return snapshot.with_view(down, snapshot.geo, kept)

    def _maps(
        self,
        geo: Geo | None,
        shapes: Iterable[Shape],
        down: frozenset[str],
        previous: Mapping[Shape, AnswerMap] | None,
    ) -> dict[Shape, AnswerMap]:
        """`answer_maps` as this process makes them (blocking: run in a thread). The main
        process has a child build those that do not hold (geodns.daemon.mapbuilder), or
        builds them itself where it cannot (as does a worker told to); a worker takes the
        main process's shared maps that fit, and builds none (records without one are decided
        per place until it arrives)."""
        if self.maps_in is not None:
            return answer_maps(geo, shapes, down, self._with_shared(geo, previous), build=False)
        index = geo.index if geo is not None else None
        maps_out = self.maps_out
        if maps_out is None or index is None or index.directory is None:
            return answer_maps(geo, shapes, down, previous)  # (an index not in the cache)
        shapes = set(shapes)
        kept, stale = still_valid_maps(geo, shapes, down, previous)
        if not stale:
            return kept
        try:
            built = maps_out.receive_built(self.map_builder.build(index, stale, down), index)
        except Exception as exc:  # a child that failed, a set that cannot be read: build here
            if self.map_builder.stopped:  # stopping: what holds, nothing built
                return kept
            error = str(exc) if isinstance(exc, MapBuildError) else f"{type(exc).__name__}: {exc}"
            log.warning("answer_maps_built_here", error=error, maps=len(stale))
            return answer_maps(geo, shapes, down, previous)
        candidates = {**(previous or {}), **built}
        kept, missing = still_valid_maps(geo, shapes, down, candidates)
        if missing:  # (the child builds exactly what it was asked for: never seen)
            log.warning("answer_maps_built_here", error="missing from the set", maps=len(missing))
            return answer_maps(geo, shapes, down, candidates)
        return kept

    def _with_shared(
        self, geo: Geo | None, previous: Mapping[Shape, AnswerMap] | None
    ) -> dict[Shape, AnswerMap]:
        """`previous`, then the shared maps of `geo`'s place index, for still_valid_maps to
        choose from: it takes the first that holds for a shape (shape key, states, index), so
        a map in service that still holds stays the very object it is, and a set handed over
        again swaps nothing (a swap empties the caches)."""
        found = dict(previous or {})
        if self.maps_in is not None and geo is not None:
            found.update(self.maps_in.for_index(geo.index))  # (keyed by the main's shapes)
        return found

    def _share_maps(self) -> None:
        """The main process, after a swap that brought maps: keep the files of the maps now
        in service (closing the others') and, with workers, hand them those (a map it built
        itself gets its sealed memory file now, geodns.geo.sharedmaps). Where none can be
        made, the workers are told to build their own, and sharing stops."""
        if self.maps_out is None or self.state is None:
            return
        in_service = self.state.snapshot.maps.values()
        if self.pool is None or not self.sharing:
            self.maps_out.update(in_service, share=False)
            return
        try:
            files = self.maps_out.update(in_service)
        except OSError as exc:  # (a map built here, copied for the workers: no memory file)
            log.warning("answer_maps_not_shared", error=str(exc), workers="build their own")
            self.sharing = False
            self.pool.broadcast("maps", None)
            return
        self.pool.broadcast("maps", files)

    async def _take_maps(self) -> None:
        """A worker: swap in the maps the main process just shared (or, told to build its
        own, build them), under the reload lock, so a reload or health change that is building
        meanwhile is followed, not undone."""
        async with self.reload_lock:
            assert self.state is not None
            current = self.state.snapshot
            shapes = list(current.shapes.values())
            maps = await asyncio.to_thread(
                self._maps, current.geo, shapes, current.down, current.maps
            )
            if self.state.snapshot is current and maps != current.maps:
                self._swap(current.with_view(current.down, current.geo, maps))

    async def _dnssec_upkeep(self) -> None:
        """Every DNSSEC_INTERVAL: the key schedule, and signing when it is due."""
        while self.config.dnssec:
            try:
                await self.keep_dnssec()
            except Exception as exc:  # the current signatures keep serving; tried again later
                log.error("dnssec_upkeep_failed", error=str(exc))
            await asyncio.sleep(DNSSEC_INTERVAL)

    def _keep_keys(
        self, config: ServerConfig, zones: Mapping[str, Zone], now: float
    ) -> list[tuple[str, Plan, list[ZoneKey]]]:
        """One step of every signed zone's key schedule (in a thread; never two at once)."""
        from geodns.serving.signing import keep_all_keys

        with self.key_lock:
            return list(keep_all_keys(config, zones, now))

    async def keep_dnssec(self) -> bool:
        """One step of DNSSEC upkeep at `self.clock()`: the main process runs each signed
        zone's key schedule (it alone writes key files); every process then signs its zones
        again, off the event loop, when signatures near expiry, a key changes state or the key
        files changed. Returns whether a newly signed snapshot was swapped in."""
        from geodns.serving.signing import sign_zones, signing_due

        assert self.state is not None
        config, now = self.config, self.clock()
        if self.control is None:
            zones = self.state.snapshot.zones
            _log_key_steps(await asyncio.to_thread(self._keep_keys, config, zones, now))
        async with self.reload_lock:
            current = self.state.snapshot
            due = signing_due(current.signed, config, now)
            if not due:
                return False
            signed = await asyncio.to_thread(sign_zones, config, current.zones, now, current.signed)
            self._swap(self.state.snapshot.with_signatures(signed))
        for origin in due.zones:
            zone = signed[origin]
            log.info(
                "dnssec_signed",
                zone=origin,
                zsk=zone.keys.zsk.tag,
                made=zone.made,
                reused=zone.reused,
                seconds=round(zone.seconds, 3),
            )
        return True

    def _start_index_build(self) -> None:
        """The first start with a new database: build its place index in a background process
        (niced), then switch every process to it."""
        geo = self.geo
        if geo is None or geo.index is not None or self.index_build is not None:
            return
        directory = cache_directory(self.config)
        self.index_build = asyncio.ensure_future(self._build_index(geo.path, directory))

    async def _build_index(self, path: Path, directory: Path) -> None:
        """Build the place index in a child process (`python -m geodns.geo.index`, niced), so
        that the build neither holds the event loop nor the GIL; killed if we stop first."""
        started = time.perf_counter()
        command, environment = child_command("geodns.geo.index", str(path), str(directory))
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
        )
        try:
            output, errors = await process.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        finally:
            self.index_build = None
        if process.returncode != 0:  # the direct locator keeps serving; the next reload retries
            error = errors.decode(errors="replace").strip().splitlines()
            log.error(
                "geo_index_failed",
                path=str(path),
                exitcode=process.returncode,
                error=error[-1] if error else "",
            )
            return
        digest = output.decode().strip()
        seconds = time.perf_counter() - started
        if await self._use_index(directory, digest):
            log.info("geo_index_ready", path=str(path), seconds=round(seconds, 3))
            if self.pool is not None:
                self.pool.broadcast("index", digest)

    async def _use_index(self, directory: Path, digest: str) -> bool:
        """Switch to the cached index of the database in use (if it still is the one)."""
        async with self.reload_lock:
            assert self.state is not None
            geo = self.geo
            if geo is None or geo.index is not None:
                return False
            if await asyncio.to_thread(lambda: geo.digest) != digest:  # (a hash, the first time)
                return False
            index = await asyncio.to_thread(load_index, directory, digest)
            if index is None:
                return False
            new_geo = geo.with_index(index)
            current = self.state.snapshot
            maps = await asyncio.to_thread(
                self._maps, new_geo, current.shapes.values(), current.down, None
            )
            self.geo = new_geo
            self._swap(self._under_newest_view(current.with_view(current.down, new_geo, maps)))
            self._share_maps()  # before the workers are told of the index
            geo.close()
            self.index_ready_at = time.time()
        await asyncio.to_thread(release_free_memory)  # the build's temporaries, the old maps
        return True

    async def _admin_reload(self) -> tuple[bool, list[str]]:
        ok = await self.reload("admin API")
        return ok, list(self.reload_status.errors)

    async def reload(self, cause: str) -> bool:
        """Re-read config, zones and (if changed) the database; swap them in whole, or keep the
        old snapshot and say why."""
        self.reload_status.last_attempt = time.time()
        if self.index == 0:
            sdnotify.reloading(f"reloading: {cause}")
        try:
            async with self.reload_lock:
                return await self._reload(cause)
        finally:
            if self.index == 0:
                sdnotify.ready(self._status_line())

    def _build(self) -> tuple[ServerConfig, Geo, Snapshot]:
        """Read config, zones and (if changed) the database into a new snapshot; no swap."""
        assert self.state is not None and self.geo is not None
        config = load_config(self.config_path) if self.config_path else self.config
        geo = self.geo
        if config.geoip_path != geo.path or geo.changed_on_disk():
            geo = load_geo(config, current=geo, apart=True)
        current = self.state.snapshot
        in_use = current.geo.index if current.geo is not None else None
        same_index = geo.index is not None and geo.index is in_use
        previous = current.maps if geo is current.geo or same_index else None
        now = self.clock()
        if self.control is None and config.dnssec:  # a zone newly signed gets its keys
            _log_key_steps(self._keep_keys(config, current.zones, now))
        snapshot = build_snapshot(
            config,
            geo,
            current.down,
            self.generation + 1,
            previous,
            now,
            current.signed,
            in_use=current,
            make_maps=self._maps,
        )
        return config, geo, snapshot

    async def _reload(self, cause: str) -> bool:
        began = time.monotonic()
        try:
            self.zones_seen = self._zones_signature()
            # built in a thread so the event loop keeps answering from the old snapshot meanwhile
            config, geo, snapshot = await asyncio.to_thread(self._build)
            self.generation += 1
        except ConfigError as exc:
            if self.geo is not None and self.geo.changed_on_disk():
                self.failed_database = _signature(self.geo.path)
            self.reload_status.ok = False
            self.reload_status.failures += 1
            self.reload_status.errors = tuple(str(p) for p in exc.problems)
            log.error("reload_failed", cause=cause, errors=list(self.reload_status.errors))
            return False
        assert self.state is not None
        if self.index == 0:
            _log_zone_warnings(snapshot)
        if (config.listen, config.port) != (self.config.listen, self.config.port):
            log.warning("reload_listen_unchanged", reason="listen addresses change on restart only")
        if self.monitor is not None:
            self.monitor.update_sites(snapshot.sites)  # stop removed sites' checks, start new ones
            down = self.monitor.view.down
            if down != snapshot.down:
                maps = await asyncio.to_thread(
                    self._maps, geo, snapshot.shapes.values(), down, snapshot.maps
                )
                snapshot = snapshot.with_view(down, geo, maps)
        self.config = config
        old_geo, self.geo = self.geo, geo
        self._swap(self._under_newest_view(snapshot))
        if old_geo is not None and old_geo is not geo:
            old_geo.close()  # no query holds it: the loop is single-threaded and just swapped
        self.reload_status = ReloadStatus(
            ok=True,
            successes=self.reload_status.successes + 1,
            failures=self.reload_status.failures,
        )
        self._share_maps()  # first: the workers' reloads take the new ones
        if self.pool is not None:
            self.pool.broadcast("reload")
        if self.fleet is not None:
            if config.fleet != self.fleet.config:
                log.warning(
                    "reload_fleet_unchanged", reason="fleet settings change on restart only"
                )
            await self._fleet_identity(snapshot)
        if self.index == 0:
            self._start_index_build()
            log.info(
                "reloaded",
                cause=cause,
                zones=sorted(snapshot.zones),
                generation=self.generation,
                seconds=round(time.monotonic() - began, 3),  # from reading the files to serving
            )
        # the build's pages, once the workers have been told to reload (the old snapshot's
        # are handed back once it is emptied: _retire)
        await asyncio.to_thread(release_free_memory)
        return True

    # -- status, stats, workers ----------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        """What GET /status (and `geodns status`) adds to the health monitor's report."""
        assert self.state is not None and self.geo is not None
        status = self.reload_status
        snapshot = self.state.snapshot
        return {
            "version": __version__,
            # answer maps in service (one per record shape), and the shapes whose records are
            # decided per place while their map is built (a start, a health change, a reload
            # with new shapes)
            "answer_maps": len(snapshot.maps),
            "answer_maps_pending": snapshot.maps_pending(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "workers": self.worker_count,
            "generation": self.generation,
            "zones": sorted(self.state.snapshot.zones),
            "geoip": {
                "path": str(self.geo.path),
                "type": self.geo.database_type,
                "index": "ready" if self.geo.index is not None else "building",
            },
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
            sample = self.counters.sample
            report = worker_report(
                self.counters, self.state, self.query_log, self.dnstap, self.sample_reported
            )
            self.sample_reported = sample.added
            try:
                send_message(self.control, "stats", report)
            except OSError:  # the main process is gone, or the stream is out of step
                self.stopping.set()  # (it starts us again if it is there)
                return

    def _handed_over_view(self) -> frozenset[str]:
        """A worker: the health view the main process sent with the secret (its drains and down
        sites), read before the worker binds, so a worker started or restarted after a drain
        never answers without it. Orders that follow it wait for the event loop's reader."""
        assert self.control is not None
        down: frozenset[str] = frozenset()
        while not self.early_orders and self.control.poll(0):
            kind, payload = receive_message(self.control)
            if kind == "health":
                down = frozenset(payload)
            else:
                self.early_orders.append((kind, payload))
        return down

    def _control_message(self) -> None:
        """A worker's orders from the main process: new health view, reload, index, stop."""
        assert self.control is not None and self.state is not None
        try:
            kind, payload = receive_message(self.control)
        except (EOFError, OSError):  # the main process is gone: so are we
            asyncio.get_running_loop().remove_reader(self.control.fileno())
            self.stopping.set()
            return
        except Exception:  # not a message (a stream out of step): stop, to be started again
            log.exception("worker_order_unreadable", worker=self.index)
            asyncio.get_running_loop().remove_reader(self.control.fileno())
            self.stopping.set()
            return
        self._obey(kind, payload)

    def _obey(self, kind: str, payload: Any) -> None:
        if kind == "health":
            self.last_down = frozenset(payload)
            self._apply_down(self.last_down)
        elif kind == "reload":
            asyncio.ensure_future(self.reload("main process"))
        elif kind == "index":
            asyncio.ensure_future(self._use_index(cache_directory(self.config), payload))
        elif kind == "maps":
            if payload is None:  # the main process cannot share them: build our own
                self.maps_in = None
            elif self.maps_in is not None:
                try:
                    self.maps_in.receive(payload)
                except (OSError, ValueError) as exc:  # then the next set; decided per place
                    log.error("answer_maps_not_received", error=str(exc))
            else:  # building our own already: the files are not needed
                for descriptor in payload:
                    os.close(descriptor)
            asyncio.ensure_future(self._take_maps())
        elif kind == "stop":
            self.stopping.set()

    def _worker_stats(self, index: int, stats: Any) -> None:
        """Counters a worker reports; the metrics endpoint adds them to the main process's.
        Its newly sampled networks join the main process's sample (the console's)."""
        if isinstance(stats, dict):
            self.counters.sample.add(stats.pop("sample", ()))
        self.worker_stats[index] = stats

    async def _watch_files(self) -> None:
        """Re-read the GeoIP database when it changes on disk, and the zones when they do."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if self._database_changed():
                await asyncio.sleep(WATCH_DEBOUNCE)  # let a copy finish
                await self.reload("geoip database changed")
            if self.config.watch_zones and self._zones_signature() != self.zones_seen:
                await asyncio.sleep(WATCH_DEBOUNCE)  # let an editor or rsync finish
                # unless a reload asked for meanwhile (`geodns reload`, SIGHUP) read it already
                if self._zones_signature() != self.zones_seen:
                    await self.reload("zone files changed")  # takes the new signature

    def _database_changed(self) -> bool:
        """The database file is not the one in use, nor one that already failed to load (a
        copy in progress or a broken file is tried once, then again when it changes)."""
        geo = self.geo
        if geo is None or not geo.changed_on_disk():
            return False
        return _signature(geo.path) != self.failed_database

    def _zones_signature(self) -> tuple[tuple[str, int, int], ...]:
        try:
            paths = zone_files(self.config.zones_dir)
            return tuple((p.name, (st := p.stat()).st_mtime_ns, st.st_size) for p in paths)
        except OSError:
            return ()

    # -- stop ------------------------------------------------------------------------------------

    async def _stop_health(self) -> None:
        """Leave the fleet (its votes go with the lease), then stop the checks."""
        if self.fleet is not None:
            await self.fleet.stop()
        if self.monitor is not None:
            await self.monitor.stop()

    async def stop(self) -> None:
        """Stop serving within about STOP_GRACE seconds: listeners first, then everything else."""
        if self.index == 0:
            sdnotify.stopping("stopping")
        self.map_builder.stop()  # a build in a thread would hold the stop until it ended
        for transport in self.transports:
            transport.close()
        for server in self.servers:
            server.close()
        if self.tcp is not None:
            self.tcp.close_all()
        for task in self.tasks:
            task.cancel()
        steps: list[Awaitable[Any]] = []
        if self.index_build is not None:
            self.index_build.cancel()  # kills the build process
            steps.append(self.index_build)
        if self.admin is not None:
            steps.append(self.admin.cleanup())
        steps.append(self._stop_health())
        if self.pool is not None:
            steps.append(self.pool.stop())
        if self.forked:  # forked, never taken by a pool: a start that failed
            steps.append(asyncio.to_thread(release_forked, dict(self.forked), STOP_GRACE))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE + 1.0):
                await asyncio.gather(*steps, return_exceptions=True)
        if self.maps_out is not None:
            self.maps_out.close()
        if self.admin_socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.admin_socket)
        if self.query_log is not None:
            self.query_log.close()
        if self.dnstap is not None:
            self.dnstap.close()
        if self.index == 0:
            log.info("stopped")


def check_ports_free(config: ServerConfig) -> None:
    """Refuse to start on an address and port another process holds: bound exclusively (no
    SO_REUSEPORT) for a moment, each listen address on UDP and TCP. Without this, a second
    geodns with `workers` above 1 would share the port through SO_REUSEPORT and silently take
    half the traffic, with its own drains."""
    for address in config.listen:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        for kind, name in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
            with socket.socket(family, kind) as probe:
                if kind == socket.SOCK_STREAM:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((address, config.port))
                except OSError as exc:
                    if family == socket.AF_INET6 and exc.errno in (
                        errno.EADDRNOTAVAIL,
                        errno.EAFNOSUPPORT,
                    ):
                        break
                    raise _bind_error(exc, address, name, config.port) from None


def _bind_error(exc: OSError, address: str, protocol: str, port: int) -> PortInUse | OSError:
    where = f"{address} port {port} ({protocol})"
    if exc.errno == errno.EADDRINUSE:
        return PortInUse(
            f"{where} is already in use by another process (another geodns?); "
            "stop it or choose another listen address or port"
        )
    if exc.errno == errno.EACCES:
        return PortInUse(
            f"{where}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        )
    return OSError(exc.errno, f"{where}: {exc.strerror}")


def client_factory(config: ServerConfig) -> ClientFactory:
    rrl = config.rrl
    exempt = tuple(ipaddress.ip_network(text, strict=False) for text in rrl.exempt)
    return ClientFactory(exempt, rrl.prefix_v4, rrl.prefix_v6)


def read_cookie_secret(path: Path) -> bytes:
    """A cookie secret file: 32 hex digits (16 octets), as `openssl rand -hex 16` writes them."""
    try:
        text = path.read_text(encoding="ascii").strip()
        secret = bytes.fromhex(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [Problem(str(path), 0, f"cookies.secret_file: cannot read 32 hex digits: {exc}")]
        ) from None
    if len(secret) != 16:
        raise ConfigError(
            [Problem(str(path), 1, f"cookies.secret_file: expected 16 octets, got {len(secret)}")]
        )
    return secret


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def settle_heap() -> None:
    """Keep the cyclic garbage collector's full collections off the query path.

    What start-up (or a reload) loaded, the zones, the prepared answers, the maps, is moved out
    of the collector's sight (`freeze_heap`: gc.freeze; an old snapshot is still freed by
    reference counting when it is dropped). Young collections keep CPython's default pace, which keeps
    each one short; full collections, which would rescan every cached reply, wait for
    GC_FULL_EVERY young-generation rounds instead of 10.
    """
    freeze_heap()
    gc.set_threshold(700, 10, GC_FULL_EVERY)


async def serve(
    config: ServerConfig, config_path: Path | None, forked: ForkedWorkers | None = None
) -> int:
    app = App(config, config_path, forked=forked)
    try:
        await app.start()
    except ConfigError:
        await app.stop()
        raise
    except (OSError, GeodnsError) as exc:
        if app.stopping.is_set():  # asked to stop while starting (systemctl stop): a worker
            await app.stop()  # the stop's signal ended cannot start; that is no failure
            return 0
        log.error("start_failed", error=str(exc))  # a port in use, a key directory, ...
        await app.stop()
        return 1
    await app.stopping.wait()
    await app.stop()
    return 1 if app.pool is not None and app.pool.failed else 0


def _import_main_modules() -> None:
    """Import what only the main process runs after binding: the health probes and the admin
    API with its console (aiohttp, a third of a start-up) and its metrics (prometheus-client).
    Run in a thread, so that the first queries are answered meanwhile; the later imports of
    these modules are then free."""
    for module in (
        "geodns.health.probes",
        "geodns.daemon.admin",
        "geodns.daemon.console",
        "geodns.observe.metrics",
        "geodns.observe.dnssec_metrics",
    ):
        importlib.import_module(module)


def _retire(holder: list[Snapshot], current: Snapshot) -> None:
    """Empty the snapshot in `holder` (taken out of it, so that it is freed here when this
    drops it), then return the heap's free pages to the system."""
    old = holder.pop()
    retire(old, current)
    del old
    release_free_memory()


def _log_key_steps(steps: list[tuple[str, Plan, list[ZoneKey]]]) -> None:
    """One `dnssec_keys` event per zone whose keys changed (made, retiring, removed): the
    first keys at start too, so the log says when to copy the key directory (docs/dnssec.md)."""
    for origin, step, keys in steps:
        if not step.empty:
            log.info(
                "dnssec_keys",
                zone=origin,
                made=[
                    f"{k.role} publish={k.publish:.0f} active={k.activate:.0f}" for k in step.new
                ],
                retiring=[k.label for k in step.update],
                removed=[k.label for k in step.delete],
                keys=[k.label for k in keys],
            )


def _log_zone_warnings(snapshot: Snapshot) -> None:
    """One log event per doubt the zone files raised (a skipped record, a zone without NS...):
    `geodns check` prints the same ones."""
    for zone in snapshot.zones.values():
        for problem in zone.warnings:
            log.warning("zone_warning", warning=str(problem))


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

    def both(query: Any, outcome: Any, client: str, transport: str, size: int, path: int) -> None:
        counters(query, outcome, client, transport, size, path)
        log_query(query, outcome, client, transport, size, path)

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


def _runner() -> Callable[..., Any]:
    try:
        import uvloop  # a faster event loop where it is available

        return uvloop.run
    except ImportError:
        return asyncio.run


def run(config: ServerConfig, config_path: Path | None) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL)
    count = worker_count(config.workers)
    forked = None
    if count > 1 and config_path is not None:  # before any loop or thread: see fork_workers
        forked = fork_workers(count, WORKER_ENTRY, config_path)
    result: int = _runner()(serve(config, config_path, forked))
    return result


def run_worker(
    config_path: Path, control: Connection, index: int, cookie_secret: bytes | None = None
) -> int:
    """A spawned worker: same config and zones, sockets shared with SO_REUSEPORT."""
    from geodns.common.logs import configure

    config = load_config(config_path)
    configure(config.log_level, config.log_format, worker=index)
    sys.setswitchinterval(SWITCH_INTERVAL)

    async def main() -> int:
        app = App(config, config_path, index, control, cookie_secret)
        try:
            await app.start()
        except (ConfigError, OSError, GeodnsError) as exc:
            log.error("worker_start_failed", worker=index, error=str(exc))
            return 1
        await app.stopping.wait()
        await app.stop()
        return 0

    result: int = _runner()(main())
    return result

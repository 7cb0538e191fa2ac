"""Start-up, signals, reload and shutdown of `geodns serve`.

Start-up is all or nothing: the config and every zone are loaded before any socket is bound, so a
broken file stops the server with the same errors `geodns check` prints. A reload builds a new
snapshot beside the old one and swaps one reference; if anything is wrong the old one stays.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geodns import __version__
from geodns.config import ServerConfig, load_config
from geodns.errors import ConfigError
from geodns.geo import GeoLocator
from geodns.loader import build_snapshot, open_geo, zone_files
from geodns.logs import get_logger
from geodns.server import ServerState, TcpProtocol, UdpProtocol

log = get_logger("geodns")
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
    """One running server: its config, its snapshot holder and its listeners."""

    def __init__(self, config: ServerConfig, config_path: Path | None) -> None:
        self.config = config
        self.config_path = config_path
        self.state: ServerState | None = None
        self.transports: list[Any] = []
        self.servers: list[asyncio.base_events.Server] = []
        self.stopping = asyncio.Event()
        self.reload_status = ReloadStatus()
        self.generation = 0
        self.started = time.time()
        self.tasks: list[asyncio.Future[Any]] = []
        self.geo: GeoLocator

    async def start(self) -> None:
        self.geo = open_geo(self.config)
        snapshot = build_snapshot(self.config, self.geo, generation=self.generation)
        self.state = ServerState(snapshot)
        await self._bind()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        log.info(
            "started",
            version=__version__,
            listen=list(self.config.listen),
            port=self.config.port,
            zones=sorted(snapshot.zones),
            zones_dir=str(self.config.zones_dir),
            geoip=str(self.geo.path),
            geoip_type=self.geo.database_type,
        )
        self.tasks.append(asyncio.ensure_future(self._watch_files()))

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
        assert self.state is not None
        config = self.config
        bound = 0
        for address in config.listen:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: UdpProtocol(self.state),
                    local_addr=(address, config.port),
                    family=family,
                )
                server = await loop.create_server(
                    lambda: TcpProtocol(
                        self.state, config.tcp_idle_timeout, config.tcp_max_connections
                    ),
                    host=address,
                    port=config.port,
                    family=family,
                    reuse_address=True,
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

    async def reload(self, cause: str) -> bool:
        """Re-read config and zones; swap them in whole, or keep the old snapshot and say why."""
        self.reload_status.last_attempt = time.time()
        try:
            config = load_config(self.config_path) if self.config_path else self.config
            geo = self.geo
            if geo.changed_on_disk() or config.geoip_path != geo.path:
                geo = open_geo(config)
            self.generation += 1
            snapshot = build_snapshot(config, geo, self.state.snapshot.health, self.generation)
        except ConfigError as exc:
            self.reload_status.ok = False
            self.reload_status.failures += 1
            self.reload_status.errors = tuple(str(p) for p in exc.problems)
            log.error("reload_failed", cause=cause, errors=list(self.reload_status.errors))
            return False
        assert self.state is not None
        if (config.listen, config.port) != (self.config.listen, self.config.port):
            log.warning("reload_listen_unchanged", reason="listen addresses change on restart only")
        self.config = config
        old_geo, self.geo = self.geo, geo
        self.state.snapshot = snapshot
        if old_geo is not geo:
            old_geo.close()  # no query holds it: the loop is single-threaded and just swapped
        self.reload_status = ReloadStatus(
            ok=True,
            successes=self.reload_status.successes + 1,
            failures=self.reload_status.failures,
        )
        log.info("reloaded", cause=cause, zones=sorted(snapshot.zones), generation=self.generation)
        return True

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for transport in self.transports:
            transport.close()
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        log.info("stopped")


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


def run(config: ServerConfig, config_path: Path | None) -> int:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(serve(config, config_path))

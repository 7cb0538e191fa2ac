"""Extra DNS worker processes sharing the listening ports with SO_REUSEPORT.

CPython runs one query at a time per process, so `workers: N` starts N-1 extra processes beside
the main one; the kernel spreads packets and connections over them. Only the main process runs
health checks, drains, the admin API and the file watchers: it pushes every new health view and
every reload to the workers over a pipe, so probes are not multiplied by N and a drain reaches
every worker in milliseconds. Workers report their query counters back once a second for the
metrics endpoint.

Workers are spawned (not forked): each is a fresh interpreter that loads the same config and
zones, which keeps asyncio, uvloop and the MaxMind reader free of fork hazards.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from geodns.common.errors import WorkerError
from geodns.common.logs import get_logger

log = get_logger("geodns.daemon.workers")
WorkerEntry = Callable[[Path, Connection, int, bytes | None], int]
"""What a worker process runs: (config path, pipe to the main process, worker index, the DNS
cookie secret shared by every process) -> exit code."""
STATS_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class PushedHealth:
    """The part of the health view a worker needs: which sites must not be answered."""

    down: frozenset[str]


def worker_count(configured: int) -> int:
    """`workers: 0` (the default) means one per core this process may run on: the CPU affinity
    mask, so `taskset`, systemd's CPUAffinity= and container cpusets are respected."""
    if configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class WorkerPool:
    """The main process's handle on its workers: start, broadcast, collect stats, stop."""

    def __init__(
        self,
        config_path: Path,
        count: int,
        on_stats: Callable[[int, Any], None],
        entry: WorkerEntry,
        cookie_secret: bytes | None = None,
    ) -> None:
        self.config_path = config_path
        self.entry = entry
        self.cookie_secret = cookie_secret  # handed over in memory, never on a command line
        self.count = count
        self.on_stats = on_stats
        self.processes: list[Any] = []
        self.connections: list[Connection] = []
        self.ready = 0
        self.stopping = False

    async def start(self, timeout: float = 60.0) -> None:
        """Spawn the workers and wait until each has bound its sockets and loaded the zones."""
        context = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        for index in range(1, self.count):
            parent, child = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(self.entry, str(self.config_path), child, index, self.cookie_secret),
                name=f"geodns-worker-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            self.processes.append(process)
            self.connections.append(parent)
            loop.add_reader(parent.fileno(), self._receive, index, parent)
        deadline = loop.time() + timeout
        while self.ready < self.count - 1:
            if loop.time() > deadline:
                raise WorkerError("workers did not start in time")
            dead = [p for p in self.processes if p.exitcode is not None]
            if dead:
                raise WorkerError(f"worker exited during start-up with code {dead[0].exitcode}")
            await asyncio.sleep(0.05)

    def _receive(self, index: int, connection: Connection) -> None:
        try:
            kind, payload = connection.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(connection.fileno())
            if not self.stopping:
                log.error("worker_lost", worker=index)
            return
        if kind == "ready":
            self.ready += 1
        elif kind == "stats":
            self.on_stats(index, payload)

    def broadcast(self, kind: str, payload: Any = None) -> None:
        for connection in self.connections:
            try:
                connection.send((kind, payload))
            except OSError:
                continue

    async def stop(self) -> None:
        self.stopping = True
        self.broadcast("stop")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        for process in self.processes:
            while process.is_alive() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if process.is_alive():
                process.kill()
        for connection in self.connections:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(connection.fileno())
            connection.close()


def worker_main(
    entry: WorkerEntry,
    config_path: str,
    connection: Connection,
    index: int,
    cookie_secret: bytes | None,
) -> None:
    """Entry point of a spawned worker process: `entry` (a module-level function, pickled by
    name, so the worker imports the server only once spawned) runs the worker's server."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    raise SystemExit(entry(Path(config_path), connection, index, cookie_secret))

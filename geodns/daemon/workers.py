"""Extra DNS worker processes sharing the listening ports with SO_REUSEPORT.

CPython runs one query at a time per process, so `workers: N` starts N-1 extra processes beside
the main one; the kernel spreads packets and connections over them. Only the main process runs
health checks, drains, the admin API and the file watchers: it pushes every new health view and
every reload to the workers over a pipe, so probes are not multiplied by N and a drain reaches
every worker in milliseconds. It also hands them the answer maps a child built for it
(geodns.daemon.mapbuilder), as the sealed memory files it maps itself, over the same pipe
(geodns.geo.sharedmaps): the machine holds one copy, and workers build none and never import
numpy. Workers report their query counters back once a second for the metrics endpoint. The
pipe's messages and files: geodns.common.pipes.

Workers are forked by the main process at start, before it loads anything or runs an event
loop or a thread (fork_workers): each then waits for the pool's first order, and loads the
config, the zones and the database itself, as a started one does. The interpreter and the
modules the main process had imported (about 20 MB) stay one copy where neither process
writes them (about 6 MB stay shared under traffic: the two processes' PSS is 7 MB lower in
all than with a started worker, measured). A forked worker is named `geodns-workerN` (what
ps, top and pgrep show: its command line is the main process's). A worker that dies is
started afresh, a new interpreter (`python -m geodns.daemon.workers`), not forked from a
process that runs an event loop and threads.
They are plain child processes with one end of a socket pair, not `multiprocessing` ones:
multiprocessing's start methods add a resource-tracker process (13 MB) beside them. A worker
asks the kernel to stop it when the main process dies (PR_SET_PDEATHSIG), and stops when its
pipe closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn, Protocol

from geodns.common.errors import WorkerError
from geodns.common.logs import get_logger
from geodns.common.pipes import (
    bound_pipe,
    child_command,
    name_process,
    receive_message,
    send_message,
    stop_with_parent,
)

log = get_logger("geodns.daemon.workers")
WorkerEntry = Callable[[Path, Connection, int, bytes | None], int]
"""What a worker process runs: (config path, pipe to the main process, worker index, the DNS
cookie secret shared by every process) -> exit code."""
STATS_INTERVAL = 1.0
RESTART_DELAY = 0.5  # seconds before a dead worker is started again
MAX_RESTARTS = 5  # deaths within RESTART_WINDOW before the pool gives up
RESTART_WINDOW = 60.0
REPLAYED = ("health", "index", "maps")  # state messages a (re)started worker is sent once ready


@dataclass(frozen=True, slots=True)
class PushedHealth:
    """The part of the health view a worker needs: which sites must not be answered."""

    down: frozenset[str]


class WorkerProcess(Protocol):
    """What the pool reads of a worker process: a subprocess.Popen's, or a ForkedWorker's."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class ForkedWorker:
    """A worker forked by the main process at start (fork_workers): the main process is its
    parent, so it is waited for by its pid, which no other process can take before it is
    reaped here (signals never reach a stranger)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: gone, its status unknown
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.poll() is None:  # not reaped: the pid is still this worker's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


ForkedWorkers = dict[int, tuple[ForkedWorker, socket.socket]]
"""Workers forked at start, by index: the process and the main process's end of its pipe."""


def fork_workers(count: int, entry: str, config_path: Path) -> ForkedWorkers:
    """Fork the workers 1..count-1 now, before the main process loads anything or starts an
    event loop or a thread: each waits for the pool's first order, then runs `entry` as a
    started worker does. What the main process imported (the interpreter's modules, 20 MB)
    is then one copy for all of them, where each started worker held its own (copy-on-write:
    the collector is kept off those objects by gc.freeze, so their pages stay shared). A
    worker that dies later is started afresh (WorkerPool._spawn). Nothing is forked where fork
    is not available."""
    forked: ForkedWorkers = {}
    if not hasattr(os, "fork") or threading.active_count() > 1:  # (only a lone thread forks)
        return forked
    gc.collect()
    gc.freeze()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    parent_pid = os.getpid()
    for index in range(1, count):
        ours, theirs = socket.socketpair()
        bound_pipe(ours)
        bound_pipe(theirs)
        try:
            pid = os.fork()
        except OSError:  # (a pids limit: the pool starts the others when it starts)
            ours.close()
            theirs.close()
            break
        if pid == 0:
            ours.close()
            _run_forked(entry, config_path, index, theirs, parent_pid, forked)
        theirs.close()
        forked[index] = (ForkedWorker(pid), ours)
    return forked


def release_forked(forked: ForkedWorkers, grace: float) -> None:
    """Let go of workers forked at start that no pool took (the start failed): their pipes
    close, so they end; each is reaped, killed if it is still there after `grace` seconds."""
    for _, end in forked.values():
        end.close()
    for process, _ in forked.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
            continue
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1.0)


def _run_forked(
    entry: str,
    config_path: Path,
    index: int,
    end: socket.socket,
    parent: int,
    siblings: ForkedWorkers,
) -> NoReturn:
    """A forked worker's life: never returns into the main process's code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    code = 1
    try:
        for _, sibling_end in siblings.values():  # the main process's ends of the others' pipes
            sibling_end.close()
        name_process(f"geodns-worker{index}")
        code = _work(entry, str(config_path), index, end.detach(), parent, forked=True)
    except SystemExit as exc:  # (SystemExit() is a success, SystemExit("text") a failure)
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is None:
            code = 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


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
    """The main process's handle on its workers: start, broadcast, collect stats, restart a
    worker that died, stop.

    A worker that dies (a bug, the OOM killer) is started again after RESTART_DELAY, and is
    sent the latest health view and index notice once it is ready, so it answers as the others
    do. More than MAX_RESTARTS deaths within RESTART_WINDOW seconds mean something is wrong
    with every start: the pool gives up and `failed` is set, and the main process exits with
    an error so that systemd restarts the whole server (and says so).
    """

    def __init__(
        self,
        config_path: Path,
        count: int,
        on_stats: Callable[[int, Any], None],
        entry: str,
        cookie_secret: bytes | None = None,
        on_failed: Callable[[], None] | None = None,
        forked: ForkedWorkers | None = None,
    ) -> None:
        self.config_path = config_path
        self.entry = entry  # "module:function", a WorkerEntry the worker imports
        self.cookie_secret = cookie_secret  # handed over in memory, never on a command line
        self.count = count
        self.on_stats = on_stats
        self.on_failed = on_failed
        self.forked = forked or {}  # forked at start, taken by the first _spawn of each
        self.processes: dict[int, WorkerProcess] = {}
        self.connections: dict[int, Connection] = {}
        self.ready: set[int] = set()
        self.latest: dict[str, Any] = {}  # kind -> payload of the state messages a worker needs
        self.deaths: list[float] = []
        self.restarts = 0
        self.failed = False
        self.stopping = False

    async def start(self, timeout: float = 60.0) -> None:
        """Spawn the workers and wait until each has bound its sockets and loaded the zones."""
        loop = asyncio.get_running_loop()
        for index in range(1, self.count):
            self._spawn(index)
        deadline = loop.time() + timeout
        while len(self.ready) < self.count - 1:
            if loop.time() > deadline:
                raise WorkerError("workers did not start in time")
            dead = [p for p in self.processes.values() if p.poll() is not None]
            if dead:
                raise WorkerError(f"worker exited during start-up with code {dead[0].returncode}")
            await asyncio.sleep(0.05)

    def _spawn(self, index: int) -> None:
        """Take worker `index` forked at start, or start it (again) as a new interpreter: the
        forked one if it is still there to take its first orders (a stop's signal to the whole
        process group, or the OOM killer, may have ended it while the main process started)."""
        process: WorkerProcess
        ready = self.forked.pop(index, None)
        if ready is not None:  # forked at start, waiting for its first order
            process, end = ready
            connection = Connection(end.detach())
            try:
                self._first_orders(connection)
            except OSError:  # it is gone: its place is taken by a started one
                connection.close()
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=1)
            else:
                self._adopt(index, process, connection)
                return
        parent, child = socket.socketpair()
        bound_pipe(parent)
        bound_pipe(child)
        command, environment = child_command(
            "geodns.daemon.workers",
            self.entry,
            str(self.config_path),
            str(index),
            str(child.fileno()),
            str(os.getpid()),
        )
        with child:
            process = subprocess.Popen(command, pass_fds=(child.fileno(),), env=environment)
        connection = Connection(parent.detach())
        self._first_orders(connection)
        self._adopt(index, process, connection)

    def _first_orders(self, connection: Connection) -> None:
        send_message(connection, "secret", self.cookie_secret)  # never on a command line
        if "health" in self.latest:  # applied before it binds: it never answers a stale view
            send_message(connection, "health", self.latest["health"])

    def _adopt(self, index: int, process: WorkerProcess, connection: Connection) -> None:
        self.processes[index] = process
        self.connections[index] = connection
        asyncio.get_running_loop().add_reader(connection.fileno(), self._receive, index, connection)

    def _receive(self, index: int, connection: Connection) -> None:
        try:
            kind, payload = receive_message(connection)
        except (EOFError, OSError):
            loop = asyncio.get_running_loop()
            loop.remove_reader(connection.fileno())
            connection.close()
            self.ready.discard(index)
            if not self.stopping:
                loop.call_later(RESTART_DELAY, self._restart, index)
            return
        if kind == "ready":
            self.ready.add(index)
            if self.stopping:  # (the maps' files may be closed already)
                return
            for state_kind, state in self.latest.items():  # what it missed while starting
                self._send(index, state_kind, state)
        elif kind == "stats":
            self.on_stats(index, payload)

    def _restart(self, index: int) -> None:
        """A worker died: reap it, and start it again unless workers keep dying."""
        if self.stopping:
            return
        process = self.processes[index]
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1)  # reap: no zombie stays behind (its pipe closed: it is ending)
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW] + [now]
        log.error("worker_lost", worker=index, exitcode=process.returncode)
        if len(self.deaths) > MAX_RESTARTS:
            self.failed = True
            log.error("workers_failing", deaths=len(self.deaths), window_s=RESTART_WINDOW)
            if self.on_failed is not None:
                self.on_failed()
            return
        self.restarts += 1
        self._spawn(index)
        log.info("worker_restarted", worker=index)

    def broadcast(self, kind: str, payload: Any = None) -> None:
        if kind in REPLAYED:
            self.latest[kind] = payload
        for index in list(self.connections):
            self._send(index, kind, payload)

    def _send(self, index: int, kind: str, payload: Any) -> None:
        """One order; a "maps" order's payload is its files (see send_message)."""
        connection = self.connections.get(index)
        if connection is None or connection.closed:
            return
        try:
            if kind == "maps" and payload is not None:  # the count on the pipe, then the files
                send_message(connection, kind, len(payload), payload)
            else:
                send_message(connection, kind, payload)
        except OSError as exc:
            # cut short (a full pipe past its timeout, files refused): the stream may be out
            # of step, so the worker is stopped; its pipe closes and the pool starts it again
            if self.stopping:  # (a worker ending before its "stop" arrived: nothing to say)
                return
            log.error("worker_order_failed", worker=index, order=kind, error=str(exc))
            process = self.processes.get(index)
            if process is not None and process.poll() is None:
                process.terminate()

    async def stop(self) -> None:
        self.stopping = True
        self.broadcast("stop")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        for process in self.processes.values():
            while process.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1)
        for connection in self.connections.values():
            if not connection.closed:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(connection.fileno())
                connection.close()


def worker_main(argv: list[str]) -> int:
    """A worker process: `python -m geodns.daemon.workers ENTRY CONFIG INDEX FD PARENT`
    (started as pipes.child_command says). ENTRY is the "module:function" of a WorkerEntry
    (imported here, so the worker loads the server only once started); FD its end of the
    socket pair, whose first message is the cookie secret; PARENT the main process's pid."""
    entry_name, config_path, index, descriptor, parent = argv
    return _work(entry_name, config_path, int(index), int(descriptor), int(parent))


def _work(
    entry_name: str,
    config_path: str,
    index: int,
    descriptor: int,
    parent: int,
    forked: bool = False,
) -> int:
    """A worker, started or forked, from its pipe's first order (a forked one waits for it as
    long as the main process takes to start: the pipe's timeouts bound a message, not that)."""
    stop_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # and when to reload
    if forked:
        waiting = select.poll()
        waiting.register(descriptor, select.POLLIN)
        waiting.poll()  # (the main process ending ends us: stop_with_parent)
    connection = Connection(descriptor)
    try:
        kind, secret = receive_message(connection)
    except EOFError:  # the main process stopped before it needed us (its start failed)
        return 0
    if kind != "secret":
        raise WorkerError(f"expected the cookie secret first, got {kind!r}")
    module, _, function = entry_name.partition(":")
    entry: WorkerEntry = getattr(importlib.import_module(module), function)
    return entry(Path(config_path), connection, index, secret)


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))

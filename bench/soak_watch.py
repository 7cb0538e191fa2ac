"""Watching the server while the soak runs: its memory, its log, its counters, its life.

- RSS of every process (the main one and each worker) every `rss_interval_s`, from /proc.
- The log, read as it is written: lines, bytes, error lines per second, tracebacks
  (soak_report.classify_log_line says what counts).
- geodns's /metrics every second (the health state the server believes in, and at the end the
  RRL / cookie / TCP families); gdnsd's `gdnsdctl states` likewise.
- A supervisor: when the main process dies, the death is recorded with how it ended and what
  the soak was doing then, the right GeoIP database is put back and the server started again,
  so the other cases go on being measured. A worker that disappears is recorded too.
- CPU: the server's (from /proc) and the rest of the machine's, so a reader can tell a loss
  caused by the server from one caused by a neighbour.
- The kernel's side of the server's sockets every second: UDP datagrams dropped because a
  receive buffer was full (the server did not read them in time: a query lost before the
  server saw it, whoever sent it) and connections waiting in the TCP listen queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import soak_report as report
from .procstat import CLOCK_TICKS, SocketQueues, cpu_seconds, machine_jiffies, socket_queues
from .soak_churn import GeoipFile, health_state
from .soak_plan import Clock, Plan
from .soak_servers import ServerUnderTest, signal_name


@dataclass
class LogWatch:
    """Reads every log file of the server from where it stopped last time."""

    kind: str
    offsets: dict[Path, int] = field(default_factory=dict)
    partial: dict[Path, bytes] = field(default_factory=dict)
    lines: int = 0
    bytes: int = 0
    error_lines: int = 0
    tracebacks: int = 0
    errors_per_s: list[int] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def read(self, files: list[Path]) -> int:
        """Take in what was written since the last call; the error lines among it."""
        errors = 0
        for path in files:
            try:
                with path.open("rb") as handle:
                    handle.seek(self.offsets.get(path, 0))
                    chunk = handle.read(64 << 20)
            except OSError:
                continue
            self.offsets[path] = self.offsets.get(path, 0) + len(chunk)
            self.bytes += len(chunk)
            data = self.partial.pop(path, b"") + chunk
            *complete, rest = data.split(b"\n")
            if rest:
                self.partial[path] = rest
            for raw in complete:
                line = raw.decode("utf-8", "replace")
                is_error, tracebacks = report.classify_log_line(line, self.kind)
                self.lines += 1
                self.tracebacks += tracebacks
                if is_error:
                    errors += 1
                    if len(self.examples) < 5:
                        self.examples.append(line[:400])
        self.error_lines += errors
        return errors

    def result(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "bytes": self.bytes,
            "error_lines": self.error_lines,
            "tracebacks": self.tracebacks,
            "errors_per_s": self.errors_per_s,
            "examples": self.examples,
        }


@dataclass
class CpuWatch:
    """CPU seconds of the server's processes and of the machine, between start() and stop()."""

    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    machine: tuple[int, int] = (0, 0)
    own: float = 0.0
    began: float = 0.0

    @staticmethod
    def _own() -> float:
        usage = [
            resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        ]
        return sum(u.ru_utime + u.ru_stime for u in usage)

    def start(self, pids: list[int], clock: Clock) -> None:
        self.machine = machine_jiffies()
        self.own = self._own()
        self.began = clock.now()
        self.sample(pids)
        self.first = dict(self.last)

    def sample(self, pids: list[int]) -> None:
        for pid in pids:
            seconds = cpu_seconds([pid])
            if seconds or pid in self.last:
                self.last[pid] = max(seconds, self.last.get(pid, 0.0))

    def result(self, clock: Clock) -> dict[str, Any]:
        busy0, total0 = self.machine
        busy1, total1 = machine_jiffies()
        wall = max(1e-6, clock.now() - self.began)
        server = sum(v - self.first.get(pid, 0.0) for pid, v in self.last.items())
        machine = (busy1 - busy0) / CLOCK_TICKS
        own = self._own() - self.own
        return {
            "server_cpu_pct": round(100 * server / wall, 1),
            "soak_cpu_pct": round(100 * own / wall, 1),
            "others_cpu_pct": round(max(0.0, 100 * (machine - server - own) / wall), 1),
            "server_cpu_pct_by_pid": {
                pid: round(100 * (v - self.first.get(pid, 0.0)) / wall, 1)
                for pid, v in self.last.items()
            },
        }


def _kill_leftovers(server: ServerUnderTest, alive_before: list[int]) -> list[int]:
    """Workers left running by a main process that died: stopped by their own PID, and only
    those whose command line is still a Python process (a PID is never reused blindly)."""
    killed = []
    for pid in alive_before:
        if pid == server.main_pid:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"python" in cmdline or b"geodns" in cmdline:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


@dataclass
class SocketWatch:
    """The kernel's counts for the server's port, sampled every second: UDP drops per second
    (a restarted server's new sockets count from zero) and the TCP accept queue's length."""

    port: int
    last_drops: int | None = None
    drops_per_s: list[int] = field(default_factory=list)
    accept_queue: list[int] = field(default_factory=list)
    udp_queued_bytes: list[int] = field(default_factory=list)
    listeners: int = 0

    def sample(self) -> None:
        now: SocketQueues = socket_queues(self.port)
        if self.last_drops is not None:
            grew = now.udp_drops - self.last_drops
            self.drops_per_s.append(grew if grew >= 0 else now.udp_drops)
        self.last_drops = now.udp_drops
        self.accept_queue.append(now.accept_queue)
        self.udp_queued_bytes.append(now.udp_queued_bytes)
        self.listeners = max(self.listeners, now.listeners)

    def result(self) -> dict[str, Any]:
        return {
            "udp_drops": sum(self.drops_per_s),
            "udp_drops_per_s": self.drops_per_s,
            "accept_queue": self.accept_queue,
            "udp_queued_bytes": self.udp_queued_bytes,
            "listeners": self.listeners,
        }


@dataclass
class Watch:
    """Everything the soak observes about one server, and the supervisor that keeps it up."""

    server: ServerUnderTest
    geoip: GeoipFile | None
    plan: Plan
    clock: Clock
    logs: LogWatch
    cpu: CpuWatch = field(default_factory=CpuWatch)
    sockets: SocketWatch | None = None
    rss: list[dict[str, Any]] = field(default_factory=list)
    rss_peaks: dict[str, float] = field(default_factory=dict)  # VmHWM of each process
    deaths: list[dict[str, Any]] = field(default_factory=list)
    health_seen: list[tuple[float, str | None]] = field(default_factory=list)
    last_metrics: str | None = None
    restart_failures: int = 0
    log: Callable[[str], None] = print

    async def memory(self) -> None:
        """RSS of every process every `rss_interval_s`, the first sample at once."""
        end = self.plan.seconds
        while True:
            now, processes = round(self.clock.now(), 1), self.server.rss_mb()
            self.rss.append({"t": now, "processes": processes})
            for label, mb in self.server.peak_mb().items():
                self.rss_peaks[label] = max(mb, self.rss_peaks.get(label, 0.0))
            rss = " ".join(f"{mb:.0f}" for mb in processes.values())
            self.log(
                f"[{self.server.label}] t={now:5.1f} s  RSS MB {rss or '-'}  "
                f"errors {self.logs.error_lines}  tracebacks {self.logs.tracebacks}  "
                f"deaths {len(self.deaths)}"
            )
            if self.clock.now() + self.plan.rss_interval_s > end + 1:
                return
            await asyncio.sleep(self.plan.rss_interval_s)

    async def log_and_cpu(self) -> None:
        end = self.plan.seconds
        if self.sockets is None:
            self.sockets = SocketWatch(self.server.setup.port)
        self.sockets.sample()
        while self.clock.now() < end:
            await asyncio.sleep(1.0)
            self.logs.errors_per_s.append(self.logs.read(self.server.logfiles))
            self.cpu.sample(self.server.pids())
            self.sockets.sample()

    async def counters(self) -> None:
        """The server's view of the health target every second (and the latest /metrics)."""
        end = self.plan.seconds
        while self.clock.now() < end:
            if self.server.setup.kind == "geodns":
                text = await asyncio.to_thread(self.server.metrics_text)
                if text is not None:
                    self.last_metrics = text
                state = health_state(self.server, text)
            else:
                state = await asyncio.to_thread(health_state, self.server, None)
            self.health_seen.append((round(self.clock.now(), 1), state))
            await asyncio.sleep(1.0)

    async def supervise(self) -> None:
        """Every half second: is the main process alive, and are its workers? A worker that
        disappears counts as a death of its own unless the main process dies within 2 s (then
        it is part of that death, named in its record); multiprocessing's helper is not a DNS
        process and is not counted."""
        end = self.plan.seconds
        seen = set(self.server.pids())
        gone: list[tuple[float, int]] = []  # workers gone, not yet counted
        while self.clock.now() < end:
            await asyncio.sleep(0.5)
            code = self.server.exit_code()
            if code is None:
                now = set(self.server.pids())
                labels = self.server.process_labels()
                gone += [
                    (self.clock.now(), pid)
                    for pid in sorted(seen - now)
                    if "helper" not in labels.get(pid, "")
                ]
                while gone and self.clock.now() - gone[0][0] > 2.0:
                    _, pid = gone.pop(0)
                    self.deaths.append(self._death(f"worker pid {pid} gone", pid))
                seen = now
                continue
            self.server.ready = False
            death = self._death(signal_name(code), self.server.main_pid)
            if gone:
                death["workers_gone_first"] = [pid for _, pid in gone]
                gone = []
            self.deaths.append(death)
            _kill_leftovers(self.server, sorted(seen))
            await self._restart()
            seen = set(self.server.pids())
        self.deaths += [self._death(f"worker pid {pid} gone", pid) for _, pid in gone]

    def _death(self, how: str, pid: int | None) -> dict[str, Any]:
        death = {"t": round(self.clock.now(), 1), "how": how, "pid": pid}
        if self.geoip is not None:
            death["geoip_last_step"] = self.geoip.last_step
            death["since_step_s"] = round(self.clock.now() - self.geoip.last_step_at, 1)
        tail = ""
        if self.server.logfiles:
            with contextlib.suppress(OSError):
                tail = self.server.logfiles[-1].read_bytes()[-600:].decode("utf-8", "replace")
        death["log_tail"] = tail
        return death

    async def _restart(self) -> None:
        if self.geoip is not None:
            async with self.geoip.lock:
                await self.geoip.restore()
                await self._start()
        else:
            await self._start()

    async def _start(self) -> None:
        try:
            await asyncio.to_thread(self.server.start)
            await asyncio.to_thread(self.server.wait_all_processes, 2, 10.0)
        except RuntimeError:
            self.restart_failures += 1

    def result(self) -> dict[str, Any]:
        changes = 0
        previous = None
        for _, state in self.health_seen:
            if state is not None and previous is not None and state != previous:
                changes += 1
            if state is not None:
                previous = state
        return {
            "rss": self.rss,
            "rss_peaks": self.rss_peaks,
            "deaths": self.deaths,
            "restart_failures": self.restart_failures,
            "starts": self.server.starts,
            "logs": self.logs.result(),
            "health_seen": self.health_seen,
            "health_changes_seen": changes,
            "metrics": report.parse_metrics(self.last_metrics) if self.last_metrics else None,
            "sockets": self.sockets.result() if self.sockets else None,
            **self.cpu.result(self.clock),
        }

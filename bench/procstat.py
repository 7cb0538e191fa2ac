"""CPU and memory of processes and of the whole machine, from /proc (proc(5)); the kernel's view
of a server's sockets; what the machine is.

Server CPU is utime + stime of the server's processes, never wall time; memory is VmRSS from
/proc/PID/status and RSS/PSS from /proc/PID/smaps_rollup (PSS divides each shared page among the
processes that map it, so the PSS of a server's processes adds up to what they cost together).
A server's sockets, from /proc/net/{udp,tcp}{,6}: the datagrams the kernel dropped because a
receive buffer was full (the server did not read fast enough), and the connections waiting in
its listen queue to be accepted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import re
import resource
import subprocess
import time
from dataclasses import dataclass
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SMAPS_KEYS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Shared_Clean", "Private_Dirty")


def stat_fields(pid: int | str) -> list[bytes] | None:
    """/proc/PID/stat after the command name (field 3 of proc(5) first), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """pid and every process below it (geodns workers), from /proc; pid first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        fields = stat_fields(entry) if entry.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 1000:
        current = todo.pop()
        out.append(current)
        todo.extend(sorted(children.get(current, []), reverse=True))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    return sum(cpu_split(pids))


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of these processes (all their threads), in seconds: the CPU spent in
    the process itself and in the kernel on its behalf (system calls: a UDP server's reading
    and sending), which tell whether a difference between two servers is their own code's."""
    user = system = 0
    for pid in pids:
        fields = stat_fields(pid)
        if fields is not None:
            user += int(fields[11])  # fields 14 and 15 of proc(5)
            system += int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def status_kb(pids: list[int], key: str = "VmRSS") -> int:
    """The sum of one /proc/PID/status figure (VmRSS, VmHWM: kB) over these processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """The kB figures of /proc/PID/smaps_rollup that the report uses."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in SMAPS_KEYS:
            out[key] = int(rest.split()[0])
    return out


def smaps_rollup_kb(pid: int) -> dict[str, int]:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            return parse_smaps_rollup(handle.read())
    except OSError:
        return {}


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    role: str  # "main" or "worker N"
    rss_mb: float
    pss_mb: float
    pss_anon_mb: float
    pss_file_mb: float
    peak_rss_mb: float  # VmHWM

    def as_dict(self) -> dict[str, float | int | str]:
        return dataclasses.asdict(self)


def role_of(command_line: str, index: int, name: str = "") -> str:
    """What a server's process is, from its command line and name (`comm`): the main one (the
    first), a worker (forked at start and named `geodns-workerN`, started again as `python -m
    geodns.daemon.workers`, or multiprocessing's spawned children in older geodns), the place
    index or answer-map builder (`python -m geodns.geo.index`, `geodns.daemon.mapbuilder`), or
    a helper such as multiprocessing's resource tracker (a small process of its own that a
    spawn start brings along)."""
    if index == 0:
        return "main"
    if name.startswith("geodns-worker"):
        return "worker"
    if "geodns.daemon.mapbuilder" in command_line:
        return "helper (map builder)"
    if "resource_tracker" in command_line:
        return "helper (resource tracker)"
    if "geodns.geo.index" in command_line:
        return "helper (index builder)"
    if "geodns.daemon.workers" in command_line or "spawn_main" in command_line:
        return "worker"
    return "other"


def process_name(pid: int) -> str:
    """The process's name (`comm`: what ps and top show, set by a forked worker)."""
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def memory_per_process(pids: list[int]) -> list[ProcessMemory]:
    """RSS, PSS (with its anonymous and file-backed parts) and peak RSS of each process, in MB
    (1,048,576 bytes); the first pid is the main process."""
    out = []
    for index, pid in enumerate(pids):
        rollup = smaps_rollup_kb(pid)
        if not rollup:
            continue
        out.append(
            ProcessMemory(
                pid=pid,
                role=role_of(command_line(pid), index, process_name(pid)),
                rss_mb=round(rollup.get("Rss", 0) / 1024, 1),
                pss_mb=round(rollup.get("Pss", 0) / 1024, 1),
                pss_anon_mb=round(rollup.get("Pss_Anon", 0) / 1024, 1),
                pss_file_mb=round(rollup.get("Pss_File", 0) / 1024, 1),
                peak_rss_mb=round(status_kb([pid], "VmHWM") / 1024, 1),
            )
        )
    return out


def memory_summary(pids: list[int]) -> dict[str, object]:
    processes = memory_per_process(pids)
    return {
        "processes": [p.as_dict() for p in processes],
        "rss_total_mb": round(sum(p.rss_mb for p in processes), 1),
        "pss_total_mb": round(sum(p.pss_mb for p in processes), 1),
    }


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from the first line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values[:8]) - idle, sum(values[:8])


def children_cpu() -> float:
    """CPU seconds of every child process that was waited for (dnsperf runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(limit_s: float, threshold_pct: float = 15.0) -> float:
    """Wait (bounded) until the machine is mostly idle: other sessions share it.

    Returns the busy percentage of the last 0.5 s sample (of all CPUs)."""
    deadline = time.monotonic() + limit_s
    while True:
        busy0, total0 = machine_jiffies()
        time.sleep(0.5)
        busy1, total1 = machine_jiffies()
        busy_pct = 100.0 * (busy1 - busy0) / max(1, total1 - total0)
        if busy_pct <= threshold_pct or time.monotonic() >= deadline:
            return round(busy_pct, 1)


@dataclass(frozen=True)
class SocketQueues:
    """The kernel's counts for the sockets bound to one local port (every process's)."""

    udp_sockets: int = 0
    udp_drops: int = 0  # datagrams dropped since the sockets were made: receive buffer full
    udp_queued_bytes: int = 0  # waiting to be read now
    listeners: int = 0  # TCP sockets in LISTEN
    accept_queue: int = 0  # connections completed by the kernel, not yet accepted


def parse_proc_net(text: str, port: int, udp: bool) -> SocketQueues:
    """The sockets of one /proc/net/{udp,tcp}{,6} text whose local port is `port` (proc(5):
    ports in hex; for a LISTEN socket, rx_queue is its accept queue's length; a UDP line ends
    with its drops)."""
    wanted = f":{port:04X}"
    sockets = drops = queued = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or not fields[1].endswith(wanted):
            continue
        rx_queue = int(fields[4].split(":")[1], 16)
        if udp:
            sockets += 1
            drops += int(fields[-1])
            queued += rx_queue
        elif fields[3] == "0A":  # TCP_LISTEN
            sockets += 1
            queued += rx_queue
    if udp:
        return SocketQueues(udp_sockets=sockets, udp_drops=drops, udp_queued_bytes=queued)
    return SocketQueues(listeners=sockets, accept_queue=queued)


def socket_queues(port: int) -> SocketQueues:
    """UDP drops and queued bytes, TCP listeners and their accept queues, on `port` (IPv4 and
    IPv6, this network namespace)."""
    totals: dict[str, int] = {}
    for name, udp in (("udp", True), ("udp6", True), ("tcp", False), ("tcp6", False)):
        try:
            with open(f"/proc/net/{name}", encoding="ascii") as handle:
                found = parse_proc_net(handle.read(), port, udp)
        except OSError:
            continue
        for key, value in dataclasses.asdict(found).items():
            totals[key] = totals.get(key, 0) + value
    return SocketQueues(**totals)


def machine() -> dict[str, Any]:
    """What a run ran on: CPUs, their model, kernel, Python, dnsperf's and gdnsd's versions."""
    model = ""
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle,
    ):
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(command: list[str]) -> str:
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        match = re.search(r"[Vv]ersion\s+([\d.]+)", result.stdout + result.stderr)
        return match.group(1) if match else ""

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dnsperf": version(["dnsperf", "-h"]),
        "gdnsd": version(["gdnsd", "-h"]),
    }

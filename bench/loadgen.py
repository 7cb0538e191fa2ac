"""dnsperf runs with the CPU of everyone involved: the server's (per process, from /proc), dnsperf's
and the rest of the machine's (other sessions share it: their share is reported and a noisy run
is tried again).
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import CLIENT_CPU, FIXED, HOST, LATENCY_NOISY_PCT, NOISY_PCT, SATURATE, Profile
from .procstat import (
    CLOCK_TICKS,
    children_cpu,
    cpu_seconds,
    cpu_split,
    machine_jiffies,
    wait_quiet,
)
from .servers import Server, pin


def dnsperf_command(
    port: int,
    datafile: Path,
    extra: tuple[str, ...],
    seconds: float,
    runs: int | None = None,
    verbose: bool = False,
) -> list[str]:
    """dnsperf on 127.0.0.1 with binary input: for `seconds`, or `runs` passes over the file."""
    command = ["dnsperf", "-B", "-d", str(datafile), "-s", HOST, "-p", str(port), *extra]
    command += ["-n", str(runs)] if runs is not None else ["-l", str(seconds)]
    if verbose:
        command.append("-v")
    return command


def parse_dnsperf(text: str, verbose: bool = False) -> dict[str, Any]:
    """dnsperf's summary as numbers; with `verbose`, latency percentiles from its per-answer
    lines ("> NOERROR ... <seconds>")."""

    def grab(pattern: str, kind: type = int) -> Any:
        match = re.search(pattern, text)
        return kind(match.group(1)) if match else None

    stats: dict[str, Any] = {
        "sent": grab(r"Queries sent:\s+(\d+)"),
        "completed": grab(r"Queries completed:\s+(\d+)"),
        "lost": grab(r"Queries lost:\s+(\d+)"),
        "qps": grab(r"Queries per second:\s+([\d.]+)", float),
        "run_time": grab(r"Run time \(s\):\s+([\d.]+)", float),
        "avg_latency_ms": (grab(r"Average Latency \(s\):\s+([\d.]+)", float) or 0) * 1000,
    }
    codes = re.search(r"Response codes:\s+(.*)", text)
    stats["rcodes"] = codes.group(1).strip() if codes else ""
    if verbose:
        latencies = sorted(
            float(line.rsplit(None, 1)[1])
            for line in text.splitlines()
            if line.startswith("> ") and not line.startswith("> T ")
        )
        stats["latency"] = percentiles(latencies)
    return stats


def percentiles(values: list[float]) -> dict[str, float | int]:
    """Nearest-rank percentiles of sorted latencies (seconds), reported in milliseconds."""
    if not values:
        return {"n": 0}

    def rank(p: float) -> float:
        index = max(0, math.ceil(p / 100 * len(values)) - 1)
        return round(values[index] * 1000, 4)

    return {
        "n": len(values),
        "p50_ms": rank(50),
        "p90_ms": rank(90),
        "p99_ms": rank(99),
        "p99.9_ms": rank(99.9),
        "max_ms": round(values[-1] * 1000, 4),
    }


def dnsperf(
    port: int,
    datafile: Path,
    seconds: float,
    extra: tuple[str, ...],
    verbose: bool = False,
    runs: int | None = None,
) -> dict[str, Any]:
    """One dnsperf run, pinned to the client CPU; its summary (and latencies with `verbose`)."""
    command = dnsperf_command(port, datafile, extra, seconds, runs, verbose)
    result = subprocess.run(
        pin(CLIENT_CPU) + command,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    stats = parse_dnsperf(result.stdout, verbose)
    if stats["completed"] is None:
        raise RuntimeError(f"dnsperf failed: {result.stdout[-1500:]} {result.stderr[-1500:]}")
    stats["command"] = " ".join(command)
    return stats


def quietest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run that the rest of the machine disturbed least; every attempt is kept."""
    best = dict(min(runs, key=lambda r: r["others_busy_pct"]))
    if len(runs) > 1:
        keys = ("qps", "server_cpu_us_per_query", "others_busy_pct", "lost", "latency")
        best["attempts"] = [{k: r.get(k) for k in keys} for r in runs]
    return best


@dataclass(frozen=True)
class LoadGen:
    """Measured dnsperf runs against a server, under the profile's times and retry rules."""

    profile: Profile

    def measured_run(
        self,
        server: Server,
        datafile: Path,
        seconds: float,
        extra: tuple[str, ...],
        verbose: bool = False,
        runs: int | None = None,
    ) -> dict[str, Any]:
        """One dnsperf run (for `seconds`, or `runs` passes over the file) with the server's CPU
        per answered query (utime + stime of its processes from /proc, not wall time), the
        kernel's part of it (stime), dnsperf's CPU and the rest of the machine's."""
        busy_before = wait_quiet(self.profile.quiet_wait_s)
        pids = server.pids
        per_process = {pid: cpu_seconds([pid]) for pid in pids}
        kernel0 = cpu_split(pids)[1]
        busy0, _ = machine_jiffies()
        client0 = children_cpu()
        wall0 = time.monotonic()
        stats = dnsperf(server.port, datafile, seconds, extra, verbose=verbose, runs=runs)
        wall = time.monotonic() - wall0
        client = children_cpu() - client0
        busy1, _ = machine_jiffies()
        per_process = {pid: cpu_seconds([pid]) - before for pid, before in per_process.items()}
        cpu = sum(per_process.values())
        kernel = cpu_split(pids)[1] - kernel0
        machine_busy = (busy1 - busy0) / CLOCK_TICKS
        answered = stats["completed"] or 1
        run_time = stats["run_time"] or wall
        stats["server_cpu_s"] = round(cpu, 3)
        stats["server_cpu_us_per_query"] = round(cpu / answered * 1e6, 2)
        stats["server_kernel_us_per_query"] = round(kernel / answered * 1e6, 2)
        stats["server_busy_pct"] = round(100 * cpu / run_time, 1)
        if len(per_process) > 1:
            stats["server_busy_pct_per_process"] = [
                round(100 * v / run_time, 1) for v in per_process.values()
            ]
        stats["dnsperf_busy_pct"] = round(100 * client / wall, 1)
        stats["others_busy_pct"] = round(max(0.0, 100 * (machine_busy - cpu - client) / wall), 1)
        stats["machine_busy_before_pct"] = busy_before
        return stats

    def saturated(
        self, server: Server, datafile: Path, warmup: bool, retry: bool = True
    ) -> dict[str, Any]:
        """dnsperf at full speed; server CPU per answered query. A warm workload is first sent
        once whole, so the caches hold every subnet. A cold one is not retried: a second pass
        would find its subnets cached."""
        seconds = self.profile.saturate_seconds
        if warmup:
            dnsperf(server.port, datafile, seconds, SATURATE, runs=1)
        runs = [self.measured_run(server, datafile, seconds, SATURATE)]
        while (
            retry
            and len(runs) < self.profile.saturate_attempts
            and runs[-1]["others_busy_pct"] > NOISY_PCT
        ):
            runs.append(self.measured_run(server, datafile, seconds, SATURATE))
        return quietest(runs)

    def fixed_rate(self, server: Server, datafiles: list[Path]) -> dict[str, Any]:
        """Latency at a fixed 2,000 qps, from dnsperf -v (one line per answer). Retried while
        other load is above 3% of a CPU; each attempt reads its own file (a retried cold run
        meets subnets never seen), or the same one for a warm or static workload."""
        seconds = self.profile.latency_seconds
        attempts = self.profile.latency_attempts

        def run(index: int) -> dict[str, Any]:
            datafile = datafiles[min(index, len(datafiles) - 1)]
            return self.measured_run(server, datafile, seconds, FIXED, verbose=True)

        runs = [run(0)]
        while len(runs) < attempts and runs[-1]["others_busy_pct"] > LATENCY_NOISY_PCT:
            runs.append(run(len(runs)))
        return quietest(runs)

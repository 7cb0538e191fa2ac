"""Where a running geodns spends its time under load (optional: --profile, needs py-spy).

py-spy samples the process from outside without pausing it; time inside C code (uvloop's
recvfrom/sendto, maxminddb's decoder) is charged to the Python line that called it.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import SATURATE, log
from .loadgen import dnsperf
from .scenarios import Bench
from .servers import Setup
from .workloads import Workloads


def profile_geodns(bench: Bench, setup: Setup, loads: Workloads, py_spy: str) -> dict[str, Any]:
    """A fresh geodns (empty caches) under saturating load, sampled by py-spy per workload."""
    server = bench.server("geodns", "geodns-profile", setup)
    server.start()
    out: dict[str, Any] = {}
    seconds = max(5, int(bench.profile.saturate_seconds))
    try:
        for workload in ("static", "warm", "cold"):
            if workload != "cold":
                dnsperf(server.port, loads.files[workload], seconds, SATURATE, runs=1)
            raw = bench.paths.out / f"profile-{workload}.txt"
            assert server.process is not None
            command = [py_spy, "record", "--pid", str(server.process.pid)]
            command += ["--duration", str(seconds), "--rate", "200", "--format", "raw"]
            command += ["--output", str(raw), "--nonblocking"]
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            dnsperf(server.port, loads.files[workload], seconds + 1, SATURATE)
            try:
                spy.wait(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(timeout=10)
            out[workload] = summarise_profile(raw)
            log(f"[profile] {workload}: {raw.name}")
            for frame, pct in out[workload].get("self_pct", [])[:8]:
                log(f"    {pct:5.1f}% self  {frame}")
    finally:
        server.stop()
    return out


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Shares of py-spy samples (idle excluded) per function and per line, from its raw
    (collapsed) stacks."""
    self_line: dict[str, int] = {}
    self_function: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    if not path.exists():
        return {"error": "py-spy wrote nothing"}
    strip = re.compile(r":\d+\)$")
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        self_line[leaf] = self_line.get(leaf, 0) + count
        function = strip.sub(")", leaf)
        self_function[function] = self_function.get(function, 0) + count
        for frame in {strip.sub(")", f) for f in frames}:
            inclusive[frame] = inclusive.get(frame, 0) + count

    def share(counts: dict[str, int], limit: int = top) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:limit]
        return [(frame, round(100 * n / max(total, 1), 1)) for frame, n in ranked]

    return {
        "samples": total,
        "self_pct": share(self_function),
        "self_by_line_pct": share(self_line),
        "inclusive_pct": [(f, p) for f, p in share(inclusive, 100) if p < 95][:top],
    }

"""The measurements, each a function of (what to run, against which server) to a result dict:

- `full_run`: one server through the static, warm and cold workloads (saturated rate, CPU per
  query, latency at a fixed rate), its memory after the cold run, churn, and its answers (an
  older geodns as a baseline: `Setup.source`, without churn or answers);
- `cpu_run`: warm and cold CPU per query only (the 100-PoP configuration);
- `startup_run`: start to first answer and RSS, best of a few starts;
- `big_zone_run`: the zone of many nearest-PoP names: start-up, RSS, and a reload under load;
- `memory_run`: RSS and PSS of every geodns process after a cold run, for a worker count.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from .answers import ask_geo, ask_static
from .common import CLIENT_CPU, FIXED, FIXED_QPS, SATURATE, SERVER_CPU, Paths, Profile, log
from .dnswire import QTYPES, query_wire
from .loadgen import LoadGen, dnsperf
from .procstat import memory_summary, status_kb
from .servers import Server, Setup, pin, wait_for_index
from .workloads import Workloads, big_zone_name

DRAINED_POP = "jakarta"  # drained and undrained during churn (a PoP of the 6-PoP set)


@dataclass(frozen=True)
class Bench:
    """What every measurement needs: where files go, the profile, and the load generator."""

    paths: Paths
    profile: Profile

    @property
    def load(self) -> LoadGen:
        return LoadGen(self.profile)

    def server(self, kind: str, label: str, setup: Setup, cpus: str = SERVER_CPU) -> Server:
        return Server(
            kind, label, self.paths.out / label, self.paths.logs / f"{label}.log", setup, cpus
        )


def start(bench: Bench, server: Server) -> dict[str, Any]:
    """Start a server and wait for it to be ready to measure: its first answer, all its worker
    processes, and (geodns, when it reports one) its geo index."""
    startup = server.start()
    processes = server.wait_for_processes(
        max(1, server.setup.workers) if server.kind == "geodns" else 1
    )
    index = wait_for_index(server, bench.profile.index_wait_s)
    out = {
        "startup_s": round(startup, 3),
        "processes": processes,
        "rss_start_mb": round(status_kb(server.pids) / 1024, 1),
        "geo_index": index,
    }
    log(
        f"[{server.label}] answering after {startup:.2f} s, RSS {out['rss_start_mb']} MB, "
        f"{processes} process(es); geo index: {index}"
    )
    return out


def log_run(
    label: str, workload: str, saturated: dict[str, Any], fixed: dict[str, Any] | None
) -> None:
    line = (
        f"[{label}] {workload:6s} {saturated['qps']:>9,.0f} qps  "
        f"{saturated['server_cpu_us_per_query']:6.1f} us/query  "
        f"busy {saturated['server_busy_pct']:5.1f}%  lost {saturated['lost']}  "
        f"(dnsperf {saturated['dnsperf_busy_pct']}%, others {saturated['others_busy_pct']}%)"
    )
    if fixed is not None:
        lat = fixed.get("latency", {})
        line += (
            f"  | @{FIXED_QPS} qps p50 {lat.get('p50_ms')} ms p99 {lat.get('p99_ms')} ms "
            f"lost {fixed['lost']}"
        )
    log(line)


def full_run(
    bench: Bench,
    kind: str,
    label: str,
    setup: Setup,
    loads: Workloads,
    cpus: str = SERVER_CPU,
    churn: bool = False,
    ask: bool = True,
) -> dict[str, Any]:
    """Static, warm and cold workloads (saturated and at a fixed rate), memory after the cold
    run, optionally churn, then every warm and cold subnet's answer (kept under "replies")."""
    server = bench.server(kind, label, setup, cpus)
    result: dict[str, Any] = {"label": label, "kind": kind, "workers": setup.workers}
    result["command"] = " ".join(server.command)
    if setup.source is not None:
        result["command"] = f"PYTHONPATH={setup.source} {result['command']}"
    log(f"[{label}] starting: {result['command']}")
    result.update(start(bench, server))
    try:
        runs: dict[str, Any] = {}
        for workload, warm in (("static", True), ("warm", True), ("cold", False)):
            saturated = bench.load.saturated(server, loads.files[workload], warmup=warm, retry=warm)
            fixed = bench.load.fixed_rate(server, loads.latency_files(workload))
            runs[workload] = {"saturated": saturated, "fixed": fixed}
            log_run(label, workload, saturated, fixed)
        result["runs"] = runs
        result["memory_after_cold"] = memory_summary(server.pids)
        if churn and kind == "geodns":
            result["churn"] = churn_run(bench, server, loads)
        result["rss_end_mb"] = round(status_kb(server.pids) / 1024, 1)
        if ask:
            result["replies"] = ask_all(server, loads.warm + loads.cold)
            result["static_answers"] = ask_static(server.port)
    finally:
        server.stop()
    return result


def cpu_run(
    bench: Bench, kind: str, label: str, setup: Setup, loads: Workloads, ask: list[int]
) -> dict[str, Any]:
    """Warm and cold CPU per query (saturated only), memory after the cold run, and the answers
    for the subnets in `ask`."""
    server = bench.server(kind, label, setup)
    result: dict[str, Any] = {"label": label, "kind": kind, "workers": setup.workers}
    log(f"[{label}] starting ({len(setup.pops.pops)} PoPs)")
    result.update(start(bench, server))
    try:
        runs: dict[str, Any] = {}
        for workload, warm in (("warm", True), ("cold", False)):
            saturated = bench.load.saturated(server, loads.files[workload], warmup=warm, retry=warm)
            runs[workload] = {"saturated": saturated}
            log_run(label, workload, saturated, None)
        result["runs"] = runs
        result["memory_after_cold"] = memory_summary(server.pids)
        result["replies"] = ask_all(server, ask)
    finally:
        server.stop()
    return result


def ask_all(server: Server, subnets: list[int]) -> dict[int, Any]:
    began = time.monotonic()
    replies = ask_geo(server.port, subnets)
    log(f"[{server.label}] asked for {len(subnets):,} subnets in {time.monotonic() - began:.1f} s")
    return replies


def churn_run(bench: Bench, server: Server, loads: Workloads) -> dict[str, Any]:
    """Saturating warm load while geodns is reloaded (SIGHUP) and a PoP drained and undrained
    through the admin socket, alternately, every half second: no query may be lost."""
    assert server.process is not None
    seconds = bench.profile.saturate_seconds
    outcome: dict[str, Any] = {}
    load = threading.Thread(
        target=lambda: outcome.update(dnsperf(server.port, loads.files["warm"], seconds, SATURATE))
    )
    load.start()
    reloads = drains = failures = 0
    began = time.monotonic()

    def admin(action: str) -> int:
        command = [
            sys.executable,
            "-m",
            "geodns",
            action,
            DRAINED_POP,
            "--config",
            str(server.config),
        ]
        return subprocess.run(
            pin(CLIENT_CPU) + command, capture_output=True, timeout=30, check=False
        ).returncode

    while load.is_alive() and time.monotonic() - began < seconds + 30:
        time.sleep(0.5)
        if (reloads + drains) % 2 == 0:
            server.process.send_signal(1)  # SIGHUP
            reloads += 1
        else:
            failures += admin("drain" if drains % 2 == 0 else "undrain") != 0
            drains += 1
    load.join(timeout=seconds + 60)
    if drains % 2:  # leave the PoP in rotation: the answer comparison follows
        admin("undrain")
    settled = maps_settled(server.config)  # (the comparison asks for the answer maps' scopes)
    log(
        f"[{server.label}] churn: {reloads} reloads and {drains} drains/undrains under "
        f"{outcome.get('qps', 0):,.0f} qps: sent {outcome.get('sent')}, lost {outcome.get('lost')}"
    )
    return {
        **outcome,
        "reloads": reloads,
        "drains": drains,
        "drain_failures": failures,
        "maps_settled": settled,
    }


def maps_settled(config: Any, within: float = 60.0) -> bool:
    """Wait until geodns decides every record by an answer map again (`geodns status`: none
    pending), as it does a moment after a health change: the answers asked next are compared
    with gdnsd's, scopes included. False if not within `within` seconds."""
    deadline = time.monotonic() + within
    command = [sys.executable, "-m", "geodns", "status", "--json", "--config", str(config)]
    while time.monotonic() < deadline:
        result = subprocess.run(
            pin(CLIENT_CPU) + command, capture_output=True, text=True, timeout=30, check=False
        )
        with contextlib.suppress(ValueError):
            status = json.loads(result.stdout) if result.returncode == 0 else {}
            if status.get("answer_maps_pending", 0) == 0 and status:  # (older: no such key)
                return True
        time.sleep(0.1)
    return False


def startup_run(
    bench: Bench, kind: str, label: str, setup: Setup, attempts: int = 3
) -> dict[str, Any]:
    """Time from exec to the first (geo) answer, and RSS then; the best of a few starts."""
    times, rss, index = [], [], {}
    for attempt in range(attempts):
        server = bench.server(kind, f"{label}-{attempt}", setup)
        try:
            times.append(server.start())
            rss.append(status_kb(server.pids) / 1024)
            index = wait_for_index(server, bench.profile.index_wait_s)
        finally:
            server.stop()
    out: dict[str, Any] = {
        "startup_s": round(min(times), 3),
        "startup_all_s": [round(t, 3) for t in times],
        "rss_mb": round(max(rss), 1),
        "geo_index": index,
        "database": setup.db.name,
        "database_mb": round(setup.db.stat().st_size / 1e6, 1),
    }
    if kind == "geodns":  # what dominates: the interpreter, the imports, or loading
        for what, code in (
            ("python_s", "pass"),
            ("python_and_imports_s", "import geodns.daemon.app, geodns.config.loader"),
        ):
            began = time.monotonic()
            subprocess.run(pin(SERVER_CPU) + [sys.executable, "-c", code], check=True, timeout=60)
            out[what] = round(time.monotonic() - began, 3)
    log(f"[{label}] start-up {out['startup_s']} s, RSS {out['rss_mb']} MB")
    return out


def big_zone_run(bench: Bench, kind: str, setup: Setup, loads: Workloads) -> dict[str, Any]:
    """The zone of many nearest-PoP names: start to first answer (for its last name) and RSS;
    then at a fixed 2,000 qps over its names, a run without and a run with a reload in the
    middle (geodns: SIGHUP; gdnsd: gdnsdctl reload-zones), for the stall a reload causes: the
    maximum latency and lost queries of each run, and how long the reload took; last, a
    restart (geodns's index then cached, as it is when systemd restarts it)."""
    names = setup.big_zone_names
    label = f"{kind}-zone{names}"
    server = bench.server(kind, label, setup)
    probe = query_wire(big_zone_name(names - 1), QTYPES["A"], (0x08080800, 24), ident=7)
    log(f"[{label}] starting with a zone of {names:,} nearest-PoP names")
    startup = server.start(probe)
    result: dict[str, Any] = {
        "names": names,
        "startup_s": round(startup, 3),
        "rss_start_mb": round(status_kb(server.pids) / 1024, 1),
    }
    try:
        result["geo_index"] = wait_for_index(server, bench.profile.index_wait_s)
        # once settled: geodns's index builder (a child process while it runs) has exited
        result["rss_ready_mb"] = round(status_kb(server.pids) / 1024, 1)
        seconds = bench.profile.reload_load_seconds
        datafile = loads.files["big-zone"]
        dnsperf(server.port, datafile, seconds, SATURATE, runs=1)  # every name asked once
        result["without_reload"] = latency_summary(
            dnsperf(server.port, datafile, seconds, FIXED, verbose=True)
        )
        outcome: dict[str, Any] = {}
        load = threading.Thread(
            target=lambda: outcome.update(
                dnsperf(server.port, datafile, seconds, FIXED, verbose=True)
            )
        )
        load.start()
        time.sleep(seconds / 3)
        server.rewrite_zones()
        result["reload_s"] = round(server.reload(), 3)
        logged = server.log_events("reloaded")  # geodns: what it took by its own clock
        if logged and "seconds" in logged[-1]:
            result["reload_logged_s"] = logged[-1]["seconds"]
        load.join(timeout=seconds + 120)
        result["with_reload"] = latency_summary(outcome)
        result["rss_after_reload_mb"] = round(status_kb(server.pids) / 1024, 1)
        result["serves_new_zone"] = serves_generation(server.port, server.generation)
        # a restart, as systemd's: geodns finds the index it built in its cache directory
        server.stop()
        result["restart_s"] = round(server.start(probe), 3)
        result["rss_restart_mb"] = round(status_kb(server.pids) / 1024, 1)
    finally:
        server.stop()
    log(
        f"[{label}] start-up {result['startup_s']} s, RSS {result['rss_start_mb']} MB "
        f"({result.get('rss_ready_mb')} MB once ready); reload "
        f"{result.get('reload_s')} s; max latency {result.get('with_reload', {}).get('max_ms')} ms "
        f"with the reload, {result.get('without_reload', {}).get('max_ms')} ms without; lost "
        f"{result.get('with_reload', {}).get('lost')}"
    )
    return result


def latency_summary(stats: dict[str, Any]) -> dict[str, Any]:
    latency = stats.get("latency") or {}
    return {
        "sent": stats.get("sent"),
        "lost": stats.get("lost"),
        "p99_ms": latency.get("p99_ms"),
        "p99.9_ms": latency.get("p99.9_ms"),
        "max_ms": latency.get("max_ms"),
    }


def serves_generation(port: int, generation: int) -> bool:
    """Whether the big zone's apex TXT says `generation N` (the reload took effect)."""
    import dns.message
    import dns.query

    from .common import BIG_ZONE, HOST

    query = dns.message.make_query(BIG_ZONE, "TXT")
    query.flags = 0
    try:
        reply = dns.query.udp(query, HOST, port=port, timeout=2.0)
    except Exception:  # no answer is a failed check, not a crash
        return False
    return any(f"generation {generation}" in rr.to_text() for rrset in reply.answer for rr in rrset)


def memory_run(bench: Bench, setup: Setup, loads: Workloads) -> dict[str, Any]:
    """geodns with `setup.workers` processes: the cold workload sent once, at full speed (every
    process serves some of it), then RSS and PSS of each process (smaps_rollup) and their
    totals. Once, not for a time: with one process or two, the same queries arrive, so the
    caches hold what the same traffic leaves (a timed run sends two workers more passes over
    the file, whose repeats their reply caches keep)."""
    workers = setup.workers
    label = f"geodns-memory-{workers}w"
    cpus = SERVER_CPU if workers == 1 else "0,1"
    server = bench.server("geodns", label, setup, cpus)
    result: dict[str, Any] = {"workers": workers, "database": setup.db.name}
    log(f"[{label}] starting on {setup.db.name}")
    result.update(start(bench, server))
    try:
        cold = bench.load.measured_run(
            server, loads.files["cold"], bench.profile.saturate_seconds, SATURATE, runs=1
        )
        log_run(label, "cold", cold, None)
        result["cold"] = {
            k: cold.get(k) for k in ("qps", "server_cpu_us_per_query", "lost", "completed")
        }
        result["memory_after_cold"] = memory_summary(server.pids)
    finally:
        server.stop()
    memory = result["memory_after_cold"]
    log(
        f"[{label}] after the cold run: RSS {memory['rss_total_mb']} MB, PSS {memory['pss_total_mb']} MB in all"
    )
    return result


def with_workers(setup: Setup, workers: int) -> Setup:
    return replace(setup, workers=workers)

"""Soak: geodns (and gdnsd beside it) under valid load while everything hostile happens at once.

    python bench/soak.py            # 4 minutes per server (docs/reliability.md), ~10 min in all
    python bench/soak.py --quick    # 25 s per server, for development (~1.5 min in all)

For each server in turn, on 127.0.0.1, for the same length of time and all at the same time:
valid queries at a fixed rate (dnsperf); a walk over millions of distinct ECS subnets (IPv4 /24
and IPv6 /56); malformed and mutated packets at a fixed rate (soak_wire.MUTATORS); 1,500 slow
TCP clients dripping one byte every few seconds (1,000 from distinct addresses, 500 from one)
while new TCP queries measure who still gets in; a health target that goes up and down; and,
except in the middle half (where memory growth can show), a reload every second and the GeoIP
database replaced atomically (before) or overwritten in place (after; with another database and
with a truncated copy). It watches RSS per process every 10 s, the log, /metrics and whether the
server stays alive (a server that dies is counted and started again).

It prints one table with a column per server: the checks with their bounds (valid-query loss,
new-TCP success during the slow clients, tracebacks, deaths, error log lines per second, RSS
bound and plateau, replies a DNS parser rejects, SIGTERM time) and the figures behind them;
then bad packets per kind, RSS series, and RRL / cookie / TCP counters from /metrics. Exit code
1 when a check of geodns fails (gdnsd's verdicts are shown for comparison), 2 when the soak
cannot run. Everything goes to bench/out/soak-<date>.json.

Only loopback addresses are ever targets; every loop is bounded in count and time; every
process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import resource
import shutil
import socket
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import yaml

if __package__ in (None, ""):  # `python bench/soak.py`: import `bench` and `geodns` from the
    # repository, and not bench/'s modules as top-level names (sys.path[0] is the script's folder)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import databases, mmdb_synth  # noqa: E402
from bench import soak_report as report  # noqa: E402
from bench.common import BENCH, HOST, ROOT, default_cache, log  # noqa: E402
from bench.dnswire import write_binary  # noqa: E402
from bench.procstat import machine, wait_quiet  # noqa: E402
from bench.servers import can_pin, free_port, wait_for_index  # noqa: E402
from bench.soak_churn import GeoipFile, HealthTarget, reload_every_second  # noqa: E402
from bench.soak_load import (  # noqa: E402
    database_networks,
    dnsperf_fixed_rate,
    dnsperf_phases,
    send_malformed,
    valid_messages,
    walk_messages,
)
from bench.soak_plan import FULL, QUICK, VALID_SOURCE, WALK_SOURCE, Clock, Plan  # noqa: E402
from bench.soak_servers import ServerSetup, ServerUnderTest, new_token  # noqa: E402
from bench.soak_tcp import probe_new_tcp, slow_clients, slow_result  # noqa: E402
from bench.soak_watch import LogWatch, Watch  # noqa: E402

OUT = BENCH / "out"
SOAK_OUT = OUT / "soak"
WALK_VERSION = 1  # bump when soak_wire's walk or query format changes: the cached file is stale


# ------------------------------------------------------------------------------------------------
# Inputs: databases and dnsperf files (cached in bench/out/soak/)
# ------------------------------------------------------------------------------------------------


def city_database(choice: str, cache: Path) -> Path:
    """The database both servers load: the benchmark's synthetic City databases
    (bench/databases.py; "big": 5.4M networks and 187,741 distinct records, ~100 MB; "small":
    1.7M networks and 32,853 records, 23 MB), built once and kept in the benchmark's cache
    directory, or the path of any City .mmdb. The big one is the default: per-record caches can
    only show how they grow when there are many records."""
    if choice in ("big", "small"):
        return databases.synthetic(cache, log, big=choice == "big").path
    return Path(choice).resolve()


def prepare_inputs(plan: Plan, database: str, cache: Path) -> dict[str, Any]:
    OUT.mkdir(parents=True, exist_ok=True)
    SOAK_OUT.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    city = city_database(database, cache)
    began = time.monotonic()
    v4, v6 = database_networks(mmdb_synth.COUNTRY_DB)
    valid = SOAK_OUT / "valid.bin"
    write_binary(valid, valid_messages(v4, v6))
    count = plan.walk_count
    count_v6 = int(count * plan.walk_v6_share)
    walk = SOAK_OUT / f"walk-v{WALK_VERSION}-{count}-{count_v6}.bin"  # cached: 40 s to write
    if not walk.exists():
        write_binary(walk, walk_messages(v4, v6, count, plan.walk_v6_share))
    log(
        f"inputs: {len(v4):,} IPv4 and {len(v6):,} IPv6 database networks; walk of "
        f"{count:,} distinct subnets ({count - count_v6:,} /24 + {count_v6:,} /56) "
        f"in {walk.name}; {time.monotonic() - began:.0f} s"
    )
    return {
        "city": city,
        "other": mmdb_synth.COUNTRY_DB,
        "valid": valid,
        "walk": walk,
        "walk_v4": count - count_v6,
        "walk_v6": count_v6,
    }


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def expected_processes(kind: str, workers: int) -> int:
    if kind != "geodns":
        return 1
    if workers > 0:
        return workers
    return max(1, len(os.sched_getaffinity(0)))


# ------------------------------------------------------------------------------------------------
# One server's soak
# ------------------------------------------------------------------------------------------------


def valid_phases(plan: Plan) -> list[tuple[str, float]]:
    """The soak's three phases for the valid load: reloads and atomic GeoIP replacements, the
    pause (nothing reloads), reloads and in-place GeoIP overwrites."""
    start, end = plan.pause_window
    return [
        ("reloads, atomic GeoIP", start),
        ("no reloads", end - start),
        ("reloads, GeoIP in place", plan.seconds - end),
    ]


async def abuse(
    server: ServerUnderTest,
    plan: Plan,
    inputs: dict[str, Any],
    overwrite_geoip: bool,
) -> dict[str, Any]:
    """Every activity at once, for `plan.seconds`; what each saw."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=24))
    setup = server.setup
    clock = Clock.start()
    stop = threading.Event()
    geoip = None
    if overwrite_geoip:
        geoip = GeoipFile(
            setup.database, inputs["city"].read_bytes(), Path(inputs["other"]).read_bytes()
        )
    watch = Watch(server, geoip, plan, clock, LogWatch(setup.kind), log=log)
    watch.cpu.start(server.pids(), clock)
    health = HealthTarget(setup.health_port)
    port = setup.port
    jobs: dict[str, Any] = {
        "valid": asyncio.to_thread(
            dnsperf_phases,
            port,
            inputs["valid"],
            VALID_SOURCE,
            plan.valid_qps,
            valid_phases(plan),
            plan.dnsperf_timeout_s,
        ),
        "walk": asyncio.to_thread(
            dnsperf_fixed_rate,
            port,
            inputs["walk"],
            WALK_SOURCE,
            plan.walk_qps,
            plan.seconds,
            plan.dnsperf_timeout_s,
            1,
            plan.walk_outstanding,
        ),
        "malformed": asyncio.to_thread(send_malformed, port, plan, stop),
        "slow": slow_clients(port, plan, clock),
        "probes": probe_new_tcp(port, plan, clock),
        "reloads": reload_every_second(server, plan, clock),
        "health": health.run(plan, clock),
        "memory": watch.memory(),
        "logs": watch.log_and_cpu(),
        "counters": watch.counters(),
        "supervise": watch.supervise(),
    }
    if geoip is not None:
        jobs["geoip"] = geoip.cycle(plan, clock)
    names = list(jobs)
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*jobs.values(), return_exceptions=True), timeout=plan.seconds + 120
        )
    finally:
        stop.set()
    done: dict[str, Any] = {}
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log(f"[{setup.kind}] {name} failed: {type(outcome).__name__}: {outcome}")
            outcome = None
        done[name] = outcome
    walk = done["walk"] or {}
    walk.update(v4=inputs["walk_v4"], v6=inputs["walk_v6"])
    result: dict[str, Any] = {
        "kind": setup.kind,
        "seconds": plan.seconds,
        "valid": done["valid"],
        "walk": walk,
        "malformed": done["malformed"],
        "slow_tcp": slow_result(done["slow"], done["probes"] or [], plan)
        if done["slow"] is not None
        else None,
        "reloads": done["reloads"],
        "health": {**(done["health"] or {}), "changes_seen": watch.result()["health_changes_seen"]},
        "geoip": done.get("geoip"),
        "rss_window": list(plan.pause_window),
    }
    await asyncio.sleep(1.0)  # the last log lines
    watch.logs.read(server.logfiles)
    result.update(watch.result())
    return result


def soak_server(
    kind: str, plan: Plan, inputs: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    directory = SOAK_OUT / kind
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "logs").mkdir(parents=True)
    database = directory / "geoip.mmdb"
    shutil.copyfile(inputs["city"], database)
    extra: dict[str, Any] = {}
    if kind == "geodns" and args.geodns_config:
        extra = yaml.safe_load(Path(args.geodns_config).read_text(encoding="utf-8")) or {}
    setup = ServerSetup(
        kind=kind,
        directory=directory,
        port=free_port(),
        database=database,
        health_port=free_tcp_port(),
        admin_port=free_tcp_port() if kind == "geodns" else None,
        token=new_token() if kind == "geodns" else None,
        workers=args.workers,
        extra_config=extra,
    )
    server = ServerUnderTest(setup, directory / "logs")
    log(f"[{kind}] starting: {' '.join(server.command)}")
    startup = server.start()
    try:
        # geodns builds the big database's place index in a background process the first time
        # (its cache_dir is fresh): the soak measures the server as it runs once that is done
        index = wait_for_index(server.server, plan.index_wait_s)
        if index:
            log(f"[{kind}] geo index: {index}")
        processes = server.wait_all_processes(expected_processes(kind, args.workers))
        busy = wait_quiet(plan.quiet_wait_s, threshold_pct=25.0)
        log(
            f"[{kind}] answering after {startup:.2f} s, {processes} process(es); machine busy "
            f"{busy}% of all CPUs; soaking {plan.seconds:.0f} s"
        )
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            result = runner.run(abuse(server, plan, inputs, overwrite_geoip=kind in args.geoip_for))
        result["startup_s"] = round(startup, 2)
        result["geo_index"] = index
        result["processes_at_start"] = processes
        result["machine_busy_before_pct"] = busy
        if kind == "gdnsd":
            result["server_stats"] = gdnsd_stats(server)
    finally:
        stop = server.stop()
    result["stop"] = stop
    time.sleep(0.2)
    result["logs"]["tracebacks"] += _tracebacks_since(server.logfiles, result["logs"])
    log(f"[{kind}] stopped in {stop['seconds']} s ({stop['code']})")
    return result


def loop_factory() -> Any:
    """uvloop's event loop when it is installed (a geodns dependency): 1,500 slow clients and
    the probes cost the soak less CPU, which the machine's other work (the servers) needs."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _tracebacks_since(files: list[Path], logs: dict[str, Any]) -> int:
    """Tracebacks written after the soak's last read (at shutdown)."""
    seen = logs.get("bytes", 0)
    total = 0
    data = b""
    for path in files:
        with contextlib.suppress(OSError):
            data += path.read_bytes()
    total = data[seen:].decode("utf-8", "replace").count(report.TRACEBACK)
    return total


def gdnsd_stats(server: ServerUnderTest) -> dict[str, Any]:
    """gdnsd's own counters of what it did with bad packets and TCP (gdnsdctl stats)."""
    stats = server.gdnsdctl_json("stats")
    if not isinstance(stats, dict):
        return {}
    out: dict[str, Any] = {}
    for section in ("stats", "udp", "tcp"):
        values = stats.get(section)
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, int | float) and value:
                    out[f"gdnsd {section}.{key}"] = value
    return out


# ------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="25 s per server, smaller counts")
    parser.add_argument("--seconds", type=float, help="seconds per server (rates stay)")
    parser.add_argument("--no-gdnsd", action="store_true", help="geodns only")
    parser.add_argument("--no-geodns", action="store_true", help="gdnsd only")
    parser.add_argument(
        "--geoip-for",
        default="geodns,gdnsd",
        help="servers whose GeoIP file is overwritten (comma-separated; default both)",
    )
    parser.add_argument(
        "--database",
        default="big",
        help="the City database both servers load: big (default), small, or a path",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the benchmark keeps its databases (default: the benchmark's cache directory)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="geodns `workers` (default: its own, one per core)"
    )
    parser.add_argument(
        "--geodns-config",
        help="a YAML file merged into geodns's generated config (e.g. RRL or TCP settings)",
    )
    defaults = report.Bounds()
    parser.add_argument("--rss-bound-mb", type=float, default=defaults.rss_bound_mb)
    parser.add_argument("--max-loss-pct", type=float, default=defaults.max_valid_loss_pct)
    parser.add_argument("--min-tcp-success-pct", type=float, default=defaults.min_tcp_success_pct)
    parser.add_argument(
        "--max-error-lines-per-s", type=float, default=defaults.max_error_lines_per_s
    )
    parser.add_argument("--max-stop-s", type=float, default=defaults.max_stop_s)
    args = parser.parse_args()
    args.geoip_for = {part.strip() for part in args.geoip_for.split(",") if part.strip()}
    return args


def raise_file_limit(needed: int) -> int:
    """The soak holds ~1,500 sockets at once (and the servers inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed and (hard == resource.RLIM_INFINITY or hard >= needed):
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return soft


def main() -> int:
    args = parse_args()
    plan = QUICK if args.quick else FULL
    if args.seconds:
        plan = replace(plan, seconds=args.seconds)
    bounds = report.Bounds(
        max_valid_loss_pct=args.max_loss_pct,
        min_tcp_success_pct=args.min_tcp_success_pct,
        max_error_lines_per_s=args.max_error_lines_per_s,
        rss_bound_mb=args.rss_bound_mb,
        max_stop_s=args.max_stop_s,
    )
    kinds = [k for k, off in (("geodns", args.no_geodns), ("gdnsd", args.no_gdnsd)) if not off]
    for tool in ["dnsperf"] + (["gdnsd", "gdnsdctl"] if "gdnsd" in kinds else []):
        if shutil.which(tool) is None:
            log(f"{tool} is not installed: apt-get install -y dnsperf gdnsd")
            return 2
    limit = raise_file_limit(plan.slow_many + plan.slow_one + 2_000)
    if limit < plan.slow_many + plan.slow_one + 500:
        log(f"the open-file limit ({limit}) is too low for the slow TCP clients")
        return 2
    began = time.monotonic()
    inputs = prepare_inputs(plan, args.database, args.cache_dir or default_cache())
    results: dict[str, Any] = {}
    for kind in kinds:
        results[kind] = soak_server(kind, plan, inputs, args)
    date = dt.datetime.now(dt.UTC)
    saved = {
        "date": date.isoformat(timespec="seconds"),
        "quick": args.quick,
        "plan": asdict(plan),
        "database": {"path": str(inputs["city"]), "bytes": inputs["city"].stat().st_size},
        "bounds": report.bounds_dict(bounds),
        "machine": {**machine(), "pinning": can_pin()},
        "elapsed_s": round(time.monotonic() - began, 1),
        "servers": results,
    }
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    path = OUT / f"soak-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(saved, indent=1, default=str))
    print()
    print(
        f"soak of {date:%Y-%m-%d %H:%M} UTC, {plan.seconds:.0f} s per server"
        f"{' (--quick)' if args.quick else ''}; bounds: {report.bounds_dict(bounds)}"
    )
    print()
    print(report.table(results, bounds))
    print()
    print(report.malformed_table(results))
    print()
    print("RSS (MB) every 10 s, per process:")
    print(report.rss_table(results))
    print()
    print("counters (RRL, cookies, TCP limits and what happened to bad packets):")
    print(report.metrics_text(results))
    for label, result in results.items():
        for death in result.get("deaths", [])[:5]:
            print(
                f"{label} death at {death['t']} s: {death['how']}; GeoIP file last: "
                f"{death.get('geoip_last_step')} ({death.get('since_step_s')} s before)"
            )
        for example in result.get("logs", {}).get("examples", [])[:2]:
            print(f"{label} error line: {example[:300]}")
        malformed = result.get("malformed") or {}
        for kind, data in malformed.get("kinds", {}).items():
            for example in data.get("examples", [])[:1]:
                print(f"{label} {kind} reply rejected: {example['error']}")
    if plan.malformed_min and "geodns" in results:
        sent = report.malformed_summary((results["geodns"].get("malformed") or {}).get("kinds", {}))
        if sent["sent"] < plan.malformed_min:
            print(
                f"note: {sent['sent']:,} bad packets sent, fewer than the {plan.malformed_min:,} planned"
            )
    print(f"\nresults: {path.relative_to(ROOT)}  ({saved['elapsed_s']:.0f} s)")
    failures = (
        report.failed(report.evaluate(results["geodns"], bounds)) if "geodns" in results else []
    )
    for check in failures:
        print(f"FAILED (geodns): {check.name}: {check.value}, bound {check.bound}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

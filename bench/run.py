"""geodns against gdnsd, in one run: CPU per query, throughput, latency, ECS scopes and what they
cost resolvers' caches, memory per process, start-up and reloads of a big zone, answers compared.

    python bench/run.py                                   # the full run (docs/benchmark.md)
    python bench/run.py --quick                           # a smoke run, a few minutes
    python bench/run.py --database geolite2-2018          # on a real City database (downloaded)
    python bench/run.py --database synthetic --database geolite2-2018 --pops 6 --pops 100
    python bench/run.py --baseline ../geodns-old          # also an older geodns, same run

For each database: both servers through the static, warm and cold workloads with the 6 PoPs
of the bundled example, then warm and cold with 100 PoPs; the answers of both for every subnet
compared; the ECS scopes each returns and the resolver cache blocks they need. With
--baseline DIR, an older geodns (DIR: its source tree) runs the 6-PoP workloads right after
geodns, as the column geodns@<its commit>. Then, on the first database: a zone of 10,000
nearest-PoP names (start-up, RSS, a reload under load), and geodns's memory with 1 and 2
workers after a cold run. Results go to bench/out/results-*.json and the table is printed
(markdown).

Only 127.0.0.1 is ever a target. Every loop is bounded in count and time; every process started
here is stopped by its own PID.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: import `bench` and `geodns` from the
    # repository, and not bench/'s modules as top-level names (sys.path[0] is the script's folder)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import databases, popsets, workloads  # noqa: E402
from bench.answers import compare_geo, compare_static  # noqa: E402
from bench.common import (  # noqa: E402
    BENCH,
    CLIENT_CPU,
    FIXED,
    PROFILES,
    ROOT,
    SATURATE,
    SERVER_CPU,
    Paths,
    Profile,
    default_cache,
    log,
)
from bench.dnssec import build_times, dnssec_lines, dnssec_run  # noqa: E402
from bench.procstat import machine  # noqa: E402
from bench.report import check_lines, source_lines, table, write_json  # noqa: E402
from bench.resolver_cache import kindness  # noqa: E402
from bench.scenarios import (  # noqa: E402
    Bench,
    big_zone_run,
    cpu_run,
    full_run,
    memory_run,
    startup_run,
    with_workers,
)
from bench.servers import (  # noqa: E402
    Setup,
    can_pin,
    compile_bytecode,
    geodns_top_keys,
    source_commit,
    start_etcd,
    stop_process,
)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, 3 s per run")
    parser.add_argument(
        "--database",
        action="append",
        choices=databases.CHOICES,
        help="a City database to run on (repeat for several; default: synthetic). "
        "geolite2-2018 is downloaded with pip, iplocation-geolite2-city with npm, into the "
        "cache directory",
    )
    parser.add_argument(
        "--pops", action="append", type=int, choices=(6, 100), help="PoP sets (default: both)"
    )
    parser.add_argument("--no-gdnsd", action="store_true", help="geodns only (no ratios)")
    parser.add_argument("--no-workers", action="store_true", help="skip geodns workers: 2")
    parser.add_argument("--no-check", action="store_true", help="skip the answer comparison")
    parser.add_argument("--no-big-zone", action="store_true", help="skip the 10,000-name zone")
    parser.add_argument("--no-memory", action="store_true", help="skip workers 1 vs 2 memory")
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="also run geodns with `fleet:` on, against a local etcd (apt-get install etcd-server)",
    )
    parser.add_argument("--no-startup", action="store_true", help="skip the 100 MB start-up")
    parser.add_argument(
        "--no-dnssec", action="store_true", help="skip the signed workload and Knot DNS"
    )
    parser.add_argument(
        "--only-dnssec",
        action="store_true",
        help="only the signed workload (geodns unsigned vs signed, Knot DNS) and build times",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run py-spy against geodns under load (pip install py-spy)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run the geodns of DIR (an older source tree, e.g. a git worktree of an older "
        "commit) through the 6-PoP workloads, as a column geodns@<commit> beside geodns",
    )
    parser.add_argument("--seconds", type=float, help="override the seconds per measurement")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="where databases are kept (outside the repo)"
    )
    return parser.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Baseline:
    """An older geodns to run beside this one: its source tree and its short commit."""

    source: Path
    commit: str

    @property
    def label(self) -> str:
        """Its column in the report and its key among a section's servers."""
        return f"geodns@{self.commit}"


def baseline_of(source: Path) -> Baseline:
    """The baseline of `--baseline DIR`, labelled geodns@<DIR's short commit>; its geodns is
    imported once here (a tree that does not import fails now, not after an hour of runs)."""
    source = source.resolve()
    geodns_top_keys(source)
    return Baseline(source, source_commit(source))


def database_section(
    bench: Bench,
    db: databases.Database,
    loads: workloads.Workloads,
    pops: popsets.PopSet,
    kinds: list[str],
    check: bool,
    workers_too: bool,
    fleet_too: bool = False,
    baseline: Baseline | None = None,
) -> dict[str, Any]:
    """One database and PoP set through both servers: their runs, the answer checks and the
    resolver-cache figures (the replies themselves are not kept in the results). With a
    baseline (6 PoPs only), the older geodns right after geodns, under the same rules."""
    full = pops.label == "6-pop"
    setup = Setup(db.path, pops, gdnsd_db=db.twin)
    cold_asked = loads.cold if full else loads.block_networks(bench.profile.block_networks)
    section: dict[str, Any] = {"full": full, "pops": len(pops.pops), "servers": {}}
    servers = section["servers"]
    for kind in kinds:
        label = f"{kind}-{db.name}-{pops.label}"
        if full:
            servers[kind] = full_run(bench, kind, label, setup, loads, churn=kind == "geodns")
            if kind == "geodns" and baseline is not None:
                servers[baseline.label] = full_run(
                    bench,
                    "geodns",
                    f"{baseline.label.replace('@', '-')}-{db.name}-{pops.label}",
                    dataclasses.replace(setup, source=baseline.source),
                    loads,
                    ask=False,
                )
        else:
            servers[kind] = cpu_run(bench, kind, label, setup, loads, loads.warm + cold_asked)
    if fleet_too:  # right after the plain run, so both see the same machine
        etcd, endpoint = start_etcd(bench.paths.out / "etcd", CLIENT_CPU)
        try:
            servers["geodns-fleet"] = full_run(
                bench,
                "geodns",
                f"geodns-fleet-{db.name}-{pops.label}",
                dataclasses.replace(setup, fleet={"member": "bench", "endpoints": [endpoint]}),
                loads,
                ask=False,
            )
        finally:
            stop_process(etcd)
    if workers_too:
        servers["geodns-2w"] = full_run(
            bench,
            "geodns",
            f"geodns-2w-{db.name}-{pops.label}",
            with_workers(setup, 2),
            loads,
            cpus="0,1",  # 2 workers on 2 cores: dnsperf shares core 1 with one of them
            ask=False,
        )
    replies = {kind: servers[kind].pop("replies", {}) for kind in kinds}
    static = {kind: servers[kind].pop("static_answers", None) for kind in kinds}
    blocks = loads.block_networks(bench.profile.block_networks)
    section["kindness"] = {kind: kindness(loads.warm, blocks, replies[kind]) for kind in kinds}
    if check and "gdnsd" in kinds:
        mine, theirs = replies["geodns"], replies["gdnsd"]
        section["checks"] = {
            workload: compare_geo(
                db.maxmind_path,
                {s: mine[s] for s in subnets if s in mine},
                {s: theirs[s] for s in subnets if s in theirs},
                pops,
                workload,
            )
            for workload, subnets in (("warm", loads.warm), ("cold", cold_asked))
        }
        if static["geodns"] is not None and static["gdnsd"] is not None:
            section["checks"]["static"] = compare_static(static["geodns"], static["gdnsd"])
    return section


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    profile = PROFILES["quick" if args.quick else "full"]
    if args.seconds:
        profile = profile.with_seconds(args.seconds)
    paths = Paths(out=BENCH / "out", cache=args.cache_dir or default_cache())
    tools = ("dnsperf", "taskset") + (() if args.no_gdnsd else ("gdnsd", "gdnsdctl"))
    for tool in tools + (("etcd",) if args.fleet else ()):
        if shutil.which(tool) is None:
            log(f"{tool} is not installed: apt-get install -y dnsperf gdnsd util-linux etcd-server")
            return 2
    py_spy = shutil.which("py-spy") if args.profile else None
    if args.profile and not py_spy:
        log("--profile needs py-spy: pip install py-spy")
        return 2
    baseline = None
    if args.baseline is not None:
        if not (args.baseline / "geodns" / "__main__.py").is_file():
            log(f"--baseline {args.baseline}: not a geodns source tree (no geodns/__main__.py)")
            return 2
        baseline = baseline_of(args.baseline)
        log(f"baseline: {baseline.label}")
    paths.create()
    for tree in [ROOT] + ([baseline.source] if baseline is not None else []):
        compile_bytecode(tree)
    bench = Bench(paths, profile)
    began = time.monotonic()
    if not can_pin():
        log("warning: fewer than 2 CPUs or no taskset: server and dnsperf are not pinned")
    kinds = ["geodns"] + ([] if args.no_gdnsd else ["gdnsd"])
    pop_sets = [popsets.six_pops()]
    if 100 in (args.pops or [6, 100]):
        pop_sets.append(popsets.hundred_pops())
    if args.pops and 6 not in args.pops:
        pop_sets = pop_sets[1:]
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": profile.name,
        "machine": {**machine(), "pinning": can_pin()},
        "settings": {
            **dataclasses.asdict(profile),
            "saturate_dnsperf": SATURATE,
            "fixed_dnsperf": FIXED,
            "server_cpu": SERVER_CPU,
        },
        "pops": {pops.label: [dataclasses.asdict(p) for p in pops.pops] for pops in pop_sets},
        "databases": {},
    }
    if baseline is not None:
        results["baseline"] = {"label": baseline.label, "commit": baseline.commit}
    first: tuple[databases.Database, workloads.Workloads] | None = None
    if args.only_dnssec:
        name = (args.database or ["synthetic"])[0]
        db = databases.load(name, paths.cache, log)
        loads = workloads.build(databases.v4_networks(db.path), profile, paths.out, name)
        results["dnssec"] = dnssec_section(bench, db, loads, profile)
        return finish(results, paths, began, args.quick, dnssec_lines(results["dnssec"]))
    for name in args.database or ["synthetic"]:
        db = databases.load(name, paths.cache, log)
        t0 = time.monotonic()
        loads = workloads.build(databases.v4_networks(db.path), profile, paths.out, name)
        log(
            f"{name}: {db.megabytes} MB; workloads of {len(loads.warm):,} warm and "
            f"{len(loads.cold):,} cold /24s ({time.monotonic() - t0:.0f} s)"
        )
        entry: dict[str, Any] = {"database": db.describe(), "sections": {}}
        for pops in pop_sets:
            workers_too = (
                first is None and pops.label == "6-pop" and not args.no_workers and not args.quick
            )
            fleet_too = args.fleet and first is None and pops.label == "6-pop"
            entry["sections"][pops.label] = database_section(
                bench,
                db,
                loads,
                pops,
                kinds,
                not args.no_check,
                workers_too,
                fleet_too=fleet_too,
                baseline=baseline,
            )
        results["databases"][name] = entry
        first = first or (db, loads)
    assert first is not None
    db, loads = first
    six = popsets.six_pops()
    if not args.no_big_zone:
        setup = Setup(db.path, six, big_zone_names=profile.big_zone_names, gdnsd_db=db.twin)
        results["big_zone"] = {"database": db.name}
        for kind in kinds:
            results["big_zone"][kind] = big_zone_run(bench, kind, setup, loads)
    big = None
    if profile.big_db or (paths.cache / "city-100mb.mmdb").exists():
        big = databases.synthetic(paths.cache, log, big=True)
    if not args.no_memory:
        memory_db, memory_loads = db, loads
        if big is not None:
            networks = databases.v4_networks(big.path)
            memory_db, memory_loads = big, workloads.build(networks, profile, paths.out, big.name)
        results["memory"] = {"database": memory_db.name, "database_mb": memory_db.megabytes}
        for workers in (1, 2):
            setup = Setup(memory_db.path, six, workers=workers)
            results["memory"][str(workers)] = memory_run(bench, setup, memory_loads)
    if big is not None and not args.no_startup:
        results["startup_big_db"] = {
            kind: startup_run(bench, kind, f"{kind}-startup-big", Setup(big.path, six))
            for kind in kinds
        }
    if not args.no_dnssec:
        results["dnssec"] = dnssec_section(bench, db, loads, profile)
    if py_spy:
        from bench.profiling import profile_geodns

        results["py_spy"] = profile_geodns(bench, Setup(db.path, six), loads, py_spy)
    lines = source_lines(results) + check_lines(results)
    if "dnssec" in results:
        lines += dnssec_lines(results["dnssec"])
    print()
    print(table(results))
    return finish(results, paths, began, args.quick, lines)


def finish(
    results: dict[str, Any], paths: Paths, began: float, quick: bool, lines: list[str]
) -> int:
    """Write the results file and print what the table does not show."""
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    path = paths.out / f"results-{stamp}{'-quick' if quick else ''}.json"
    write_json(path, results)
    print()
    print("\n".join(lines))
    print(f"\nresults: bench/out/{path.name}  ({results['elapsed_s']:.0f} s)")
    return 0


def dnssec_section(
    bench: Bench, db: databases.Database, loads: workloads.Workloads, profile: Profile
) -> dict[str, Any]:
    """The signed workload (geodns, Knot DNS) on the 6 PoPs, and snapshot build times."""
    six = popsets.six_pops()
    return {
        "run": dnssec_run(bench, db, loads, six, knot=True),
        "build": build_times(db.path, six, 10_000, bench.paths.out / "dnssec-build"),
    }


if __name__ == "__main__":
    raise SystemExit(main())

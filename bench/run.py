"""geodns against gdnsd, in one run: throughput, CPU per query, latency, start-up, RSS, answers.

    python bench/run.py            # the full run (about 10 minutes; docs/benchmark.md)
    python bench/run.py --quick    # a smoke run (small workloads, 3 s per measurement)

What it does, in order (docs/benchmark.md explains every choice):
1. builds two synthetic GeoIP2-City databases from the bundled country one (bench/mmdb_synth.py;
   cached in bench/out/ and rebuilt only when their inputs change): the benchmark database and
   a ~100 MB one for the start-up measurement;
2. writes the workloads as dnsperf binary input (-B: length-prefixed wire messages, because
   dnsperf's -E puts one ECS option on every query): warm geo (10,000 distinct /24 ECS subnets
   for www.cdn.example.com A, six PoPs), a static mix, and cold geo (~1M distinct subnets);
3. starts geodns and gdnsd (Debian's 3.8) in turn on 127.0.0.1, each pinned to CPU 0 with
   dnsperf pinned to CPU 1, and for each workload measures the saturated rate, the server's
   CPU per answered query (utime+stime from /proc), latency percentiles at a fixed 2,000 qps,
   lost queries, RSS and the time from exec to the first answer;
4. asks both servers for every warm and every cold subnet (a window of queries at a time over
   one UDP socket) and compares the A answers; prints the table with the ratio geodns/gdnsd and writes
   bench/out/results-<date>.json.

Only 127.0.0.1 is ever a target. Every loop is bounded in count and time; every process started
here is stopped by its own PID.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import mmdb_synth  # noqa: E402

HOST = "127.0.0.1"  # the only target, ever
ZONE = "cdn.example.com"
GEO_NAME = f"www.{ZONE}"
EXAMPLE_CONFIG = ROOT / "geodns" / "data" / "example-config.yaml"
SERVER_CPU = "0"
CLIENT_CPU = "1"
FIXED_QPS = 2000
NOISY_PCT = 10.0  # other sessions' load (% of one CPU) above which a run is tried again
ATTEMPTS = 3
# at 2,000 qps a server idles 97% of the time and its tail is mostly the wait for a CPU that
# someone else holds: a latency run is tried again above this much other load, more times
LATENCY_NOISY_PCT = 3.0
LATENCY_ATTEMPTS = 5

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "warm_subnets": 10_000,
        "cold_subnets": 1_000_000,
        "cold_latency_subnets": 210_000,  # 5 attempts x 20 s x 2,000 qps, each its own
        "saturate_seconds": 15,
        "latency_seconds": 20,
        "startup_big_db": True,
        "quiet_wait_s": 30,
    },
    "quick": {
        "warm_subnets": 2_000,
        "cold_subnets": 60_000,
        "cold_latency_subnets": 32_000,
        "saturate_seconds": 3,
        "latency_seconds": 3,
        "startup_big_db": False,  # measured only when the 100 MB database is already built
        "quiet_wait_s": 3,
    },
}
BENCH_DB = {"split_v4": 20, "split_v6": 32, "variants": 1}  # ~1.7M networks, ~23 MB
BIG_DB = {"split_v4": 22, "split_v6": 40, "variants": 6}  # ~5.2M networks, ~100 MB
SATURATE = ["-T", "2", "-c", "20", "-q", "100", "-t", "2"]  # dnsperf: saturating, no drops
FIXED = ["-c", "4", "-q", "50", "-t", "2", "-Q", str(FIXED_QPS)]


def log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------------------
# Queries in wire format (dnsperf -B input: 2-byte length + message; dnsperf rewrites the ID)
# ------------------------------------------------------------------------------------------------


def wire_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"


def query_wire(name: str, qtype: int, ecs: tuple[int, int] | None = None) -> bytes:
    """A resolver-like query: RD=0, EDNS0 (UDP 1232), optionally ECS for an IPv4 network."""
    option = b""
    if ecs is not None:
        address, prefix = ecs
        raw = address.to_bytes(4, "big")[: (prefix + 7) // 8]
        option = struct.pack(">HHHBB", 8, 4 + len(raw), 1, prefix, 0) + raw
    opt = b"\0" + struct.pack(">HHIH", 41, 1232, 0, len(option)) + option
    return (
        struct.pack(">HHHHHH", 0, 0, 1, 0, 0, 1)
        + wire_name(name)
        + struct.pack(">HH", qtype, 1)
        + opt
    )


def write_binary(path: Path, messages: list[bytes]) -> None:
    with path.open("wb") as handle:
        for message in messages:
            handle.write(struct.pack(">H", len(message)) + message)


STATIC_MIX = [  # (name, type): every static kind of answer both servers give
    (ZONE, "SOA"),
    (ZONE, "NS"),
    (ZONE, "MX"),
    (ZONE, "TXT"),
    (ZONE, "CAA"),
    (f"mx1.{ZONE}", "A"),
    (f"mx1.{ZONE}", "AAAA"),  # NODATA
    (f"ns1.{ZONE}", "AAAA"),
    (f"ns2.{ZONE}", "A"),
    (f"_imap._tcp.{ZONE}", "SRV"),
    (f"nothing-here.{ZONE}", "A"),  # NXDOMAIN
]
QTYPES = {"A": 1, "NS": 2, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33, "CAA": 257}


def draw_subnets(
    networks: list[tuple[int, int]], count: int, rng: random.Random, exclude: set[int]
) -> list[int]:
    """`count` distinct /24s (as 32-bit ints), each inside a network drawn uniformly from the
    database's IPv4 networks (so small networks are as likely as big ones)."""
    chosen: list[int] = []
    seen = set(exclude)
    attempts = 0
    while len(chosen) < count and attempts < count * 20:
        attempts += 1
        start, prefix = networks[rng.randrange(len(networks))]
        blocks = 1 << max(0, 24 - prefix)
        subnet = (start >> 8 << 8) + (rng.randrange(blocks) << 8)
        if subnet not in seen:
            seen.add(subnet)
            chosen.append(subnet)
    if len(chosen) < count:
        raise RuntimeError(f"could draw only {len(chosen)} distinct /24s of {count}")
    return chosen


@dataclass
class Workloads:
    warm: list[int]
    cold: list[int]
    cold_latency: list[int]
    files: dict[str, Path] = field(default_factory=dict)


def build_workloads(db: Path, profile: dict[str, Any], seed: int = 6) -> Workloads:
    rng = random.Random(seed)
    networks = mmdb_synth.v4_networks(db)
    warm = draw_subnets(networks, profile["warm_subnets"], rng, set())
    cold = draw_subnets(networks, profile["cold_subnets"], rng, set(warm))
    cold_latency = draw_subnets(
        networks, profile["cold_latency_subnets"], rng, set(warm) | set(cold)
    )
    loads = Workloads(warm, cold, cold_latency)
    share = len(cold_latency) // LATENCY_ATTEMPTS
    parts = [("warm", warm), ("cold", cold)] + [
        (f"cold-latency-{i}", cold_latency[i * share : (i + 1) * share])
        for i in range(LATENCY_ATTEMPTS)
    ]
    for name, subnets in parts:
        path = OUT / f"queries-{name}.bin"
        write_binary(path, [query_wire(GEO_NAME, 1, (s, 24)) for s in subnets])
        loads.files[name] = path
    static = [query_wire(n, QTYPES[t]) for n, t in STATIC_MIX] * 200
    path = OUT / "queries-static.bin"
    write_binary(path, static)
    loads.files["static"] = path
    return loads


# ------------------------------------------------------------------------------------------------
# The two servers' configurations: same zone, same PoPs, same database
# ------------------------------------------------------------------------------------------------


def example_sites() -> dict[str, Any]:
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    return config["sites"]


def pops(sites: dict[str, Any]) -> list[tuple[str, float, float, str, str | None]]:
    """(name, lat, lon, IPv4, IPv6 or None) of every PoP, in the example config's order."""
    out = []
    for name, site in sites.items():
        if site.get("kind") != "pop":
            continue
        v4 = [a for a in site["addresses"] if ":" not in str(a)]
        v6 = [a for a in site["addresses"] if ":" in str(a)]
        out.append(
            (
                name,
                float(site["location"]["lat"]),
                float(site["location"]["lon"]),
                v4[0],
                v6[0] if v6 else None,
            )
        )
    return out


DEFAULT_ORDER = ["ashburn", "frankfurt", "singapore"]  # users who cannot be located

GEODNS_ZONE = """---
'':
  - type: CAA
    value:
      flags: 0
      tag: issue
      value: letsencrypt.org
  - type: MX
    values:
      - exchange: mx1.cdn.example.com.
        preference: 10
  - ttl: 86400
    type: NS
    values:
      - ns1.cdn.example.com.
      - ns2.cdn.example.com.
  - type: TXT
    value: v=spf1 -all
_imap._tcp:
  type: SRV
  value:
    port: 993
    priority: 10
    target: mx1.cdn.example.com.
    weight: 5
mx1:
  type: A
  value: 192.0.2.25
ns1:
  - ttl: 86400
    type: A
    value: 192.0.2.53
  - ttl: 86400
    type: AAAA
    value: 2001:db8::53
ns2:
  - ttl: 86400
    type: A
    value: 198.51.100.53
  - ttl: 86400
    type: AAAA
    value: 2001:db8:1::53
www:
  - octodns:
      geodns:
        default_order: [{order}]
        nearest: true
    ttl: 30
    type: A
    values:
{v4}
  - octodns:
      geodns:
        default_order: [{order}]
        nearest: true
    ttl: 30
    type: AAAA
    values:
{v6}
"""

GDNSD_ZONE = """$TTL 3600
@ 300 SOA ns1 hostmaster 1 7200 3600 1209600 300
@ 86400 NS ns1
@ 86400 NS ns2
@ MX 10 mx1
@ TXT "v=spf1 -all"
@ CAA 0 issue "letsencrypt.org"
_imap._tcp SRV 10 5 993 mx1
mx1 A 192.0.2.25
ns1 86400 A 192.0.2.53
ns1 86400 AAAA 2001:db8::53
ns2 86400 A 198.51.100.53
ns2 86400 AAAA 2001:db8:1::53
www 30 DYNA geoip!www
"""


def write_geodns_config(
    directory: Path,
    port: int,
    db: Path,
    sites: dict[str, Any],
    workers: int,
    fleet: dict[str, Any] | None = None,
) -> Path:
    zones = directory / "zones"
    zones.mkdir(parents=True, exist_ok=True)
    pop_list = pops(sites)
    order = ", ".join(DEFAULT_ORDER)
    v4 = "\n".join(f"      - {p[3]}" for p in sorted(pop_list, key=lambda p: p[3]))
    v6 = "\n".join(f"      - {p[4]}" for p in sorted(pop_list, key=lambda p: p[4] or "") if p[4])
    (zones / f"{ZONE}.yaml").write_text(GEODNS_ZONE.format(order=order, v4=v4, v6=v6))
    config = {
        "listen": [HOST],
        "port": port,
        "zones_dir": str(zones),
        "watch_zones": False,
        "admin": {"listen": None, "socket": str(directory / "admin.sock")},
        "logging": {"level": "warning"},
        "geoip": {"database": str(db)},
        "workers": workers,
        "sites": sites,
    }
    if fleet is not None:
        config["fleet"] = fleet
    path = directory / "geodns.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def write_gdnsd_config(directory: Path, port: int, db: Path, sites: dict[str, Any]) -> Path:
    """gdnsd 3.8: city-auto-mode map (no `map` stanza: nearest for everyone), same PoPs."""
    for sub in ("zones", "run", "state"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    pop_list = pops(sites)
    by_name = {p[0]: p for p in pop_list}
    order = DEFAULT_ORDER + [p[0] for p in pop_list if p[0] not in DEFAULT_ORDER]
    coords = "\n".join(f"          {p[0]} => [ {p[1]}, {p[2]} ]" for p in pop_list)
    dcmap = []
    for name in order:
        _, _, _, v4, v6 = by_name[name]
        addresses = f"addrs_v4 => [ {v4} ]" + (f", addrs_v6 => [ {v6} ]" if v6 else "")
        dcmap.append(f"          {name} => {{ {addresses} }}")
    dcmap_text = "\n".join(dcmap)
    config = f"""# generated by bench/run.py: gdnsd 3.8 twin of the geodns benchmark config
options => {{
  listen => [ {HOST}:{port} ]
  run_dir => {directory / "run"}
  state_dir => {directory / "state"}
  udp_threads => 1
  tcp_threads => 1
  edns_client_subnet => true
}}
plugins => {{
  geoip => {{
    maps => {{
      pops => {{
        geoip2_db => {db}
        datacenters => [ {", ".join(order)} ]
        auto_dc_coords => {{
{coords}
        }}
      }}
    }}
    resources => {{
      www => {{
        map => pops
        dcmap => {{
{dcmap_text}
        }}
      }}
    }}
  }}
}}
"""
    (directory / "config").write_text(config)
    (directory / "zones" / ZONE).write_text(GDNSD_ZONE)
    return directory


# ------------------------------------------------------------------------------------------------
# Processes: start, wait for the first answer, CPU and memory from /proc, stop
# ------------------------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def stat_fields(pid: int | str) -> list[bytes] | None:
    """/proc/PID/stat after the command name (field 3 of proc(5) first), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """pid and every process below it (geodns workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        fields = stat_fields(entry) if entry.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo and len(out) < 1000:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        fields = stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / CLOCK_TICKS


def memory_kb(pids: list[int], key: str = "VmRSS") -> int:
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
    busy_pct = 100.0
    while True:
        busy0, total0 = machine_jiffies()
        time.sleep(0.5)
        busy1, total1 = machine_jiffies()
        busy_pct = 100.0 * (busy1 - busy0) / max(1, total1 - total0)
        if busy_pct <= threshold_pct or time.monotonic() >= deadline:
            return round(busy_pct, 1)


def pin(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if PINNING else []


PINNING = bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2


class Server:
    """One server process (and its workers): start, wait for an answer, measure, stop."""

    def __init__(self, label: str, command: list[str], port: int, logfile: Path) -> None:
        self.label = label
        self.command = command
        self.port = port
        self.logfile = logfile
        self.process: subprocess.Popen[bytes] | None = None
        self.startup: float | None = None

    def start(self, probe: bytes, timeout: float = 120.0) -> float:
        handle = self.logfile.open("wb")
        began = time.monotonic()
        self.process = subprocess.Popen(
            self.command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        deadline = began + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.005)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.label} exited with {self.process.returncode}: "
                        f"{self.logfile.read_text(errors='replace')[-2000:]}"
                    )
                sock.sendto(probe, (HOST, self.port))
                try:
                    sock.recvfrom(4096)
                except OSError:
                    continue
                self.startup = time.monotonic() - began
                return self.startup
        self.stop()
        raise RuntimeError(f"{self.label} did not answer within {timeout} s")

    @property
    def pids(self) -> list[int]:
        assert self.process is not None
        return descendants(self.process.pid)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        stop_process(process)
        for pid in descendants(process.pid)[1:]:  # stray workers, if any: by their own PID
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------------
# dnsperf
# ------------------------------------------------------------------------------------------------


def dnsperf(
    port: int,
    datafile: Path,
    seconds: float,
    extra: list[str],
    verbose: bool = False,
    runs: int | None = None,
) -> dict[str, Any]:
    command = pin(CLIENT_CPU) + [
        "dnsperf",
        "-B",
        "-d",
        str(datafile),
        "-s",
        HOST,
        "-p",
        str(port),
        *extra,
    ]
    if runs is not None:
        command += ["-n", str(runs)]
    else:
        command += ["-l", str(seconds)]
    if verbose:
        command.append("-v")
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    text = result.stdout
    stats: dict[str, Any] = {"command": " ".join(command[len(pin(CLIENT_CPU)) :])}

    def grab(pattern: str, kind: Any = int) -> Any:
        match = re.search(pattern, text)
        return kind(match.group(1)) if match else None

    stats["sent"] = grab(r"Queries sent:\s+(\d+)")
    stats["completed"] = grab(r"Queries completed:\s+(\d+)")
    stats["lost"] = grab(r"Queries lost:\s+(\d+)")
    stats["qps"] = grab(r"Queries per second:\s+([\d.]+)", float)
    stats["run_time"] = grab(r"Run time \(s\):\s+([\d.]+)", float)
    stats["avg_latency_ms"] = (grab(r"Average Latency \(s\):\s+([\d.]+)", float) or 0) * 1000
    codes = re.search(r"Response codes:\s+(.*)", text)
    stats["rcodes"] = codes.group(1).strip() if codes else ""
    if stats["completed"] is None:
        raise RuntimeError(f"dnsperf failed: {result.stdout[-1500:]} {result.stderr[-1500:]}")
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


QUIET_WAIT_S = [30.0]  # set from the profile in main()


def measured_run(
    server: Server, datafile: Path, seconds: float, extra: list[str], verbose: bool = False
) -> dict[str, Any]:
    """One dnsperf run with the CPU of everyone involved: the server (per process), dnsperf,
    and the rest of the machine (other sessions share it: their share is reported)."""
    idle_before = wait_quiet(QUIET_WAIT_S[0])
    pids = server.pids
    per_process = {pid: cpu_seconds([pid]) for pid in pids}
    busy0, total0 = machine_jiffies()
    client0 = children_cpu()
    wall0 = time.monotonic()
    stats = dnsperf(server.port, datafile, seconds, extra, verbose=verbose)
    wall = time.monotonic() - wall0
    client = children_cpu() - client0
    busy1, total1 = machine_jiffies()
    per_process = {pid: cpu_seconds([pid]) - before for pid, before in per_process.items()}
    cpu = sum(per_process.values())
    machine_busy = (busy1 - busy0) / CLOCK_TICKS
    answered = stats["completed"] or 1
    run_time = stats["run_time"] or wall
    stats["server_cpu_s"] = round(cpu, 3)
    stats["server_cpu_us_per_query"] = round(cpu / answered * 1e6, 2)
    stats["server_busy_pct"] = round(100 * cpu / run_time, 1)
    if len(per_process) > 1:
        stats["server_busy_pct_per_process"] = [
            round(100 * v / run_time, 1) for v in per_process.values()
        ]
    stats["dnsperf_busy_pct"] = round(100 * client / wall, 1)
    stats["others_busy_pct"] = round(max(0.0, 100 * (machine_busy - cpu - client) / wall), 1)
    stats["machine_busy_before_pct"] = idle_before
    return stats


def quietest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run that the rest of the machine disturbed least; every attempt is kept."""
    best = dict(min(runs, key=lambda r: r["others_busy_pct"]))
    if len(runs) > 1:
        best["attempts"] = [
            {
                k: r.get(k)
                for k in ("qps", "server_cpu_us_per_query", "others_busy_pct", "lost", "latency")
            }
            for r in runs
        ]
    return best


def measure(
    server: Server, datafile: Path, seconds: float, warmup: bool, retry: bool = True
) -> dict[str, Any]:
    """Saturated run: dnsperf at full speed; server CPU per answered query from /proc.

    A cold workload is not retried: a second pass would find its subnets cached."""
    if warmup:  # every query of the file once, so the caches hold every subnet
        dnsperf(server.port, datafile, seconds, SATURATE, runs=1)
    runs = [measured_run(server, datafile, seconds, SATURATE)]
    while retry and len(runs) < ATTEMPTS and runs[-1]["others_busy_pct"] > NOISY_PCT:
        runs.append(measured_run(server, datafile, seconds, SATURATE))
    return quietest(runs)


def fixed_rate(server: Server, datafiles: list[Path], seconds: float) -> dict[str, Any]:
    """Latency at a fixed 2,000 qps, from dnsperf -v (one line per answer with its latency).

    Each attempt reads its own file, so that a retried cold run meets subnets never seen."""
    runs = [measured_run(server, datafiles[0], seconds, FIXED, verbose=True)]
    while (
        len(runs) < min(LATENCY_ATTEMPTS, len(datafiles))
        and runs[-1]["others_busy_pct"] > LATENCY_NOISY_PCT
    ):
        runs.append(measured_run(server, datafiles[len(runs)], seconds, FIXED, verbose=True))
    return quietest(runs)


# ------------------------------------------------------------------------------------------------
# Answers: every warm and every cold subnet, asked 256 at a time over one UDP socket
# ------------------------------------------------------------------------------------------------

ASK_WINDOW = 256  # queries in flight at once: well within a server's receive buffer
ASK_ATTEMPTS = 3
ASK_TIMEOUT_S = 1.0


def skip_name(message: bytes, offset: int) -> int:
    """The offset after a (possibly compressed) name in a reply."""
    for _ in range(128):
        length = message[offset]
        if length == 0:
            return offset + 1
        if length >= 0xC0:
            return offset + 2
        offset += 1 + length
    raise ValueError("name too long")


def a_answer(reply: bytes) -> tuple[str, ...] | str:
    """The sorted A addresses of a reply's answer section, or its rcode when not NOERROR."""
    flags, qdcount, ancount = struct.unpack_from(">HHH", reply, 2)
    if flags & 0xF:
        return f"rcode {flags & 0xF}"
    offset = 12
    for _ in range(qdcount):
        offset = skip_name(reply, offset) + 4
    addresses = []
    for _ in range(ancount):
        offset = skip_name(reply, offset)
        rtype, _, _, length = struct.unpack_from(">HHIH", reply, offset)
        offset += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[offset : offset + 4]))
        offset += length
    return tuple(sorted(addresses))


def ask_geo(
    port: int, subnets: list[int], limit_s: float = 600.0
) -> dict[int, tuple[str, ...] | str]:
    """The A answer each /24 subnet gets (ECS, as dnsperf sends it), every one of them.

    dnspython at a few thousand queries a second would need minutes for the cold workload's
    million subnets; this sends a window of queries (the ID is the position in the window),
    collects the replies, and asks again for those missing, three times at most."""
    answers: dict[int, tuple[str, ...] | str] = {}
    deadline = time.monotonic() + limit_s
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((HOST, port))
        for start in range(0, len(subnets), ASK_WINDOW):
            if time.monotonic() > deadline:
                break
            window = subnets[start : start + ASK_WINDOW]
            messages = [
                struct.pack(">H", i) + query_wire(GEO_NAME, 1, (subnet, 24))[2:]
                for i, subnet in enumerate(window)
            ]
            waiting = set(range(len(window)))
            for _attempt in range(ASK_ATTEMPTS):
                for i in sorted(waiting):
                    sock.send(messages[i])
                sock.settimeout(ASK_TIMEOUT_S)
                with contextlib.suppress(TimeoutError):
                    while waiting:
                        reply = sock.recv(4096)
                        i = struct.unpack_from(">H", reply)[0]
                        if i in waiting:
                            waiting.discard(i)
                            answers[window[i]] = a_answer(reply)
                if not waiting:
                    break
            for i in waiting:
                answers[window[i]] = "no answer"
    return answers


def ask_static(port: int) -> dict[str, Any]:
    import dns.message
    import dns.query

    out = {}
    for name, rtype in STATIC_MIX:
        query = dns.message.make_query(name, rtype, use_edns=0, payload=1232)
        query.flags = 0
        try:
            reply = dns.query.udp(query, HOST, port=port, timeout=2.0)
        except Exception as exc:
            out[f"{name} {rtype}"] = f"error {exc}"
            continue
        answer = sorted(
            f"{rrset.name} {rrset.rdtype!r} {r.to_text()}"
            for rrset in reply.answer
            for r in rrset
            if rrset.rdtype != 6  # SOA: serial and names are each server's own
        )
        soa = any(rrset.rdtype == 6 for rrset in reply.answer + reply.authority)
        out[f"{name} {rtype}"] = {
            "rcode": reply.rcode(),
            "answer": answer,
            "soa": soa,
            "aa": bool(reply.flags & 0x0400),
        }
    return out


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


def compare_geo(
    db: Path, first: dict[int, Any], second: dict[int, Any], pop_list: list[Any], label: str
) -> dict[str, Any]:
    """Same A answer for every subnet? Mismatches with both distances, near ties apart."""
    import maxminddb

    by_address = {p[3]: p for p in pop_list}
    reader = maxminddb.open_database(str(db))
    mismatches = []
    near_ties = 0
    missing = 0
    try:
        for subnet, mine in first.items():
            theirs = second.get(subnet)
            if theirs is None:
                missing += 1
                continue
            if mine == theirs:
                continue
            address = socket.inet_ntoa(subnet.to_bytes(4, "big"))
            record = reader.get(address) or {}
            location = record.get("location") or {}
            row: dict[str, Any] = {"subnet": f"{address}/24", "geodns": mine, "gdnsd": theirs}
            if "latitude" in location and isinstance(mine, tuple) and isinstance(theirs, tuple):
                lat, lon = location["latitude"], location["longitude"]
                row["location"] = [lat, lon, (record.get("country") or {}).get("iso_code")]
                distances = {}
                for side, answer in (("geodns", mine), ("gdnsd", theirs)):
                    pop = by_address.get(answer[0]) if answer else None
                    if pop is not None:
                        distances[side] = round(haversine(lat, lon, pop[1], pop[2]), 1)
                row["km"] = distances
                if len(distances) == 2:
                    gap = abs(distances["geodns"] - distances["gdnsd"])
                    row["gap_km"] = round(gap, 2)
                    if gap <= max(1.0, 0.001 * max(distances.values())):
                        near_ties += 1
                        row["near_tie"] = True
            mismatches.append(row)
    finally:
        reader.close()
    return {
        "workload": label,
        "compared": len(first) - missing,
        "same": len(first) - missing - len(mismatches),
        "mismatches": len(mismatches),
        "near_ties": near_ties,
        "missing": missing,
        "examples": mismatches[:25],
    }


def compare_static(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    differences = {}
    for key, mine in first.items():
        theirs = second.get(key)
        if mine != theirs:
            differences[key] = {"geodns": mine, "gdnsd": theirs}
    return {"compared": len(first), "differences": differences}


# ------------------------------------------------------------------------------------------------
# One server through every workload
# ------------------------------------------------------------------------------------------------


def probe_query() -> bytes:
    message = query_wire(GEO_NAME, 1, (int.from_bytes(socket.inet_aton("8.8.8.0"), "big"), 24))
    return b"\x12\x34" + message[2:]


def server_command(
    kind: str,
    directory: Path,
    port: int,
    db: Path,
    sites: dict[str, Any],
    workers: int,
    cpus: str,
    fleet: dict[str, Any] | None = None,
) -> list[str]:
    """Write the server's configuration into `directory`; the command that starts it pinned."""
    if kind == "geodns":
        config = write_geodns_config(directory, port, db, sites, workers, fleet)
        return pin(cpus) + [sys.executable, "-m", "geodns", "serve", "--config", str(config)]
    write_gdnsd_config(directory, port, db, sites)
    return pin(cpus) + ["gdnsd", "-c", str(directory), "start"]


def run_server(
    label: str,
    kind: str,
    db: Path,
    loads: Workloads,
    profile: dict[str, Any],
    sites: dict[str, Any],
    workers: int = 1,
    server_cpus: str = SERVER_CPU,
    check: bool = True,
    fleet: dict[str, Any] | None = None,
) -> dict[str, Any]:
    port = free_port()
    directory = OUT / label
    directory.mkdir(parents=True, exist_ok=True)
    command = server_command(kind, directory, port, db, sites, workers, server_cpus, fleet)
    config = directory / "geodns.yaml"
    server = Server(label, command, port, OUT / "logs" / f"{label}.log")
    result: dict[str, Any] = {
        "label": label,
        "kind": kind,
        "workers": workers,
        "command": " ".join(command),
    }
    log(f"[{label}] starting: {' '.join(command)}")
    startup = server.start(probe_query())
    try:
        if workers > 1:
            time.sleep(1.0)  # the extra workers bind a moment after the main process answers
        result["startup_s"] = round(startup, 3)
        result["rss_start_mb"] = round(memory_kb(server.pids) / 1024, 1)
        result["processes"] = len(server.pids)
        log(
            f"[{label}] answering after {startup:.2f} s, RSS {result['rss_start_mb']} MB, "
            f"{result['processes']} process(es)"
        )
        seconds = profile["saturate_seconds"]
        latency_seconds = profile["latency_seconds"]
        runs: dict[str, Any] = {}
        cold_latency = [loads.files[f"cold-latency-{i}"] for i in range(LATENCY_ATTEMPTS)]
        for workload, datafile, latency_files, warm in (
            ("static", loads.files["static"], [loads.files["static"]] * LATENCY_ATTEMPTS, True),
            ("warm", loads.files["warm"], [loads.files["warm"]] * LATENCY_ATTEMPTS, True),
            ("cold", loads.files["cold"], cold_latency, False),
        ):
            saturated = measure(server, datafile, seconds, warmup=warm, retry=warm)
            fixed = fixed_rate(server, latency_files, latency_seconds)
            runs[workload] = {"saturated": saturated, "fixed": fixed}
            lat = fixed.get("latency", {})
            log(
                f"[{label}] {workload:6s} {saturated['qps']:>9,.0f} qps  "
                f"{saturated['server_cpu_us_per_query']:6.1f} us/query  "
                f"busy {saturated['server_busy_pct']:5.1f}%  lost {saturated['lost']}  "
                f"(dnsperf {saturated['dnsperf_busy_pct']}%, others "
                f"{saturated['others_busy_pct']}%)  | "
                f"@{FIXED_QPS} qps p50 {lat.get('p50_ms')} ms p99 {lat.get('p99_ms')} ms "
                f"lost {fixed['lost']}"
            )
        result["runs"] = runs
        if kind == "geodns" and workers == 1:
            result["churn"] = churn(server, config, loads.files["warm"], seconds)
        pids = server.pids
        result["rss_end_mb"] = round(memory_kb(pids) / 1024, 1)
        result["rss_peak_mb"] = round(memory_kb(pids, "VmHWM") / 1024, 1)
        if check:
            began = time.monotonic()
            result["answers"] = {
                "warm": ask_geo(port, loads.warm),
                "cold": ask_geo(port, loads.cold),
                "static": ask_static(port),
            }
            log(
                f"[{label}] asked for {len(loads.warm) + len(loads.cold):,} subnets in "
                f"{time.monotonic() - began:.1f} s"
            )
    finally:
        server.stop()
    return result


def start_etcd(directory: Path, timeout: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """A one-node etcd (Debian's etcd-server) on 127.0.0.1 for the geodns-fleet run, pinned
    with dnsperf (it idles while queries are measured: no query reads etcd). Its endpoint."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    client, peer = f"http://{HOST}:{free_port()}", f"http://{HOST}:{free_port()}"
    command = pin(CLIENT_CPU) + [
        "etcd", "--name", "bench", "--data-dir", str(directory / "data"),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"bench={peer}", "--logger", "zap", "--log-level", "warn",
    ]  # fmt: skip
    with (directory / "etcd.log").open("wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(f"{client}/health", timeout=1) as response,
        ):
            if json.loads(response.read()).get("health") == "true":
                log(f"[etcd] ready at {client}")
                return process, client
        if process.poll() is not None:
            break
        time.sleep(0.1)
    stop_process(process)
    raise RuntimeError(f"etcd did not become healthy: see {directory / 'etcd.log'}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s: by the process's own PID."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def churn(server: Server, config: Path, datafile: Path, seconds: float) -> dict[str, Any]:
    """Saturating load while the server is reloaded (SIGHUP) and a PoP drained and undrained
    through the admin socket, alternately, every half second: no query may be lost."""
    assert server.process is not None
    outcome: dict[str, Any] = {}
    load = threading.Thread(
        target=lambda: outcome.update(dnsperf(server.port, datafile, seconds, SATURATE))
    )
    load.start()
    reloads = drains = failures = 0
    began = time.monotonic()
    while load.is_alive() and time.monotonic() - began < seconds + 30:
        time.sleep(0.5)
        if (reloads + drains) % 2 == 0:
            os.kill(server.process.pid, signal.SIGHUP)
            reloads += 1
        else:
            action = "drain" if drains % 2 == 0 else "undrain"
            done = subprocess.run(
                pin(CLIENT_CPU)
                + [sys.executable, "-m", "geodns", action, "jakarta", "--config", str(config)],
                capture_output=True,
                timeout=30,
                check=False,
            )
            failures += done.returncode != 0
            drains += 1
    load.join(timeout=seconds + 60)
    if drains % 2:  # leave jakarta in rotation: the answer comparison follows
        subprocess.run(
            [sys.executable, "-m", "geodns", "undrain", "jakarta", "--config", str(config)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    log(
        f"[{server.label}] churn: {reloads} reloads and {drains} drains/undrains under "
        f"{outcome.get('qps', 0):,.0f} qps: sent {outcome.get('sent')}, lost {outcome.get('lost')}"
    )
    return {**outcome, "reloads": reloads, "drains": drains, "drain_failures": failures}


def startup_only(
    label: str, kind: str, db: Path, sites: dict[str, Any], attempts: int = 3
) -> dict[str, Any]:
    """Time from exec to the first (geo) answer, and RSS then; the best of a few starts."""
    times, rss = [], []
    for attempt in range(attempts):
        port = free_port()
        directory = OUT / f"{label}-startup"
        directory.mkdir(parents=True, exist_ok=True)
        command = server_command(kind, directory, port, db, sites, 1, SERVER_CPU)
        server = Server(label, command, port, OUT / "logs" / f"{label}-startup-{attempt}.log")
        try:
            times.append(server.start(probe_query()))
            rss.append(memory_kb(server.pids) / 1024)
        finally:
            server.stop()
    breakdown = {}
    if kind == "geodns":  # what dominates: the interpreter, the imports, or loading
        for what, code in (
            ("python_s", "pass"),
            ("python_and_imports_s", "import geodns.daemon.app, geodns.config.loader"),
        ):
            began = time.monotonic()
            subprocess.run(
                pin(SERVER_CPU) + [sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60
            )
            breakdown[what] = round(time.monotonic() - began, 3)
    return {
        "startup_s": round(min(times), 3),
        "startup_all_s": [round(t, 3) for t in times],
        **breakdown,
        "rss_mb": round(max(rss), 1),
        "database": str(db),
        "database_mb": round(db.stat().st_size / 1e6, 1),
    }


# ------------------------------------------------------------------------------------------------
# Profiling the running geodns (optional: --profile, needs py-spy)
# ------------------------------------------------------------------------------------------------


def profile_geodns(
    db: Path, loads: Workloads, profile: dict[str, Any], sites: dict[str, Any], py_spy: str
) -> dict[str, Any]:
    """A fresh geodns (empty caches) under saturating load, sampled by py-spy (no pauses)."""
    port = free_port()
    directory = OUT / "geodns-profile"
    directory.mkdir(parents=True, exist_ok=True)
    config = write_geodns_config(directory, port, db, sites, 1)
    command = pin(SERVER_CPU) + [sys.executable, "-m", "geodns", "serve", "--config", str(config)]
    server = Server("geodns-profile", command, port, OUT / "logs" / "geodns-profile.log")
    server.start(probe_query())
    out: dict[str, Any] = {}
    seconds = max(5, int(profile["saturate_seconds"]))
    try:
        for workload in ("static", "warm", "cold"):
            if workload != "cold":
                dnsperf(port, loads.files[workload], seconds, SATURATE, runs=1)
            raw = OUT / f"profile-{workload}.txt"
            assert server.process is not None
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(server.process.pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            dnsperf(port, loads.files[workload], seconds + 1, SATURATE)
            try:
                spy.wait(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(timeout=10)
            out[workload] = summarise_profile(raw)
            log(f"[profile] {workload}: {raw.relative_to(ROOT)}")
            for frame, pct in out[workload].get("self_pct", [])[:8]:
                log(f"    {pct:5.1f}% self  {frame}")
    finally:
        server.stop()
    return out


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Shares of py-spy samples (idle excluded) per function and per line, from its raw
    (collapsed) stacks. Time inside C code (uvloop's recvfrom/sendto, maxminddb's decoder) is
    charged to the Python line that called it."""
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


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


def ratio(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "-"
    return f"{a / b:.2f}"


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    runs = results["servers"]
    geodns = runs.get("geodns")
    gdnsd = runs.get("gdnsd")
    extra = [k for k in runs if k not in ("geodns", "gdnsd")]
    headers = ["metric", "geodns", "gdnsd", "geodns/gdnsd"] + extra
    rows: list[list[str]] = []

    def get(run: dict[str, Any] | None, *path: str) -> Any:
        value: Any = run
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    def add(label: str, *path: str, digits: int = 1, ratio_ok: bool = True) -> None:
        a, b = get(geodns, *path), get(gdnsd, *path)
        row = [label, fmt(a, digits), fmt(b, digits), ratio(a, b) if ratio_ok else ""]
        row += [fmt(get(runs[k], *path), digits) for k in extra]
        rows.append(row)

    names = {"warm": "warm geo (10k /24)", "static": "static mix", "cold": "cold geo (~1M /24)"}
    if results["profile"] == "quick":
        names = {"warm": "warm geo", "static": "static mix", "cold": "cold geo"}
    for workload in ("warm", "cold", "static"):
        name = names[workload]
        add(f"{name}: max qps", "runs", workload, "saturated", "qps", digits=0)
        add(
            f"{name}: server CPU us/query",
            "runs",
            workload,
            "saturated",
            "server_cpu_us_per_query",
            digits=1,
        )
        add(
            f"{name}: server CPU busy %",
            "runs",
            workload,
            "saturated",
            "server_busy_pct",
            ratio_ok=False,
        )
        add(
            f"{name}: dnsperf CPU busy %",
            "runs",
            workload,
            "saturated",
            "dnsperf_busy_pct",
            ratio_ok=False,
        )
        add(
            f"{name}: other load on the machine %",
            "runs",
            workload,
            "saturated",
            "others_busy_pct",
            ratio_ok=False,
        )
        add(f"{name}: lost at saturation", "runs", workload, "saturated", "lost", ratio_ok=False)
        add(
            f"{name}: p50 ms @{FIXED_QPS} qps",
            "runs",
            workload,
            "fixed",
            "latency",
            "p50_ms",
            digits=3,
        )
        add(
            f"{name}: p99 ms @{FIXED_QPS} qps",
            "runs",
            workload,
            "fixed",
            "latency",
            "p99_ms",
            digits=3,
        )
        add(f"{name}: lost @{FIXED_QPS} qps", "runs", workload, "fixed", "lost", ratio_ok=False)
    add("RSS after start (MB)", "rss_start_mb")
    add("RSS after all runs (MB)", "rss_end_mb")
    add("start-up to first answer (s)", "startup_s", digits=2)
    churned = get(geodns, "churn")
    if churned:
        rows.append(
            [
                f"lost under saturation during {churned['reloads']} reloads and "
                f"{churned['drains']} drains",
                fmt(churned.get("lost"), 0),
                "",
                "",
            ]
            + ["" for _ in extra]
        )
    big = results.get("startup_big_db") or {}
    if big:
        a = get(big.get("geodns"), "startup_s")
        b = get(big.get("gdnsd"), "startup_s")
        db_mb = get(big.get("geodns"), "database_mb") or get(big.get("gdnsd"), "database_mb")
        rows.append(
            [f"start-up, {fmt(db_mb, 0)} MB city DB (s)", fmt(a, 2), fmt(b, 2), ratio(a, b)]
            + ["" for _ in extra]
        )
        a = get(big.get("geodns"), "rss_mb")
        b = get(big.get("gdnsd"), "rss_mb")
        rows.append(
            [f"RSS, {fmt(db_mb, 0)} MB city DB (MB)", fmt(a), fmt(b), ratio(a, b)]
            + ["" for _ in extra]
        )
    widths = [max(len(r[i]) for r in rows + [headers]) for i in range(len(headers))]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
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
        text = result.stdout + result.stderr
        match = re.search(r"[Vv]ersion\s+([\d.]+)", text)
        return match.group(1) if match else ""

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dnsperf": version(["dnsperf", "-h"]),
        "gdnsd": version(["gdnsd", "-h"]),
        "pinning": PINNING,
    }


def geodns_supports_workers() -> bool:
    try:
        from geodns.config import server as geodns_config
    except ImportError:
        return False
    return "workers" in getattr(geodns_config, "TOP_KEYS", ())


# ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, 3 s per run")
    parser.add_argument("--no-gdnsd", action="store_true", help="geodns only (no ratios)")
    parser.add_argument("--no-workers", action="store_true", help="skip geodns workers: 2")
    parser.add_argument("--no-check", action="store_true", help="skip the answer comparison")
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="also run geodns with `fleet:` on, against a local etcd (apt-get install etcd-server)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run py-spy against geodns under load (pip install py-spy)",
    )
    parser.add_argument("--seconds", type=float, help="override the seconds per measurement")
    args = parser.parse_args()
    profile = dict(PROFILES["quick" if args.quick else "full"])
    if args.seconds:
        profile["saturate_seconds"] = profile["latency_seconds"] = args.seconds
    for tool in (
        ("dnsperf",) + (() if args.no_gdnsd else ("gdnsd",)) + (("etcd",) if args.fleet else ())
    ):
        if shutil.which(tool) is None:
            log(f"{tool} is not installed: apt-get install -y dnsperf gdnsd etcd-server")
            return 2
    if not mmdb_synth.COUNTRY_DB.exists():
        log(f"{mmdb_synth.COUNTRY_DB} is missing: build it with scripts/build_geodb.py")
        return 2
    py_spy = shutil.which("py-spy") if args.profile else None
    if args.profile and not py_spy:
        log("--profile needs py-spy: pip install py-spy")
        return 2
    QUIET_WAIT_S[0] = profile["quiet_wait_s"]
    began = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "logs").mkdir(exist_ok=True)
    if not PINNING:
        log("warning: fewer than 2 CPUs or no taskset: server and dnsperf are not pinned")

    db = OUT / "city-bench.mmdb"
    summaries = {"bench": mmdb_synth.ensure_city_db(db, log=log, **BENCH_DB)}
    big_db = OUT / "city-100mb.mmdb"
    if profile["startup_big_db"] or big_db.exists():
        summaries["big"] = mmdb_synth.ensure_city_db(big_db, log=log, **BIG_DB)
    log(f"databases ready ({time.monotonic() - began:.0f} s)")

    t0 = time.monotonic()
    loads = build_workloads(db, profile)
    log(
        f"workloads: {len(loads.warm):,} warm, {len(loads.cold):,} cold (+{len(loads.cold_latency):,}"
        f" for latency) /24 subnets, {len(STATIC_MIX)} static queries; "
        f"{time.monotonic() - t0:.0f} s"
    )

    sites = example_sites()
    pop_list = pops(sites)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": "quick" if args.quick else "full",
        "machine": machine(),
        "settings": {
            **profile,
            "saturate_dnsperf": SATURATE,
            "fixed_dnsperf": FIXED,
            "server_cpu": SERVER_CPU,
            "client_cpu": CLIENT_CPU,
        },
        "databases": summaries,
        "pops": [list(p) for p in pop_list],
        "servers": {},
    }
    servers = results["servers"]
    servers["geodns"] = run_server(
        "geodns", "geodns", db, loads, profile, sites, check=not args.no_check
    )
    if args.fleet:  # right after the plain run, so both see the same machine
        etcd, endpoint = start_etcd(OUT / "etcd")
        try:
            servers["geodns-fleet"] = run_server(
                "geodns-fleet",
                "geodns",
                db,
                loads,
                profile,
                sites,
                check=False,
                fleet={"member": "bench", "endpoints": [endpoint]},
            )
        finally:
            stop_process(etcd)
    if not args.no_gdnsd:
        servers["gdnsd"] = run_server(
            "gdnsd", "gdnsd", db, loads, profile, sites, check=not args.no_check
        )
    if not args.no_workers:
        if geodns_supports_workers():
            # N=2 on a 2-core machine: both geodns processes may use both cores and dnsperf
            # shares core 1 with them, so dnsperf gets fewer cycles (docs/benchmark.md)
            servers["geodns-2w"] = run_server(
                "geodns-2w",
                "geodns",
                db,
                loads,
                profile,
                sites,
                workers=2,
                server_cpus="0,1",
                check=False,
            )
        else:
            results["workers_note"] = "geodns has no `workers` setting yet: not measured"
    if "big" in summaries:
        results["startup_big_db"] = {"geodns": startup_only("geodns-big", "geodns", big_db, sites)}
        if not args.no_gdnsd:
            results["startup_big_db"]["gdnsd"] = startup_only("gdnsd-big", "gdnsd", big_db, sites)

    if py_spy:
        results["py_spy"] = profile_geodns(db, loads, profile, sites, py_spy)

    checks: dict[str, Any] = {}
    if not args.no_check and "gdnsd" in servers:
        mine, theirs = servers["geodns"]["answers"], servers["gdnsd"]["answers"]
        for workload in ("warm", "cold"):
            checks[workload] = compare_geo(db, mine[workload], theirs[workload], pop_list, workload)
        checks["static"] = compare_static(mine["static"], theirs["static"])
    for run in servers.values():
        run.pop("answers", None)
    results["checks"] = checks
    results["elapsed_s"] = round(time.monotonic() - began, 1)

    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    path = OUT / f"results-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print()
    print(table(results))
    print()
    for workload in ("warm", "cold"):
        check = checks.get(workload)
        if check:
            print(
                f"answers, {workload}: {check['same']:,} of {check['compared']:,} subnets "
                f"identical; {check['mismatches']} differ ({check['near_ties']} near ties "
                f"within 1 km / 0.1 %); {check['missing']} not asked"
            )
            for example in check["examples"][:5]:
                print(f"  {example}")
    if checks.get("static"):
        diff = checks["static"]["differences"]
        print(
            f"answers, static: {checks['static']['compared'] - len(diff)} of "
            f"{checks['static']['compared']} identical (answer section, rcode, AA, SOA present)"
        )
        for key, value in list(diff.items())[:5]:
            print(f"  {key}: {value}")
    for label, run in servers.items():
        for workload, data in (run.get("runs") or {}).items():
            split = data["saturated"].get("server_busy_pct_per_process")
            if split:
                print(f"{label} {workload}: busy % per process (main, workers...): {split}")
    if "workers_note" in results:
        print(results["workers_note"])
    print(f"\nresults: {path.relative_to(ROOT)}  ({results['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

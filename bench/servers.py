"""The two servers: their configurations (same zone, same PoPs, same database) and their
processes (start, wait for the first answer, reload, stop by PID).

geodns is a black box here: a config file and zone files in, DNS answers, /proc, its JSON log
lines and its /metrics out. It is the geodns under test, or (`Setup.source`) an older source
tree run as a baseline: the same interpreter with PYTHONPATH and cwd set to that tree, so
`-m geodns` imports the old code, and its config written for what the old reader accepts.

gdnsd is Debian's 3.8, with a geoip map in city-auto-mode (no `map` stanza: the nearest
datacenter by distance for everyone, the decision geodns's `nearest` makes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .common import BIG_ZONE, GEO_NAME, HOST, ROOT, ZONE
from .dnswire import QTYPES, query_wire
from .popsets import PopSet
from .procstat import descendants
from .workloads import big_zone_name

INDEX_EVENT = "geo_index_ready"  # geodns logs it once its precomputed geo index is ready
INDEX_METRIC = "geodns_geo_index_build_seconds"

GEODNS_STATIC_ZONE: dict[str, Any] = {
    "": [
        {"type": "CAA", "value": {"flags": 0, "tag": "issue", "value": "letsencrypt.org"}},
        {"type": "MX", "values": [{"exchange": f"mx1.{ZONE}.", "preference": 10}]},
        {"ttl": 86400, "type": "NS", "values": [f"ns1.{ZONE}.", f"ns2.{ZONE}."]},
        {"type": "TXT", "value": "v=spf1 -all"},
    ],
    "_imap._tcp": {
        "type": "SRV",
        "value": {"port": 993, "priority": 10, "target": f"mx1.{ZONE}.", "weight": 5},
    },
    "mx1": {"type": "A", "value": "192.0.2.25"},
    "ns1": [
        {"ttl": 86400, "type": "A", "value": "192.0.2.53"},
        {"ttl": 86400, "type": "AAAA", "value": "2001:db8::53"},
    ],
    "ns2": [
        {"ttl": 86400, "type": "A", "value": "198.51.100.53"},
        {"ttl": 86400, "type": "AAAA", "value": "2001:db8:1::53"},
    ],
}

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


def pin(cpus: str | None) -> list[str]:
    """taskset in front of a command, when there are 2 CPUs to pin to (None: not pinned)."""
    if cpus is None or not can_pin():
        return []
    return ["taskset", "-c", cpus]


def can_pin() -> bool:
    return bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2


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


# ------------------------------------------------------------------------------------------------
# Configurations
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What both servers are given: the database, the PoPs, and optionally the big zone."""

    db: Path
    pops: PopSet
    gdnsd_db: Path | None = None  # gdnsd's copy in MaxMind's schema (None: `db` is in it)
    big_zone_names: int = 0  # 0: no big zone
    workers: int = 1  # geodns only
    gdnsd_threads: int = 1  # gdnsd only: its udp_threads and tcp_threads
    fleet: dict[str, Any] | None = None  # geodns's `fleet:` section (an etcd to join), if any
    dnssec: bool = False  # geodns: the zone signed (bench/dnssec.py)
    knot_answers: tuple[tuple[str, str], ...] = ()  # Knot: (country, address) of www
    source: Path | None = None  # geodns only: an older geodns's source tree (None: this one)


def geodns_geo_record(pops: PopSet, rtype: str) -> dict[str, Any]:
    if rtype == "A":
        values = sorted(p.ipv4 for p in pops.pops)
    else:
        values = sorted(p.ipv6 for p in pops.pops if p.ipv6)
    return {
        "octodns": {"geodns": {"default_order": list(pops.default_order), "nearest": True}},
        "ttl": 30,
        "type": rtype,
        "values": values,
    }


def geodns_big_zone(setup: Setup, generation: int) -> dict[str, Any]:
    """The big zone: `big_zone_names` nearest-PoP A records, and a TXT that each reload changes."""
    zone: dict[str, Any] = {
        "": [
            {"ttl": 86400, "type": "NS", "values": [f"ns1.{ZONE}.", f"ns2.{ZONE}."]},
            {"type": "TXT", "value": f"generation {generation}"},
        ]
    }
    record = geodns_geo_record(setup.pops, "A")
    for index in range(setup.big_zone_names):
        zone[big_zone_name(index).removesuffix("." + BIG_ZONE)] = record
    return zone


def geodns_zone(pops: PopSet) -> dict[str, Any]:
    """The zone both servers serve, as geodns's octoDNS YAML: the static mix and `www`, the
    nearest PoP (A and AAAA)."""
    zone = dict(GEODNS_STATIC_ZONE)
    zone["www"] = [geodns_geo_record(pops, "A"), geodns_geo_record(pops, "AAAA")]
    return zone


_Dumper: type = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's emitter: fast


class _WrittenOut(_Dumper):
    """Every record written in full, as octoDNS's YamlProvider writes a zone: no YAML anchors
    and aliases (PyYAML would write the big zone's one record object once and alias it 9,999
    times, a file a fiftieth of the size that reads much faster than any octoDNS zone)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def yaml_text(data: Any) -> str:
    """YAML of `data`, every value written out."""
    return yaml.dump(data, Dumper=_WrittenOut, sort_keys=True)


def compile_bytecode(tree: Path) -> None:
    """Byte-compile a geodns source tree, as installing a wheel does: an editable install run
    with PYTHONDONTWRITEBYTECODE (or a read-only tree) would compile every module at every
    start, and start-up would measure the compiler (0.3-0.4 s of geodns's imports)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(tree / "geodns")],
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )


def write_geodns(directory: Path, port: int, setup: Setup, generation: int = 0) -> Path:
    """geodns's config and zones in `directory`; returns the config file."""
    zones = directory / "zones"
    zones.mkdir(parents=True, exist_ok=True)
    (zones / f"{ZONE}.yaml").write_text(yaml_text(geodns_zone(setup.pops)))
    big = zones / f"{BIG_ZONE}.yaml"
    if setup.big_zone_names:
        big.write_text(yaml_text(geodns_big_zone(setup, generation)))
    elif big.exists():
        big.unlink()
    config = {
        "listen": [HOST],
        "port": port,
        "zones_dir": str(zones),
        "watch_zones": False,
        "admin": {"listen": None, "socket": str(directory / "admin.sock")},
        "logging": {"level": "info", "format": "json"},  # read for reload and index events
        "geoip": {"database": str(setup.db)},
        "workers": setup.workers,
        "sites": setup.pops.geodns_sites(),
    }
    if setup.fleet is not None:
        config["fleet"] = setup.fleet
    if setup.dnssec:
        keys = str(directory / "keys")
        config["zones"] = {ZONE: {"dnssec": {"enabled": True, "key_directory": keys}}}
    # a fresh geo index cache (every start builds its index), where that geodns has one
    if geodns_has_setting("cache_dir", setup.source):
        cache = directory / "geo-cache"
        if generation == 0:  # a new server, not a reload of a running one
            shutil.rmtree(cache, ignore_errors=True)
        config["cache_dir"] = str(cache)
    path = directory / "geodns.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def gdnsd_config(directory: Path, port: int, setup: Setup) -> str:
    """gdnsd 3.8: a city-auto-mode map (no `map` stanza: nearest for everyone), same PoPs."""
    pops = setup.pops
    by_name = {p.name: p for p in pops.pops}
    order = pops.gdnsd_order()
    coords = "\n".join(f"          {p.name} => [ {p.latitude}, {p.longitude} ]" for p in pops.pops)
    dcmap = []
    for name in order:
        pop = by_name[name]
        addresses = f"addrs_v4 => [ {pop.ipv4} ]"
        if pop.ipv6:
            addresses += f", addrs_v6 => [ {pop.ipv6} ]"
        dcmap.append(f"          {name} => {{ {addresses} }}")
    dcmap_text = "\n".join(dcmap)
    return f"""# generated by the geodns benchmark: gdnsd 3.8 twin of its geodns config
options => {{
  listen => [ {HOST}:{port} ]
  run_dir => {directory / "run"}
  state_dir => {directory / "state"}
  udp_threads => {setup.gdnsd_threads}
  tcp_threads => {setup.gdnsd_threads}
  edns_client_subnet => true
}}
plugins => {{
  geoip => {{
    maps => {{
      pops => {{
        geoip2_db => {setup.gdnsd_db or setup.db}
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


def gdnsd_big_zone(names: int, generation: int) -> str:
    """Every name of the big zone answered by the one `www` resource, as a gdnsd operator
    would write it, and a TXT that each reload changes (the SOA serial with it)."""
    lines = [
        "$TTL 3600",
        f"@ 300 SOA ns1.{ZONE}. hostmaster.{ZONE}. {generation + 1} 7200 3600 1209600 300",
        f"@ 86400 NS ns1.{ZONE}.",
        f"@ 86400 NS ns2.{ZONE}.",
        f'@ TXT "generation {generation}"',
    ]
    suffix = "." + BIG_ZONE
    lines += [f"{big_zone_name(i).removesuffix(suffix)} 30 DYNA geoip!www" for i in range(names)]
    return "\n".join(lines) + "\n"


def write_gdnsd(directory: Path, port: int, setup: Setup, generation: int = 0) -> Path:
    """gdnsd's config directory (config, zones/) in `directory`; returns it."""
    for sub in ("zones", "run", "state"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "config").write_text(gdnsd_config(directory, port, setup))
    (directory / "zones" / ZONE).write_text(GDNSD_ZONE)
    big = directory / "zones" / BIG_ZONE
    if setup.big_zone_names:
        big.write_text(gdnsd_big_zone(setup.big_zone_names, generation))
    elif big.exists():
        big.unlink()
    return directory


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------


def geo_probe(name: str = GEO_NAME) -> bytes:
    """A geo query located by ECS (8.8.8.0/24): its first answer means the zone is loaded."""
    return query_wire(name, QTYPES["A"], (0x08080800, 24), ident=0x1234)


class Server:
    """One server (geodns or gdnsd) and its processes: start, wait for an answer, reload,
    measure, stop. Every process is stopped by its own PID."""

    def __init__(
        self,
        kind: str,
        label: str,
        directory: Path,
        logfile: Path,
        setup: Setup,
        cpus: str | None,
        port: int | None = None,
    ) -> None:
        """Writes the server's config into `directory`; `cpus` None: not pinned; `port` None:
        a free one. `logfile` may be changed between starts (each start writes a new one)."""
        self.kind = kind
        self.label = label
        self.directory = directory
        self.logfile = logfile
        self.setup = setup
        self.cpus = cpus
        self.port = free_port() if port is None else port
        self.generation = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] | None = None  # None: this process's environment
        self.cwd: Path | None = None  # None: this process's working directory
        self.started_at = 0.0  # wall-clock time of the start, to place its log events
        directory.mkdir(parents=True, exist_ok=True)
        if kind == "geodns":
            self.config = write_geodns(directory, self.port, setup)
            self.command = pin(cpus) + [sys.executable, "-m", "geodns", "serve"]
            self.command += ["--config", str(self.config)]
            if setup.source is not None:  # the old tree's code, not the installed geodns
                self.env, self.cwd = source_environment(setup.source), setup.source
        elif kind == "gdnsd":
            self.config = write_gdnsd(directory, self.port, setup)
            self.command = pin(cpus) + ["gdnsd", "-c", str(directory), "start"]
        elif kind == "knot":
            from .knot import write_knot

            self.config = write_knot(directory, self.port, setup)
            self.command = pin(cpus) + ["knotd", "-c", str(self.config)]
        else:
            raise ValueError(f"unknown server kind {kind!r}")

    def start(self, probe: bytes | None = None, timeout: float = 300.0) -> float:
        """Start and wait for the first answer to `probe`; the seconds from exec to it."""
        probe = probe or geo_probe()
        handle = self.logfile.open("wb")
        self.started_at = time.time()
        began = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
            cwd=self.cwd,
        )
        handle.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.005)
            while time.monotonic() - began < timeout:
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
                return time.monotonic() - began
        self.stop()
        raise RuntimeError(f"{self.label} did not answer within {timeout} s")

    @property
    def pids(self) -> list[int]:
        assert self.process is not None
        return descendants(self.process.pid)

    def wait_for_processes(self, count: int, timeout: float = 30.0) -> int:
        """Wait (bounded) until the server has `count` processes (workers bind after the main
        process answers); the number it has."""
        deadline = time.monotonic() + timeout
        while len(self.pids) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self.pids)

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """geodns's JSON log lines whose event is `name` (gdnsd: none)."""
        return list(events_in(self.logfile, name))

    def rewrite_zones(self) -> None:
        """The next generation of the zone files (the big zone's TXT changes)."""
        self.generation += 1
        if self.kind == "geodns":
            write_geodns(self.directory, self.port, self.setup, self.generation)
        else:
            write_gdnsd(self.directory, self.port, self.setup, self.generation)

    def reload(self, timeout: float = 300.0) -> float:
        """Reload the zones (geodns: SIGHUP, done when it logs `reloaded`; gdnsd: `gdnsdctl
        reload-zones`, which returns when the new zones serve); the seconds it took. geodns's
        log is read every 5 ms: what the wait adds is at most that."""
        assert self.process is not None
        began = time.monotonic()
        if self.kind == "gdnsd":
            subprocess.run(
                ["gdnsdctl", "-c", str(self.directory), "reload-zones"],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            return time.monotonic() - began
        done = len(self.log_events("reloaded"))
        failures = len(self.log_events("reload_failed"))
        os.kill(self.process.pid, signal.SIGHUP)
        while time.monotonic() - began < timeout:
            if len(self.log_events("reloaded")) > done:
                return time.monotonic() - began
            failed = self.log_events("reload_failed")
            if len(failed) > failures:
                raise RuntimeError(f"{self.label}: reload failed: {failed[-1]}")
            time.sleep(0.005)
        raise RuntimeError(f"{self.label}: no `reloaded` within {timeout} s")

    def metrics(self) -> str:
        """geodns's /metrics, read over its admin socket ('' when it cannot be read)."""
        if self.kind != "geodns":
            return ""
        return http_get_unix(self.directory / "admin.sock", "/metrics")

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        family = descendants(process.pid)[1:]
        stop_process(process)
        for pid in family:  # stray workers, if any: by their own PID
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def events_in(logfile: Path, name: str) -> Iterator[dict[str, Any]]:
    """The JSON log lines of `logfile` whose `event` is `name` (other lines are skipped)."""
    try:
        text = logfile.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        if not line.startswith("{") or f'"{name}"' not in line:
            continue
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == name:
                yield event


def http_get_unix(path: Path, target: str, timeout: float = 5.0) -> str:
    """The body of a GET over a Unix socket (HTTP/1.0, so the server closes when done)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(f"GET {target} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return ""
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return body.decode(errors="replace") if b" 200 " in head.split(b"\r\n")[0] else ""


def metric_value(text: str, name: str) -> float | None:
    """The value of an unlabelled Prometheus sample `name` in /metrics text, if present."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            with contextlib.suppress(ValueError):
                return float(line.rsplit(None, 1)[1])
    return None


def source_environment(source: Path) -> dict[str, str]:
    """This process's environment with PYTHONPATH set to `source` alone: `python -m geodns`
    (run with cwd `source`) then imports the geodns of that tree."""
    return {**os.environ, "PYTHONPATH": str(source)}


# The top-level config keys of the geodns that `python -m geodns` imports, and where it comes
# from; the config reader moved from geodns.config (a module) to geodns.config.server.
TOP_KEYS_PROBE = """
import importlib, json, geodns
keys = ()
for name in ("geodns.config.server", "geodns.config"):
    try:
        keys = tuple(getattr(importlib.import_module(name), "TOP_KEYS", ()))
    except ImportError:
        continue
    if keys:
        break
print(json.dumps({"file": geodns.__file__, "keys": list(keys)}))
"""


@functools.cache
def geodns_top_keys(source: Path | None = None) -> frozenset[str]:
    """The top-level config keys the geodns of `source` accepts (None: the geodns under test,
    asked in this process). An older tree is asked by a small subprocess that imports it the
    way its server will be started; a tree whose geodns is not what that imports is refused."""
    if source is None:
        for name in ("geodns.config.server", "geodns.config"):
            with contextlib.suppress(ImportError):
                keys = getattr(importlib.import_module(name), "TOP_KEYS", ())
                if keys:
                    return frozenset(keys)
        return frozenset()
    done = subprocess.run(
        [sys.executable, "-c", TOP_KEYS_PROBE],
        env=source_environment(source),
        cwd=source,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot import geodns from {source}: {done.stderr[-2000:]}")
    found = json.loads(done.stdout)
    if not Path(found["file"]).resolve().is_relative_to(source.resolve()):
        raise RuntimeError(f"PYTHONPATH={source} imports geodns from {found['file']}, not {source}")
    return frozenset(found["keys"])


def geodns_has_setting(key: str, source: Path | None = None) -> bool:
    """Whether the geodns of `source` (None: the one under test) accepts a top-level config
    `key` (settings come and go as geodns changes; the benchmark treats it as a black box)."""
    return key in geodns_top_keys(source)


def geodns_reports_index(source: Path | None = None) -> bool:
    """Whether the geodns of `source` (None: the one under test) logs geo_index_ready (the
    event arrives with its precomputed geo index): only then is it worth waiting for the event
    after a start. Read from the tree's files: an old tree without an index has no such event."""
    package = (source or ROOT) / "geodns"
    for path in package.rglob("*.py"):
        with contextlib.suppress(OSError):
            if INDEX_EVENT in path.read_text(encoding="utf-8"):
                return True
    return False


def source_commit(source: Path) -> str:
    """The short commit of a source tree (git rev-parse --short HEAD), to label its runs."""
    done = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def wait_for_index(server: Server, limit_s: float) -> dict[str, Any]:
    """geodns's geo index: waited for (bounded) while geodns builds it in the background.

    A geodns that has an index logs `geo_index: true` in its `started` event when the index was
    ready at start (cached, or built before serving for a small database), and otherwise one
    `geo_index_ready` event (with its build `seconds`) when the background build is done, or
    `geo_index_failed`. `ready_after_start_s` places that event (by its timestamp) after the
    server's start. A geodns without an index (no such event in its code): {"reported": False};
    gdnsd: {}."""
    if server.kind != "geodns":
        return {}
    if not geodns_reports_index(server.setup.source):
        return {"reported": False}
    deadline = time.monotonic() + limit_s
    while True:
        events = server.log_events(INDEX_EVENT)
        started = server.log_events("started")
        failed = server.log_events("geo_index_failed")
        if events or failed or time.monotonic() >= deadline:
            break
        if started and started[0].get("geo_index") is True:
            return {"reported": False, "ready_at_start": True}
        time.sleep(0.05)
    out: dict[str, Any] = {"reported": bool(events)}
    if failed:
        out["failed"] = failed[0].get("error")
    if events:
        first = events[0]
        with contextlib.suppress(KeyError, TypeError, ValueError):
            stamp = dt.datetime.fromisoformat(str(first["timestamp"]).replace("Z", "+00:00"))
            out["ready_after_start_s"] = round(stamp.timestamp() - server.started_at, 2)
        out.update({k: first[k] for k in ("seconds", "networks", "places") if k in first})
        out["events"] = len(events)
    value = metric_value(server.metrics(), INDEX_METRIC)
    if value is not None:
        out["metric_seconds"] = value
    return out


def start_etcd(
    directory: Path, cpus: str, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], str]:
    """A one-node etcd (Debian's etcd-server) on the loopback for a geodns `fleet:` run, pinned
    with dnsperf (it idles while queries are measured: no query reads etcd). Its endpoint."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    client, peer = f"http://{HOST}:{free_port()}", f"http://{HOST}:{free_port()}"
    command = pin(cpus) + [
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

"""The servers under soak, seen from outside: their config files, processes, logs and counters.

geodns and gdnsd get the benchmark's zone, PoPs and database (bench/servers.py writes both), plus
what the soak needs: a TXT record that every reload changes, a health check against the soak's
local HTTP target, the admin API on TCP with a token (geodns), response rate limiting that
exempts only the valid load (geodns), a monitored multifo resource (gdnsd), and two DNS
processes each (geodns's default on two cores; gdnsd `udp_threads`/`tcp_threads` 2).

`ServerUnderTest` starts a server, restarts it when it dies (so the rest of the soak goes on and
the death is counted), reloads it, lists its processes and reads its counters. Each start writes
a new log file, so nothing a dead server wrote is lost. Only 127.0.0.1 is ever a target.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .common import HOST, ZONE
from .popsets import six_pops
from .procstat import (
    command_line,
    descendants,
    process_name,
    role_of,
    stat_fields,
    status_kb,
)
from .servers import GDNSD_ZONE, Server, Setup, geo_probe, geodns_zone, yaml_text
from .soak_plan import VALID_SOURCE

HEALTH_SITE = "frankfurt"  # the PoP whose health check the soak's HTTP target answers
HEALTH_PATH = "/health"
RRL_EXEMPT = (VALID_SOURCE.rsplit(".", 1)[0] + ".0/24",)
"""The only networks geodns's response rate limiting exempts in the soak: the valid load's. Its
default exempts all of loopback, where every stream of the soak comes from; the walk and the bad
packets are limited as an attacker's would be (TCP is never rate limited)."""


@dataclass(frozen=True)
class ServerSetup:
    """Where one server of the soak lives and what it listens on."""

    kind: str  # "geodns" or "gdnsd"
    directory: Path
    port: int
    database: Path  # the server's own copy: the soak overwrites it
    health_port: int
    admin_port: int | None = None
    token: str | None = None
    workers: int = 0
    extra_config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def zone_path(self) -> Path:
        if self.kind == "geodns":
            return self.directory / "zones" / f"{ZONE}.yaml"
        return self.directory / "zones" / ZONE

    def bench_setup(self) -> Setup:
        """What bench/servers.py writes for this server: the six PoPs, this database, geodns's
        `workers` (0: its own default) and gdnsd's two threads."""
        return Setup(self.database, six_pops(), workers=self.workers, gdnsd_threads=2)


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in (mappings merged key by key, anything else replaced)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def zone_text(setup: ServerSetup, serial: int) -> str:
    """The zone with the reload marker `soak TXT "reload-<serial>"` (and gdnsd's monitored name)."""
    if setup.kind == "geodns":
        zone = geodns_zone(setup.bench_setup().pops)
        zone["soak"] = {"ttl": 5, "type": "TXT", "value": f"reload-{serial}"}
        return yaml_text(zone)
    return GDNSD_ZONE + f'flip 30 DYNA multifo!flip\nsoak 5 TXT "reload-{serial}"\n'


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_geodns(setup: ServerSetup, config_path: Path) -> None:
    """bench/servers.py's geodns config (a fresh geo index cache, the admin socket, JSON logs),
    with the soak's health check on `frankfurt`, the admin API on TCP with a token, RRL that
    exempts only the valid load, and --geodns-config merged in last."""
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    site = dict(config["sites"][HEALTH_SITE])
    site["checks"] = [
        {
            "type": "http",
            "address": HOST,
            "port": setup.health_port,
            "path": HEALTH_PATH,
            "interval": 1,
            "timeout": 0.5,
            "fall": 1,
            "rise": 1,
        }
    ]
    config["sites"][HEALTH_SITE] = site
    token_file = setup.directory / "admin.token"
    token_file.write_text((setup.token or "") + "\n", encoding="ascii")
    token_file.chmod(0o600)
    config["admin"] = {
        **config.get("admin", {}),
        "listen": f"{HOST}:{setup.admin_port}",
        "token_file": str(token_file),
    }
    config["logging"] = {"level": "info", "format": "json"}
    config["rrl"] = {"exempt": list(RRL_EXEMPT)}
    if setup.workers == 0:
        config.pop("workers", None)  # the default: one DNS process per core
    config = deep_merge(config, setup.extra_config)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    write_atomically(setup.zone_path, zone_text(setup, 0))


def write_gdnsd(setup: ServerSetup) -> None:
    """bench/servers.py's gdnsd config (two UDP and two TCP threads: geodns runs two processes
    on two cores), with an http_status service on the soak's health target (gdnsd's minimum
    interval, 2 s with a 1 s timeout, and thresholds of 1) and a multifo name it monitors."""
    path = setup.directory / "config"
    text = path.read_text(encoding="utf-8")
    if "plugins => {\n" not in text:
        raise RuntimeError("bench/servers.py's gdnsd config changed shape: update soak_servers.py")
    service = (
        "service_types => {\n"
        f"  soakweb => {{ plugin => http_status, port => {setup.health_port}, "
        f"url_path => {HEALTH_PATH}, interval => 2, timeout => 1, up_thresh => 1, "
        "ok_thresh => 1, down_thresh => 1 }\n"
        "}\n"
    )
    multifo = f"  multifo => {{ flip => {{ service_types => [ soakweb ], lo => {HOST} }} }}\n"
    text = text.replace("plugins => {\n", service + "plugins => {\n" + multifo, 1)
    path.write_text(text, encoding="utf-8")
    write_atomically(setup.zone_path, zone_text(setup, 0))


def signal_name(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit {code}"


class ServerUnderTest:
    """One server of the soak: start, restart after a death, reload, processes, counters."""

    def __init__(self, setup: ServerSetup, logs_dir: Path, max_starts: int = 12) -> None:
        self.setup = setup
        self.logs_dir = logs_dir
        self.max_starts = max_starts
        self.starts = 0
        self.logfiles: list[Path] = []
        self.server = Server(
            setup.kind,
            setup.kind,
            setup.directory,
            logs_dir / f"{setup.kind}-1.log",
            setup.bench_setup(),
            cpus=None,  # not pinned: two DNS processes on the two cores
            port=setup.port,
        )
        if setup.kind == "geodns":
            write_geodns(setup, self.server.config)
        else:
            write_gdnsd(setup)
        self.command = self.server.command
        self.known_pids: dict[int, str] = {}
        self.ready = False  # answering, and not being started again: reloads may be sent

    @property
    def label(self) -> str:
        return self.setup.kind

    def start(self) -> float:
        """Start (or start again), with a new log file; seconds until the first answer."""
        if self.starts >= self.max_starts:
            raise RuntimeError(f"{self.label}: started {self.starts} times, giving up")
        self.ready = False
        self.starts += 1
        self.server.logfile = self.logs_dir / f"{self.label}-{self.starts}.log"
        self.logfiles.append(self.server.logfile)
        seconds = self.server.start(geo_probe(), timeout=120)
        self.ready = True
        return seconds

    def wait_all_processes(self, expected: int, limit_s: float = 10.0) -> int:
        """Wait (bounded) until `expected` processes run: workers bind after the main answers."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and len(self.pids()) < expected:
            time.sleep(0.1)
        return len(self.pids())

    @property
    def main_pid(self) -> int | None:
        process = self.server.process
        return process.pid if process is not None else None

    def exit_code(self) -> int | None:
        """None while the main process runs; its return code once it has ended."""
        process = self.server.process
        return None if process is None else process.poll()

    def pids(self) -> list[int]:
        """The running processes: the main one and those below it. A zombie (a worker that
        died and was not reaped yet) is not running."""
        main = self.main_pid
        if main is None or self.exit_code() is not None:
            return []
        return [pid for pid in descendants(main) if _running(pid)]

    def process_labels(self) -> dict[int, str]:
        """'pid N (main)' / 'pid N (worker)' for every running process; remembered, so a
        process that is gone still has its label."""
        main = self.main_pid
        for pid in self.pids():
            if pid not in self.known_pids:
                role = role_of(command_line(pid), 0 if pid == main else 1, process_name(pid))
                self.known_pids[pid] = f"pid {pid} ({role}, start {self.starts})"
        return self.known_pids

    def rss_mb(self) -> dict[str, float]:
        labels = self.process_labels()
        return {
            labels[pid]: round(status_kb([pid]) / 1024, 1) for pid in self.pids() if pid in labels
        }

    def peak_mb(self) -> dict[str, float]:
        """VmHWM of every running process: its highest RSS so far, between samples too."""
        labels = self.process_labels()
        return {
            labels[pid]: round(status_kb([pid], "VmHWM") / 1024, 1)
            for pid in self.pids()
            if pid in labels
        }

    def reload(self) -> str:
        """geodns: SIGHUP to the main process. gdnsd: `gdnsdctl reload-zones` (gdnsd 3 leaves
        SIGHUP at its default, which ends the process). 'sent', 'failed', or 'skipped' while
        the server is being started again (a signal before it set its handler would end it)."""
        if not self.ready:
            return "skipped"
        if self.setup.kind == "geodns":
            pid = self.main_pid
            if pid is None or self.exit_code() is not None:
                return "skipped"
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                return "skipped"
            return "sent"
        try:
            done = subprocess.run(
                ["gdnsdctl", "-c", str(self.setup.directory), "-o", "reload-zones"],
                capture_output=True,
                timeout=10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "failed"
        return "sent" if done.returncode == 0 else "failed"

    def metrics_text(self, timeout: float = 3.0) -> str | None:
        """geodns's /metrics (with the admin token: it may be required); None when unreachable."""
        if self.setup.admin_port is None:
            return None
        request = urllib.request.Request(
            f"http://{HOST}:{self.setup.admin_port}/metrics",
            headers={"Authorization": f"Bearer {self.setup.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read().decode("utf-8", "replace")
        except OSError:
            return None

    def gdnsdctl_json(self, action: str) -> Any:
        if shutil.which("gdnsdctl") is None:
            return None
        try:
            done = subprocess.run(
                ["gdnsdctl", "-c", str(self.setup.directory), "-o", action],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            return None
        try:
            return json.loads(done.stdout)
        except ValueError:
            return None

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """SIGTERM, and the seconds until the main process exits (issue 12 asks for <= 2 s)."""
        server = self.server
        process = server.process
        if process is None or process.poll() is not None:
            return {"seconds": None, "code": None if process is None else process.returncode}
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
            seconds: float | None = time.monotonic() - began
        except subprocess.TimeoutExpired:
            seconds = None
        server.stop()  # kills what is left, by PID
        return {
            "seconds": None if seconds is None else round(seconds, 3),
            "code": process.returncode,
        }


def _running(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def new_token() -> str:
    return secrets.token_hex(16)

"""Changes under a running server: reloads every second, a flapping health target, and the GeoIP
database overwritten the ways operators overwrite it.

- **Reloads**: every `reload_interval_s` (except in the pause, `Plan.churn_pause`) the zone's
  `soak` TXT record gets a new serial and the server is told to reload (geodns: SIGHUP; gdnsd:
  `gdnsdctl reload-zones`); shortly before the next one the record is asked for, to count the
  reloads that were seen in answers.
- **Health target**: a real HTTP server on loopback that the server's health check probes. Every
  `flip_s` it changes state, cycling through up, refusing connections (not listening), up,
  answering 503, up, and accepting but never answering (the probe must time out).
- **GeoIP file**: every `geoip_period_s` one step: first atomic replacements (write a temporary
  file, rename it over) with another database and back; after the pause (`Plan.churn_pause`),
  `cp`-style in-place overwrites (open with O_TRUNC, write in 128 KiB chunks: the same inode, so
  a reader that mapped the file sees it change under it) with another database, back with the
  right one, with a truncated copy (its first 60%), and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import soak_wire as wire
from .common import ZONE
from .soak_plan import PROBE_SOURCE, SERVER, Clock, GeoipStep, Plan, geoip_schedule
from .soak_servers import HEALTH_PATH, ServerUnderTest, write_atomically, zone_text

CHUNK = 128 * 1024


# ------------------------------------------------------------------------------------------------
# Reloads
# ------------------------------------------------------------------------------------------------


def _ask_txt(port: int, serial: int, timeout: float = 0.3) -> bool:
    """Does `soak.cdn.example.com TXT` carry reload-<serial> now?"""
    message = wire.query(f"soak.{ZONE}", wire.QTYPE_TXT, ident=serial & 0xFFFF)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((PROBE_SOURCE, 0))
        sock.settimeout(timeout)
        try:
            sock.sendto(message, (SERVER, port))
            reply, _ = sock.recvfrom(4096)
        except OSError:
            return False
    return f"reload-{serial}".encode() in reply


async def reload_every_second(server: ServerUnderTest, plan: Plan, clock: Clock) -> dict[str, Any]:
    outcomes = {"sent": 0, "failed": 0, "skipped": 0}
    seen = 0
    serial = 0
    end = plan.seconds - 1.0
    ticks = 0
    while clock.now() < end and ticks < int(plan.seconds / plan.reload_interval_s) + 1:
        ticks += 1
        tick = clock.now()
        if not plan.churning(tick):
            await asyncio.sleep(plan.reload_interval_s)
            continue
        serial += 1
        write_atomically(server.setup.zone_path, zone_text(server.setup, serial))
        outcome = await asyncio.to_thread(server.reload)
        outcomes[outcome] += 1
        await asyncio.sleep(max(0.0, tick + plan.reload_interval_s * 0.8 - clock.now()))
        seen += await asyncio.to_thread(_ask_txt, server.setup.port, serial)
        await asyncio.sleep(max(0.0, tick + plan.reload_interval_s - clock.now()))
    return {**outcomes, "seen": seen}


# ------------------------------------------------------------------------------------------------
# The health target
# ------------------------------------------------------------------------------------------------

MODES = ("up", "refused", "up", "503", "up", "hang")


@dataclass
class HealthTarget:
    """A loopback HTTP server whose state the soak flips; `requests` counts what it answered."""

    port: int
    mode: str = "up"
    requests: dict[str, int] = field(default_factory=dict)
    flips: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        self.requests[mode] = self.requests.get(mode, 0) + 1
        try:
            async with asyncio.timeout(10):
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                if mode == "hang":  # accept, read, never answer: until the state changes
                    await self.changed.wait()
                    return
                status = "200 OK" if mode == "up" else "503 Service Unavailable"
                body = b"ok\n" if mode == "up" else b"down\n"
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def run(self, plan: Plan, clock: Clock) -> dict[str, Any]:
        server: asyncio.Server | None = None
        step = 0
        end = plan.seconds - 0.5
        try:
            while clock.now() < end and step < int(plan.seconds / plan.flip_s) + 2:
                self.mode = MODES[step % len(MODES)]
                self.changed.set()
                self.changed = asyncio.Event()
                if self.mode == "refused":
                    if server is not None:
                        server.close()
                        server = None
                elif server is None:
                    server = await asyncio.start_server(
                        self._handle, SERVER, self.port, reuse_address=True
                    )
                if step:
                    self.flips += 1
                step += 1
                await asyncio.sleep(min(plan.flip_s, max(0.0, end - clock.now())))
        finally:
            self.changed.set()
            if server is not None:
                server.close()
        return {"flips": self.flips, "requests": dict(self.requests), "path": HEALTH_PATH}


def health_state(server: ServerUnderTest, metrics: str | None) -> str | None:
    """What the server says about the probed target now: 'up', 'down' or None (unknown)."""
    if server.setup.kind == "geodns":
        if metrics is None:
            return None
        for line in metrics.splitlines():
            if line.startswith('geodns_site_up{site="frankfurt"}'):
                return "up" if line.rsplit(" ", 1)[1].startswith("1") else "down"
        return None
    states = server.gdnsdctl_json("states")  # {"127.0.0.1/soakweb": {"state": "UP"}, ...}
    if not isinstance(states, dict):
        return None
    for key, value in states.items():
        if "soakweb" in key and isinstance(value, dict):
            return "up" if str(value.get("state", "")).upper().startswith("UP") else "down"
    return None


# ------------------------------------------------------------------------------------------------
# The GeoIP file
# ------------------------------------------------------------------------------------------------


def overwrite_in_place(path: Path, data: bytes) -> None:
    """What `cp new path` does to an existing file: truncate it (same inode) and write."""
    with path.open("wb") as handle:
        for start in range(0, len(data), CHUNK):
            handle.write(data[start : start + CHUNK])


def replace_atomically(path: Path, data: bytes) -> None:
    """What geoipupdate and careful deploy tools do: write a temporary file, rename it over."""
    temporary = path.with_name(path.name + ".soak-tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@dataclass
class GeoipFile:
    """The server's database file and the bytes the soak writes over it; one writer at a time."""

    path: Path
    good: bytes
    other: bytes
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_step: str = "none yet"
    last_step_at: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def data(self, source: str) -> bytes:
        if source == "good":
            return self.good
        if source == "other":
            return self.other
        return self.good[: len(self.good) * 6 // 10]

    async def write(self, step: GeoipStep, clock: Clock) -> None:
        write: Callable[[Path, bytes], None] = (
            replace_atomically if step.how == "atomic" else overwrite_in_place
        )
        async with self.lock:
            self.last_step = f"{step.how} <- {step.source}"  # a death may come while writing
            self.last_step_at = clock.now()
            await asyncio.to_thread(write, self.path, self.data(step.source))
            self.counts[step.how] = self.counts.get(step.how, 0) + 1

    async def restore(self) -> None:
        """The right database back, atomically (before a server that died is started again)."""
        await asyncio.to_thread(replace_atomically, self.path, self.good)
        self.counts["restored_for_restart"] = self.counts.get("restored_for_restart", 0) + 1

    async def cycle(self, plan: Plan, clock: Clock) -> dict[str, Any]:
        for when, step in geoip_schedule(plan):
            await asyncio.sleep(max(0.0, when - clock.now()))
            await self.write(step, clock)
        if self.last_step != "none yet" and not self.last_step.endswith("good"):
            with contextlib.suppress(OSError):
                await self.write(GeoipStep("atomic", "good"), clock)
        return dict(self.counts)

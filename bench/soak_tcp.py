"""Slow TCP clients, and new TCP queries that measure whether anyone else still gets in.

A slow client connects and sends a valid, length-framed query one byte every `drip_s` seconds,
for as long as the server lets it (a whole message takes minutes); when the server closes the
connection it reconnects after `reconnect_s`, as an attacker would. One group comes from
`slow_many` distinct addresses (127.100.x.y, one connection each), the other from one address
(`slow_one` connections): a per-address cap meets the second, a total cap and a time limit for
a whole message meet both.

Meanwhile a probe opens a new connection every `probe_interval_s` from another address, sends
one query and waits `probe_timeout_s` for the answer. Its success rate while every slow client
is started (the window) is the figure: it is what a real resolver falling back to TCP sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from dataclasses import dataclass, field
from typing import Any

from . import soak_wire as wire
from .common import GEO_NAME, ZONE
from .soak_plan import PROBE_SOURCE, SERVER, SLOW_ONE_SOURCE, Clock, Plan, slow_many_addresses


@dataclass
class SlowStats:
    clients: int = 0
    opened: int = 0
    held: int = 0
    closed_by_server: int = 0
    connect_failures: int = 0
    reconnects: int = 0
    held_samples: list[tuple[float, int]] = field(default_factory=list)
    held_seconds: list[float] = field(default_factory=list)  # how long each closed one was held


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Read (and drop) whatever the server sends until it closes the connection."""
    with contextlib.suppress(OSError):
        while await reader.read(4096):
            pass


async def _slow_client(
    port: int, source: str, plan: Plan, clock: Clock, stats: SlowStats, start_at: float
) -> None:
    stop_at = plan.slow_window[1]
    await asyncio.sleep(max(0.0, start_at - clock.now()))
    message = wire.ecs_query(
        GEO_NAME, wire.FAMILY_V4, 0x08080800, 24, ident=random.randrange(1 << 16)
    )
    stream = struct.pack(">H", len(message)) + message
    first = True
    while clock.now() < stop_at:
        if not first:
            stats.reconnects += 1
        first = False
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(SERVER, port, local_addr=(source, 0)), timeout=5.0
            )
        except (OSError, TimeoutError):
            stats.connect_failures += 1
            await asyncio.sleep(plan.reconnect_s)
            continue
        stats.opened += 1
        stats.held += 1
        opened_at = clock.now()
        closed = asyncio.ensure_future(_until_closed(reader))
        position = 0
        try:
            while clock.now() < stop_at:
                left = stop_at - clock.now()
                done, _ = await asyncio.wait({closed}, timeout=min(plan.drip_s, max(0.0, left)))
                if done:
                    break
                if clock.now() >= stop_at:
                    break
                writer.write(stream[position : position + 1])
                position = (position + 1) % len(stream)
        finally:
            stats.held -= 1
            by_server = closed.done()
            if by_server:
                stats.closed_by_server += 1
                stats.held_seconds.append(round(clock.now() - opened_at, 1))
            closed.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if by_server and clock.now() < stop_at:
            await asyncio.sleep(plan.reconnect_s * (0.5 + random.random()))


async def _sample_held(plan: Plan, clock: Clock, stats: SlowStats) -> None:
    while clock.now() < plan.seconds:
        stats.held_samples.append((round(clock.now(), 1), stats.held))
        await asyncio.sleep(1.0)


async def slow_clients(port: int, plan: Plan, clock: Clock) -> SlowStats:
    """Run every slow client until the end of the window; they start spread over the ramp."""
    sources = slow_many_addresses(plan.slow_many) + [SLOW_ONE_SOURCE] * plan.slow_one
    random.Random(plan.seed).shuffle(sources)
    stats = SlowStats(clients=len(sources))
    ramp = plan.slow_ramp_s
    tasks = [
        asyncio.ensure_future(
            _slow_client(port, source, plan, clock, stats, 0.5 + ramp * i / max(1, len(sources)))
        )
        for i, source in enumerate(sources)
    ]
    sampler = asyncio.ensure_future(_sample_held(plan, clock, stats))
    await asyncio.gather(*tasks, return_exceptions=True)
    await sampler
    return stats


async def _probe(port: int, plan: Plan, clock: Clock, qid: int) -> tuple[float, bool, float]:
    began = clock.now()
    message = wire.query(f"ns1.{ZONE}", wire.QTYPE_A, ident=qid)
    try:
        async with asyncio.timeout(plan.probe_timeout_s):
            reader, writer = await asyncio.open_connection(
                SERVER, port, local_addr=(PROBE_SOURCE, 0)
            )
            try:
                writer.write(struct.pack(">H", len(message)) + message)
                size = struct.unpack(">H", await reader.readexactly(2))[0]
                reply = await reader.readexactly(size)
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return (round(began, 2), False, round(clock.now() - began, 3))
    ok = len(reply) >= 12 and reply[:2] == message[:2] and wire.reply_rcode(reply) == "NOERROR"
    return (round(began, 2), ok, round(clock.now() - began, 3))


async def probe_new_tcp(port: int, plan: Plan, clock: Clock) -> list[tuple[float, bool, float]]:
    """One new-TCP query every `probe_interval_s` for the whole soak (each its own task, so a
    probe left hanging does not delay the next)."""
    tasks: list[asyncio.Future[tuple[float, bool, float]]] = []
    qid = 0
    end = plan.seconds - 0.5
    while clock.now() < end and len(tasks) < int(plan.seconds / plan.probe_interval_s) + 1:
        qid = (qid + 1) & 0xFFFF
        tasks.append(asyncio.ensure_future(_probe(port, plan, clock, qid)))
        await asyncio.sleep(plan.probe_interval_s)
    return list(await asyncio.gather(*tasks))


def slow_result(
    stats: SlowStats, probes: list[tuple[float, bool, float]], plan: Plan
) -> dict[str, Any]:
    window = plan.slow_window
    held = [h for t, h in stats.held_samples if window[0] <= t <= window[1]]
    return {
        "clients": stats.clients,
        "opened": stats.opened,
        "closed_by_server": stats.closed_by_server,
        "connect_failures": stats.connect_failures,
        "reconnects": stats.reconnects,
        "held_min": min(held) if held else None,
        "held_max": max(held) if held else None,
        "held_samples": stats.held_samples,
        "held_seconds_median": sorted(stats.held_seconds)[len(stats.held_seconds) // 2]
        if stats.held_seconds
        else None,
        "window": list(window),
        "probes": probes,
    }

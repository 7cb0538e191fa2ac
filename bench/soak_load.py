"""UDP traffic of the soak: the valid load and the subnet walk (dnsperf), and the bad packets.

The valid load is a fixed mix at a fixed rate (geo A and AAAA queries with ECS from a few
hundred subnets, and the benchmark's static names), so every lost query is the server's doing.
The walk asks for millions of distinct client subnets (IPv4 /24 and IPv6 /56, each inside a
network of the bundled database), so no cache can hold them all. The bad packets come from
`soak_wire.MUTATORS`, one socket per kind, at a fixed rate; replies are counted per kind, their
rcodes read from the header, and a bounded number per second parsed with dnspython.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dns.message
import maxminddb

from . import soak_wire as wire
from .common import GEO_NAME
from .dnswire import QTYPES
from .loadgen import dnsperf
from .soak_plan import MALFORMED_SOURCE, SERVER, Plan
from .workloads import STATIC_MIX


def database_networks(path: Path) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    reader = maxminddb.open_database(str(path))
    try:
        return wire.database_networks(reader)
    finally:
        reader.close()


def valid_messages(v4: list[tuple[int, int]], v6: list[tuple[int, int]]) -> list[bytes]:
    """600 IPv4 /24 and 300 IPv6 /56 geo queries with ECS, and the static mix 10 times."""
    subnets = wire.interleave(
        wire.walk_subnets(v4[::97], 600, 24, 32), wire.walk_subnets(v6[::97], 300, 56, 128)
    )
    messages = [
        wire.ecs_query(GEO_NAME, family, subnet, 24 if family == wire.FAMILY_V4 else 56)
        for family, subnet in subnets
    ]
    static = [wire.query(name, QTYPES[kind]) for name, kind in STATIC_MIX]
    return messages + static * 10


def walk_messages(
    v4: list[tuple[int, int]], v6: list[tuple[int, int]], count: int, v6_share: float
) -> list[bytes]:
    """`count` geo queries, each for a distinct subnet: IPv4 /24 and IPv6 /56, interleaved."""
    count_v6 = int(count * v6_share)
    subnets = wire.interleave(
        wire.walk_subnets(v4, count - count_v6, 24, 32),
        wire.walk_subnets(v6, count_v6, 56, 128),
    )
    return [
        wire.ecs_query(GEO_NAME, family, subnet, 24 if family == wire.FAMILY_V4 else 56)
        for family, subnet in subnets
    ]


def dnsperf_fixed_rate(
    port: int,
    datafile: Path,
    source: str,
    qps: int,
    seconds: float,
    timeout_s: float,
    runs: int | None = None,
    outstanding: int = 200,
) -> dict[str, Any]:
    """dnsperf at a fixed rate for `seconds` (or `runs` passes of the file, if sooner), at
    most `outstanding` queries in flight."""
    extra: tuple[str, ...] = ("-a", source, "-c", "4", "-q", str(outstanding))
    extra += ("-t", str(timeout_s), "-Q", str(qps))
    if runs is not None:
        extra += ("-l", str(seconds))
    try:
        stats = dnsperf(port, datafile, seconds, extra, runs=runs)
    except RuntimeError as exc:
        return {"error": str(exc)[:500], "rate": qps}
    stats["rate"] = qps
    return stats


def dnsperf_phases(
    port: int,
    datafile: Path,
    source: str,
    qps: int,
    phases: list[tuple[str, float]],
    timeout_s: float,
) -> dict[str, Any]:
    """The valid load as one dnsperf run per phase ((name, seconds) in order, back to back), so
    a loss can be told to belong to the reloads, to the pause or to the in-place overwrites."""
    runs = {}
    for name, seconds in phases:
        if seconds >= 1.0:
            runs[name] = dnsperf_fixed_rate(port, datafile, source, qps, seconds, timeout_s)
    total: dict[str, Any] = {"rate": qps, "phases": runs}
    for key in ("sent", "completed", "lost"):
        total[key] = sum(run.get(key) or 0 for run in runs.values())
    errors = [run["error"] for run in runs.values() if "error" in run]
    if errors:
        total["error"] = errors[0]
    return total


def _new_kind_stats() -> dict[str, Any]:
    return {
        "sent": 0,
        "send_errors": 0,
        "replies": 0,
        "rcodes": Counter(),
        "truncated": 0,
        "parsed": 0,
        "rejected": 0,
        "examples": [],
    }


def send_malformed(port: int, plan: Plan, stop: threading.Event) -> dict[str, Any]:
    """Send `plan.malformed_count` bad packets at `plan.malformed_pps`, round-robin over the
    kinds, each kind from its own socket; bounded by the count and by `plan.seconds`."""
    rng = random.Random(plan.seed)
    kinds = list(wire.MUTATORS)
    sockets: dict[str, socket.socket] = {}
    stats = {kind: _new_kind_stats() for kind in kinds}
    recent: dict[str, dict[bytes, bytes]] = {kind: {} for kind in kinds}
    parse_budget = max(1, plan.parse_per_s // len(kinds))
    try:
        for kind in kinds:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            sock.bind((MALFORMED_SOURCE, 0))
            sock.setblocking(False)
            sockets[kind] = sock
        target = plan.malformed_count
        began = time.monotonic()
        second = -1
        parsed_this_second: Counter[str] = Counter()
        sent = 0
        while sent < target and not stop.is_set():
            elapsed = time.monotonic() - began
            if elapsed >= plan.seconds:
                break
            if int(elapsed) != second:
                second = int(elapsed)
                parsed_this_second.clear()
            due = min(target, int(elapsed * plan.malformed_pps)) - sent
            for _ in range(min(due, 2_000)):
                kind = kinds[sent % len(kinds)]
                packet = wire.MUTATORS[kind](rng, GEO_NAME)
                sent += 1
                kind_stats = stats[kind]
                try:
                    sockets[kind].sendto(packet, (SERVER, port))
                    kind_stats["sent"] += 1
                except OSError:  # a full buffer, or an ICMP error of an earlier send
                    kind_stats["send_errors"] += 1
                if len(packet) >= 2:
                    remembered = recent[kind]
                    if len(remembered) > 512:
                        remembered.clear()
                    remembered[packet[:2]] = packet
            _drain(sockets, stats, recent, parsed_this_second, parse_budget)
            time.sleep(0.004)
        settle = time.monotonic() + 1.5  # the last replies
        while time.monotonic() < settle:
            _drain(sockets, stats, recent, parsed_this_second, parse_budget)
            time.sleep(0.05)
        return {
            "kinds": {kind: {**s, "rcodes": dict(s["rcodes"])} for kind, s in stats.items()},
            "seconds": round(time.monotonic() - began, 1),
            "target": target,
            "formerr_kinds": list(wire.RFC_FORMERR_KINDS),
        }
    finally:
        for sock in sockets.values():
            sock.close()


def as_query_opcode(reply: bytes) -> bytes:
    """The reply with its OPCODE set to QUERY, for parsing. Every opcode's message has the same
    sections on the wire (RFC 1035 4.1; RFC 2136 2 renames them), but dnspython reads an UPDATE
    (a bit flip makes some) with rules of its own about zone and classes that say nothing about
    whether the server wrote a well-formed message."""
    if len(reply) < 3:
        return reply
    return reply[:2] + bytes([reply[2] & 0x87]) + reply[3:]


def _drain(
    sockets: dict[str, socket.socket],
    stats: dict[str, dict[str, Any]],
    recent: dict[str, dict[bytes, bytes]],
    parsed_this_second: Counter[str],
    parse_budget: int,
) -> None:
    """Read every reply waiting on every socket (bounded per call); count, and parse some."""
    for kind, sock in sockets.items():
        kind_stats = stats[kind]
        for _ in range(4_000):
            try:
                reply = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP port unreachable while the server restarts
                continue
            kind_stats["replies"] += 1
            kind_stats["rcodes"][wire.reply_rcode(reply)] += 1
            kind_stats["truncated"] += wire.reply_truncated(reply)
            if parsed_this_second[kind] >= parse_budget:
                continue
            parsed_this_second[kind] += 1
            kind_stats["parsed"] += 1
            try:
                dns.message.from_wire(as_query_opcode(reply))
            except Exception as exc:  # any failure to parse is the finding
                kind_stats["rejected"] += 1
                if len(kind_stats["examples"]) < 3:
                    query = recent[kind].get(reply[:2], b"")
                    kind_stats["examples"].append(
                        {
                            "error": f"{type(exc).__name__}: {exc}"[:200],
                            "query": query.hex(),
                            "reply": reply[:300].hex(),
                        }
                    )

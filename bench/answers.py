"""Asking a server for every subnet of a workload, and comparing two servers' answers.

dnspython at a few thousand queries a second would need minutes for a million subnets; this
sends a window of raw queries at a time over one UDP socket (the ID is the position in the
window), collects the replies, and asks again for those missing, three times at most.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import maxminddb

from geodns.geo.places import distance_km

from .common import GEO_NAME, HOST
from .dnswire import QTYPES, GeoReply, parse_reply, query_wire
from .popsets import PopSet
from .workloads import STATIC_MIX

ASK_WINDOW = 256  # queries in flight at once: well within a server's receive buffer
ASK_ATTEMPTS = 3
ASK_TIMEOUT_S = 1.0
NO_ANSWER = GeoReply("no answer", None)


def ask_geo(
    port: int, subnets: list[int], name: str = GEO_NAME, limit_s: float = 900.0, do: bool = False
) -> dict[int, GeoReply]:
    """The A answer and ECS scope each /24 subnet gets (ECS, as dnsperf sends it; DO=1 with
    `do`: the RRSIGs that come with it are skipped)."""
    replies: dict[int, GeoReply] = {}
    deadline = time.monotonic() + limit_s
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((HOST, port))
        for start in range(0, len(subnets), ASK_WINDOW):
            if time.monotonic() > deadline:
                break
            window = subnets[start : start + ASK_WINDOW]
            messages = [
                query_wire(name, QTYPES["A"], (subnet, 24), ident=i, do=do)
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
                            replies[window[i]] = parse_reply(reply)
                if not waiting:
                    break
            for i in waiting:
                replies[window[i]] = NO_ANSWER
    return replies


def ask_static(port: int) -> dict[str, Any]:
    """Each static query's answer section (SOA left out: serial and names are each server's
    own), rcode, AA flag and whether an SOA came with it."""
    import dns.message
    import dns.query

    out: dict[str, Any] = {}
    for name, rtype in STATIC_MIX:
        query = dns.message.make_query(name, rtype, use_edns=0, payload=1232)
        query.flags = 0
        try:
            reply = dns.query.udp(query, HOST, port=port, timeout=2.0)
        except Exception as exc:  # any failure is a difference to report, not a crash
            out[f"{name} {rtype}"] = f"error {exc}"
            continue
        answer = sorted(
            f"{rrset.name} {rrset.rdtype!r} {r.to_text()}"
            for rrset in reply.answer
            for r in rrset
            if rrset.rdtype != 6
        )
        soa = any(rrset.rdtype == 6 for rrset in reply.answer + reply.authority)
        out[f"{name} {rtype}"] = {
            "rcode": reply.rcode(),
            "answer": answer,
            "soa": soa,
            "aa": bool(reply.flags & 0x0400),
        }
    return out


def compare_geo(
    db: Path,
    first: Mapping[int, GeoReply],
    second: Mapping[int, GeoReply],
    pops: PopSet,
    label: str,
) -> dict[str, Any]:
    """Same A answer for every subnet? Each difference with both PoPs' distances from the
    client's database location, so a near tie between two PoPs can be told from a bug, or
    marked `no_location` when the database gives the client no coordinates."""
    by_address = pops.by_ipv4()
    reader = maxminddb.open_database(str(db))
    mismatches: list[dict[str, Any]] = []
    near_ties = missing = unlocated = 0
    try:
        for subnet, mine in first.items():
            theirs = second.get(subnet)
            if theirs is None:
                missing += 1
                continue
            if mine.answer == theirs.answer:
                continue
            address = socket.inet_ntoa(subnet.to_bytes(4, "big"))
            row: dict[str, Any] = {
                "subnet": f"{address}/24",
                "geodns": mine.answer,
                "gdnsd": theirs.answer,
            }
            record = reader.get(address)
            location = record.get("location") if isinstance(record, dict) else None
            if not (isinstance(location, dict) and "latitude" in location):
                # e.g. a GeoLite2 record with only registered_country: gdnsd answers its first
                # datacenter, geodns places the client at its country's representative point
                unlocated += 1
                row["no_location"] = True
                row["record_countries"] = sorted(
                    str(value.get("iso_code"))
                    for key, value in (record.items() if isinstance(record, dict) else ())
                    if key in ("country", "registered_country") and isinstance(value, dict)
                )
            else:
                lat, lon = float(str(location["latitude"])), float(str(location["longitude"]))
                row["location"] = [lat, lon]
                distances = {}
                for side, answer in (("geodns", mine.answer), ("gdnsd", theirs.answer)):
                    pop = (
                        by_address.get(answer[0]) if isinstance(answer, tuple) and answer else None
                    )
                    if pop is not None:
                        km = distance_km(lat, lon, pop.latitude, pop.longitude)
                        distances[side] = round(km, 1)
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
    compared = len(first) - missing
    return {
        "workload": label,
        "compared": compared,
        "same": compared - len(mismatches),
        "mismatches": len(mismatches),
        "near_ties": near_ties,
        "no_location": unlocated,
        "missing": missing,
        "examples": mismatches[:25],
    }


def compare_static(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    differences = {
        key: {"geodns": mine, "gdnsd": second.get(key)}
        for key, mine in first.items()
        if mine != second.get(key)
    }
    return {"compared": len(first), "differences": differences}

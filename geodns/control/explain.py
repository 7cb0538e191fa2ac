"""`geodns explain`: what the server would answer a user, and why.

It loads the same config, zones and database as `geodns serve` and runs the same decision code
(`geodns.geo.dynamic.evaluate`) with a trace, so what it prints is what the server does. Health comes
from the running server's admin API when it is reachable; otherwise every site counts as up.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from geodns.config.loader import open_geo
from geodns.config.server import ServerConfig
from geodns.dns.resolve import split_wire
from geodns.dns.zone import TYPE_A, TYPE_AAAA
from geodns.geo.dynamic import DynamicRecord, Trace, evaluate
from geodns.geo.locator import GeoLocator, Placement, fibre_rtt_ms
from geodns.serving.engine import build_snapshot


def client_key(text: str) -> tuple[Any, bool]:
    """An address ('192.0.2.1') or a subnet ('192.0.2.0/24') -> (placement key, is_ecs)."""
    if "/" not in text:
        return str(ipaddress.ip_address(text)), False
    network = ipaddress.ip_network(text, strict=False)
    family = 1 if network.version == 4 else 2
    length = (network.prefixlen + 7) // 8
    address = network.network_address.packed[:length]
    return (family, network.prefixlen, address), True


def wire_name(name: str) -> bytes:
    labels = [label for label in name.rstrip(".").lower().split(".") if label]
    return b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels) + b"\x00"


def explain(
    config: ServerConfig, who: str, name: str, qtype: str, down: frozenset[str], health_note: str
) -> str:
    geo: GeoLocator = open_geo(config)
    snapshot = build_snapshot(config, geo)
    rtype = TYPE_AAAA if qtype.upper() == "AAAA" else TYPE_A
    key, is_ecs = client_key(who)
    placement = geo.placement(key)
    lines = [
        f"query:     {name} {qtype.upper()} from {who} ({'ECS subnet' if is_ecs else 'resolver address'})"
    ]
    lines += _placement_lines(placement, geo)
    prepared = snapshot.prepared(wire_name(name), rtype)
    record = prepared.dynamic
    if not isinstance(record, DynamicRecord):
        rcode = {0: "NOERROR", 3: "NXDOMAIN", 5: "REFUSED"}.get(prepared.rcode, str(prepared.rcode))
        lines.append(f"answer:    static ({rcode}); does not depend on location; ECS scope /0")
        return "\n".join(lines)
    trace = Trace()
    decision = evaluate(record, placement, down, 0, trace)
    lines.append(f"health:    {health_note}")
    lines.append("rules:")
    lines += [f"  {line}" for line in trace.rules] or ["  (no octoDNS rules)"]
    lines.append("candidates (nearest first):" if record.nearest else "candidates:")
    for label, distance, _up, state in trace.candidates:
        if distance is None:
            lines.append(f"  {label:32} {state}")
        else:
            lines.append(
                f"  {label:16} {distance:8.0f} km  ~{fibre_rtt_ms(distance):6.1f} ms fibre RTT  {state}"
            )
    for note in trace.notes:
        lines.append(f"note:      {note}")
    lines.append(f"decided:   {decision.rule}")
    lines.append(
        f"answer:    {', '.join(decision.values) or '(none: NODATA)'}"
        + (f"  (site {decision.site})" if decision.site else "")
    )
    if decision.servfail:
        lines.append("answer:    SERVFAIL (all_down: servfail)")
    lines.append(f"ttl:       {record.ttl}")
    scope = decision.scope if is_ecs else None
    lines.append(
        f"ECS scope: /{scope}" if scope is not None else "ECS scope: (no ECS in this query)"
    )
    return "\n".join(lines)


def _placement_lines(placement: Placement, geo: GeoLocator) -> list[str]:
    place = placement.place
    lines = [f"database:  {geo.path.name} ({geo.database_type}), network {placement.network}"]
    if place is None:
        lines.append("placed:    not located (private, unlisted or not in the database)")
        return lines
    country = place.country
    if country and country in geo.points and geo.points[country][3]:
        country = f"{geo.points[country][3]} ({country})"
    where = ", ".join(
        part for part in (place.city, place.subdivision, country, place.continent) if part
    )
    how = "city coordinates" if place.precision == "city" else "country's representative point"
    lines.append(f"placed:    {where} at {place.latitude:.4f}, {place.longitude:.4f} ({how})")
    return lines


__all__ = ["explain", "client_key", "split_wire"]

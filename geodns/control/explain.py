"""`geodns explain`: what the server would answer a user, and why.

It loads the same config, zones and database as `geodns serve` (the cached place index when
there is one), runs the reference decision (`geodns.geo.dynamic.evaluate`) with a trace, and
asks the record's answer map for the ECS scope the server returns, so what it prints is what the
server does. Health comes from the running server's admin API when it is reachable; otherwise
every site counts as up.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace
from typing import Any

from geodns.config.loader import load_geo
from geodns.config.server import ServerConfig
from geodns.dns.zone import TYPE_A, TYPE_AAAA
from geodns.dnssec.keys import KeyStore
from geodns.dnssec.rollover import key_set
from geodns.geo.answersets import answer_sets
from geodns.geo.dynamic import DynamicRecord, Trace, evaluate
from geodns.geo.locator import Geo
from geodns.geo.places import Placement, fibre_rtt_ms, load_country_points
from geodns.serving.snapshot import answer_maps, build_snapshot


def client_address(text: str) -> tuple[int, int, bool]:
    """An address ('192.0.2.1') or a subnet ('192.0.2.0/24') -> (family, value, is_ecs)."""
    if "/" not in text:
        address = ipaddress.ip_address(text)
        return address.version, int(address), False
    network = ipaddress.ip_network(text, strict=False)
    return network.version, int(network.network_address), True


def wire_name(name: str) -> bytes:
    labels = [label for label in name.rstrip(".").lower().split(".") if label]
    return b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels) + b"\x00"


def explain(
    config: ServerConfig, who: str, name: str, qtype: str, down: frozenset[str], health_note: str
) -> str:
    geo = load_geo(config, build=False)
    snapshot = build_snapshot(replace(config, dnssec={}), geo, down)  # signing: _dnssec_line
    rtype = TYPE_AAAA if qtype.upper() == "AAAA" else TYPE_A
    family, value, is_ecs = client_address(who)
    placement = geo.locate(family, value)
    lines = [
        f"query:     {name} {qtype.upper()} from {who} ({'ECS subnet' if is_ecs else 'resolver address'})"
    ]
    lines += _placement_lines(placement, geo)
    prepared = snapshot.prepare(wire_name(name), rtype)
    record = prepared.dynamic
    if not isinstance(record, DynamicRecord):
        rcode = {0: "NOERROR", 3: "NXDOMAIN", 5: "REFUSED"}.get(prepared.rcode, str(prepared.rcode))
        lines.append(f"answer:    static ({rcode}); does not depend on location; ECS scope /0")
        lines.append(_dnssec_line(config, prepared.zone, None, ()))
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
        if not note.startswith("ECS scope"):
            lines.append(f"note:      {note}")
    lines.append(f"decided:   {decision.rule}")
    lines.append(
        f"answer:    {', '.join(decision.values) or '(none: NODATA)'}"
        + (f"  (site {decision.site})" if decision.site else "")
    )
    if decision.servfail:
        lines.append("answer:    SERVFAIL (all_down: servfail)")
    lines.append(f"ttl:       {record.ttl}")
    lines.append(_scope_line(snapshot, geo, record, family, value, is_ecs, decision.scope, down))
    lines.append(_dnssec_line(config, prepared.zone, record, decision.values))
    return "\n".join(lines)


def _dnssec_line(
    config: ServerConfig, zone: str | None, record: DynamicRecord | None, values: tuple[str, ...]
) -> str:
    """Whether a DO=1 query gets this answer signed, and by which key (from the key files, at
    the wall clock: what the running server signs with)."""
    policy = config.dnssec.get(zone or "")
    if policy is None:
        return "dnssec:    zone not signed"
    keys = key_set(KeyStore(policy.key_directory, zone or "").load(), time.time())
    if keys is None:
        return "dnssec:    zone signed, but no active keys (geodns serve makes them)"
    key = f"ZSK {keys.zsk.tag} ({policy.algorithm_name})"
    if record is None:
        return f"dnssec:    signed with DO=1 by {key}"
    if values and frozenset(values) not in answer_sets(record)[0]:
        return f"dnssec:    NOT signed: this value set is beyond the {key} signing limit"
    return f"dnssec:    signed with DO=1 by {key}; this value set was signed ahead"


def _scope_line(
    snapshot: Any,
    geo: Geo,
    record: DynamicRecord,
    family: int,
    value: int,
    is_ecs: bool,
    placement_scope: int,
    down: frozenset[str],
) -> str:
    if not is_ecs:
        return "ECS scope: (no ECS in this query)"
    shape = snapshot.shapes.get(record)
    if shape is None or geo.index is None:
        return f"ECS scope: /{placement_scope} (the block with this place)"
    maps = answer_maps(geo, [shape], down)
    _, scope = maps[shape].lookup(family, value)
    return f"ECS scope: /{scope} (every address in it gets this answer now)"


def _placement_lines(placement: Placement, geo: Geo) -> list[str]:
    place = placement.place
    how_placed = "place index" if geo.index is not None else "database lookup"
    lines = [
        f"database:  {geo.path.name} ({geo.database_type}, {how_placed}), "
        f"same place over {placement.network}"
    ]
    if place is None:
        lines.append("placed:    not located (private, unlisted or not in the database)")
        return lines
    country = place.country
    points = load_country_points()
    if country and country in points and points[country][3]:
        country = f"{points[country][3]} ({country})"
    where = ", ".join(
        part for part in (place.city, place.subdivision, country, place.continent) if part
    )
    how = "city coordinates" if place.precision == "city" else "country's representative point"
    lines.append(f"placed:    {where} at {place.latitude:.4f}, {place.longitude:.4f} ({how})")
    return lines


__all__ = ["explain", "client_address"]

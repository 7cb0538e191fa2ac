"""Shared by the DNSSEC tests: a signed copy of the bundled example (plus a zone with the
cases the example lacks), and a validator that checks every RRset of a reply with dnspython.

The real validating resolvers (unbound, delv) are in tests/test_dnssec_resolvers.py; this
module's checks run in-process on every answer, so they can be exhaustive and fast.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import yaml

from geodns.config.loader import load_geo
from geodns.config.server import BUNDLED_ZONES, ServerConfig, load_config
from geodns.geo.locator import Geo
from geodns.serving.answer_path import ServerState, answer
from geodns.serving.client import ClientFactory
from geodns.serving.signing import keep_all_keys
from geodns.serving.snapshot import Snapshot, build_snapshot

EXAMPLE = "cdn.example.com."
EXTRA = "geo.test."
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "geodns" / "data" / "example-config.yaml"
JAKARTA = "36.86.63.0/24"
FRANKFURT = "217.0.0.0/24"
SAO_PAULO = "177.0.0.0/24"

# what the example lacks: a wildcard (static and dynamic), an empty non-terminal, delegations
# with and without DS, a DNAME, a weighted pool of three values, a big RRset for truncation
EXTRA_ZONE: dict[str, Any] = {
    "": [
        {"type": "NS", "values": ["ns1.geo.test."]},
        {"type": "TXT", "values": ["apex"]},
    ],
    "ns1": {"type": "A", "value": "127.0.0.1"},
    "*.wild": {"type": "TXT", "value": "synthesised"},
    "*.dyn": {
        "type": "A",
        "ttl": 30,
        "values": ["192.0.2.1", "192.0.2.4"],
        "octodns": {"geodns": {"nearest": True}},
    },
    "deep.ent": {"type": "A", "value": "192.0.2.9"},
    "signed-child": [
        {"type": "NS", "values": ["ns.signed-child.geo.test."]},
        {
            "type": "DS",
            "value": {
                "key_tag": 12345,
                "algorithm": 13,
                "digest_type": 2,
                "digest": "2BB183AF5F22588179A53B0A98631FAD1A292118E6B6E4A4E5E0E0B1B2B3B4B5",
            },
        },
    ],
    "ns.signed-child": {"type": "A", "value": "192.0.2.53"},
    "plain-child": {"type": "NS", "values": ["ns.plain-child.geo.test."]},
    "ns.plain-child": {"type": "A", "value": "192.0.2.54"},
    "alias": {"type": "DNAME", "value": "wild.geo.test."},
    "big": {"type": "TXT", "values": [f"{i:02d}" + "x" * 240 for i in range(6)]},
    "weighted": {
        "type": "A",
        "ttl": 30,
        "value": "192.0.2.200",
        "dynamic": {
            "pools": {
                "spread": {
                    "values": [
                        {"value": "192.0.2.101", "weight": 1},
                        {"value": "192.0.2.102", "weight": 2},
                        {"value": "192.0.2.103", "weight": 3},
                    ]
                }
            },
            "rules": [{"pool": "spread"}],
        },
    },
}
EXTRA_SITES = {
    "jkt": {"kind": "pop", "location": {"lat": -6.2, "lon": 106.8}, "addresses": ["192.0.2.1"]},
    "fra": {"kind": "pop", "location": {"lat": 50.1, "lon": 8.7}, "addresses": ["192.0.2.4"]},
}


def write_config(
    root: Path,
    dnssec: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    signed: bool = True,
) -> Path:
    """The bundled example config with its zone (and the extra zone) in `root`, both signed
    with keys in root/keys unless `signed` is False."""
    zones = root / "zones"
    zones.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUNDLED_ZONES / "cdn.example.com.yaml", zones / "cdn.example.com.yaml")
    (zones / "geo.test.yaml").write_text(yaml.safe_dump(EXTRA_ZONE))
    for path in zones.iterdir():  # the SOA serial comes from the file's time: the same each run
        os.utime(path, (1_700_000_000, 1_700_000_000))
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config["sites"].update(EXTRA_SITES)
    config["zones_dir"] = str(zones)
    config["state_file"] = str(root / "state.json")
    config["admin"] = {"listen": None}
    settings = {"enabled": True, "key_directory": str(root / "keys"), **(dnssec or {})}
    if signed:
        config["zones"] = {
            "cdn.example.com": {"dnssec": settings},
            "geo.test": {"dnssec": settings},
        }
    config.update(extra or {})
    path = root / "geodns.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


_GEO: dict[str, Geo] = {}


def geo_for(config: ServerConfig) -> Geo:
    """The bundled database's Geo, loaded once per test session (it is read-only)."""
    key = str(config.geoip_path)
    if key not in _GEO:
        _GEO[key] = load_geo(config, build=True)
    return _GEO[key]


def signed_snapshot(config: ServerConfig, now: float | None = None) -> Snapshot:
    """Make the keys as `geodns serve` does on its first start, then build a snapshot."""
    now = time.time() if now is None else now
    for _ in keep_all_keys(config, {}, now):
        pass
    return build_snapshot(config, geo_for(config), now=now)


def load(path: Path) -> ServerConfig:
    return load_config(path)


FACTORY = ClientFactory()


def query_bytes(
    name: str,
    rdtype: str | int,
    ecs: str | None = None,
    do: bool = True,
    payload: int = 1232,
    edns: bool = True,
    query_id: int = 4660,
) -> bytes:
    options = [dns.edns.ECSOption.from_text(ecs)] if ecs else None
    query = dns.message.make_query(
        name,
        rdtype,
        use_edns=0 if edns else False,
        want_dnssec=do,
        payload=payload,
        options=options,
    )
    query.id = query_id
    return query.to_wire()


def ask(state: ServerState, data: bytes, tcp: bool = True, who: str = "127.0.0.1") -> bytes:
    reply = answer(state, data, FACTORY.from_text(who), tcp, time.time())
    assert reply is not None
    return reply


def ask_message(
    state: ServerState, name: str, rdtype: str | int, **kwargs: Any
) -> dns.message.Message:
    tcp = kwargs.pop("tcp", True)
    return dns.message.from_wire(ask(state, query_bytes(name, rdtype, **kwargs), tcp))


def dnskeys(state: ServerState, zone: str) -> dns.rrset.RRset:
    reply = ask_message(state, zone, "DNSKEY")
    origin = dns.name.from_text(zone)
    return reply.find_rrset(reply.answer, origin, dns.rdataclass.IN, dns.rdatatype.DNSKEY)


def _signature(section: list[dns.rrset.RRset], rrset: dns.rrset.RRset) -> dns.rrset.RRset | None:
    for candidate in section:
        if (
            candidate.rdtype == dns.rdatatype.RRSIG
            and candidate.covers == rrset.rdtype
            and candidate.name == rrset.name
        ):
            return candidate
    return None


def validate(
    reply: dns.message.Message, keys: dict[dns.name.Name, dns.rrset.RRset], now: float | None = None
) -> None:
    """Every authoritative RRset of the reply has an RRSIG that validates under `keys`
    (raises dns.dnssec.ValidationFailure or AssertionError). Not signed, as RFC 4035 says:
    a delegation's NS RRset, glue, and the CNAME synthesised from a DNAME."""
    zones = list(keys)
    referral = not reply.flags & dns.flags.AA
    dname = any(r.rdtype == dns.rdatatype.DNAME for r in reply.answer)
    for section in (reply.answer, reply.authority, reply.additional):
        for rrset in section:
            if rrset.rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.OPT):
                continue
            if section is reply.authority and rrset.rdtype == dns.rdatatype.NS and referral:
                continue
            if section is reply.additional and referral:
                continue
            if dname and rrset.rdtype == dns.rdatatype.CNAME and _signature(section, rrset) is None:
                continue
            if not any(rrset.name.is_subdomain(z) for z in zones):
                continue
            signature = _signature(section, rrset)
            assert signature is not None, f"no RRSIG for {rrset}"
            dns.dnssec.validate(rrset, signature, keys, now=now)


def nsecs(reply: dns.message.Message) -> list[dns.rrset.RRset]:
    return [r for r in reply.authority if r.rdtype == dns.rdatatype.NSEC]


def covers(nsec: dns.rrset.RRset, name: dns.name.Name) -> bool:
    """Whether an NSEC record proves `name` does not exist (strictly between owner and next)."""
    following = nsec[0].next
    owner = nsec.name
    if owner < following:
        return owner < name < following
    return name > owner or name < following  # the last NSEC wraps to the apex


def proves_nodata(reply: dns.message.Message, name: dns.name.Name, rdtype: int) -> bool:
    for nsec in nsecs(reply):
        if nsec.name == name:
            types = {t for window, bitmap in nsec[0].windows for t in _types(window, bitmap)}
            return rdtype not in types and dns.rdatatype.CNAME not in types
        if covers(nsec, name):
            return True  # an empty non-terminal: nothing owns it
    return False


def _types(window: int, bitmap: bytes) -> list[int]:
    return [
        window * 256 + index * 8 + bit
        for index, octet in enumerate(bitmap)
        for bit in range(8)
        if octet & (0x80 >> bit)
    ]


def rcode(reply: dns.message.Message) -> str:
    return dns.rcode.to_text(reply.rcode())

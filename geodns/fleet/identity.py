"""What a member tells the fleet about what it serves: zone serials and two digests.

Members of one fleet must answer alike, so `geodns status` flags a member whose zones or
answer-relevant config differ from the others'. Each member's own settings (its name, listen
addresses, admin API, its checks' probe addresses, which may rightly differ per vantage point)
are left out of the digests; what decides answers is in:

- `zones_digest`: the bytes of every zone file, by file name;
- `config_digest`: the sites (kind, place, addresses, weight, data centres; not their checks),
  the SOA settings, and the fleet's quorum rule.

The GeoIP database's build date is reported beside them, not in them: database updates reach
members at different moments and that is expected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geodns.config.server import ServerConfig
from geodns.dns.zone import Zone

DIGEST_CHARS = 16  # 64 bits: enough to tell a handful of members' files apart, short to show


def member_identity(
    config: ServerConfig, zones: Mapping[str, Zone], geoip_build: float
) -> dict[str, Any]:
    """The identity part of this member's record (reads the zone files: call it off the loop)."""
    return {
        "zones": {origin: _serial(zone) for origin, zone in sorted(zones.items())},
        "zones_digest": _zones_digest(zones),
        "config_digest": _config_digest(config),
        "geoip_build": geoip_build,
    }


def _serial(zone: Zone) -> int | None:
    rdata = zone.soa.rdatas[0] if zone.soa.rdatas else None
    times = getattr(rdata, "times", None)
    return int(times[0]) if times else None


def _zones_digest(zones: Mapping[str, Zone]) -> str:
    digest = hashlib.sha256()
    for origin, zone in sorted(zones.items()):
        digest.update(origin.encode() + b"\0")
        try:
            digest.update(Path(zone.path).read_bytes())
        except OSError as exc:  # changed under us: the digest says "different", which it is
            digest.update(f"unreadable: {exc.strerror}".encode())
        digest.update(b"\0")
    return digest.hexdigest()[:DIGEST_CHARS]


def _config_digest(config: ServerConfig) -> str:
    sites = {
        name: [
            site.kind,
            site.latitude,
            site.longitude,
            list(site.ipv4),
            list(site.ipv6),
            site.weight,
            list(site.datacenters),
        ]
        for name, site in sorted(config.sites.items())
    }
    soa = {"": repr(config.soa), **{z: repr(s) for z, s in sorted(config.zone_soa.items())}}
    quorum = config.fleet.down_share if config.fleet is not None else None
    text = json.dumps({"sites": sites, "soa": soa, "down_share": quorum}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]

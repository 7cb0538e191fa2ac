"""Ask geodns's answer engine directly, without a socket: the real config loader, zone loader,
geo database and `respond()`, fed dnspython queries and read back with dnspython.

What the server process adds (sockets, workers, reloads) is tested with a real server
elsewhere; the many per-record and per-geo checks of the octoDNS corpus and of the record
types run through this, in milliseconds each.

    zones = Zones(tmp_path, {"example.test": ZONE_YAML}, config={"sites": {...}})
    reply = zones.ask("www.example.test", "A", ecs="192.0.2.0/24")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import yaml

from geodns.config.loader import open_geo
from geodns.config.server import load_config
from geodns.dns.wire import parse_query
from geodns.serving.engine import Snapshot, build_snapshot, respond


class Zones:
    """A config and zone files in a directory, loaded into one snapshot."""

    def __init__(
        self,
        root: Path,
        zones: dict[str, str],
        config: dict[str, Any] | None = None,
        health: Any = None,
    ) -> None:
        zones_dir = root / "zones"
        zones_dir.mkdir(parents=True, exist_ok=True)
        for name, text in zones.items():
            (zones_dir / f"{name}.yaml").write_text(text)
        settings = {"zones_dir": "zones", **(config or {})}
        self.config_path = root / "geodns.yaml"
        self.config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
        self.config = load_config(self.config_path)
        self.geo = open_geo(self.config)
        self.snapshot: Snapshot = build_snapshot(self.config, self.geo, health)

    def ask(
        self,
        name: str,
        rdtype: str | int = "A",
        *,
        ecs: str | None = None,
        client: str = "127.0.0.1",
        query_id: int = 4660,
        tcp: bool = True,
    ) -> dns.message.Message:
        options = [dns.edns.ECSOption.from_text(ecs)] if ecs else None
        query = dns.message.make_query(name, rdtype, use_edns=0, payload=4096, options=options)
        query.id = query_id
        reply, _ = respond(parse_query(query.to_wire()), client, self.snapshot, tcp)
        return dns.message.from_wire(reply)

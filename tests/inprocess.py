"""Queries through geodns's answer path in-process: no socket, no server process.

What the server does with a packet is `geodns.serving.answer_path.answer(state, bytes, client,
tcp, now)`, with the snapshot the server builds from the config; tests that check behaviour
rather than transports call it directly (milliseconds instead of a process start). What the
server process adds (sockets, workers, reloads) is tested with a real server elsewhere.

    state = state_for(config_path)
    reply = ask(state, query_bytes, "192.0.2.1")

    zones = Zones(tmp_path, {"example.test": ZONE_YAML}, config={"sites": {...}})
    message = zones.ask("www.example.test", "A", ecs="192.0.2.0/24")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import yaml

from geodns.config.loader import load_geo
from geodns.config.server import ServerConfig, load_config
from geodns.geo.locator import Geo
from geodns.serving.answer_path import ServerState, answer
from geodns.serving.client import Client, ClientFactory
from geodns.serving.cookies import CookieJar
from geodns.serving.rrl import ResponseRateLimiter
from geodns.serving.snapshot import Snapshot, answer_maps, build_snapshot

FACTORY = ClientFactory()


def client(text: str) -> Client:
    return FACTORY.from_text(text)


def snapshot_for(config: ServerConfig, geo: Geo | None = None) -> Snapshot:
    return build_snapshot(config, geo if geo is not None else load_geo(config, build=True))


def state_for(config: ServerConfig | Path, geo: Geo | None = None) -> ServerState:
    """A process's answer-path state for a config (a ServerConfig or a config file), with the
    guards the config turns on."""
    if not isinstance(config, ServerConfig):
        config = load_config(config)
    return ServerState(
        snapshot_for(config, geo),
        ResponseRateLimiter(config.rrl) if config.rrl.enabled else None,
        CookieJar(bytes(16)) if config.cookies.enabled else None,
    )


def ask(
    state: ServerState,
    data: bytes,
    who: str | Client = "192.0.2.1",
    tcp: bool = False,
    now: float | None = None,
) -> bytes | None:
    """The reply the server would send to `data` from `who`, or None."""
    peer = who if isinstance(who, Client) else client(who)
    return answer(state, data, peer, tcp, time.time() if now is None else now)


class Zones:
    """A config and zone files in a directory, loaded into one snapshot, asked with dnspython."""

    def __init__(
        self,
        root: Path,
        zones: dict[str, str],
        config: dict[str, Any] | None = None,
        down: frozenset[str] = frozenset(),
    ) -> None:
        zones_dir = root / "zones"
        zones_dir.mkdir(parents=True, exist_ok=True)
        for name, text in zones.items():
            (zones_dir / f"{name}.yaml").write_text(text)
        settings = {"zones_dir": "zones", **(config or {})}
        self.config_path = root / "geodns.yaml"
        self.config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
        self.config = load_config(self.config_path)
        self.geo = load_geo(self.config, build=True)
        snapshot = build_snapshot(self.config, self.geo)
        if down:
            maps = answer_maps(self.geo, set(snapshot.shapes.values()), down)
            snapshot = snapshot.with_view(down, self.geo, maps)
        self.snapshot = snapshot
        self.state = ServerState(snapshot)

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
        reply = ask(self.state, query.to_wire(), client, tcp)
        assert reply is not None
        return dns.message.from_wire(reply)

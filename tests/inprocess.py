"""Queries through the answer path in-process: no socket, no server process.

What the server does with a packet is `geodns.serving.answer_path.answer(state, bytes, client,
tcp, now)`; tests that check behaviour rather than transports call it directly (milliseconds
instead of a process start), with the same snapshot the server would build from the config.
"""

from __future__ import annotations

import time
from pathlib import Path

from geodns.config.loader import load_geo
from geodns.config.server import ServerConfig, load_config
from geodns.geo.locator import Geo
from geodns.serving.answer_path import ServerState, answer
from geodns.serving.client import Client, ClientFactory
from geodns.serving.cookies import CookieJar
from geodns.serving.rrl import ResponseRateLimiter
from geodns.serving.snapshot import Snapshot, build_snapshot

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

"""Queries through geodns's answer path in-process: no socket, no server process.

What the server does with a packet is `geodns.serving.answer_path.answer(state, bytes, client,
tcp, now)`, with the snapshot the server builds from the config; tests that check behaviour
rather than transports call it directly (milliseconds instead of a process start). What the
server process adds (sockets, framing, workers, signals, reloads, health checks) is tested with
a real server elsewhere (tests/server_process.py).

    state = state_for(config_path)
    reply = ask(state, query_bytes, "192.0.2.1")

    zones = Zones(tmp_path, {"example.test": ZONE_YAML}, config={"sites": {...}})
    message = zones.ask("www.example.test", "A", ecs="192.0.2.0/24")

    nameserver = InProcessServer(tmp_path, {"edns": {"max_udp_size": 512}}, BASE_ZONES)
    reply = nameserver.query("www.example.test", "A", tcp=False)   # as GeodnsServer.query
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.message
import dns.name
import dns.query
import yaml
from server_process import LOOPBACK_V4, LOOPBACK_V6, make_query

from geodns.config.loader import load_geo
from geodns.config.server import ServerConfig, load_config
from geodns.daemon.app import client_factory, read_cookie_secret
from geodns.geo.locator import Geo
from geodns.observe.metrics import Metrics
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


class InProcessServer:
    """A config and zone files in a directory, answered in this process as `geodns serve` would
    answer them, asked the way a GeodnsServer is asked (query, send, raw_udp, raw_tcp, answers).

    The state is built as geodns.daemon.app builds a process's first one: the config file, the
    geo database, the snapshot (with the health view `down`, as a restored state file gives
    it), the rate limiter and cookie jar the config turns on, its client factory (which
    networks are exempt from rate limiting) and the query counters of /metrics. A question
    "over UDP" or "over TCP" goes to `answer()` with that transport's flag, from the address a
    loopback client would have (127.0.0.1, ::1 when `host` is ::1, or `source`); `clock` gives
    `now` (tests of rate limits and cookies pass a fixed one). No sockets: a transport's own
    behaviour (framing, timeouts, connection limits, batching) needs a GeodnsServer.
    """

    host = LOOPBACK_V4

    def __init__(
        self,
        root: Path,
        config: Mapping[str, Any] | None = None,
        zones: Mapping[str, str | Mapping[str, Any]] | None = None,
        *,
        files: Mapping[str, str | bytes] | None = None,
        down: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = {"zones_dir": "zones", **(config or {})}
        self.zones_dir = self.dir / str(settings["zones_dir"])
        self.zones_dir.mkdir(parents=True, exist_ok=True)
        for name, content in (zones or {}).items():
            text = content if isinstance(content, str) else yaml.safe_dump(dict(content))
            self.zone_path(name).write_text(text)
        for relative, data in (files or {}).items():
            path = self.dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
        self.config_path = self.dir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
        self.config = load_config(self.config_path)
        self.geo = load_geo(self.config)
        snapshot = build_snapshot(self.config, self.geo)
        if down:
            maps = answer_maps(self.geo, snapshot.shapes.values(), down, snapshot.maps)
            snapshot = snapshot.with_view(down, self.geo, maps)
        cookies = self.config.cookies
        jar = None
        if cookies.enabled:
            secret = cookies.secret_file
            jar = CookieJar(read_cookie_secret(secret) if secret is not None else os.urandom(16))
        rrl = self.config.rrl
        self.state = ServerState(snapshot, ResponseRateLimiter(rrl) if rrl.enabled else None, jar)
        self.metrics = Metrics(server_state=self.state, process=False)
        self.state.count_with(self.metrics.counters)
        self.clients = client_factory(self.config)
        self.clock = clock

    @property
    def snapshot(self) -> Snapshot:
        return self.state.snapshot

    def zone_path(self, zone: str) -> Path:
        return self.zones_dir / f"{zone.rstrip('.')}.yaml"

    # -- asking ------------------------------------------------------------------------------

    def raw_udp(
        self,
        data: bytes,
        timeout: float = 1.0,
        *,
        host: str | None = None,
        source: str | None = None,
    ) -> bytes | None:
        """The reply to `data` as one datagram, or None where the server sends nothing."""
        return answer(self.state, data, self._client(host, source), False, self.clock())

    def raw_tcp(self, data: bytes, timeout: float = 2.0) -> bytes | None:
        """The reply to `data` as one message on a TCP connection, or None."""
        return answer(self.state, data, self._client(None, None), True, self.clock())

    def query(
        self,
        qname: str | dns.name.Name,
        rdtype: str | int = "A",
        *,
        tcp: bool = False,
        ecs: str | dns.edns.Option | None = None,
        edns: bool = True,
        payload: int = 1232,
        want_dnssec: bool = False,
        source: str | None = None,
        timeout: float = 2.0,
        host: str | None = None,
        options: list[dns.edns.Option] | None = None,
        rd: bool = True,
    ) -> dns.message.Message:
        message = make_query(
            qname,
            rdtype,
            ecs=ecs,
            edns=edns,
            payload=payload,
            want_dnssec=want_dnssec,
            options=options,
            rd=rd,
        )
        return self.send(message, tcp=tcp, source=source, host=host)

    def send(
        self,
        message: dns.message.Message,
        *,
        tcp: bool = False,
        source: str | None = None,
        timeout: float = 2.0,
        host: str | None = None,
    ) -> dns.message.Message:
        """The reply as dnspython's dns.query.udp/tcp would return it: Timeout when there is
        none, BadResponse when it does not answer `message`."""
        peer = self._client(host, source)
        wire = answer(self.state, message.to_wire(), peer, tcp, self.clock())
        if wire is None:
            raise dns.exception.Timeout
        reply = dns.message.from_wire(wire)
        if not message.is_response(reply):
            raise dns.query.BadResponse
        return reply

    def answers(self, qname: str, rdtype: str | int = "A", **kwargs: Any) -> bool:
        """True when a query gets a reply (GeodnsServer's liveness probe)."""
        try:
            self.query(qname, rdtype, **kwargs)
        except dns.exception.DNSException:
            return False
        return True

    def alive(self) -> bool:
        """No query has met a bug: the answer path catches every exception (the server goes on,
        answering SERVFAIL), so here "still alive" means none was caught at all."""
        return self.state.errors == 0

    def stderr_text(self) -> str:
        return f"(in process: {self.state.errors} internal error(s) caught by the answer path)"

    def metrics_text(self) -> str:
        """What GET /metrics would show of the answer path's counts."""
        return self.metrics.render()[0].decode()

    def _client(self, host: str | None, source: str | None) -> Client:
        if source is not None:
            return self.clients.from_text(source)
        return self.clients.from_text(LOOPBACK_V6 if host == LOOPBACK_V6 else LOOPBACK_V4)


class Zones(InProcessServer):
    """Zone texts and a config in a directory, loaded into one snapshot, asked with dnspython."""

    def __init__(
        self,
        root: Path,
        zones: dict[str, str],
        config: dict[str, Any] | None = None,
        down: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(root, config, zones, down=down)

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

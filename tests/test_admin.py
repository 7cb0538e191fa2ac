"""The admin API on a loopback port and on a Unix socket, driven through geodns.control.adminclient.

The server runs in the test's event loop; the client functions are blocking (each runs its own
short event loop), so the tests call them in a thread, as the CLI would from another process.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from geodns.config.server import AdminConfig, ServerConfig
from geodns.control import adminclient
from geodns.control.adminclient import AdminError, format_status, parse_duration
from geodns.daemon.admin import make_admin_app, parse_listen, start_admin
from geodns.geo.sites import Site
from geodns.health.monitor import HealthMonitor
from geodns.health.state import HealthView

TOKEN = "s3cret-token"
METRICS = b"# TYPE geodns_up gauge\ngeodns_up 1\n"


def site(name: str) -> Site:
    return Site(name, "pop", 0.0, 0.0, ("192.0.2.1",), ())


class Server:
    """A monitor (sites lon, ams; no checks) behind a running admin API."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.views: list[HealthView] = []
        self.reloads: list[tuple[bool, list[str]]] = [(True, [])]
        self.monitor = HealthMonitor(
            {"lon": site("lon"), "ams": site("ams")}, None, self.views.append
        )
        self.runner: Any = None
        self.port = 0
        self.socket = str(directory / "admin.sock")

    async def _reload(self) -> tuple[bool, list[str]]:
        return self.reloads.pop(0)

    async def start(
        self, token: str | None = TOKEN, unix: bool = True, public_metrics: bool = False
    ) -> Server:
        await self.monitor.start()
        app = make_admin_app(
            self.monitor,
            self._reload,
            lambda: {"version": "9.9.9", "reload_ok": True},
            lambda accept: (METRICS, "text/plain; version=0.0.4; charset=utf-8"),
            public_metrics=public_metrics,
        )
        self.runner = await start_admin(app, "127.0.0.1:0", self.socket if unix else None, token)
        self.port = next(a[1] for a in self.runner.addresses if isinstance(a, tuple))
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.monitor.stop()

    def config(self, token: str | None = TOKEN, unix: bool = False) -> ServerConfig:
        token_file = None
        if token is not None:
            token_file = self.directory / f"token-{len(token)}"
            token_file.write_text(token + "\n")
        return ServerConfig(
            admin=AdminConfig(
                listen=f"127.0.0.1:{self.port}",
                socket=self.socket if unix else None,
                token_file=token_file,
                no_socket=not unix,  # not the default socket of some other server on 5353
            )
        )


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="geodns-") as name:
        yield Path(name)


def run(main: Callable[[], Awaitable[Any]], limit: float = 10.0) -> Any:
    return asyncio.run(asyncio.wait_for(main(), limit))


async def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(function, *args, **kwargs)


async def raw(server: Server, method: str, path: str, **options: Any) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"http://127.0.0.1:{server.port}{path}", **options) as response,
    ):
        return response.status, await response.text()


def test_drain_status_undrain_and_reload_over_tcp(short_dir: Path) -> None:
    async def main() -> None:
        server = await Server(short_dir).start()
        config = server.config()
        try:
            before = time.time()
            drain = await call(adminclient.drain, config, "lon", "failover drill", "10m")
            assert drain["site"] == "lon" and drain["reason"] == "failover drill"
            assert "@" in drain["by"]  # user@host of whoever ran the command
            assert before + 600 <= drain["until"] <= time.time() + 600
            assert server.monitor.view.down == {"lon"}  # the next query sees it
            assert server.views == [HealthView(frozenset({"lon"}))]

            status = await call(adminclient.status, config)
            assert status["version"] == "9.9.9" and status["down"] == ["lon"]
            lon = status["sites"]["lon"]
            assert lon["state"] == "down" and lon["drained"] is True
            assert lon["drain"]["reason"] == "failover drill"
            assert lon["down_cause"] == f"drained by {drain['by']}: failover drill"
            table = format_status(status)
            assert "lon" in table and "failover drill" in table and "9m" in table

            ended = await call(adminclient.undrain, config, "lon")
            assert ended["was_drained"] is True and ended["drain"]["site"] == "lon"
            again = await call(adminclient.undrain, config, "lon")
            assert again["was_drained"] is False
            assert server.monitor.view.down == frozenset()

            server.reloads = [(True, []), (False, ["zones/x.yaml:3: expected a mapping"])]
            assert await call(adminclient.reload, config) == (True, [])
            assert await call(adminclient.reload, config) == (
                False,
                ["zones/x.yaml:3: expected a mapping"],
            )
        finally:
            await server.stop()

    run(main)


def test_tcp_requires_the_token_for_every_path_metrics_too(short_dir: Path) -> None:
    async def main() -> None:
        server = await Server(short_dir).start()
        try:
            for config in (server.config(token="wrong"), server.config(token=None)):
                with pytest.raises(AdminError, match="refused the request.*Bearer"):
                    await call(adminclient.drain, config, "lon")
            assert server.monitor.view.down == frozenset()
            code, _ = await raw(server, "GET", "/status")
            assert code == 401
            code, _ = await raw(server, "GET", "/metrics")
            assert code == 401
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            code, text = await raw(server, "GET", "/metrics", headers=bearer)
            assert code == 200 and text.encode() == METRICS
            missing = server.config(token=None)
            missing = ServerConfig(
                admin=AdminConfig(missing.admin.listen, None, short_dir / "no-such-token")
            )
            with pytest.raises(AdminError, match="cannot read admin.token_file"):
                await call(adminclient.status, missing)
        finally:
            await server.stop()

    run(main)


def test_public_metrics_lets_only_metrics_through_without_the_token(short_dir: Path) -> None:
    async def main() -> None:
        server = await Server(short_dir).start(public_metrics=True)
        try:
            code, text = await raw(server, "GET", "/metrics")
            assert code == 200 and text.encode() == METRICS
            for method, path in (("GET", "/status"), ("POST", "/drain"), ("POST", "/reload")):
                code, _ = await raw(server, method, path, json={"site": "lon"})
                assert code == 401, path
            assert server.monitor.view.down == frozenset()
        finally:
            await server.stop()

    run(main)


def test_without_a_token_tcp_serves_reads_and_refuses_drains_and_reloads(short_dir: Path) -> None:
    """Any local user can reach a loopback port: without a token, TCP changes no answer."""

    async def main() -> None:
        server = await Server(short_dir).start(token=None, unix=False)
        config = server.config(token=None)
        try:
            status = await call(adminclient.status, config)
            assert set(status["sites"]) == {"ams", "lon"}
            code, text = await raw(server, "GET", "/metrics")
            assert code == 200 and text.encode() == METRICS
            for order in (
                lambda: adminclient.drain(config, "lon"),
                lambda: adminclient.undrain(config, "lon"),
                lambda: adminclient.reload(config),
            ):
                with pytest.raises(AdminError, match="need the admin token.*admin socket"):
                    await call(order)
            for path in ("/drain", "/undrain", "/reload"):
                code, text = await raw(server, "POST", path, json={"site": "lon"})
                assert code == 403 and "admin.token_file" in text, path
            assert server.monitor.view.down == frozenset()
            assert server.reloads == [(True, [])]  # no reload ran
        finally:
            await server.stop()

    run(main)


def test_a_drain_without_the_socket_it_expects_says_the_socket_is_gone(short_dir: Path) -> None:
    """The default socket lives in the cache directory: removed with it under a running
    server, `geodns drain` goes over TCP, is refused without a token, and says why."""

    async def main() -> None:
        server = await Server(short_dir).start(token=None, unix=False)
        config = server.config(token=None, unix=True)  # expects server.socket: never made
        try:
            with pytest.raises(AdminError, match=r"admin socket .* is not there.*restart"):
                await call(adminclient.drain, config, "lon")
            assert server.monitor.view.down == frozenset()
        finally:
            await server.stop()

    run(main)


def test_unix_socket_needs_no_token(short_dir: Path) -> None:
    async def main() -> None:
        server = await Server(short_dir).start(token=TOKEN)
        config = server.config(token=None, unix=True)
        try:
            assert stat.S_IMODE(os.stat(server.socket).st_mode) == 0o660
            drain = await call(adminclient.drain, config, "ams", "drill", 30, by="ops")
            assert drain["by"] == "ops" and drain["until"] is not None
            status = await call(adminclient.status, config)
            assert status["sites"]["ams"]["drained"] is True
            assert (await call(adminclient.undrain, config, "ams"))["was_drained"] is True
        finally:
            await server.stop()

    run(main)


def test_unknown_site_and_bad_requests_are_clear(short_dir: Path) -> None:
    async def main() -> None:
        server = await Server(short_dir).start()
        config = server.config()
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        try:
            with pytest.raises(AdminError, match=r"no site named 'lno' \(did you mean 'lon'\?\)"):
                await call(adminclient.drain, config, "lno")
            with pytest.raises(AdminError, match="no site named 'paris'; sites: ams, lon"):
                await call(adminclient.undrain, config, "paris")
            code, text = await raw(server, "POST", "/drain", json={"site": "zzz"}, headers=bearer)
            assert code == 404 and "no site named" in text
            code, text = await raw(server, "POST", "/drain", data=b"{not json", headers=bearer)
            assert code == 400 and "JSON object" in text
            code, text = await raw(
                server, "POST", "/drain", json={"site": "lon", "for_s": -5}, headers=bearer
            )
            assert code == 400 and "for_s" in text
            code, text = await raw(server, "POST", "/undrain", json={}, headers=bearer)
            assert code == 400 and "'site' is required" in text
            assert server.monitor.view.down == frozenset()
        finally:
            await server.stop()

    run(main)


def test_a_server_that_is_not_running_is_named(short_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the block ends
    tcp = ServerConfig(admin=AdminConfig(listen=f"127.0.0.1:{port}"))
    with pytest.raises(AdminError) as caught:
        adminclient.status(tcp)
    assert str(caught.value).startswith(
        f"cannot reach geodns admin API at http://127.0.0.1:{port}: is the server running?"
    )
    unix = ServerConfig(admin=AdminConfig(listen=None, socket=str(short_dir / "gone.sock")))
    with pytest.raises(AdminError, match="at unix:.*gone.sock: is the server running"):
        adminclient.status(unix)
    default = ServerConfig(port=port, admin=AdminConfig(listen=None))  # the default socket
    with pytest.raises(AdminError, match=f"at unix:.*admin-{port}.sock: is the server running"):
        adminclient.status(default)
    with pytest.raises(AdminError, match="admin API is disabled"):
        adminclient.status(ServerConfig(admin=AdminConfig(listen=None, no_socket=True)))


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(short_dir: Path) -> None:
    path = short_dir / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed server's leftover

    async def main() -> None:
        server = await Server(short_dir).start(token=None, unix=True)
        try:
            status = await call(adminclient.status, server.config(token=None, unix=True))
            assert "lon" in status["sites"]
            second = Server(short_dir)
            with pytest.raises(OSError, match="in use by another running server"):
                await second.start(token=None, unix=True)
            await second.monitor.stop()
        finally:
            await server.stop()

    run(main)


def test_parse_listen_and_duration() -> None:
    assert parse_listen("127.0.0.1:8053") == ("127.0.0.1", 8053)
    assert parse_listen("[::1]:8053") == ("::1", 8053)
    for bad in ("8053", "127.0.0.1", "host:port", ":53"):
        with pytest.raises(ValueError, match="host:port"):
            parse_listen(bad)
    assert [parse_duration(t) for t in ("30s", "10m", "2h", "1d", "1h30m", "90")] == [
        30,
        600,
        7200,
        86400,
        5400,
        90,
    ]
    for bad in ("", "soon", "10x", "0s", "-5m"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_format_status_shows_every_column_and_the_down_cause() -> None:
    now = 1_700_000_000.0
    status = {
        "now": now,
        "version": "1.2.3",
        "down": ["lon"],
        "sites": {
            "ams": {
                "kind": "pop",
                "state": "up",
                "checked": True,
                "since": now - 192,
                "last": {"ok": True, "detail": "HTTP 200", "latency": 0.0123, "at": now - 1},
                "streak": 7,
                "drain": None,
            },
            "fra": {"kind": "dc", "state": "up", "checked": False, "since": now - 5},
            "lon": {
                "kind": "pop",
                "state": "down",
                "checked": True,
                "since": now - 45,
                "last": {"ok": False, "detail": "connection refused", "latency": 0.001, "at": now},
                "streak": 3,
                "drain": {"by": "alice", "reason": "drill", "until": now + 1500},
                "down_cause": "drained by alice: drill; check tcp://127.0.0.1:80 down",
            },
        },
    }
    lines = format_status(status).splitlines()
    assert lines[0] == "version: 1.2.3"
    assert lines[1].split() == [
        "SITE", "KIND", "STATE", "SINCE", "LAST", "CHECK", "LATENCY", "STREAK", "DRAIN"
    ]  # fmt: skip
    assert lines[2].split() == [
        "ams", "pop", "up", "3m12s", "ago", "ok:", "HTTP", "200", "12", "ms", "7", "ok", "-"
    ]  # fmt: skip
    assert lines[3].split()[:5] == ["fra", "dc", "up", "(unchecked)", "5s"]
    assert "FAIL: connection refused" in lines[4] and "3 fail" in lines[4]
    assert lines[4].endswith("by alice: drill (25m00s left)")
    assert lines[5] == "  cause: drained by alice: drill; check tcp://127.0.0.1:80 down"
    assert lines[6] == "3 site(s), 1 down: lon"

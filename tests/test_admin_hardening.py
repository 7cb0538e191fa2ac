"""The admin API stays closed and takes only sane drains (issue 12, items 5, 6 and 9), tried on a
real `geodns serve` over loopback HTTP, as an operator or an attacker on the host would.

- An empty admin.token_file never means "no authentication": the server refuses to start.
- Without a token, the TCP listener changes no answer: drains, undrains and reloads are taken
  on the admin socket only (by default its owner's alone, one per user and port), which the CLI
  uses; over TCP they get 403.
- A TCP admin listener beyond loopback without a token refuses to start (`geodns check` too).
- GET /metrics needs the token when one is set, unless admin.public_metrics; /metrics and
  /status never show a health check's query string, userinfo or secret-looking path segment.
- for_s must be a finite number of seconds in (0, 366 days]; a drain's reason is at most 500
  characters. NaN, Infinity, 1e308 and a 60 KB reason get 400 and change nothing.
- The drain API answers only once the drain is in the state file (written, fsynced): a server
  killed with SIGKILL right after the answer has the drain after its restart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from server_process import GeodnsServer, ServerStartError, free_tcp_port

TOKEN = "t0ken-for-tests"
SECRET = "SECRET-api-key-42"
TOKEN_SEGMENT = "a1b2c3d4e5f6a7b8c9d0e1f2"
ZONE = "admin.test"
ZONES = {ZONE: {"": {"type": "NS", "value": "ns1.admin.test."}}}


def sites(dead_port: int, count: int = 2) -> dict[str, Any]:
    """Sites at documentation addresses; the first is probed at a loopback port where nothing
    listens, through a URL that carries secrets."""
    made: dict[str, Any] = {}
    for index in range(count):
        made[f"site{index}"] = {
            "kind": "pop",
            "location": {"lat": index, "lon": index},
            "addresses": [f"192.0.2.{index + 1}"],
        }
    made["site0"]["checks"] = [
        {
            "type": "http",
            "address": "127.0.0.1",
            "port": dead_port,
            "path": f"/v1/token/{TOKEN_SEGMENT}/health?api_key={SECRET}",
            "interval": 0.2,
            "timeout": 0.1,
        }
    ]
    return made


def request(
    server: GeodnsServer,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = None,
) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.admin_port}{path}", data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def admin_config(directory: Path, token: str | None, **more: Any) -> dict[str, Any]:
    port = free_tcp_port()
    admin: dict[str, Any] = {"listen": f"127.0.0.1:{port}", **more}
    if token is not None:
        (directory / "token").write_text(token)
        admin["token_file"] = "token"
    return admin


class AdminServer(GeodnsServer):
    """A GeodnsServer whose start also waits for its admin API, which opens after DNS."""

    def start(self) -> AdminServer:
        super().start()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.admin_port or 0), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise ServerStartError(f"admin API not up within {self.startup_timeout}s")


def make(tmp_path: Path, token: str | None = TOKEN, **config: Any) -> AdminServer:
    config.setdefault("sites", sites(free_tcp_port()))
    admin = admin_config(tmp_path, token, **config.pop("admin_extra", {}))
    server = AdminServer({"admin": admin, **config}, ZONES, workdir=tmp_path)
    server.admin_port = int(admin["listen"].rpartition(":")[2])
    return server


def test_an_empty_token_file_refuses_to_start(tmp_path: Path) -> None:
    server = make(tmp_path, token="  \n")
    try:
        with pytest.raises(ServerStartError, match="admin.token_file is empty"):
            server.start()
        assert server.proc is not None and server.proc.wait(5) == 1  # a config error, as check says
    finally:
        server.cleanup()  # stops it by its PID if it did start


def test_an_admin_api_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    config = {"admin": {"listen": "192.0.2.1:8053"}, "sites": sites(free_tcp_port())}
    server = GeodnsServer(config, ZONES, workdir=tmp_path)
    try:
        with pytest.raises(ServerStartError, match="not a loopback address.*admin.token_file"):
            server.start()
    finally:
        server.cleanup()
    for listen in ("0.0.0.0:8053", "[::]:8053"):
        (tmp_path / "open.yaml").write_text(
            json.dumps({"zones_dir": "zones", "admin": {"listen": listen}})
        )
        result = subprocess.run(  # `geodns check` says so too, and binds nothing
            [sys.executable, "-m", "geodns", "check", "--config", str(tmp_path / "open.yaml")],
            capture_output=True,
            text=True,
            timeout=60,
            env=server.environment(),
            check=False,
        )
        assert result.returncode != 0 and "not a loopback address" in result.stderr, result.stderr


def test_without_a_token_drains_and_reloads_come_only_through_the_socket(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with make(tmp_path, token=None, cache_dir=str(cache)) as server:
        path = cache / f"admin-{server.port}.sock"
        assert path.is_socket() and os.stat(path).st_mode & 0o077 == 0  # only its owner
        for order in ("/drain", "/undrain", "/reload"):
            code, text = request(server, "POST", order, json.dumps({"site": "site1"}).encode())
            assert code == 403 and "admin.token_file" in text, (order, code, text)
        code, status = request(server, "GET", "/status")
        assert code == 200 and json.loads(status)["sites"]["site1"]["drained"] is False
        result = server.cli("drain", "site1", "--reason", "through the socket")
        assert result.returncode == 0, result.stderr
        code, status = request(server, "GET", "/status")
        assert json.loads(status)["sites"]["site1"]["drained"] is True
    assert not path.exists()  # removed when the server stopped


def test_metrics_need_the_token_and_no_page_shows_a_checks_secrets(tmp_path: Path) -> None:
    with make(tmp_path) as server:
        code, _ = request(server, "GET", "/metrics")
        assert code == 401
        deadline = time.monotonic() + 10
        text = ""
        while "geodns_check_up{" not in text and time.monotonic() < deadline:
            time.sleep(0.1)  # until the first probe of site0 has a result
            code, text = request(server, "GET", "/metrics", token=TOKEN)
            assert code == 200
        assert "geodns_check_up{" in text
        code, status = request(server, "GET", "/status", token=TOKEN)
        assert code == 200 and "site0" in status
        for page in (text, status):
            assert SECRET not in page and TOKEN_SEGMENT not in page and "api_key" not in page
            assert "/v1/token/<redacted>/health?<redacted>" in page


def test_public_metrics_opens_metrics_only(tmp_path: Path) -> None:
    with make(tmp_path, admin_extra={"public_metrics": True}) as server:
        code, text = request(server, "GET", "/metrics")
        assert code == 200 and "geodns_build_info" in text
        code, _ = request(server, "GET", "/status")
        assert code == 401
        code, _ = request(server, "POST", "/drain", json.dumps({"site": "site1"}).encode())
        assert code == 401


BAD_FOR_S = ["NaN", "Infinity", "-Infinity", "1e308", str(366 * 86400 + 1), "0", "true", '"5m"']


def test_drains_take_only_finite_durations_up_to_366_days_and_short_reasons(tmp_path: Path) -> None:
    with make(tmp_path, state_file="state.json") as server:
        for for_s in BAD_FOR_S:
            body = f'{{"site": "site1", "for_s": {for_s}}}'.encode()
            code, text = request(server, "POST", "/drain", body, TOKEN)
            assert code == 400 and "for_s" in text and "366 days" in text, (for_s, code, text)
        for field, size, limit in (("reason", 60_000, "500"), ("by", 201, "200")):
            body = json.dumps({"site": "site1", field: "x" * size}).encode()
            code, text = request(server, "POST", "/drain", body, TOKEN)
            assert code == 400 and f"at most {limit}" in text, text
        code, status = request(server, "GET", "/status", token=TOKEN)
        assert code == 200 and json.loads(status)["sites"]["site1"]["drained"] is False
        state = tmp_path / "state.json"
        assert not state.exists() or "x" * 600 not in state.read_text()
        result = server.cli("status")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        # the longest of each is taken, and shown
        body = {"site": "site1", "for_s": 366 * 86400, "reason": "r" * 500, "by": "b" * 200}
        code, text = request(server, "POST", "/drain", json.dumps(body).encode(), TOKEN)
        assert code == 200, text
        result = server.cli("status")
        assert result.returncode == 0 and "365d23h left" in result.stdout, result.stdout


def test_an_acknowledged_drain_survives_kill_9_right_after_the_answer(tmp_path: Path) -> None:
    count = 2
    server = make(tmp_path, state_file="state.json", sites=sites(free_tcp_port(), count))
    try:
        server.start()
        for index in range(count):
            body = json.dumps({"site": f"site{index}", "reason": f"round {index}"}).encode()
            code, text = _drain_then_kill(server, body)
            assert code == 200, text
            server.proc = None
            server.start()
            code, status = request(server, "GET", "/status", token=TOKEN)
            drained = {n for n, s in json.loads(status)["sites"].items() if s["drained"]}
            assert drained == {f"site{i}" for i in range(index + 1)}, f"round {index}: {drained}"
    finally:
        server.cleanup()


def _drain_then_kill(server: GeodnsServer, body: bytes) -> tuple[int, str]:
    """POST /drain over a raw socket and SIGKILL the server the moment the answer's status line
    arrives: no time for anything the server would do after answering."""
    assert server.proc is not None
    head = (
        f"POST /drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.admin_port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = sock.recv(65536)
        os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(5)
    text = answer.decode(errors="replace")
    return int(text.split(" ", 2)[1]), text

"""The systemd notify protocol against real AF_UNIX datagram sockets, as systemd would bind them.

A socket bound in a temporary directory (and one in the abstract namespace) stands in for
systemd's /run/systemd/notify; the tests read back exactly the datagrams geodns sends.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import GeodnsServer

from geodns.daemon import sdnotify


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound in tmp_path and named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def test_ready_with_status(notify_socket: socket.socket) -> None:
    assert sdnotify.ready("serving 2 zones on 127.0.0.1:53") is True
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=serving 2 zones on 127.0.0.1:53"


def test_ready_alone_status_stopping_watchdog(notify_socket: socket.socket) -> None:
    assert sdnotify.ready()
    assert sdnotify.status("reloading zones")
    assert sdnotify.watchdog()
    assert sdnotify.stopping("SIGTERM")
    received = [notify_socket.recv(4096) for _ in range(4)]
    assert received == [
        b"READY=1",
        b"STATUS=reloading zones",
        b"WATCHDOG=1",
        b"STOPPING=1\nSTATUS=SIGTERM",
    ]


def test_status_newlines_cannot_inject_assignments(notify_socket: socket.socket) -> None:
    assert sdnotify.status("bad zone\nREADY=1")
    assert notify_socket.recv(4096) == b"STATUS=bad zone READY=1"


def test_reloading_carries_monotonic_usec(notify_socket: socket.socket) -> None:
    assert sdnotify.reloading("SIGHUP", now_usec=123456789)
    assert notify_socket.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=123456789\nSTATUS=SIGHUP"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = dict(line.split("=", 1) for line in notify_socket.recv(4096).decode().splitlines())
    assert fields == {"RELOADING": "1", "MONOTONIC_USEC": fields["MONOTONIC_USEC"]}
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"geodns-test-{os.getpid()}-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready("abstract")
        assert sock.recv(4096) == b"READY=1\nSTATUS=abstract"


def test_unset_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready("x") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.watchdog() is False


def test_failures_are_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # a form we do not speak
    assert sdnotify.ready() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # inherited from a parent
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", "not-a-pid")
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None


def test_watchdog_loop_pings_at_half_the_interval(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted against the loop's clock and the waits the loop asks for, not a fixed time: a
    loaded machine delays pings, so a count within a fixed time depends on the machine."""
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: pings every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notify_socket.setblocking(False)
    sleep = asyncio.sleep
    waits: list[float] = []  # what the watchdog loop asks to wait between pings

    async def recorded_sleep(seconds: float) -> None:
        waits.append(seconds)
        await sleep(seconds)

    def received() -> list[bytes]:
        got = []
        while True:
            try:
                got.append(notify_socket.recv(4096))
            except BlockingIOError:
                return got

    async def run() -> tuple[list[bytes], float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.ensure_future(sdnotify.watchdog_loop())
        pings: list[bytes] = []
        try:
            while len(pings) < 3 and loop.time() - started < 30:  # bounded
                await sleep(0.01)
                pings += received()
            return pings, loop.time() - started
        finally:
            task.cancel()

    with monkeypatch.context() as patched:
        patched.setattr(sdnotify.asyncio, "sleep", recorded_sleep)
        pings, elapsed = asyncio.run(run())
    assert set(pings) == {b"WATCHDOG=1"}
    assert len(pings) >= 3
    assert set(waits) == {0.1}  # half the interval, between every two pings
    assert len(pings) <= elapsed / 0.1 + 1  # so never more often, however slow the machine


def test_watchdog_loop_skips_when_not_alive(notify_socket: socket.socket) -> None:
    notify_socket.setblocking(False)

    async def run() -> None:
        task = asyncio.ensure_future(sdnotify.watchdog_loop(0.1, alive=lambda: False))
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(run())
    with pytest.raises(BlockingIOError):
        notify_socket.recv(4096)


def test_watchdog_loop_returns_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    asyncio.run(asyncio.wait_for(sdnotify.watchdog_loop(), 1.0))


ZONE = """\
'':
  type: NS
  values: [ns1.example.test.]
www:
  type: A
  value: 192.0.2.1
"""


def test_serve_sends_ready_after_it_answers(tmp_path: Path) -> None:
    """`geodns serve` under a NOTIFY_SOCKET: READY=1 with a STATUS, watchdog pings, STOPPING=1.

    Active once geodns.daemon.app imports geodns.daemon.sdnotify (the wiring described in docs/operations.md).
    """
    import geodns.daemon.app

    if not hasattr(geodns.daemon.app, "sdnotify"):
        pytest.skip("geodns.daemon.app does not send notifications yet (see docs/operations.md)")
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10.0)
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
        with GeodnsServer({}, {"example.test": ZONE}, env=env) as server:
            messages = []
            while not any(m.startswith(b"READY=1") for m in messages):
                messages.append(sock.recv(4096))
            assert server.answers("www.example.test", "A")
            ready = next(m for m in messages if m.startswith(b"READY=1"))
            assert b"STATUS=" in ready
            # no WATCHDOG_PID: the server pings at half of WATCHDOG_USEC
            while (message := sock.recv(4096)) != b"WATCHDOG=1":
                messages.append(message)
            server.stop()
            sock.settimeout(2.0)
            while not (message := sock.recv(4096)).startswith(b"STOPPING=1"):
                pass

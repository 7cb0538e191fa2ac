"""dnstap: the real server's output read by real dnstap readers, and a slow reader that loses
entries, never answers.

`dnstap-read` (bind9-dnsutils) reads the file geodns writes; `fstrm_capture` (fstrm-bin) is the
reader on the Unix socket, doing the bidirectional Frame Streams handshake, and its file is read
with `dnstap-read` too. A reader that accepts the connection and then never reads stands for a
stalled collector: the spool fills, entries are dropped and counted, and every query is answered.
"""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import BASE_ZONES, base_config
from server_process import GeodnsServer

from geodns.observe.dnstap import CONTENT_TYPE, DnstapTap, Peer, encode_messages
from geodns.observe.framestream import (
    CONTROL_ACCEPT,
    CONTROL_FINISH,
    CONTROL_READY,
    CONTROL_START,
    CONTROL_STOP,
    SocketOutput,
    control_frame,
    parse_control,
)
from geodns.observe.spool import Spool

DNSTAP_READ = shutil.which("dnstap-read")
FSTRM_CAPTURE = shutil.which("fstrm_capture")
needs_dnstap_read = pytest.mark.skipif(DNSTAP_READ is None, reason="needs bind9-dnsutils")


def dnstap_read(path: Path) -> str:
    assert DNSTAP_READ is not None
    result = subprocess.run(
        [DNSTAP_READ, "-y", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def messages(yaml_text: str) -> list[str]:
    """dnstap-read -y prints one YAML document per message."""
    return [doc for doc in yaml_text.split("\n---") if "type: MESSAGE" in doc]


def send_traffic(server: GeodnsServer) -> None:
    server.query("www.example.test", "A")
    server.query("www.example.test", "AAAA", ecs="198.51.100.0/24")
    server.query("nothere.example.test", "A", tcp=True)


@needs_dnstap_read
@pytest.mark.parametrize("batch", [32, 0], ids=["batched-udp", "asyncio-udp"])
def test_dnstap_file_is_read_by_dnstap_read(make_server, batch: int) -> None:
    server = make_server(
        base_config(dnstap={"file": "dnstap.fstrm", "identity": "ns-test"}, udp={"batch": batch})
    )
    send_traffic(server)
    server.stop()
    found = messages(dnstap_read(server.dir / "dnstap.fstrm"))  # relative to the config's folder
    queries = [m for m in found if "type: AUTH_QUERY" in m]
    responses = [m for m in found if "type: AUTH_RESPONSE" in m]
    assert len(queries) == len(responses) >= 3  # the start-up probe, then ours
    assert all("identity: ns-test" in m for m in found)
    ours = [
        m for m in found if 'query_address: "127.0.0.1"' in m and "example.test. IN SOA" not in m
    ]
    assert all("socket_family: INET" in m and f"response_port: {server.port}" in m for m in ours)
    assert all("query_port: 0" not in m for m in ours)  # the resolver's real port
    tcp = [m for m in ours if "type: AUTH_RESPONSE" in m and "socket_protocol: TCP" in m]
    assert len(tcp) == 1 and "status: NXDOMAIN" in tcp[0] and "nothere.example.test" in tcp[0]
    with_ecs = [m for m in ours if "type: AUTH_RESPONSE" in m and "IN AAAA" in m]
    assert len(with_ecs) == 1 and "2001:db8::80" in with_ecs[0] and "198.51.100.0/24" in with_ecs[0]
    lines = subprocess.run(
        [DNSTAP_READ, str(server.dir / "dnstap.fstrm")], capture_output=True, text=True, timeout=30
    ).stdout.splitlines()
    assert any(
        " AQ 127.0.0.1:" in line and " UDP " in line and "www.example.test/IN/A" in line
        for line in lines
    )


@needs_dnstap_read
@pytest.mark.skipif(FSTRM_CAPTURE is None, reason="needs fstrm-bin")
def test_dnstap_socket_with_fstrm_capture(make_server, tmp_path: Path) -> None:
    assert FSTRM_CAPTURE is not None
    sock = tmp_path / "tap.sock"
    out = tmp_path / "capture.fstrm"
    capture = subprocess.Popen(
        [FSTRM_CAPTURE, "-t", CONTENT_TYPE.decode(), "-u", str(sock), "-w", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        server = make_server(base_config(dnstap={"socket": str(sock)}))
        seen = b""
        deadline = time.monotonic() + 10  # the spool connects in its own thread
        while b"dnstap_reader_connected" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
            seen = server.stderr_path.read_bytes()
        assert b"dnstap_reader_connected" in seen, seen.decode(errors="replace")
        send_traffic(server)
        server.stop()  # STOP, answered by FINISH: everything sent has been taken
    finally:
        capture.send_signal(signal.SIGINT)
        capture.wait(timeout=10)
    found = messages(dnstap_read(out))
    assert sum("type: AUTH_RESPONSE" in m for m in found) >= 3
    assert any("socket_protocol: TCP" in m and "NXDOMAIN" in m for m in found)


def test_sampling_counts_down_to_the_rate() -> None:
    """A geometric gap between sampled queries is a coin toss per query at the sample rate."""

    class Collect:
        def __init__(self) -> None:
            self.chunks: list[bytes] = []

        def offer(self, chunk: bytes) -> None:
            self.chunks.append(chunk)

    class Connection:
        tap_peer = Peer(1, 2, bytes(4), 1, bytes(4), 53)

    sink = Collect()
    tap = DnstapTap(sink, 0.1, "x")
    for _ in range(100_000):
        tap.stream(Connection(), b"q" * 20, b"r" * 30)
    assert 9_000 < len(sink.chunks) < 11_000
    everything = DnstapTap(Collect(), 1.0)
    for _ in range(50):
        everything.stream(Connection(), b"q", None)
    assert everything.sampled == 50


class StalledReader:
    """A Frame Streams reader that completes the handshake and then never reads again."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.connections: list[socket.socket] = []
        self.handshakes = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.server.settimeout(10)
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        self.connections.append(conn)
        conn.settimeout(10)
        escape, length = struct.unpack(">II", conn.recv(8, socket.MSG_WAITALL))
        kind, types = parse_control(conn.recv(length, socket.MSG_WAITALL))
        assert (escape, kind, types) == (0, CONTROL_READY, [CONTENT_TYPE])
        conn.sendall(control_frame(CONTROL_ACCEPT, CONTENT_TYPE))
        escape, length = struct.unpack(">II", conn.recv(8, socket.MSG_WAITALL))
        kind, _ = parse_control(conn.recv(length, socket.MSG_WAITALL))
        assert kind == CONTROL_START
        self.handshakes += 1

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
        self.server.close()


def test_a_stalled_reader_costs_entries_never_time(tmp_path: Path) -> None:
    path = tmp_path / "stalled.sock"
    reader = StalledReader(path)
    output = SocketOutput(str(path), CONTENT_TYPE)
    spool = Spool(output, max_bytes=256 * 1024, interval=0.01)
    try:
        deadline = time.monotonic() + 10
        while not output.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert output.ready and reader.handshakes == 1
        frame = encode_messages(
            b"", Peer(1, 1, bytes(4), 5, bytes(4), 53), b"q" * 60, b"r" * 900, 0
        )

        def offer_all() -> None:  # ~20 MB: far more than the socket and the spool can hold
            for _ in range(20_000):
                spool.offer(frame)

        # an offer never waits for the reader: with the reader stalled for good, an offer
        # that waited for it would never return (no clock: the bound only ends a failure)
        offering = threading.Thread(target=offer_all, daemon=True)
        offering.start()
        offering.join(timeout=120)
        assert not offering.is_alive(), "an offer waited for the stalled reader"
        assert spool.dropped > 10_000
        assert spool.accepted + spool.dropped == 20_000
    finally:
        reader.close()
        spool.close(timeout=10)


def test_no_reader_yet_drops_and_counts_then_connects(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    output = SocketOutput(str(path), CONTENT_TYPE)
    spool = Spool(output, interval=0.01)
    try:
        for _ in range(10):
            spool.offer(b"\x00\x00\x00\x01x")
        assert spool.dropped == 10 and spool.accepted == 0
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        listener.settimeout(10)
        conn, _ = listener.accept()  # the writer tries again by itself
        conn.settimeout(10)
        _, length = struct.unpack(">II", conn.recv(8, socket.MSG_WAITALL))
        conn.recv(length, socket.MSG_WAITALL)
        conn.sendall(control_frame(CONTROL_ACCEPT, CONTENT_TYPE))
        _, length = struct.unpack(">II", conn.recv(8, socket.MSG_WAITALL))
        assert parse_control(conn.recv(length, socket.MSG_WAITALL))[0] == CONTROL_START
        deadline = time.monotonic() + 10
        while not output.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        spool.offer(b"\x00\x00\x00\x01y")
        assert conn.recv(5, socket.MSG_WAITALL) == b"\x00\x00\x00\x01y"
        closer = threading.Thread(target=spool.close)
        closer.start()
        _, length = struct.unpack(">II", conn.recv(8, socket.MSG_WAITALL))
        assert parse_control(conn.recv(length, socket.MSG_WAITALL))[0] == CONTROL_STOP
        conn.sendall(control_frame(CONTROL_FINISH))
        closer.join(10)
        assert spool.written == 1
        conn.close()
        listener.close()
    finally:
        spool.close()


def test_every_query_is_answered_while_the_reader_stalls(make_server, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    reader = StalledReader(path)
    try:
        server = make_server(base_config(dnstap={"socket": str(path)}), BASE_ZONES)
        deadline = time.monotonic() + 10
        while not reader.handshakes and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reader.handshakes == 1
        for index in range(100):  # the spool's own stall is tested above, in-process
            reply = server.query(f"n{index}.wild.example.test", "TXT", timeout=2)
            assert reply.answer
        server.stop()
    finally:
        reader.close()

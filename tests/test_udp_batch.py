"""Batched UDP (geodns.serving.udpbatch): many datagrams per system call, each reply to its sender.

One read takes datagrams from several clients at once, so the replies of one batch go to
different sockets: every reply must reach the socket that asked, with its own ID and answer.
These tests flood the real server from several sockets over IPv4 and IPv6, with batching on and
off (`udp.batch: 0` is asyncio's transport); and drive one batched socket directly to see that
a burst is read in batches and that an oversized datagram is dropped without costing the rest.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rrset
import pytest
import yaml
from server_process import LOOPBACK_V4, LOOPBACK_V6, GeodnsServer, have_ipv6_loopback

from geodns.config.server import ServerConfig
from geodns.serving import udpbatch
from geodns.serving.answer_path import ServerState
from geodns.serving.client import ClientFactory
from geodns.serving.snapshot import build_snapshot

ZONE = "batch.test"
NAMES = 10
BATCH_ZONE = {
    "": {"type": "NS", "value": "ns1.batch.test."},
    "ns1": {"type": "A", "value": "192.0.2.53"},
    **{f"n{i}": {"type": "A", "value": f"192.0.2.{i + 1}"} for i in range(NAMES)},
}
SOCKETS = 6
PER_SOCKET = 40

pytestmark = pytest.mark.skipif(not udpbatch.available(), reason="no recvmmsg/sendmmsg here")


def hosts() -> list[str]:
    return [LOOPBACK_V4, LOOPBACK_V6] if have_ipv6_loopback() else [LOOPBACK_V4]


@pytest.fixture(scope="module", params=[32, 0], ids=["batched", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[GeodnsServer]:
    with GeodnsServer({"udp": {"batch": request.param}}, {ZONE: BATCH_ZONE}) as running:
        yield running


def flood(host: str, port: int, sockets: int, per_socket: int) -> dict[int, dict[int, str]]:
    """Send every socket's queries before reading any reply; socket -> {ID: the name asked}."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    clients = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(sockets)]
    asked: dict[int, dict[int, str]] = {}
    try:
        for number, client in enumerate(clients):
            client.bind((host, 0))
            asked[number] = {}
        for k in range(per_socket):  # round robin: each batch read holds several senders
            for number, client in enumerate(clients):
                name = f"n{(number + k) % NAMES}.{ZONE}"
                query = dns.message.make_query(name, "A")
                query.id = number * 1000 + k
                asked[number][query.id] = name
                client.sendto(query.to_wire(), (host, port))
        return receive(clients, asked)
    finally:
        for client in clients:
            client.close()


def receive(
    clients: list[socket.socket], asked: dict[int, dict[int, str]]
) -> dict[int, dict[int, str]]:
    """socket -> {reply ID: the address answered}, until all came or 5 s passed."""
    got: dict[int, dict[int, str]] = {n: {} for n in asked}
    deadline = time.monotonic() + 5
    for number, client in enumerate(clients):
        while len(got[number]) < len(asked[number]) and time.monotonic() < deadline:
            client.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                reply = dns.message.from_wire(client.recv(65535))
            except TimeoutError:
                break
            (rrset,) = reply.answer
            assert isinstance(rrset, dns.rrset.RRset)
            got[number][reply.id] = f"{rrset.name}".rstrip(".") + "=" + rrset[0].address
    return got


@pytest.mark.parametrize("host", hosts())
def test_a_burst_from_many_sockets_gets_every_reply_at_its_sender(
    server: GeodnsServer, host: str
) -> None:
    got = flood(host, server.port, SOCKETS, PER_SOCKET)
    for number in range(SOCKETS):
        expected = {}
        for k in range(PER_SOCKET):
            index = (number + k) % NAMES
            expected[number * 1000 + k] = f"n{index}.{ZONE}=192.0.2.{index + 1}"
        assert got[number] == expected, f"socket {number}"
    assert server.alive()


def test_one_readable_event_answers_a_burst_in_batches_and_drops_an_oversized_datagram(
    tmp_path: Path,
) -> None:
    (tmp_path / f"{ZONE}.yaml").write_text(yaml.safe_dump(BATCH_ZONE), encoding="utf-8")
    snapshot = build_snapshot(ServerConfig(zones_dir=tmp_path), None)
    state = ServerState(snapshot)
    listener = udpbatch.BatchedUdp(
        udpbatch.open_socket(LOOPBACK_V4, 0, socket.AF_INET, False), state, 4, ClientFactory()
    )
    port = listener.sock.getsockname()[1]
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        asked: dict[int, dict[int, str]] = {}
        for number, client in enumerate(clients):
            client.bind((LOOPBACK_V4, 0))
            asked[number] = {}
            for k in range(5):
                query = dns.message.make_query(f"n{k}.{ZONE}", "A")
                query.id = number * 100 + k
                asked[number][query.id] = query.question[0].name.to_text()
                client.sendto(query.to_wire(), (LOOPBACK_V4, port))
        clients[0].sendto(b"\x12\x34" + bytes(udpbatch.RECV_SLOT + 100), (LOOPBACK_V4, port))
        time.sleep(0.2)  # every datagram is queued at the socket before it is read
        listener._readable()  # the event loop's one call: 16 datagrams, 4 reads of up to 4
        got = receive(clients, asked)
        for number in range(3):
            assert sorted(got[number]) == sorted(asked[number])
        assert state.dropped == 1
    finally:
        listener.close()
        for client in clients:
            client.close()


def test_replies_after_a_datagram_left_unanswered_still_reach_their_own_senders(
    tmp_path: Path,
) -> None:
    """A datagram that gets no reply (here: QR=1, dropped) moves every later reply of its batch
    one send slot forward, to a peer other than its slot's own; the next batch, with nothing
    dropped, must go out through slots pointed back at their own peers. Both bursts are read
    by one call each, in batches of 4 with a dropped datagram in the middle of the first."""
    (tmp_path / f"{ZONE}.yaml").write_text(yaml.safe_dump(BATCH_ZONE), encoding="utf-8")
    state = ServerState(build_snapshot(ServerConfig(zones_dir=tmp_path), None))
    listener = udpbatch.BatchedUdp(
        udpbatch.open_socket(LOOPBACK_V4, 0, socket.AF_INET, False), state, 4, ClientFactory()
    )
    port = listener.sock.getsockname()[1]
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for client in clients:
            client.bind((LOOPBACK_V4, 0))
        for burst, dropped in ((0, True), (1, False)):
            asked: dict[int, dict[int, str]] = {number: {} for number in range(4)}
            for k in range(8):  # client k % 4 asks; in the first burst datagram 1 is junk
                number = k % 4
                query = dns.message.make_query(f"n{k}.{ZONE}", "A")
                query.id = burst * 1000 + k
                wire = query.to_wire()
                if dropped and k == 1:
                    wire = wire[:2] + bytes((wire[2] | 0x80,)) + wire[3:]  # QR=1: dropped
                else:
                    asked[number][query.id] = query.question[0].name.to_text()
                clients[number].sendto(wire, (LOOPBACK_V4, port))
            time.sleep(0.2)  # every datagram is queued at the socket before it is read
            listener._readable()
            got = receive(clients, asked)
            for number in range(4):
                assert sorted(got[number]) == sorted(asked[number]), (burst, number)
        assert state.dropped == 1
    finally:
        listener.close()
        for client in clients:
            client.close()


BURST = 2_000  # queries sent while the server cannot read: ten times what the default holds


def _receive_buffer_within_reach(size: int) -> int:
    """What a process like the server's gets when it asks for `size` bytes of receive buffer."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return udpbatch.set_receive_buffer(probe, size)
    finally:
        probe.close()


def _answered_after_a_stalled_burst(server: GeodnsServer) -> int:
    """Stop the server, send BURST queries, let it go on: how many replies come back."""
    query = dns.message.make_query(f"n1.{ZONE}", "A").to_wire()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udpbatch.set_receive_buffer(client, 16 << 20)  # room for every reply
        client.bind((LOOPBACK_V4, 0))
        client.settimeout(3.0)
        server.send_signal(signal.SIGSTOP)
        try:
            for number in range(BURST):
                client.sendto(
                    bytes((number >> 8, number & 255)) + query[2:], (server.host, server.port)
                )
        finally:
            server.send_signal(signal.SIGCONT)
        answered: set[bytes] = set()
        with contextlib.suppress(TimeoutError):
            while len(answered) < BURST:
                answered.add(client.recv(4096)[:2])
        return len(answered)
    finally:
        client.close()


@pytest.mark.skipif(
    _receive_buffer_within_reach(8 << 20) < 4 << 20,
    reason="this machine caps UDP receive buffers below 4 MiB (net.core.rmem_max, no "
    "CAP_NET_ADMIN)",
)
def test_a_burst_that_arrives_while_the_server_is_busy_waits_in_the_receive_buffer() -> None:
    """A big `udp.receive_buffer` (4 MiB by default; 8 MiB here) holds a burst that arrives
    while the event loop is busy (here: the process stopped): every query is answered once it
    runs again, where the system's default buffer (`receive_buffer: 0`, about 208 KiB) drops
    most of them."""
    counts = {}
    for size in (0, 8 << 20):
        with GeodnsServer({"udp": {"receive_buffer": size}}, {ZONE: BATCH_ZONE}) as running:
            counts[size] = _answered_after_a_stalled_burst(running)
    assert counts[8 << 20] == BURST, counts
    if _receive_buffer_within_reach(0) < 1 << 20:  # the system's default (net.core.rmem_default)
        assert counts[0] < BURST // 2, counts

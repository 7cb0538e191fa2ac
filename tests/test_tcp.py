"""DNS over TCP per RFC 7766 (and RFC 1035 4.2.2 framing).

Two-octet length framing, messages split across segments, pipelining, connection reuse, the idle
timeout and the connection cap. Every socket has a timeout and every loop a bound.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from conftest import HUGE_COUNT, ZONE
from server_process import (
    LOOPBACK_V6,
    build_query,
    frame,
    have_ipv6_loopback,
    make_query,
    parse_header,
    recv_exact,
    recv_frame,
    wait_closed,
)

WWW = f"www.{ZONE}"


def ask(
    sock: socket.socket, qname: str, rdtype: str = "A", qid: int = 0x1111
) -> dns.message.Message:
    query = make_query(qname, rdtype)
    query.id = qid
    sock.sendall(frame(query.to_wire()))
    wire = recv_frame(sock, timeout=2.0)
    assert wire is not None, "no TCP response"
    reply = dns.message.from_wire(wire)
    assert reply.id == qid
    return reply


def a_values(reply: dns.message.Message) -> set[str]:
    return {r.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for r in rrset}


# -------------------------------------------------------------------------------- framing


def test_length_prefixed_framing(server):
    query = build_query(WWW, 1, qid=0x3131)
    with server.tcp_connect() as sock:
        sock.sendall(struct.pack("!H", len(query)) + query)
        deadline = time.monotonic() + 2
        head = recv_exact(sock, 2, deadline)
        assert head is not None
        (length,) = struct.unpack("!H", head)
        body = recv_exact(sock, length, deadline)
        assert body is not None and len(body) == length
        header = parse_header(body)
        assert (header["id"], header["qr"], header["rcode"]) == (0x3131, 1, 0)
        message = dns.message.from_wire(body)  # exactly one whole message, no trailing bytes
        assert a_values(message) == {"192.0.2.80"}


def test_message_split_across_segments(server):
    data = frame(build_query(WWW, 1, qid=0x3232))
    with server.tcp_connect() as sock:
        for piece in (data[:1], data[1:2], data[2:9], data[9:]):
            sock.sendall(piece)
            time.sleep(0.05)
        reply = recv_frame(sock)
        assert reply is not None
        assert parse_header(reply)["id"] == 0x3232


def test_large_answer_over_tcp(server):
    with server.tcp_connect() as sock:
        reply = ask(sock, f"huge.{ZONE}", qid=0x3333)
    assert not reply.flags & dns.flags.TC
    assert len(a_values(reply)) == HUGE_COUNT


def test_pipelined_queries_in_one_send(server):
    questions = {
        0x4001: (WWW, "A", {"192.0.2.80"}),
        0x4002: (f"ns1.{ZONE}", "A", {"192.0.2.53"}),
        0x4003: (f"mail.{ZONE}", "A", {"192.0.2.25"}),
        0x4004: (f"explicit.wild.{ZONE}", "A", {"192.0.2.101"}),
        0x4005: (f"x.wild.{ZONE}", "A", {"192.0.2.100"}),
        0x4006: (f"nope.{ZONE}", "A", None),
        0x4007: (f"sip.{ZONE}", "A", {"192.0.2.60"}),
        0x4008: (f"huge.{ZONE}", "A", HUGE_COUNT),
    }
    data = b""
    for qid, (qname, rdtype, _) in questions.items():
        query = make_query(qname, rdtype)
        query.id = qid
        data += frame(query.to_wire())
    replies: dict[int, dns.message.Message] = {}
    with server.tcp_connect() as sock:
        sock.sendall(data)  # all eight in one send()
        for _ in range(len(questions)):
            wire = recv_frame(sock, timeout=3.0)
            assert wire is not None, f"only {len(replies)} of {len(questions)} answered"
            reply = dns.message.from_wire(wire)
            assert reply.id not in replies, "duplicate response"
            replies[reply.id] = reply
    assert set(replies) == set(questions)
    for qid, (qname, _, expected) in questions.items():
        reply = replies[qid]
        assert reply.question[0].name == dns.name.from_text(qname)
        if expected is None:
            assert reply.rcode() == dns.rcode.NXDOMAIN
        elif isinstance(expected, int):
            assert len(a_values(reply)) == expected
        else:
            assert a_values(reply) == expected


def test_connection_reused_for_sequential_queries(server):
    with server.tcp_connect() as sock:
        for i in range(10):
            reply = ask(sock, WWW, qid=0x5000 + i)
            assert a_values(reply) == {"192.0.2.80"}


def test_default_idle_timeout_keeps_connection_open(server):
    # the default idle timeout is 10 s: a connection idle for 1.5 s is still served
    with server.tcp_connect() as sock:
        ask(sock, WWW, qid=0x5100)
        time.sleep(1.5)
        assert a_values(ask(sock, WWW, qid=0x5101)) == {"192.0.2.80"}


def test_client_disconnect_mid_message(server):
    for _ in range(5):
        with server.tcp_connect() as sock:
            sock.sendall(b"\x00\x40" + build_query(WWW, 1)[:20])
    with server.tcp_connect() as sock:
        sock.sendall(b"\x00")
    assert server.answers(WWW, tcp=True)
    assert server.alive()


@pytest.mark.skipif(not have_ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_ipv6_loopback_listener(server, tcp):
    reply = server.query(WWW, "A", tcp=tcp, host=LOOPBACK_V6)
    assert a_values(reply) == {"192.0.2.80"}


# --------------------------------------------------------------------------- idle timeout


@pytest.fixture(scope="module")
def idle_server():
    from conftest import BASE_ZONES, base_config
    from server_process import GeodnsServer

    with GeodnsServer(base_config(tcp={"idle_timeout": 1}), BASE_ZONES) as srv:
        yield srv


def test_idle_connection_closed_by_server(idle_server):
    with idle_server.tcp_connect() as sock:
        start = time.monotonic()
        assert wait_closed(sock, 3.0), "idle connection not closed within 3 s (idle_timeout: 1)"
        elapsed = time.monotonic() - start
    assert elapsed >= 0.5, f"closed after {elapsed:.2f}s: sooner than the 1 s idle timeout"


def test_idle_timeout_after_a_query(idle_server):
    with idle_server.tcp_connect() as sock:
        ask(sock, WWW, qid=0x6001)
        # activity restarts the timer: still usable 0.5 s later
        time.sleep(0.5)
        ask(sock, WWW, qid=0x6002)
        start = time.monotonic()
        assert wait_closed(sock, 3.0), "connection not closed after going idle"
        assert time.monotonic() - start >= 0.5


def test_new_connections_work_after_idle_close(idle_server):
    with idle_server.tcp_connect() as sock:
        assert wait_closed(sock, 3.0)
    assert idle_server.answers(WWW, tcp=True)


# ---------------------------------------------------------------------- connection limit


def _served(sock: socket.socket, qid: int, timeout: float = 1.5) -> bool:
    """True when a query on this connection gets its answer."""
    try:
        sock.sendall(frame(build_query(WWW, 1, qid=qid)))
    except OSError:
        return False
    wire = recv_frame(sock, timeout=timeout)
    return wire is not None and parse_header(wire)["id"] == qid


def _connect(srv) -> socket.socket | None:
    try:
        return srv.tcp_connect(timeout=2.0)
    except OSError:
        return None


def _connect_from(srv, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(2.0)
    sock.connect((srv.host, srv.port))
    return sock


def test_a_full_server_makes_room_by_closing_the_least_useful_connection(make_server):
    """At the cap, a new connection takes the place of the one that has gone longest without
    completing a message: the server never holds more than the cap, and slots held by clients
    that do not send whole queries cannot lock everyone else out."""
    from conftest import base_config

    srv = make_server(base_config(tcp={"max_connections": 4, "idle_timeout": 30}))
    time.sleep(0.3)  # let the server see the readiness probe's connection close
    first = [srv.tcp_connect() for _ in range(4)]
    newcomer = None
    try:
        for i, sock in enumerate(first):
            assert _served(sock, 0x7000 + i), f"connection {i + 1} of 4 not served"
            time.sleep(0.05)  # connection 0 is the one that went longest without a message
        newcomer = srv.tcp_connect()
        assert _served(newcomer, 0x7100), "a new connection at the cap was not served"
        assert wait_closed(first[0], 3.0), "the least recently useful connection stayed open"
        for i, sock in enumerate(first[1:], start=1):
            assert _served(sock, 0x7200 + i), "a recently useful connection was closed"
    finally:
        for sock in [*first, newcomer]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


def test_slow_clients_are_evicted_before_clients_that_send_whole_queries(make_server):
    from conftest import base_config

    srv = make_server(base_config(tcp={"max_connections": 4, "idle_timeout": 30}))
    time.sleep(0.3)
    useful = srv.tcp_connect()
    slow = []
    try:
        assert _served(useful, 0x7300)
        for _ in range(3):  # connect and start a message that never ends
            sock = srv.tcp_connect()
            sock.sendall(b"\x00")
            slow.append(sock)
        time.sleep(0.2)
        newcomers = [srv.tcp_connect() for _ in range(3)]
        try:
            assert all(_served(sock, 0x7400 + i) for i, sock in enumerate(newcomers))
            assert all(wait_closed(sock, 3.0) for sock in slow), "a slow client kept its slot"
            assert _served(useful, 0x7500), "the useful connection was evicted"
        finally:
            for sock in newcomers:
                sock.close()
    finally:
        for sock in [useful, *slow]:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_message_must_arrive_whole_within_its_time_limit(make_server):
    """Dripping one byte at a time does not keep a connection: the limit runs from the first
    byte of a message and is not reset by each byte (issue 12.2)."""
    from conftest import base_config

    srv = make_server(base_config(tcp={"message_timeout": 0.8, "idle_timeout": 30}))
    message = frame(build_query(WWW, 1, qid=0x7600))
    with srv.tcp_connect() as sock:
        started = time.monotonic()
        closed = False
        for byte in message:  # one byte every 0.2 s: the message would take seconds
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if wait_closed(sock, 0.2):
                closed = True
                break
        assert closed, "a dripping client kept its connection"
        assert time.monotonic() - started < 3.0
    assert srv.answers(WWW, tcp=True)


def test_one_address_cannot_hold_more_than_its_share(make_server):
    from conftest import base_config

    srv = make_server(base_config(tcp={"max_per_address": 2, "idle_timeout": 30}))
    time.sleep(0.3)
    held = [_connect_from(srv, "127.0.0.5") for _ in range(2)]
    try:
        assert all(_served(sock, 0x7700 + i) for i, sock in enumerate(held))
        third = _connect_from(srv, "127.0.0.5")
        with third:
            assert not _served(third, 0x7710), "a third connection from one address was served"
        other = _connect_from(srv, "127.0.0.6")
        with other:
            assert _served(other, 0x7720), "another address was refused"
    finally:
        for sock in held:
            sock.close()


def test_cap_does_not_affect_udp(make_server):
    from conftest import base_config

    srv = make_server(base_config(tcp={"max_connections": 1}))
    time.sleep(0.3)  # let the server see the readiness probe's connection close
    with srv.tcp_connect() as sock:
        assert _served(sock, 0x7500)
        assert srv.answers(WWW)  # UDP is not counted against the TCP cap


def test_every_close_is_counted_by_its_reason_in_metrics(make_server):
    """geodns_tcp_connections_closed_total{reason}: a message that does not arrive whole in
    time, and a connection over an address's share, each show under their reason (issue 12:
    the TCP limits shown truly in metrics)."""
    from conftest import base_config

    srv = make_server(
        base_config(
            workers=1, tcp={"message_timeout": 0.5, "max_per_address": 1, "idle_timeout": 30}
        )
    )
    slow = _connect_from(srv, "127.0.0.7")
    held = _connect_from(srv, "127.0.0.8")
    try:
        slow.sendall(b"\x00")  # a message begins and never ends
        assert _served(held, 0x7800)
        refused = _connect_from(srv, "127.0.0.8")
        with refused:
            assert wait_closed(refused, 3.0), "a second connection from one address was kept"
        assert wait_closed(slow, 3.0), "a message that never ended kept its connection"
        counts: dict[str, float] = {}
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            counts = {
                line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in srv.metrics_text().splitlines()
                if line.startswith("geodns_tcp_connections_closed_total{")
            }
            if counts.get("slow_message") and counts.get("per_address"):
                break
            time.sleep(0.1)
        assert counts.get("slow_message", 0) >= 1 and counts.get("per_address", 0) >= 1, counts
    finally:
        held.close()
        slow.close()

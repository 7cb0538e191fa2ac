"""Property-based fuzzing of the packet path with Hypothesis.

(a) random and mutated datagrams through the answer path in-process (`in_process`, conftest.py:
"alive" there means no exception reached the answer path's safety net), and a smaller run of
them at the running server over UDP; (b) framed TCP messages and raw TCP byte streams at the
running server; (c) the query parser `geodns.dns.wire.parse_query` in-process. Each example is
followed by a valid probe query, so "the server still answers" is checked after every packet, not
only at the end. Everything is bounded: example counts, sizes and timeouts.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import dns.edns
import dns.message
import dns.name
import dns.rdatatype
import pytest
from conftest import ZONE
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from server_process import build_opt, build_query, edns_option, frame, make_query, parse_header

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROBE_NAME = f"www.{ZONE}"


def _seed_queries() -> list[bytes]:
    seeds = [
        make_query(f"www.{ZONE}", "A", edns=False).to_wire(),
        make_query(f"alias2.{ZONE}", "AAAA").to_wire(),
        make_query(f"x.wild.{ZONE}", "TXT", payload=4096, want_dnssec=True).to_wire(),
        make_query(f"host.sub.{ZONE}", "NS").to_wire(),
        make_query(ZONE, "ANY", ecs="192.0.2.0/24").to_wire(),
        make_query(f"huge.{ZONE}", "A", payload=512).to_wire(),
        make_query("example.com", "SOA").to_wire(),
        build_query(ZONE, 6, opt=build_opt(options=edns_option(65001, b"xyz"))),
        build_query(ZONE, 6)[:12],
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
    ]
    return seeds


SEEDS = _seed_queries()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "splice", "insert", "header"]))
        if kind == "flip" and data:
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and data:
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "splice":
            other = draw(st.sampled_from(SEEDS))
            cut = draw(st.integers(0, len(data)))
            other_cut = draw(st.integers(0, len(other)))
            data = data[:cut] + other[other_cut:]
        elif kind == "insert":
            position = draw(st.integers(0, len(data)))
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "header" and len(data) >= 12:
            field = draw(st.integers(1, 5))  # flags or one of the four counts
            data[field * 2 : field * 2 + 2] = struct.pack("!H", draw(st.integers(0, 0xFFFF)))
    return bytes(data[:4096])


@st.composite
def opt_packets(draw: st.DrawFn) -> bytes:
    """A valid question followed by OPT (and other) records with random rdata: the OPT/ECS parser."""
    option_bytes = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=12),  # arbitrary (often truncated) option bytes
                st.builds(
                    edns_option,
                    st.sampled_from([8, 10, 12, 65001]),
                    st.one_of(
                        st.binary(max_size=20),
                        # ECS-shaped: family, source, scope, address
                        st.builds(
                            lambda fam, src, scope, addr: (
                                struct.pack("!HBB", fam, src, scope) + addr
                            ),
                            st.integers(0, 3),
                            st.integers(0, 200),
                            st.integers(0, 255),
                            st.binary(max_size=17),
                        ),
                    ),
                ),
            ),
            max_size=4,
        )
    )
    options = b"".join(option_bytes)
    rdlen = draw(st.one_of(st.none(), st.integers(0, 80)))
    opt = build_opt(
        draw(st.integers(0, 0xFFFF)),
        version=draw(st.sampled_from([0, 0, 1, 255])),
        do=draw(st.integers(0, 1)),
        options=options,
        owner=draw(st.sampled_from([b"\x00", b"\x00", b"\x01a\x00", b"\xc0\x0c"])),
        rdlen=rdlen,
    )
    extra = draw(st.lists(st.binary(max_size=30), max_size=2))
    arcount = draw(st.one_of(st.just(1 + len(extra)), st.integers(0, 4)))
    name = draw(st.sampled_from([f"www.{ZONE}", ZONE, "example.com", f"x.wild.{ZONE}", "."]))
    body = build_query(name, draw(st.sampled_from([1, 28, 255, 6, 252])), opt=opt, arcount=arcount)
    data = body + b"".join(extra)
    cut = draw(st.one_of(st.none(), st.integers(12, max(12, len(data)))))
    return data if cut is None else data[:cut]


def packets() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=600),
        opt_packets(),
        # a plausible header (QR=0) followed by random bytes: reaches the name/OPT parsers
        st.builds(
            lambda header, body: header + body,
            st.builds(
                lambda qid, flags, counts: struct.pack("!HH", qid, flags & 0x7FFF) + counts,
                st.integers(0, 0xFFFF),
                st.integers(0, 0xFFFF),
                st.binary(min_size=8, max_size=8),
            ),
            st.binary(max_size=300),
        ),
        mutated(),
    )


def probe_wire(qid: int) -> bytes:
    return build_query(PROBE_NAME, 1, qid=qid)


def check_reply(packet: bytes, reply: bytes) -> None:
    """A reply to a fuzzed packet: a response header with the query's ID and opcode."""
    assert len(packet) >= 12, "a packet shorter than a header must get no reply"
    sent = parse_header(packet)
    assert not sent["qr"], "a packet with QR=1 must get no reply"
    assert len(reply) >= 12
    header = parse_header(reply)
    assert header["qr"] == 1
    assert header["id"] == sent["id"]
    assert header["opcode"] == sent["opcode"]
    message = dns.message.from_wire(reply)  # replies are always well-formed messages
    assert message.id == sent["id"]


# --------------------------------------------------------------------------------- UDP


def check_udp_replies(packet: bytes, replies: list[bytes]) -> None:
    """What a datagram may get back: at most one reply, well-formed, within the UDP limit."""
    assert len(replies) <= 1, f"{len(replies)} replies to one datagram"
    for reply in replies:
        check_reply(packet, reply)
        message = dns.message.from_wire(reply)
        limit = 512 if message.edns < 0 else 1232
        assert len(reply) <= limit, f"{len(reply)}-byte UDP reply over the {limit} limit"


@FUZZ
@given(packet=packets())
def test_udp_fuzz(in_process, packet):
    qid = struct.unpack("!H", packet[:2])[0] if len(packet) >= 2 else 0
    probe_id = qid ^ 0x8001
    reply = in_process.raw_udp(packet)
    probe_reply = in_process.raw_udp(probe_wire(probe_id))
    assert in_process.alive(), f"the answer path met a bug on {packet!r}"
    assert probe_reply is not None, f"stopped answering after {packet!r}"
    assert parse_header(probe_reply)["id"] == probe_id
    check_udp_replies(packet, [] if reply is None else [reply])


@settings(FUZZ, max_examples=40)
@given(packet=packets())
def test_udp_fuzz_at_a_real_server(server, packet):
    qid = struct.unpack("!H", packet[:2])[0] if len(packet) >= 2 else 0
    probe_id = qid ^ 0x8001
    replies: list[bytes] = []
    probe_reply = None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(packet, (server.host, server.port))
        sock.sendto(probe_wire(probe_id), (server.host, server.port))
        deadline = time.monotonic() + 3.0
        while probe_reply is None and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                break
            if len(data) >= 12 and parse_header(data)["id"] == probe_id and data[2] & 0x80:
                probe_reply = data
            else:
                replies.append(data)
        # a late reply to the fuzz packet (if the server answers out of order)
        sock.settimeout(0.01)
        with contextlib.suppress(TimeoutError):
            replies.append(sock.recvfrom(65535)[0])
    assert server.alive(), f"server died on {packet!r}\n{server.stderr_text()[-3000:]}"
    assert probe_reply is not None, f"server stopped answering after {packet!r}"
    check_udp_replies(packet, replies)


# --------------------------------------------------------------------------------- TCP


@settings(FUZZ, max_examples=150)
@given(messages=st.lists(packets(), min_size=1, max_size=3))
def test_tcp_fuzz_framed(server, messages):
    ids = {struct.unpack("!H", m[:2])[0] for m in messages if len(m) >= 12}
    probe_id = 0xABCD
    assume(probe_id not in ids)
    stream = b"".join(frame(m) for m in messages) + frame(probe_wire(probe_id))
    replies: list[bytes] = []
    probe_reply = None
    closed = False
    with server.tcp_connect(timeout=2.0) as sock:
        try:
            sock.sendall(stream)
        except OSError:
            closed = True
        deadline = time.monotonic() + 3.0
        buffer = b""
        while not closed and probe_reply is None and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65535)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            buffer += chunk
            while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack("!H", buffer[:2])[0]:
                length = struct.unpack("!H", buffer[:2])[0]
                message, buffer = buffer[2 : 2 + length], buffer[2 + length :]
                if len(message) >= 12 and parse_header(message)["id"] == probe_id:
                    probe_reply = message
                else:
                    replies.append(message)
    assert server.alive(), f"server died on {messages!r}\n{server.stderr_text()[-3000:]}"
    if probe_reply is None:
        # closing a connection after garbage is allowed; going silent on it is not
        assert closed, f"no answer and no close after {messages!r}"
        assert server.answers(PROBE_NAME, tcp=True), "server stopped answering over TCP"
    answerable = [m for m in messages if len(m) >= 12 and not parse_header(m)["qr"]]
    assert len(replies) <= len(answerable)
    for reply in replies:
        header = parse_header(reply)
        assert header["qr"] == 1
        assert header["id"] in ids
        dns.message.from_wire(reply)


@settings(FUZZ, max_examples=40)
@given(stream=st.binary(min_size=1, max_size=400))
def test_tcp_fuzz_raw_stream(server, stream):
    with server.tcp_connect(timeout=2.0) as sock:
        sock.sendall(stream)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not sock.recv(65535):
                    break
            except (TimeoutError, OSError):
                break
    assert server.alive()
    assert server.answers(PROBE_NAME, tcp=True)


def test_server_healthy_after_fuzzing(server):
    reply = server.query(PROBE_NAME, "A")
    assert [r.to_text() for r in reply.answer[0]] == ["192.0.2.80"]
    reply = server.query(PROBE_NAME, "A", tcp=True)
    assert [r.to_text() for r in reply.answer[0]] == ["192.0.2.80"]


# --------------------------------------------------------------- the parser in-process

try:
    from geodns.dns import wire
except ImportError:  # the parser module is not there: only (c) is skipped
    wire = None
parse_query = getattr(wire, "parse_query", None)
FormError = getattr(wire, "FormError", None)
Drop = getattr(wire, "Drop", None)
needs_parser = pytest.mark.skipif(
    parse_query is None or FormError is None, reason="geodns.dns.wire has no parse_query/FormError"
)
EXPECTED = tuple(e for e in (FormError, Drop) if e is not None)


def _parse(data: bytes):
    """parse_query's outcome: ('ok', query) | ('drop', None) | ('formerr', exc)."""
    try:
        result = parse_query(data)
    except EXPECTED as exc:
        if Drop is not None and isinstance(exc, Drop):
            return "drop", exc
        return "formerr", exc
    if result is None:
        return "drop", None
    return "ok", result


@needs_parser
@settings(FUZZ, max_examples=1000)
@given(data=packets())
def test_parser_raises_only_formerror_or_drop(data):
    outcome, value = _parse(data)  # anything else propagates and fails the test
    should_drop = len(data) < 12 or bool(data[2] & 0x80)
    assert (outcome == "drop") == should_drop, (outcome, data)
    header = parse_header(data) if len(data) >= 12 else None
    if outcome == "formerr" and hasattr(value, "query_id"):
        assert value.query_id == header["id"]
    if outcome == "ok":
        assert value.id == header["id"]
        assert header["qdcount"] == 1
        qname = getattr(value, "qname", None)
        if isinstance(qname, bytes):
            assert len(qname) <= 255
            position = 0
            while qname[position] != 0:
                assert qname[position] <= 63
                position += qname[position] + 1
            assert position == len(qname) - 1


names = st.lists(
    st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
        min_size=1,
        max_size=20,
    ),
    min_size=0,
    max_size=6,
).map(lambda labels: ".".join(labels) + "." if labels else ".")


@needs_parser
@settings(FUZZ, max_examples=500)
@given(
    name=names,
    rdtype=st.sampled_from([1, 2, 5, 6, 15, 16, 28, 33, 255, 257, 65280]),
    qid=st.integers(0, 0xFFFF),
    edns=st.booleans(),
    payload=st.integers(0, 65535),
    do=st.booleans(),
    options=st.lists(
        st.builds(dns.edns.GenericOption, st.integers(65001, 65534), st.binary(max_size=20)),
        max_size=3,
    ),
)
def test_parser_accepts_valid_queries(name, rdtype, qid, edns, payload, do, options):
    query = dns.message.make_query(
        dns.name.from_text(name),
        rdtype,
        use_edns=0 if edns else False,
        payload=payload,
        want_dnssec=do and edns,
        options=options if edns else None,
    )
    query.id = qid
    data = query.to_wire()
    outcome, parsed = _parse(data)
    assert outcome == "ok", (outcome, parsed)
    assert parsed.id == qid
    if hasattr(parsed, "qtype"):
        assert parsed.qtype == rdtype
    if hasattr(parsed, "qclass"):
        assert parsed.qclass == 1
    if isinstance(getattr(parsed, "qname", None), bytes):
        assert parsed.qname == dns.name.from_text(name).to_wire()
    if isinstance(getattr(parsed, "key", None), bytes):
        assert parsed.key == dns.name.from_text(name).to_wire().lower()
    if hasattr(parsed, "edns"):
        assert parsed.edns == edns
    if edns and hasattr(parsed, "udp_size"):
        assert parsed.udp_size == max(payload, 512)
    if edns and hasattr(parsed, "do"):
        assert parsed.do == do
    if hasattr(parsed, "question"):
        assert parsed.question == data[12 : 12 + len(parsed.question)]

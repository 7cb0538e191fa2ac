"""Malformed input (RFC 1035 4.1, RFC 6891 6.1): what gets dropped, what gets FORMERR.

Packets too short for a header and packets with QR=1 get no reply (answering them could loop or
reflect). Anything else that cannot be parsed gets FORMERR with the ID and opcode copied. After
every bad packet the server must still answer a normal query. Each packet goes through the answer
path in-process (`in_process`, conftest.py), where "still alive" means no exception reached its
safety net; a real server gets garbage over TCP and, at the end, every packet of this file.
"""

from __future__ import annotations

import struct

import dns.message
import dns.rcode
import pytest
from conftest import ZONE
from server_process import (
    build_header,
    build_opt,
    build_query,
    edns_option,
    encode_name,
    frame,
    parse_header,
    recv_frame,
    wait_closed,
)

QT = struct.pack("!HH", 1, 1)  # A IN
QID = 0x5A5A
NAME = encode_name(f"www.{ZONE}")


def labels_name(*lengths: int) -> bytes:
    return b"".join(bytes([n]) + b"a" * n for n in lengths) + b"\x00"


DROPPED = {
    "empty": b"",
    "one-byte": b"\x01",
    "eleven-bytes": build_query(qid=QID)[:11],
    "qr-set": build_query(f"www.{ZONE}", 1, qid=QID, qr=1),
    "qr-set-response": build_query(f"www.{ZONE}", 1, qid=QID, qr=1, aa=1, ancount=0),
    "qr-set-header-only": build_header(QID, qr=1, qdcount=0),
}

FORMERR = {
    "qdcount-0": build_header(QID, qdcount=0),
    "qdcount-0-with-opt": build_header(QID, qdcount=0, arcount=1) + build_opt(),
    "qdcount-2": build_header(QID, qdcount=2) + NAME + QT + encode_name(ZONE) + QT,
    "qdcount-2-one-present": build_header(QID, qdcount=2) + NAME + QT,
    "compression-self-loop": build_header(QID) + b"\xc0\x0c" + QT,
    "compression-two-pointer-loop": build_header(QID) + b"\xc0\x0e\xc0\x0c" + QT,
    "compression-label-then-loop": build_header(QID) + b"\x03www\xc0\x0c" + QT,
    "compression-pointer-past-end": build_header(QID) + b"\xc0\xff" + QT,
    "name-256-octets": build_header(QID) + labels_name(63, 63, 63, 63) + QT,
    "name-321-octets": build_header(QID) + labels_name(63, 63, 63, 63, 63) + QT,
    "label-64": build_header(QID) + labels_name(64) + QT,
    "label-type-10": build_header(QID) + b"\x80abc\x00" + QT,
    "label-type-01-extended": build_header(QID) + b"\x41" + b"x" * 65 + b"\x00" + QT,
    "question-no-type-class": build_header(QID) + NAME,
    "question-half-type": build_header(QID) + NAME + b"\x00",
    "question-no-class": build_header(QID) + NAME + b"\x00\x01",
    "name-without-terminator": build_header(QID) + b"\x03www\x07example",
    "label-runs-past-end": build_header(QID) + b"\x3fabc",
    "arcount-1-but-nothing": build_header(QID, arcount=1) + NAME + QT,
    "opt-truncated-fixed-part": build_header(QID, arcount=1) + NAME + QT + build_opt()[:6],
    "opt-truncated-option": build_header(QID, arcount=1)
    + NAME
    + QT
    + build_opt(options=edns_option(65001, b"0123456789"))[:-6],
    "opt-option-longer-than-rdata": build_header(QID, arcount=1)
    + NAME
    + QT
    + build_opt(options=struct.pack("!HH", 65001, 10) + b"abcd"),
    "opt-rdlen-past-end": build_header(QID, arcount=1) + NAME + QT + build_opt(rdlen=40),
    "opt-non-root-owner": build_header(QID, arcount=1)
    + NAME
    + QT
    + build_opt(owner=encode_name(ZONE)),
    "opt-half-option-header": build_header(QID, arcount=1)
    + NAME
    + QT
    + build_opt(options=b"\xfd\xe9\x00"),
}


def test_name_of_255_octets_is_legal(in_process):
    # the boundary: 255 octets in wire form is a legal name (outside every zone -> REFUSED)
    name = labels_name(63, 63, 63, 61)
    assert len(name) == 255
    wire = in_process.raw_udp(build_header(QID) + name + QT, timeout=2)
    assert wire is not None
    assert parse_header(wire)["rcode"] == dns.rcode.REFUSED
    assert len(labels_name(63, 63, 63, 62)) == 256  # the FORMERR case above


@pytest.mark.parametrize("packet", list(DROPPED.values()), ids=list(DROPPED))
def test_dropped_without_reply(in_process, packet):
    assert in_process.raw_udp(packet, timeout=0.5) is None, "this packet must get no reply"
    assert in_process.answers(f"www.{ZONE}"), "stopped answering"
    assert in_process.alive()


@pytest.mark.parametrize("packet", list(FORMERR.values()), ids=list(FORMERR))
def test_formerr(in_process, packet):
    wire = in_process.raw_udp(packet, timeout=2)
    assert wire is not None, "malformed query with a readable header must get FORMERR"
    header = parse_header(wire)
    assert header["qr"] == 1
    assert header["id"] == QID
    assert header["opcode"] == 0
    assert header["rcode"] == dns.rcode.FORMERR, f"rcode {header['rcode']}"
    assert header["ancount"] == 0
    assert not header["aa"]
    # the reply itself must be a well-formed message (counts match content)
    message = dns.message.from_wire(wire)
    assert message.rcode() == dns.rcode.FORMERR
    assert in_process.answers(f"www.{ZONE}"), "stopped answering"
    assert in_process.alive()


@pytest.mark.parametrize("opcode", [0, 2])
def test_formerr_copies_opcode_and_rd(in_process, opcode):
    wire = in_process.raw_udp(build_header(0x0101, qdcount=0, opcode=opcode, rd=1), timeout=2)
    assert wire is not None
    header = parse_header(wire)
    assert header["id"] == 0x0101
    assert header["opcode"] == opcode
    assert header["rd"] == 1
    assert header["rcode"] in (dns.rcode.FORMERR, dns.rcode.NOTIMP)
    if opcode == 0:
        assert header["rcode"] == dns.rcode.FORMERR


@pytest.mark.parametrize(
    "name", ["qdcount-0", "compression-self-loop", "name-321-octets", "opt-non-root-owner"]
)
def test_formerr_over_tcp(in_process, name):
    wire = in_process.raw_tcp(FORMERR[name], timeout=2)
    assert wire is not None
    header = parse_header(wire)
    assert (header["qr"], header["id"], header["rcode"]) == (1, QID, dns.rcode.FORMERR)


@pytest.mark.parametrize("packet", [b"", b"\x00\x01\x02", build_query(qid=QID, qr=1)])
def test_tcp_garbage_gets_no_reply_and_server_survives(server, packet):
    with server.tcp_connect() as sock:
        sock.sendall(frame(packet))
        reply = recv_frame(sock, timeout=0.5)
        assert reply is None, "no reply to a short or QR=1 message over TCP either"
    assert server.answers(f"www.{ZONE}", tcp=True)


def test_tcp_connection_survives_formerr(server):
    # a FORMERR'd message on a connection does not stop later queries on it
    with server.tcp_connect() as sock:
        sock.sendall(frame(FORMERR["qdcount-0"]))
        first = recv_frame(sock)
        assert first is not None and parse_header(first)["rcode"] == dns.rcode.FORMERR
        sock.sendall(frame(build_query(f"www.{ZONE}", 1, qid=0x0202)))
        second = recv_frame(sock)
        if second is None:
            # closing after a FORMERR is allowed, but the close must be clean
            assert wait_closed(sock, 1.0)
        else:
            assert parse_header(second)["id"] == 0x0202
            assert parse_header(second)["rcode"] == dns.rcode.NOERROR


def test_server_alive_after_all(server):
    for packet in list(DROPPED.values()) + list(FORMERR.values()):
        server.raw_udp(packet, timeout=0.05)
    reply = server.query(f"www.{ZONE}", "A")
    assert [r.to_text() for r in reply.answer[0]] == ["192.0.2.80"]
    assert server.alive()

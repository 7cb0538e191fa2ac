"""Minimal answers to ANY queries (RFC 8482).

A responder answers QTYPE=ANY with one RRset of the name (section 4.2) or a synthesised HINFO
with CPU "RFC8482" (section 4.2); never the full set. Negative ANY answers stay normal. The
answer path answers in-process (`in_process`, conftest.py); a real server answers ANY over UDP
and over TCP.
"""

from __future__ import annotations

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest
from conftest import ZONE
from server_process import make_query

TRANSPORTS = pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])

# the real RRsets at each name (the apex also has its SOA)
REAL = {
    f"{ZONE}.": {"NS", "MX", "TXT", "A", "CAA", "SOA"},
    f"www.{ZONE}.": {"A", "AAAA"},
    f"mail.{ZONE}.": {"A", "AAAA"},
}


def check_minimal(reply, qname: str) -> None:
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert reply.answer, "ANY at an existing name must not be empty"
    types = {dns.rdatatype.to_text(r.rdtype) for r in reply.answer}
    owners = {r.name.to_text().lower() for r in reply.answer}
    assert owners == {qname}, owners
    assert len(reply.answer) == 1, f"one RRset only, got {types}"
    if types == {"HINFO"}:
        (rdata,) = list(reply.answer[0])
        assert rdata.cpu == b"RFC8482"
        assert rdata.os == b""
    else:
        assert types <= REAL[qname], f"{types} is not data at {qname}"
        assert types != REAL[qname]


@pytest.mark.parametrize("qname", list(REAL))
def test_any_is_minimal_over_udp(server, qname):
    wire = server.raw_udp(make_query(qname, "ANY").to_wire(), timeout=2)
    assert wire is not None
    reply = dns.message.from_wire(wire)
    check_minimal(reply, qname)
    assert len(wire) < 512, f"{len(wire)} bytes is not a minimal answer"


def test_any_at_apex_is_not_the_full_set(in_process):
    reply = in_process.query(ZONE, "ANY", edns=False)
    check_minimal(reply, f"{ZONE}.")
    # the full apex would be far over 512 bytes (300-byte TXT, NS, MX, CAA, ...)
    assert not reply.flags & dns.flags.TC


@pytest.mark.parametrize("qname", list(REAL))
def test_any_over_tcp_is_valid(server, qname):
    # RFC 8482 section 4.4 allows a conventional answer over TCP; it must still be real data
    reply = server.query(qname, "ANY", tcp=True)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer
    for rrset in reply.answer:
        kind = dns.rdatatype.to_text(rrset.rdtype)
        assert rrset.name.to_text().lower() == qname
        assert kind in REAL[qname] or (kind == "HINFO" and rrset[0].cpu == b"RFC8482")


@TRANSPORTS
def test_any_nxdomain(in_process, tcp):
    reply = in_process.query(f"nope.{ZONE}", "ANY", tcp=tcp)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.answer == []
    assert [r.rdtype for r in reply.authority] == [dns.rdatatype.SOA]


def test_any_at_empty_non_terminal_is_nodata(in_process):
    reply = in_process.query(f"b.c.{ZONE}", "ANY")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert [r.rdtype for r in reply.authority] == [dns.rdatatype.SOA]


def test_any_at_cname_returns_the_cname_only(in_process):
    reply = in_process.query(f"alias.{ZONE}", "ANY")
    assert reply.rcode() == dns.rcode.NOERROR
    kinds = [dns.rdatatype.to_text(r.rdtype) for r in reply.answer]
    assert kinds in (["CNAME"], ["HINFO"]), kinds
    assert all(r.name.to_text().lower() == f"alias.{ZONE}." for r in reply.answer)


def test_any_below_delegation_is_referral(in_process):
    reply = in_process.query(f"host.sub.{ZONE}", "ANY")
    assert not reply.flags & dns.flags.AA
    assert reply.answer == []
    assert [r.rdtype for r in reply.authority] == [dns.rdatatype.NS]


def test_any_outside_zones_refused(in_process):
    assert in_process.query("example.com", "ANY").rcode() == dns.rcode.REFUSED


def test_any_at_wildcard_name_is_minimal(in_process):
    reply = in_process.query(f"foo.wild.{ZONE}", "ANY")
    assert reply.rcode() == dns.rcode.NOERROR
    assert len(reply.answer) == 1
    assert reply.answer[0].name.to_text().lower() == f"foo.wild.{ZONE}."
    assert dns.rdatatype.to_text(reply.answer[0].rdtype) in ("A", "TXT", "HINFO")

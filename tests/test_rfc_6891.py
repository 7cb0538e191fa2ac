"""EDNS(0) per RFC 6891, and UDP message size / truncation (RFC 1035 4.2.1, RFC 2181 9).

The server's UDP cap is the default `edns.max_udp_size` of 1232 unless a test sets it. The answer
path answers in-process (`in_process`, conftest.py); a real server shows truncation over UDP and
the whole answer over TCP, with and without EDNS.
"""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from conftest import BASE_ZONES, BIG_COUNT, HUGE_COUNT, MANY_COUNT, MEDIUM_COUNT, ZONE
from inprocess import InProcessServer
from server_process import build_opt, build_query, edns_option, make_query, parse_header

TRANSPORTS = pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
BADVERS = 16


def udp_exchange(server, query: dns.message.Message) -> tuple[bytes, dns.message.Message]:
    wire = server.raw_udp(query.to_wire(), timeout=2)
    assert wire is not None, "no reply"
    reply = dns.message.from_wire(wire)
    assert reply.id == query.id
    return wire, reply


def a_count(reply: dns.message.Message, name: str) -> int:
    for rrset in reply.answer:
        if rrset.name == dns.name.from_text(name) and rrset.rdtype == dns.rdatatype.A:
            return len(rrset)
    return 0


# ------------------------------------------------------------------------------------ OPT


@pytest.mark.parametrize(
    "qname,rdtype",
    [(f"www.{ZONE}", "A"), (f"nope.{ZONE}", "A"), (f"host.sub.{ZONE}", "A"), ("example.com", "A")],
    ids=["answer", "nxdomain", "referral", "refused"],
)
@TRANSPORTS
def test_no_opt_in_reply_without_opt_in_query(in_process, qname, rdtype, tcp):
    reply = in_process.query(qname, rdtype, edns=False, tcp=tcp)
    assert reply.edns == -1, "a reply must not carry OPT when the query had none"
    assert not any(r.rdtype == dns.rdatatype.OPT for r in reply.additional)


@pytest.mark.parametrize(
    "qname,rdtype",
    [(f"www.{ZONE}", "A"), (f"nope.{ZONE}", "A"), (f"host.sub.{ZONE}", "A"), ("example.com", "A")],
    ids=["answer", "nxdomain", "referral", "refused"],
)
@TRANSPORTS
def test_opt_in_reply_to_edns_query(in_process, qname, rdtype, tcp):
    reply = in_process.query(qname, rdtype, tcp=tcp)
    assert reply.edns == 0, "an EDNS query gets an OPT with version 0 back"
    assert reply.payload >= 512


def test_formerr_without_opt_has_no_opt(in_process):
    wire = in_process.raw_udp(build_query(qdcount=0, qid=77)[:12], timeout=2)
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.rcode() == dns.rcode.FORMERR
    assert reply.edns == -1


@pytest.mark.parametrize("version", [1, 2, 255])
@TRANSPORTS
def test_unknown_edns_version_is_badvers(in_process, version, tcp):
    query = make_query(f"www.{ZONE}", "A")
    query.use_edns(version, payload=1232)
    reply = in_process.send(query, tcp=tcp)
    assert reply.rcode() == BADVERS, f"rcode {reply.rcode()} (want BADVERS=16)"
    assert reply.edns == 0, "BADVERS carries an OPT with the highest supported version, 0"
    assert reply.answer == []


def test_badvers_raw_extended_rcode(in_process):
    opt = build_opt(1232, version=1)
    wire = in_process.raw_udp(build_query(f"www.{ZONE}", 1, qid=0x0B0B, opt=opt), timeout=2)
    assert wire is not None
    header = parse_header(wire)
    assert header["id"] == 0x0B0B
    assert header["rcode"] == 0, "low 4 bits of BADVERS (16) are 0"
    assert header["ancount"] == 0
    reply = dns.message.from_wire(wire)
    assert reply.edns == 0
    assert (reply.ednsflags >> 24) & 0xFF == 1, "extended rcode high bits = 1 -> 16"


def test_unknown_option_ignored(in_process):
    option = dns.edns.GenericOption(65001, b"unknown-option-data")
    reply = in_process.query(f"www.{ZONE}", "A", options=[option])
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.edns == 0
    assert [r.to_text() for r in reply.answer[0]] == ["192.0.2.80"]
    assert all(o.otype != 65001 for o in reply.options), "unknown options are not echoed"


def test_unknown_option_ignored_raw(in_process):
    options = edns_option(65002, b"") + edns_option(65003, b"\x01\x02\x03")
    wire = in_process.raw_udp(
        build_query(f"www.{ZONE}", 1, opt=build_opt(options=options)), timeout=2
    )
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in reply.answer[0]] == ["192.0.2.80"]


def test_cookie_option_does_not_break_answer(in_process):
    cookie = dns.edns.GenericOption(10, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    reply = in_process.query(f"www.{ZONE}", "A", options=[cookie])
    assert reply.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in reply.answer[0]] == ["192.0.2.80"]


def test_ecs_option_does_not_break_answer(in_process):
    reply = in_process.query(f"www.{ZONE}", "A", ecs="192.0.2.0/24")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in reply.answer[0]] == ["192.0.2.80"]
    for option in reply.options:
        if isinstance(option, dns.edns.ECSOption):
            # RFC 7871 section 7.2.1: family, source prefix length and address are echoed
            assert (option.family, option.srclen, option.address) == (1, 24, "192.0.2.0")


def test_do_bit_query_answers_normally_without_dnssec(in_process):
    reply = in_process.query(f"www.{ZONE}", "A", want_dnssec=True)
    assert reply.rcode() == dns.rcode.NOERROR
    assert [r.rdtype for r in reply.answer] == [dns.rdatatype.A]
    assert not any(r.rdtype == dns.rdatatype.RRSIG for r in reply.answer + reply.authority)


def test_two_opt_records_is_formerr(in_process):
    opt = build_opt(1232) + build_opt(1232)
    wire = in_process.raw_udp(
        build_query(f"www.{ZONE}", 1, qid=0x2020, opt=opt, arcount=2), timeout=2
    )
    assert wire is not None, "two OPT RRs must get FORMERR, not silence"
    header = parse_header(wire)
    assert (header["qr"], header["id"]) == (1, 0x2020)
    assert header["rcode"] == dns.rcode.FORMERR
    assert header["ancount"] == 0
    assert in_process.answers(f"www.{ZONE}")


# ------------------------------------------------------------------------ size and TC bit


def test_no_edns_large_answer_truncated_over_udp(server):
    wire, reply = udp_exchange(server, make_query(f"many.{ZONE}", "A", edns=False))
    assert len(wire) <= 512
    assert reply.flags & dns.flags.TC, "a >512-byte answer without EDNS must set TC"
    assert a_count(reply, f"many.{ZONE}") < MANY_COUNT


def test_no_edns_large_answer_complete_over_tcp(server):
    reply = server.query(f"many.{ZONE}", "A", edns=False, tcp=True)
    assert not reply.flags & dns.flags.TC
    assert reply.rcode() == dns.rcode.NOERROR
    assert a_count(reply, f"many.{ZONE}") == MANY_COUNT
    assert reply.answer[0].to_text().count("198.51.100.") == MANY_COUNT


def test_medium_answer_fits_512_without_edns(in_process):
    wire, reply = udp_exchange(in_process, make_query(f"medium.{ZONE}", "A", edns=False))
    assert not reply.flags & dns.flags.TC
    assert a_count(reply, f"medium.{ZONE}") == MEDIUM_COUNT
    assert len(wire) <= 512


def test_edns_payload_4096_is_capped_at_1232(server):
    wire, reply = udp_exchange(server, make_query(f"huge.{ZONE}", "A", payload=4096))
    assert len(wire) <= 1232, f"{len(wire)}-byte UDP reply exceeds the 1232 cap"
    assert reply.flags & dns.flags.TC, "a ~1650-byte answer must be truncated at 1232"
    assert reply.edns == 0, "a truncated reply to an EDNS query still carries OPT"


def test_edns_huge_answer_complete_over_tcp(server):
    reply = server.query(f"huge.{ZONE}", "A", payload=512, tcp=True)
    assert not reply.flags & dns.flags.TC
    assert a_count(reply, f"huge.{ZONE}") == HUGE_COUNT


@pytest.mark.parametrize("payload", [1232, 4096])
def test_edns_1000_byte_answer_fits(in_process, payload):
    wire, reply = udp_exchange(in_process, make_query(f"big.{ZONE}", "A", payload=payload))
    assert 900 < len(wire) <= 1232
    assert not reply.flags & dns.flags.TC
    assert a_count(reply, f"big.{ZONE}") == BIG_COUNT


def test_edns_700_byte_answer_fits_1232_but_not_512(in_process):
    wire, reply = udp_exchange(in_process, make_query(f"many.{ZONE}", "A", payload=1232))
    assert not reply.flags & dns.flags.TC
    assert a_count(reply, f"many.{ZONE}") == MANY_COUNT
    wire, reply = udp_exchange(in_process, make_query(f"many.{ZONE}", "A", payload=512))
    assert len(wire) <= 512
    assert reply.flags & dns.flags.TC


def test_client_payload_below_cap_is_honoured(in_process):
    # the answer is ~690 bytes: fits the server's 1232 but not the client's 600
    wire, reply = udp_exchange(in_process, make_query(f"many.{ZONE}", "A", payload=600))
    assert len(wire) <= 600
    assert reply.flags & dns.flags.TC


@pytest.mark.parametrize("payload", [0, 100, 511])
def test_payload_below_512_is_treated_as_512(in_process, payload):
    # RFC 6891 section 6.2.5: values lower than 512 MUST be treated as equal to 512
    wire, reply = udp_exchange(in_process, make_query(f"medium.{ZONE}", "A", payload=payload))
    assert not reply.flags & dns.flags.TC
    assert a_count(reply, f"medium.{ZONE}") == MEDIUM_COUNT


def test_configured_max_udp_size(tmp_path):
    srv = InProcessServer(tmp_path, {"edns": {"max_udp_size": 512}}, BASE_ZONES)
    wire, reply = udp_exchange(srv, make_query(f"many.{ZONE}", "A", payload=4096))
    assert len(wire) <= 512
    assert reply.flags & dns.flags.TC
    reply = srv.query(f"many.{ZONE}", "A", payload=4096, tcp=True)
    assert a_count(reply, f"many.{ZONE}") == MANY_COUNT

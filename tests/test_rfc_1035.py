"""RFC 1034/1035 (plus RFC 2181, 2308, 4343, 6604) behaviour of an authoritative server.

Header flags and echoing, positive answers, negative answers with the SOA, REFUSED outside the
zones, referrals at delegations, CNAME processing and additional-section processing. The answers
come from the answer path in-process (`in_process`, conftest.py); a real server answers the
end-to-end checks: AA and the question over UDP and TCP, the ID over TCP, a CNAME chain on both.
"""

from __future__ import annotations

import os
import struct

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from conftest import LONG_TXT, REV_ZONE, SERIAL, ZONE
from server_process import build_opt, build_query, encode_name, make_query, parse_header

A, AAAA, NS, MX, TXT, SOA, CNAME = (
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.NS,
    dns.rdatatype.MX,
    dns.rdatatype.TXT,
    dns.rdatatype.SOA,
    dns.rdatatype.CNAME,
)

TRANSPORTS = pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])


def n(name: str) -> dns.name.Name:
    return dns.name.from_text(name)


def find(section: list, name: str, rdtype: int):
    for rrset in section:
        if rrset.name == n(name) and rrset.rdtype == rdtype:
            return rrset
    return None


def keys(section: list) -> list[tuple[str, str]]:
    return [
        (rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype)) for rrset in section
    ]


def texts(rrset) -> set[str]:
    return {rdata.to_text() for rdata in rrset}


def assert_negative(reply: dns.message.Message, zone: str, ttl: int) -> None:
    """RFC 2308 section 3: the zone's SOA in authority, TTL = min(SOA TTL, SOA minimum)."""
    assert reply.answer == [], reply
    assert keys(reply.authority) == [(zone + ".", "SOA")], reply
    soa = reply.authority[0]
    assert len(soa) == 1
    assert soa.ttl == ttl, f"negative TTL {soa.ttl}, expected {ttl}"
    assert reply.flags & dns.flags.AA


# ---------------------------------------------------------------------------- header (4.1.1)


@TRANSPORTS
def test_aa_set_on_authoritative_answer(server, tcp):
    reply = server.query(f"www.{ZONE}", "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.QR
    assert reply.flags & dns.flags.AA, "AA must be set on an authoritative answer"
    assert not reply.flags & dns.flags.TC


@pytest.mark.parametrize(
    "qname,rdtype",
    [
        (f"www.{ZONE}", "A"),
        (f"nope.{ZONE}", "A"),
        (f"host.sub.{ZONE}", "A"),
        ("example.com", "A"),
        (f"alias2.{ZONE}", "A"),
    ],
    ids=["answer", "nxdomain", "referral", "refused", "cname"],
)
@TRANSPORTS
def test_ra_never_set(in_process, qname, rdtype, tcp):
    reply = in_process.query(qname, rdtype, tcp=tcp, rd=True)
    assert not reply.flags & dns.flags.RA, "an authoritative-only server must not set RA"


@pytest.mark.parametrize("rd", [True, False], ids=["rd1", "rd0"])
@TRANSPORTS
def test_rd_copied(in_process, rd, tcp):
    reply = in_process.query(f"www.{ZONE}", "A", rd=rd, tcp=tcp)
    assert bool(reply.flags & dns.flags.RD) == rd
    nx = in_process.query(f"nope.{ZONE}", "A", rd=rd, tcp=tcp)
    assert bool(nx.flags & dns.flags.RD) == rd


@pytest.mark.parametrize("qid", [0, 1, 0x1234, 0x8000, 0xFFFF])
def test_id_echoed_udp(in_process, qid):
    data = build_query(f"www.{ZONE}", 1, qid=qid)
    reply = in_process.raw_udp(data, timeout=2)
    assert reply is not None
    header = parse_header(reply)
    assert header["id"] == qid
    assert header["qr"] == 1
    assert header["opcode"] == 0
    assert header["rcode"] == 0


@pytest.mark.parametrize("qid", [0, 0xBEEF])
def test_id_echoed_tcp(server, qid):
    reply = server.raw_tcp(build_query(f"www.{ZONE}", 1, qid=qid))
    assert reply is not None
    assert parse_header(reply)["id"] == qid


def test_question_echoed_with_client_case(server):
    qname = "WwW.ExAmPlE.TeSt"
    data = build_query(qname, 1, qid=0x4242)
    reply = server.raw_udp(data, timeout=2)
    assert reply is not None
    header = parse_header(reply)
    assert header["qdcount"] == 1
    wire = encode_name(qname)
    # the question must be copied octet for octet (RFC 4343 section 4.1): same case, same type
    assert reply[12 : 12 + len(wire)] == wire, reply[12 : 12 + len(wire)]
    assert reply[12 + len(wire) : 16 + len(wire)] == struct.pack("!HH", 1, 1)
    message = dns.message.from_wire(reply)
    assert texts(find(message.answer, f"www.{ZONE}.", A)) == {"192.0.2.80"}


@TRANSPORTS
def test_question_echoed_with_client_case_dnspython(in_process, tcp):
    reply = in_process.query("WwW.ExAmPlE.TeSt", "AAAA", tcp=tcp)
    assert len(reply.question) == 1
    assert reply.question[0].name.to_text() == "WwW.ExAmPlE.TeSt."
    assert reply.question[0].rdtype == AAAA
    assert reply.question[0].rdclass == dns.rdataclass.IN


@pytest.mark.parametrize("qname", ["WWW.EXAMPLE.TEST", "www.Example.Test", "wWw.eXaMpLe.tEsT."])
def test_names_matched_case_insensitively(in_process, qname):
    reply = in_process.query(qname, "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert len(reply.answer) == 1
    assert texts(reply.answer[0]) == {"192.0.2.80"}


def test_zone_apex_matched_case_insensitively(in_process):
    reply = in_process.query("EXAMPLE.test", "SOA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert keys(reply.answer) == [("example.test.", "SOA")]
    nx = in_process.query("NoSuchName.EXAMPLE.TEST", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN


def test_wildcard_and_delegation_matched_case_insensitively(in_process):
    wild = in_process.query("Foo.WILD.example.TEST", "A")
    assert texts(find(wild.answer, f"foo.wild.{ZONE}.", A)) == {"192.0.2.100"}
    ref = in_process.query("HOST.SUB.example.test", "A")
    assert not ref.flags & dns.flags.AA
    assert find(ref.authority, f"sub.{ZONE}.", NS) is not None


# ------------------------------------------------------------------------ positive answers


@TRANSPORTS
def test_a_and_aaaa(in_process, tcp):
    reply = in_process.query(f"www.{ZONE}", "A", tcp=tcp)
    assert keys(reply.answer) == [(f"www.{ZONE}.", "A")]
    assert texts(reply.answer[0]) == {"192.0.2.80"}
    assert reply.answer[0].ttl == 120
    reply = in_process.query(f"www.{ZONE}", "AAAA", tcp=tcp)
    assert keys(reply.answer) == [(f"www.{ZONE}.", "AAAA")]
    assert texts(reply.answer[0]) == {"2001:db8::80"}


def test_answer_has_only_the_asked_type(in_process):
    reply = in_process.query(ZONE, "A")
    assert keys(reply.answer) == [(f"{ZONE}.", "A")]
    assert texts(reply.answer[0]) == {"192.0.2.1"}
    assert reply.answer[0].ttl == 300


def test_apex_soa(in_process):
    reply = in_process.query(ZONE, "SOA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert keys(reply.answer) == [(f"{ZONE}.", "SOA")]
    soa = reply.answer[0]
    assert len(soa) == 1
    assert soa.ttl == 3600
    rdata = soa[0]
    assert rdata.mname == n("ns1.example.test.")
    assert rdata.rname == n("hostmaster.example.test.")
    assert rdata.serial == SERIAL
    assert (rdata.refresh, rdata.retry, rdata.expire, rdata.minimum) == (7200, 900, 604800, 300)


def test_soa_defaults_mname_rname_serial(in_process):
    """mname = first apex NS, rname = hostmaster.<zone>, serial = the zone file's mtime."""
    reply = in_process.query(REV_ZONE, "SOA")
    assert keys(reply.answer) == [(f"{REV_ZONE}.", "SOA")]
    rdata = reply.answer[0][0]
    assert rdata.mname == n("ns1.example.test.")
    assert rdata.rname == n(f"hostmaster.{REV_ZONE}.")
    assert rdata.serial == int(os.stat(in_process.zone_path(REV_ZONE)).st_mtime)
    assert rdata.minimum == 900
    assert reply.answer[0].ttl == 120


def test_soa_only_at_apex(in_process):
    reply = in_process.query(f"www.{ZONE}", "SOA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert_negative(reply, ZONE, 300)


def test_apex_ns_with_glue_in_additional(in_process):
    reply = in_process.query(ZONE, "NS")
    assert reply.flags & dns.flags.AA
    assert keys(reply.answer) == [(f"{ZONE}.", "NS")]
    assert texts(reply.answer[0]) == {"ns1.example.test.", "ns2.example.test."}
    assert reply.answer[0].ttl == 86400
    assert texts(find(reply.additional, f"ns1.{ZONE}.", A)) == {"192.0.2.53"}
    assert texts(find(reply.additional, f"ns1.{ZONE}.", AAAA)) == {"2001:db8::53"}
    assert texts(find(reply.additional, f"ns2.{ZONE}.", A)) == {"192.0.2.54"}


def test_mx_with_in_zone_exchange_addresses_in_additional(in_process):
    reply = in_process.query(ZONE, "MX")
    assert keys(reply.answer) == [(f"{ZONE}.", "MX")]
    assert texts(reply.answer[0]) == {"10 mail.example.test.", "20 mx.elsewhere.invalid."}
    assert texts(find(reply.additional, f"mail.{ZONE}.", A)) == {"192.0.2.25"}
    assert texts(find(reply.additional, f"mail.{ZONE}.", AAAA)) == {"2001:db8::25"}
    # nothing about the out-of-zone exchange (the server is not authoritative for it)
    assert all(r.name != n("mx.elsewhere.invalid.") for r in reply.additional)


def test_txt_longer_than_255_is_split_into_strings(in_process):
    reply = in_process.query(ZONE, "TXT")
    rrset = find(reply.answer, f"{ZONE}.", TXT)
    assert rrset is not None
    assert rrset.ttl == 600
    strings = sorted(tuple(rdata.strings) for rdata in rrset)
    assert strings == sorted(
        [(b"v=spf1 -all",), (LONG_TXT[:255].encode(), LONG_TXT[255:].encode())]
    )


def test_txt_escaped_semicolon_is_plain_on_the_wire(in_process):
    reply = in_process.query(f"txt.{ZONE}", "TXT")
    assert [tuple(rdata.strings) for rdata in reply.answer[0]] == [(b"a;b c",)]


def test_caa(in_process):
    reply = in_process.query(ZONE, "CAA")
    assert keys(reply.answer) == [(f"{ZONE}.", "CAA")]
    (rdata,) = list(reply.answer[0])
    assert (rdata.flags, rdata.tag, rdata.value) == (0, b"issue", b"ca.example.net")


def test_srv(in_process):
    reply = in_process.query(f"_sip._tcp.{ZONE}", "SRV")
    assert reply.rcode() == dns.rcode.NOERROR
    assert keys(reply.answer) == [(f"_sip._tcp.{ZONE}.", "SRV")]
    (rdata,) = list(reply.answer[0])
    assert (rdata.priority, rdata.weight, rdata.port) == (10, 5, 5060)
    assert rdata.target == n("sip.example.test.")


def test_ptr(in_process):
    reply = in_process.query(f"ptr.{ZONE}", "PTR")
    assert texts(reply.answer[0]) == {"www.example.test."}
    reply = in_process.query(f"80.{REV_ZONE}", "PTR")
    assert reply.flags & dns.flags.AA
    assert keys(reply.answer) == [(f"80.{REV_ZONE}.", "PTR")]
    assert texts(reply.answer[0]) == {"www.example.test."}


def test_default_ttl_is_3600(in_process):
    reply = in_process.query(f"sip.{ZONE}", "A")
    assert reply.answer[0].ttl == 3600


# ------------------------------------------------------------------- negative answers (2308)


@TRANSPORTS
def test_nxdomain_with_soa(in_process, tcp):
    reply = in_process.query(f"nonexistent.{ZONE}", "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert_negative(reply, ZONE, 300)
    soa = reply.authority[0][0]
    assert soa.serial == SERIAL


@pytest.mark.parametrize(
    "qname", [f"x.www.{ZONE}", f"x.b.c.{ZONE}", f"deeper.x.y.{ZONE}", f"x.a.b.c.{ZONE}"]
)
def test_nxdomain_below_existing_names(in_process, qname):
    reply = in_process.query(qname, "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert_negative(reply, ZONE, 300)


@TRANSPORTS
def test_nodata_with_soa(in_process, tcp):
    reply = in_process.query(f"www.{ZONE}", "TXT", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert_negative(reply, ZONE, 300)


@pytest.mark.parametrize("rdtype", ["AAAA", "SRV", "PTR", "CNAME"])
def test_nodata_at_apex(in_process, rdtype):
    reply = in_process.query(ZONE, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert_negative(reply, ZONE, 300)


def test_nodata_for_unknown_type(in_process):
    reply = in_process.query(f"www.{ZONE}", 65280)
    assert reply.rcode() == dns.rcode.NOERROR
    assert_negative(reply, ZONE, 300)


def test_negative_ttl_is_min_of_soa_ttl_and_minimum(in_process):
    # example.test: ttl 3600, minimum 300 -> 300; the reverse zone: ttl 120, minimum 900 -> 120
    reply = in_process.query(f"nope.{REV_ZONE}", "PTR")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert_negative(reply, REV_ZONE, 120)
    reply = in_process.query(f"80.{REV_ZONE}", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert_negative(reply, REV_ZONE, 120)


@pytest.mark.parametrize(
    "qname,rdtype",
    [(f"b.c.{ZONE}", "A"), (f"c.{ZONE}", "A"), (f"c.{ZONE}", "TXT"), (f"_tcp.{ZONE}", "SRV")],
)
@TRANSPORTS
def test_empty_non_terminal_is_nodata(in_process, qname, rdtype, tcp):
    reply = in_process.query(qname, rdtype, tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR, "an empty non-terminal exists (RFC 8020)"
    assert_negative(reply, ZONE, 300)


# --------------------------------------------------------------------------------- REFUSED


@pytest.mark.parametrize(
    "qname",
    [
        "example.com",
        "test",
        ".",
        "notexample.test",
        "xexample.test",
        "in-addr.arpa",
        "0.192.in-addr.arpa",
    ],
)
@TRANSPORTS
def test_refused_outside_every_zone(in_process, qname, tcp):
    reply = in_process.query(qname, "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.AA, "no AA for a name the server is not authoritative for"
    assert reply.answer == []
    assert reply.authority == []


def _labels_query(labels: list[bytes], qid: int) -> bytes:
    from server_process import build_header

    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    return build_header(qid) + name + struct.pack("!HH", 1, 1)


@pytest.mark.parametrize(
    "labels",
    [[b"www.example", b"test"], [b"x", b"foo.example", b"test"], [b"www", b"example.test"]],
    ids=["www.example|test", "x|foo.example|test", "www|example.test"],
)
def test_dot_inside_a_label_is_not_a_separator(in_process, labels):
    # RFC 1035 2.3.1/3.1 and RFC 2181 section 11: a label is any octets; a '.' in it is data,
    # so these names are not under example.test and the server is not authoritative for them
    wire = in_process.raw_udp(_labels_query(labels, 0x2E2E), timeout=2)
    assert wire is not None
    header = parse_header(wire)
    assert header["rcode"] == dns.rcode.REFUSED, f"rcode {header['rcode']} for {labels}"
    assert not header["aa"]


# -------------------------------------------------------------------------------- referrals


@pytest.mark.parametrize(
    "qname,rdtype",
    [
        (f"host.sub.{ZONE}", "A"),
        (f"deep.host.sub.{ZONE}", "MX"),
        (f"sub.{ZONE}", "A"),
        (f"sub.{ZONE}", "NS"),
        (f"sub.{ZONE}", "SOA"),
        (f"ns1.sub.{ZONE}", "A"),
        (f"nothing.sub.{ZONE}", "AAAA"),
    ],
)
@TRANSPORTS
def test_referral_at_or_below_delegation(in_process, qname, rdtype, tcp):
    reply = in_process.query(qname, rdtype, tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.flags & dns.flags.AA, "a referral is not authoritative (RFC 1034 4.3.2)"
    assert reply.answer == [], "a referral has no answer section"
    assert keys(reply.authority) == [(f"sub.{ZONE}.", "NS")], "only the NS RRset, no SOA"
    ns = reply.authority[0]
    assert texts(ns) == {"ns1.sub.example.test.", "ns.elsewhere.invalid."}
    assert ns.ttl == 7200
    assert texts(find(reply.additional, f"ns1.sub.{ZONE}.", A)) == {"192.0.2.200"}
    assert texts(find(reply.additional, f"ns1.sub.{ZONE}.", AAAA)) == {"2001:db8::200"}
    assert all(r.name != n("ns.elsewhere.invalid.") for r in reply.additional)


# ------------------------------------------------------------------------------------ CNAME


@TRANSPORTS
def test_cname_chain_followed_inside_zone(server, tcp):
    reply = server.query(f"alias2.{ZONE}", "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert keys(reply.answer) == [
        (f"alias2.{ZONE}.", "CNAME"),
        (f"alias.{ZONE}.", "CNAME"),
        (f"www.{ZONE}.", "A"),
    ], "CNAMEs first, in chain order, then the target's records"
    assert texts(reply.answer[0]) == {"alias.example.test."}
    assert texts(reply.answer[1]) == {"www.example.test."}
    assert texts(reply.answer[2]) == {"192.0.2.80"}
    assert reply.answer[0].ttl == 60


def test_cname_followed_for_aaaa(in_process):
    reply = in_process.query(f"alias.{ZONE}", "AAAA")
    assert keys(reply.answer) == [(f"alias.{ZONE}.", "CNAME"), (f"www.{ZONE}.", "AAAA")]
    assert texts(reply.answer[1]) == {"2001:db8::80"}


def test_cname_query_returns_only_the_cname(in_process):
    reply = in_process.query(f"alias2.{ZONE}", "CNAME")
    assert reply.rcode() == dns.rcode.NOERROR
    assert keys(reply.answer) == [(f"alias2.{ZONE}.", "CNAME")]
    assert texts(reply.answer[0]) == {"alias.example.test."}


@TRANSPORTS
def test_cname_to_out_of_zone_target_answers_just_the_cname(in_process, tcp):
    reply = in_process.query(f"external.{ZONE}", "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert keys(reply.answer) == [(f"external.{ZONE}.", "CNAME")]
    assert texts(reply.answer[0]) == {"target.elsewhere.invalid."}
    assert not any(r.rdtype == SOA for r in reply.authority), "not a negative answer"


def test_cname_to_missing_name_is_nxdomain(in_process):
    """RFC 6604 section 3: the RCODE reflects the last name in the chain; SOA per RFC 2308."""
    reply = in_process.query(f"dangling.{ZONE}", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert keys(reply.answer) == [(f"dangling.{ZONE}.", "CNAME")]
    assert keys(reply.authority) == [(f"{ZONE}.", "SOA")]


def test_cname_to_name_without_the_type_is_nodata(in_process):
    reply = in_process.query(f"alias.{ZONE}", "TXT")
    assert reply.rcode() == dns.rcode.NOERROR
    assert keys(reply.answer) == [(f"alias.{ZONE}.", "CNAME")]
    assert keys(reply.authority) == [(f"{ZONE}.", "SOA")]
    assert reply.authority[0].ttl == 300


def test_cname_loop_terminates(in_process):
    reply = in_process.query(f"loop1.{ZONE}", "A", timeout=3)
    assert reply.rcode() in (dns.rcode.NOERROR, dns.rcode.SERVFAIL)
    names = keys(reply.answer)
    assert len(names) == len(set(names)) <= 2, names
    assert all(kind == "CNAME" for _, kind in names)
    assert in_process.answers(f"www.{ZONE}")


def test_cname_loop_has_no_duplicate_records(in_process):
    # dnspython merges duplicates when parsing, so count the records on the wire:
    # each CNAME of the loop at most once (RFC 2181 section 5: no duplicate RRs in an RRset)
    wire = in_process.raw_udp(build_query(f"loop1.{ZONE}", 1, qid=0x1001), timeout=3)
    assert wire is not None
    assert parse_header(wire)["ancount"] <= 2, f"{parse_header(wire)['ancount']} answer RRs"


# ----------------------------------------------------------------- opcodes, zone transfers


@pytest.mark.parametrize("opcode", [1, 2, 3, 4, 5, 7, 15], ids=lambda o: f"opcode{o}")
def test_non_query_opcode_is_notimp(in_process, opcode):
    data = build_query(ZONE, 6, qid=0x7000 + opcode, opcode=opcode, rd=0)
    reply = in_process.raw_udp(data, timeout=2)
    assert reply is not None, f"no reply to opcode {opcode}"
    header = parse_header(reply)
    assert header["qr"] == 1
    assert header["id"] == 0x7000 + opcode
    assert header["opcode"] == opcode, "the opcode is copied into the response"
    assert header["rcode"] == dns.rcode.NOTIMP
    assert header["ancount"] == 0
    assert in_process.answers(f"www.{ZONE}")


def test_non_query_opcode_with_edns_keeps_the_opt(in_process):
    """RFC 6891 section 7: a request with an OPT gets an OPT back, even when refused as NOTIMP."""
    data = build_query(ZONE, 6, qid=0x7200, opcode=4, opt=build_opt())
    reply = in_process.raw_udp(data, timeout=2)
    assert reply is not None
    header = parse_header(reply)
    assert header["rcode"] == dns.rcode.NOTIMP
    assert header["arcount"] == 1
    assert dns.message.from_wire(reply).edns == 0


@pytest.mark.parametrize("opcode", [2, 4, 5])
def test_non_query_opcode_is_notimp_tcp(in_process, opcode):
    reply = in_process.raw_tcp(build_query(ZONE, 6, qid=0x7100, opcode=opcode))
    assert reply is not None
    header = parse_header(reply)
    assert (header["qr"], header["id"], header["opcode"]) == (1, 0x7100, opcode)
    assert header["rcode"] == dns.rcode.NOTIMP


def test_notify_with_dnspython_is_notimp(in_process):
    message = dns.message.make_query(ZONE, "SOA")
    message.set_opcode(dns.opcode.NOTIFY)
    message.flags |= dns.flags.AA
    reply = in_process.send(message)
    assert reply.opcode() == dns.opcode.NOTIFY
    assert reply.rcode() == dns.rcode.NOTIMP


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
@TRANSPORTS
def test_zone_transfer_refused(in_process, qtype, tcp):
    reply = in_process.send(make_query(ZONE, qtype, edns=False), tcp=tcp)
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.answer == []
    assert in_process.answers(f"www.{ZONE}")


@pytest.mark.parametrize("qclass", [3, 4], ids=["CH", "HS"])
def test_other_class_gets_no_in_data(in_process, qclass):
    # the zones are class IN; a CHAOS/Hesiod query must not be answered with IN data
    wire = in_process.raw_udp(build_query(f"www.{ZONE}", 1, qclass, qid=0x0C0C), timeout=2)
    assert wire is not None
    header = parse_header(wire)
    assert (header["qr"], header["id"]) == (1, 0x0C0C)
    assert header["rcode"] in (dns.rcode.REFUSED, dns.rcode.NOTIMP)
    assert header["ancount"] == 0
    assert not header["aa"]


def test_query_response_answer_count_matches_header(in_process):
    wire = in_process.raw_udp(build_query(f"alias2.{ZONE}", 1, qid=9), timeout=2)
    assert wire is not None
    header = parse_header(wire)
    message = dns.message.from_wire(wire)
    assert header["ancount"] == sum(len(r) for r in message.answer) == 3


@pytest.mark.parametrize(
    "qname,rdtype",
    [
        (f"mx2.{ZONE}", "MX"),
        (ZONE, "NS"),
        (ZONE, "MX"),
        (f"alias2.{ZONE}", "A"),
        (f"host.sub.{ZONE}", "A"),
        (f"nope.{ZONE}", "A"),
        (f"x.wild.{ZONE}", "A"),
    ],
)
def test_no_duplicate_records_on_the_wire(in_process, qname, rdtype):
    """RFC 2181 section 5: an RR appears once; e.g. two MX naming one host give one glue set."""
    query = make_query(qname, rdtype)
    wire = in_process.raw_udp(query.to_wire(), timeout=2)
    assert wire is not None
    message = dns.message.from_wire(wire, one_rr_per_rrset=True)
    for section in (message.answer, message.authority, message.additional):
        records = [(r.name, r.rdtype, r[0].to_text()) for r in section if r.rdtype != 41]
        assert len(records) == len(set(records)), records

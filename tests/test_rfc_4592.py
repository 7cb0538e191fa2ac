"""Wildcards per RFC 4592: synthesis, the closest-encloser rule, and empty non-terminals.

Two zones: example.test (`*.wild`, `explicit.wild`, the ENT `ent.wild`) and `example`, the zone of
RFC 4592 section 2.2.1 (minus `sub.*.example.`, whose middle-`*` owner geodns rejects). The
answer path answers in-process (`in_process`); a real server answers a synthesised MX and a
synthesised CNAME over UDP and TCP.
"""

from __future__ import annotations

import dns.flags
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from conftest import BASE_ZONES, ZONE, base_config
from inprocess import InProcessServer
from server_process import GeodnsServer

RFC_ZONE = "example"
# RFC 4592 section 2.2.1
RFC4592_ZONE = """\
'':
  type: NS
  values:
    - ns.example.com.
    - ns.example.net.
'*':
  - type: TXT
    value: this is a wildcard
  - type: MX
    value:
      preference: 10
      exchange: host1.example.
host1:
  type: A
  value: 192.0.2.1
_ssh._tcp.host1:
  type: SRV
  value: {priority: 0, weight: 0, port: 22, target: host1.example.}
_ssh._tcp.host2:
  type: SRV
  value: {priority: 0, weight: 0, port: 22, target: host2.example.}
subdel:
  type: NS
  values:
    - ns.example.com.
    - ns.example.net.
"""

TRANSPORTS = pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])


ZONES = {**BASE_ZONES, RFC_ZONE: RFC4592_ZONE}


@pytest.fixture(scope="module")
def server():
    with GeodnsServer(base_config(), ZONES) as srv:
        yield srv


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> InProcessServer:
    return InProcessServer(tmp_path_factory.mktemp("in-process"), base_config(), ZONES)


def n(name: str) -> dns.name.Name:
    return dns.name.from_text(name)


def keys(section) -> list[tuple[str, str]]:
    return [(r.name.to_text().lower(), dns.rdatatype.to_text(r.rdtype)) for r in section]


def assert_nodata(reply, zone: str) -> None:
    assert reply.rcode() == dns.rcode.NOERROR, reply
    assert reply.flags & dns.flags.AA
    assert reply.answer == [], reply
    assert keys(reply.authority) == [(zone + ".", "SOA")], reply


def assert_nxdomain(reply, zone: str) -> None:
    assert reply.rcode() == dns.rcode.NXDOMAIN, reply
    assert reply.flags & dns.flags.AA
    assert reply.answer == [], reply
    assert keys(reply.authority) == [(zone + ".", "SOA")], reply


# -------------------------------------------------------------- example.test's *.wild


@pytest.mark.parametrize("label", ["foo", "x.y", "a.b.c.d", "host-1", "_underscore"])
@TRANSPORTS
def test_wildcard_synthesises_owner_equal_to_qname(in_process, label, tcp):
    qname = f"{label}.wild.{ZONE}."
    reply = in_process.query(qname, "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert keys(reply.answer) == [(qname.lower(), "A")], "owner must be the qname, not '*'"
    assert {r.to_text() for r in reply.answer[0]} == {"192.0.2.100"}
    assert reply.answer[0].ttl == 90
    assert all("*" not in r.name.to_text() for r in reply.answer + reply.authority)


def test_wildcard_other_type(in_process):
    reply = in_process.query(f"foo.wild.{ZONE}", "TXT")
    assert keys(reply.answer) == [(f"foo.wild.{ZONE}.", "TXT")]
    assert [tuple(r.strings) for r in reply.answer[0]] == [(b"wildcard",)]


def test_wildcard_nodata_for_missing_type(in_process):
    reply = in_process.query(f"foo.wild.{ZONE}", "AAAA")
    assert_nodata(reply, ZONE)


def test_wildcard_owner_itself_answers(in_process):
    reply = in_process.query(f"*.wild.{ZONE}", "A")
    assert keys(reply.answer) == [(f"*.wild.{ZONE}.", "A")]
    assert {r.to_text() for r in reply.answer[0]} == {"192.0.2.100"}


def test_explicit_name_beats_wildcard(in_process):
    reply = in_process.query(f"explicit.wild.{ZONE}", "A")
    assert keys(reply.answer) == [(f"explicit.wild.{ZONE}.", "A")]
    assert {r.to_text() for r in reply.answer[0]} == {"192.0.2.101"}


def test_wildcard_does_not_cover_missing_type_of_existing_name(in_process):
    # explicit.wild exists (A only): TXT there is NODATA, not the wildcard's TXT
    assert_nodata(in_process.query(f"explicit.wild.{ZONE}", "TXT"), ZONE)


def test_wildcard_does_not_match_below_existing_name(in_process):
    # closest encloser is explicit.wild; *.explicit.wild does not exist -> NXDOMAIN
    assert_nxdomain(in_process.query(f"foo.explicit.wild.{ZONE}", "A"), ZONE)


def test_wildcard_does_not_cover_empty_non_terminal(in_process):
    # deep.ent.wild exists, so ent.wild exists (empty): NODATA, not the wildcard's A
    assert_nodata(in_process.query(f"ent.wild.{ZONE}", "A"), ZONE)
    assert_nxdomain(in_process.query(f"x.ent.wild.{ZONE}", "A"), ZONE)
    reply = in_process.query(f"deep.ent.wild.{ZONE}", "A")
    assert {r.to_text() for r in reply.answer[0]} == {"192.0.2.102"}


def test_wildcard_does_not_match_its_parent(in_process):
    # wild.example.test exists only as the parent of *.wild: an empty non-terminal
    assert_nodata(in_process.query(f"wild.{ZONE}", "A"), ZONE)


def test_wildcard_does_not_leak_to_siblings(in_process):
    assert_nxdomain(in_process.query(f"foo.notwild.{ZONE}", "A"), ZONE)
    assert_nxdomain(in_process.query(f"foo.{ZONE}", "A"), ZONE)


def test_wildcard_matched_case_insensitively(in_process):
    reply = in_process.query(f"MiXeD.WiLd.{ZONE.upper()}", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert keys(reply.answer) == [(f"mixed.wild.{ZONE}.", "A")]
    assert {r.to_text() for r in reply.answer[0]} == {"192.0.2.100"}


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_wildcard_cname_is_synthesised_and_followed(server, tcp):
    reply = server.query(f"anything.cw.{ZONE}", "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert keys(reply.answer) == [(f"anything.cw.{ZONE}.", "CNAME"), (f"www.{ZONE}.", "A")]
    assert {r.to_text() for r in reply.answer[0]} == {"www.example.test."}
    assert {r.to_text() for r in reply.answer[1]} == {"192.0.2.80"}


def test_cname_to_a_wildcard_covered_name(in_process):
    reply = in_process.query(f"towild.{ZONE}", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert keys(reply.answer) == [(f"towild.{ZONE}.", "CNAME"), (f"foo.wild.{ZONE}.", "A")]
    assert {r.to_text() for r in reply.answer[1]} == {"192.0.2.100"}


# --------------------------------------------------------- RFC 4592 section 2.2.1 examples


@TRANSPORTS
def test_rfc4592_host3_mx_synthesised(server, tcp):
    reply = server.query("host3.example.", "MX", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert keys(reply.answer) == [("host3.example.", "MX")]
    assert {r.to_text() for r in reply.answer[0]} == {"10 host1.example."}


def test_rfc4592_host3_a_is_nodata(in_process):
    assert_nodata(in_process.query("host3.example.", "A"), RFC_ZONE)


def test_rfc4592_foo_bar_txt_synthesised(in_process):
    reply = in_process.query("foo.bar.example.", "TXT")
    assert keys(reply.answer) == [("foo.bar.example.", "TXT")]
    assert [tuple(r.strings) for r in reply.answer[0]] == [(b"this is a wildcard",)]


def test_rfc4592_host1_mx_is_nodata(in_process):
    # host1.example. exists: the wildcard does not apply
    assert_nodata(in_process.query("host1.example.", "MX"), RFC_ZONE)


def test_rfc4592_telnet_srv_is_nxdomain(in_process):
    # _tcp.host1.example. exists (empty): closest encloser; *._tcp.host1.example. does not exist
    assert_nxdomain(in_process.query("_telnet._tcp.host1.example.", "SRV"), RFC_ZONE)


def test_rfc4592_host2_is_empty_non_terminal(in_process):
    assert_nodata(in_process.query("host2.example.", "A"), RFC_ZONE)
    assert_nodata(in_process.query("_tcp.host2.example.", "MX"), RFC_ZONE)


def test_rfc4592_host_subdel_is_referral(in_process):
    reply = in_process.query("host.subdel.example.", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.flags & dns.flags.AA
    assert reply.answer == []
    assert keys(reply.authority) == [("subdel.example.", "NS")]


def test_rfc4592_ghost_below_wildcard_is_nxdomain(in_process):
    # *.example. exists, so it is the closest encloser; *.*.example. does not exist
    assert_nxdomain(in_process.query("ghost.*.example.", "MX"), RFC_ZONE)


def test_rfc4592_srv_at_existing_name(in_process):
    reply = in_process.query("_ssh._tcp.host1.example.", "SRV")
    assert keys(reply.answer) == [("_ssh._tcp.host1.example.", "SRV")]


def test_rfc4592_wildcard_does_not_apply_to_apex(in_process):
    assert_nodata(in_process.query("example.", "TXT"), RFC_ZONE)

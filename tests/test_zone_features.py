"""What octoDNS zones bring beyond A/AAAA, answered in-process by the real loader and engine:
DNAME substitution (RFC 6672), the apex ALIAS, a zone without apex NS, dynamic CNAME records
with nearest and health, and the warnings for what geodns serves differently or not at all.
"""

from __future__ import annotations

from pathlib import Path

import dns.rcode
import dns.rdatatype
import pytest
from inprocess import Zones
from mmdb_factory import city_record, write_city_db

from geodns.common.errors import ConfigError

APEX = "? ''\n: type: NS\n  values:\n    - ns1.example.test.\n    - ns2.example.test.\n"
HOSTS = "ns1:\n  type: A\n  value: 192.0.2.53\nns2:\n  type: A\n  value: 192.0.2.54\n"


def load(tmp_path: Path, text: str, config: dict | None = None, **kwargs) -> Zones:
    return Zones(tmp_path, {"example.test": text}, config, **kwargs)


def refused(tmp_path: Path, text: str, config: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, config)
    return [p.message for p in caught.value.problems if p.is_error]


def warnings(zones: Zones) -> list[str]:
    return [p.message for p in zones.snapshot.zones["example.test."].warnings]


def answer(reply) -> list[tuple[str, str]]:
    return [(dns.rdatatype.to_text(r.rdtype), rr.to_text()) for r in reply.answer for rr in r]


# -- DNAME ----------------------------------------------------------------------------------------

DNAME_ZONE = (
    APEX
    + HOSTS
    + "old:\n  type: DNAME\n  ttl: 120\n  value: new.example.test.\n"
    + "www.new:\n  type: A\n  value: 192.0.2.7\n"
    + "away:\n  type: DNAME\n  value: example.net.\n"
)


def test_a_name_below_a_dname_is_substituted_and_followed(tmp_path: Path) -> None:
    zones = load(tmp_path, DNAME_ZONE)
    reply = zones.ask("www.old.example.test.", "A")
    assert answer(reply) == [
        ("DNAME", "new.example.test."),
        ("CNAME", "www.new.example.test."),
        ("A", "192.0.2.7"),
    ]
    assert reply.answer[1].ttl == 120 and str(reply.answer[1].name) == "www.old.example.test."
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & 0x0400  # AA


def test_a_dname_to_another_zone_and_a_cname_query_stop_at_the_synthesised_cname(
    tmp_path: Path,
) -> None:
    zones = load(tmp_path, DNAME_ZONE)
    assert answer(zones.ask("a.b.away.example.test.", "A")) == [
        ("DNAME", "example.net."),
        ("CNAME", "a.b.example.net."),
    ]
    assert answer(zones.ask("www.old.example.test.", "CNAME"))[1] == (
        "CNAME",
        "www.new.example.test.",
    )
    missing = zones.ask("nothing.old.example.test.", "A")
    assert missing.rcode() == dns.rcode.NXDOMAIN and len(missing.answer) == 2  # RFC 6604


def test_the_dname_owner_itself_is_answered_normally(tmp_path: Path) -> None:
    zones = load(tmp_path, DNAME_ZONE)
    assert answer(zones.ask("old.example.test.", "DNAME")) == [("DNAME", "new.example.test.")]
    assert zones.ask("old.example.test.", "A").answer == []  # NODATA


def test_a_substitution_too_long_for_a_name_is_yxdomain(tmp_path: Path) -> None:
    target = ".".join(["x" * 60] * 3) + ".example.net."
    zones = load(tmp_path, APEX + HOSTS + f"d:\n  type: DNAME\n  value: {target}\n")
    reply = zones.ask(("y" * 60) + ".d.example.test.", "A")
    assert reply.rcode() == dns.rcode.YXDOMAIN
    assert answer(reply) == [("DNAME", target)]


def test_names_below_a_dname_are_left_out_with_a_warning(tmp_path: Path) -> None:
    zones = load(tmp_path, DNAME_ZONE + "x.old:\n  type: A\n  value: 192.0.2.8\n")
    assert any("occluded" in w for w in warnings(zones))
    assert answer(zones.ask("x.old.example.test.", "A"))[0] == ("DNAME", "new.example.test.")


# -- ALIAS ----------------------------------------------------------------------------------------


def test_an_apex_alias_answers_from_its_in_zone_target(tmp_path: Path) -> None:
    text = (
        "? ''\n: - type: ALIAS\n    value: www.example.test.\n"
        "  - type: NS\n    values:\n      - ns1.example.test.\n      - ns2.example.test.\n"
        + HOSTS
        + "www:\n  - type: A\n    values: [192.0.2.80, 192.0.2.81]\n"
        "  - type: AAAA\n    value: 2001:db8::80\n"
    )
    zones = load(tmp_path, text)
    assert answer(zones.ask("example.test.", "A")) == [("A", "192.0.2.80"), ("A", "192.0.2.81")]
    assert answer(zones.ask("example.test.", "AAAA")) == [("AAAA", "2001:db8::80")]


@pytest.mark.parametrize(
    "alias,extra,phrase",
    [
        ("cdn.example.net.", "", r"outside the zone"),
        (
            "www.example.test.",
            "www:\n  type: MX\n  value: {exchange: ., preference: 0}\n",
            "no A or AAAA",
        ),
    ],
)
def test_an_alias_geodns_cannot_answer_is_refused(
    tmp_path: Path, alias: str, extra: str, phrase: str
) -> None:
    text = (
        f"? ''\n: - type: ALIAS\n    value: {alias}\n"
        "  - type: NS\n    values:\n      - ns1.example.test.\n      - ns2.example.test.\n"
        + HOSTS
        + extra
    )
    assert any(phrase in m for m in refused(tmp_path, text)), refused(tmp_path, text)


# -- nameservers ----------------------------------------------------------------------------------


def test_a_zone_without_apex_ns_is_answered_with_the_config_nameservers(tmp_path: Path) -> None:
    config = {"nameservers": ["ns1.provider.example.", "ns2.provider.example"]}
    zones = load(tmp_path, "www:\n  type: A\n  value: 192.0.2.1\n", config)
    assert sorted(r[1] for r in answer(zones.ask("example.test.", "NS"))) == [
        "ns1.provider.example.",
        "ns2.provider.example.",
    ]
    soa = zones.ask("example.test.", "SOA").answer[0][0]
    assert soa.mname.to_text() == "ns1.provider.example."
    assert any("no NS record at the apex" in w for w in warnings(zones))


def test_per_zone_nameservers_win(tmp_path: Path) -> None:
    config = {
        "nameservers": ["ns1.provider.example."],
        "zones": {"example.test": {"nameservers": ["a.ns.example.", "b.ns.example."]}},
    }
    zones = load(tmp_path, "www:\n  type: A\n  value: 192.0.2.1\n", config)
    assert sorted(r[1] for r in answer(zones.ask("example.test.", "NS"))) == [
        "a.ns.example.",
        "b.ns.example.",
    ]


def test_without_apex_ns_or_nameservers_the_zone_is_refused(tmp_path: Path) -> None:
    messages = refused(tmp_path, "www:\n  type: A\n  value: 192.0.2.1\n")
    assert any("nameservers:" in m for m in messages)


def test_a_single_nameserver_and_an_mname_that_is_no_nameserver_are_warned(tmp_path: Path) -> None:
    text = "? ''\n: type: NS\n  value: ns1.example.test.\n" + HOSTS
    zones = load(tmp_path, text, {"soa": {"mname": "master.example.test."}})
    found = warnings(zones)
    assert any("single nameserver" in w for w in found)
    assert any("soa.mname 'master.example.test.' is not one of" in w for w in found)


# -- skipped, with a warning ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "record,phrase",
    [
        (
            "x:\n  type: URLFWD\n  value: {code: 301, masking: 2, path: /, query: 0, target: 'http://a'}\n",
            "URLFWD record 'x' skipped",
        ),
        (
            "x:\n  type: Route53Provider/ALIAS\n  value: {name: a, type: A}\n",
            "Route53Provider/ALIAS record 'x' skipped",
        ),
        (
            "x:\n  octodns:\n    ignored: true\n  type: A\n  value: 192.0.2.1\n",
            "skipped: octodns.ignored",
        ),
        (
            "x:\n  octodns:\n    lenient: true\n  type: A\n  value: 192.0.2.300\n",
            "octodns.lenient: record skipped",
        ),
        (
            "x:\n  geo:\n    EU: [192.0.2.2]\n  type: A\n  value: 192.0.2.1\n",
            "deprecated 'geo' is not served",
        ),
        (
            "x:\n  dynamic: {pools: {p: {values: [{value: mx.example.test.}]}}, rules: [{pool: p}]}\n"
            "  type: MX\n  value: {exchange: mx.example.test., preference: 1}\n",
            "'dynamic' on MX is not answered per query",
        ),
    ],
)
def test_what_geodns_does_not_serve_is_skipped_with_a_warning(
    tmp_path: Path, record: str, phrase: str
) -> None:
    zones = load(tmp_path, APEX + HOSTS + record)
    assert any(phrase in w for w in warnings(zones)), warnings(zones)
    if "geo" not in record and "dynamic" not in record:
        assert zones.ask("x.example.test.", "A").rcode() == dns.rcode.NXDOMAIN


# -- dynamic CNAME: nearest and health ------------------------------------------------------------

SITES = {
    "fra": {"kind": "pop", "location": {"lat": 50.1, "lon": 8.7}, "addresses": ["192.0.2.21"]},
    "sin": {"kind": "pop", "location": {"lat": 1.35, "lon": 103.8}, "addresses": ["192.0.2.22"]},
}
CNAME_ZONE = (
    APEX
    + HOSTS
    + """\
edge-fra:
  type: A
  value: 192.0.2.21
edge-sin:
  type: A
  value: 192.0.2.22
www:
  dynamic:
    pools:
      fra:
        fallback: sin
        values:
          - value: edge-fra.example.test.
      sin:
        values:
          - value: edge-sin.example.test.
    rules:
      - pool: fra
  octodns:
    geodns:
      nearest: true
  type: CNAME
  value: edge-fra.example.test.
"""
)


@pytest.fixture
def city(tmp_path: Path) -> Path:
    return write_city_db(
        tmp_path / "city.mmdb",
        [
            ("85.0.0.0/16", city_record("DE", "EU", 50.1, 8.7)),
            ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8)),
        ],
    )


def test_a_dynamic_cname_goes_to_the_nearest_site_of_its_in_zone_targets(
    tmp_path: Path, city: Path
) -> None:
    config = {"sites": SITES, "geoip": {"database": str(city)}}
    zones = load(tmp_path / "z", CNAME_ZONE, config)
    assert answer(zones.ask("www.example.test.", "A", ecs="85.0.1.0/24")) == [
        ("CNAME", "edge-fra.example.test."),
        ("A", "192.0.2.21"),
    ]
    assert answer(zones.ask("www.example.test.", "A", ecs="36.64.1.0/24"))[0] == (
        "CNAME",
        "edge-sin.example.test.",
    )
    down = load(tmp_path / "d", CNAME_ZONE, config, down=frozenset({"fra"}))
    assert answer(down.ask("www.example.test.", "A", ecs="85.0.1.0/24"))[0] == (
        "CNAME",
        "edge-sin.example.test.",
    )
    reply = zones.ask("www.example.test.", "A", ecs="85.0.1.0/24")
    # the answer holds for all addresses that get it: every address of this database but
    # Jakarta's 36.64.0.0/16 (unlocated ones fall to the fra pool too); around 85.0.1.0 the
    # widest such block is 64.0.0.0/2
    assert reply.options[0].scopelen == 2


def test_a_dynamic_cname_value_out_of_zone_follows_its_octodns_healthcheck(tmp_path: Path) -> None:
    text = (
        APEX
        + HOSTS
        + """\
www:
  dynamic:
    pools:
      main:
        values:
          - value: lb.cdn.example.
    rules:
      - pool: main
  octodns:
    healthcheck:
      path: /health
      port: 8080
      protocol: HTTP
  type: CNAME
  value: fallback.cdn.example.
"""
    )
    zones = load(tmp_path, text)
    probed = {site.checks[0].address for site in zones.snapshot.sites.values() if site.checks}
    assert probed == {"lb.cdn.example", "fallback.cdn.example"}  # pool values and plain value
    site = next(s for s in zones.snapshot.sites.values() if s.name.endswith("@lb.cdn.example."))
    assert (site.checks[0].port, site.checks[0].path) == (8080, "/health")
    healthy = zones.ask("www.example.test.", "A")
    assert answer(healthy) == [("CNAME", "lb.cdn.example.")]
    down = load(tmp_path / "d", text, down=frozenset({site.name}))
    assert answer(down.ask("www.example.test.", "A")) == [("CNAME", "fallback.cdn.example.")]


def test_a_cname_cannot_answer_two_targets(tmp_path: Path) -> None:
    text = CNAME_ZONE.replace("      nearest: true", "      nearest: true\n      answers: 2")
    messages = refused(tmp_path, text, {"sites": SITES})
    assert any("a CNAME answers one target" in m for m in messages)

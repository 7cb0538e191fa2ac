"""octoDNS and geodns agree on what octoDNS zone files mean.

tests/octodns_corpus/ holds zones written the way octoDNS's own test configs and documentation
write them: every record type (unit.tests), dynamic A/AAAA/CNAME records with weights, fallback
chains, statuses and continent/country/subdivision/subnet rules (dynamic.tests), an apex ALIAS
with no apex NS (alias.tests). For each:

* what loads, what is skipped and what is refused: octoDNS's YamlProvider loads the zone, and an
  octoDNS provider that supports what geodns serves (`GeodnsTarget`) processes it as octoDNS does
  before a sync, skipping what it does not support with a warning; geodns must serve exactly the
  records left and warn about exactly the ones skipped. A table of small zones octoDNS refuses
  (EU-CY, XX-ZZ, a pool for two rules, repeated geos...) and of ones it accepts checks refusals.
* what dynamic records answer: for every dynamic record and every geo of a small City database,
  geodns is asked with that geo's client subnet, in-process, and must answer exactly the values
  of the pool octoDNS's rules name (after fallbacks past pools whose values are all down),
  every one of them over a spread of query IDs. A few answers go through a real server.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.rdatatype
import pytest
from inprocess import Zones
from mmdb_factory import city_record, write_city_db
from octodns.provider.base import BaseProvider
from octodns.provider.yaml import YamlProvider
from octodns.record.geo import GeoCodes
from octodns.zone import Zone as OctoZone
from server_process import GeodnsServer

from geodns.common.errors import ConfigError
from geodns.config.rdata import SERVED_TYPES, type_name
from geodns.config.zonefile import SoaSettings, load_zone_file
from geodns.dns.zone import TYPE_SOA, Zone
from geodns.geo.compile import DynamicCompilerForSites

pytestmark = pytest.mark.filterwarnings("ignore:`geo` records are DEPRECATED")
CORPUS = Path(__file__).resolve().parent / "octodns_corpus"
CORPUS_ZONES = sorted(p.stem for p in CORPUS.glob("*.yaml"))
NAMESERVERS = ["ns1.provider.example.", "ns2.provider.example."]

# where users are: (client subnet, country, the continent the *database* gives, subdivision);
# Cyprus is in Europe for the database (as for GeoNames) and in Asia for octoDNS
GEOS: dict[str, tuple[str, str, str, str | None]] = {
    "gb": ("81.2.69.0/24", "GB", "EU", None),
    "fr": ("2.0.0.0/16", "FR", "EU", None),
    "us-ca": ("8.8.8.0/24", "US", "NA", "CA"),
    "us-or": ("52.10.0.0/16", "US", "NA", "OR"),
    "us-ny": ("4.4.4.0/24", "US", "NA", "NY"),
    "jp": ("1.0.16.0/20", "JP", "AS", None),
    "cn": ("1.2.4.0/24", "CN", "AS", None),
    "sg": ("8.128.0.0/16", "SG", "AS", None),
    "cy": ("31.153.0.0/16", "CY", "EU", None),
    "au": ("1.1.1.0/24", "AU", "OC", None),
    "br": ("200.160.0.0/16", "BR", "SA", None),
    "za": ("41.0.0.0/16", "ZA", "AF", None),
    "lab-de": ("10.2.0.0/16", "DE", "EU", None),
    "lab-us": ("10.3.0.0/16", "US", "NA", "TX"),
    "lab": ("10.1.0.0/16", "", "", None),  # in no network of the database: not located
    "unlocated": ("192.168.7.0/24", "", "", None),
}
QUERY_IDS = range(
    0, 65536, 65536 // 12
)  # enough for every weight here to show  # the weighted choice draws on the query ID


class GeodnsTarget(BaseProvider):
    """An octoDNS provider that supports what geodns serves: octoDNS processes a zone for it
    before a sync, dropping what it does not support with a warning."""

    SUPPORTS_GEO = False
    SUPPORTS_DYNAMIC = True
    SUPPORTS_POOL_VALUE_STATUS = True
    SUPPORTS_DYNAMIC_SUBNETS = True
    SUPPORTS_MULTIVALUE_PTR = True
    SUPPORTS_ROOT_NS = True
    SUPPORTS = set(SERVED_TYPES)
    log = logging.getLogger("GeodnsTarget")

    def __init__(self) -> None:
        super().__init__("geodns", strict_supports=False)


@functools.cache
def octodns_records(name: str) -> tuple[Any, ...]:
    """The records of a corpus zone as octoDNS loads them (loaded once: octoDNS is slow), in
    one order: octoDNS keeps a set, whose order changes from one process to the next, and the
    tests parametrized by them must be collected alike by every process (pytest-xdist)."""
    records = octodns_zone(CORPUS, name).records
    return tuple(sorted(records, key=lambda r: (r.name, r._type)))


def octodns_zone(directory: Path, name: str) -> OctoZone:
    """The zone as octoDNS loads it (YamlProvider, key order enforced) and validates it."""
    provider = YamlProvider(
        "config", str(directory), supports_root_ns=True, escaped_semicolons=True
    )
    zone = OctoZone(f"{name}.", [])
    provider.populate(zone)
    zone.validate()
    return zone


def octodns_verdict(
    zone: OctoZone, caplog: pytest.LogCaptureFixture
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(served, skipped) as (name, type): what octoDNS leaves for geodns, what it drops."""
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        processed = GeodnsTarget()._process_desired_zone(zone)
    skipped = set()
    for message in caplog.messages:
        found = re.match(r"(\S+) records not supported for (\S+);", message)
        if found:
            skipped.add((found[2].removesuffix(zone.name).rstrip("."), found[1]))
    served = set()
    for record in processed.records:
        if record.ignored:  # octoDNS never syncs it: skipped too
            skipped.add((record.name, record._type))
        else:
            served.add((record.name, record._type))
    return served, skipped


def geodns_zone(path: Path, nameservers: tuple[str, ...] = ()) -> Zone:
    return load_zone_file(path, SoaSettings(), DynamicCompilerForSites({}).compile, nameservers)


def geodns_served(zone: Zone) -> set[tuple[str, str]]:
    served = set()
    for name, node in zone.nodes.items():
        relative = "" if name == zone.origin else name[: -len(zone.origin) - 1]
        served |= {(relative, type_name(rtype)) for rtype in node if rtype != TYPE_SOA}
    return served


def geodns_skipped(zone: Zone) -> set[tuple[str, str]]:
    skipped = set()
    for warning in zone.warnings:
        found = re.match(r"(\S+) record '([^']*)' skipped", warning.message)
        if found:
            skipped.add((found[2], found[1]))
    return skipped


# -- what loads, what is skipped ------------------------------------------------------------------


@pytest.mark.parametrize("name", CORPUS_ZONES)
def test_octodns_and_geodns_serve_and_skip_the_same_records(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    octo = octodns_zone(CORPUS, name)
    served, skipped = octodns_verdict(octo, caplog)
    zone = geodns_zone(CORPUS / f"{name}.yaml", tuple(NAMESERVERS))
    ours = geodns_served(zone)
    if ("", "ALIAS") in served:  # an apex ALIAS is served as the A/AAAA of its target
        served.discard(("", "ALIAS"))
        assert ("", "A") in ours
        ours -= {("", "A"), ("", "AAAA")}
    if octo.root_ns is None:  # answered with the config's nameservers, and said so
        ours.discard(("", "NS"))
        assert any("no NS record at the apex" in w.message for w in zone.warnings)
    assert ours == served
    assert geodns_skipped(zone) == skipped


def test_the_corpus_has_every_type_octodns_serves_and_one_it_cannot() -> None:
    types = set()
    for name in CORPUS_ZONES:
        types |= {r._type for r in octodns_records(name)}
    assert types >= SERVED_TYPES
    assert "URLFWD" in types


def test_txt_values_mean_the_text_octodns_means_in_the_strings_written() -> None:
    """octoDNS joins a value's chunks into one text; geodns serves each chunk as a string
    (as gdnsd and BIND do): the text a TXT consumer reads, the strings joined, is the same."""
    octo = {
        (r.name, r._type): r for r in octodns_records("unit.tests") if r._type in ("TXT", "SPF")
    }
    zone = geodns_zone(CORPUS / "unit.tests.yaml")
    for (name, rtype), record in octo.items():
        fqdn = f"{name}.unit.tests." if name else "unit.tests."
        rrset = zone.nodes[fqdn][dns.rdatatype.from_text(rtype)]
        ours = sorted(b"".join(rdata.data).decode() for rdata in rrset.rdatas)
        assert ours == sorted(v.replace("\\;", ";") for v in record.values)
        for rdata in rrset.rdatas:
            assert all(len(string) <= 255 for string in rdata.data)
    chunked = zone.nodes["txt.unit.tests."][16].rdatas
    assert [b"first string", b"second string", b"third"] in [list(r.data) for r in chunked]
    long = next(r for r in chunked if len(r.data) == 2)
    assert len(long.data[0]) == 255


# -- what is refused ------------------------------------------------------------------------------

APEX_NS = "  - type: NS\n    values:\n      - ns1.t.tests.\n      - ns2.t.tests.\n"
APEX = "? ''\n:\n" + APEX_NS


def dynamic_a(rules: str, pools: str = "") -> str:
    pools = (
        pools
        or """\
      ams:
        values:
          - value: 192.0.2.1
      iad:
        values:
          - value: 192.0.2.2
"""
    )
    return f"""\
a:
  dynamic:
    pools:
{pools}    rules:
{rules}  type: A
  value: 192.0.2.9
"""


# (case, the records after the apex NS, whether octoDNS accepts it, what geodns's error says)
CASES: list[tuple[str, str, bool, str]] = [
    (
        "country-in-the-wrong-continent",
        dynamic_a("      - geos:\n          - EU-CY\n        pool: ams\n      - pool: iad\n"),
        False,
        r"CY is not a country of EU.*AS-CY",
    ),
    (
        "unknown-continent",
        dynamic_a("      - geos:\n          - XX-ZZ\n        pool: ams\n      - pool: iad\n"),
        False,
        r"unknown continent code 'XX-ZZ'",
    ),
    (
        "unknown-subdivision",
        dynamic_a("      - geos:\n          - NA-US-XX\n        pool: ams\n      - pool: iad\n"),
        False,
        r"not a subdivision of US",
    ),
    (
        "pool-for-two-rules",
        dynamic_a(
            "      - geos:\n          - EU\n        pool: ams\n"
            "      - geos:\n          - AS\n        pool: ams\n      - pool: iad\n"
        ),
        False,
        r"pool 'ams' is already the pool of an earlier rule",
    ),
    (
        "repeated-geo",
        dynamic_a(
            "      - geos:\n          - EU\n        pool: ams\n"
            "      - geos:\n          - EU\n        pool: iad\n      - pool: iad\n"
        ),
        False,
        r"geo EU is already in rule 1",
    ),
    (
        "narrower-geo-after-broader",
        dynamic_a(
            "      - geos:\n          - EU\n          - EU-GB\n        pool: ams\n      - pool: iad\n"
        ),
        False,
        r"geo EU-GB is inside EU",
    ),
    (
        "subnet-with-host-bits",
        dynamic_a(
            "      - pool: ams\n        subnets:\n          - 10.0.0.1/8\n      - pool: iad\n"
        ),
        False,
        r"not a subnet",
    ),
    (
        "subnet-rule-after-geo-rule",
        dynamic_a(
            "      - geos:\n          - EU\n        pool: ams\n"
            "      - pool: iad\n        subnets:\n          - 10.0.0.0/8\n      - pool: iad\n"
        ),
        False,
        r"subnets-only rule comes before",
    ),
    (
        "unused-pool",
        dynamic_a(
            "      - pool: iad\n",
        ),
        False,
        r"no rule and no fallback uses this pool",
    ),
    (
        "fallback-loop",
        dynamic_a(
            "      - geos:\n          - EU\n        pool: ams\n      - pool: iad\n",
            "      ams:\n        fallback: iad\n        values:\n          - value: 192.0.2.1\n"
            "      iad:\n        fallback: ams\n        values:\n          - value: 192.0.2.2\n",
        ),
        False,
        r"fallbacks loop",
    ),
    (
        "last-rule-not-catch-all",
        dynamic_a("      - pool: iad\n      - geos:\n          - EU\n        pool: ams\n"),
        False,
        r"last rule must be the catch-all",
    ),
    (
        "weight-out-of-range",
        dynamic_a(
            "      - geos:\n          - EU\n        pool: ams\n      - pool: iad\n",
            "      ams:\n        values:\n          - value: 192.0.2.1\n            weight: 101\n"
            "          - value: 192.0.2.3\n"
            "      iad:\n        values:\n          - value: 192.0.2.2\n",
        ),
        False,
        r"weight: expected a whole number from 1 to 100",
    ),
    (
        "single-value-with-weight",
        dynamic_a(
            "      - geos:\n          - EU\n        pool: ams\n      - pool: iad\n",
            "      ams:\n        values:\n          - value: 192.0.2.1\n            weight: 5\n"
            "      iad:\n        values:\n          - value: 192.0.2.2\n",
        ),
        False,
        r"only value has weight 1",
    ),
    (
        "ipv6-value-in-an-a-pool",
        dynamic_a(
            "      - geos:\n          - EU\n        pool: ams\n      - pool: iad\n",
            "      ams:\n        values:\n          - value: 2001:db8::1\n"
            "      iad:\n        values:\n          - value: 192.0.2.2\n",
        ),
        False,
        r"expected an IPv4 address",
    ),
    (
        "fallback-to-a-pool-and-subdivisions",
        dynamic_a(
            "      - geos:\n          - NA-US-CA\n          - NA-CA-QC\n        pool: ams\n"
            "      - pool: iad\n",
            "      ams:\n        fallback: iad\n        values:\n          - status: up\n"
            "            value: 192.0.2.1\n"
            "      iad:\n        values:\n          - status: down\n            value: 192.0.2.2\n"
            "          - value: 192.0.2.3\n            weight: 100\n",
        ),
        True,
        "",
    ),
    (
        "unescaped-semicolon",
        "txt:\n  type: TXT\n  value: v=DKIM1; k=rsa\n",
        False,
        r"unescaped ';'",
    ),
    ("non-ascii-text", "txt:\n  type: TXT\n  value: caf\u00e9\n", False, r"non-ASCII"),
    (
        "srv-name",
        "www:\n  type: SRV\n  value:\n    port: 1\n    priority: 1\n    target: x.t.tests.\n    weight: 1\n",
        False,
        r"_service._proto",
    ),
    (
        "uri-name",
        "www:\n  type: URI\n  value:\n    priority: 1\n    target: http://x\n    weight: 1\n",
        False,
        r"_service._proto",
    ),
    (
        "alias-below-the-apex",
        "www:\n  type: ALIAS\n  value: x.t.tests.\n",
        False,
        r"only at the zone apex",
    ),
    ("cname-at-the-apex", "? ''\n: type: CNAME\n  value: x.t.tests.\n", False, r"CNAME"),
    (
        "cname-beside-a",
        "www:\n  - type: A\n    value: 192.0.2.1\n  - type: CNAME\n    value: x.t.tests.\n",
        False,
        r"CNAME",
    ),
    (
        "sshfp-algorithm",
        "s:\n  type: SSHFP\n  value:\n    algorithm: 9\n    fingerprint: bf6b6825d2977c511a475bbefb88aad54a92ac73\n    fingerprint_type: 1\n",
        False,
        r"algorithm: expected 1",
    ),
    (
        "sshfp-length",
        "s:\n  type: SSHFP\n  value:\n    algorithm: 1\n    fingerprint: bf6b68\n    fingerprint_type: 1\n",
        False,
        r"takes 40 hex digits",
    ),
    (
        "tlsa-usage",
        "_443._tcp:\n  type: TLSA\n  value:\n    certificate_association_data: abcd\n    certificate_usage: 4\n    matching_type: 1\n    selector: 1\n",
        False,
        r"certificate_usage",
    ),
    (
        "loc-latitude",
        "l:\n  type: LOC\n  value:\n    altitude: 0\n    lat_degrees: 91\n    lat_direction: N\n    lat_minutes: 0\n    lat_seconds: 0\n    long_degrees: 0\n    long_direction: E\n    long_minutes: 0\n    long_seconds: 0\n    precision_horz: 1\n    precision_vert: 1\n    size: 1\n",
        False,
        r"lat_degrees",
    ),
    (
        "naptr-flags",
        "n:\n  type: NAPTR\n  value:\n    flags: X\n    order: 1\n    preference: 1\n    regexp: ''\n    replacement: .\n    service: x\n",
        False,
        r"flags",
    ),
    (
        "caa-missing-tag",
        APEX + "  - type: CAA\n    value:\n      flags: 0\n      value: ca.example\n",
        False,
        r"missing tag",
    ),
    (
        "mx-missing-exchange",
        "m:\n  type: MX\n  value:\n    preference: 10\n",
        False,
        r"missing exchange",
    ),
    (
        "ds-missing-digest-type",
        "d:\n  type: DS\n  value:\n    algorithm: 13\n    digest: abcd\n    key_tag: 1\n",
        False,
        r"missing digest_type",
    ),
    (
        "svcb-aliasmode-with-params",
        "_x.s:\n  type: SVCB\n  value:\n    svcparams:\n      port: 1\n    svcpriority: 0\n    targetname: x.t.tests.\n",
        False,
        r"AliasMode",
    ),
    (
        "svcb-unknown-param",
        "_x.s:\n  type: SVCB\n  value:\n    svcparams:\n      color: blue\n    svcpriority: 1\n    targetname: x.t.tests.\n",
        False,
        r"unknown SvcParamKey",
    ),
    (
        "https-bad-hint",
        APEX
        + "  - type: HTTPS\n    value:\n      svcparams:\n        ipv4hint:\n          - 2001:db8::1\n      svcpriority: 1\n      targetname: .\n",
        False,
        r"IPv4",
    ),
    ("a-bad-address", "a:\n  type: A\n  value: 192.0.2.300\n", False, r"IPv4"),
    ("at-name", "'@':\n  type: A\n  value: 192.0.2.1\n", False, r"'@'"),
    (
        "duplicate-type",
        "a:\n  - type: A\n    value: 192.0.2.1\n  - type: A\n    value: 192.0.2.2\n",
        False,
        r"second A record",
    ),
    (
        "geo-with-dynamic",
        "a:\n  dynamic:\n    pools:\n      p:\n        values:\n          - value: 192.0.2.1\n    rules:\n      - pool: p\n  geo:\n    EU:\n      - 192.0.2.2\n  type: A\n  value: 192.0.2.3\n",
        False,
        r"'dynamic' or octoDNS's old 'geo'",
    ),
    (
        "healthcheck-protocol",
        "a:\n  dynamic:\n    pools:\n      p:\n        values:\n          - value: 192.0.2.1\n    rules:\n      - pool: p\n  octodns:\n    healthcheck:\n      protocol: FTP\n  type: A\n  value: 192.0.2.3\n",
        False,
        r"protocol",
    ),
    (
        "null-mx-and-no-service-srv",
        APEX
        + "  - type: MX\n    value:\n      exchange: .\n      preference: 0\n_x._tcp:\n  type: SRV\n  value:\n    port: 0\n    priority: 0\n    target: .\n    weight: 0\n",
        True,
        "",
    ),
    (
        "dname-with-dynamic",
        "d:\n  dynamic:\n    pools:\n      p:\n        values:\n          - value: x.t.tests.\n    rules:\n      - pool: p\n  type: DNAME\n  value: y.t.tests.\n",
        True,
        "",
    ),
    (
        "icmp-healthcheck",
        "a:\n  dynamic:\n    pools:\n      p:\n        values:\n          - value: 192.0.2.1\n    rules:\n      - pool: p\n  octodns:\n    healthcheck:\n      protocol: ICMP\n  type: A\n  value: 192.0.2.3\n",
        True,
        "",
    ),
]


@pytest.mark.parametrize("case,records,accepted,message", CASES, ids=[c[0] for c in CASES])
def test_octodns_and_geodns_refuse_the_same_zones(
    tmp_path: Path, case: str, records: str, accepted: bool, message: str
) -> None:
    text = "---\n" + ("" if records.startswith("? ''") else APEX) + records
    path = tmp_path / "t.tests.yaml"
    path.write_text(text)
    try:
        octodns_zone(tmp_path, "t.tests")
        octodns_accepts = True
    except Exception:  # ValidationError, an unknown type, a zone validator's reasons...
        octodns_accepts = False
    assert octodns_accepts == accepted, f"octoDNS {'refuses' if accepted else 'accepts'}:\n{text}"
    try:
        geodns_zone(path, tuple(NAMESERVERS))
        geodns_accepts, errors = True, []
    except ConfigError as exc:
        geodns_accepts = False
        errors = [p for p in exc.problems if p.is_error]
    assert geodns_accepts == accepted, f"{case}: geodns {errors}"
    if not accepted:
        assert any(re.search(message, p.message) and p.line > 0 for p in errors), errors


# -- what dynamic records answer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    entries = [
        (subnet, city_record(country, continent, 0.0, 0.0, None, subdivision))
        for subnet, country, continent, subdivision in GEOS.values()
        if country
    ]
    return write_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb", entries)


@pytest.fixture(scope="module")
def corpus(city_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Zones:
    texts = {name: (CORPUS / f"{name}.yaml").read_text() for name in CORPUS_ZONES}
    config = {"geoip": {"database": str(city_db)}, "nameservers": NAMESERVERS}
    return Zones(tmp_path_factory.mktemp("corpus"), texts, config)


def octodns_pool_values(record: Any, geo: str) -> set[str]:
    """The values octoDNS's rules give a user in `geo`: the first rule that matches (subnets
    and geos, with octoDNS's continent of the country), then down its fallback chain past pools
    whose values are all `status: down`, else the record's own values."""
    subnet, country, _, subdivision = GEOS[geo]
    address = ipaddress.ip_network(subnet).network_address
    codes: set[str] = set()
    if country:
        code = GeoCodes.country_to_code(country)
        codes = {code.split("-")[0], code, f"{code}-{subdivision}"}
    pools = record.dynamic.pools
    name = None
    for rule in record.dynamic.rules:
        data = rule.data
        if data.get("subnets") and not any(
            address in ipaddress.ip_network(s) for s in data["subnets"]
        ):
            continue
        if data.get("geos") and not codes & set(data["geos"]):
            continue
        name = data["pool"]
        break
    while name is not None:
        up = {str(v["value"]) for v in pools[name].data["values"] if v["status"] != "down"}
        if up:
            return up
        name = pools[name].data["fallback"]
    return {str(v) for v in record.values} if hasattr(record, "values") else {str(record.value)}


def dynamic_cases() -> Iterator[tuple[str, str, str]]:
    for zone in CORPUS_ZONES:
        for record in octodns_records(zone):
            if getattr(record, "dynamic", None) and record._type in ("A", "AAAA", "CNAME"):
                for geo in GEOS:
                    yield zone, record.name, geo


@pytest.mark.parametrize("zone,name,geo", list(dynamic_cases()))
def test_dynamic_answers_are_the_pool_octodns_rules_name(
    corpus: Zones, zone: str, name: str, geo: str
) -> None:
    record = next(
        r for r in octodns_records(zone) if r.name == name and getattr(r, "dynamic", None)
    )
    expected = octodns_pool_values(record, geo)
    fqdn = f"{name}.{zone}." if name else f"{zone}."
    qtype = "A" if record._type == "CNAME" else record._type  # what a user's resolver asks
    seen = set()
    for query_id in QUERY_IDS:
        reply = corpus.ask(fqdn, qtype, ecs=GEOS[geo][0], query_id=query_id)
        first = reply.answer[0]
        assert first.rdtype == dns.rdatatype.from_text(record._type)
        seen |= {rr.to_text() for rr in first}
        if record._type == "CNAME":  # an in-zone target with data is followed, as static CNAMEs are
            target = first[0].target.to_text()
            assert reply.answer[1:] == corpus.ask(target, "A").answer
    assert seen == expected


def test_a_cyprus_user_matches_an_asia_rule_as_in_octodns(corpus: Zones) -> None:
    reply = corpus.ask("real-ish-a.dynamic.tests.", "A", ecs=GEOS["cy"][0])
    assert {rr.to_text() for rr in reply.answer[0]} <= {
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
    }


def test_the_apex_alias_answers_from_its_dynamic_target_and_the_config_nameservers(
    corpus: Zones,
) -> None:
    apex = "alias.tests."
    assert [rr.to_text() for rr in corpus.ask(apex, "A", ecs=GEOS["jp"][0]).answer[0]] == [
        "203.0.113.1"
    ]
    assert [rr.to_text() for rr in corpus.ask(apex, "A", ecs=GEOS["fr"][0]).answer[0]] == [
        "198.51.100.1"
    ]
    assert [rr.to_text() for rr in corpus.ask(apex, "AAAA").answer[0]] == ["2001:db8::1"]
    assert str(corpus.ask(apex, "A").answer[0].name) == apex
    ns = corpus.ask(apex, "NS").answer[0]
    assert sorted(rr.to_text() for rr in ns) == NAMESERVERS


def test_a_real_server_answers_the_corpus(city_db: Path) -> None:
    """End to end: the dynamic CNAME from Europe (followed in-zone), the octoDNS-chunked TXT as
    three strings, and a name below the DNAME, from a `geodns serve` process."""
    zones = {name: (CORPUS / f"{name}.yaml").read_text() for name in CORPUS_ZONES}
    config = {"geoip": {"database": str(city_db)}, "nameservers": NAMESERVERS}
    with GeodnsServer(config, zones, ready_qname="dynamic.tests") as server:
        reply = server.query("cname.dynamic.tests", "A", ecs=GEOS["fr"][0])
        assert [rrset.to_text().split()[-1] for rrset in reply.answer] == [
            "target-ams.dynamic.tests.",
            "192.0.2.101",
        ]
        reply = server.query("txt.unit.tests", "TXT", tcp=True)
        strings = sorted(tuple(rr.strings) for rr in reply.answer[0])
        assert (b"first string", b"second string", b"third") in strings
        reply = server.query("www.dname.unit.tests", "A")
        assert [rrset.rdtype for rrset in reply.answer] == [
            dns.rdatatype.DNAME,
            dns.rdatatype.CNAME,
            dns.rdatatype.A,
        ]
        assert reply.answer[2][0].to_text() == "192.0.2.6"
        assert "URLFWD record 'urlfwd' skipped" in server.stderr_text()  # logged as at check

"""Every record type geodns serves is encoded on the wire as dnspython encodes what octoDNS means.

For each value: octoDNS loads it and renders it in presentation format (its `to_rrset()`, what
it sends a provider), dnspython turns that text into wire rdata, and geodns's rdata for the same
YAML value must be those very bytes. The values are the corpus's (tests/octodns_corpus) plus edge
values of the types geodns encodes itself (LOC's size and precision encoding, SVCB parameters,
octoDNS's deprecated DS field names). Errors in values name the field's line and column.
"""

from __future__ import annotations

from pathlib import Path

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from dnslib import DNSBuffer
from octodns.provider.yaml import YamlProvider
from octodns.zone import Zone as OctoZone

from geodns.common.errors import ConfigError
from geodns.config.rdata import TYPE_CODES
from geodns.config.zonefile import SoaSettings, load_zone_file
from geodns.geo.compile import DynamicCompilerForSites

pytestmark = [
    pytest.mark.filterwarnings("ignore:`geo` records are DEPRECATED"),
    pytest.mark.filterwarnings("ignore:DS properties"),
]
CORPUS = Path(__file__).resolve().parent / "octodns_corpus"
NS = "? ''\n: - type: NS\n    values:\n      - ns1.w.tests.\n      - ns2.w.tests.\n"

# edge values, as YAML records at one name each (keys sorted, as octoDNS requires)
EDGES = """\
dsold:
  type: DS
  value:
    algorithm: 1
    flags: 12345
    protocol: 8
    public_key: 49fd46e6c4b45c55d4ac69cbd3cd34ac1afe51de
loc:
  type: LOC
  values:
    - altitude: 42849672.95
      lat_degrees: 90
      lat_direction: N
      lat_minutes: 0
      lat_seconds: 0
      long_degrees: 180
      long_direction: W
      long_minutes: 59
      long_seconds: 59.999
      precision_horz: 90000000
      precision_vert: 0
      size: 0
    - altitude: -100000
      lat_degrees: 0
      lat_direction: S
      lat_minutes: 0
      lat_seconds: 0.001
      long_degrees: 0
      long_direction: E
      long_minutes: 0
      long_seconds: 0
      precision_horz: 0.01
      precision_vert: 123.45
      size: 7
svcb._x:
  type: SVCB
  values:
    - svcparams:
        alpn:
          - h3
        key65000: hello
        no-default-alpn:
        port: 0
      svcpriority: 65535
      targetname: svc.example.
tlsa._25._tcp:
  type: TLSA
  value:
    certificate_association_data: 3082010a
    certificate_usage: 0
    matching_type: 0
    selector: 0
"""


def geodns_rdatas(path: Path) -> dict[tuple[str, int], list[bytes]]:
    zone = load_zone_file(path, SoaSettings(), DynamicCompilerForSites({}).compile)
    found = {}
    for name, node in zone.nodes.items():
        for rtype, rrset in node.items():
            wires = []
            for rdata in rrset.rdatas:
                buffer = DNSBuffer()  # empty: nothing to compress against
                rdata.pack(buffer)
                wires.append(bytes(buffer.data))
            found[(name, rtype)] = sorted(wires)
    return found


def octodns_rdatas(directory: Path, origin: str) -> dict[tuple[str, int], list[bytes]]:
    provider = YamlProvider("c", str(directory), supports_root_ns=True, escaped_semicolons=True)
    zone = OctoZone(origin, [])
    provider.populate(zone)
    found = {}
    for record in zone.records:
        if record._type not in TYPE_CODES or record.ignored:
            continue
        rrset = record.to_rrset()
        rtype = dns.rdatatype.from_text(record._type)
        wires = [
            dns.rdata.from_text(dns.rdataclass.IN, rtype, text).to_wire() for text in rrset.rdatas
        ]
        found[(record.fqdn, rtype)] = sorted(wires)
    return found


@pytest.mark.parametrize("zone", ["unit.tests", "dynamic.tests", "edges"])
def test_every_value_is_encoded_as_dnspython_encodes_octodns_text(
    tmp_path: Path, zone: str
) -> None:
    if zone == "edges":
        (tmp_path / "w.tests.yaml").write_text("---\n" + NS + EDGES)
        directory, origin = tmp_path, "w.tests."
    else:
        directory, origin = CORPUS, f"{zone}."
    ours = geodns_rdatas(directory / f"{origin}yaml")
    theirs = octodns_rdatas(directory, origin)
    compared = 0
    for key, wires in theirs.items():
        if key[1] in (16, 99):  # TXT/SPF: octoDNS joins chunks (tests/test_octodns_corpus.py)
            continue
        if key in ours:
            assert ours[key] == wires, key
            compared += 1
    assert compared >= (20 if zone == "unit.tests" else 4)


@pytest.mark.parametrize(
    "record,line,column,phrase",
    [
        (
            "s:\n  type: SSHFP\n  value:\n    algorithm: 9\n    fingerprint: ab\n    fingerprint_type: 1\n",
            4,
            5,
            "SSHFP algorithm: expected 1 (RSA)",
        ),
        (
            "s:\n  type: SSHFP\n  value:\n    algorithm: 1\n    fingerprint: xyz\n    fingerprint_type: 1\n",
            5,
            5,
            "hexadecimal",
        ),
        (
            "m:\n  type: MX\n  value:\n    exchange: mx.w.tests.\n    preference: 70000\n",
            5,
            5,
            "0 to 65535",
        ),
        (
            "m:\n  type: MX\n  value:\n    exchange: mx.w.tests.\n    prefrence: 10\n",
            5,
            5,
            "did you mean 'preference'",
        ),
        ("c:\n  type: CNAME\n  value: elsewhere.example\n", 3, 3, "must end with '.'"),
        ("t:\n  type: TXT\n  values:\n    - fine\n    - v=spf1; -all\n", 5, 7, "unescaped ';'"),
        (
            "h:\n  type: HTTPS\n  value:\n    svcparams:\n      port: http\n    svcpriority: 1\n    targetname: .\n",
            5,
            7,
            "svcparams.port: expected a port number",
        ),
    ],
)
def test_a_bad_value_is_reported_at_its_field(
    tmp_path: Path, record: str, line: int, column: int, phrase: str
) -> None:
    path = tmp_path / "w.tests.yaml"
    path.write_text(NS + record)
    with pytest.raises(ConfigError) as caught:
        load_zone_file(path, SoaSettings(), DynamicCompilerForSites({}).compile)
    problems = [(p.line - 5, p.column, p.message) for p in caught.value.problems if p.is_error]
    assert any((at, c) == (line, column) and phrase in m for at, c, m in problems), problems

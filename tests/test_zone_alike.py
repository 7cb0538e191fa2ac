"""Records written alike are read and compiled once (geodns.config.zonefile): a zone of
thousands of names with one nearest-PoP record costs one record's work. What must not change:
every name answers as if its record were written alone, and whatever depends on the name (an
octoDNS healthcheck's host, a service type's name check, a warning's line) is still per name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mmdb_factory import city_record, write_city_db
from server_process import GeodnsServer
from test_geo_answers import SITE_OF, SITES, V4, addresses, scope_of

from geodns.common.errors import ConfigError
from geodns.config.server import load_config
from geodns.config.zonefile import SoaSettings, load_zone_file
from geodns.geo.compile import DynamicCompilerForSites

NAMES = 40
NEAREST = {
    "type": "A",
    "ttl": 30,
    "values": V4,
    "octodns": {"geodns": {"nearest": True}},
}
APEX_NS = {"type": "NS", "values": ["ns1.example.net.", "ns2.example.net."]}


class _WrittenOut(yaml.SafeDumper):
    """Every record written in full, as octoDNS writes a zone (no YAML anchors)."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def zone_text(records: dict[str, object], *, aliases: bool) -> str:
    dumper = yaml.SafeDumper if aliases else _WrittenOut
    return yaml.dump(records, Dumper=dumper, sort_keys=False)


def zone_file(directory: Path, text: str, zone: str) -> tuple[Path, DynamicCompilerForSites]:
    """`text` written as the zone file of `zone` in `directory`, and a compiler of SITES."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump({"sites": SITES, "zones_dir": "."}))
    path = directory / f"{zone}.yaml"
    path.write_text(text)
    return path, DynamicCompilerForSites(load_config(config).sites)


def load(tmp_path: Path, text: str, zone: str = "alike.test"):
    path, compiler = zone_file(tmp_path, text, zone)
    # a fixed serial: by default it is the file's modification time, which differs between two
    # files written a moment apart
    return load_zone_file(path, SoaSettings(serial=1), compiler.compile), compiler


@pytest.mark.parametrize("aliases", [False, True], ids=["written-out", "yaml-aliases"])
def test_each_name_gets_its_own_record_with_the_shared_parts(tmp_path: Path, aliases: bool) -> None:
    records: dict[str, object] = {"": APEX_NS}
    records.update({f"n{i}": NEAREST for i in range(NAMES)})
    zone, _ = load(tmp_path, zone_text(records, aliases=aliases))
    dynamic = [zone.nodes[f"n{i}.alike.test."][1].dynamic for i in range(NAMES)]
    assert [d.owner for d in dynamic] == [f"n{i}.alike.test." for i in range(NAMES)]
    assert len({id(d) for d in dynamic}) == NAMES  # one record per name...
    assert len({id(d.candidates) for d in dynamic}) == 1  # ...sharing what they have alike
    alone, _ = load(tmp_path / "alone", zone_text({"": APEX_NS, "n7": NEAREST}, aliases=False))
    single = alone.nodes["n7.alike.test."][1].dynamic
    for field in ("rtype", "ttl", "nearest", "answers", "default_order", "all_down"):
        assert getattr(dynamic[7], field) == getattr(single, field), field
    assert [c.name for c in dynamic[7].candidates] == [c.name for c in single.candidates]
    rrsets = [zone.nodes[f"n{i}.alike.test."][1] for i in range(NAMES)]
    assert [r.line for r in rrsets] == sorted({r.line for r in rrsets}) or aliases


def test_a_healthcheck_probes_each_name_of_its_own(tmp_path: Path) -> None:
    """octoDNS's healthcheck host defaults to the record's name: never shared between names."""
    checked = {
        "type": "A",
        "ttl": 30,
        "values": ["198.51.100.1", "198.51.100.2"],
        "dynamic": {
            "pools": {"one": {"values": [{"value": "198.51.100.1"}, {"value": "198.51.100.2"}]}},
            "rules": [{"pool": "one"}],
        },
        "octodns": {"healthcheck": {"path": "/health", "protocol": "HTTP", "port": 80}},
    }
    text = zone_text({"": APEX_NS, "a": checked, "b": checked}, aliases=False)
    _, compiler = load(tmp_path, text)
    hosts = {check.host for site in compiler.implicit_sites.values() for check in site.checks}
    assert hosts == {"a.alike.test", "b.alike.test"}


def test_warnings_of_records_written_alike_name_every_line(tmp_path: Path) -> None:
    warned = {"type": "A", "value": "192.0.2.9", "geo": {"EU": ["192.0.2.10"]}}
    text = zone_text({"": APEX_NS, "a": warned, "b": warned, "c": warned}, aliases=False)
    zone, _ = load(tmp_path, text)
    lines = [w.line for w in zone.warnings if "deprecated 'geo'" in w.message]
    assert len(lines) == 3 and len(set(lines)) == 3


def test_a_service_record_written_alike_is_checked_at_each_name(tmp_path: Path) -> None:
    srv = {"type": "SRV", "value": {"priority": 1, "weight": 1, "port": 5060, "target": "x."}}
    text = zone_text({"": APEX_NS, "_sip._udp": srv, "sip": srv}, aliases=False)
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, text)
    messages = [p.message for p in refused.value.problems if p.is_error]
    assert len(messages) == 1 and "'sip'" in messages[0], messages


def test_names_written_alike_answer_like_one_name_and_follow_a_drain(tmp_path: Path) -> None:
    """A real server: every name of a zone written out in full answers each client's nearest
    site, with the same scope, and all of them leave a drained site."""
    db = tmp_path / "city.mmdb"
    write_city_db(
        db,
        [
            ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
            ("85.0.0.0/16", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
            ("127.0.0.0/8", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
        ],
    )
    records: dict[str, object] = {"": APEX_NS}
    records.update({f"n{i}": NEAREST for i in range(NAMES)})
    config = {"sites": SITES, "geoip": {"database": str(db)}}
    with GeodnsServer(config, {"alike.test": zone_text(records, aliases=False)}) as server:
        asked = [0, 17, NAMES - 1]
        for subnet, site in (("36.64.1.0/24", "jkt"), ("85.0.1.0/24", "fra")):
            for i in asked:
                reply = server.query(f"n{i}.alike.test", "A", ecs=subnet)
                assert [SITE_OF[a] for a in addresses(reply)] == [site], (i, subnet)
                assert scope_of(reply) == 16
        drained = server.cli("drain", "jkt", "--reason", "test")
        assert drained.returncode == 0, drained.stderr
        for i in asked:
            reply = server.query(f"n{i}.alike.test", "A", ecs="36.64.1.0/24")
            assert [SITE_OF[a] for a in addresses(reply)] == ["sin"], i


# -- blocks written alike parsed once (yamlsrc.RepeatedBlocks, Moved): the zone is the same

DYNAMIC_CNAME = {
    "type": "CNAME",
    "value": "fallback.example.net.",
    "dynamic": {
        "pools": {"web": {"values": [{"value": "n0.alike.test."}]}},
        "rules": [{"pool": "web"}],
    },
}
ALIKE_KINDS = [
    NEAREST,
    {"type": "A", "value": "192.0.2.9", "geo": {"EU": ["192.0.2.10"]}},  # a warning
    {"type": "A", "values": ["192.0.2.1", "not an address"], "octodns": {"lenient": True}},
    {"type": "TXT", "value": "same words"},
    DYNAMIC_CNAME,
    [{"type": "A", "value": "192.0.2.5"}, {"type": "TXT", "value": "two records"}],
    {"type": "A", "value": "192.0.2.7", "octodns": {"geodns": {"nearest": "yes"}}},  # an error
    {"type": "NS", "values": ["ns.alike.test."]},  # a delegation without glue: a zone's error
]


def described_zone(zone: object) -> object:
    """Everything a loaded zone says, lines included, as comparable values."""
    nodes = zone.nodes  # type: ignore[attr-defined]
    return (
        sorted(
            (
                name,
                rtype,
                rrset.ttl,
                [str(r) for r in rrset.rdatas],
                rrset.line,
                repr(rrset.dynamic),
            )
            for name, node in nodes.items()
            for rtype, rrset in node.items()
        ),
        [(w.line, w.column, w.message) for w in zone.warnings],  # type: ignore[attr-defined]
    )


def zone_outcome(tmp_path: Path, text: str) -> object:
    try:
        zone, _ = load(tmp_path, text)
    except ConfigError as refused:
        return "refused", [(p.line, p.column, p.severity, p.message) for p in refused.problems]
    return "loaded", described_zone(zone)


def test_zones_of_blocks_written_alike_load_as_if_each_were_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zones with records of every kind written out alike many times (a warning, an error, a
    lenient record, a dynamic CNAME, a list), then garbled at random places: loaded with the
    repeats parsed once and copied (or not copied at all, when read alike before), each gives
    the same zone, lines and problems as parsing every block (a bounded, seeded number)."""
    import random

    from geodns.common import yamlsrc

    rng = random.Random(2181)
    found = yamlsrc.RepeatedBlocks.find
    copied = 0
    for round_ in range(60):
        records: dict[str, object] = {"": APEX_NS}
        for i in range(rng.randrange(5, 30)):
            records[f"n{i}"] = rng.choice(ALIKE_KINDS[:4]) if i == 0 else rng.choice(ALIKE_KINDS)
        text = zone_text(records, aliases=False)
        if round_ % 2:
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(":-&*!{}[],'\"#|> \n\t?x1") + text[at:]
        monkeypatch.setattr(yamlsrc.RepeatedBlocks, "find", found)
        with_copies = zone_outcome(tmp_path / "copies", text)
        copied += yamlsrc.RepeatedBlocks.find(text) is not None
        monkeypatch.setattr(
            yamlsrc.RepeatedBlocks, "find", classmethod(lambda cls, text, *rest: None)
        )
        assert with_copies == zone_outcome(tmp_path / "parsed", text), text
    assert copied > 40

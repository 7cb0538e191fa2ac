"""A reload takes each block of a zone file whose lines did not change as the last load read it
(yamlsrc.KnownBlocks, config.loader.ZoneBlocks): neither parsed nor read again. What must not
change: the zone, its lines and its problems are exactly what reading the whole file gives,
wherever the block now stands and whatever changed around it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from array import array
from pathlib import Path

import pytest
import yaml
from server_process import GeodnsServer
from test_zone_alike import (
    ALIKE_KINDS,
    APEX_NS,
    NEAREST,
    SITES,
    _WrittenOut,
    described_zone,
    zone_file,
)

from geodns.common.errors import ConfigError
from geodns.common.yamlsrc import NO_HASH, Layout, RepeatedBlocks
from geodns.config.server import load_config
from geodns.config.zonefile import LastLoad, SoaSettings, read_zone_file
from geodns.dns.zone import Zone, changed_names
from geodns.geo.answers import Shape
from geodns.geo.dynamic import DynamicRecord
from geodns.serving.snapshot import record_shapes

ZONE = "reuse.test"
HEALTHCHECKED = {
    "type": "A",
    "values": ["198.51.100.1", "198.51.100.2"],
    "dynamic": {
        "pools": {"one": {"values": [{"value": "198.51.100.1"}, {"value": "198.51.100.2"}]}},
        "rules": [{"pool": "one", "geos": ["EU"]}, {"pool": "one"}],
    },
    "octodns": {"healthcheck": {"path": "/health", "protocol": "HTTP", "port": 80}},
}
GEO_RULES = {  # pools and rules that name their lines (a copy compiled alike: the first's)
    "type": "A",
    "values": ["192.0.2.9"],
    "dynamic": {
        "pools": {"eu": {"values": [{"value": "192.0.2.10"}]}},
        "rules": [{"pool": "eu", "geos": ["EU"]}, {"pool": "eu"}],
    },
}
KINDS = [
    *ALIKE_KINDS,
    HEALTHCHECKED,  # a site of its own, and pools and rules that name their lines
    GEO_RULES,
    {"type": "TXT", "value": "kept\nline breaks\n\n"},  # written as a block scalar, `|+`
    {"type": "MX", "values": [{"preference": 10, "exchange": "mx.reuse.test."}]},
    {"type": "AAAA", "value": "2001:db8::1", "ttl": 60},
    {"type": "DNAME", "value": "elsewhere.test."},  # the names below it are left out
]


def blocks_of(text: str) -> tuple[str, list[str]]:
    """The text before the first top-level block, and the blocks (a line at column 0 that is
    no comment and no sequence's dash starts one, as in yamlsrc)."""
    starts = [m.start() + 1 for m in re.finditer(r"\n[^\s#%:-]", text)]
    if text[:1] and text[:1] not in " \t\n#%:-":
        starts.insert(0, 0)
    if not starts:
        return text, []
    bounds = zip(starts, [*starts[1:], len(text)], strict=True)
    return text[: starts[0]], [text[a:b] for a, b in bounds]


def written(records: dict[str, object]) -> str:
    text = yaml.dump(records, Dumper=_WrittenOut, sort_keys=False, allow_unicode=True)
    return text.replace("|-\n", "|+\n")  # keep a block scalar's line breaks, as some files do


def mutated(text: str, rng: random.Random) -> str:
    """The next version of a zone file: a block changed, added, removed, moved, repeated, a
    name in other letters, a directive, a block scalar before unchanged blocks, a character
    anywhere, the apex moved down, a name's records split over two blocks, a name below
    another (or below an empty name), a delegation with its glue, an apex ALIAS, or
    nothing."""
    prologue, blocks = blocks_of(text)
    at = rng.randrange(1, max(len(blocks) - 1, 2))
    kind = rng.randrange(15)
    if kind == 0:  # a record changed
        name = blocks[at].split(":", 1)[0]
        blocks[at] = written({name: rng.choice(KINDS)})
    elif kind == 1:  # a record added, the lines below it moved
        blocks.insert(at, written({f"new{rng.randrange(10**6)}": rng.choice(KINDS)}))
    elif kind == 2 and len(blocks) > 3:  # a record removed
        del blocks[at]
    elif kind == 3:  # two records swapped
        other = rng.randrange(1, len(blocks))
        blocks[at], blocks[other] = blocks[other], blocks[at]
    elif kind == 4:  # a block written twice: a duplicate key
        blocks.insert(rng.randrange(1, len(blocks) + 1), blocks[at])
    elif kind == 5:  # the same name in capitals: a second record of a type at a name
        blocks.insert(at, blocks[at][:1].upper() + blocks[at][1:])
    elif kind == 6:
        prologue = "%TAG !e! tag:example.com,2000:\n---\n" + prologue
    elif kind == 7:  # a block scalar that keeps its line breaks, above unchanged blocks
        blocks.insert(at, "kept:\n  type: TXT\n  value: |+\n    two\n\n\n")
    elif kind == 8:
        text = prologue + "".join(blocks)
        place = rng.randrange(len(text) + 1)
        return text[:place] + rng.choice(":-&*!{}[],'\"#|> \n\t?x1") + text[place:]
    elif kind == 9:  # the apex below other names: its node gains the SOA, not the kept one
        apex = next((b for b in blocks if b.startswith("? ''")), None)
        if apex is not None:
            blocks.remove(apex)
            blocks.insert(rng.randrange(1, len(blocks) + 1), apex)
    elif kind == 10:  # the same name in capitals with another type: one node, two blocks
        name = blocks[at].split(":", 1)[0]
        if name.isalnum():
            twin = {name.upper(): {"type": "TXT", "value": "twin"}}
            blocks.insert(rng.randrange(1, len(blocks) + 1), written(twin))
    elif kind == 11:  # a name below another or below a name that holds nothing, or renamed so
        above = blocks[at].split(":", 1)[0] if rng.random() < 0.5 else f"e{rng.randrange(9)}"
        if above.isalnum():
            below = written({f"b{rng.randrange(10**6)}.{above}": rng.choice(KINDS)})
            if rng.random() < 0.5:
                blocks.insert(rng.randrange(1, len(blocks) + 1), below)
            else:  # as many names as before
                other = rng.randrange(1, len(blocks))
                blocks[other] = below.split(":", 1)[0] + ":" + blocks[other].split(":", 1)[-1]
    elif kind == 12:  # a delegation and its glue
        cut = f"sub{rng.randrange(10**6)}"
        delegation = {"type": "NS", "values": [f"ns.{cut}.{ZONE}."]}
        glue = {"type": "A", "value": "192.0.2.53"}
        blocks.insert(at, written({cut: delegation, f"ns.{cut}": glue}))
    elif kind == 13:  # an apex ALIAS (the apex holds its target's records), or none again
        apex = next((i for i, b in enumerate(blocks) if b.startswith("? ''")), None)
        target = blocks[at].split(":", 1)[0]
        if apex is not None and "ALIAS" in blocks[apex]:
            blocks[apex] = written({"": APEX_NS})
        elif apex is not None and target.isalnum():
            alias = {"type": "ALIAS", "value": f"{target}.{ZONE}."}
            blocks[apex] = written({"": [APEX_NS, alias]})
    return prologue + "".join(blocks)


def read(
    directory: Path, text: str, known: LastLoad | None, serial: int = 1
) -> tuple[object, LastLoad | None, Zone | None]:
    """(everything the load says, what it left for the next, the zone) of `text` as the zone
    file."""
    path, compiler = zone_file(directory, text, ZONE)
    try:
        zone, kept = read_zone_file(path, SoaSettings(serial=serial), compiler.compile, (), known)
    except ConfigError as refused:
        problems = [(p.line, p.column, p.severity, p.message) for p in refused.problems]
        return ("refused", problems), None, None
    sites = sorted((name, site.checks) for name, site in compiler.implicit_sites.items())
    return ("loaded", described_zone(zone), whole_zone_facts(zone), sites), kept, zone


def shapes_described(shapes: dict[DynamicRecord, Shape]) -> object:
    """Which records have a shape, each shape's key, and which records share a shape object
    (one object per key)."""
    records = sorted(shapes, key=lambda r: (r.owner, r.rtype))
    objects = [id(shapes[r]) for r in records]
    shared = [objects.index(o) for o in objects]
    assert len(set(objects)) == len({shape.key for shape in shapes.values()})  # one per key
    return [(r.owner, r.rtype, shapes[r].key) for r in records], shared


def whole_zone_facts(zone: Zone) -> object:
    """What the whole-zone checks found: delegations, empty non-terminals, DNAMEs."""
    return sorted(zone.delegations), sorted(zone.empty_non_terminals), sorted(zone.dnames)


def same_objects(before: Zone, after: Zone) -> int:
    """How many RRsets of `after` are the very objects of `before`, or hold its very dynamic
    record (taken, not read again)."""
    count = 0
    for name, node in after.nodes.items():
        for rtype, rrset in node.items():
            old = before.nodes.get(name, {}).get(rtype)
            if old is not None and rtype != 6 and (old is rrset or old.dynamic is rrset.dynamic):
                count += old.dynamic is not None or old is rrset
    return count


def test_reloads_of_changed_zone_files_read_as_the_whole_file_reads(tmp_path: Path) -> None:
    """Zones of records of every kind (warnings, errors, lenient records, dynamic CNAMEs,
    healthchecks, lists, block scalars), each changed again and again in every way a new
    version of a file can change: loaded with the last load's blocks, each version gives the
    same zone, lines, sites and problems as a load of the whole file, leaves the zone in
    service as it was, and most of the unchanged blocks are taken, not read (a bounded, seeded
    number; a version refused is mostly followed by one made of the last good one)."""
    rng = random.Random(1034)
    taken = loaded = 0
    for round_ in range(60):
        records: dict[str, object] = {"": APEX_NS}
        for i in range(rng.randrange(5, 25)):
            records[f"n{i}"] = rng.choice(KINDS[:1] + KINDS[2:4] + KINDS[-3:])
            if rng.random() < 0.3:
                records[f"n{i}"] = rng.choice(KINDS)
        text = written(records)
        _, known, zone = read(tmp_path / "first", text, None)
        shapes = record_shapes({ZONE: zone}) if zone is not None else {}
        good = text
        for step in range(5):
            text = mutated(text, rng)
            serial = 2 + 5 * round_ + step  # each load's own: the SOA in service keeps its
            full, _, _ = read(tmp_path / "full", text, None, serial)
            serving = described_zone(zone) if zone is not None else None
            reused, kept, reloaded = read(tmp_path / "reused", text, known, serial)
            assert reused == full, (round_, step, text)
            # the zone in service is not touched (it shares the unchanged blocks' nodes)
            assert zone is None or described_zone(zone) == serving, (round_, step, text)
            if zone is not None and reloaded is not None:
                taken += same_objects(zone, reloaded)
                loaded += 1
            if kept is not None:  # a refused version leaves the last good load's blocks
                assert reloaded is not None
                # the names the load found new are those whose node is not the zone's in service
                if zone is not None and known is not None:
                    assert kept.fresh is not None
                    assert sorted(kept.fresh) == sorted(changed_names(reloaded.nodes, zone.nodes))
                # the shapes carried over from the zone in service are the reloaded zone's own,
                # with the load's new names or without
                fresh = {ZONE: kept.fresh} if kept.fresh is not None else None
                for names in (None, fresh):
                    carried = record_shapes(
                        {ZONE: reloaded}, {ZONE: zone} if zone else {}, shapes, names
                    )
                    assert shapes_described(carried) == shapes_described(
                        record_shapes({ZONE: reloaded})
                    )
                known, zone, good, shapes = kept, reloaded, text, carried
            elif rng.random() < 0.7:  # mostly, the next version is made of the good one
                text = good
    assert loaded > 100 and taken > 500


def test_a_reload_of_a_big_zone_takes_the_unchanged_names_as_they_were(tmp_path: Path) -> None:
    """One record changed and one added at the top of a zone of written-out nearest-PoP names:
    every other name keeps its very RRset or (moved down) its very compiled record."""
    records: dict[str, object] = {"": APEX_NS}
    records.update({f"n{i}": NEAREST for i in range(300)})
    _, known, zone = read(tmp_path, written(records), None)
    assert zone is not None and known is not None
    records["n150"] = {"type": "A", "value": "192.0.2.150"}  # fewer lines: the rest move up
    _, _, changed = read(tmp_path, written(records), known)
    assert changed is not None
    old = [zone.nodes[f"n{i}.{ZONE}."][1] for i in range(300)]
    new = [changed.nodes[f"n{i}.{ZONE}."][1] for i in range(300)]
    assert all(new[i] is old[i] for i in range(150))
    assert new[150].dynamic is None and str(new[150].rdatas[0]) == "192.0.2.150"
    # (the file's last block is always read: its end is the file's)
    assert all(new[i].dynamic is old[i].dynamic for i in range(151, 299))
    assert all(new[i].line < old[i].line for i in range(151, 300))
    moved = {"": APEX_NS, "added": NEAREST, **{k: v for k, v in records.items() if k}}
    _, _, shifted = read(tmp_path, written(moved), known)
    assert shifted is not None
    added = written({"added": NEAREST}).count("\n")
    for i in (0, 298):
        old, new = zone.nodes[f"n{i}.{ZONE}."][1], shifted.nodes[f"n{i}.{ZONE}."][1]
        before = changed.nodes[f"n{i}.{ZONE}."][1]  # where it was in the same file without
        assert new.dynamic is old.dynamic and new.line == before.line + added


def test_a_reload_never_changes_the_nodes_the_zone_in_service_holds(tmp_path: Path) -> None:
    """The unchanged blocks' nodes are the very dicts of the zone in service: a reload that
    adds records at one of their names (another block, the apex's SOA) copies the node first.
    Each version is as reading it whole gives, and the zone in service stays as it was."""
    lines = {"type": "A", "value": "192.0.2.1"}  # (three lines, as the TXT below)
    first = {"n0": lines, "": APEX_NS, "n1": lines, "n2": lines, "n3": lines}
    versions = [
        {**first, "n0": {"type": "A", "value": "192.0.2.2"}},  # the apex's node: a new SOA
        {"N2": {"type": "TXT", "value": "x"}, **{k: v for k, v in first.items() if k != "n0"}},
    ]

    def apex_written_plain(records: dict[str, object]) -> str:  # not `? ''`: a kept block
        return written(records).replace("? ''\n: ", "'':\n  ")

    for number, version in enumerate(versions):
        _, known, zone = read(tmp_path / "first", apex_written_plain(first), None, serial=1)
        assert zone is not None and known is not None
        assert known.blocks.known[1] is not None  # the apex's block, kept
        serving = described_zone(zone)
        text = apex_written_plain(version)
        assert text.count("\n") == apex_written_plain(first).count("\n")  # no line moved
        reused, _, reloaded = read(tmp_path / "reused", text, known, serial=2)
        assert reused == read(tmp_path / "full", text, None, serial=2)[0], number
        assert described_zone(zone) == serving, number
        assert reloaded is not None and reloaded.soa.rdatas[0].times[0] == 2


def test_shapes_carried_over_keep_the_record_an_apex_alias_held(tmp_path: Path) -> None:
    """An apex ALIAS holds its target's very record. A reload that drops the ALIAS and leaves
    the target's lines as they were replaces the apex's node, not the target's: the record
    keeps its shape, as a whole computation gives it."""
    alias = {"type": "ALIAS", "value": f"n1.{ZONE}."}
    records: dict[str, object] = {"n0": {"type": "TXT", "value": "x"}, "n1": NEAREST}
    records.update({"n2": NEAREST, "": [APEX_NS, alias], "n3": {"type": "TXT", "value": "y"}})
    _, known, zone = read(tmp_path / "first", written(records), None)
    assert zone is not None and zone.nodes[f"{ZONE}."][1].dynamic.owner == f"n1.{ZONE}."
    shapes = record_shapes({ZONE: zone})
    _, _, reloaded = read(tmp_path / "reused", written({**records, "": APEX_NS}), known)
    assert reloaded is not None and reloaded.nodes[f"n1.{ZONE}."] is zone.nodes[f"n1.{ZONE}."]
    carried = record_shapes({ZONE: reloaded}, {ZONE: zone}, shapes)
    assert {r.owner for r in carried} == {f"n1.{ZONE}.", f"n2.{ZONE}."}
    assert shapes_described(carried) == shapes_described(record_shapes({ZONE: reloaded}))


def test_a_layout_made_of_the_last_one_is_the_texts_own() -> None:
    """Laid out of the last version's layout (only what lies between the beginning and the end
    they share is scanned), every version of a text has the block starts and lines a scan of
    the whole text gives: edits anywhere, at block starts, of newlines, in texts short and
    long (a bounded, seeded number)."""
    rng = random.Random(4592)
    alphabet = "\n\n\n  a:b#-%x1"
    for trial in range(2000):
        size = rng.randrange(0, 60) if trial % 20 else rng.randrange(300, 3000)
        text = "".join(rng.choice(alphabet) for _ in range(size))
        last = Layout.of(text)
        for _ in range(3):
            chars = list(text)
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(len(chars) + 1)
                edit = rng.randrange(3)
                if edit == 0 or not chars:
                    chars.insert(at, rng.choice(alphabet))
                elif edit == 1:
                    del chars[min(at, len(chars) - 1)]
                else:
                    chars[min(at, len(chars) - 1)] = rng.choice(alphabet)
            text = "".join(chars)
            made = Layout.of(text, last)
            whole = Layout.of(text)
            assert (made.offsets, made.lines) == (whole.offsets, whole.lines), text
            last = made


def test_a_block_whose_hash_matches_another_text_is_read(tmp_path: Path) -> None:
    """A moved block is found by its text's hash, then compared with the text kept: a hash that
    names another block's text (a collision) finds nothing, and the block is read."""
    records: dict[str, object] = {"": APEX_NS}
    records.update({f"n{i}": {"type": "A", "value": f"192.0.2.{i}"} for i in range(1, 6)})
    _, last, _ = read(tmp_path, written(records), None)
    assert last is not None
    known = last.blocks
    moved = {"": APEX_NS, "n3": records["n3"], **{k: v for k, v in records.items() if k}}
    text = written(moved)  # n3 second: found by its hash
    line = text.count("\n", 0, text.index("n3:")) + 1
    found = RepeatedBlocks.find(text, known, True)
    assert found is not None and line in found.known
    block = text[text.index("n3:") : text.index("n1:")]
    hashes = array("q", known.hashes)  # n4's text's hash, as if it were n3's
    hashes[[k.key if k else None for k in known.known].index("n3")] = NO_HASH
    hashes[[k.key if k else None for k in known.known].index("n4")] = hash(block)
    forged = dataclasses.replace(known, hashes=hashes)
    found = RepeatedBlocks.find(text, forged, True)
    assert found is not None and line not in found.known


def test_a_served_zone_reloads_a_changed_record_and_keeps_the_others(tmp_path: Path) -> None:
    """A real server reloads a zone file in which one record changed and one moved down: the
    changed one answers anew, the moved and unchanged ones as before, and the log says how
    long the reload took."""
    records: dict[str, object] = {"": APEX_NS}
    records.update({f"n{i}": {"type": "A", "value": f"192.0.2.{i}"} for i in range(1, 60)})
    config = {"sites": SITES, "watch_zones": False}
    with GeodnsServer(config, {ZONE: written(records)}) as server:
        records["n30"] = {"type": "A", "value": "198.51.100.30"}
        changed = {"": APEX_NS, "added": {"type": "TXT", "value": "x"}}
        changed.update({k: v for k, v in records.items() if k})
        server.write_zone(ZONE, written(changed))
        reloaded = server.cli("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        for name, address in (("n30", "198.51.100.30"), ("n1", "192.0.2.1"), ("n59", "192.0.2.59")):
            reply = server.query(f"{name}.{ZONE}", "A")
            assert [str(r) for rrset in reply.answer for r in rrset] == [address], name
        assert server.query(f"added.{ZONE}", "TXT").answer
        lines = server.stderr_text().splitlines()
        events = [json.loads(line) for line in lines if '"reloaded"' in line]
        assert events and 0 <= events[-1]["seconds"] < 30, events  # how long it took, logged


def test_blocks_are_not_taken_under_other_sites(tmp_path: Path) -> None:
    """A record's targets follow the config's sites: once the sites change, a reload reads
    every block again (config.loader.ZoneBlocks), and finds the addresses no site owns now."""
    from geodns.config.loader import ZoneBlocks, load_zones

    records: dict[str, object] = {"": APEX_NS, **{f"n{i}": NEAREST for i in range(5)}}
    (tmp_path / "zones").mkdir()
    (tmp_path / "zones" / f"{ZONE}.yaml").write_text(written(records))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"sites": SITES, "zones_dir": "zones"}))
    first = load_config(path)
    blocks = ZoneBlocks(first.sites)
    load_zones(first, known=None, blocks=blocks)
    assert blocks.files
    fewer = {name: site for name, site in SITES.items() if name != "jkt"}
    path.write_text(yaml.safe_dump({"sites": fewer, "zones_dir": "zones"}))
    with pytest.raises(ConfigError) as refused:
        load_zones(load_config(path), known=blocks)
    unowned = [p.line for p in refused.value.problems if "belongs to no site" in p.message]
    assert len(unowned) == 5  # every record read again, not the 4 kept blocks taken

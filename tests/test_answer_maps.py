"""Answer maps answer what the reference decision answers, everywhere, under every health view.

geodns.geo.answers decides every place of a database at once (numpy rankings, slots, one
evaluate() per slot) and merges runs by answer; a query then bisects. These tests hold the map to
`evaluate()` itself: for every place of the bundled database and addresses all over the space,
for each record of the example zone, with every site up, one site drained, a whole region down
and everything down (fail open). And the scope: every address of the block a query is told the
answer holds for gets that same answer from the reference.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from geodns.config.loader import load_geo
from geodns.config.server import load_config
from geodns.geo.answers import AnswerMap
from geodns.geo.dynamic import DynamicRecord, evaluate
from geodns.geo.locator import Geo
from geodns.serving.snapshot import Snapshot, answer_maps, build_snapshot

EXAMPLE = Path(__file__).resolve().parents[1] / "geodns" / "data" / "example-config.yaml"
VIEWS = [
    frozenset(),
    frozenset({"frankfurt"}),
    frozenset({"singapore", "jakarta", "dc-asia"}),
    frozenset(
        {
            "jakarta",
            "singapore",
            "kuala-lumpur",
            "frankfurt",
            "ashburn",
            "sao-paulo",
            "dc-asia",
            "dc-americas",
        }
    ),
]


@pytest.fixture(scope="module")
def world() -> tuple[Geo, Snapshot]:
    config = load_config(EXAMPLE)
    geo = load_geo(config, build=True)
    return geo, build_snapshot(config, geo)


def _addresses(seed: int, count: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out = [(4, rng.getrandbits(32)) for _ in range(count)]
    out += [(6, (0x2000 << 112) | rng.getrandbits(125)) for _ in range(count // 2)]
    out += [(6, 0xFFFF << 32 | rng.getrandbits(32)) for _ in range(20)]  # IPv4-mapped
    out += [(6, 0x2002 << 112 | rng.getrandbits(112)) for _ in range(20)]  # 6to4
    return out


@pytest.mark.parametrize("down", VIEWS, ids=["all-up", "frankfurt", "asia", "all-down"])
def test_every_place_and_address_gets_the_reference_answer(
    world: tuple[Geo, Snapshot], down: frozenset[str]
) -> None:
    geo, snapshot = world
    index = geo.index
    assert index is not None
    maps = answer_maps(geo, set(snapshot.shapes.values()), down)
    assert maps, "the example zone has records an answer map decides"
    checked = 0
    for record, shape in snapshot.shapes.items():
        answer_map = maps[shape]
        for family, value in _addresses(hash((record.owner, record.rtype)) & 0xFFFF, 600):
            _check(answer_map, record, geo, family, value, down)
            checked += 1
        # every place: its first address in the IPv4 runs
        starts, labels = index.runs4.starts, index.runs4.labels
        seen = set()
        for start, label in zip(starts.tolist(), labels.tolist(), strict=True):
            if label not in seen:
                seen.add(label)
                _check(answer_map, record, geo, 4, start, down)
                checked += 1
    assert checked > 5_000


def _check(
    answer_map: AnswerMap,
    record: DynamicRecord,
    geo: Geo,
    family: int,
    value: int,
    down: frozenset[str],
) -> None:
    answer, scope = answer_map.lookup(family, value)
    got = answer_map.decision(record, answer)
    placement = geo.locate(family, value)
    expected = evaluate(record, placement, down, 0)
    where = f"{record.owner} {record.rtype} {family}:{value:x} down={sorted(down)}"
    assert (got.values, got.site, got.servfail) == (
        expected.values,
        expected.site,
        expected.servfail,
    ), where
    # the block of the scope: its first and last addresses get the same answer
    bits = 32 if family == 4 else 128
    base = value >> (bits - scope) << (bits - scope) if scope else 0
    for edge in (base, base + (1 << (bits - scope)) - 1):
        edge_expected = evaluate(record, geo.locate(family, edge), down, 0)
        assert (edge_expected.values, edge_expected.site) == (got.values, got.site), (
            f"{where}: scope /{scope} holds {edge:x}, answered otherwise"
        )


def test_scopes_are_wider_than_the_database_networks(world: tuple[Geo, Snapshot]) -> None:
    """Merged by answer, a Jakarta user's block is the whole of what gets Jakarta around it."""
    geo, snapshot = world
    record = next(r for r in snapshot.shapes if r.owner.startswith("www.") and r.family == 4)
    answer_map = snapshot.answer_map(record)
    assert answer_map is not None
    value = (36 << 24) | (86 << 16) | (63 << 8)  # 36.86.63.0: Indonesia
    answer, scope = answer_map.lookup(4, value)
    assert answer_map.decision(record, answer).site == "jakarta"
    assert scope <= geo.locate(4, value).prefix


@pytest.mark.parametrize("chunk", [97, 4099])
def test_maps_built_a_few_blocks_at_a_time_are_the_maps_built_at_once(
    world: tuple[Geo, Snapshot], chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A map relabels and merges the index's blocks a chunk at a time (a City index has
    millions, and doing them all at once made tens of MB of temporaries): with small chunks,
    thousands of chunk boundaries over the bundled database, the runs are the very runs built
    whole (neighbours across a boundary merged when they get the same answer)."""
    from geodns.geo import answers

    geo, snapshot = world
    shapes = set(snapshot.shapes.values())
    whole = answer_maps(geo, shapes, VIEWS[1])
    monkeypatch.setattr(answers, "RELABEL_CHUNK", chunk)
    chunked = answer_maps(geo, shapes, VIEWS[1])
    for shape, built in whole.items():
        other = chunked[shape]
        assert built.runs4.starts.tolist() == other.runs4.starts.tolist()
        assert built.runs4.labels.tolist() == other.runs4.labels.tolist()
        assert built.runs6 is not None and other.runs6 is not None
        for name in ("hi", "lo", "labels"):
            assert getattr(built.runs6, name).tolist() == getattr(other.runs6, name).tolist()
        assert built.runs4.labels.dtype == other.runs4.labels.dtype


def test_a_label_outside_the_places_is_an_error_not_a_clipped_answer() -> None:
    """A block naming a place the index does not have (a damaged index) raises, as indexing
    the places did, rather than taking the nearest table entry's answer."""
    import numpy as np

    from geodns.geo.answers import _answer_runs

    starts = np.array([0, 10, 20], dtype=np.uint32)
    answers = np.array([5, 6], dtype=np.int32)  # two places
    kept = _answer_runs(np.array([0, 1, 1], dtype=np.int32), answers, 9, starts)
    assert [a.tolist() for a in kept] == [[0, 10], [5, 6]]
    for label in (2, -131):
        with pytest.raises(IndexError):
            _answer_runs(np.array([0, label, 1], dtype=np.int32), answers, 9, starts)


def _resident_kb(directory: Path) -> int:
    """The kB of this process's resident memory mapped from files under `directory`."""
    resident, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:  # a mapping's first line
                inside = len(head) >= 6 and head[5].startswith(str(directory))
            elif inside and head[0] == "Rss:":
                resident += int(head[1])
    return resident


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux's /proc")
def test_building_maps_leaves_no_page_of_the_index_resident(tmp_path: Path) -> None:
    """A map build reads every page of the mapped place index; queries then read the maps,
    so the build hands the pages back (they stay in the page cache): afterwards none of the
    index's files counts in the process's resident memory, and the index still places every
    address as it did."""
    config = dataclasses.replace(load_config(EXAMPLE), cache_dir=tmp_path / "cache")
    load_geo(config, build=True)  # built and saved
    geo = load_geo(config)  # mapped from the cache, as a restart maps it
    assert geo.index is not None and geo.index.mappings
    addresses = _addresses(17, 3_000)
    before = [geo.locate(family, value) for family, value in addresses]
    snapshot = build_snapshot(config, geo, with_maps=False)
    answer_maps(geo, set(snapshot.shapes.values()), VIEWS[0])
    assert _resident_kb(tmp_path / "cache") == 0
    assert [geo.locate(family, value) for family, value in addresses] == before
    assert _resident_kb(tmp_path / "cache") > 0  # read again: mapped back

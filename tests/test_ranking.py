"""Ranking a place against a record's sites: nearest first by great-circle distance, ties by name.

Two implementations rank: `DynamicRecord.ranked` per place in Python (the reference, what
`geodns explain` prints) and geodns.geo.ranking.rank for every place of a database at once with
numpy (what the answer maps use). These properties hold them to `distance_km` and to each other,
order for order, and
check that the candidates taken as up follow each new health view.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from geodns.dns.zone import TYPE_A
from geodns.geo.dynamic import Candidate, DynamicRecord, Target, evaluate
from geodns.geo.places import DISTANCE_DECIMALS, Place, Placement, distance_km
from geodns.geo.ranking import rank

latitudes = st.floats(min_value=-90, max_value=90, allow_nan=False)
longitudes = st.floats(min_value=-180, max_value=180, allow_nan=False)
sites = st.lists(st.tuples(latitudes, longitudes), min_size=1, max_size=8)


def record_for(points: list[tuple[float, float]]) -> DynamicRecord:
    candidates = tuple(
        Candidate(f"site{i}", lat, lon, (Target(f"192.0.2.{i + 1}", f"site{i}"),))
        for i, (lat, lon) in enumerate(points)
    )
    values = tuple(t for c in candidates for t in c.targets)
    return DynamicRecord("www.geo.test.", TYPE_A, 30, values, {}, (), True, candidates)


@settings(max_examples=200, deadline=None)
@given(points=sites, latitude=latitudes, longitude=longitudes)
def test_ranking_matches_distance_km_exactly(
    points: list[tuple[float, float]], latitude: float, longitude: float
) -> None:
    record = record_for(points)
    place = Place("AS", "ID", None, "Somewhere", latitude, longitude, "city")
    expected = sorted(
        (
            round(distance_km(latitude, longitude, c.latitude, c.longitude), DISTANCE_DECIMALS),
            c.name,
        )
        for c in record.candidates
    )
    got = [(round(distance, DISTANCE_DECIMALS), c.name) for c, distance in record.ranked(place)]
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(
    points=sites,
    places=st.lists(st.tuples(latitudes, longitudes), min_size=1, max_size=20),
)
def test_numpy_ranking_of_all_places_equals_the_python_ranking_of_each(
    points: list[tuple[float, float]], places: list[tuple[float, float]]
) -> None:
    record = record_for(points)
    names = [c.name for c in record.candidates]
    matrix = rank(
        np.array([p[0] for p in places]),
        np.array([p[1] for p in places]),
        points,
        names,
        len(points),
    )
    for row, (latitude, longitude) in zip(matrix, places, strict=True):
        place = Place("AS", "ID", None, None, latitude, longitude, "city")
        assert [names[i] for i in row] == [c.name for c, _ in record.ranked(place)]


def test_sites_at_the_same_distance_rank_by_name() -> None:
    record = record_for([(10.0, 20.0), (10.0, 20.0), (10.0, 20.0)])
    place = Place("AS", "ID", None, "Somewhere", 0.0, 0.0, "city")
    assert [c.name for c, _ in record.ranked(place)] == ["site0", "site1", "site2"]


def test_the_candidates_up_follow_each_new_health_view() -> None:
    record = record_for([(0.0, 1.0), (0.0, 2.0), (0.0, 3.0)])
    place = Place("AF", "GH", None, "Accra", 0.0, 0.0, "city")
    placement = Placement(place, 4, 0x01020300, 24)
    assert evaluate(record, placement, frozenset(), 0).site == "site0"
    assert evaluate(record, placement, frozenset({"site0"}), 0).site == "site1"
    assert evaluate(record, placement, frozenset({"site0", "site1"}), 0).site == "site2"
    assert evaluate(record, placement, frozenset(), 0).site == "site0"  # back up

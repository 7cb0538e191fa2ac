"""Sticky answers (rendezvous hashing): a property test over many user networks.

`geodns.geo.dynamic.evaluate` is the pure decision function the server calls; with `sticky`, users
keep their site, and when a site leaves only that site's users move.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from geodns.dns.zone import TYPE_A
from geodns.geo.dynamic import Candidate, DynamicRecord, Target, evaluate
from geodns.geo.places import Place, Placement

SITES = {"jkt": (-6.2, 106.8), "sin": (1.35, 103.8), "kul": (3.14, 101.7), "bkk": (13.7, 100.5)}
JAKARTA_USER = Place("AS", "ID", None, "Jakarta", -6.2, 106.8, "city")


def sticky_record(margin_km: float) -> DynamicRecord:
    candidates = tuple(
        Candidate(name, lat, lon, (Target(f"192.0.2.{i + 1}", name),))
        for i, (name, (lat, lon)) in enumerate(SITES.items())
    )
    values = tuple(t for c in candidates for t in c.targets)
    return DynamicRecord(
        "pin.geo.test.", TYPE_A, 30, values, {}, (), True, candidates, sticky_margin_km=margin_km
    )


def placement(network: int) -> Placement:
    return Placement(JAKARTA_USER, 4, network << 8, 16)


networks = st.lists(
    st.integers(min_value=0, max_value=2**24 - 1), min_size=50, max_size=300, unique=True
)


@settings(max_examples=40, deadline=None)
@given(networks=networks, removed=st.sampled_from(sorted(SITES)))
def test_only_the_removed_sites_users_move(networks: list[int], removed: str) -> None:
    record = sticky_record(margin_km=5000)
    before = {n: evaluate(record, placement(n), frozenset(), 0).site for n in networks}
    after = {n: evaluate(record, placement(n), frozenset({removed}), 0).site for n in networks}
    for network in networks:
        if before[network] == removed:
            assert after[network] != removed
        else:
            assert after[network] == before[network], "a user of a healthy site moved"
    # and the answer is a pure function of the network: asking again changes nothing
    assert before == {n: evaluate(record, placement(n), frozenset(), 7).site for n in networks}


@settings(max_examples=20, deadline=None)
@given(networks=networks)
def test_users_are_spread_over_sites_within_the_margin(networks: list[int]) -> None:
    record = sticky_record(margin_km=5000)
    sites = {evaluate(record, placement(n), frozenset(), 0).site for n in networks}
    assert len(sites) >= 3  # 50+ networks over 4 equally eligible sites


def test_margin_zero_is_plain_nearest() -> None:
    record = sticky_record(margin_km=0)
    assert {evaluate(record, placement(n), frozenset(), 0).site for n in range(200)} == {"jkt"}


def test_sticky_scope_covers_the_hashed_network() -> None:
    record = sticky_record(margin_km=5000)
    assert evaluate(record, placement(5), frozenset(), 0).scope == 24

"""The pure health state: rise/fall machines, data centre dependencies, drains, the view.

No sockets, no clock: every time is a number passed in, so each rule is checked exactly.
"""

from __future__ import annotations

import json

import pytest

from geodns.geo.sites import CheckSpec, Site
from geodns.health.state import CheckState, HealthState, HealthView

T0 = 1_700_000_000.0


def check(port: int, fall: int = 3, rise: int = 2) -> CheckSpec:
    return CheckSpec(
        type="http", address="127.0.0.1", port=port, path="/health", fall=fall, rise=rise
    )


def site(name: str, *checks: CheckSpec, kind: str = "pop", dcs: tuple[str, ...] = ()) -> Site:
    return Site(name, kind, 0.0, 0.0, ("192.0.2.1",), (), datacenters=dcs, checks=checks)


def sites(*items: Site) -> dict[str, Site]:
    return {s.name: s for s in items}


def feed(health: HealthState, key: str, results: str, start: float = T0) -> list:
    """Feed results written as a string of 'o' (ok) and 'x' (fail), one second apart."""
    changes = []
    for index, mark in enumerate(results):
        changes += health.observe(
            key, mark == "o", start + index, "HTTP 200" if mark == "o" else "refused"
        )
    return changes


def test_unchecked_target_is_up_and_its_first_result_decides() -> None:
    machine = CheckState(fall=3, rise=2)
    assert machine.up and not machine.checked and machine.since is None
    transition = machine.observe(False, T0, "connection refused")
    assert transition is not None and (transition.old, transition.new) == ("up", "down")
    assert machine.checked and machine.since == T0

    machine = CheckState(fall=3, rise=2)
    assert machine.observe(True, T0, "HTTP 200") is None
    assert machine.up and machine.checked and machine.since == T0


def test_fall_failures_take_it_down_and_rise_successes_bring_it_back() -> None:
    machine = CheckState(fall=3, rise=2)
    machine.observe(True, T0)
    assert machine.observe(False, T0 + 1) is None
    assert machine.observe(False, T0 + 2) is None
    down = machine.observe(False, T0 + 3, "timeout after 2s")
    assert down is not None and (down.old, down.new, down.streak) == ("up", "down", 3)
    assert machine.since == T0 + 3
    assert machine.observe(False, T0 + 4) is None  # already down
    assert machine.observe(True, T0 + 5) is None
    up = machine.observe(True, T0 + 6, "HTTP 200")
    assert up is not None and (up.old, up.new, up.streak) == ("down", "up", 2)
    assert machine.since == T0 + 6


@pytest.mark.parametrize("first", ["o", "x"])
def test_an_alternating_endpoint_does_not_flap(first: str) -> None:
    health = HealthState(sites(site("lon", check(8001))), T0)
    key = check(8001).key
    feed(health, key, first)
    settled = health.view
    other = "x" if first == "o" else "o"
    changes = feed(health, key, (other + first) * 20, start=T0 + 1)
    assert changes == []
    assert health.view is settled  # not even a new (equal) view object
    assert health.view.is_up("lon") is (first == "o")


def test_a_site_is_down_when_any_of_its_checks_is_down() -> None:
    a, b = check(8001), check(8002)
    health = HealthState(sites(site("lon", a, b)), T0)
    feed(health, a.key, "oooo")
    changes = feed(health, b.key, "ox", start=T0 + 10) + feed(health, b.key, "xx", start=T0 + 12)
    assert [(c.site, c.old, c.new, c.streak) for c in changes] == [("lon", "up", "down", 3)]
    assert changes[0].cause == f"check {b.key} down: refused"
    assert health.view.down == {"lon"}
    assert not health.view.is_up("lon")


def test_one_target_serves_every_site_that_uses_it() -> None:
    shared = check(8001)
    health = HealthState(
        sites(site("lon", shared), site("ams", shared), site("fra", check(8002))), T0
    )
    assert list(health.checks) == [shared.key, check(8002).key]
    changes = feed(health, shared.key, "x")
    assert sorted(c.site for c in changes) == ["ams", "lon"]
    assert health.view.down == {"ams", "lon"}


def test_a_pop_goes_down_only_when_all_its_datacenters_are_down() -> None:
    dc1, dc2 = check(9001), check(9002)
    health = HealthState(
        sites(
            site("dc-east", dc1, kind="dc"),
            site("dc-west", dc2, kind="dc"),
            site("pop-both", dcs=("dc-east", "dc-west")),
            site("pop-west", dcs=("dc-west",)),
            site("pop-none"),
        ),
        T0,
    )
    feed(health, dc1.key, "o")
    feed(health, dc2.key, "o")
    changes = feed(health, dc1.key, "xxx", start=T0 + 1)
    assert [(c.site, c.new) for c in changes] == [("dc-east", "down")]
    assert health.view.down == {"dc-east"}

    changes = feed(health, dc2.key, "xxx", start=T0 + 10)
    assert {c.site: c.cause for c in changes} == {
        "dc-west": f"check {dc2.key} down: refused",
        "pop-both": "all datacenters down: dc-east, dc-west",
        "pop-west": "all datacenters down: dc-west",
    }
    assert health.view.down == {"dc-east", "dc-west", "pop-both", "pop-west"}

    changes = feed(health, dc1.key, "oo", start=T0 + 20)
    assert {c.site: (c.new, c.cause) for c in changes} == {
        "dc-east": ("up", f"check {dc1.key} up: HTTP 200"),
        "pop-both": ("up", "datacenter up: dc-east"),
    }
    assert health.view.down == {"dc-west", "pop-west"}


def test_drain_undrain_and_a_drained_dc_takes_its_pops_out() -> None:
    health = HealthState(sites(site("dc1", kind="dc"), site("pop", dcs=("dc1",)), site("lon")), T0)
    drain, changes = health.drain("lon", T0, reason="failover drill", by="alice")
    assert (drain.site, drain.reason, drain.by, drain.since, drain.until) == (
        "lon",
        "failover drill",
        "alice",
        T0,
        None,
    )
    assert [(c.site, c.new, c.cause) for c in changes] == [
        ("lon", "down", "drained by alice: failover drill")
    ]
    _, changes = health.drain("dc1", T0 + 1, by="bob")
    assert {c.site: c.cause for c in changes} == {
        "dc1": "drained by bob",
        "pop": "all datacenters down: dc1",
    }
    ended, changes = health.undrain("lon", T0 + 2)
    assert ended == drain
    assert [(c.site, c.new, c.cause) for c in changes] == [("lon", "up", "undrained")]
    assert health.undrain("lon", T0 + 3) == (None, [])
    assert health.view.down == {"dc1", "pop"}
    with pytest.raises(KeyError):
        health.drain("nowhere", T0)
    with pytest.raises(KeyError):
        health.undrain("nowhere", T0)


def test_a_timed_drain_ends_by_itself() -> None:
    health = HealthState(sites(site("lon"), site("ams")), T0)
    health.drain("lon", T0, until=T0 + 60)
    health.drain("ams", T0, until=T0 + 120)
    assert health.next_expiry() == T0 + 60
    assert health.expire(T0 + 59.9) == []
    changes = health.expire(T0 + 60)
    assert [(c.site, c.old, c.new, c.cause) for c in changes] == [
        ("lon", "down", "up", "drain expired")
    ]
    assert health.view.down == {"ams"}
    assert health.next_expiry() == T0 + 120


def test_a_drain_does_not_hide_a_failing_check_when_it_ends() -> None:
    a = check(8001)
    health = HealthState(sites(site("lon", a)), T0)
    health.drain("lon", T0, by="alice")
    feed(health, a.key, "x", start=T0 + 1)
    assert health.status(T0 + 2)["sites"]["lon"]["down_cause"] == (
        f"drained by alice; check {a.key} down: refused"
    )
    _, changes = health.undrain("lon", T0 + 3)
    assert changes == []  # still down: its check is
    assert health.view.down == {"lon"}


def test_the_view_is_replaced_only_when_the_down_set_changes() -> None:
    a = check(8001)
    health = HealthState(sites(site("lon", a), site("ams")), T0)
    empty = health.view
    assert empty == HealthView() and empty.is_up("lon") and empty.is_up("not-a-site")
    feed(health, a.key, "oooo")
    assert health.view is empty
    feed(health, a.key, "x", start=T0 + 10)
    assert health.view is empty
    feed(health, a.key, "xx", start=T0 + 11)
    down = health.view
    assert down.down == frozenset({"lon"})
    health.drain("lon", T0 + 20)  # down for two reasons now: same set
    assert health.view is down


def test_saved_state_round_trip_keeps_outages_and_drains() -> None:
    a, b, c = check(8001), check(8002), check(8003)
    config = sites(site("lon", a), site("ams", b), site("fra", c), site("par"))
    health = HealthState(config, T0)
    feed(health, a.key, "x")  # lon down
    feed(health, b.key, "o")  # ams known up; fra never checked
    health.drain("par", T0, reason="drill", by="alice")
    health.drain("ams", T0, by="bob", until=T0 + 30)
    saved = json.loads(json.dumps(health.to_saved()))
    assert set(saved["checks"]) == {a.key, b.key}

    restored = HealthState(config, T0 + 100)  # bob's drain ended while stopped
    changes, dropped = restored.restore(saved, T0 + 100)
    assert {(x.site, x.new) for x in changes} == {("lon", "down"), ("par", "down")}
    assert dropped == ["drain of ams: ended while the server was stopped"]
    assert restored.view.down == {"lon", "par"}
    assert restored.drains["par"].reason == "drill"
    status = restored.status(T0 + 100)["sites"]
    assert status["lon"]["since"] == T0  # the outage began before the restart
    assert status["fra"]["checked"] is False

    # A restored outage needs `rise` successes; a restored "up" needs `fall` failures.
    assert feed(restored, a.key, "o", start=T0 + 101) == []
    assert [x.new for x in feed(restored, a.key, "o", start=T0 + 102)] == ["up"]
    assert feed(restored, b.key, "xx", start=T0 + 103) == []
    assert [x.new for x in feed(restored, b.key, "x", start=T0 + 105)] == ["down"]


def test_restore_drops_what_is_no_longer_configured() -> None:
    health = HealthState(sites(site("lon", check(8001))), T0)
    saved = {
        "checks": {"tcp://127.0.0.1:1": {"state": "down", "since": T0}, "junk": 5},
        "drains": [{"site": "gone", "by": "x"}, {"no-site": True}, "junk"],
        "sites": "junk",
    }
    changes, dropped = health.restore(saved, T0)
    assert changes == [] and health.view.down == frozenset()
    assert len(dropped) == 5


def test_reload_keeps_kept_targets_and_drains_and_drops_the_rest() -> None:
    a, b = check(8001), check(8002)
    health = HealthState(sites(site("lon", a), site("ams", b)), T0)
    feed(health, a.key, "x")
    health.drain("ams", T0)
    assert health.view.down == {"lon", "ams"}
    changes = health.set_sites(sites(site("lon", check(8001, fall=5)), site("fra")), T0 + 1)
    assert changes == []  # ams is gone, not "up"
    assert health.view.down == {"lon"}
    assert list(health.checks) == [a.key] and health.checks[a.key].fall == 5
    assert health.drains == {}
    changes = health.set_sites(sites(site("lon")), T0 + 2)  # lon's check removed
    assert [(c.site, c.new, c.cause) for c in changes] == [("lon", "up", "reload")]


def test_status_is_json_and_names_the_deciding_check() -> None:
    a, b = check(8001), check(8002)
    health = HealthState(sites(site("lon", a, b), site("ams")), T0)
    health.observe(a.key, True, T0, "HTTP 200", 0.012)
    health.observe(b.key, False, T0 + 1, "HTTP 503, expected 200", 0.004)
    status = json.loads(json.dumps(health.status(T0 + 2)))
    lon = status["sites"]["lon"]
    assert lon["state"] == "down" and lon["since"] == T0 + 1
    assert lon["last"] == {
        "ok": False,
        "detail": "HTTP 503, expected 200",
        "latency": 0.004,
        "at": T0 + 1,
    }
    assert lon["streak"] == 1 and lon["drained"] is False and lon["drain"] is None
    assert lon["checks"][a.key]["ok"] is True and lon["checks"][a.key]["latency"] == 0.012
    assert status["sites"]["ams"]["last"] is None and status["sites"]["ams"]["state"] == "up"
    assert status["down"] == ["lon"]

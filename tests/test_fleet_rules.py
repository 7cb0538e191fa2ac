"""The pure rules under the fleet and the admin pages: the quorum of vantage points, what a check
looks like when shown, and which drains a member takes from etcd."""

from __future__ import annotations

from pathlib import Path

import pytest

from geodns.common.errors import ConfigError
from geodns.config.server import load_config
from geodns.fleet.metrics import FleetCollector
from geodns.fleet.quorum import decide
from geodns.geo.sites import CheckSpec, Site
from geodns.health.redact import public_url, redact_text
from geodns.health.state import MAX_DRAIN_SECONDS, Drain, HealthState, drain_problem

UP, DOWN = {"state": "up"}, {"state": "down", "detail": "connection refused"}
UNCHECKED = {"state": "unchecked"}


def votes(*states: dict) -> dict[str, dict[str, dict]]:
    return {f"ns{i + 1}": {"fra": state} for i, state in enumerate(states)}


@pytest.mark.parametrize(
    ("states", "down"),
    [
        ((DOWN,), True),  # a fleet of one decides like a server alone
        ((DOWN, UP), False),  # half is not more than half
        ((DOWN, DOWN), True),
        ((DOWN, UP, UP), False),  # one vantage point's broken path pulls nothing
        ((DOWN, DOWN, UP), True),
        ((DOWN, UNCHECKED, UNCHECKED), True),  # no result is no vote
        ((DOWN, DOWN, UP, UP), False),
    ],
)
def test_a_site_is_down_when_more_than_the_share_of_voters_say_so(
    states: tuple[dict, ...], down: bool
) -> None:
    verdict = decide(votes(*states), 0.5)["fra"]
    assert verdict.down is down
    assert verdict.voters == sum(1 for s in states if s["state"] != "unchecked")
    if down:
        assert verdict.reason.startswith(f"down at {verdict.down_votes} of {verdict.voters}")
        assert "ns1 (connection refused)" in verdict.reason


def test_the_share_is_configurable_and_a_site_nobody_checked_gets_no_verdict() -> None:
    assert decide(votes(DOWN, UP, UP), 0.0)["fra"].down is True  # any one vantage point
    assert decide(votes(DOWN, DOWN, UP), 0.7)["fra"].down is False  # 2/3 is not over 70%
    assert decide(votes(UNCHECKED, UNCHECKED), 0.5) == {}
    assert decide({"ns1": {"fra": "garbage"}, "ns2": {}}, 0.5) == {}  # malformed votes


def test_check_urls_are_shown_without_secrets() -> None:
    assert public_url("http://127.0.0.1:80/healthz") == "http://127.0.0.1:80/healthz"
    assert public_url("tcp://[2001:db8::1]:443") == "tcp://[2001:db8::1]:443"
    assert (
        public_url("https://user:pw@[2001:db8::1]:443/v1/health?api_key=abc#x")
        == "https://[2001:db8::1]:443/v1/health?<redacted>"
    )
    assert public_url("http://1.2.3.4:80/token/abc/h") == "http://1.2.3.4:80/token/<redacted>/h"
    assert (
        public_url("http://1.2.3.4:80/h/0123456789abcdefABCDEF12")
        == "http://1.2.3.4:80/h/<redacted>"
    )
    assert public_url("http://1.2.3.4:80/x;jsessionid=1") == "http://1.2.3.4:80/x<redacted>"
    assert public_url("http://1.2.3.4:80?x=1") == "http://1.2.3.4:80?<redacted>"
    once = redact_text("check http://127.0.0.1:9/h?api_key=S down: refused; http://a:b@c:1/")
    assert once == "check http://127.0.0.1:9/h?<redacted> down: refused; http://c:1/"
    assert redact_text(once) == once  # what is shown twice is redacted once


def test_drain_limits() -> None:
    assert drain_problem("", "", None) is None
    assert drain_problem("r" * 500, "b" * 200, MAX_DRAIN_SECONDS) is None
    for bad in (float("nan"), float("inf"), -1, 0, MAX_DRAIN_SECONDS + 1, True, "5m"):
        assert "for_s" in (drain_problem("", "", bad) or ""), bad
    assert "at most 500" in (drain_problem("r" * 501, "", None) or "")
    assert "at most 200" in (drain_problem("", "b" * 201, None) or "")
    with pytest.raises(ValueError, match="finite"):
        Drain.from_json({"site": "x", "until": float("inf")})
    with pytest.raises(ValueError, match="366 days"):  # from a state file or etcdctl
        Drain.from_json({"site": "x", "since": 1e9, "until": 1e308})


def test_fleet_drains_replace_the_local_ones_but_not_of_unknown_sites_or_ended() -> None:
    check = CheckSpec("tcp", "127.0.0.1", 9)
    sites = {
        name: Site(name, "pop", 0.0, 0.0, ("192.0.2.1",), (), checks=(check,))
        for name in ("fra", "sin")
    }
    state = HealthState(sites, 100.0)
    state.drain("sin", 100.0, "local")
    changes = state.set_drains(
        {
            "fra": Drain("fra", "fleet", "ops", 100.0),
            "ended": Drain("ended", "", "", 0.0),
            "sin": Drain("sin", "", "", 50.0, until=99.0),  # already over
        },
        101.0,
    )
    assert set(state.drains) == {"fra"} and state.view.down == {"fra"}
    assert {(c.site, c.new) for c in changes} == {("fra", "down"), ("sin", "up")}
    assert state.set_drains(state.drains, 102.0) == []  # nothing new: no refresh


class _FleetSeen:
    """What a member saw of the fleet (geodns.fleet.metrics.FleetSource), for the collector."""

    sessions, events = 1, 0

    def __init__(self, drains: dict[str, Drain]) -> None:
        self.drains = drains

    def status(self) -> dict:
        etcd = {"connected": True, "since": 0.0}
        return {"etcd": etcd, "members": {}, "sites": {}}


def test_the_drains_metric_counts_drains_in_effect_not_ended_ones_etcd_still_holds() -> None:
    # a timed drain's key outlives its end by a minute (DRAIN_LEASE_GRACE): an alert on
    # geodns_fleet_drains > 0 must clear at the end, as every member's answers do
    drains = {
        "fra": Drain("fra", "drill", "ops", 100.0),
        "sin": Drain("sin", "drill", "ops", 100.0, until=200.0),
    }
    for now, expected in ((150.0, 2.0), (230.0, 1.0)):
        collector = FleetCollector(_FleetSeen(drains), clock=lambda now=now: now)
        families = {f.name: f for f in collector.collect()}
        assert families["geodns_fleet_drains"].samples[0].value == expected


def test_the_fleet_section_is_checked_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "geodns.yaml"
    config.write_text(
        "fleet:\n"
        "  member: 'ns 1'\n"
        "  endpoints: [http://10.0.0.1]\n"
        "  tls: {ca_file: ca.pem}\n"
        "  username: geodns\n"
        "  down_share: 1.5\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    messages = [f"{p.line}: {p.message}" for p in caught.value.problems]
    assert any(m.startswith("2: fleet.member") for m in messages), messages
    assert any(m.startswith("3: fleet.endpoints") and "no port" in m for m in messages)
    assert any(m.startswith("4: fleet.tls") and "https://" in m for m in messages)
    assert any(m.startswith("5: fleet.username") for m in messages)
    assert any(m.startswith("6: fleet.down_share") for m in messages)
    config.write_text("fleet:\n  member: ns1\n  endpoints: [https://10.0.0.1:2379]\n")
    fleet = load_config(config).fleet
    assert fleet is not None and (fleet.member, fleet.prefix, fleet.lease_ttl) == (
        "ns1",
        "/geodns/",
        10,
    )
    config.write_text("port: 5353\n")
    assert load_config(config).fleet is None  # without fleet: a server alone, as before

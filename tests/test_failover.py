"""Failover end to end: real HTTP and TCP health endpoints on loopback, geodns checking them, and
DNS answers that move when an endpoint fails and come back when it recovers.

Checks run every 0.3 s with fall 3 / rise 2 and a 0.25 s timeout, so the documented worst case
for geodns to change its answer is interval x fall + timeout = 1.15 s (plus scheduling slack).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dns.rcode
import pytest
from health_targets import HttpEndpoint, TcpEndpoint
from mmdb_factory import city_record, write_city_db
from server_process import GeodnsServer

ZONE = "fo.test"
INTERVAL, TIMEOUT, FALL, RISE = 0.3, 0.25, 3, 2
WORST_CASE = INTERVAL * FALL + TIMEOUT
SLACK = 2.0  # CI machines are slow and shared; the measured figure is printed

NETWORKS = [
    ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
    ("1.32.0.0/16", city_record("SG", "AS", 1.35, 103.8, "Singapore")),
    ("85.0.0.0/16", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
]
JAKARTA, SINGAPORE, FRANKFURT = "36.64.1.0/24", "1.32.1.0/24", "85.0.1.0/24"


def http_check(endpoint: HttpEndpoint) -> dict:
    return {
        "type": "http",
        "address": "127.0.0.1",
        "port": endpoint.port,
        "path": "/health",
        "interval": INTERVAL,
        "timeout": TIMEOUT,
        "fall": FALL,
        "rise": RISE,
    }


@pytest.fixture
def endpoints():
    made = {
        "jkt": HttpEndpoint(),
        "sin": HttpEndpoint(),
        "fra": TcpEndpoint(),
        "dc-asia": HttpEndpoint(),
        "dc-eu": HttpEndpoint(),
        "doomed": HttpEndpoint(),
    }
    made["doomed"].mode = "fail"
    yield made
    for endpoint in made.values():
        if (
            getattr(endpoint, "server", None) is not None
            or getattr(endpoint, "sock", None) is not None
        ):
            endpoint.stop()


def config_for(endpoints: dict, db: Path, state_file: Path | None = None) -> dict:
    fra_check = {
        "type": "tcp",
        "address": "127.0.0.1",
        "port": endpoints["fra"].port,
        "interval": INTERVAL,
        "timeout": TIMEOUT,
        "fall": FALL,
        "rise": RISE,
    }
    sites = {
        "jkt": {
            "kind": "pop",
            "location": {"lat": -6.2, "lon": 106.8},
            "addresses": ["192.0.2.1"],
            "datacenters": ["dc-asia"],
            "checks": [http_check(endpoints["jkt"])],
        },
        "sin": {
            "kind": "pop",
            "location": {"lat": 1.35, "lon": 103.8},
            "addresses": ["192.0.2.2"],
            "datacenters": ["dc-asia"],
            "checks": [http_check(endpoints["sin"])],
        },
        "fra": {
            "kind": "pop",
            "location": {"lat": 50.1, "lon": 8.7},
            "addresses": ["192.0.2.4"],
            "datacenters": ["dc-eu"],
            "checks": [fra_check],
        },
        "dc-asia": {
            "kind": "dc",
            "location": {"lat": 1.3, "lon": 103.7},
            "addresses": ["192.0.2.100"],
            "checks": [http_check(endpoints["dc-asia"])],
        },
        "dc-eu": {
            "kind": "dc",
            "location": {"lat": 50.0, "lon": 8.6},
            "addresses": ["192.0.2.101"],
            "checks": [http_check(endpoints["dc-eu"])],
        },
        "doomed": {
            "kind": "pop",
            "location": {"lat": 0, "lon": 0},
            "addresses": ["192.0.2.66"],
            "checks": [http_check(endpoints["doomed"])],
        },
    }
    config: dict[str, Any] = {"sites": sites, "geoip": {"database": str(db)}}
    if state_file is not None:
        config["state_file"] = str(state_file)
    return config


def all_down_record(mode: str) -> dict:
    pools = {"main": {"values": [{"value": "192.0.2.66"}]}}
    if mode == "sorry":  # only where it is used: octoDNS (and geodns) refuse unused pools
        pools["sorry"] = {"values": [{"value": "192.0.2.200", "status": "up"}]}
    return {
        "type": "A",
        "ttl": 5,
        "value": "192.0.2.66",
        "dynamic": {"pools": pools, "rules": [{"pool": "main"}]},
        "octodns": {"geodns": {"all_down": mode}},
    }


ZONE_DATA = {
    "": {"type": "NS", "value": "ns1.fo.test."},
    "ns1": {"type": "A", "value": "192.0.2.53"},
    "www": {
        "type": "A",
        "ttl": 5,
        "values": ["192.0.2.1", "192.0.2.2", "192.0.2.4"],
        "octodns": {"geodns": {"nearest": True}},
    },
    "open": all_down_record("fail_open"),
    "closed": all_down_record("servfail"),
    "sorry": all_down_record("sorry"),
}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "city.mmdb"
    write_city_db(path, NETWORKS)
    return path


def answer(server: GeodnsServer, subnet: str, name: str = "www") -> list[str]:
    reply = server.query(f"{name}.{ZONE}", "A", ecs=subnet, timeout=1.0)
    return [rr.address for rrset in reply.answer for rr in rrset]


def wait_for_answer(server: GeodnsServer, subnet: str, expected: list[str], limit: float) -> float:
    """Seconds until `subnet` gets `expected` (bounded by `limit`); fails with the last answer."""
    start = time.monotonic()
    got: list[str] = []
    while time.monotonic() - start < limit:
        got = answer(server, subnet)
        if got == expected:
            return time.monotonic() - start
        time.sleep(0.02)
    pytest.fail(f"{subnet} still gets {got} after {limit:.1f}s, expected {expected}")


def wait_healthy(server: GeodnsServer) -> None:
    """Let every check complete at least `rise` probes (the monitor starts everything as up)."""
    time.sleep(INTERVAL * (RISE + 1))


def test_users_move_to_the_next_nearest_and_come_back_after_rise(endpoints, db, capsys) -> None:
    with GeodnsServer(config_for(endpoints, db), {ZONE: ZONE_DATA}) as server:
        wait_healthy(server)
        assert answer(server, JAKARTA) == ["192.0.2.1"]
        endpoints["jkt"].stop()
        moved = wait_for_answer(server, JAKARTA, ["192.0.2.2"], WORST_CASE + SLACK)
        assert answer(server, FRANKFURT) == ["192.0.2.4"]  # other users are not touched
        endpoints["jkt"].start()
        back = wait_for_answer(server, JAKARTA, ["192.0.2.1"], INTERVAL * (RISE + 1) + SLACK)
        # coming back needs `rise` successes in a row: at least one interval after the first
        assert back >= INTERVAL * (RISE - 1) * 0.8, f"came back after {back:.2f}s: before rise"
        with capsys.disabled():
            print(
                f"\n[failover] answer moved {moved:.2f}s after the endpoint stopped "
                f"(documented bound interval x fall + timeout = {WORST_CASE:.2f}s, + TTL for "
                f"resolvers); came back {back:.2f}s after it returned"
            )
        assert "site_state" in server.stderr_text()


def test_tcp_check_failure_moves_users(endpoints, db) -> None:
    with GeodnsServer(config_for(endpoints, db), {ZONE: ZONE_DATA}) as server:
        wait_healthy(server)
        assert answer(server, FRANKFURT) == ["192.0.2.4"]
        endpoints["fra"].stop()
        wait_for_answer(server, FRANKFURT, ["192.0.2.2"], WORST_CASE + SLACK)


def test_flapping_endpoint_does_not_flap_the_answer(endpoints, db) -> None:
    with GeodnsServer(config_for(endpoints, db), {ZONE: ZONE_DATA}) as server:
        wait_healthy(server)
        endpoints["sin"].mode = "flap"  # ok, fail, ok, fail...: never `fall` failures in a row
        seen = set()
        deadline = time.monotonic() + INTERVAL * FALL * 4
        while time.monotonic() < deadline:
            seen.update(answer(server, SINGAPORE))
            time.sleep(0.05)
        assert endpoints["sin"].requests >= FALL * 2
        assert seen == {"192.0.2.2"}


def test_dc_failure_takes_its_pops_out(endpoints, db) -> None:
    with GeodnsServer(config_for(endpoints, db), {ZONE: ZONE_DATA}) as server:
        wait_healthy(server)
        endpoints["dc-asia"].stop()
        # both Asian PoPs depend on dc-asia: Jakarta users go to Frankfurt, whose DC is fine
        wait_for_answer(server, JAKARTA, ["192.0.2.4"], WORST_CASE + SLACK)
        assert answer(server, SINGAPORE) == ["192.0.2.4"]
        assert answer(server, FRANKFURT) == ["192.0.2.4"]
        endpoints["dc-asia"].start()
        wait_for_answer(server, JAKARTA, ["192.0.2.1"], INTERVAL * (RISE + 1) + SLACK)


def test_drain_undrain_and_timed_drain_via_the_cli(endpoints, db) -> None:
    with GeodnsServer(config_for(endpoints, db), {ZONE: ZONE_DATA}) as server:
        result = server.cli("drain", "jkt", "--reason", "failover drill")
        assert result.returncode == 0, result.stderr
        assert answer(server, JAKARTA) == ["192.0.2.2"]  # the very next query
        status = server.cli("status")
        assert status.returncode == 0 and "failover drill" in status.stdout, status.stdout
        assert "jkt" in status.stdout and "down" in status.stdout
        assert server.cli("undrain", "jkt").returncode == 0
        assert answer(server, JAKARTA) == ["192.0.2.1"]
        assert server.cli("drain", "jkt", "--for", "1s").returncode == 0
        assert answer(server, JAKARTA) == ["192.0.2.2"]
        wait_for_answer(server, JAKARTA, ["192.0.2.1"], 1.0 + SLACK)
        unknown = server.cli("drain", "nowhere")
        assert unknown.returncode != 0 and "nowhere" in unknown.stderr


def test_drains_survive_a_restart(endpoints, db, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with GeodnsServer(config_for(endpoints, db, state), {ZONE: ZONE_DATA}) as server:
        assert server.cli("drain", "jkt", "--reason", "kept").returncode == 0
        assert answer(server, JAKARTA) == ["192.0.2.2"]
        server.restart()
        assert answer(server, JAKARTA) == ["192.0.2.2"]  # from the first query on
        assert "kept" in server.cli("status").stdout


def test_all_down_modes(endpoints, db) -> None:
    with GeodnsServer(config_for(endpoints, db), {ZONE: ZONE_DATA}) as server:
        deadline = time.monotonic() + WORST_CASE + SLACK
        while time.monotonic() < deadline:  # "doomed" always fails: wait until it is down
            if server.query(f"closed.{ZONE}", "A").rcode() == dns.rcode.SERVFAIL:
                break
            time.sleep(0.05)
        assert server.query(f"closed.{ZONE}", "A").rcode() == dns.rcode.SERVFAIL
        assert answer(server, JAKARTA, "open") == ["192.0.2.66"]  # fail open: as if all were up
        assert answer(server, JAKARTA, "sorry") == ["192.0.2.200"]  # the named fallback pool
        assert "all_down" in server.stderr_text()


def test_hung_endpoint_fails_after_its_timeout_without_delaying_answers(endpoints, db) -> None:
    with GeodnsServer(config_for(endpoints, db), {ZONE: ZONE_DATA}) as server:
        wait_healthy(server)
        endpoints["jkt"].mode = "hang"  # accepts, reads the request, never answers
        start = time.monotonic()
        slowest = 0.0
        while answer(server, JAKARTA) != ["192.0.2.2"]:
            assert time.monotonic() - start < WORST_CASE + SLACK, "hung endpoint never failed"
            before = time.monotonic()
            server.query(f"www.{ZONE}", "A", ecs=FRANKFURT, timeout=1.0)
            slowest = max(slowest, time.monotonic() - before)
            time.sleep(0.02)
        assert slowest < 0.2, f"an answer took {slowest:.3f}s while probes hung"

"""A fleet of three real geodns members sharing a real three-node etcd cluster, on loopback.

Every member has its own port, admin API, state file and config; real HTTP health targets run
in this process. The sites, and how each member probes them:

    fra  every member probes the same live target
    sin  ns1 probes a loopback port where nothing listens; ns2 and ns3 the live target:
         one vantage point says down, two say up -> up for the whole fleet
    jkt  ns1 and ns2 probe nothing; ns3 the live target: two of three say down -> down

ns1 reaches etcd through relays that the partition test cuts (packets stop, nothing closes);
ns3 serves a zone file with one more record than the others (its status flags it). Checks run
every 0.3 s (fall 3, rise 2); leases last 2 s; a request to etcd may take 0.5 s. The tests
share the fleet, each leaves it as it found it (no drain, every part running), and each prints
what it measured. Bounds carry the same generous slack as tests/test_failover.py.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import pytest
from etcd_process import ETCD, EtcdCluster, Relay
from health_targets import HttpEndpoint
from mmdb_factory import city_record, write_city_db
from server_process import GeodnsServer, free_tcp_port

pytestmark = pytest.mark.skipif(ETCD is None, reason="etcd is not installed (etcd-server)")

ZONE = "fleet.test"
INTERVAL, TIMEOUT, FALL, RISE = 0.3, 0.25, 3, 2
LEASE_TTL, ETCD_TIMEOUT = 2, 0.5
SLACK = 2.0  # CI machines are slow and shared; the measured figures are printed
PROPAGATION = 1.0  # the bound for a drain to reach every member
RETRY_MAX = 1.0  # geodns.fleet.member.RETRY_MAX: the longest pause between reconnects

NETWORKS = [
    ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
    ("1.32.0.0/16", city_record("SG", "AS", 1.35, 103.8, "Singapore")),
    ("85.0.0.0/16", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
]
JAKARTA, SINGAPORE, FRANKFURT = "36.64.1.0/24", "1.32.1.0/24", "85.0.1.0/24"
JKT, SIN, FRA = ["192.0.2.1"], ["192.0.2.2"], ["192.0.2.4"]
PLACES = {
    "jkt": (-6.2, 106.8, "192.0.2.1"),
    "sin": (1.35, 103.8, "192.0.2.2"),
    "fra": (50.1, 8.7, "192.0.2.4"),
}

ZONE_DATA: dict[str, Any] = {
    "": {"type": "NS", "value": "ns1.fleet.test."},
    "ns1": {"type": "A", "value": "192.0.2.53"},
    "www": {
        "type": "A",
        "ttl": 5,
        "values": ["192.0.2.1", "192.0.2.2", "192.0.2.4"],
        "octodns": {"geodns": {"nearest": True}},
    },
}


@dataclass
class Fleet:
    etcd: EtcdCluster
    relays: list[Relay]
    members: list[GeodnsServer]
    targets: dict[str, HttpEndpoint]


def member_config(
    index: int, fleet_endpoints: list[str], targets: dict, db: Path, dead: int
) -> dict:
    def check(port: int) -> dict:
        return {
            "type": "http",
            "address": "127.0.0.1",
            "port": port,
            "path": "/health",
            "interval": INTERVAL,
            "timeout": TIMEOUT,
            "fall": FALL,
            "rise": RISE,
        }

    probed = {
        "fra": targets["fra"].port,
        "sin": dead if index == 1 else targets["sin"].port,
        "jkt": targets["jkt"].port if index == 3 else dead,
    }
    sites = {
        name: {
            "kind": "pop",
            "location": {"lat": lat, "lon": lon},
            "addresses": [address],
            "checks": [check(probed[name])],
        }
        for name, (lat, lon, address) in PLACES.items()
    }
    return {
        "sites": sites,
        "geoip": {"database": str(db)},
        "state_file": "state.json",
        "fleet": {
            "member": f"ns{index}",
            "endpoints": fleet_endpoints,
            "lease_ttl": LEASE_TTL,
            "timeout": ETCD_TIMEOUT,
        },
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    db = write_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb", NETWORKS)
    targets = {name: HttpEndpoint() for name in PLACES}
    dead = free_tcp_port()  # nothing listens there: probes of it are refused at once
    with EtcdCluster(3) as etcd:
        relays = [Relay(node.client_port) for node in etcd.nodes]
        members = []
        for index in (1, 2, 3):
            endpoints = [r.endpoint for r in relays] if index == 1 else etcd.endpoints
            zone = dict(ZONE_DATA)
            if index == 3:
                zone["extra"] = {"type": "A", "value": "192.0.2.99"}
            config = member_config(index, endpoints, targets, db, dead)
            members.append(
                GeodnsServer(config, {ZONE: zone}, ready_qname=ZONE, admin_token=f"token-{index}")
            )
        MEMBERS[:] = members
        try:
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda member: member.start(), members))
            made = Fleet(etcd, relays, members, targets)
            wait_all(members, JAKARTA, SIN, INTERVAL * (FALL + 2) + SLACK)  # jkt: 2 of 3 down
            yield made
        finally:
            for member in members:
                member.cleanup()
            for relay in relays:
                relay.close()
            for target in targets.values():
                if target.server is not None:
                    target.stop()


# -- helpers -------------------------------------------------------------------------------


def answer(member: GeodnsServer, subnet: str, timeout: float = 1.0) -> list[str]:
    """The A answer for a user in `subnet`; empty when no reply came within `timeout`."""
    try:
        reply = member.query(f"www.{ZONE}", "A", ecs=subnet, timeout=timeout)
    except dns.exception.Timeout:
        return []
    return [rr.address for rrset in reply.answer for rr in rrset]


def wait_all(members: list[GeodnsServer], subnet: str, expected: list[str], limit: float) -> float:
    """Seconds until every member answers `subnet` with `expected` (bounded by `limit`)."""
    start = time.monotonic()
    pending = list(members)
    while pending:
        pending = [m for m in pending if answer(m, subnet) != expected]
        if not pending:
            break
        if time.monotonic() - start > limit:
            got = {m.config["fleet"]["member"]: answer(m, subnet) for m in pending}
            pytest.fail(
                f"after {limit:.1f}s {subnet} still gets {got}, expected {expected}\n{fleet_logs()}"
            )
        time.sleep(0.01)
    return time.monotonic() - start


def wait_until(condition: Callable[[], bool], limit: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > limit:
            pytest.fail(f"not within {limit:.1f}s: {what}\n{fleet_logs()}")
        time.sleep(0.02)
    return time.monotonic() - start


MEMBERS: list[GeodnsServer] = []  # for the logs of a failure


def fleet_logs() -> str:
    """The fleet lines of every member's log, to tell why a wait failed."""
    lines = []
    for member in MEMBERS:
        name = member.config["fleet"]["member"]
        lines += [
            f"{name}: {line}" for line in member.stderr_text().splitlines() if "fleet" in line
        ]
    return "\n".join(lines[-60:])


def admin(member: GeodnsServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One admin API request; (status, parsed JSON or text)."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{member.admin_port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {member.admin_token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            code, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        code, text = exc.code, exc.read().decode()
    try:
        return code, json.loads(text)
    except ValueError:
        return code, text


def status(member: GeodnsServer) -> dict[str, Any]:
    code, body = admin(member, "GET", "/status")
    assert code == 200, body
    return body


def drain(member: GeodnsServer, site: str, **more: Any) -> dict[str, Any]:
    code, body = admin(member, "POST", "/drain", {"site": site, "by": "test", **more})
    assert code == 200, body
    return body


def undrain(member: GeodnsServer, site: str) -> None:
    code, body = admin(member, "POST", "/undrain", {"site": site})
    assert code == 200, body


def connected(member: GeodnsServer) -> bool:
    return status(member)["fleet"]["etcd"]["connected"]


def note(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[fleet] {text}")


# -- tests ---------------------------------------------------------------------------------


def test_a_drain_reaches_every_member_within_a_second_and_a_timed_one_ends_together(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    ns1, ns2, ns3 = fleet.members
    wait_all(fleet.members, FRANKFURT, FRA, SLACK)
    drain(ns1, "fra", reason="failover drill")  # answered once etcd has committed it
    assert answer(ns1, FRANKFURT) == SIN  # the member that took it: from the next query on
    reached = wait_all([ns2, ns3], FRANKFURT, SIN, PROPAGATION + SLACK)
    undrain(ns3, "fra")
    back = wait_all(fleet.members, FRANKFURT, FRA, PROPAGATION + SLACK)

    timed = drain(ns2, "fra", for_s=1.5)["drain"]
    wait_all(fleet.members, FRANKFURT, SIN, PROPAGATION + SLACK)
    ends = {status(m)["sites"]["fra"]["drain"]["until"] for m in fleet.members}
    assert ends == {timed["until"]}  # one end, set once by the member that took the drain
    ended: dict[int, float] = {}  # when the first query that saw it ended was sent
    seen: dict[int, float] = {}  # and when its reply came back
    deadline = time.monotonic() + 1.5 + SLACK
    while len(ended) < 3 and time.monotonic() < deadline:
        for index, member in enumerate(fleet.members):
            asked = time.time()  # short timeouts: a lost reply must not delay the others' turn
            if index not in ended and answer(member, FRANKFURT, timeout=0.2) == FRA:
                ended[index], seen[index] = asked, time.time()
    assert len(ended) == 3, f"the timed drain did not end on every member: {ended}"
    # each member's own timer ends it at the one `until` (asserted above); what the polling
    # sees also holds the machine's load, so the bound has slack (typically 0.01-0.1 s)
    spread = max(ended.values()) - min(ended.values())
    assert spread < SLACK, f"the timed drain ended {spread:.3f}s apart"
    assert min(seen.values()) >= timed["until"]  # not before its end
    note(
        capsys,
        f"drain reached the other members {reached * 1000:.0f} ms after it was acknowledged "
        f"(bound {PROPAGATION:g} s), undrain {back * 1000:.0f} ms; the timed drain ended on the "
        f"three members within {spread * 1000:.0f} ms of each other, "
        f"{(min(ended.values()) - timed['until']) * 1000:.0f} ms after its end",
    )


def test_one_vantage_point_does_not_pull_a_site_but_a_majority_does(fleet: Fleet) -> None:
    ns1, ns2, ns3 = fleet.members
    # sin: only ns1's probes fail; nobody pulls it, ns1 included
    wait_until(
        lambda: status(ns1)["fleet"]["sites"].get("sin", {}).get("votes", {}).get("ns1") == "down",
        INTERVAL * (FALL + 2) + SLACK,
        "ns1 votes sin down",
    )
    for member in fleet.members:
        assert answer(member, SINGAPORE) == SIN
    ns1_status = status(ns1)
    assert ns1_status["sites"]["sin"]["state"] == "up"
    assert ns1_status["fleet"]["sites"]["sin"]["disagrees"] is True  # it follows the fleet
    assert ns1_status["sites"]["sin"]["fleet"]["own"] == "down"
    # jkt: two of three say down; ns3, whose own probes succeed, follows the fleet too
    for member in fleet.members:
        assert answer(member, JAKARTA) == SIN
    jkt = status(ns3)["fleet"]["sites"]["jkt"]
    assert jkt["votes"] == {"ns1": "down", "ns2": "down", "ns3": "up"}
    assert (jkt["fleet"], jkt["down_votes"], jkt["voters"], jkt["disagrees"]) == (
        "down",
        2,
        3,
        True,
    )
    table = ns3.cli("status").stdout
    assert "own probes disagree" in table and "jkt" in table


def test_a_target_that_stops_moves_users_on_every_member(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    wait_all(fleet.members, FRANKFURT, FRA, SLACK)
    fleet.targets["fra"].stop()
    try:
        moved = wait_all(fleet.members, FRANKFURT, SIN, FALL * INTERVAL + 1.0 + SLACK)
    finally:
        fleet.targets["fra"].start()
    back = wait_all(fleet.members, FRANKFURT, FRA, INTERVAL * (RISE + 1) + SLACK)
    note(
        capsys,
        f"a stopped target left every member's answers after {moved:.2f}s (bound fall x "
        f"interval + 1 s = {FALL * INTERVAL + 1:.1f}s), came back after {back:.2f}s",
    )


def test_one_etcd_node_stopped_keeps_the_fleet_working(fleet: Fleet) -> None:
    ns1, ns2, ns3 = fleet.members
    fleet.etcd.stop(0)  # the node every member talks to first
    try:
        wait_until(  # those talking to it move to the next endpoint
            lambda: all(connected(m) for m in fleet.members),
            RETRY_MAX + 3 * ETCD_TIMEOUT + SLACK,
            "every member connected through another node",
        )
        drain(ns2, "fra", reason="etcd node down")
        wait_all(fleet.members, FRANKFURT, SIN, PROPAGATION + SLACK)
        for member in fleet.members:
            assert connected(member)
            assert status(member)["fleet"]["etcd"]["endpoint"] != fleet.etcd.endpoints[0]
        undrain(ns3, "fra")
        wait_all(fleet.members, FRANKFURT, FRA, PROPAGATION + SLACK)
    finally:
        fleet.etcd.start(0)


def test_a_partitioned_member_fails_static_and_catches_up(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    ns1, ns2, ns3 = fleet.members
    for relay in fleet.relays:
        relay.partition()
    try:
        noticed = wait_until(  # a renewal unanswered by each of the three endpoints in turn
            lambda: not connected(ns1),
            LEASE_TTL / 3 + 3 * ETCD_TIMEOUT + SLACK,
            "ns1 fails static",
        )
        fleet_status = status(ns1)["fleet"]
        assert fleet_status["mode"] == "fail static" and fleet_status["etcd"]["error"]
        assert "fail static" in ns1.cli("status").stdout
        drain(ns2, "fra", reason="made while ns1 was cut off")
        wait_all([ns2, ns3], FRANKFURT, SIN, PROPAGATION + SLACK)
        assert answer(ns1, FRANKFURT) == FRA  # ns1 cannot know yet: it serves what it saw
        code, body = admin(ns1, "POST", "/drain", {"site": "sin"})
        assert code == 503 and "etcd is out of reach" in body["error"], body
        assert answer(ns1, SINGAPORE) == SIN  # nothing changed
        # ns1's lease ends: its votes leave the others' quorum. jkt had ns1 and ns2 down of
        # three; now one of two: up for ns2 and ns3. ns1 keeps the votes it saw plus its own.
        gone = wait_until(
            lambda: "ns1" not in status(ns2)["fleet"]["members"],
            LEASE_TTL + SLACK,
            "ns1's record expires with its lease",
        )
        wait_all([ns2, ns3], JAKARTA, JKT, PROPAGATION + SLACK)
        assert answer(ns1, JAKARTA) == SIN
    finally:
        for relay in fleet.relays:
            relay.heal()
    caught_up = wait_all(fleet.members, FRANKFURT, SIN, 1.0 + ETCD_TIMEOUT * 3 + SLACK)
    wait_all(fleet.members, JAKARTA, SIN, PROPAGATION + SLACK)  # ns1 votes again
    assert connected(ns1)
    undrain(ns1, "fra")
    wait_all(fleet.members, FRANKFURT, FRA, PROPAGATION + SLACK)
    note(
        capsys,
        f"partitioned member failed static after {noticed:.2f}s, its votes left the others' "
        f"quorum after {gone:.2f}s more; it applied the drain made meanwhile {caught_up:.2f}s "
        "after the partition healed",
    )


def test_etcd_quorum_lost_then_stopped_members_fail_static_and_reconverge(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    ns1, ns2, ns3 = fleet.members
    drain(ns1, "jkt", reason="kept across the outage")
    fleet.etcd.stop(1, 2)  # no quorum: node 0 runs without a leader
    try:
        wait_until(
            lambda: not any(connected(m) for m in fleet.members),
            LEASE_TTL / 3 + ETCD_TIMEOUT * 3 + SLACK,
            "every member fails static",
        )
        fleet.etcd.stop(0)  # and now etcd is gone altogether
        for member in fleet.members:
            assert status(member)["fleet"]["mode"] == "fail static"
            assert status(member)["sites"]["jkt"]["drained"] is True  # as last seen
        code, body = admin(ns3, "POST", "/undrain", {"site": "jkt"})
        assert code == 503 and "etcd is out of reach" in body["error"], body
        # every member's own probes now fail fra, but each still counts the others' last
        # votes (up): one of three, so fra stays in for everyone until etcd is back
        fleet.targets["fra"].stop()
        wait_until(
            lambda: all(status(m)["sites"]["fra"]["fleet"]["own"] == "down" for m in fleet.members),
            INTERVAL * (FALL + 2) + SLACK,
            "every member's own probes fail fra",
        )
        for member in fleet.members:
            assert answer(member, FRANKFURT) == FRA
        # a member restarted now has seen no fleet state in this life: it starts with the
        # drains of its state file and, until it connects, decides by its own probes
        ns3.restart()
        assert status(ns3)["fleet"]["mode"] == "fail static"
        assert status(ns3)["sites"]["jkt"]["drained"] is True
        wait_all([ns3], FRANKFURT, SIN, INTERVAL * (FALL + 2) + SLACK)
    finally:
        began = time.monotonic()
        fleet.etcd.start()
    try:
        # back together: three of three say fra is down; the drain made before is still there
        wait_all(fleet.members, FRANKFURT, SIN, RETRY_MAX + ETCD_TIMEOUT * 3 + SLACK)
        wait_until(
            lambda: all(connected(m) for m in fleet.members),
            RETRY_MAX + ETCD_TIMEOUT * 3 + SLACK,
            "every member connected again",
        )
        converged = time.monotonic() - began
        for member in fleet.members:
            assert status(member)["sites"]["jkt"]["drained"] is True
    finally:
        fleet.targets["fra"].start()
        code, body = admin(ns2, "POST", "/undrain", {"site": "jkt"})  # also when a check failed
    assert code == 200 and body["was_drained"] is True, body
    wait_all(fleet.members, FRANKFURT, FRA, INTERVAL * (RISE + 1) + SLACK)
    assert not any(status(m)["sites"]["jkt"]["drained"] for m in fleet.members)
    note(capsys, f"after etcd's return every member agreed again within {converged:.2f}s")


def test_kill_9_of_a_member_its_votes_expire_and_its_drain_survives(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    ns1, ns2, ns3 = fleet.members
    drain(ns2, "fra", reason="acknowledged, then kill -9")
    ns2.send_signal(signal.SIGKILL)  # right after the acknowledgement
    ns2.wait(5)
    try:
        # jkt was down by ns1 and ns2 of three; without ns2's votes it is one of two: up
        gone = wait_all([ns1, ns3], JAKARTA, JKT, LEASE_TTL + SLACK)
        assert "ns2" not in status(ns1)["fleet"]["members"]
        assert answer(ns1, FRANKFURT) == SIN and answer(ns3, FRANKFURT) == SIN
    finally:
        ns2.proc = None
        ns2.start()
    assert answer(ns2, FRANKFURT) == SIN  # the drain ns2 acknowledged before it died
    wait_all(fleet.members, JAKARTA, SIN, INTERVAL * (FALL + 2) + SLACK)  # ns2 votes again
    undrain(ns1, "fra")
    wait_all(fleet.members, FRANKFURT, FRA, PROPAGATION + SLACK)
    note(capsys, f"a killed member's votes left the quorum after {gone:.2f}s (lease {LEASE_TTL} s)")


def test_status_and_metrics_show_the_whole_fleet(fleet: Fleet) -> None:
    ns1, ns2, ns3 = fleet.members
    wait_until(
        lambda: set(status(ns1)["fleet"]["members"]) == {"ns1", "ns2", "ns3"},
        SLACK,
        "every member listed",
    )
    view = status(ns1)["fleet"]
    assert view["mode"] == "connected" and view["member"] == "ns1"
    members = view["members"]
    assert members["ns1"]["self"] is True and members["ns2"]["self"] is False
    assert (
        members["ns1"]["zones"] == members["ns2"]["zones"] and f"{ZONE}." in members["ns1"]["zones"]
    )
    assert members["ns3"]["differs"] == ["zones"]  # one record more than the others
    assert members["ns1"]["differs"] == members["ns2"]["differs"] == []
    assert view["sites"]["jkt"]["votes"] == {"ns1": "down", "ns2": "down", "ns3": "up"}
    table = ns1.cli("status")
    assert table.returncode == 0, table.stderr
    for text in ("fleet: ns1", "connected", "ns2", "ns3", "ZONES DIFFER", "jkt", "2/3"):
        assert text in table.stdout, table.stdout
    digests = {
        line.split()[0]: line.split("zones ", 1)[1].split()[0]
        for line in table.stdout.splitlines()
        if line.startswith("ns") and "zones " in line
    }
    assert digests["ns1"] == digests["ns2"] != digests["ns3"], table.stdout
    code, metrics = admin(ns1, "GET", "/metrics")
    assert code == 200
    for line in (
        "geodns_fleet_etcd_connected 1.0",
        "geodns_fleet_members 3.0",
        'geodns_fleet_site_down_votes{site="jkt"} 2.0',
        'geodns_fleet_site_voters{site="jkt"} 3.0',
        'geodns_fleet_member_differs{member="ns3",what="zones"} 1.0',
        'geodns_fleet_site_disagrees{site="sin"} 1.0',
    ):
        assert line in metrics, line


def test_a_drain_written_with_etcdctl_is_applied_and_garbage_is_ignored(fleet: Fleet) -> None:
    ns1, ns2, ns3 = fleet.members
    # docs/fleet.md: the key is the interface; etcdctl reaches etcd when no member does
    fleet.etcd.etcdctl("put", "/geodns/drains/fra", '{"reason": "by hand", "by": "etcdctl"}')
    wait_all(fleet.members, FRANKFURT, SIN, PROPAGATION + SLACK)
    assert status(ns3)["sites"]["fra"]["drain"]["by"] == "etcdctl"
    fleet.etcd.etcdctl("put", "/geodns/drains/fra", "{not json")
    wait_all(fleet.members, FRANKFURT, FRA, PROPAGATION + SLACK)  # unreadable: drains nothing
    wait_until(lambda: "fleet_bad_key" in ns2.stderr_text(), SLACK, "the bad key is logged")
    fleet.etcd.etcdctl("del", "/geodns/drains/fra")
    assert ns2.stderr_text().count("fleet_bad_key") == 1  # once per version of the key

"""Live reload: SIGHUP and zone-directory changes swap the zones whole, without dropping queries.

A client thread queries continuously while the zone is rewritten and reloaded over and over;
every query must be answered, and every answer must come from the old or the new zone, never a
mix. A broken file must leave the old zones serving and be reported with file:line.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request

import dns.exception
import dns.message
import dns.query
import dns.rcode
from server_process import GeodnsServer

ZONE = "reload.test"


def zone_text(version: int) -> str:
    # two names that must always change together: a half-swapped zone would mix them
    return f"""---
'':
  type: NS
  value: ns1.reload.test.
a:
  type: A
  value: 192.0.2.{version}
b:
  type: TXT
  value: version-{version}
ns1:
  type: A
  value: 192.0.2.53
"""


def answer(server: GeodnsServer, name: str, rdtype: str) -> str:
    reply = server.query(f"{name}.{ZONE}", rdtype, timeout=1.0)
    assert reply.rcode() == dns.rcode.NOERROR
    return reply.answer[0][0].to_text().strip('"')


def test_reload_under_load_loses_no_query_and_never_mixes() -> None:
    with GeodnsServer({"watch_zones": False}, {ZONE: zone_text(1)}) as server:
        results: list[tuple[str, str]] = []
        failures: list[str] = []
        stop = threading.Event()

        def client() -> None:
            deadline = time.monotonic() + 30
            for _ in range(20_000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                query = dns.message.make_query(f"a.{ZONE}", "A")
                try:
                    reply = dns.query.udp(query, server.host, port=server.port, timeout=1.0)
                except dns.exception.Timeout:
                    failures.append("timeout")
                    continue
                if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
                    failures.append(dns.rcode.to_text(reply.rcode()))
                    continue
                results.append(("a", reply.answer[0][0].address))

        thread = threading.Thread(target=client)
        thread.start()
        try:
            # at least 12 reloads, and more until the client has had 300 answers (bounded)
            for round_number in range(60):
                if round_number >= 12 and len(results) >= 300:
                    break
                version = 1 + (round_number + 1) % 2
                server.write_zone(ZONE, zone_text(version))
                server.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 5
                while (
                    time.monotonic() < deadline and answer(server, "a", "A") != f"192.0.2.{version}"
                ):
                    time.sleep(0.02)
                # the pair must be consistent: both names from the same file version
                assert answer(server, "a", "A") == f"192.0.2.{version}"
                assert answer(server, "b", "TXT") == f"version-{version}"
        finally:
            stop.set()
            thread.join(timeout=40)
        assert not failures, failures[:10]
        assert len(results) >= 300
        assert {address for _, address in results} <= {"192.0.2.1", "192.0.2.2"}


def test_broken_zone_keeps_the_old_snapshot_and_says_why() -> None:
    with GeodnsServer({"watch_zones": False}, {ZONE: zone_text(1)}) as server:
        path = server.zone_path(ZONE)
        path.write_text(zone_text(2).replace("value: 192.0.2.2", "value: 192.0.2.999"))
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "reload_failed" not in server.stderr_text():
            time.sleep(0.05)
        log = server.stderr_text()
        assert "reload_failed" in log
        assert f"{path}:7:" in log and "192.0.2.999" in log
        assert answer(server, "a", "A") == "192.0.2.1"  # still the old zone
        path.write_text(zone_text(2))
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and answer(server, "a", "A") != "192.0.2.2":
            time.sleep(0.05)
        assert answer(server, "a", "A") == "192.0.2.2"


def test_zone_directory_changes_are_picked_up_without_a_signal() -> None:
    with GeodnsServer({}, {ZONE: zone_text(1)}) as server:
        server.write_zone(ZONE, zone_text(2))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and answer(server, "a", "A") != "192.0.2.2":
            time.sleep(0.1)
        assert answer(server, "a", "A") == "192.0.2.2"
        # a new zone file appears: it is served after the watcher picks it up
        server.write_zone("other.test", zone_text(3).replace("reload.test", "other.test"))
        deadline = time.monotonic() + 10
        rcode = None
        while time.monotonic() < deadline:
            rcode = server.query("a.other.test", "A").rcode()
            if rcode == dns.rcode.NOERROR:
                break
            time.sleep(0.1)
        assert rcode == dns.rcode.NOERROR


def test_reload_with_workers_reaches_every_worker() -> None:
    with GeodnsServer({"workers": 2, "watch_zones": False}, {ZONE: zone_text(1)}) as server:
        # the main process answers before its worker has started (a worker started after the
        # reload would read the new zone by itself): wait, bounded, for the end of the start
        deadline = time.monotonic() + 30
        while '"event": "started"' not in server.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        server.write_zone(ZONE, zone_text(2))
        server.send_signal(signal.SIGHUP)
        # many fresh sockets: the kernel spreads them over both workers; until every one gets
        # the new zone (bounded: a worker the reload never reached keeps answering version 1),
        # not for a fixed second, which a loaded machine may need more than
        deadline = time.monotonic() + 30
        seen = {answer(server, "a", "A") for _ in range(60)}
        while seen != {"192.0.2.2"} and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = {answer(server, "a", "A") for _ in range(60)}
        assert seen == {"192.0.2.2"}


def test_failed_reload_shows_in_status_and_metrics() -> None:
    with GeodnsServer({"watch_zones": False}, {ZONE: zone_text(1)}) as server:
        path = server.zone_path(ZONE)
        path.write_text(zone_text(1).replace("type: TXT", "type: TXTT"))
        result = server.cli("reload")
        assert result.returncode == 1
        assert f"{path}:9:" in result.stderr and "TXTT" in result.stderr
        status = server.cli("status")
        assert "last_reload: FAILED" in status.stdout and f"{path}:9:" in status.stdout
        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.admin_port}/metrics", timeout=5
        ) as r:
            metrics = r.read().decode()
        assert 'geodns_reloads_total{result="failure"} 1.0' in metrics
        assert "geodns_reload_ok 0.0" in metrics
        path.write_text(zone_text(2))
        assert server.cli("reload").returncode == 0
        assert "last_reload: ok" in server.cli("status").stdout
        assert answer(server, "a", "A") == "192.0.2.2"


def test_drains_and_health_survive_a_reload() -> None:
    sites = {
        "one": {"location": {"lat": 0, "lon": 0}, "addresses": ["192.0.2.1"]},
        "two": {"location": {"lat": 10, "lon": 10}, "addresses": ["192.0.2.2"]},
    }
    zone = zone_text(1) + (
        "near:\n  type: A\n  values: [192.0.2.1, 192.0.2.2]\n"
        "  octodns:\n    geodns:\n      default_order: [one, two]\n      nearest: true\n"
    )
    with GeodnsServer({"watch_zones": False, "sites": sites}, {ZONE: zone}) as server:
        assert answer(server, "near", "A") == "192.0.2.1"
        assert server.cli("drain", "one", "--reason", "maintenance").returncode == 0
        assert answer(server, "near", "A") == "192.0.2.2"
        server.write_zone(ZONE, zone.replace("version-1", "version-2"))
        assert server.cli("reload").returncode == 0
        assert answer(server, "b", "TXT") == "version-2"
        assert answer(server, "near", "A") == "192.0.2.2"  # still drained after the reload

"""Delegation for real: Debian's unbound, on loopback, resolving through geodns.

unbound is the recursive resolver, with a stub zone pointing at geodns and ECS forwarding on
(the subnetcache module). Users in different subnets asking unbound must get their nearest PoP,
and unbound must cache by the scope geodns returned: once geodns is stopped, a user in the same
database network is still answered from unbound's cache, and a user elsewhere is not.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
from mmdb_factory import city_record, write_city_db
from server_process import GeodnsServer, free_port

pytestmark = pytest.mark.skipif(shutil.which("unbound") is None, reason="unbound is not installed")

ZONE = "cdn.geo.test"
SITES = {
    "jkt": {"kind": "pop", "location": {"lat": -6.2, "lon": 106.8}, "addresses": ["192.0.2.1"]},
    "fra": {"kind": "pop", "location": {"lat": 50.1, "lon": 8.7}, "addresses": ["192.0.2.4"]},
    "gru": {"kind": "pop", "location": {"lat": -23.5, "lon": -46.6}, "addresses": ["192.0.2.6"]},
}
ZONE_DATA = {
    "": {"type": "NS", "values": [f"ns1.{ZONE}."]},
    "ns1": {"type": "A", "value": "127.0.0.1"},
    "www": {
        "type": "A",
        "ttl": 300,
        "values": ["192.0.2.1", "192.0.2.4", "192.0.2.6"],
        "octodns": {"geodns": {"nearest": True}},
    },
}
NETWORKS = [
    ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
    ("85.0.0.0/16", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
    ("177.0.0.0/16", city_record("BR", "SA", -23.5, -46.6, "Sao Paulo")),
]


def unbound_config(directory: Path, port: int, geodns_port: int) -> Path:
    config = directory / "unbound.conf"
    config.write_text(
        f"""server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  use-syslog: no
  logfile: ""
  chroot: ""
  username: ""
  directory: "{directory}"
  pidfile: ""
  verbosity: 1
  do-ip6: no
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  module-config: "subnetcache iterator"
  send-client-subnet: 127.0.0.1
  client-subnet-always-forward: yes
  max-client-subnet-ipv4: 24
  qname-minimisation: no
  harden-referral-path: no
  target-fetch-policy: "0 0 0 0 0"
  local-zone: "test." nodefault   # unbound answers .test (RFC 6761) itself by default
stub-zone:
  name: "{ZONE}"
  stub-addr: 127.0.0.1@{geodns_port}
"""
    )
    return config


def ask_unbound(port: int, subnet: str, timeout: float = 3.0) -> dns.message.Message:
    query = dns.message.make_query(
        f"www.{ZONE}", "A", use_edns=0, options=[dns.edns.ECSOption.from_text(subnet)]
    )
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)


def answer_of(reply: dns.message.Message) -> list[str]:
    return [rr.address for rrset in reply.answer for rr in rrset if rrset.rdtype == 1]


@pytest.fixture
def resolver_setup(tmp_path: Path):
    db = tmp_path / "city.mmdb"
    write_city_db(db, NETWORKS)
    config = {"sites": SITES, "geoip": {"database": str(db)}, "listen": ["127.0.0.1"]}
    server = GeodnsServer(config, {ZONE: ZONE_DATA})
    server.start()
    port = free_port()
    conf = unbound_config(tmp_path, port, server.port)
    check = subprocess.run(
        ["unbound-checkconf", str(conf)], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unbound = subprocess.Popen(
        ["unbound", "-d", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                ask_unbound(port, "36.64.1.0/24", timeout=0.5)
                break
            except Exception:
                if unbound.poll() is not None:
                    pytest.fail(f"unbound exited: {unbound.stdout.read().decode()}")
                time.sleep(0.2)
        yield server, port
    finally:
        unbound.terminate()
        try:
            unbound.wait(timeout=10)
        except subprocess.TimeoutExpired:
            unbound.kill()
        server.cleanup()


def test_users_get_their_nearest_pop_through_unbound(resolver_setup) -> None:
    server, port = resolver_setup
    for subnet, expected in [
        ("36.64.1.0/24", "192.0.2.1"),
        ("85.0.1.0/24", "192.0.2.4"),
        ("177.0.1.0/24", "192.0.2.6"),
    ]:
        reply = ask_unbound(port, subnet)
        assert reply.rcode() == dns.rcode.NOERROR
        assert answer_of(reply) == [expected], subnet


def test_unbound_caches_by_the_scope_geodns_returned(resolver_setup) -> None:
    server, port = resolver_setup
    assert answer_of(ask_unbound(port, "36.64.1.0/24")) == ["192.0.2.1"]
    server.stop()  # from now on only unbound's cache can answer
    # same /16 database network: geodns answered with scope /16, so unbound reuses the answer
    cached = ask_unbound(port, "36.64.200.0/24")
    assert answer_of(cached) == ["192.0.2.1"]
    # a network unbound has not seen cannot be answered without geodns: unbound gives up after
    # seconds of retries, while a wrong answer from its cache would come at once
    try:
        uncached = ask_unbound(port, "85.0.1.0/24", timeout=2)
    except dns.exception.Timeout:
        return
    assert answer_of(uncached) == [], "unbound answered a subnet it never asked geodns about"

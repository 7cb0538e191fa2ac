"""DNSSEC with real validating resolvers: unbound (a trust anchor for each zone, stub zones
to geodns, ECS on) and delv.

geodns runs in-process (geodns.daemon.app.App, real sockets on loopback) so that the test
owns its DNSSEC clock: the ZSK rollover is driven by moving that clock, while unbound
validates against the real one. Every step asks unbound for networks it has not cached
(one database network each, never merged: the gaps between them are unlocated), so each
answer is fetched from geodns and validated anew, with the DNSKEY RRset unbound cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml
from dnssec_support import EXAMPLE, EXTRA, write_config
from mmdb_factory import city_record, write_city_db
from server_process import free_port

from geodns.config.loader import load_geo
from geodns.config.server import load_config
from geodns.daemon.app import App
from geodns.dnssec.keys import KeyStore, ds_records
from geodns.dnssec.rollover import key_set

pytestmark = pytest.mark.skipif(
    shutil.which("unbound") is None or shutil.which("delv") is None,
    reason="unbound and delv (bind9-dnsutils) are needed",
)

JAKARTA = city_record("ID", "AS", -6.2, 106.8, "Jakarta")
FRANKFURT = city_record("DE", "EU", 50.1, 8.7, "Frankfurt")
# every other /16: a fresh network per question, each its own ECS scope in unbound's cache
JAKARTA_NETS = [f"36.{64 + 2 * i}.0.0/16" for i in range(12)]
FRANKFURT_NETS = [f"85.{2 * i}.0.0/16" for i in range(12)]


def _subnets(networks: list[str]) -> Iterator[str]:
    for network in networks:
        yield network.replace(".0.0/16", ".7.0/24")


def unbound_config(
    directory: Path, port: int, geodns_port: int, proxy_port: int, anchors: list[str]
) -> Path:
    lines = "\n".join(f'  trust-anchor: "{anchor}"' for anchor in anchors)
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
  val-log-level: 2
  do-ip6: no
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  module-config: "subnetcache validator iterator"
  send-client-subnet: 127.0.0.1
  client-subnet-always-forward: yes
  max-client-subnet-ipv4: 24
  qname-minimisation: no
  harden-referral-path: no
  target-fetch-policy: "0 0 0 0 0"
  local-zone: "test." nodefault
{lines}
stub-zone:
  name: "{EXAMPLE}"
  stub-addr: 127.0.0.1@{geodns_port}
stub-zone:
  name: "{EXTRA}"
  stub-addr: 127.0.0.1@{proxy_port}
"""
    )
    return config


class TamperingProxy:
    """A UDP relay between unbound and geodns for one zone that, while `tamper` is set, flips
    one bit of the last RRSIG in the answer section of replies (not DNSKEY ones): a broken
    signature on the wire. Bounded: it stops with the test."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.tamper = False
        self.tampered = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.settimeout(2.0)
            while not self.stopping.is_set():
                try:
                    data, peer = self.socket.recvfrom(65535)
                    out.sendto(data, ("127.0.0.1", self.upstream))
                    reply, _ = out.recvfrom(65535)
                except (TimeoutError, OSError):
                    continue
                self.socket.sendto(self._maybe_tamper(reply), peer)

    def _maybe_tamper(self, reply: bytes) -> bytes:
        if not self.tamper:
            return reply
        message = dns.message.from_wire(reply)
        signatures = [r for r in message.answer if r.rdtype == dns.rdatatype.RRSIG]
        if not signatures or signatures[-1].covers == dns.rdatatype.DNSKEY:
            return reply
        signature = signatures[-1][0].signature
        at = reply.rindex(signature)
        self.tampered += 1
        return reply[: at + 8] + bytes([reply[at + 8] ^ 0x01]) + reply[at + 9 :]

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.socket.close()


def ask(
    port: int, name: str, rdtype: str = "A", subnet: str | None = None, timeout: float = 4
) -> dns.message.Message:
    options = [dns.edns.ECSOption.from_text(subnet)] if subnet else None
    query = dns.message.make_query(name, rdtype, want_dnssec=True, use_edns=0, options=options)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)


def addresses(reply: dns.message.Message) -> set[str]:
    return {r.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for r in rrset}


def validated(reply: dns.message.Message) -> bool:
    return bool(reply.flags & dns.flags.AD) and reply.rcode() in (
        dns.rcode.NOERROR,
        dns.rcode.NXDOMAIN,
    )


class Clock:
    """The server's DNSSEC clock: the real one plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    database = tmp_path / "city.mmdb"
    write_city_db(
        database,
        [(n, JAKARTA) for n in JAKARTA_NETS] + [(n, FRANKFURT) for n in FRANKFURT_NETS],
    )
    health = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # Jakarta's health check target
    health.bind(("127.0.0.1", 0))
    health.listen(16)
    port = free_port()
    path = write_config(
        tmp_path,
        # ZSK lifetime 10 minutes: the test's clock moves by minutes, so every signature's
        # inception (an hour before signing) is in the past for unbound too
        {"zsk_lifetime": "10m", "dnskey_ttl": 2, "propagation_delay": 1},
        {
            "listen": ["127.0.0.1"],
            "port": port,
            "workers": 1,
            "geoip": {"database": str(database)},
            "cache_dir": str(tmp_path / "cache"),
            "rrl": {"enabled": False},
        },
    )
    config_data = yaml.safe_load(path.read_text())
    config_data["sites"]["jakarta"]["checks"] = [
        {
            "type": "tcp",
            "address": "127.0.0.1",
            "port": health.getsockname()[1],
            "interval": 0.2,
            "timeout": 0.1,
            "fall": 1,
            "rise": 1,
        }
    ]
    path.write_text(yaml.safe_dump(config_data, sort_keys=False))
    load_geo(load_config(path), build=True)  # the place index, cached before the server starts
    yield {"path": path, "root": tmp_path, "health": health}
    health.close()


async def _start(path: Path, clock: Clock) -> App:
    app = App(load_config(path), path, clock=clock)
    await app.start()
    return app


def _anchors(path: Path, now: float) -> list[str]:
    config = load_config(path)
    found = []
    for zone, policy in config.dnssec.items():
        found += ds_records(KeyStore(policy.key_directory, zone).load(), now)
    return [line.replace(" IN DS ", " DS ") for line in found]


@contextlib.asynccontextmanager
async def running_unbound(
    directory: Path, geodns_port: int, proxy_port: int, anchors: list[str]
) -> AsyncIterator[int]:
    """unbound, started and awaited in a thread: geodns answers on this event loop meanwhile."""
    process, port = await asyncio.to_thread(
        _start_unbound, directory, geodns_port, proxy_port, anchors
    )
    try:
        yield port
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()


def _start_unbound(
    directory: Path, geodns_port: int, proxy_port: int, anchors: list[str]
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = unbound_config(directory, port, geodns_port, proxy_port, anchors)
    check = subprocess.run(
        ["unbound-checkconf", str(config)], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with (directory / "unbound.log").open("wb") as log:
        process = subprocess.Popen(
            ["unbound", "-d", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            ask(port, "ns1." + EXAMPLE, timeout=0.5)
            return process, port
        except Exception:
            if process.poll() is not None:
                raise AssertionError((directory / "unbound.log").read_text()) from None
            time.sleep(0.1)
    process.kill()
    raise AssertionError("unbound did not answer within 15 s")


def unbound_log(setup: dict[str, Any], lines: int = 30) -> str:
    """The end of unbound's log (validation failures say why at val-log-level 2)."""
    path = Path(setup["root"]) / "unbound.log"
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


async def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_unbound_validates_every_answer_across_events(setup) -> None:
    asyncio.run(_scenario(setup))


async def _scenario(setup: dict[str, Any]) -> None:
    path: Path = setup["path"]
    clock = Clock()
    app = await _start(path, clock)
    proxy = TamperingProxy(app.config.port)
    jakarta, frankfurt = _subnets(JAKARTA_NETS), _subnets(FRANKFURT_NETS)
    try:
        assert app.state is not None
        await _until(lambda: "jakarta" not in app.state.snapshot.down)
        anchors = _anchors(path, clock())
        async with running_unbound(setup["root"], app.config.port, proxy.port, anchors) as port:

            async def unbound(
                name: str, rdtype: str = "A", subnet: str | None = None
            ) -> dns.message.Message:
                return await asyncio.to_thread(ask, port, name, rdtype, subnet)

            # Jakarta and Frankfurt users: different RRsets, both validated
            www = "www." + EXAMPLE
            from_jakarta = await unbound(www, "A", next(jakarta))
            from_frankfurt = await unbound(www, "A", next(frankfurt))
            assert validated(from_jakarta) and validated(from_frankfurt)
            assert addresses(from_jakarta) == {"203.0.113.11"}
            assert addresses(from_frankfurt) == {"198.51.100.21"}
            # NXDOMAIN and NODATA validate; so do the extra zone's wildcard and DNAME
            for name, rdtype in (
                ("nope." + EXAMPLE, "A"),
                ("mx1." + EXAMPLE, "AAAA"),
                ("img." + EXAMPLE, "A"),
                ("x.wild." + EXTRA, "TXT"),
                ("x.alias." + EXTRA, "TXT"),
                ("zzz." + EXTRA, "A"),
            ):
                reply = await unbound(name, rdtype)
                assert validated(reply), (name, rdtype, reply)
            assert (await unbound("nope." + EXAMPLE)).rcode() == dns.rcode.NXDOMAIN
            # a broken signature on the wire: unbound refuses it (SERVFAIL), proof that it
            # validates; the other zone is not affected, and without the tamper all is well
            proxy.tamper = True
            broken = await unbound("ns1." + EXTRA, "A")
            assert proxy.tampered and broken.rcode() == dns.rcode.SERVFAIL
            assert validated(await unbound("api." + EXAMPLE, "A", next(jakarta)))
            proxy.tamper = False
            assert validated(await unbound("apex-less." + EXTRA, "TXT"))
            assert validated(await unbound(EXTRA, "TXT"))

            # a health flip: Jakarta's check target goes away; Jakarta's users get Singapore
            setup["health"].close()
            await _until(lambda: "jakarta" in app.state.snapshot.down)
            reply = await unbound(www, "A", next(jakarta))
            assert validated(reply) and addresses(reply) == {"203.0.113.12"}
            # a drain: Frankfurt's users go to Ashburn
            assert app.monitor is not None
            app.monitor.drain("frankfurt", "dnssec test")
            await _until(lambda: "frankfurt" in app.state.snapshot.down)
            reply = await unbound(www, "A", next(frankfurt))
            assert validated(reply) and addresses(reply) == {"198.51.100.31"}
            # a reload with a new name: signed on reload, validated
            zone_file = Path(app.config.zones_dir) / "cdn.example.com.yaml"
            zone = yaml.safe_load(zone_file.read_text())
            zone["added"] = {"type": "TXT", "value": "after reload"}
            zone_file.write_text(yaml.safe_dump(zone))
            assert await app.reload("dnssec test")
            reply = await unbound("added." + EXAMPLE, "TXT")
            assert validated(reply) and reply.answer

            # a ZSK rollover, driven by the server's clock. Before: one ZSK signs
            signed = app.state.snapshot.signed[EXAMPLE]
            old_zsk = signed.keys.zsk.tag
            policy = app.config.dnssec[EXAMPLE]
            assert policy.zsk_lifetime == 600
            successor_publish = signed.keys.zsk.activate + 600 - 3
            clock.offset = successor_publish - time.time()
            await app.keep_dnssec()  # the successor is published (made ahead, KEY_LEAD)
            keys = app.state.snapshot.signed[EXAMPLE].keys
            assert len([k for k in keys.published if k.role == "zsk"]) == 2
            assert keys.zsk.tag == old_zsk  # published, not yet signing
            reply = await unbound(www, "A", next(jakarta))
            assert validated(reply)
            # unbound's cached DNSKEY RRset (TTL 2) expires in real time; unbound counts TTLs in
            # whole seconds, so a set fetched in the second of the publication lives until the
            # end of the second after next (2.5 s failed now and then on a busy machine)
            await asyncio.sleep(3.2)
            reply = await unbound("api." + EXAMPLE, "A", next(frankfurt))  # fetches the new set
            assert validated(reply)
            clock.offset += 3  # Ipub later: the successor signs everything
            await app.keep_dnssec()
            new_zsk = app.state.snapshot.signed[EXAMPLE].keys.zsk.tag
            assert new_zsk != old_zsk
            for name, subnet in (
                (www, next(jakarta)),
                (www, next(frankfurt)),
                ("img." + EXAMPLE, next(jakarta)),
            ):
                reply = await unbound(name, "A", subnet)
                if not validated(reply):
                    print(reply.to_text(), unbound_log(setup, 200), sep="\n")
                assert validated(reply), (name, subnet)
            reply = await unbound("nope2." + EXAMPLE, "A")
            assert validated(reply) and reply.rcode() == dns.rcode.NXDOMAIN
            on_disk = key_set(KeyStore(policy.key_directory, EXAMPLE).load(), clock())
            assert on_disk is not None and on_disk.zsk.tag == new_zsk
    finally:
        proxy.stop()
        await app.stop()


def _delv(
    port: int, anchors: Path, zone: str, name: str, rdtype: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["delv", "@127.0.0.1", "-p", str(port), "-a", str(anchors), f"+root={zone}", name, rdtype],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


EXAMPLE_RECORDS = [
    ("", "SOA"),
    ("", "NS"),
    ("", "MX"),
    ("", "TXT"),
    ("", "CAA"),
    ("", "DNSKEY"),
    ("", "CDS"),
    ("", "CDNSKEY"),
    ("_imap._tcp", "SRV"),
    ("www", "A"),
    ("www", "AAAA"),
    ("api", "A"),
    ("api", "AAAA"),
    ("img", "A"),
    ("upload", "A"),
    ("account", "A"),
    ("assets", "CNAME"),
    ("mx1", "A"),
    ("ns1", "A"),
    ("ns1", "AAAA"),
]


def test_delv_validates_every_record_type_of_the_example_zone(setup) -> None:
    asyncio.run(_delv_scenario(setup))


async def _delv_scenario(setup: dict[str, Any]) -> None:
    path: Path = setup["path"]
    clock = Clock()
    app = await _start(path, clock)
    try:
        lines = []
        for anchor in _anchors(path, clock()):
            owner, _, tag, algorithm, digest_type, digest = anchor.split(" ", 5)
            lines.append(
                f'  {owner} static-ds {tag} {algorithm} {digest_type} "{digest.replace(" ", "")}";'
            )
        anchors = setup["root"] / "anchors.conf"
        anchors.write_text("trust-anchors {\n" + "\n".join(lines) + "\n};\n")
        port = app.config.port
        for label, rdtype in EXAMPLE_RECORDS:
            name = f"{label}.{EXAMPLE}" if label else EXAMPLE
            result = await asyncio.to_thread(_delv, port, anchors, EXAMPLE, name, rdtype)
            assert "; fully validated" in result.stdout, (
                name,
                rdtype,
                result.stdout,
                result.stderr,
            )
        for name, rdtype, expected in (
            ("nope." + EXAMPLE, "A", "resolution failed: ncache nxdomain"),
            ("mx1." + EXAMPLE, "TXT", "resolution failed: ncache nxrrset"),
        ):
            result = await asyncio.to_thread(_delv, port, anchors, EXAMPLE, name, rdtype)
            assert (
                "; negative response, fully validated" in result.stdout
                or expected in result.stdout + result.stderr
            ), (name, result.stdout, result.stderr)
            assert "fully validated" in result.stdout, (name, result.stdout, result.stderr)
    finally:
        await app.stop()

"""The probes against real servers on 127.0.0.1 ephemeral ports, started by each test.

HTTP and HTTPS endpoints are aiohttp servers, the hung endpoint accepts connections and never
answers, the DNS endpoint is a dnslib responder on UDP. `HttpEndpoint` is shared with the monitor
tests.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from geodns.geo.sites import CheckSpec
from geodns.health.probes import ProbeResult, new_session, run_probe

LOOPBACK = "127.0.0.1"


class HttpEndpoint:
    """A real HTTP(S) health endpoint on a loopback port that counts what it receives."""

    def __init__(
        self,
        status: int = 200,
        body: str = "ok",
        delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.status, self.body, self.delay, self.ssl_context = status, body, delay, ssl_context
        self.port = 0
        self.requests = 0
        self.hosts: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.hosts.append(request.headers.get("Host"))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.status in (301, 302):
                return web.Response(status=self.status, headers={"Location": "/elsewhere"})
            return web.Response(status=self.status, text=self.body)
        finally:
            self.in_flight -= 1

    async def start(self) -> HttpEndpoint:
        """Listen (again, on the same port after a stop)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self.runner.setup()
        await web.TCPSite(self.runner, LOOPBACK, self.port, ssl_context=self.ssl_context).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def check(self, **settings: Any) -> CheckSpec:
        kind = "https" if self.ssl_context else "http"
        return CheckSpec(type=kind, address=LOOPBACK, port=self.port, **settings)


async def hung_server() -> tuple[asyncio.base_events.Server, list[asyncio.StreamWriter]]:
    """Accepts connections and never reads or answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    return await asyncio.start_server(accept, LOOPBACK, 0), held


def run(main: Callable[[], Awaitable[Any]], limit: float = 10.0) -> Any:
    return asyncio.run(asyncio.wait_for(main(), limit))


def probe(spec: CheckSpec) -> ProbeResult:
    return asyncio.run(asyncio.wait_for(run_probe(spec), spec.timeout + 5))


# -- HTTP ------------------------------------------------------------------------------------


def test_http_status_match_and_mismatch() -> None:
    async def main() -> list[ProbeResult]:
        endpoint = await HttpEndpoint(status=503).start()
        try:
            return [
                await run_probe(endpoint.check()),
                await run_probe(endpoint.check(expect_status=(200, 503))),
            ]
        finally:
            await endpoint.stop()

    mismatch, match = run(main)
    assert mismatch[:2] == (False, "HTTP 503, expected 200")
    assert match[:2] == (True, "HTTP 503")
    assert 0 < match[2] < 1


def test_http_body_match() -> None:
    async def main() -> list[ProbeResult]:
        endpoint = await HttpEndpoint(body='{"status": "healthy"}').start()
        async with new_session() as session:  # the monitor's way: one shared session
            try:
                return [
                    await run_probe(endpoint.check(body="healthy"), session),
                    await run_probe(endpoint.check(body="degraded"), session),
                ]
            finally:
                await endpoint.stop()

    found, missing = run(main)
    assert found[:2] == (True, "HTTP 200")
    assert missing[:2] == (False, "HTTP 200, body does not contain 'degraded'")


def test_http_host_header_and_path_reach_the_server() -> None:
    async def main() -> tuple[HttpEndpoint, ProbeResult, ProbeResult]:
        endpoint = await HttpEndpoint().start()
        try:
            named = await run_probe(endpoint.check(host="www.example.test", path="/_dns"))
            plain = await run_probe(endpoint.check())
            return endpoint, named, plain
        finally:
            await endpoint.stop()

    endpoint, named, plain = run(main)
    assert named[0] and plain[0]
    assert endpoint.hosts == ["www.example.test", f"{LOOPBACK}:{endpoint.port}"]


def test_http_redirect_is_not_followed() -> None:
    async def main() -> ProbeResult:
        endpoint = await HttpEndpoint(status=302).start()
        try:
            return await run_probe(endpoint.check())
        finally:
            await endpoint.stop()

    assert run(main)[:2] == (False, "HTTP 302, expected 200")


def test_a_hung_endpoint_fails_after_its_timeout_not_later() -> None:
    timeout = 0.5

    async def main() -> tuple[ProbeResult, float]:
        server, held = await hung_server()
        port = server.sockets[0].getsockname()[1]
        try:
            started = time.perf_counter()
            result = await run_probe(
                CheckSpec(type="http", address=LOOPBACK, port=port, timeout=timeout)
            )
            return result, time.perf_counter() - started
        finally:
            for writer in held:
                writer.close()
            server.close()

    (ok, detail, latency), elapsed = run(main)
    assert not ok and detail == "timeout after 0.5s"
    # not before its timeout; and it ends (the hung server never answers): the upper bound
    # only ends a failure, so a loaded machine does not fail it
    assert timeout - 0.05 <= latency <= elapsed < timeout + 30


def test_http_connection_refused() -> None:
    async def main() -> ProbeResult:
        endpoint = await HttpEndpoint().start()
        await endpoint.stop()
        return await run_probe(endpoint.check())

    ok, detail, latency = run(main)
    assert not ok and "refused" in detail and latency < 1


# -- HTTPS -----------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl is available")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
            + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
            + ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_https_verifies_certificates_unless_told_not_to(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def main() -> tuple[HttpEndpoint, list[ProbeResult]]:
        endpoint = await HttpEndpoint(ssl_context=context).start()
        try:
            return endpoint, [
                await run_probe(endpoint.check()),
                await run_probe(endpoint.check(host="localhost")),
                await run_probe(endpoint.check(verify_tls=False)),
                await run_probe(endpoint.check(verify_tls=False, host="www.example.test")),
            ]
        finally:
            await endpoint.stop()

    endpoint, (by_ip, by_name, unverified, unverified_host) = run(main)
    for refused in (by_ip, by_name):
        assert not refused[0]
        assert refused[1].startswith("TLS certificate: verify failed: self")  # self-signed ...
    assert unverified[:2] == (True, "HTTP 200")
    assert unverified_host[:2] == (True, "HTTP 200")
    assert endpoint.requests == 2  # a failed verification sends no request
    assert endpoint.hosts[-1] == "www.example.test"


# -- TCP -------------------------------------------------------------------------------------


def test_tcp_connect_then_refused_after_the_listener_closes() -> None:
    async def main() -> tuple[ProbeResult, ProbeResult]:
        server = await asyncio.start_server(lambda r, w: w.close(), LOOPBACK, 0)
        spec = CheckSpec(type="tcp", address=LOOPBACK, port=server.sockets[0].getsockname()[1])
        connected = await run_probe(spec)
        server.close()
        await server.wait_closed()
        return connected, await run_probe(spec)

    connected, refused = run(main)
    assert connected[:2] == (True, "connected")
    assert not refused[0] and "refused" in refused[1]


# -- DNS -------------------------------------------------------------------------------------


class DnsResponder(asyncio.DatagramProtocol):
    """Answers every query with `rcode`, or never answers when `silent`."""

    def __init__(self, rcode: int = RCODE.NOERROR, silent: bool = False) -> None:
        self.rcode, self.silent = rcode, silent
        self.transport: asyncio.DatagramTransport | None = None
        self.queries: list[DNSRecord] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = DNSRecord.parse(data)
        self.queries.append(query)
        if self.silent or self.transport is None:
            return
        reply = query.reply()
        reply.header.rcode = self.rcode
        if self.rcode == RCODE.NOERROR and query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        self.transport.sendto(bytes(reply.pack()), addr)


async def dns_probe(responder: DnsResponder, **settings: Any) -> ProbeResult:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: responder, local_addr=(LOOPBACK, 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        return await run_probe(CheckSpec(type="dns", address=LOOPBACK, port=port, **settings))
    finally:
        transport.close()


def test_dns_probe_accepts_noerror_and_nxdomain_only() -> None:
    async def main() -> list[ProbeResult]:
        answering = DnsResponder()
        results = [await dns_probe(answering, query_name="www.example.test", query_type="A")]
        assert str(answering.queries[0].q.qname) == "www.example.test."
        for rcode in (RCODE.NXDOMAIN, RCODE.SERVFAIL, RCODE.REFUSED):
            results.append(await dns_probe(DnsResponder(rcode)))
        return results

    noerror, nxdomain, servfail, refused = run(main)
    assert noerror[:2] == (True, "NOERROR, 1 answer(s) for A")
    assert nxdomain[:2] == (True, "NXDOMAIN, 0 answer(s) for SOA")
    assert servfail[:2] == (False, "rcode SERVFAIL")
    assert refused[:2] == (False, "rcode REFUSED")


def test_dns_probe_times_out_on_a_silent_server_and_rejects_a_bad_type() -> None:
    async def main() -> list[ProbeResult]:
        return [
            await dns_probe(DnsResponder(silent=True), timeout=0.3),
            await dns_probe(DnsResponder(), query_type="NOSUCHTYPE"),
        ]

    silent, bad = run(main)
    assert silent[:2] == (False, "timeout after 0.3s") and silent[2] < 0.6
    assert not bad[0] and bad[1].startswith("bad query . NOSUCHTYPE")


def test_dns_probe_port_unreachable_is_a_quick_failure() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    ok, detail, latency = probe(CheckSpec(type="dns", address=LOOPBACK, port=port, timeout=1.0))
    assert (ok, detail) == (False, "connection refused")  # the ICMP port unreachable, at once
    assert latency < 0.5

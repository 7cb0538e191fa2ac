"""The probes: one HTTP(S), TCP or DNS check of one target -> (ok, detail, latency in seconds).

A probe never raises for anything the target does: refused, reset, hung, bad TLS, garbage reply
all come back as `(False, detail, latency)`, with a detail short enough for a log line and the
status table. Every probe is bounded by its check's `timeout` as a whole (connect, TLS, request,
reply), so a target that accepts and never answers is a failure after `timeout`, not later.

HTTP(S) checks open a new connection per probe (no keep-alive: a reused connection would hide a
listener that no longer accepts), follow no redirects (a 302 to an error page is not a 200),
ignore proxy settings from the environment, and read at most BODY_LIMIT bytes of the body for a
`body` match. Certificates are verified unless `verify_tls: false`; with `host` set, the Host
header, SNI and the verified name are that host, which is what a health endpoint behind a
virtual host or a CDN certificate needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from typing import Any

import aiohttp
from dnslib import QTYPE, RCODE, DNSRecord

from geodns import __version__
from geodns.geo.sites import CheckSpec

BODY_LIMIT = 64 * 1024
USER_AGENT = f"geodns-health/{__version__}"

ProbeResult = tuple[bool, str, float]


def new_session() -> aiohttp.ClientSession:
    """A client session for HTTP(S) probes: one connection per probe, no cookies, no proxies."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0, ttl_dns_cache=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
        auto_decompress=False,
        trust_env=False,
    )


async def run_probe(spec: CheckSpec, session: aiohttp.ClientSession | None = None) -> ProbeResult:
    """Probe one target once; `session` (from new_session) is reused for HTTP(S) when given."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.type in ("http", "https"):
                ok, detail = await _http(spec, session)
            elif spec.type == "tcp":
                ok, detail = await _tcp(spec)
            elif spec.type == "dns":
                ok, detail = await _dns(spec)
            else:
                ok, detail = False, f"unknown check type {spec.type!r}"
    except TimeoutError:
        ok, detail = False, f"timeout after {spec.timeout:g}s"
    except aiohttp.ClientConnectorCertificateError as exc:
        ok, detail = False, f"TLS certificate: {_reason(exc.certificate_error)}"
    except aiohttp.ClientSSLError as exc:
        ok, detail = False, f"TLS: {_reason(exc.os_error)}"
    except aiohttp.ClientConnectorError as exc:
        ok, detail = False, _reason(exc.os_error)
    except (aiohttp.ClientError, ssl.SSLError) as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}".rstrip(": ")
    except OSError as exc:
        ok, detail = False, _reason(exc)
    return ok, detail, time.perf_counter() - started


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"verify failed: {exc.verify_message}"
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return os.strerror(exc.errno).lower()  # asyncio's strerror is "Connect call failed (...)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _url(spec: CheckSpec) -> str:
    host = f"[{spec.address}]" if ":" in spec.address else spec.address
    path = spec.path if spec.path.startswith("/") else f"/{spec.path}"
    return f"{spec.type}://{host}:{spec.port}{path}"


async def _http(spec: CheckSpec, session: aiohttp.ClientSession | None) -> tuple[bool, str]:
    if session is None:
        async with new_session() as own:
            return await _http(spec, own)
    options: dict[str, Any] = {"allow_redirects": False}
    if spec.host:
        options["headers"] = {"Host": spec.host}
    if spec.type == "https":
        options["ssl"] = spec.verify_tls  # True: the default context, verifying; False: none
        if spec.host:
            options["server_hostname"] = spec.host
    async with session.get(_url(spec), **options) as response:
        status = response.status
        if status not in spec.expect_status:
            expected = ", ".join(str(s) for s in spec.expect_status)
            return False, f"HTTP {status}, expected {expected}"
        if spec.body is not None:
            body = (await response.content.read(BODY_LIMIT)).decode("utf-8", "replace")
            if spec.body not in body:
                return False, f"HTTP {status}, body does not contain {spec.body!r}"
        return True, f"HTTP {status}"


async def _tcp(spec: CheckSpec) -> tuple[bool, str]:
    _, writer = await asyncio.open_connection(spec.address, spec.port)
    writer.close()
    with contextlib.suppress(OSError):  # connected is all we asked
        await writer.wait_closed()
    return True, "connected"


class _DnsClient(asyncio.DatagramProtocol):
    """Waits for the reply to one query; stray or malformed datagrams are ignored."""

    def __init__(self, query_id: int, reply: asyncio.Future[DNSRecord]) -> None:
        self.query_id = query_id
        self.reply = reply

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            record = DNSRecord.parse(data)
        except Exception:  # dnslib raises more than DNSError on garbage
            return
        if record.header.id == self.query_id and record.header.qr and not self.reply.done():
            self.reply.set_result(record)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _dns(spec: CheckSpec) -> tuple[bool, str]:
    try:
        query = DNSRecord.question(spec.query_name, spec.query_type)
    except Exception as exc:  # an unknown type name or a bad name
        return False, f"bad query {spec.query_name} {spec.query_type}: {exc}"
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[DNSRecord] = loop.create_future()
    family = socket.AF_INET6 if ":" in spec.address else socket.AF_INET
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DnsClient(query.header.id, reply),
        remote_addr=(spec.address, spec.port),
        family=family,
    )
    try:
        transport.sendto(bytes(query.pack()))
        record = await reply
    finally:
        transport.close()
    rcode = record.header.rcode
    name = RCODE.get(rcode, str(rcode))
    if rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
        return False, f"rcode {name}"
    return True, f"{name}, {len(record.rr)} answer(s) for {QTYPE.get(query.q.qtype)}"

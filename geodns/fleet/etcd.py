"""A small etcd v3 client over etcd's JSON gateway, on aiohttp.

etcd serves its v3 API twice: as gRPC, and as JSON over HTTP (the "gRPC gateway", `/v3/...`,
stable since etcd 3.4, served on the same client port). geodns uses the JSON one through
aiohttp, which it already has for health probes and the admin API, instead of a gRPC client:
no grpcio/protobuf (a large compiled dependency with threads of its own) for the eight calls a
fleet needs: range, put, delete, lease grant / keep-alive / revoke, watch and authenticate.

- Keys and values are bytes on the wire (base64 in the JSON); here they are UTF-8 text.
- Every call but a watch is bounded by `timeout`. A call that cannot be made on one endpoint
  (refused, reset, timed out, or etcd answers Unavailable, e.g. a node without a leader) is tried
  on the next; `EtcdUnavailable` when no endpoint could take it. An error etcd itself returns
  (permission denied, bad request) is `EtcdError` and is not retried elsewhere.
- Every request carries gRPC metadata `hasleader: true` (the gateway forwards `Grpc-Metadata-*`
  headers), so an etcd node that has lost its cluster's leader refuses it and ends our watch,
  rather than serving stale data.
- With a user name, the client authenticates once and again when etcd says its token expired.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from geodns.common.errors import FleetError

UNAVAILABLE = (14,)  # gRPC codes worth trying on another endpoint (UNAVAILABLE)
DEADLINE_EXCEEDED = 4
UNAUTHENTICATED = 16
NOT_FOUND = 5
WATCH_LINE_LIMIT = 16 * 1024 * 1024  # one watch response; a fleet's records are a few KB each
HEADERS = {"Grpc-Metadata-hasleader": "true", "Content-Type": "application/json"}


class EtcdError(FleetError):
    """etcd answered with an error (`code` is its gRPC code), or a reply could not be read."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No endpoint could take the request: etcd is down, out of reach, or has no quorum."""


class WatchCompacted(EtcdError):
    """The watch asked for history etcd has compacted away: read everything again."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd keeps it."""

    key: str
    value: str
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch: a put (with the new value) or a delete."""

    kind: str  # "put" or "delete"
    key: str
    value: str
    mod_revision: int


class EtcdClient:
    """One connection pool to an etcd cluster; `close()` when done."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = list(endpoints)
        self.current = 0  # the endpoint that answered last: tried first
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.username = username
        self.password = password
        self.token: str | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoint(self) -> str:
        return self.endpoints[self.current]

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl_context or True, limit=16),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the calls ------------------------------------------------------------------------

    async def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix`: (the store's revision, the keys)."""
        reply = await self.call(
            "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        )
        kvs = [_key_value(kv) for kv in reply.get("kvs", [])]
        return _revision(reply), kvs

    async def put(self, key: str, value: str, lease: int = 0) -> int:
        """Set `key`; the revision of the change. `lease` ties the key's life to a lease."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _revision(await self.call("/v3/kv/put", body))

    async def delete(self, key: str) -> tuple[int, int]:
        """Delete `key`: (the revision, how many keys were deleted: 0 or 1)."""
        reply = await self.call("/v3/kv/deleterange", {"key": _b64(key)})
        return _revision(reply), int(reply.get("deleted", 0))

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its ID."""
        reply = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        if reply.get("error"):
            raise EtcdError(f"etcd refused a lease: {reply['error']}")
        return int(reply["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew a lease; its new TTL in seconds, or 0 when it has expired (its keys are gone)."""
        reply = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        result = reply.get("result", reply)
        return int(result.get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """End a lease now: every key put with it is deleted."""
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if exc.code != NOT_FOUND:  # already expired
                raise

    async def watch(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[tuple[int, list[Event]]]:
        """Every change under `prefix` from `start_revision` on, as (revision, events) batches.

        Never ends by itself while etcd is up; EtcdUnavailable when the stream breaks (etcd
        stopped, the node lost its leader), WatchCompacted when `start_revision` is too old.
        """
        body = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(prefix_end(prefix)),
                "start_revision": str(start_revision),
            }
        }
        url = self.endpoint + "/v3/watch"
        try:
            async with self.session().post(
                url,
                data=json.dumps(body),
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout),
            ) as response:
                if response.status != 200:
                    raise _error_of(await _json(response), f"watch at {self.endpoint}")
                async for line in _lines(response):
                    message = json.loads(line)
                    if "error" in message and "result" not in message:
                        raise _error_of(message["error"], f"watch at {self.endpoint}")
                    result = message.get("result", {})
                    if result.get("compact_revision") not in (None, "0"):
                        raise WatchCompacted(
                            f"history before revision {result['compact_revision']} is compacted"
                        )
                    if result.get("canceled"):
                        reason = result.get("cancel_reason") or "canceled by etcd"
                        raise EtcdUnavailable(f"watch at {self.endpoint} ended: {reason}")
                    events = [_event(e) for e in result.get("events", [])]
                    if events or result.get("created"):
                        yield _revision(result), events
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise EtcdUnavailable(f"watch at {self.endpoint} broke: {_reason(exc)}") from None
        raise EtcdUnavailable(f"watch at {self.endpoint} ended: the connection closed")

    # -- transport ------------------------------------------------------------------------

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `path` on the current endpoint, then the others; the JSON reply."""
        failures = []
        for attempt in range(len(self.endpoints)):
            index = (self.current + attempt) % len(self.endpoints)
            endpoint = self.endpoints[index]
            try:
                reply = await self._post(endpoint, path, body)
            except EtcdUnavailable as exc:
                failures.append(str(exc))
                continue
            self.current = index
            return reply
        raise EtcdUnavailable("; ".join(failures))

    async def _post(
        self,
        endpoint: str,
        path: str,
        body: dict[str, Any],
        auth: bool = True,
        renew: bool = True,
    ) -> dict[str, Any]:
        """One request; `auth`: with the token (authenticating first when there is none yet);
        `renew`: when etcd says the token expired, authenticate again and retry once."""
        if auth and self.username and self.token is None:
            await self._authenticate(endpoint)
        try:
            async with (
                asyncio.timeout(self.timeout),
                self.session().post(
                    endpoint + path, data=json.dumps(body), headers=self._headers(auth)
                ) as response,
            ):
                reply = await _json(response)
                status = response.status
        except TimeoutError:
            raise EtcdUnavailable(f"{endpoint}: no answer within {self.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise EtcdUnavailable(f"{endpoint}: {_reason(exc)}") from None
        if status == 200:
            return reply
        error = _error_of(reply, endpoint)
        if error.code == UNAUTHENTICATED and auth and renew and self.username:
            self.token = None  # expired (etcd's simple tokens do, unused): a new one, once
            return await self._post(endpoint, path, body, renew=False)
        raise error

    async def _authenticate(self, endpoint: str) -> None:
        reply = await self._post(
            endpoint,
            "/v3/auth/authenticate",
            {"name": self.username, "password": self.password or ""},
            auth=False,
        )
        token = reply.get("token")
        if not token:
            raise EtcdError(f"{endpoint}: etcd gave no token for user {self.username!r}")
        self.token = str(token)

    def _headers(self, auth: bool = True) -> dict[str, str]:
        if auth and self.token:
            return {**HEADERS, "Authorization": self.token}
        return HEADERS


def prefix_end(prefix: str) -> str:
    """The end of etcd's key range that holds exactly the keys starting with `prefix`."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return "\0"
    raw[-1] += 1
    return raw.decode("utf-8", "surrogateescape")


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The newline-delimited JSON messages of a streamed gateway response."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
        if len(buffer) > WATCH_LINE_LIMIT:
            raise ValueError(f"a watch message longer than {WATCH_LINE_LIMIT} bytes")
    if buffer.strip():
        yield buffer


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    text = await response.text()
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        value = {"error": f"HTTP {response.status}: {text[:200]}"}
    return value if isinstance(value, dict) else {"error": f"unexpected reply: {text[:200]}"}


def _error_of(reply: dict[str, Any], where: str) -> EtcdError:
    code = reply.get("code")
    message = reply.get("message") or reply.get("error") or f"unexpected reply {reply!r:.200}"
    message = str(message).strip()
    if "CommonName of client" in message:
        message += " (etcd's JSON gateway refuses a client certificate with a Common Name: make it without one, see docs/fleet.md)"
    code = int(code) if isinstance(code, int | str) and str(code).isdigit() else None
    if code in UNAVAILABLE or code == DEADLINE_EXCEEDED:
        return EtcdUnavailable(f"{where}: {message}", code)
    return EtcdError(f"{where}: {message}", code)


def _reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", exc)
    if isinstance(os_error, OSError) and isinstance(os_error.errno, int) and os_error.errno > 0:
        return os.strerror(os_error.errno).lower()  # asyncio's is "Connect call failed (...)"
    return str(exc) or type(exc).__name__


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogateescape")).decode("ascii")


def _text(value: Any) -> str:
    return base64.b64decode(value or "").decode("utf-8", "replace")


def _revision(reply: dict[str, Any]) -> int:
    return int(reply.get("header", {}).get("revision", 0))


def _key_value(kv: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_text(kv.get("key")),
        value=_text(kv.get("value")),
        mod_revision=int(kv.get("mod_revision", 0)),
        lease=int(kv.get("lease", 0)),
    )


def _event(event: dict[str, Any]) -> Event:
    kv = event.get("kv", {})
    return Event(
        kind="delete" if event.get("type") == "DELETE" else "put",
        key=_text(kv.get("key")),
        value=_text(kv.get("value")),
        mod_revision=int(kv.get("mod_revision", 0)),
    )

"""The CLI side of the admin API: drain, undrain, status and reload of a running server.

Each function takes the server's config (geodns.config.server.ServerConfig) and finds the server
the way it listens: its Unix socket (geodns.config.loader.admin_socket: no token needed) when it
is there and this user may use it, otherwise the TCP address `admin.listen` with the token read
from `admin.token_file` (without a token, TCP serves status and metrics, not drains). The functions are blocking
(one short asyncio run each) and raise AdminError with a message fit for the terminal.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import math
import os
import re
import socket
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from geodns.common.errors import AdminError
from geodns.config.loader import admin_socket
from geodns.daemon.admin import parse_listen

TIMEOUT = 10.0
RELOAD_TIMEOUT = 120.0  # a reload parses every zone file
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def drain(
    config: Any,
    site: str,
    reason: str = "",
    duration: float | str | None = None,
    by: str | None = None,
) -> dict[str, Any]:
    """Drain `site` for `duration` (seconds or "10m"; None: until undrained); the drain made."""
    payload: dict[str, Any] = {"site": site, "reason": reason, "by": by or _who()}
    if duration is not None:
        payload["for_s"] = parse_duration(duration) if isinstance(duration, str) else duration
    return _call(config, "POST", "/drain", payload)["drain"]


def undrain(config: Any, site: str) -> dict[str, Any]:
    """End a drain: {"ok": true, "was_drained": bool, "drain": the ended drain or null}."""
    return _call(config, "POST", "/undrain", {"site": site})


def status(config: Any) -> dict[str, Any]:
    """The server's status: {"sites": {name: {...}}, "down": [...], ...}."""
    return _call(config, "GET", "/status")


def reload(config: Any) -> tuple[bool, list[str]]:
    """Ask the server to re-read config and zones: (ok, errors that kept the old ones)."""
    answer = _call(config, "POST", "/reload", {}, timeout=RELOAD_TIMEOUT, accept=(422,))
    return bool(answer.get("ok")), [str(e) for e in answer.get("errors", [])]


def whatif(config: Any, action: str, site: str) -> dict[str, Any]:
    """Who would move if `site` were drained or failed (geodns.daemon.whatif), per the server."""
    return _call(config, "POST", "/console/whatif", {"action": action, "site": site})


class AdminUnreachable(AdminError):
    """No server answers at the admin API's address."""


def parse_duration(text: str) -> float:
    """ "30s", "10m", "2h", "1d", "1h30m" or plain seconds -> seconds; ValueError otherwise."""
    value = text.strip().lower()
    parts = DURATION.findall(value)
    if not value or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"expected a duration such as 30s, 10m, 2h or 1d, got {text!r}")
    seconds = sum(float(number) * UNITS[unit or "s"] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"a duration must be longer than 0, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human duration: 45s, 3m12s, 2h05m, 3d04h ("-" for what is not a finite time)."""
    if not math.isfinite(seconds):
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def format_status(status: dict[str, Any]) -> str:
    """A table for `geodns status`: one row per site, and why a down site is down."""
    now = status.get("now", time.time())
    lines = [
        f"{key}: {value}"
        for key, value in sorted(status.items())
        if key not in ("now", "down", "sites") and isinstance(value, str | int | float | bool)
    ]
    header = ("SITE", "KIND", "STATE", "SINCE", "LAST CHECK", "LATENCY", "STREAK", "DRAIN")
    rows = [header]
    causes: dict[int, str] = {}
    sites = status.get("sites", {})
    for name, site in sorted(sites.items()):
        state = site.get("state", "?")
        if state == "up" and not site.get("checked", True):
            state = "up (unchecked)"
        since = site.get("since")
        last = site.get("last")
        streak = site.get("streak") or 0
        rows.append(
            (
                name,
                site.get("kind", ""),
                state,
                f"{format_duration(now - since)} ago" if since else "-",
                _clip(f"{'ok' if last['ok'] else 'FAIL'}: {last['detail']}", 40) if last else "-",
                f"{last['latency'] * 1000:.0f} ms" if last else "-",
                f"{streak} {'ok' if last['ok'] else 'fail'}" if last and streak else "-",
                _drain_text(site.get("drain"), now),
            )
        )
        if site.get("down_cause"):
            causes[len(rows) - 1] = site["down_cause"]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if index in causes:
            lines.append(f"  cause: {causes[index]}")
    down = status.get("down", [])
    lines.append(f"{len(sites)} site(s), {len(down)} down{': ' if down else ''}{', '.join(down)}")
    if isinstance(status.get("fleet"), dict):
        lines.extend(format_fleet(status["fleet"], now))
    return "\n".join(lines)


def format_fleet(fleet: dict[str, Any], now: float) -> list[str]:
    """The fleet part of `geodns status`: etcd, every member, every site's votes."""
    etcd = fleet.get("etcd", {})
    since = etcd.get("since") or now
    if etcd.get("connected"):
        head = [
            f"fleet: {fleet.get('member')}, etcd connected at {etcd.get('endpoint')} "
            f"for {format_duration(now - since)}"
        ]
    else:
        synced = etcd.get("last_sync")
        seen = f"read {format_duration(now - synced)} ago" if synced else "never read"
        head = [
            f"fleet: {fleet.get('member')}, etcd UNREACHABLE for {format_duration(now - since)}: "
            f"{etcd.get('error')}",
            f"  fail static: serving the last fleet state seen ({seen}) plus this member's "
            "own probes; drains are refused until etcd is back",
        ]
    rows = [("MEMBER", "REPORTED", "VERSION", "ZONES", "DIGESTS", "NOTE")]
    for name, member in sorted(fleet.get("members", {}).items()):
        reported = member.get("reported")
        zones = ", ".join(f"{z} {serial}" for z, serial in sorted(member.get("zones", {}).items()))
        notes = [f"{what.upper()} DIFFER" for what in member.get("differs", [])]
        rows.append(
            (
                name + (" (this one)" if member.get("self") else ""),
                f"{format_duration(now - reported)} ago" if reported else "-",
                str(member.get("version") or "-"),
                zones or "-",
                _digests(member),
                ", ".join(notes),
            )
        )
    names = sorted(fleet.get("members", {}))
    votes = [("SITE", "FLEET", *names, "")]
    for site, info in sorted(fleet.get("sites", {}).items()):
        verdict = info.get("fleet") or "-"
        tally = f"{verdict} {info.get('down_votes', 0)}/{info.get('voters', 0)}"
        cells = [str(info.get("votes", {}).get(name, "-")) for name in names]
        note = "own probes disagree: following the fleet" if info.get("disagrees") else ""
        votes.append((site, tally, *cells, note))
    share = fleet.get("down_share", 0.5)
    footer = [
        f"a site is down for the fleet when more than {share:.0%} of the members with a result "
        "say so (FLEET: down votes / voters)"
    ]
    if fleet.get("name_clash"):
        footer.append(f"NAME CLASH: {fleet['name_clash']}")
    unknown = fleet.get("drains_of_unknown_sites") or []
    if unknown:
        footer.append(f"drains of sites this member does not have: {', '.join(unknown)}")
    return ["", *head, *_table(rows), *_table(votes), *footer]


def _digests(member: dict[str, Any]) -> str:
    """The first 8 hex digits of a member's zones and config digests: equal on every member
    that answers alike (geodns.fleet.identity)."""
    zones, config = member.get("zones_digest"), member.get("config_digest")
    if not zones and not config:
        return "-"
    return f"zones {str(zones or '-')[:8]} config {str(config or '-')[:8]}"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _drain_text(drain: dict[str, Any] | None, now: float) -> str:
    if not drain:
        return "-"
    text = f"by {drain.get('by') or 'unknown'}"
    if drain.get("reason"):
        text += f": {drain['reason']}"
    until = drain.get("until")
    if until is not None:
        text += f" ({format_duration(until - now)} left)"
    return text


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# -- transport ------------------------------------------------------------------------------


def _endpoint(config: Any) -> tuple[str, str | None, str | None, str]:
    """(base URL, Unix socket path, token, where for messages) of the admin API."""
    admin = config.admin
    unix = admin_socket(config)
    if unix and (_is_socket(unix) or not admin.listen):
        return "http://localhost", unix, None, f"unix:{unix}"
    if not admin.listen:
        raise AdminError("the admin API is disabled: set admin.listen or admin.socket in config")
    host, port = parse_listen(admin.listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"http://{netloc}", None, _token(admin.token_file), f"http://{netloc}"


def _is_socket(path: str) -> bool:
    """Whether a socket is there that this user may use (else TCP: status and metrics still
    work for another user; drains then need the token)."""
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode) and os.access(path, os.W_OK)
    except OSError:
        return False


def _token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise AdminError(f"cannot read admin.token_file {path}: {exc.strerror or exc}") from None


def _call(
    config: Any,
    method: str,
    path: str,
    payload: dict[str, Any] | None = None,
    timeout: float = TIMEOUT,
    accept: tuple[int, ...] = (),
) -> dict[str, Any]:
    base, unix, token, where = _endpoint(config)
    code, body = asyncio.run(_request(method, base + path, unix, token, payload, timeout, where))
    if code == 200 or code in accept:
        return body
    message = body.get("error") or f"HTTP {code}"
    expected = admin_socket(config)
    if code == 403 and unix is None and expected and not os.path.lexists(expected):
        message += (
            f" (the admin socket {expected} is not there: the server makes it when it starts, "
            "so one removed under it, with its cache directory say, comes back with a "
            "restart; SIGHUP still reloads)"
        )
    if code == 401:
        raise AdminError(
            f"geodns admin API at {where} refused the request: {message} (check admin.token_file)"
        )
    raise AdminError(message)


async def _request(
    method: str,
    url: str,
    unix: str | None,
    token: str | None,
    payload: dict[str, Any] | None,
    timeout: float,
    where: str,
) -> tuple[int, dict[str, Any]]:
    connector = aiohttp.UnixConnector(path=unix) if unix else aiohttp.TCPConnector()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=timeout),
                trust_env=False,
            ) as session,
            session.request(method, url, json=payload, headers=headers) as response,
        ):
            text = await response.text()
            code = response.status
    except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionError) as exc:
        reason = getattr(exc, "os_error", exc)
        detail = getattr(reason, "strerror", None) or str(reason)
        raise AdminUnreachable(
            f"cannot reach geodns admin API at {where}: is the server running? ({detail})"
        ) from None
    except TimeoutError:
        raise AdminError(
            f"geodns admin API at {where} did not answer within {timeout:g}s"
        ) from None
    except aiohttp.ClientError as exc:
        raise AdminError(f"geodns admin API at {where}: {exc}") from None
    try:
        body = json.loads(text)
    except ValueError:
        body = {"error": text.strip() or f"HTTP {code}"}
    if not isinstance(body, dict):
        body = {"error": f"unexpected answer: {text[:200]}"}
    return code, body

"""The admin API of a running server: status, drains, reload and metrics, over local HTTP.

`geodns drain/undrain/status/reload` (geodns.control.adminclient) talk to it; Prometheus scrapes
/metrics. It listens on a TCP address (127.0.0.1:8053 by default) and a Unix socket (by default
`admin-<port>.sock` in the cache directory, geodns.config.loader.admin_socket). On the socket
the file's permissions are the access control (the default socket 0600, its owner's; an
explicit `admin.socket` 0660, for its group too) and no token is asked for. On TCP, any local user can reach a loopback port: with a token every
request must carry `Authorization: Bearer <token>` (GET /metrics too, unless
`admin.public_metrics`); without one, TCP serves only what changes no answer (GET, and the
console's what-if), and drains, undrains and reloads get 403. A TCP listener beyond loopback
without a token is refused at start (the config check says so first).

    GET  /status                       every site's health, plus the server's own status_extra()
    POST /drain   {site, reason?, for_s?, by?}   200 once the drain is durable (state file or etcd)
    POST /undrain {site}
    POST /reload                       200 {ok: true} or 422 {ok: false, errors: [...]}
    GET  /metrics                      Prometheus text (when a metrics callback is given)
    GET  /, /console/...               the live console (geodns.daemon.console), when given

Errors are JSON `{"error": "..."}` with 400 (bad request), 401 (token), 403 (a drain or reload
over TCP without a configured token), 404 (no such site),
500 (the state file could not be written: nothing changed), 503 (the fleet's etcd is out of
reach: nothing changed). Limits of a drain: geodns.health.state.drain_problem.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from geodns.common.errors import ConfigError, FleetError, Problem, StateFileError, did_you_mean
from geodns.common.logs import get_logger
from geodns.daemon.console import ConsoleSource, add_console
from geodns.health.drains import DrainControl, LocalDrains
from geodns.health.monitor import HealthMonitor
from geodns.health.state import drain_problem

log = get_logger("geodns.daemon.admin")

ReloadCallback = Callable[[], Awaitable[tuple[bool, Sequence[str]]]]
MetricsCallback = Callable[[str | None], tuple[bytes, str]]

StatusCallback = Callable[[], dict[str, Any]]

MONITOR: web.AppKey[HealthMonitor] = web.AppKey("monitor")
RELOAD: web.AppKey[ReloadCallback] = web.AppKey("reload")
STATUS_EXTRA: web.AppKey[StatusCallback | None] = web.AppKey("status_extra")
METRICS: web.AppKey[MetricsCallback | None] = web.AppKey("metrics")
TOKEN: web.AppKey[str | None] = web.AppKey("token")
DRAINS: web.AppKey[DrainControl] = web.AppKey("drains")
PUBLIC_METRICS: web.AppKey[bool] = web.AppKey("public_metrics")
SOCKET_MODE = 0o660  # an explicit admin.socket: its group may use it
DEFAULT_SOCKET_MODE = 0o600  # the default socket: its owner alone
LOOPBACK_NAMES = ("localhost",)
READ_ONLY_POSTS = ("/console/whatif",)  # a POST that only computes (no token needed)


def make_admin_app(
    monitor: HealthMonitor,
    reload_cb: ReloadCallback,
    status_extra: Callable[[], dict[str, Any]] | None = None,
    metrics_cb: MetricsCallback | None = None,
    console: ConsoleSource | None = None,
    drains: DrainControl | None = None,
    *,
    public_metrics: bool = False,
) -> web.Application:
    """The admin application; `start_admin` serves it.

    `reload_cb()` reloads config and zones and returns (ok, errors). `status_extra()` adds the
    server's own keys (version, reload status, ...) to GET /status. `metrics_cb(accept)` returns
    (payload, content type) for GET /metrics, e.g. `geodns.observe.metrics.Metrics.render`.
    `drains` takes drain orders (default: this server's own, saved in its state file; a fleet
    member passes geodns.fleet's). `public_metrics` lets GET /metrics through without the token.
    """
    app = web.Application(middlewares=[_auth], client_max_size=64 * 1024)
    app[MONITOR] = monitor
    app[RELOAD] = reload_cb
    app[STATUS_EXTRA] = status_extra
    app[METRICS] = metrics_cb
    app[TOKEN] = None
    app[DRAINS] = drains if drains is not None else LocalDrains(monitor)
    app[PUBLIC_METRICS] = public_metrics
    app.router.add_get("/status", _status)
    app.router.add_post("/drain", _drain)
    app.router.add_post("/undrain", _undrain)
    app.router.add_post("/reload", _reload)
    if metrics_cb is not None:
        app.router.add_get("/metrics", _metrics)
    if console is not None:
        add_console(app, monitor, console)
    return app


async def start_admin(
    app: web.Application,
    listen: str | None,
    socket_path: str | None,
    token: str | None,
    socket_mode: int = SOCKET_MODE,
) -> web.AppRunner:
    """Serve `app` on `listen` ("host:port") and/or `socket_path`; stop with `runner.cleanup()`.

    `token` (read from admin.token_file by the caller) is required on TCP when given; without
    one, a `listen` beyond loopback is a ConfigError. A stale socket file from a crashed server
    is replaced; a live one (another server) is an OSError. `socket_mode`: 0660 lets the
    socket's group drain and reload (an explicit `admin.socket`, docs/operations.md); the default
    socket in the user's cache directory is 0600, its owner's alone.
    """
    app[TOKEN] = token or None
    if listen and token is None and not is_loopback(parse_listen(listen)[0]):
        raise ConfigError(
            [
                Problem(
                    "admin.listen",
                    0,
                    f"{listen} is not a loopback address and there is no admin token: anyone who "
                    "can reach it could drain sites and reload; set admin.token_file",
                )
            ]
        )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        if listen:
            host, port = parse_listen(listen)
            await web.TCPSite(runner, host, port).start()
        if socket_path:
            Path(socket_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _remove_stale_socket(socket_path)
            await web.UnixSite(runner, socket_path).start()
            os.chmod(socket_path, socket_mode)
    except BaseException:
        await runner.cleanup()
        raise
    log.info("admin_started", listen=listen, socket=socket_path, token=token is not None)
    return runner


def parse_listen(listen: str) -> tuple[str, int]:
    """ "127.0.0.1:8053" or "[::1]:8053" -> (host, port); ValueError when it is neither."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"admin.listen: expected host:port such as 127.0.0.1:8053, got {listen!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or "localhost": only this machine can connect."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK_NAMES


def _remove_stale_socket(path: str) -> None:
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise OSError(f"admin.socket: {path} exists and is not a socket")
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left behind by a server that did not stop cleanly
            return
    raise OSError(f"admin.socket: {path} is in use by another running server")


# -- handlers ------------------------------------------------------------------------------


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """The Unix socket is trusted (its file permissions guard it). Over TCP, with a token every
    request needs it (`admin.public_metrics` excepted); without one, only what changes no
    answer: reads, and the console's what-if. Drains, undrains and reloads over TCP need the
    token: any local user can reach a loopback port."""
    if _via_unix_socket(request):
        return await handler(request)
    token = request.app[TOKEN]
    if token is None:
        if request.method in ("GET", "HEAD") or request.path in READ_ONLY_POSTS:
            return await handler(request)
        return _error(
            403,
            "drains and reloads over TCP need the admin token (admin.token_file); without one "
            "they are taken on the admin socket only, which `geodns drain` and `geodns reload` "
            "use when they run as the server's user",
        )
    if request.path == "/metrics" and request.app[PUBLIC_METRICS]:
        return await handler(request)
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return _error(401, "a valid 'Authorization: Bearer <token>' header is required")
    return await handler(request)


def _via_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _not_made(exc: Exception, order: str) -> web.Response:
    """A drain or undrain that could not be made durable: 503 (etcd) or 500 (state file)."""
    log.error(f"{order}_failed", error=str(exc))
    return _error(503 if isinstance(exc, FleetError) else 500, f"{order} not made: {exc}")


async def _status(request: web.Request) -> web.Response:
    extra = request.app[STATUS_EXTRA]
    body = dict(extra()) if extra is not None else {}
    body.update(_monitor(request).status())
    return web.json_response(body, dumps=_dumps)


async def _drain(request: web.Request) -> web.Response:
    body = await _json_body(request)
    site = _site(request, body)
    reason = body.get("reason") or ""
    by = body.get("by") or "admin API"
    duration = body.get("for_s")
    problem = drain_problem(reason, by, duration)
    if problem:
        raise _bad(problem)
    try:
        drain = await request.app[DRAINS].drain(site, reason, by, duration)
    except (FleetError, StateFileError) as exc:
        return _not_made(exc, "drain")
    return web.json_response({"ok": True, "drain": drain.to_json()})


async def _undrain(request: web.Request) -> web.Response:
    site = _site(request, await _json_body(request))
    try:
        drain = await request.app[DRAINS].undrain(site)
    except (FleetError, StateFileError) as exc:
        return _not_made(exc, "undrain")
    return web.json_response(
        {"ok": True, "was_drained": drain is not None, "drain": drain and drain.to_json()}
    )


async def _reload(request: web.Request) -> web.Response:
    ok, errors = await request.app[RELOAD]()
    return web.json_response({"ok": ok, "errors": list(errors)}, status=200 if ok else 422)


async def _metrics(request: web.Request) -> web.Response:
    render = request.app[METRICS]
    if render is None:
        raise web.HTTPNotFound()
    payload, content_type = render(request.headers.get("Accept"))
    return web.Response(body=payload, headers={"Content-Type": content_type})


def _monitor(request: web.Request) -> HealthMonitor:
    return request.app[MONITOR]


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _bad("expected a JSON object as the request body") from None
    if not isinstance(body, dict):
        raise _bad("expected a JSON object as the request body")
    return body


def _site(request: web.Request, body: dict[str, Any]) -> str:
    site = body.get("site")
    if not isinstance(site, str) or not site:
        raise _bad("'site' is required: the name of a site from the config")
    sites = _monitor(request).health.sites
    if site not in sites:
        hint = did_you_mean(site, sites) or f"; sites: {', '.join(sorted(sites)) or 'none'}"
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no site named '{site}'{hint}"}),
            content_type="application/json",
        )
    return site


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True)

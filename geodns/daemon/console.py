"""The live console on the admin listener: a world map of sites and traffic, and a what-if.

    GET  /                   the page (plain HTML, JavaScript and SVG; nothing to build, nothing
                             fetched from elsewhere: the map ships in geodns/data/console/)
    GET  /console/{file}     its script, style sheet and map (world.json, Natural Earth)
    GET  /console/state      every site's state (up, down with the reason, drained with who,
                             why and until), each site's share of the answers over the last
                             minutes, and where users of each country are sent now
    POST /console/whatif     {action: "drain"|"fail", site}: who would move, where to, and the
                             added distance and fibre round trip (geodns.daemon.whatif)

The routes live in the admin application, so the admin API's authentication guards them: the
same token, checked by the same middleware (geodns.daemon.admin). A browser cannot send a
Bearer header when it opens a page, so for these read-only routes, and these only, the token is
also taken as the password of HTTP Basic authentication (any user name): the browser asks for
it once and sends it with every request of the page. `basic_as_bearer` turns it into the
Bearer header the admin middleware checks, and asks the browser for it on a 401.

The page polls /console/state every 2 seconds. What the state costs is bounded: the share of
answers comes from the metrics counters, sampled every SHARE_STEP seconds into a short ring;
the destinations are the decision code run over the small network sample, kept until the
sample, the health view or the snapshot changes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from geodns.common.errors import did_you_mean
from geodns.common.logs import get_logger
from geodns.daemon.whatif import ACTIONS, RECENT_SECONDS, destinations, what_if
from geodns.health.monitor import HealthMonitor
from geodns.observe.sample import NetworkSample

log = get_logger("geodns.daemon.console")

ASSETS = ("index.html", "console.js", "console.css", "world.json")
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "json": "application/json",
}
SHARE_WINDOW = 300.0  # seconds of answers the share is computed over
SHARE_STEP = 5.0  # seconds between two readings of the answer counters
DESTINATIONS_MAX_AGE = 2.0  # seconds a computed map of destinations is served again
REALM = 'Basic realm="geodns admin (user: any; password: the admin token)", charset="UTF-8"'


class ConsoleSource:
    """What the console reads from the running server; every field a callable, read per request.

    snapshot()          the current geodns.serving.engine.Snapshot
    sample()            the network sample (geodns.observe.sample.NetworkSample)
    answers_by_site()   {site: answers since start}, all worker processes included
    """

    def __init__(
        self,
        snapshot: Callable[[], Any],
        sample: Callable[[], NetworkSample],
        answers_by_site: Callable[[], Mapping[str, int]],
    ) -> None:
        self.snapshot = snapshot
        self.sample = sample
        self.answers_by_site = answers_by_site
        self.readings: deque[tuple[float, dict[str, int]]] = deque(
            maxlen=int(SHARE_WINDOW / SHARE_STEP) + 2
        )
        self._destinations: tuple[tuple[Any, ...], float, dict[str, Any]] | None = None

    def read_answers(self, now: float) -> None:
        """Take one reading of the answer counters (every SHARE_STEP seconds)."""
        self.readings.append((now, dict(self.answers_by_site())))

    def share(self, now: float) -> tuple[dict[str, int], float]:
        """Answers per site over the last SHARE_WINDOW seconds (or since the first reading),
        and the seconds they cover."""
        current = dict(self.answers_by_site())
        oldest = next(
            ((at, counts) for at, counts in self.readings if now - at <= SHARE_WINDOW),
            (now, current),
        )
        at, counts = oldest
        return {site: n - counts.get(site, 0) for site, n in current.items()}, now - at

    async def destinations(self, monitor: HealthMonitor, now: float) -> dict[str, Any]:
        snapshot = self.snapshot()
        sample = self.sample()
        key = (sample.added, monitor.health.view, id(snapshot))
        cached = self._destinations
        if cached is not None and cached[0] == key and now - cached[1] < DESTINATIONS_MAX_AGE:
            return cached[2]
        result = await destinations(snapshot, monitor.health, sample.entries(now - RECENT_SECONDS))
        self._destinations = (key, now, result)
        return result


SOURCE: web.AppKey[ConsoleSource] = web.AppKey("console_source")
CONSOLE_MONITOR: web.AppKey[HealthMonitor] = web.AppKey("console_monitor")


def add_console(app: web.Application, monitor: HealthMonitor, source: ConsoleSource) -> None:
    """Register the console's routes and its Basic-to-Bearer adapter on the admin app."""
    app[SOURCE] = source
    app[CONSOLE_MONITOR] = monitor
    app.middlewares.insert(0, basic_as_bearer)  # before the admin API's own check
    app.router.add_get("/", _index)
    app.router.add_get("/console/state", _state)
    app.router.add_post("/console/whatif", _whatif)
    app.router.add_get("/console/{name}", _asset)
    app.cleanup_ctx.append(_read_answers_periodically)


def is_console_path(path: str) -> bool:
    return path == "/" or path.startswith("/console/")


@web.middleware
async def basic_as_bearer(request: web.Request, handler: Any) -> web.StreamResponse:
    """On the console's routes, HTTP Basic with the token as password is the Bearer token."""
    if not is_console_path(request.path):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    if header.startswith("Basic "):
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ":"
        token = decoded.partition(":")[2]
        headers = request.headers.copy()
        headers["Authorization"] = f"Bearer {token}"
        request = request.clone(headers=headers)
    response = await handler(request)
    if response.status == 401:
        response.headers["WWW-Authenticate"] = REALM
    return response


async def _read_answers_periodically(app: web.Application) -> AsyncIterator[None]:
    source = app[SOURCE]

    async def loop() -> None:
        while True:
            try:
                source.read_answers(time.time())
            except Exception:  # the console's share goes stale; the server goes on
                log.exception("console_reading_failed")
            await asyncio.sleep(SHARE_STEP)

    task = asyncio.ensure_future(loop())
    yield
    task.cancel()


def _asset_bytes(name: str) -> bytes:
    return resources.files("geodns.data").joinpath("console", name).read_bytes()


async def _index(request: web.Request) -> web.Response:
    return _asset_response("index.html")


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS or name == "index.html":
        raise web.HTTPNotFound()
    return _asset_response(name)


def _asset_response(name: str) -> web.Response:
    return web.Response(
        body=_asset_bytes(name),
        headers={
            "Content-Type": CONTENT_TYPES[name.rsplit(".", 1)[1]],
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            # the page loads its own files only, and runs nothing inline
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'",
        },
    )


def site_states(status: Mapping[str, Any], sites: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each site as the map draws it: where, and up / down (with why) / drained (who, why, until)."""
    out = []
    for name, info in sorted(status.get("sites", {}).items()):
        site = sites.get(name)
        drain = info.get("drain")
        state = "drained" if drain else ("down" if info.get("state") == "down" else "up")
        out.append(
            {
                "name": name,
                "kind": info.get("kind") or getattr(site, "kind", ""),
                "city": getattr(site, "city", None),
                "country": getattr(site, "country", None),
                "lat": getattr(site, "latitude", None),
                "lon": getattr(site, "longitude", None),
                "state": state,
                "reason": info.get("down_cause"),
                "drain": drain,
                "checked": info.get("checked", True),
            }
        )
    return out


async def _state(request: web.Request) -> web.Response:
    source = request.app[SOURCE]
    monitor = request.app[CONSOLE_MONITOR]
    now = time.time()
    snapshot = source.snapshot()
    sites = site_states(monitor.status(), snapshot.sites)
    answers, window = source.share(now)
    total = sum(answers.values())
    for site in sites:
        count = answers.get(site["name"], 0)
        site["answers"] = count
        site["share"] = count / total if total else 0.0
    where = await source.destinations(monitor, now)
    body = {
        "now": now,
        "sites": sites,
        "share_window_s": round(window, 1),
        "answers": total,
        "countries": where["countries"],
        "countries_source": where["source"],
        "sample_size": len(source.sample().entries(now - RECENT_SECONDS)),
    }
    return web.json_response(body)


async def _whatif(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _error(400, "expected a JSON object: {action: drain|fail, site: NAME}")
    action, site = body.get("action", "drain"), body.get("site")
    if action not in ACTIONS:
        return _error(400, f"action: expected {' or '.join(ACTIONS)}, got {action!r}")
    monitor = request.app[CONSOLE_MONITOR]
    known = monitor.health.sites
    if not isinstance(site, str) or site not in known:
        hint = did_you_mean(str(site), known) or f"; sites: {', '.join(sorted(known))}"
        return _error(404, f"no site named '{site}'{hint}")
    source = request.app[SOURCE]
    now = time.time()
    result = await what_if(
        source.snapshot(),
        monitor.health,
        action,
        site,
        source.sample().entries(now - RECENT_SECONDS),
        now,
    )
    return web.json_response(result)


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps({"error": message}), content_type="application/json"
    )

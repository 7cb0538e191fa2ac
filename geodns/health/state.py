"""Health state: which sites may be answered, decided from check results, drains and dependencies.

Pure: no sockets, no clock, no logging. Time comes in as `now` (Unix seconds, so that it means the
same thing after a restart), probe results come in from geodns.health.monitor, and what changes
comes back as values for the monitor to log, persist and publish. The rules kept here:

- One rise/fall machine per check target (`CheckSpec.key`), however many sites use it. A target
  goes down after `fall` consecutive failures and comes back after `rise` consecutive successes,
  so an endpoint that alternates between ok and failing never flaps the answer.
- Before its first result a target is "up (unchecked)". A restart must not blackhole traffic while
  the first probes are in flight (PowerDNS treating everything as down until checked is a known
  complaint); a config change must not either. The first result then decides at once: there is no
  known state for the thresholds to smooth, and a dead site leaves after one probe rather than
  `fall` intervals. A state saved in the state file is restored as checked and overrides this, so
  across a restart the thresholds apply as usual: a site that was down stays down until `rise`
  successes, a site that was up needs `fall` failures.
- A site is down when any of its checks is down, when it is drained, or when it is served by data
  centres and every one of them is down for its own reasons (its checks or a drain). One level
  only: a data centre's own `datacenters` are not followed.
- A drain lasts until undrained or until its `until`; an expired drain ends by itself in
  `expire(now)`.
- In a fleet (geodns.fleet) a site's checks are decided by the fleet's quorum of vantage points,
  handed in with `set_shared`; this member's own checks still run, vote, and show in status. The
  fleet's drains replace the local ones whole (`set_drains`).
- The view the DNS engine reads is a frozen set of site names not to answer. A new `HealthView` is
  made only when that set changes, so a query pays `name not in view.down` and nothing else, and
  caches keyed on the view's identity stay valid while nothing changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from geodns.common.errors import UnknownSiteError
from geodns.geo.sites import CheckSpec, Site
from geodns.health.redact import public_url, redact_text

UP = "up"
DOWN = "down"
SAVE_VERSION = 1
MAX_DRAIN_SECONDS = 366 * 86400  # a timed drain lasts at most a year (and a day): longer is a typo
MAX_REASON_CHARS = 500  # a drain's reason: a sentence or a ticket link, not a document
MAX_BY_CHARS = 200


def drain_problem(reason: Any, by: Any, duration_s: Any) -> str | None:
    """Why a drain request cannot be taken as it is, or None. The admin API answers 400 with it."""
    if not isinstance(reason, str) or not isinstance(by, str):
        return "reason and by must be strings"
    if len(reason) > MAX_REASON_CHARS:
        return f"reason is {len(reason)} characters long: at most {MAX_REASON_CHARS}"
    if len(by) > MAX_BY_CHARS:
        return f"by is {len(by)} characters long: at most {MAX_BY_CHARS}"
    if duration_s is None:
        return None
    if (
        not isinstance(duration_s, int | float)
        or isinstance(duration_s, bool)
        or not math.isfinite(duration_s)
        or not 0 < duration_s <= MAX_DRAIN_SECONDS
    ):
        return (
            f"for_s must be a number of seconds > 0 and at most {MAX_DRAIN_SECONDS} "
            f"(366 days; leave it out to drain until undrained), got {duration_s!r}"
        )
    return None


@dataclass(frozen=True, slots=True)
class HealthView:
    """What a query reads: the sites that must not be answered. Replaced whole when it changes."""

    down: frozenset[str] = frozenset()

    def is_up(self, name: str) -> bool:
        return name not in self.down


@dataclass(frozen=True, slots=True)
class Result:
    """One completed probe."""

    ok: bool
    detail: str
    latency: float
    at: float


@dataclass(frozen=True, slots=True)
class Transition:
    """A check target changed state: old and new are "up" or "down"."""

    old: str
    new: str
    streak: int
    detail: str


@dataclass(slots=True)
class CheckState:
    """The rise/fall machine of one check target.

    `streak` counts the consecutive results equal to the last one. A target restored from the
    state file has `checked` True and no `last` result.
    """

    fall: int
    rise: int
    up: bool = True
    checked: bool = False
    since: float | None = None
    streak: int = 0
    last: Result | None = None

    @property
    def state(self) -> str:
        return UP if self.up else DOWN

    def observe(
        self, ok: bool, now: float, detail: str = "", latency: float = 0.0
    ) -> Transition | None:
        """Record one probe result; return the transition it caused, if any."""
        same = self.last is not None and self.last.ok == ok
        self.streak = self.streak + 1 if same else 1
        self.last = Result(ok, detail, latency, now)
        first, self.checked = not self.checked, True
        if ok == self.up:
            if self.since is None:
                self.since = now
            return None
        if not first and self.streak < (self.rise if ok else self.fall):
            return None
        old = self.state
        self.up, self.since = ok, now
        return Transition(old, self.state, self.streak, detail)


@dataclass(frozen=True, slots=True)
class Drain:
    """An operator took a site out of rotation, e.g. for a failover drill."""

    site: str
    reason: str = ""
    by: str = ""
    since: float = 0.0
    until: float | None = None

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def describe(self) -> str:
        text = f"drained by {self.by or 'unknown'}"
        return f"{text}: {self.reason}" if self.reason else text

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "reason": self.reason,
            "by": self.by,
            "since": self.since,
            "until": self.until,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Drain:
        """A drain from the state file or the fleet's store; ValueError when it is not one."""
        until = data.get("until")
        since = float(data.get("since", 0.0))
        if until is not None:
            until = float(until)
            if not math.isfinite(until):
                raise ValueError(f"a drain's end must be a finite time, got {until!r}")
        if not math.isfinite(since):
            raise ValueError(f"a drain's start must be a finite time, got {since!r}")
        if until is not None and until - since > MAX_DRAIN_SECONDS + 1:
            raise ValueError(f"a drain lasts at most {MAX_DRAIN_SECONDS} seconds (366 days)")
        return cls(
            site=str(data["site"]),
            reason=str(data.get("reason", ""))[:MAX_REASON_CHARS],
            by=str(data.get("by", ""))[:MAX_BY_CHARS],
            since=since,
            until=until,
        )


@dataclass(frozen=True, slots=True)
class SharedVerdict:
    """The fleet's decision on a site's checks, taken instead of this member's own (geodns.fleet).

    `down_votes` of `voters` vantage points (members whose probes of the site have a result) say
    the site is down; `reason` is the cause shown when it is.
    """

    down: bool
    down_votes: int
    voters: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SiteChange:
    """A site changed state; one `site_state` log event. `streak` is the deciding check's."""

    site: str
    old: str
    new: str
    cause: str
    streak: int | None = None


@dataclass(slots=True)
class _SiteInfo:
    state: str = UP
    since: float = 0.0
    reasons: tuple[str, ...] = ()


class HealthState:
    """Every check target's machine, every drain, every site's state, and the current view.

    Each mutating method takes `now` and returns the site changes it caused; `view` is replaced
    only when the set of down sites changes, and `revision` grows whenever what `to_saved`
    returns may have changed, so the caller writes the state file only then.
    """

    def __init__(self, sites: Mapping[str, Site], now: float) -> None:
        self.sites: dict[str, Site] = {}
        self.specs: dict[str, CheckSpec] = {}
        self.checks: dict[str, CheckState] = {}
        self.drains: dict[str, Drain] = {}
        self.info: dict[str, _SiteInfo] = {}
        self.view = HealthView()
        self.conflicts: list[str] = []
        self.revision = 0
        self.shared: dict[str, SharedVerdict] | None = None  # None: this server runs alone
        self.set_sites(sites, now)

    # -- inputs ------------------------------------------------------------------------------

    def set_sites(self, sites: Mapping[str, Site], now: float) -> list[SiteChange]:
        """Adopt a new set of sites (a reload): keep the state and drains of the kept ones."""
        self.sites = dict(sites)
        specs: dict[str, CheckSpec] = {}
        self.conflicts = []
        for site in self.sites.values():
            for check in site.checks:
                first = specs.setdefault(check.key, check)
                if first != check and check.key not in self.conflicts:
                    self.conflicts.append(check.key)
        self.specs = specs
        checks: dict[str, CheckState] = {}
        for key, spec in specs.items():
            state = self.checks.get(key) or CheckState(spec.fall, spec.rise)
            state.fall, state.rise = spec.fall, spec.rise
            checks[key] = state
        self.checks = checks
        self.drains = {name: d for name, d in self.drains.items() if name in self.sites}
        self.info = {name: self.info.get(name) or _SiteInfo(since=now) for name in self.sites}
        return self._refresh(now, "reload")

    def observe(
        self, key: str, ok: bool, now: float, detail: str = "", latency: float = 0.0
    ) -> list[SiteChange]:
        """One probe result for a check target; unknown targets (removed by a reload) are ignored."""
        state = self.checks.get(key)
        if state is None:
            return []
        first = not state.checked
        transition = state.observe(ok, now, detail, latency)
        if transition is None:
            if first:  # now known to be up: worth saving
                self.revision += 1
            return []
        return self._refresh(now, f"check {key} {transition.new}: {detail}", key)

    def drain(
        self, site: str, now: float, reason: str = "", by: str = "", until: float | None = None
    ) -> tuple[Drain, list[SiteChange]]:
        """Drain a site (again: the new reason and end replace the old). UnknownSiteError: no such site."""
        if site not in self.sites:
            raise UnknownSiteError(site)
        drain = Drain(site, reason, by, now, until)
        self.drains[site] = drain
        return drain, self._refresh(now, drain.describe())

    def undrain(self, site: str, now: float) -> tuple[Drain | None, list[SiteChange]]:
        """End a site's drain; (None, []) when it was not drained. UnknownSiteError: no such site."""
        if site not in self.sites:
            raise UnknownSiteError(site)
        drain = self.drains.pop(site, None)
        if drain is None:
            return None, []
        return drain, self._refresh(now, "undrained")

    def set_drains(self, drains: Mapping[str, Drain], now: float) -> list[SiteChange]:
        """Adopt a whole set of drains (the fleet's): drains of unknown sites and ended ones are
        left out, the rest replace every drain this state had."""
        wanted = {
            name: drain
            for name, drain in drains.items()
            if name in self.sites and drain.active(now)
        }
        if wanted == self.drains:
            return []
        self.drains = wanted
        return self._refresh(now, "fleet drains changed")

    def put_drain(self, site: str, drain: Drain | None, now: float) -> list[SiteChange]:
        """Set one site's drain as it was (None: not drained); undoes a drain that failed to save."""
        if drain is None:
            self.drains.pop(site, None)
        else:
            self.drains[site] = drain
        return self._refresh(now, "drain restored")

    def set_shared(
        self, verdicts: Mapping[str, SharedVerdict] | None, now: float
    ) -> list[SiteChange]:
        """The fleet's verdicts by site (None: decide by this server's own checks again).

        A site without a verdict (no vantage point has a result for it yet) is decided by this
        server's own checks."""
        shared = dict(verdicts) if verdicts is not None else None
        if shared == self.shared:
            return []
        self.shared = shared
        return self._refresh(now, "fleet verdict")

    def own_votes(self) -> dict[str, dict[str, Any]]:
        """This server's verdict on every site with checks, from its own probes only (no drains,
        no data centres): what it tells the fleet. `state` is "unchecked" until every check of the
        site has a result, unless one is already down."""
        votes: dict[str, dict[str, Any]] = {}
        for name, site in self.sites.items():
            if not site.checks:
                continue
            states = [self.checks[c.key] for c in site.checks]
            down = [
                f"check {public_url(c.key)} down: {redact_text(s.last.detail) if s.last else 'restored from the state file'}"
                for c, s in zip(site.checks, states, strict=True)
                if not s.up
            ]
            if down:
                state = DOWN
            elif all(s.checked for s in states):
                state = UP
            else:
                state = "unchecked"
            since = max((s.since or 0.0 for s in states), default=0.0)
            votes[name] = {"state": state, "since": since, "detail": "; ".join(down)}
        return votes

    def expire(self, now: float) -> list[SiteChange]:
        """End the timed drains whose time is up."""
        expired = [name for name, d in self.drains.items() if not d.active(now)]
        for name in expired:
            del self.drains[name]
        return self._refresh(now, "drain expired") if expired else []

    def next_expiry(self) -> float | None:
        """When the next timed drain ends, for the caller's timer."""
        return min((d.until for d in self.drains.values() if d.until is not None), default=None)

    # -- outputs ---------------------------------------------------------------------------

    def _own_reasons(self, site: Site, now: float) -> list[str]:
        reasons = []
        drain = self.drains.get(site.name)
        if drain is not None and drain.active(now):
            reasons.append(drain.describe())
        verdict = self.shared.get(site.name) if self.shared is not None else None
        if verdict is not None:
            if verdict.down:
                reasons.append(verdict.reason or "down for the fleet")
            return reasons
        for check in site.checks:
            state = self.checks[check.key]
            if not state.up:
                detail = state.last.detail if state.last else "restored from the state file"
                reasons.append(f"check {check.key} down: {detail}")
        return reasons

    def _refresh(self, now: float, trigger: str, key: str | None = None) -> list[SiteChange]:
        self.revision += 1
        own = {name: self._own_reasons(site, now) for name, site in self.sites.items()}
        changes = []
        for name, site in self.sites.items():
            reasons = list(own[name])
            dcs = [dc for dc in site.datacenters if dc in own]
            if dcs and all(own[dc] for dc in dcs):
                reasons.append(f"all datacenters down: {', '.join(dcs)}")
            info = self.info[name]
            new = DOWN if reasons else UP
            old_reasons, info.reasons = info.reasons, tuple(reasons)
            if new == info.state:
                continue
            if new == DOWN:
                cause = "; ".join(reasons)
            elif old_reasons and all(r.startswith("all datacenters") for r in old_reasons):
                cause = f"datacenter up: {', '.join(dc for dc in dcs if not own[dc])}"
            else:
                cause = trigger
            streak = None
            if key is not None and any(c.key == key for c in site.checks):
                streak = self.checks[key].streak
            changes.append(SiteChange(name, info.state, new, cause, streak))
            info.state, info.since = new, now
        down = frozenset(name for name, info in self.info.items() if info.state == DOWN)
        if down != self.view.down:
            self.view = HealthView(down)
        return changes

    def status(self, now: float) -> dict[str, Any]:
        """Every site: state, since, last result, streak, drain, why it is down. JSON-able."""
        sites: dict[str, Any] = {}
        votes = self.own_votes() if self.shared is not None else {}
        for name, site in sorted(self.sites.items()):
            info = self.info[name]
            checks = {c.key: self._check_status(c.key) for c in site.checks}
            deciding = self._deciding_check(site)
            drain = self.drains.get(name)
            sites[name] = {
                "kind": site.kind,
                "state": info.state,
                "checked": all(self.checks[c.key].checked for c in site.checks),
                "since": info.since,
                "down_cause": redact_text("; ".join(info.reasons)) or None,
                "last": checks[deciding]["last"] if deciding else None,
                "streak": checks[deciding]["streak"] if deciding else 0,
                "drained": drain is not None,
                "drain": drain.to_json() if drain is not None else None,
                "datacenters": list(site.datacenters),
                "checks": _public_checks(checks),
            }
            verdict = self.shared.get(name) if self.shared is not None else None
            if verdict is not None and name in votes:
                own = votes[name]["state"]
                sites[name]["fleet"] = {
                    "state": DOWN if verdict.down else UP,
                    "down_votes": verdict.down_votes,
                    "voters": verdict.voters,
                    "own": own,
                    "disagrees": own != "unchecked" and (own == DOWN) != verdict.down,
                }
        return {"now": now, "down": sorted(self.view.down), "sites": sites}

    def _check_status(self, key: str) -> dict[str, Any]:
        state = self.checks[key]
        last = state.last
        return {
            "state": state.state,
            "checked": state.checked,
            "since": state.since,
            "streak": state.streak,
            "ok": last.ok if last else None,
            "latency": last.latency if last else None,
            "last": (
                {
                    "ok": last.ok,
                    "detail": redact_text(last.detail),
                    "latency": last.latency,
                    "at": last.at,
                }
                if last
                else None
            ),
            "fall": state.fall,
            "rise": state.rise,
        }

    def _deciding_check(self, site: Site) -> str | None:
        """The check a one-line summary shows: a down one, else a failing one, else the latest."""

        def rank(check: CheckSpec) -> tuple[bool, bool, float]:
            state = self.checks[check.key]
            last = state.last
            return (not state.up, last is not None and not last.ok, last.at if last else -1.0)

        return max(site.checks, key=rank).key if site.checks else None

    # -- persistence ----------------------------------------------------------------------

    def to_saved(self) -> dict[str, Any]:
        """What the state file keeps: the known state of every checked target, every drain."""
        return {
            "version": SAVE_VERSION,
            "checks": {
                key: {"state": s.state, "since": s.since}
                for key, s in sorted(self.checks.items())
                if s.checked
            },
            "sites": {
                name: {"state": i.state, "since": i.since} for name, i in sorted(self.info.items())
            },
            "drains": [d.to_json() for _, d in sorted(self.drains.items())],
        }

    def restore(self, saved: Mapping[str, Any], now: float) -> tuple[list[SiteChange], list[str]]:
        """Adopt a state file's contents; return the changes and what was dropped, and why.

        Targets and sites no longer configured are dropped, and so are drains that have ended.
        """
        dropped: list[str] = []
        for key, entry in _mapping(saved.get("checks")).items():
            state = self.checks.get(key)
            if state is None or not isinstance(entry, Mapping):
                dropped.append(f"check {key}: not configured")
                continue
            state.up = entry.get("state") != DOWN
            state.checked = True
            state.since = _number(entry.get("since"), now)
        for entry in _list(saved.get("drains")):
            try:
                drain = Drain.from_json(entry)
            except (AttributeError, KeyError, TypeError, ValueError):
                dropped.append(f"drain {entry!r}: unreadable")
                continue
            if drain.site not in self.sites:
                dropped.append(f"drain of {drain.site}: no such site")
            elif not drain.active(now):
                dropped.append(f"drain of {drain.site}: ended while the server was stopped")
            else:
                self.drains[drain.site] = drain
        changes = self._refresh(now, "restored from the state file")
        for name, entry in _mapping(saved.get("sites")).items():
            info = self.info.get(name)
            if info is not None and isinstance(entry, Mapping) and entry.get("state") == info.state:
                info.since = _number(entry.get("since"), info.since)
        return changes, dropped


def _public_checks(checks: dict[str, Any]) -> dict[str, Any]:
    """Checks keyed by their public names (geodns.health.redact); two checks that differ only in
    what is hidden keep apart as "name (2)"."""
    public: dict[str, Any] = {}
    for key, value in checks.items():
        name = public_url(key)
        unique, count = name, 1
        while unique in public:
            count += 1
            unique = f"{name} ({count})"
        public[unique] = value
    return public


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> Iterable[Any]:
    return value if isinstance(value, list) else []


def _number(value: Any, default: float) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
    )

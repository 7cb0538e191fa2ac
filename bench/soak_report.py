"""What the soak's raw observations mean: the figures, the checks against their bounds, the table.

Pure functions of the per-server result dictionaries that bench/soak.py gathers (and writes to
JSON), so the verdicts can be tested without running a soak, and recomputed from a saved run.

A check has a bound stated up front (`Bounds`); geodns's checks decide the exit code. gdnsd is
measured with the same yardstick and its verdicts are shown beside, for comparison only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

TRACEBACK = "Traceback (most recent call last)"
METRIC_PREFIXES = ("geodns_rrl_", "geodns_cookies_", "geodns_tcp_")
"""Families printed whenever they exist: RRL, DNS cookies, TCP limits (any geodns_ family
whose name starts so)."""
METRIC_EXTRAS = (
    "geodns_malformed_packets",
    "geodns_dropped_packets",
    "geodns_internal_errors",
    "geodns_reloads",
)
"""Families printed beside them: what the server says it did with the bad packets and reloads."""


@dataclass(frozen=True)
class Bounds:
    """The bounds a run checks; each is printed with the run (docs/reliability.md)."""

    max_valid_loss_pct: float = 0.1
    min_tcp_success_pct: float = 95.0
    max_tracebacks: int = 0
    max_deaths: int = 0
    max_error_lines_per_s: float = 20.0
    rss_bound_mb: float = 300.0
    plateau_growth_pct: float = 5.0
    plateau_growth_mb: float = 10.0
    max_rejected_replies: int = 0
    max_stop_s: float = 2.0


@dataclass(frozen=True)
class Check:
    name: str
    value: str
    bound: str
    passed: bool | None  # None: not measured (e.g. too short a run to judge a plateau)


# ------------------------------------------------------------------------------------------------
# Parsing what the server exposes: log lines and Prometheus text
# ------------------------------------------------------------------------------------------------

_GDNSD_ERROR = re.compile(r"\b(error|fatal|crit|critical)\b", re.IGNORECASE)


def classify_log_line(line: str, kind: str) -> tuple[bool, int]:
    """(is an error line, tracebacks it holds) for one line of a server's log.

    geodns writes one JSON object per line: an error is `"level": "error"` (or critical), and
    anything that is not JSON (a crash dump, a message printed by the interpreter) counts as an
    error too. A traceback inside a JSON line is JSON-escaped, so it is counted by its first
    line's text. gdnsd writes text lines: those naming an error, fatal or critical condition.
    """
    tracebacks = line.count(TRACEBACK)
    text = line.strip()
    if not text:
        return False, 0
    if kind == "gdnsd":
        return bool(_GDNSD_ERROR.search(text)), tracebacks
    if text.startswith("{"):
        try:
            event = json.loads(text)
        except ValueError:
            return True, tracebacks
        level = str(event.get("level", "")).lower() if isinstance(event, dict) else ""
        return level in ("error", "critical", "exception", "fatal"), tracebacks
    return True, tracebacks


def parse_metrics(
    text: str, prefixes: Sequence[str] = METRIC_PREFIXES, extras: Sequence[str] = METRIC_EXTRAS
) -> dict[str, float]:
    """Samples of the Prometheus text whose name starts with a prefix or an extra family's
    name, as {"name{labels}": value}; `_created` samples (timestamps) are left out."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        if name.endswith("_created"):
            continue
        if name.startswith(tuple(prefixes)) or any(
            name == extra or name.startswith(extra + "_") for extra in extras
        ):
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def loss_pct(stats: Mapping[str, Any] | None) -> float | None:
    """Lost queries as a percentage of those sent (dnsperf's counts)."""
    if not stats or not stats.get("sent"):
        return None
    return 100.0 * (stats.get("lost") or 0) / stats["sent"]


def probe_success(
    probes: Sequence[Sequence[Any]], window: Sequence[float] | None
) -> dict[str, Any]:
    """Success of new-TCP probes, (time, ok, seconds) each, inside the window of the slow
    clients and outside it."""
    inside = [p for p in probes if window and window[0] <= p[0] <= window[1]]
    outside = [p for p in probes if not (window and window[0] <= p[0] <= window[1])]

    def rate(items: list[Sequence[Any]]) -> dict[str, Any]:
        ok = sum(1 for p in items if p[1])
        return {
            "attempts": len(items),
            "answered": ok,
            "pct": round(100.0 * ok / len(items), 2) if items else None,
        }

    return {"during": rate(inside), "outside": rate(outside)}


def rss_series(samples: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per process (labelled 'pid N (role)'), its (time, MB) samples in order."""
    series: dict[str, list[tuple[float, float]]] = {}
    for sample in samples:
        for label, mb in sample["processes"].items():
            series.setdefault(label, []).append((sample["t"], mb))
    return series


def plateau(
    points: Sequence[tuple[float, float]], bounds: Bounds, min_points: int = 4
) -> dict[str, Any]:
    """Does this process's RSS level off? From the middle sample to the end, RSS may grow by
    at most `plateau_growth_pct` of its value at the middle, or `plateau_growth_mb`, whichever
    is larger. Judging the whole second half, not a last sample or two, keeps a steady climb of
    a few MB per sample from passing as noise. None when there are too few samples."""
    if not points:
        return {"max_mb": None, "growth_mb": None, "levels_off": None}
    values = [mb for _, mb in points]
    out: dict[str, Any] = {"max_mb": max(values), "first_mb": values[0], "last_mb": values[-1]}
    if len(values) < min_points:
        out.update(growth_mb=None, levels_off=None)
        return out
    middle = values[(len(values) - 1) // 2]
    growth = max(values[(len(values) - 1) // 2 :]) - middle
    allowed = max(bounds.plateau_growth_mb, middle * bounds.plateau_growth_pct / 100)
    out.update(
        growth_mb=round(growth, 1), allowed_mb=round(allowed, 1), levels_off=growth <= allowed
    )
    return out


def error_rate(per_second: Sequence[int], seconds: float) -> dict[str, Any]:
    total = sum(per_second)
    return {
        "total": total,
        "mean_per_s": round(total / seconds, 2) if seconds > 0 else None,
        "peak_per_s": max(per_second) if per_second else 0,
    }


def malformed_summary(kinds: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    sent = sum(k["sent"] for k in kinds.values())
    replies = sum(k["replies"] for k in kinds.values())
    parsed = sum(k["parsed"] for k in kinds.values())
    rejected = sum(k["rejected"] for k in kinds.values())
    return {"sent": sent, "replies": replies, "parsed": parsed, "rejected": rejected}


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


def _fmt_pct(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}%"


def evaluate(result: Mapping[str, Any], bounds: Bounds) -> list[Check]:
    """Every check of one server's run, in the order the table prints them."""
    checks: list[Check] = []
    loss = loss_pct(result.get("valid"))
    checks.append(
        Check(
            "valid-query loss",
            _fmt_pct(loss),
            f"<= {bounds.max_valid_loss_pct}%",
            None if loss is None else loss <= bounds.max_valid_loss_pct,
        )
    )
    slow = result.get("slow_tcp")
    if slow is not None:
        during = probe_success(slow["probes"], slow.get("window"))["during"]
        pct = during["pct"]
        checks.append(
            Check(
                "new-TCP success during slow clients",
                f"{_fmt_pct(pct, 1)} ({during['answered']}/{during['attempts']})",
                f">= {bounds.min_tcp_success_pct}%",
                None if pct is None else pct >= bounds.min_tcp_success_pct,
            )
        )
    logs = result.get("logs", {})
    tracebacks = logs.get("tracebacks", 0)
    checks.append(
        Check(
            "tracebacks in the log",
            str(tracebacks),
            f"<= {bounds.max_tracebacks}",
            tracebacks <= bounds.max_tracebacks,
        )
    )
    deaths = result.get("deaths", [])
    checks.append(
        Check(
            "server deaths",
            str(len(deaths))
            + (" (" + ", ".join(d["how"] for d in deaths[:3]) + ")" if deaths else ""),
            f"<= {bounds.max_deaths}",
            len(deaths) <= bounds.max_deaths,
        )
    )
    rate = error_rate(logs.get("errors_per_s", []), result.get("seconds", 0))
    checks.append(
        Check(
            "error log lines per second (peak)",
            f"{rate['peak_per_s']} (mean {rate['mean_per_s']}, total {rate['total']})",
            f"<= {bounds.max_error_lines_per_s:g}",
            rate["peak_per_s"] <= bounds.max_error_lines_per_s,
        )
    )
    series = rss_series(result.get("rss", []))
    if series:
        verdicts = {label: plateau(points, bounds) for label, points in series.items()}
        worst = max(v["max_mb"] for v in verdicts.values())
        checks.append(
            Check(
                "RSS of every process (max)",
                f"{worst:.1f} MB",
                f"<= {bounds.rss_bound_mb:g} MB per process",
                worst <= bounds.rss_bound_mb,
            )
        )
        window = result.get("rss_window")
        if window:  # judged where nothing reloads: a reload may start caches afresh
            series = {
                label: [p for p in points if window[0] <= p[0] <= window[1]]
                for label, points in series.items()
            }
        judged = [
            v
            for v in (plateau(points, bounds) for points in series.values())
            if v["levels_off"] is not None
        ]
        growth = max((v["growth_mb"] for v in judged), default=None)
        where = f" in t={window[0]:.0f}-{window[1]:.0f} s" if window else ""
        checks.append(
            Check(
                "RSS levels off (growth over the second half of the stretch without reloads)",
                "n/a (too few samples)" if growth is None else f"{growth:+.1f} MB (worst){where}",
                f"<= max({bounds.plateau_growth_mb:g} MB, {bounds.plateau_growth_pct:g}%)",
                None if not judged else all(v["levels_off"] for v in judged),
            )
        )
    malformed = result.get("malformed")
    if malformed is not None:
        summary = malformed_summary(malformed["kinds"])
        checks.append(
            Check(
                "replies a DNS parser rejects",
                f"{summary['rejected']} of {summary['parsed']} parsed",
                f"<= {bounds.max_rejected_replies}",
                summary["rejected"] <= bounds.max_rejected_replies,
            )
        )
    stop = result.get("stop")
    if stop is not None and stop.get("seconds") is not None:
        checks.append(
            Check(
                "SIGTERM to exit",
                f"{stop['seconds']:.2f} s (exit {stop.get('code')})",
                f"<= {bounds.max_stop_s:g} s",
                stop["seconds"] <= bounds.max_stop_s,
            )
        )
    return checks


def failed(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if c.passed is False]


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


def _mark(check: Check | None) -> str:
    if check is None:
        return ""
    return {True: "ok", False: "FAIL", None: "n/a"}[check.passed]


def _count(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def figures(result: Mapping[str, Any]) -> dict[str, str]:
    """The unchecked figures of one server's run, as text, by row name."""
    rows: dict[str, str] = {}
    valid = result.get("valid") or {}
    rows["valid load: sent / answered / lost"] = (
        f"{_count(valid.get('sent'))} / {_count(valid.get('completed'))} / "
        f"{_count(valid.get('lost'))} at {_count(valid.get('rate'))} qps"
    )
    phases = valid.get("phases") or {}
    if phases:
        rows["valid loss by phase: " + " / ".join(phases)] = " / ".join(
            _fmt_pct(loss_pct(run)) for run in phases.values()
        )
    walk = result.get("walk") or {}
    rows["distinct subnets asked (v4 /24 + v6 /56)"] = (
        f"{_count(walk.get('sent'))} ({_count(walk.get('v4'))} + {_count(walk.get('v6'))}), "
        f"lost {_count(walk.get('lost'))}"
    )
    malformed = result.get("malformed")
    if malformed:
        summary = malformed_summary(malformed["kinds"])
        rows["malformed/mutated packets: sent / replies"] = (
            f"{_count(summary['sent'])} / {_count(summary['replies'])}"
        )
        for kind in malformed.get("formerr_kinds", []):
            data = malformed["kinds"].get(kind)
            if data:
                rows[f"  {kind}: FORMERR / replies / sent"] = (
                    f"{_count(data['rcodes'].get('FORMERR', 0))} / {_count(data['replies'])} / "
                    f"{_count(data['sent'])}"
                )
    slow = result.get("slow_tcp")
    if slow is not None:
        outside = probe_success(slow["probes"], slow.get("window"))["outside"]
        rows["slow TCP clients: held (min / max in window)"] = (
            f"{_count(slow.get('held_min'))} / {_count(slow.get('held_max'))} of "
            f"{_count(slow.get('clients'))}"
        )
        rows["slow TCP: closed by server / reconnects"] = (
            f"{_count(slow.get('closed_by_server'))} / {_count(slow.get('reconnects'))}"
        )
        rows["new-TCP success outside the window"] = (
            f"{_fmt_pct(outside['pct'], 1)} ({outside['answered']}/{outside['attempts']})"
        )
    sockets = result.get("sockets")
    if sockets:
        rows.update(socket_rows(result, sockets))
    reloads = result.get("reloads") or {}
    rows["reloads: sent / failed / skipped (restarting) / seen in answers"] = (
        f"{_count(reloads.get('sent'))} / {_count(reloads.get('failed'))} / "
        f"{_count(reloads.get('skipped'))} / {_count(reloads.get('seen'))}"
    )
    health = result.get("health") or {}
    rows["health target flips / state changes seen"] = (
        f"{_count(health.get('flips'))} / {_count(health.get('changes_seen'))}"
    )
    geoip = result.get("geoip") or {}
    if geoip:
        rows["GeoIP file: in place / truncated in place / atomic"] = (
            f"{_count(geoip.get('in_place'))} / {_count(geoip.get('truncated'))} / "
            f"{_count(geoip.get('atomic'))}"
        )
    peaks = result.get("rss_peaks") or {}
    if peaks:
        label, mb = max(peaks.items(), key=lambda item: item[1])
        rows["highest RSS of any process (VmHWM: between samples too)"] = (
            f"{mb:,.1f} MB ({label.split(' (')[1].split(',')[0]})"
        )
    logs = result.get("logs") or {}
    rows["log: lines / bytes"] = f"{_count(logs.get('lines'))} / {_count(logs.get('bytes'))}"
    rows["CPU, % of one core: server / soak and dnsperf / other sessions"] = (
        f"{_count(result.get('server_cpu_pct'))} / {_count(result.get('soak_cpu_pct'))} / "
        f"{_count(result.get('others_cpu_pct'))}"
    )
    by_pid = result.get("server_cpu_pct_by_pid") or {}
    if len(by_pid) > 1:
        rows["server CPU by process, % of one core"] = " / ".join(
            f"{pct:g}" for pct in sorted(by_pid.values(), reverse=True)
        )
    return rows


def datagrams_sent(result: Mapping[str, Any]) -> int:
    """UDP datagrams the soak sent the server: the valid load, the walk, the bad packets."""
    total = sum(((result.get(key) or {}).get("sent") or 0) for key in ("valid", "walk"))
    malformed = result.get("malformed")
    if malformed:
        total += malformed_summary(malformed["kinds"])["sent"]
    return total


def socket_rows(result: Mapping[str, Any], sockets: Mapping[str, Any]) -> dict[str, str]:
    """The kernel's view: UDP datagrams dropped at the server's full receive buffers (lost
    before the server read them, whatever their source), and the TCP listen queue while the
    slow clients run (samples one second apart, the first at t = 0)."""
    rows: dict[str, str] = {}
    drops = sockets.get("udp_drops") or 0
    sent = datagrams_sent(result)
    share = f" ({100.0 * drops / sent:.2f}% of {sent:,} sent)" if sent else ""
    rows["UDP datagrams dropped by the kernel: receive buffer full"] = f"{drops:,}{share}"
    queue = list(sockets.get("accept_queue") or [])
    window = (result.get("slow_tcp") or {}).get("window")
    if window:
        queue = queue[int(window[0]) : int(window[1]) + 1]
    if queue:
        ordered = sorted(queue)
        rows["TCP listen queue during slow clients: median / max (listeners)"] = (
            f"{ordered[len(ordered) // 2]:,} / {ordered[-1]:,} ({sockets.get('listeners', 0)})"
        )
    return rows


def table(results: Mapping[str, Mapping[str, Any]], bounds: Bounds) -> str:
    """A Markdown table: checks (with their bounds and verdicts), then figures, one column per
    server."""
    labels = list(results)
    checks = {label: {c.name: c for c in evaluate(results[label], bounds)} for label in labels}
    names: list[str] = []
    bound_of: dict[str, str] = {}
    for label in labels:
        for name, check in checks[label].items():
            if name not in names:
                names.append(name)
                bound_of[name] = check.bound
    lines = [
        "| | bound | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for name in names:
        cells = []
        for label in labels:
            found = checks[label].get(name)
            cells.append("" if found is None else f"{found.value} {_mark(found)}")
        lines.append(f"| {name} | {bound_of[name]} | " + " | ".join(cells) + " |")
    rows: dict[str, dict[str, str]] = {}
    for label in labels:
        for name, text in figures(results[label]).items():
            rows.setdefault(name, {})[label] = text
    for name, per_label in rows.items():
        lines.append(f"| {name} | | " + " | ".join(per_label.get(x, "") for x in labels) + " |")
    return "\n".join(lines)


def rss_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """RSS (MB) of every process of every server at every sample (every 10 s)."""
    lines = []
    for label, result in results.items():
        series = rss_series(result.get("rss", []))
        for process, points in series.items():
            values = " ".join(f"{mb:.0f}" for _, mb in points)
            lines.append(f"{label} {process}: {values}")
    return "\n".join(lines)


def malformed_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Per kind of bad packet and server: sent, replies, rcodes, replies a parser rejects."""
    lines = [
        "| kind | server | sent | replies | rcodes | parsed / rejected |",
        "|---|---|---:|---:|---|---|",
    ]
    for label, result in results.items():
        malformed = result.get("malformed")
        if not malformed:
            continue
        for kind, data in malformed["kinds"].items():
            rcodes = ", ".join(f"{k} {v:,}" for k, v in sorted(data["rcodes"].items()))
            lines.append(
                f"| {kind} | {label} | {data['sent']:,} | {data['replies']:,} | {rcodes} | "
                f"{data['parsed']:,} / {data['rejected']:,} |"
            )
    return "\n".join(lines)


def metrics_text(results: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for label, result in results.items():
        samples = result.get("metrics")
        if samples is None:
            continue
        if not samples:
            lines.append(f"{label}: no geodns_rrl_* / geodns_cookies_* / geodns_tcp_* metrics")
        present = {k for k in samples if k.startswith(METRIC_PREFIXES)}
        if samples and not present:
            lines.append(f"{label}: no geodns_rrl_* / geodns_cookies_* / geodns_tcp_* metrics")
        for key, value in sorted(samples.items()):
            lines.append(f"{label} {key} {value:g}")
        for key, value in sorted((result.get("server_stats") or {}).items()):
            lines.append(f"{label} {key} {value}")
    return "\n".join(lines)


def bounds_dict(bounds: Bounds) -> dict[str, Any]:
    return asdict(bounds)

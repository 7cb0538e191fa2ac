"""The report: the results as JSON, and the table (markdown, ready for docs/benchmark.md) with
geodns, gdnsd and their ratio side by side, plus the answer checks in words. A run with a
baseline (an older geodns, `bench/run.py --baseline DIR`) has its column and the ratio
geodns/baseline right after geodns's.

The table is built from the results dict alone, so it can be redrawn from a saved JSON file:
`python -m bench.report bench/out/results-....json`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import FIXED_QPS

Row = list[str]


def get(data: Any, *path: str | int) -> Any:
    """data[path[0]][path[1]]..., or None where the path does not lead."""
    for key in path:
        if isinstance(data, dict):
            data = data.get(key) if not isinstance(key, int) else data.get(key, data.get(str(key)))
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(a: Any, b: Any) -> str:
    """a/b to two places (of the unrounded figures), or '' when either is missing."""
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return ""
    if not isinstance(a, numbers) or not isinstance(b, numbers) or not b:
        return ""
    return f"{a / b:.2f}"


def markdown(headers: list[str], rows: list[Row]) -> str:
    """A markdown table; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    for row in rows:
        cells = row + [""] * (len(headers) - len(row))
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def process_memory(memory: Any) -> str:
    """'RSS / PSS' of each process after the cold run, in MB ('+' between processes; a helper
    process such as multiprocessing's resource tracker is marked)."""
    processes = get(memory, "processes") or []
    if not processes:
        return "-"
    return " + ".join(
        f"{fmt(p.get('rss_mb'))} / {fmt(p.get('pss_mb'))}"
        + (" (helper)" if str(p.get("role", "")).startswith("helper") else "")
        for p in processes
    )


def index_seconds(run: Any) -> Any:
    """geodns's geo index build time: the event's `seconds`, else the /metrics gauge."""
    index = get(run, "geo_index") or {}
    if not index.get("reported"):
        return "not reported" if index else None
    return index.get("seconds", index.get("metric_seconds"))


class Table:
    """Rows of (label, geodns, [baseline, geodns/baseline,] gdnsd, geodns/gdnsd, extra
    columns...)."""

    def __init__(self, extra: list[str], baseline: str | None = None) -> None:
        self.extra = extra
        self.baseline = baseline
        self.rows: list[Row] = []

    def headers(self) -> list[str]:
        versus = [self.baseline, f"geodns/{self.baseline}"] if self.baseline else []
        return ["metric", "geodns", *versus, "gdnsd", "geodns/gdnsd", *self.extra]

    def section(self, title: str) -> None:
        self.rows.append([f"**{title}**"])

    def add(
        self,
        label: str,
        runs: dict[str, Any],
        value: Callable[[Any], Any],
        digits: int = 1,
        compare: bool = True,
    ) -> None:
        a, b = value(runs.get("geodns")), value(runs.get("gdnsd"))
        others = self.extra + ([self.baseline] if self.baseline else [])
        if a is None and b is None and all(value(runs.get(k)) is None for k in others):
            return
        row = [label, fmt(a, digits)]
        if self.baseline:
            old = value(runs.get(self.baseline))
            row += [fmt(old, digits), ratio(a, old) if compare else ""]
        row += [fmt(b, digits), ratio(a, b) if compare else ""]
        row += [fmt(value(runs.get(k)), digits) for k in self.extra]
        self.rows.append(row)

    def line(self, label: str, *cells: str) -> None:
        self.rows.append([label, *cells])


def section_rows(table: Table, title: str, section: dict[str, Any], full: bool) -> None:
    """The rows of one database and PoP set: CPU, latency, memory, index, scopes, blocks."""
    runs = section.get("servers") or {}
    table.section(title)
    workloads = ("warm", "cold", "static") if full else ("warm", "cold")
    for workload in workloads:
        name = {"warm": "warm geo", "cold": "cold geo", "static": "static mix"}[workload]
        saturated = ("runs", workload, "saturated")
        table.add(f"{name}: max qps", runs, at(*saturated, "qps"), digits=0)
        table.add(f"{name}: server CPU µs/query", runs, at(*saturated, "server_cpu_us_per_query"))
        table.add(
            f"{name}: of it in the kernel (stime) µs/query",
            runs,
            at(*saturated, "server_kernel_us_per_query"),
        )
        if full:
            table.add(
                f"{name}: p50 / p99 ms @{FIXED_QPS:,} qps",
                runs,
                latency_pair(("runs", workload, "fixed", "latency")),
                compare=False,
            )
        table.add(f"{name}: lost (saturated + fixed rate)", runs, lost_in(workload), compare=False)
        table.add(
            f"{name}: other load on the machine %",
            runs,
            at(*saturated, "others_busy_pct"),
            compare=False,
        )
    table.add("start to first answer (s)", runs, lambda r: get(r, "startup_s"), digits=2)
    table.add("geo index build (s)", runs, index_seconds, digits=2, compare=False)
    table.add(
        "RSS / PSS per process after the cold run (MB)",
        runs,
        lambda r: process_memory(get(r, "memory_after_cold")) if r else None,
        compare=False,
    )
    table.add(
        "RSS after the cold run, all processes (MB)",
        runs,
        lambda r: get(r, "memory_after_cold", "rss_total_mb"),
    )
    kindness = section.get("kindness") or {}
    table.add(
        "median ECS scope, warm subnets (prefix length)",
        kindness,
        lambda k: get(k, "median_scope_warm"),
        compare=False,
    )
    warm_n = get(kindness, "geodns", "blocks_warm", "networks")
    cold_n = get(kindness, "geodns", "blocks_cold", "networks")
    table.add(
        f"resolver cache blocks, warm pool ({fmt(warm_n)} /24s)",
        kindness,
        lambda k: get(k, "blocks_warm", "blocks"),
    )
    table.add(
        f"resolver cache blocks, {fmt(cold_n)} cold client /24s",
        kindness,
        lambda k: get(k, "blocks_cold", "blocks"),
    )
    table.add(
        "… of them answered wrongly from the cache (scope too wide)",
        kindness,
        lambda k: sum_of(
            get(k, "blocks_warm", "wrong_from_cache"), get(k, "blocks_cold", "wrong_from_cache")
        ),
        compare=False,
    )
    churn = get(runs, "geodns", "churn")
    if churn:
        table.line(
            f"lost during {churn.get('reloads')} reloads + {churn.get('drains')} drains/undrains "
            f"under {fmt(churn.get('qps'), 0)} qps",
            f"{fmt(churn.get('lost'))} of {fmt(churn.get('sent'))}",
        )


def sum_of(*values: Any) -> Any:
    numbers = [v for v in values if isinstance(v, int)]
    return sum(numbers) if numbers else None


def at(*path: str) -> Callable[[Any], Any]:
    """A cell's value: the figure at `path` in a server's results."""
    return lambda run: get(run, *path)


def latency_pair(path: tuple[str, ...]) -> Callable[[Any], Any]:
    def cell(run: Any) -> Any:
        p50, p99 = get(run, *path, "p50_ms"), get(run, *path, "p99_ms")
        return None if p50 is None or p99 is None else f"{p50:.3f} / {p99:.3f}"

    return cell


def lost_in(workload: str) -> Callable[[Any], Any]:
    """Queries lost at saturation and at the fixed rate, together."""

    def cell(run: Any) -> Any:
        saturated = get(run, "runs", workload, "saturated", "lost")
        return sum_of(saturated, get(run, "runs", workload, "fixed", "lost"))

    return cell


def big_zone_rows(table: Table, big: dict[str, Any]) -> None:
    names = get(big, "geodns", "names") or get(big, "gdnsd", "names")
    table.section(f"zone of {fmt(names)} nearest-PoP names ({big.get('database', '')})")
    table.add("start to first answer (s)", big, lambda r: get(r, "startup_s"), digits=2)
    table.add(
        "RSS then (MB; geodns: with its index builder)", big, lambda r: get(r, "rss_start_mb")
    )
    table.add("geo index build (s)", big, index_seconds, digits=2, compare=False)
    table.add("RSS once the index is ready (MB)", big, lambda r: get(r, "rss_ready_mb"))
    table.add("reload: time to serve the new zone (s)", big, lambda r: get(r, "reload_s"), digits=2)
    table.add(
        "RSS after the reload run, every name asked (MB)",
        big,
        lambda r: get(r, "rss_after_reload_mb"),
    )
    table.add(
        "restart to first answer (s; geodns: index cached)",
        big,
        lambda r: get(r, "restart_s"),
        digits=2,
    )
    table.add("RSS then (MB)", big, lambda r: get(r, "rss_restart_mb"))
    table.add(
        f"max latency @{FIXED_QPS:,} qps with a reload / without (ms)",
        big,
        reload_latency,
        compare=False,
    )
    table.add(
        "lost during the reload run",
        big,
        lambda r: get(r, "with_reload", "lost"),
        compare=False,
    )
    table.add("serves the reloaded zone", big, lambda r: get(r, "serves_new_zone"), compare=False)


def reload_latency(run: Any) -> Any:
    """'max with the reload / max without', in ms."""
    with_reload, without = get(run, "with_reload", "max_ms"), get(run, "without_reload", "max_ms")
    if with_reload is None and without is None:
        return None
    return f"{fmt(with_reload, 2)} / {fmt(without, 2)}"


def memory_rows(table: Table, memory: dict[str, Any]) -> None:
    one, two = memory.get("1"), memory.get("2")
    db = memory.get("database") or get(one, "database") or ""
    table.section(f"geodns memory after a cold run, {db} ({fmt(memory.get('database_mb'))} MB)")
    for label, run in (("workers: 1", one), ("workers: 2", two)):
        if run is None:
            continue
        mem = run.get("memory_after_cold") or {}
        table.line(f"{label}: RSS / PSS per process (MB)", process_memory(mem))
        table.line(
            f"{label}: total RSS / total PSS (MB)",
            f"{fmt(mem.get('rss_total_mb'))} / {fmt(mem.get('pss_total_mb'))}",
        )
    if one and two:
        a = get(two, "memory_after_cold", "pss_total_mb")
        b = get(one, "memory_after_cold", "pss_total_mb")
        table.line("workers: 2 / workers: 1, total PSS", ratio(a, b))


def startup_rows(table: Table, startup: dict[str, Any]) -> None:
    db_mb = get(startup, "geodns", "database_mb") or get(startup, "gdnsd", "database_mb")
    table.section(f"start-up, {fmt(db_mb, 0)} MB City database")
    table.add("start to first answer (s)", startup, lambda r: get(r, "startup_s"), digits=2)
    table.add("RSS then (MB)", startup, lambda r: get(r, "rss_mb"))
    table.add("geo index build (s)", startup, index_seconds, digits=2, compare=False)


def table(results: dict[str, Any]) -> str:
    """The whole table: one section per database and PoP set, then the big zone, memory with
    1 and 2 workers, and start-up with the big database."""
    baseline = get(results, "baseline", "label")
    extra = sorted(
        {
            label
            for database in (results.get("databases") or {}).values()
            for section in (database.get("sections") or {}).values()
            for label in (section.get("servers") or {})
            if label not in ("geodns", "gdnsd", baseline)
        }
    )
    rows = Table(extra, baseline)
    for name, database in (results.get("databases") or {}).items():
        for label, section in (database.get("sections") or {}).items():
            pops = label.replace("-pop", " PoPs")
            section_rows(rows, f"{name} database, {pops}", section, full=section.get("full", False))
    if results.get("big_zone"):
        big_zone_rows(rows, results["big_zone"])
    if results.get("memory"):
        memory_rows(rows, results["memory"])
    if results.get("startup_big_db"):
        startup_rows(rows, results["startup_big_db"])
    return markdown(rows.headers(), rows.rows)


def check_lines(results: dict[str, Any]) -> list[str]:
    """The answer checks in words: how many subnets got the same answer from both servers."""
    lines = []
    for name, database in (results.get("databases") or {}).items():
        for label, section in (database.get("sections") or {}).items():
            for workload, check in (section.get("checks") or {}).items():
                where = f"{name}, {label}, {workload}"
                if workload == "static":
                    different = len(check.get("differences") or {})
                    lines.append(
                        f"answers, {where}: {check['compared'] - different} of {check['compared']}"
                        " identical (answer section, rcode, AA, SOA present)"
                    )
                    continue
                lines.append(
                    f"answers, {where}: {check['same']:,} of {check['compared']:,} subnets "
                    f"identical; {check['mismatches']:,} differ ({check['near_ties']:,} near ties "
                    f"within 1 km / 0.1 %, {check.get('no_location', 0):,} where the database "
                    f"has no coordinates); {check['missing']:,} not asked"
                )
                lines += [f"  {example}" for example in check.get("examples", [])[:3]]
    return lines


def source_lines(results: dict[str, Any]) -> list[str]:
    """Where each database came from and its licence (the licences ask for attribution)."""
    lines = []
    for name, database in (results.get("databases") or {}).items():
        about = database.get("database") or {}
        lines.append(
            f"database {name}: {about.get('source')}; licence {about.get('licence')}; "
            f"{fmt(about.get('megabytes'))} MB"
        )
    return lines


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=1, default=str))


def main(argv: list[str]) -> int:
    results = json.loads(Path(argv[0]).read_text())
    print(table(results))
    print("\n".join(source_lines(results) + check_lines(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

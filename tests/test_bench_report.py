"""The benchmark's pure parts that turn measurements into figures: resolver cache blocks from
ECS scopes, /proc and dnsperf parsing, and the report table.

A wrong count here would misstate how kind a server is to resolvers' caches, so the block count
is checked on cases worked out by hand, including a scope too wide to be true.
"""

from __future__ import annotations

from pathlib import Path

from bench import report
from bench.dnswire import GeoReply
from bench.loadgen import parse_dnsperf, percentiles
from bench.procstat import parse_smaps_rollup
from bench.resolver_cache import block_of, count_blocks, kindness, median_scope

A = ("198.51.100.21",)
B = ("198.51.100.31",)


def net(a: int, b: int, c: int) -> int:
    return a << 24 | b << 16 | c << 8


def test_a_block_is_the_subnet_cut_to_the_scope_and_never_longer_than_the_source() -> None:
    assert block_of(net(10, 1, 2), 16) == (net(10, 1, 0), 16)
    assert block_of(net(10, 1, 2), 0) == (0, 0)
    assert block_of(net(10, 1, 2), 28) == (net(10, 1, 2), 24)


def test_a_wide_scope_serves_the_next_networks_from_one_block() -> None:
    asked = [net(10, 1, 2), net(10, 1, 3), net(10, 200, 0), net(11, 0, 0)]
    replies = {
        net(10, 1, 2): GeoReply(A, 8),  # 10/8 -> A
        net(10, 1, 3): GeoReply(A, 8),
        net(10, 200, 0): GeoReply(A, 8),
        net(11, 0, 0): GeoReply(B, 24),
    }
    blocks = count_blocks(asked, replies)
    assert (blocks.networks, blocks.blocks, blocks.from_cache, blocks.wrong_from_cache) == (
        4,
        2,
        2,
        0,
    )


def test_narrow_scopes_need_a_block_per_network() -> None:
    asked = [net(10, 1, i) for i in range(5)]
    replies = {s: GeoReply(A, 24) for s in asked}
    assert count_blocks(asked, replies).blocks == 5


def test_a_scope_wider_than_true_is_counted_as_wrong_answers_from_the_cache() -> None:
    asked = [net(10, 1, 2), net(10, 9, 9)]
    replies = {net(10, 1, 2): GeoReply(A, 8), net(10, 9, 9): GeoReply(B, 16)}
    blocks = count_blocks(asked, replies)
    assert (blocks.blocks, blocks.wrong_from_cache) == (1, 1)


def test_an_unanswered_network_costs_a_block_and_caches_nothing() -> None:
    asked = [net(10, 1, 2), net(10, 1, 3)]
    replies = {net(10, 1, 2): GeoReply("no answer", None), net(10, 1, 3): GeoReply(A, 8)}
    blocks = count_blocks(asked, replies)
    assert (blocks.blocks, blocks.unanswered, blocks.from_cache) == (2, 1, 0)


def test_median_scope_and_the_kindness_figures() -> None:
    replies = {net(10, 0, i): GeoReply(A, s) for i, s in enumerate((14, 20, 22, 24))}
    warm = list(replies)
    assert median_scope(warm, replies) == 21
    figures = kindness(warm, warm[:2], replies)
    assert figures["median_scope_warm"] == 21
    assert figures["blocks_cold"] == {
        "networks": 2,
        "blocks": 1,
        "from_cache": 1,
        "wrong_from_cache": 0,
        "unanswered": 0,
    }
    assert figures["scopes_warm"] == {14: 1, 20: 1, 22: 1, 24: 1}


def test_smaps_rollup_and_dnsperf_output_are_read() -> None:
    rollup = "00400000-7ffd [rollup]\nRss:  1024 kB\nPss:   512 kB\nPss_Anon:  500 kB\nSwap: 0 kB\n"
    assert parse_smaps_rollup(rollup) == {"Rss": 1024, "Pss": 512, "Pss_Anon": 500}
    text = (
        "  Queries sent:         1000\n  Queries completed:    998 (99.80%)\n"
        "  Queries lost:         2 (0.20%)\n  Response codes:       NOERROR 998 (100.00%)\n"
        "  Run time (s):         0.5\n  Queries per second:   1996.0\n"
        "  Average Latency (s):  0.000100 (min 0.000050, max 0.000300)\n"
        "> NOERROR www.cdn.example.com A 0.000100\n> NOERROR www.cdn.example.com A 0.000300\n"
        "> T www.cdn.example.com A\n"
    )
    stats = parse_dnsperf(text, verbose=True)
    assert (stats["sent"], stats["completed"], stats["lost"], stats["qps"]) == (
        1000,
        998,
        2,
        1996.0,
    )
    assert stats["latency"]["n"] == 2 and stats["latency"]["max_ms"] == 0.3
    assert percentiles([0.001, 0.002, 0.003, 0.004])["p50_ms"] == 2.0


def server(cpu: float, rss: float, index: dict[str, object] | None = None) -> dict[str, object]:
    saturated = {
        "qps": 100000.0,
        "server_cpu_us_per_query": cpu,
        "server_kernel_us_per_query": 2.0,  # the same system calls for both servers
        "lost": 0,
        "others_busy_pct": 1.0,
    }
    return {
        "startup_s": 0.5,
        "geo_index": {"reported": False} if index is None else index,
        "runs": {"warm": {"saturated": saturated}, "cold": {"saturated": saturated}},
        "memory_after_cold": {
            "processes": [{"rss_mb": rss, "pss_mb": rss - 1}],
            "rss_total_mb": rss,
            "pss_total_mb": rss - 1,
        },
    }


def results() -> dict[str, object]:
    blocks = {"networks": 200, "blocks": 50, "wrong_from_cache": 0}
    section = {
        "full": False,
        "servers": {
            "geodns": server(10.0, 120.0, {"reported": True, "seconds": 1.9}),
            "gdnsd": server(5.0, 40.0, {}),  # gdnsd has no such event
        },
        "kindness": {
            "geodns": {"median_scope_warm": 20, "blocks_warm": blocks, "blocks_cold": blocks},
            "gdnsd": {
                "median_scope_warm": 14,
                "blocks_warm": blocks,
                "blocks_cold": {**blocks, "blocks": 25},
            },
        },
        "checks": {
            "warm": {
                "compared": 10,
                "same": 9,
                "mismatches": 1,
                "near_ties": 1,
                "missing": 0,
                "examples": [],
            }
        },
    }
    return {
        "databases": {
            "geolite2-2018": {
                "database": {
                    "source": "PyPI maxminddb-geolite2",
                    "licence": "CC BY-SA 4.0 (MaxMind)",
                },
                "sections": {"100-pop": section},
            }
        },
        "big_zone": {
            "database": "geolite2-2018",
            "geodns": {
                "names": 10000,
                "startup_s": 17.7,
                "rss_start_mb": 249.0,
                "with_reload": {"max_ms": 900.0, "lost": 0},
                "without_reload": {"max_ms": 1.0},
            },
            "gdnsd": {"names": 10000, "startup_s": 1.9, "rss_start_mb": 38.0},
        },
        "memory": {
            "database": "synthetic-100mb",
            "database_mb": 99.5,
            "1": {
                "memory_after_cold": {
                    "processes": [{"rss_mb": 200, "pss_mb": 190}],
                    "rss_total_mb": 200,
                    "pss_total_mb": 190,
                }
            },
            "2": {
                "memory_after_cold": {
                    "processes": [{"rss_mb": 200, "pss_mb": 150}, {"rss_mb": 200, "pss_mb": 150}],
                    "rss_total_mb": 400,
                    "pss_total_mb": 300,
                }
            },
        },
    }


def test_the_table_has_a_row_per_figure_with_ratios(tmp_path: Path) -> None:
    text = report.table(results())
    lines = text.splitlines()
    assert lines[0] == "| metric | geodns | gdnsd | geodns/gdnsd |"
    assert "| **geolite2-2018 database, 100 PoPs** |  |  |  |" in lines
    assert "| cold geo: server CPU µs/query | 10.0 | 5.0 | 2.00 |" in lines
    assert "| cold geo: of it in the kernel (stime) µs/query | 2.0 | 2.0 | 1.00 |" in lines
    assert (
        "| RSS / PSS per process after the cold run (MB) | 120.0 / 119.0 | 40.0 / 39.0 |  |"
        in lines
    )
    assert "| geo index build (s) | 1.90 | - |  |" in lines
    assert "| median ECS scope, warm subnets (prefix length) | 20 | 14 |  |" in lines
    assert "| resolver cache blocks, 200 cold client /24s | 50 | 25 | 2.00 |" in lines
    assert "| start to first answer (s) | 17.70 | 1.90 | 9.32 |" in lines
    assert "| max latency @2,000 qps with a reload / without (ms) | 900.00 / 1.00 | - |  |" in lines
    assert "| workers: 2: RSS / PSS per process (MB) | 200 / 150 + 200 / 150 |  |  |" in lines
    assert "| workers: 2 / workers: 1, total PSS | 1.58 |  |  |" in lines
    assert all(line.startswith("|") and line.endswith("|") for line in lines)


def test_the_report_names_each_databases_source_and_the_answer_checks(tmp_path: Path) -> None:
    sources = report.source_lines(results())
    assert "CC BY-SA 4.0 (MaxMind)" in sources[0] and "maxminddb-geolite2" in sources[0]
    checks = report.check_lines(results())
    assert checks[0].startswith("answers, geolite2-2018, 100-pop, warm: 9 of 10 subnets identical")
    path = tmp_path / "r.json"
    report.write_json(path, results())
    assert report.main([str(path)]) == 0


def test_processes_are_told_apart_by_their_command_line() -> None:
    from bench.procstat import role_of

    spawn = "python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5)"
    tracker = "python -c from multiprocessing.resource_tracker import main;main(4)"
    assert role_of("python -m geodns serve", 0) == "main"
    assert role_of(spawn, 2) == "worker"
    assert role_of(tracker, 1) == "helper (resource tracker)"
    assert role_of("python -m geodns.daemon.workers run_worker geodns.yaml 1 7", 1) == "worker"
    assert role_of("python -m geodns serve --config geodns.yaml", 1, "geodns-worker1") == "worker"
    assert role_of("python -P -m geodns.daemon.mapbuilder 5 42", 1) == "helper (map builder)"
    assert role_of("python -m geodns.geo.index city.mmdb cache", 1) == "helper (index builder)"
    memory = {
        "processes": [
            {"rss_mb": 90.0, "pss_mb": 70.0},
            {"rss_mb": 12.0, "pss_mb": 7.0, "role": "helper (resource tracker)"},
        ]
    }
    assert report.process_memory(memory) == "90.0 / 70.0 + 12.0 / 7.0 (helper)"


def test_a_baseline_has_its_column_and_ratio_right_after_geodns() -> None:
    with_baseline = results()
    with_baseline["baseline"] = {"label": "geodns@5027c23", "commit": "5027c23"}
    section = report.get(with_baseline, "databases", "geolite2-2018", "sections", "100-pop")
    section["servers"]["geodns@5027c23"] = server(12.5, 100.0)
    lines = report.table(with_baseline).splitlines()
    assert lines[0] == (
        "| metric | geodns | geodns@5027c23 | geodns/geodns@5027c23 | gdnsd | geodns/gdnsd |"
    )
    assert "| cold geo: server CPU µs/query | 10.0 | 12.5 | 0.80 | 5.0 | 2.00 |" in lines
    assert (
        "| RSS after the cold run, all processes (MB) | 120.0 | 100.0 | 1.20 | 40.0 | 3.00 |"
        in lines
    )
    assert "| warm geo: lost (saturated + fixed rate) | 0 | 0 |  | 0 |  |" in lines
    # a row the baseline has no figure for (the big zone): a dash and no ratio
    assert "| start to first answer (s) | 17.70 | - |  | 1.90 | 9.32 |" in lines


def test_cpu_is_split_into_the_process_and_the_kernel() -> None:
    """utime and stime of a process, from /proc: their sum is the CPU the bench divides."""
    import os

    from bench.procstat import cpu_seconds, cpu_split

    sum(range(200_000))  # some CPU of our own
    user, system = cpu_split([os.getpid()])
    assert user > 0 and system >= 0
    assert abs(cpu_seconds([os.getpid()]) - (user + system)) < 0.05
    assert cpu_split([]) == (0.0, 0.0)

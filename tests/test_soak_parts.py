"""The soak's pure parts (bench/soak_wire.py, soak_plan.py, soak_report.py): the bad packets are
bad in the way their names say, the walk's subnets are distinct and inside the database's
networks, and the report's verdicts follow their bounds. No soak runs here: bench/soak.py is
run by hand (docs/reliability.md)."""

from __future__ import annotations

import ipaddress
import random
import struct

import dns.edns
import dns.message
import pytest

from bench import soak_report as report
from bench import soak_wire as wire
from bench.dnswire import wire_name
from bench.soak_plan import FULL, QUICK, geoip_schedule, slow_many_addresses

NAME = "www.cdn.example.com"


def ecs_of(message: dns.message.Message) -> list[dns.edns.ECSOption]:
    return [o for o in message.options if isinstance(o, dns.edns.ECSOption)]


def test_the_valid_ecs_queries_parse_with_the_subnet_asked() -> None:
    v4 = int(ipaddress.IPv4Address("198.51.100.0"))
    parsed = dns.message.from_wire(wire.ecs_query(NAME, wire.FAMILY_V4, v4, 24, ident=7))
    (option,) = ecs_of(parsed)
    assert (option.address, option.srclen, option.scopelen) == ("198.51.100.0", 24, 0)
    v6 = int(ipaddress.IPv6Address("2001:db8:1234:5600::"))
    parsed = dns.message.from_wire(wire.ecs_query(NAME, wire.FAMILY_V6, v6, 56))
    (option,) = ecs_of(parsed)
    assert (option.address, option.srclen) == ("2001:db8:1234:5600::", 56)
    assert parsed.question[0].rdtype == wire.QTYPE_AAAA


@pytest.mark.parametrize("seed", range(20))
def test_each_mutation_is_the_defect_its_name_says(seed: int) -> None:
    rng = random.Random(seed)
    with pytest.raises(dns.exception.FormError):  # the ECS option ends early
        dns.message.from_wire(wire.ecs_cut(rng, NAME))
    with pytest.raises(dns.message.TrailingJunk):
        dns.message.from_wire(wire.ecs_padded(rng, NAME))
    assert len(ecs_of(dns.message.from_wire(wire.ecs_two_options(rng, NAME)))) == 2
    (option,) = ecs_of(dns.message.from_wire(wire.ecs_scope_nonzero(rng, NAME)))
    assert 1 <= option.scopelen <= option.srclen
    assert len(wire.random_bytes(rng, NAME)) in range(1, 601)
    assert len(wire.random_length(rng, NAME)) in range(0, 601)


def test_ecs_cut_loses_between_one_and_eight_octets_of_a_valid_query() -> None:
    for seed in range(50):
        cut = wire.ecs_cut(random.Random(seed), NAME)
        whole = wire._valid_ecs(random.Random(seed), NAME)
        assert whole.startswith(cut) and 1 <= len(whole) - len(cut) <= 8


def test_ecs_bad_address_breaks_a_rule_of_rfc_7871_section_6() -> None:
    for seed in range(100):
        message = wire.ecs_bad_address(random.Random(seed), NAME)
        option = message[12 + len(wire_name(NAME)) + 4 + 11 :]  # after the OPT's header
        code, length, family, source, _scope = struct.unpack(">HHHBB", option[:8])
        address = option[8:]
        assert code == wire.ECS_CODE and length == len(option) - 4
        width = {1: 4, 2: 16}.get(family)
        broken = (
            width is None
            or source > width * 8
            or len(address) != (source + 7) // 8
            or (source % 8 and address[-1] & (0xFF >> (source % 8)))
        )
        assert broken, option.hex()


def test_bit_flips_change_at_most_eight_bits_of_a_valid_query() -> None:
    changed = []
    for seed in range(50):
        flipped = wire.bit_flips(random.Random(seed), NAME)
        original = wire._any_valid(random.Random(seed), NAME)
        changed.append(sum(bin(a ^ b).count("1") for a, b in zip(flipped, original, strict=True)))
    assert max(changed) <= 8
    assert sum(1 for c in changed if c) >= 45  # a bit flipped twice cancels out, rarely


def test_reply_rcode_and_tc_come_from_the_header() -> None:
    reply = bytearray(wire.query(NAME, wire.QTYPE_A))
    reply[2] |= 0x82  # QR, TC
    reply[3] = 0x01
    assert wire.reply_rcode(bytes(reply)) == "FORMERR"
    assert wire.reply_truncated(bytes(reply))
    assert wire.reply_rcode(b"\x00" * 5) == "short"


def test_the_walk_gives_distinct_subnets_inside_the_networks_round_robin() -> None:
    networks = [
        (int(ipaddress.IPv4Address("10.0.0.0")), 22),
        (int(ipaddress.IPv4Address("192.0.2.0")), 24),
    ]
    subnets = wire.walk_subnets(networks, 5, 24, 32)
    assert len(set(subnets)) == 5
    # every network once before any twice, then the rest of the /22
    assert [str(ipaddress.IPv4Address(s)) for s in subnets] == [
        "10.0.0.0",
        "192.0.2.0",
        "10.0.1.0",
        "10.0.2.0",
        "10.0.3.0",
    ]
    with pytest.raises(ValueError):
        wire.walk_subnets(networks, 6, 24, 32)
    v6 = [(int(ipaddress.IPv6Address("2001:db8::")), 48)]
    assert len(set(wire.walk_subnets(v6, 256, 56, 128))) == 256


def test_database_networks_keep_ipv6_to_global_unicast() -> None:
    entries = [
        (ipaddress.ip_network("1.2.3.0/24"), {"c": 1}),
        (ipaddress.ip_network("2001:db8::/32"), {"c": 1}),
        (ipaddress.ip_network("::ffff:0:0/96"), {"c": 1}),
        (ipaddress.ip_network("5.6.7.0/24"), None),
    ]
    v4, v6 = wire.database_networks(entries)
    assert v4 == [(int(ipaddress.IPv4Address("1.2.3.0")), 24)]
    assert v6 == [(int(ipaddress.IPv6Address("2001:db8::")), 32)]


def test_interleave_spreads_ipv6_evenly() -> None:
    mixed = wire.interleave([1, 2, 3, 4], [9, 8])
    assert sorted(mixed) == sorted([(1, 1), (1, 2), (1, 3), (1, 4), (2, 9), (2, 8)])
    families = [f for f, _ in mixed]
    assert families[:3].count(2) == 1 and families[3:].count(2) == 1


def test_plans_meet_the_issue_counts_and_geoip_schedule_ends_in_place() -> None:
    assert FULL.malformed_count >= 1_000_000
    assert FULL.walk_count >= 2_000_000
    assert FULL.slow_many + FULL.slow_one >= 1_000
    assert QUICK.seconds < FULL.seconds
    assert len(set(slow_many_addresses(1000))) == 1000
    for plan in (FULL, QUICK):
        schedule = geoip_schedule(plan)
        hows = [step.how for _, step in schedule]
        assert "atomic" in hows and "truncated" in hows and "in_place" in hows
        pause_start, pause_end = plan.pause_window
        assert all(not pause_start <= t < pause_end for t, _ in schedule)
        assert all((step.how == "atomic") == (t < pause_start) for t, step in schedule)
        before = [step for t, step in schedule if t < pause_start]
        assert before[-1].source == "good"  # the pause runs on the right database
        assert schedule[-1][0] < plan.seconds
        assert plan.churning(0.0) and not plan.churning(pause_start)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


def test_log_lines_are_classified_by_level_and_tracebacks_counted() -> None:
    error = '{"event": "udp_error", "level": "error", "exception": "Traceback (most recent call last):\\n  x"}'
    assert report.classify_log_line(error, "geodns") == (True, 1)
    assert report.classify_log_line('{"event": "reloaded", "level": "info"}', "geodns") == (
        False,
        0,
    )
    assert report.classify_log_line("Fatal Python error: Bus error", "geodns") == (True, 0)
    assert report.classify_log_line("", "geodns") == (False, 0)
    assert report.classify_log_line("error: TCP DNS conn reset", "gdnsd") == (True, 0)
    assert report.classify_log_line("info: DNS listeners started", "gdnsd") == (False, 0)


def test_metrics_keep_rrl_cookie_tcp_families_and_the_extras() -> None:
    text = "\n".join(
        [
            "# HELP geodns_rrl_limited_total x",
            'geodns_rrl_limited_total{action="slip"} 12.0',
            "geodns_rrl_limited_created 1.7e9",
            "geodns_cookies_valid_total 3.0",
            "geodns_tcp_connections 256.0",
            "geodns_malformed_packets_total 5.0",
            "geodns_queries_total 99.0",
        ]
    )
    assert report.parse_metrics(text) == {
        'geodns_rrl_limited_total{action="slip"}': 12.0,
        "geodns_cookies_valid_total": 3.0,
        "geodns_tcp_connections": 256.0,
        "geodns_malformed_packets_total": 5.0,
    }


def test_plateau_judges_growth_over_the_second_half() -> None:
    bounds = report.Bounds(plateau_growth_mb=10, plateau_growth_pct=5)
    level = [(t * 10.0, 100.0 + (t if t < 6 else 6)) for t in range(18)]
    assert report.plateau(level, bounds)["levels_off"] is True
    rising = [(t * 10.0, 100.0 + 8 * t) for t in range(18)]
    verdict = report.plateau(rising, bounds)
    assert verdict["levels_off"] is False and verdict["growth_mb"] == 72
    # a climb of a few MB per sample fails, though each step is under the allowance
    slow_climb = [(t * 10.0, 200.0 + 4 * t) for t in range(8)]
    assert report.plateau(slow_climb, bounds)["levels_off"] is False
    assert report.plateau(rising[:3], bounds)["levels_off"] is None


def test_probe_success_splits_inside_and_outside_the_window() -> None:
    probes = [(1.0, True, 0.01), (10.0, False, 2.0), (11.0, True, 0.1), (30.0, True, 0.01)]
    split = report.probe_success(probes, [5.0, 20.0])
    assert split["during"] == {"attempts": 2, "answered": 1, "pct": 50.0}
    assert split["outside"] == {"attempts": 2, "answered": 2, "pct": 100.0}


def _result(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "seconds": 100,
        "valid": {"sent": 100_000, "completed": 100_000, "lost": 0},
        "slow_tcp": {"probes": [(50.0, True, 0.01)] * 10, "window": [10.0, 90.0]},
        "logs": {"tracebacks": 0, "errors_per_s": [0, 1, 2]},
        "deaths": [],
        "rss": [{"t": 10.0 * i, "processes": {"pid 1 (main)": 100.0}} for i in range(10)],
        "malformed": {
            "kinds": {"x": {"sent": 5, "replies": 5, "parsed": 5, "rejected": 0, "rcodes": {}}}
        },
        "stop": {"seconds": 0.3, "code": 0},
    }
    base.update(changes)
    return base


def test_a_clean_run_passes_every_check_and_each_defect_fails_its_own() -> None:
    bounds = report.Bounds()
    assert report.failed(report.evaluate(_result(), bounds)) == []
    cases = {
        "valid-query loss": _result(valid={"sent": 1000, "completed": 990, "lost": 10}),
        "tracebacks in the log": _result(logs={"tracebacks": 3, "errors_per_s": [3]}),
        "server deaths": _result(deaths=[{"how": "killed by SIGBUS"}]),
        "error log lines per second (peak)": _result(
            logs={"tracebacks": 0, "errors_per_s": [0, 500]}
        ),
        "RSS of every process (max)": _result(
            rss=[{"t": 0.0, "processes": {"pid 1 (main)": 900.0}}]
        ),
        "RSS levels off (growth over the second half of the stretch without reloads)": _result(
            rss=[{"t": 10.0 * i, "processes": {"pid 1 (main)": 100.0 + 10 * i}} for i in range(12)]
        ),
        "new-TCP success during slow clients": _result(
            slow_tcp={"probes": [(50.0, False, 2.0)] * 10, "window": [10.0, 90.0]}
        ),
        "SIGTERM to exit": _result(stop={"seconds": 5.0, "code": 0}),
    }
    for name, result in cases.items():
        assert [c.name for c in report.failed(report.evaluate(result, bounds))] == [name]


def test_the_table_has_a_column_per_server_and_states_each_bound() -> None:
    text = report.table({"geodns": _result(), "gdnsd": _result()}, report.Bounds(rss_bound_mb=250))
    header = text.splitlines()[0]
    assert "geodns" in header and "gdnsd" in header
    assert "<= 250 MB per process" in text
    assert "<= 0.1%" in text


def test_the_plateau_is_judged_where_nothing_reloads() -> None:
    rising_after = [
        {"t": 10.0 * i, "processes": {"pid 1 (main)": 100.0 + (0 if i < 12 else 20 * (i - 12))}}
        for i in range(18)
    ]
    bounds = report.Bounds()
    name = "RSS levels off (growth over the second half of the stretch without reloads)"
    judged = {
        c.name: c for c in report.evaluate(_result(rss=rising_after, rss_window=[30, 110]), bounds)
    }
    assert judged[name].passed is True and "t=30-110 s" in judged[name].value
    judged = {c.name: c for c in report.evaluate(_result(rss=rising_after), bounds)}
    assert judged[name].passed is False


def test_valid_loss_is_shown_per_phase() -> None:
    valid = {
        "sent": 300,
        "completed": 290,
        "lost": 10,
        "phases": {
            "a": {"sent": 100, "lost": 0},
            "b": {"sent": 100, "lost": 10},
            "c": {"sent": 100, "lost": 0},
        },
    }
    rows = report.figures(_result(valid=valid))
    assert rows["valid loss by phase: a / b / c"] == "0.000% / 10.000% / 0.000%"


def test_the_kernels_socket_counts_are_read_for_the_servers_port_only() -> None:
    from bench.procstat import parse_proc_net

    udp = "\n".join(
        [
            "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
            "timeout inode ref pointer drops",
            "  1: 0100007F:14E9 00000000:0000 07 00000000:00000300 00:00000000 00000000  0  0 "
            "11 2 0000000000000000 17",
            "  2: 0100007F:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000  0  0 "
            "12 2 0000000000000000 5",
            "  3: 0100007F:14EA 00000000:0000 07 00000000:00000000 00:00000000 00000000  0  0 "
            "13 2 0000000000000000 99",
        ]
    )
    found = parse_proc_net(udp, 5353, udp=True)
    assert (found.udp_sockets, found.udp_drops, found.udp_queued_bytes) == (2, 22, 0x300)
    tcp = "\n".join(
        [
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid",
            "   0: 0100007F:14E9 00000000:0000 0A 00000000:00000400 00:00000000 00000000  0 0 "
            "21 1 0000000000000000 100 0 0 10 0",
            "   1: 0100007F:14E9 0100007F:9C40 01 00000000:00000002 00:00000000 00000000  0 0 "
            "22 1 0000000000000000 100 0 0 10 0",
        ]
    )
    found = parse_proc_net(tcp, 5353, udp=False)
    assert (found.listeners, found.accept_queue) == (1, 1024)  # the established one is not counted


def test_kernel_drops_are_shown_as_a_share_of_the_datagrams_sent() -> None:
    result = _result(
        walk={"sent": 900_000},
        sockets={"udp_drops": 10_000, "accept_queue": [0] * 10 + [1024] * 81 + [0] * 9},
    )
    rows = report.figures(result)
    assert rows["UDP datagrams dropped by the kernel: receive buffer full"] == (
        "10,000 (1.00% of 1,000,005 sent)"
    )
    assert rows["TCP listen queue during slow clients: median / max (listeners)"] == (
        "1,024 / 1,024 (0)"
    )

"""The query log: sampling, the JSON line, stdout and rotated files, and a full queue.

Queries are real packets parsed by geodns.dns.wire; outcomes are the engine's Outcome. The writer is
the real background thread: each test closes the log (which drains it) before reading.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import dns.edns
import dns.message

from geodns.config.server import QueryLogConfig
from geodns.dns.wire import parse_query
from geodns.observe.counters import PATH_FULL
from geodns.observe.querylog import (
    PIPE_BUF,
    QueryLog,
    ecs_text,
    format_line,
    name_text,
    worker_path,
)
from geodns.serving.engine import Outcome
from geodns.serving.snapshot import Asked

FIELDS = {
    "time",
    "client",
    "ecs",
    "qname",
    "qtype",
    "rcode",
    "zone",
    "site",
    "rule",
    "scope",
    "located_by",
    "truncated",
    "transport",
}
GEO = Outcome(
    0,
    "cdn.example.com.",
    site="jakarta",
    rule="nearest",
    scope=16,
    located_by="ecs",
)


def query(name: str = "www.cdn.example.com", rdtype: str | int = "A", ecs: str | None = None):
    options = [dns.edns.ECSOption.from_text(ecs)] if ecs else None
    wire = dns.message.make_query(name, rdtype, use_edns=0, options=options).to_wire()
    parsed = parse_query(wire)
    return Asked(parsed.qname, parsed.qtype, parsed.ecs, parsed.features)


def observe(log: QueryLog, asked: Asked, outcome: Outcome, client: str, transport: str) -> None:
    log.observe(asked, outcome, client, transport, 100, PATH_FULL)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_line_fields(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    log = QueryLog(QueryLogConfig(enabled=True, path=str(path)), clock=lambda: 1714564800.25)
    observe(log, query("WWW.cdn.Example.com", ecs="36.64.0.0/24"), GEO, "198.51.100.7", "udp")
    observe(log, query("nope.cdn.example.com", 65534), Outcome(3, "cdn.example.com."), "::1", "tcp")
    log.close()
    first, second = lines(path)
    assert set(first) == FIELDS == set(second)
    assert first == {
        "time": "2024-05-01T12:00:00.250000Z",
        "client": "198.51.100.7",
        "ecs": "36.64.0.0/24",
        "qname": "WWW.cdn.Example.com.",  # as the client spelled it
        "qtype": "A",
        "rcode": "NOERROR",
        "zone": "cdn.example.com.",
        "site": "jakarta",
        "rule": "nearest",
        "scope": 16,
        "located_by": "ecs",
        "truncated": False,
        "transport": "udp",
    }
    assert second["ecs"] is None
    assert second["qtype"] == "TYPE65534"
    assert second["rcode"] == "NXDOMAIN"
    assert second["site"] is None and second["scope"] is None
    assert second["transport"] == "tcp"
    assert log.written == 2 and log.dropped == 0 and log.errors == 0


def test_ecs_and_names_are_written_unambiguously() -> None:
    assert ecs_text((1, 24, bytes([36, 64, 0]))) == "36.64.0.0/24"
    assert ecs_text((1, 0, b"")) == "0.0.0.0/0"
    assert ecs_text((2, 56, bytes.fromhex("20010db8000000"))) == "2001:db8::/56"
    assert name_text(b"\x00") == "."
    assert name_text(b"\x03a.b\x02\\x\x03\x00 \xff\x00") == "a\\.b.\\\\x.\\000\\032\\255."
    line = format_line("t", "192.0.2.1", None, b"\x02\xc3\xa9\x00", 1, GEO, "udp")
    assert line.endswith(b"\n") and line.isascii()
    assert json.loads(line)["qname"] == "\\195\\169."


def test_sample_rate_zero_logs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    log = QueryLog(QueryLogConfig(enabled=True, sample_rate=0.0, path=str(path)))
    for _ in range(1000):
        observe(log, query(), GEO, "192.0.2.1", "udp")
    log.close()
    assert not path.exists() or path.read_text() == ""
    assert log.written == 0 and log.dropped == 0


def test_sample_rate_one_logs_everything(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    log = QueryLog(QueryLogConfig(enabled=True, sample_rate=1.0, path=str(path)))
    for index in range(1000):
        observe(log, query(f"n{index}.cdn.example.com"), GEO, "192.0.2.1", "udp")
    log.close()
    written = lines(path)
    assert [entry["qname"] for entry in written] == [
        f"n{index}.cdn.example.com." for index in range(1000)
    ]
    assert log.written == 1000


def test_sample_rate_between(tmp_path: Path) -> None:
    draws = iter([0.05, 0.5, 0.09, 0.99, 0.1] * 20)  # logged when the draw is below the rate
    path = tmp_path / "queries.log"
    log = QueryLog(
        QueryLogConfig(enabled=True, sample_rate=0.1, path=str(path)), draw=lambda: next(draws)
    )
    for _ in range(100):
        observe(log, query(), GEO, "192.0.2.1", "udp")
    log.close()
    assert len(lines(path)) == 40


def test_disabled_starts_no_thread_and_opens_no_file(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    before = threading.active_count()
    log = QueryLog(QueryLogConfig(enabled=False, path=str(path)))
    assert threading.active_count() == before
    observe(log, query(), GEO, "192.0.2.1", "udp")
    log.close()
    assert not path.exists()


def test_rotation_by_size(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    config = QueryLogConfig(enabled=True, path=str(path), max_bytes=2000, backups=2)
    log = QueryLog(config)
    for index in range(100):
        observe(log, query(f"q{index:03d}.cdn.example.com"), GEO, "192.0.2.1", "udp")
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["queries.log", "queries.log.1", "queries.log.2"]
    kept = lines(tmp_path / "queries.log.2") + lines(tmp_path / "queries.log.1") + lines(path)
    for name in files:
        assert 0 < (tmp_path / name).stat().st_size <= 2000
    # the newest lines survive, in order, and nothing is duplicated
    names = [entry["qname"] for entry in kept]
    assert names == [f"q{index:03d}.cdn.example.com." for index in range(100 - len(names), 100)]
    assert log.written == 100


def test_rotation_appends_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    config = QueryLogConfig(enabled=True, path=str(path), max_bytes=10_000, backups=1)
    for run in range(2):
        log = QueryLog(config)
        observe(log, query(f"run{run}.cdn.example.com"), GEO, "192.0.2.1", "udp")
        log.close()
    assert [entry["qname"] for entry in lines(path)] == [
        "run0.cdn.example.com.",
        "run1.cdn.example.com.",
    ]


def test_rotation_without_backups_truncates(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    log = QueryLog(QueryLogConfig(enabled=True, path=str(path), max_bytes=1000, backups=0))
    for index in range(50):
        observe(log, query(f"q{index:03d}.cdn.example.com"), GEO, "192.0.2.1", "udp")
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["queries.log"]
    assert 0 < path.stat().st_size <= 1000
    assert lines(path)[-1]["qname"] == "q049.cdn.example.com."


def test_stdout_for_journald() -> None:
    stream = io.StringIO()
    log = QueryLog(QueryLogConfig(enabled=True, path="-"), stream=stream)
    observe(log, query(), GEO, "192.0.2.1", "udp")
    log.close()
    assert json.loads(stream.getvalue())["site"] == "jakarta"


def test_default_stream_is_stdout(capsys) -> None:
    log = QueryLog(QueryLogConfig(enabled=True, path="-"))
    observe(log, query(), GEO, "192.0.2.1", "udp")
    log.close()
    assert json.loads(capsys.readouterr().out)["qname"] == "www.cdn.example.com."


class BlockingStream(io.StringIO):
    """A stream whose writes wait until released: a disk that has stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.release.wait(10)
        return super().write(text)


def test_full_queue_drops_and_counts_never_blocks() -> None:
    stream = BlockingStream()
    log = QueryLog(QueryLogConfig(enabled=True, path="-"), stream=stream, queue_bytes=2500)
    observe(log, query("first.cdn.example.com"), GEO, "192.0.2.1", "udp")
    assert stream.entered.wait(5)  # the writer is now stuck inside write()
    for index in range(25):  # returns at once although nothing is being written
        observe(log, query(f"q{index:02d}.cdn.example.com"), GEO, "192.0.2.1", "udp")
    kept = 2500 // len(
        format_line(
            "2024-05-01T12:00:00.000000Z",
            "192.0.2.1",
            None,
            query("q00.cdn.example.com").qname,
            1,
            GEO,
            "udp",
        )
    )
    assert 5 <= kept < 25 and log.dropped == 25 - kept  # what fits 2,500 bytes waits
    stream.release.set()
    log.close()
    names = [json.loads(line)["qname"] for line in stream.getvalue().splitlines()]
    assert names == ["first.cdn.example.com."] + [f"q{i:02d}.cdn.example.com." for i in range(kept)]
    assert log.written == 1 + kept


class FailingStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


def test_write_errors_are_counted_not_raised() -> None:
    log = QueryLog(QueryLogConfig(enabled=True, path="-"), stream=FailingStream())
    for _ in range(3):
        observe(log, query(), GEO, "192.0.2.1", "udp")
    log.close()
    assert log.errors == 3 and log.written == 0


def test_close_is_idempotent(tmp_path: Path) -> None:
    log = QueryLog(QueryLogConfig(enabled=True, path=str(tmp_path / "q.log")))
    log.close()
    log.close()
    observe(log, query(), GEO, "192.0.2.1", "udp")  # after close: ignored, not raised
    assert log.written == 0


def test_each_worker_writes_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    config = QueryLogConfig(enabled=True, path=str(path))
    logs = [QueryLog(config, worker=index) for index in range(3)]
    for index, log in enumerate(logs):
        observe(log, query(f"w{index}.cdn.example.com"), GEO, "192.0.2.1", "udp")
        log.close()
    assert worker_path(path, 0) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "queries.log",
        "queries.worker1.log",
        "queries.worker2.log",
    ]
    assert lines(tmp_path / "queries.worker2.log")[0]["qname"] == "w2.cdn.example.com."


class RecordingStream(io.StringIO):
    """Records what reaches the OS: the text written between two flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = ""
        self.flushed: list[str] = []

    def write(self, text: str) -> int:
        self.pending += text
        return super().write(text)

    def flush(self) -> None:
        if self.pending:
            self.flushed.append(self.pending)
        self.pending = ""


def test_stdout_writes_whole_lines_within_pipe_buf() -> None:
    """Workers share stdout: each write is whole lines and at most PIPE_BUF bytes."""
    stream = RecordingStream()
    log = QueryLog(QueryLogConfig(enabled=True, path="-"), stream=stream)
    for index in range(200):
        observe(log, query(f"n{index}.cdn.example.com"), GEO, "192.0.2.1", "udp")
    log.close()
    assert len(stream.flushed) > 1
    for chunk in stream.flushed:
        assert len(chunk.encode()) <= PIPE_BUF
        assert chunk.endswith("\n")
        assert all(json.loads(line) for line in chunk.splitlines())
    assert sum(chunk.count("\n") for chunk in stream.flushed) == 200


def test_writing_the_log_never_holds_the_event_loop_up(tmp_path: Path) -> None:
    """Issue 12, item 7: with the log on, answers were delayed by tens of milliseconds under
    load. The writer thread formatted lines while holding the interpreter lock, so every system
    call of the event loop (each releases the lock) waited for the lock's switch interval. Here
    the switch interval is made 100 ms, 20,000 queries are logged, and the main thread makes
    GIL-releasing calls (as the event loop's recvmmsg/sendmmsg do) while the writer works: no
    call may wait 50 ms. The old writer made such calls wait the whole interval (114 ms)."""
    path = tmp_path / "queries.log"
    asked = query("www.cdn.example.com", ecs="36.64.0.0/24")
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.1)
    try:
        log = QueryLog(QueryLogConfig(enabled=True, path=str(path)), interval=0.01)
        for _ in range(20_000):
            observe(log, asked, GEO, "192.0.2.1", "udp")
        worst = 0.0
        deadline = time.monotonic() + 5
        while log.written < 20_000 and time.monotonic() < deadline:
            started = time.perf_counter()
            os.stat(path)  # a system call: releases the lock, and must get it back at once
            worst = max(worst, time.perf_counter() - started)
        log.close()
    finally:
        sys.setswitchinterval(previous)
    assert log.written == 20_000
    assert worst < 0.05, f"a system call of the query path waited {worst * 1000:.0f} ms"


def test_a_static_answer_to_an_ecs_query_has_scope_0(tmp_path: Path) -> None:
    """The reply echoes ECS with scope /0 for static and negative answers; so does the log."""
    path = tmp_path / "queries.log"
    log = QueryLog(QueryLogConfig(enabled=True, path=str(path)))
    static = Outcome(0, "cdn.example.com.")
    observe(log, query("mx1.cdn.example.com", ecs="36.64.0.0/24"), static, "192.0.2.1", "udp")
    observe(log, query("nope.cdn.example.com", ecs="36.64.0.0/24"), Outcome(3, None), "::1", "udp")
    observe(log, query("mx1.cdn.example.com"), static, "192.0.2.1", "udp")
    log.close()
    assert [entry["scope"] for entry in lines(path)] == [0, 0, None]


def test_paths_are_relative_to_the_config_file(tmp_path: Path, monkeypatch) -> None:
    """docs/config.md: relative paths are the config file's folder's, not the working dir's."""
    from geodns.config.server import load_config

    folder = tmp_path / "etc"
    folder.mkdir()
    config_file = folder / "geodns.yaml"
    config_file.write_text(
        "query_log: {enabled: true, path: logs/q.log}\n"
        "admin: {socket: run/admin.sock}\n"
        "dnstap: {file: tap.fstrm}\n"
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/geodns.yaml"))
    assert config.query_log.path == str(folder.resolve() / "logs" / "q.log")
    assert config.admin.socket == str(folder.resolve() / "run" / "admin.sock")
    assert config.dnstap.file == str(folder.resolve() / "tap.fstrm")
    stdout = folder / "stdout.yaml"
    stdout.write_text("query_log: {enabled: true, path: '-'}\n")
    assert load_config(stdout).query_log.path == "-"

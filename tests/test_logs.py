"""Server logs: a logger name on every event, and syslog priorities when systemd's journal is
stderr (it says so in $JOURNAL_STREAM), so `journalctl -p warning` filters them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from conftest import BASE_ZONES, base_config
from server_process import REPO_ROOT, GeodnsServer


def _events(text: str) -> list[tuple[str | None, dict]]:
    found = []
    for line in text.splitlines():
        priority = None
        if line.startswith("<") and ">" in line[:4]:
            priority, line = line[1 : line.index(">")], line[line.index(">") + 1 :]
        if line.startswith("{"):
            found.append((priority, json.loads(line)))
    return found


def closed_port() -> int:
    """A loopback TCP port nobody listens on (bound and closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_journal_priorities_and_logger_names(tmp_path) -> None:
    check = {
        "type": "tcp",
        "address": "127.0.0.1",
        "port": closed_port(),
        "interval": 1,
        "timeout": 0.5,
    }
    site = {"location": {"lat": 50.1, "lon": 8.7}, "addresses": ["192.0.2.1"], "checks": [check]}
    config = base_config(dnstap={"socket": "nobody-listens.sock"}, sites={"fra": site})
    server = GeodnsServer(config, BASE_ZONES)
    server.stderr_path.touch()
    status = os.stat(server.stderr_path)  # systemd names the stream by device and inode
    server.extra_env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
    with server:
        server.query("www.example.test")
        deadline = time.monotonic() + 30  # the check fails within seconds: a generous bound
        while '"site_state"' not in server.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        server.stop()
        events = _events(server.stderr_text())
    assert events and all(priority is not None for priority, _ in events)
    by_event = {event["event"]: (priority, event) for priority, event in events}
    assert by_event["started"][0] == "6"
    assert by_event["dnstap_reader_unreachable"][0] == "4"  # a warning
    assert all(event.get("logger", "").startswith(("geodns", "aiohttp")) for _, event in events)
    assert by_event["dnstap_reader_unreachable"][1]["logger"] == "geodns.observe.framestream"
    # a site going down: a warning, under the name docs/operations.md filters health events by
    assert by_event["site_state"][0] == "4"
    assert by_event["site_state"][1]["logger"] == "geodns.health"


def test_config_problems_carry_priorities_in_the_journal(tmp_path) -> None:
    """`geodns serve` refusing to start (and `geodns check` run by ExecReload) prints its
    problems before logging is set up: in the journal they carry `<3>`/`<4>` too."""
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "t.test.yaml").write_text(
        "? ''\n: type: NS\n  value: ns1.example.net.\nw:\n  tll: 5\n"
    )
    config = tmp_path / "geodns.yaml"
    config.write_text("zones_dir: zones\nport: 0\n")  # (5353 may be a running geodns)
    stderr = tmp_path / "stderr"
    environ = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    for command in ("serve", "check"):
        with stderr.open("w") as stream:
            status = os.fstat(stream.fileno())
            environ["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
            subprocess.run(
                [sys.executable, "-m", "geodns", command, "--config", str(config)],
                stderr=stream,
                stdout=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                env=environ,
                timeout=60,
                check=False,
            )
        lines = stderr.read_text().splitlines()
        assert any(line.startswith("<3>") and ": error: " in line for line in lines), lines
        assert any(line.startswith("<4>") and "single nameserver" in line for line in lines)
        assert lines[-1].startswith("<3>") and lines[-1].endswith(" error(s), 1 warning(s)")


def test_no_priority_prefix_outside_the_journal(tmp_path, monkeypatch) -> None:
    """$JOURNAL_STREAM names another stream (a parent's journal, inherited): no prefix."""
    from geodns.common.logs import to_journal

    stream = (tmp_path / "stderr").open("w")
    status = os.stat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
    assert to_journal(stream)
    monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino + 1}")
    assert not to_journal(stream)
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not to_journal(stream)
    stream.close()


def test_a_workers_lines_say_which_worker(tmp_path) -> None:
    """With `workers: 2` both processes write to one stream: the worker's lines carry its
    index, the main process's none (each opens its own dnstap connection, and says so)."""
    config = base_config(dnstap={"socket": "nobody-listens.sock"}, workers=2)
    with GeodnsServer(config, BASE_ZONES) as server:
        deadline = time.monotonic() + 60  # both processes started: a generous bound
        while server.stderr_text().count("dnstap_reader_unreachable") < 2:
            assert time.monotonic() < deadline, server.stderr_text()[-2000:]
            time.sleep(0.1)
        events = [e for _, e in _events(server.stderr_text())]
    unreachable = [e for e in events if e["event"] == "dnstap_reader_unreachable"]
    assert {str(e.get("worker")) for e in unreachable} == {"1", "None"}  # (retries say it again)
    assert all("worker" not in e for e in events if e["event"] == "started")

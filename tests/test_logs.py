"""Server logs: a logger name on every event, and syslog priorities when systemd's journal is
stderr (it says so in $JOURNAL_STREAM), so `journalctl -p warning` filters them."""

from __future__ import annotations

import json
import os

from conftest import BASE_ZONES, base_config
from server_process import GeodnsServer


def _events(text: str) -> list[tuple[str | None, dict]]:
    found = []
    for line in text.splitlines():
        priority = None
        if line.startswith("<") and ">" in line[:4]:
            priority, line = line[1 : line.index(">")], line[line.index(">") + 1 :]
        if line.startswith("{"):
            found.append((priority, json.loads(line)))
    return found


def test_journal_priorities_and_logger_names(tmp_path) -> None:
    server = GeodnsServer(base_config(dnstap={"socket": "nobody-listens.sock"}), BASE_ZONES)
    server.stderr_path.touch()
    status = os.stat(server.stderr_path)  # systemd names the stream by device and inode
    server.extra_env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
    with server:
        server.query("www.example.test")
        server.stop()
        events = _events(server.stderr_text())
    assert events and all(priority is not None for priority, _ in events)
    by_event = {event["event"]: (priority, event) for priority, event in events}
    assert by_event["started"][0] == "6"
    assert by_event["dnstap_reader_unreachable"][0] == "4"  # a warning
    assert all(event.get("logger", "").startswith(("geodns", "aiohttp")) for _, event in events)
    assert by_event["dnstap_reader_unreachable"][1]["logger"] == "geodns.observe.framestream"


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

"""The place index built in the background by a real server (`geoip.index: background`, what
a database over 16 MB gets by default): the server answers from the database directly at once,
the build runs in a child process (`python -m geodns.geo.index`), the server switches to the
index (log event geo_index_ready) with the same answers and scopes, and the builder is gone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mmdb_factory import city_record, write_city_db
from server_process import GeodnsServer

ZONE = "idx.test"
SITES = {
    "jkt": {"kind": "pop", "location": {"lat": -6.2, "lon": 106.8}, "addresses": ["192.0.2.1"]},
    "fra": {"kind": "pop", "location": {"lat": 50.1, "lon": 8.7}, "addresses": ["192.0.2.4"]},
}
NETWORKS = [
    ("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta")),
    ("85.0.0.0/16", city_record("DE", "EU", 50.1, 8.7, "Frankfurt")),
]
ZONE_DATA = {
    "": {"type": "NS", "value": "ns1.idx.test."},
    "ns1": {"type": "A", "value": "192.0.2.53"},
    "www": {
        "type": "A",
        "ttl": 30,
        "values": ["192.0.2.1", "192.0.2.4"],
        "octodns": {"geodns": {"nearest": True}},
    },
}
SUBNETS = {"36.64.7.0/24": "192.0.2.1", "85.0.9.0/24": "192.0.2.4"}


def answers(server: GeodnsServer) -> dict[str, tuple[str, int]]:
    found = {}
    for subnet in SUBNETS:
        reply = server.query(f"www.{ZONE}", ecs=subnet)
        scope = next(o.scopelen for o in reply.options if hasattr(o, "scopelen"))
        found[subnet] = (reply.answer[0][0].address, scope)
    return found


def children(pid: int) -> list[str]:
    """The command lines of a process's children."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            if f"\nPPid:\t{pid}\n" in status:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def test_the_index_is_built_in_the_background_and_answers_the_same(tmp_path: Path) -> None:
    db = write_city_db(tmp_path / "city.mmdb", NETWORKS)
    config = {
        "sites": SITES,
        "geoip": {"database": str(db), "index": "background"},
        "cache_dir": str(tmp_path / "cache"),  # empty: the server must build the index
        "logging": {"format": "json"},
        "rrl": {"enabled": False},
    }
    with GeodnsServer(config, {ZONE: ZONE_DATA}, workdir=tmp_path / "server") as server:
        before = answers(server)  # maybe from the database directly, maybe already the index
        assert {s: a for s, (a, _) in before.items()} == SUBNETS
        deadline = time.monotonic() + 60
        ready: list[dict] = []
        while not ready and time.monotonic() < deadline:
            events = [json.loads(line) for line in server.stderr_text().splitlines() if "{" in line]
            ready = [e for e in events if e.get("event") == "geo_index_ready"]
            failed = [e for e in events if e.get("event") == "geo_index_failed"]
            assert not failed, failed
            time.sleep(0.1)
        assert ready, server.stderr_text()[-2000:]
        assert answers(server) == before  # the index gives the same answers and scopes
        assert any((tmp_path / "cache").glob("geo-index-*")), "the index is in the cache"
        assert server.proc is not None
        assert not [c for c in children(server.proc.pid) if "geodns.geo.index" in c]
        assert not [c for c in children(server.proc.pid) if "resource_tracker" in c]
    assert os.path.isdir(tmp_path / "cache")


def started_event(server: GeodnsServer) -> dict:
    lines = server.stderr_text().splitlines()
    return next(json.loads(line) for line in lines if '"event": "started"' in line)


def test_an_index_of_the_cache_is_used_at_the_next_start(tmp_path: Path) -> None:
    db = write_city_db(tmp_path / "city.mmdb", NETWORKS)
    config = {
        "sites": SITES,
        "geoip": {"database": str(db), "index": "start"},  # built before the first answer
        "cache_dir": str(tmp_path / "cache"),
        "logging": {"format": "json"},
    }
    with GeodnsServer(config, {ZONE: ZONE_DATA}, workdir=tmp_path / "first") as server:
        first = answers(server)
        assert started_event(server)["geo_index"] is True
    config["geoip"] = {"database": str(db), "index": "background"}
    with GeodnsServer(config, {ZONE: ZONE_DATA}, workdir=tmp_path / "second") as server:
        assert started_event(server)["geo_index"] is True  # from the cache, nothing to build
        assert "geo_index_ready" not in server.stderr_text()
        assert answers(server) == first

"""A drain takes effect from the next query even while the server is busy rebuilding.

Health changes and reloads rebuild answer maps off the event loop under one lock. A drain that
waited for that lock was acknowledged (200, or committed in etcd for a fleet) and then still
answered the old way for as long as the rebuild took; on a loaded machine a fleet member was
seen answering the drained site right after its own 200. The view is now swapped in at once,
and only the maps it invalidates wait for the lock.

The real App on loopback, the bundled example's sites and zone, queried with dnspython from a
thread while the test holds the lock as a rebuild or a reload would. One process (`workers:
1`): with the default of one per core, a query could reach a worker before the main process's
message with the new view does, which is another path (the workers' tests) and made this test
fail now and then on a loaded machine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import yaml
from server_process import LOOPBACK_V4, free_port

from geodns.config.server import BUNDLED_ZONES, load_config
from geodns.daemon.app import App

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "geodns" / "data" / "example-config.yaml"
GERMANY = "217.0.0.0/24"  # Frankfurt's users in the bundled database
FRANKFURT = "198.51.100.21"


def ask(port: int) -> set[str]:
    query = dns.message.make_query(
        "www.cdn.example.com", "A", use_edns=0, options=[dns.edns.ECSOption.from_text(GERMANY)]
    )
    reply = dns.query.udp(query, LOOPBACK_V4, port=port, timeout=2.0)
    return {rr.address for rrset in reply.answer for rr in rrset}


def test_a_drain_is_answered_by_the_next_query_while_a_rebuild_holds_the_lock(
    tmp_path: Path,
) -> None:
    settings = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    port = free_port()
    settings.update(
        listen=[LOOPBACK_V4],
        port=port,
        zones_dir=str(BUNDLED_ZONES),
        admin={"listen": None, "socket": False},
        state_file=str(tmp_path / "state.json"),
        cache_dir=str(tmp_path / "cache"),
        watch_zones=False,
        workers=1,
    )
    path = tmp_path / "geodns.yaml"
    path.write_text(yaml.safe_dump(settings))
    asyncio.run(_scenario(path, port))


async def _scenario(path: Path, port: int) -> None:
    app = App(load_config(path), path)
    await app.start()
    try:
        assert await asyncio.to_thread(ask, port) == {FRANKFURT}
        assert app.monitor is not None and app.state is not None
        async with app.reload_lock:  # a map rebuild or a reload in progress
            app.monitor.drain("frankfurt", "drill", "test", None)
            assert "frankfurt" in app.state.snapshot.down
            moved = await asyncio.to_thread(ask, port)
            assert moved and FRANKFURT not in moved
            app.monitor.undrain("frankfurt")
            assert await asyncio.to_thread(ask, port) == {FRANKFURT}
    finally:
        await app.stop()

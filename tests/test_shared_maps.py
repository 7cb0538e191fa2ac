"""Answer maps the main process shares with its workers (geodns.geo.sharedmaps), and the
pipe they cross.

In one process: a map handed over through a sealed memory file answers exactly what the map
built in the process answers, for addresses all over both spaces and under every health view
of tests/test_answer_maps.py; its file cannot be changed; a set handed over again keeps the
files of the maps it keeps and closes the others; the files cross a real socket pair in a
worker's order, also when the pipe is non-blocking (as the event loop leaves it) and the files
arrive after the order.

End to end: a server with `workers: 2` on the bundled example. Its worker maps the main
process's files and never imports numpy (so it built no map), and every answer, from both
processes (fresh sockets: the kernel spreads them), carries the map's scope, which for the
subnets asked is wider than the database network's (what a record decided per place answers),
before and after a drain.
"""

from __future__ import annotations

import contextlib
import ipaddress
import mmap
import os
import random
import socket
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import dns.edns
import pytest
import yaml

from geodns.config.loader import load_geo
from geodns.config.server import load_config
from geodns.daemon.app import App
from geodns.daemon.workers import bound_pipe, receive_message, send_message
from geodns.geo.answers import AnswerMap
from geodns.geo.locator import Geo
from geodns.geo.sharedmaps import SharedMapsIn, SharedMapsOut, adopt, publish
from geodns.serving.snapshot import Snapshot, answer_maps, build_snapshot, still_valid_maps
from tests.server_process import GeodnsServer
from tests.test_answer_maps import EXAMPLE, VIEWS, _addresses

ROOT = Path(__file__).resolve().parents[1]
ZONE = "cdn.example.com"
STARTED_WITHIN = 60.0  # seconds for the server and its worker to start and share maps


@pytest.fixture(scope="module")
def world() -> tuple[Geo, Snapshot]:
    config = load_config(EXAMPLE)
    geo = load_geo(config, build=True)
    return geo, build_snapshot(config, geo)


def _same_map(built: AnswerMap, shared: AnswerMap) -> None:
    assert shared.unlocated == built.unlocated
    assert [(d.values, d.site, d.servfail, p) for d, p in shared.answers] == [
        (d.values, d.site, d.servfail, p) for d, p in built.answers
    ]
    for family, value in _addresses(7, 3_000):
        assert shared.lookup(family, value) == built.lookup(family, value), (family, hex(value))


@pytest.mark.parametrize("down", VIEWS, ids=["all-up", "frankfurt", "asia", "all-down"])
def test_a_shared_map_answers_what_the_built_one_does(
    world: tuple[Geo, Snapshot], down: frozenset[str]
) -> None:
    geo, snapshot = world
    assert geo.index is not None
    maps = answer_maps(geo, set(snapshot.shapes.values()), down)
    assert maps
    for token, built in enumerate(maps.values(), 1):
        notice, descriptor = publish(built, token)
        try:
            memory = mmap.mmap(descriptor, notice.size, prot=mmap.PROT_READ)
            # sealed: neither written nor resized by anyone, the main process included
            with pytest.raises(PermissionError):
                os.pwrite(descriptor, b"x", 0)
            with pytest.raises(PermissionError):
                os.ftruncate(descriptor, 0)
        finally:
            os.close(descriptor)
        _same_map(built, adopt(notice, memory, geo.index))


def test_a_set_handed_over_again_keeps_its_files_and_drops_the_rest(
    world: tuple[Geo, Snapshot],
) -> None:
    geo, snapshot = world
    shapes = set(snapshot.shapes.values())
    maps = answer_maps(geo, shapes, frozenset())
    outgoing, incoming = SharedMapsOut(), SharedMapsIn()
    try:
        files = outgoing.update(maps.values())
        assert len(files) == 1 + len(maps)  # the listing, then one per map
        incoming.receive([os.dup(f) for f in files])  # (a worker's own copies, as SCM_RIGHTS)
        shared = incoming.for_index(geo.index)
        assert {s.key for s in shared} == {s.key for s in maps}
        by_key = {s.key: m for s, m in maps.items()}
        for shape, shared_map in shared.items():
            _same_map(by_key[shape.key], shared_map)
        # a worker's maps: the shared ones taken for every shape, none built
        taken = answer_maps(geo, shapes, frozenset(), shared, build=False)
        assert {id(m.runs4) for m in taken.values()} == {id(m.runs4) for m in shared.values()}
        assert answer_maps(geo, shapes, frozenset(), None, build=False) == {}
        # another index (the worker's, before it switched): nothing of this one's applies
        assert incoming.for_index(None) == {}

        # the same maps again: the same files; one map fewer: its file is closed
        assert outgoing.update(maps.values())[1:] == files[1:]
        kept = list(maps.values())[1:]
        dropped, dropped_file = files[1], os.fstat(files[1]).st_ino
        again = outgoing.update(kept)
        assert again[1:] == files[2:]
        with contextlib.suppress(OSError):  # closed (its number may be the new listing's)
            assert os.fstat(dropped).st_ino != dropped_file
        incoming.receive([os.dup(f) for f in again])
        assert len(incoming.for_index(geo.index)) == len(kept)
    finally:
        outgoing.close()


def test_a_set_that_cannot_be_mapped_leaves_no_file_open(world: tuple[Geo, Snapshot]) -> None:
    geo, snapshot = world
    maps = answer_maps(geo, set(snapshot.shapes.values()), frozenset())
    outgoing, incoming = SharedMapsOut(), SharedMapsIn()
    try:
        files = [os.dup(f) for f in outgoing.update(maps.values())]
        pipe_read, pipe_write = os.pipe()
        os.close(pipe_write)
        files[-1] = os.dup(pipe_read)  # not a file mmap takes
        os.close(pipe_read)
        with pytest.raises(OSError):
            incoming.receive(files)
        for descriptor in files:
            with pytest.raises(OSError):
                os.fstat(descriptor)
    finally:
        outgoing.close()


def test_without_memfd_nothing_is_shared_and_the_error_says_so(
    world: tuple[Geo, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the system has no sealed memory files, the main process's update fails with an
    OSError (it then tells the workers to build their own maps)."""
    geo, snapshot = world
    maps = answer_maps(geo, set(snapshot.shapes.values()), frozenset())
    monkeypatch.delattr(os, "memfd_create")
    outgoing = SharedMapsOut()
    with pytest.raises(OSError, match="memfd"):
        outgoing.update(maps.values())
    assert outgoing.files == {} and outgoing.listing is None


def test_a_worker_keeps_the_maps_it_serves_when_the_same_set_comes_again(
    world: tuple[Geo, Snapshot],
) -> None:
    """The same maps handed over again (a replay, a share that changed nothing) give the
    worker the very maps it serves, so it swaps nothing (a swap empties its caches)."""
    geo, snapshot = world
    shapes = list(snapshot.shapes.values())
    maps = answer_maps(geo, set(shapes), frozenset())
    main_end, worker_end = socket.socketpair()
    worker = App(load_config(EXAMPLE), None, 1, Connection(worker_end.detach()))
    outgoing = SharedMapsOut()
    try:
        assert worker.maps_in is not None
        worker.maps_in.receive([os.dup(f) for f in outgoing.update(maps.values())])
        served = worker._maps(geo, shapes, frozenset(), None)
        assert len(served) == len(set(shapes))
        worker.maps_in.receive([os.dup(f) for f in outgoing.update(maps.values())])
        again = worker._maps(geo, shapes, frozenset(), served)
        assert again == served  # the same objects
    finally:
        outgoing.close()
        main_end.close()


def test_the_first_candidate_that_holds_is_taken(world: tuple[Geo, Snapshot]) -> None:
    """A worker offers still_valid_maps its maps in service, then the shared ones, for the
    same shapes: the first that holds under the view is taken, wherever it stands."""
    geo, snapshot = world
    shapes = set(snapshot.shapes.values())
    up = answer_maps(geo, shapes, frozenset())
    drained = answer_maps(geo, shapes, frozenset({"frankfurt"}))
    frankfurt = frozenset({"frankfurt"})
    moved = {
        s
        for s in shapes
        if any(t.up(frozenset()) != t.up(frankfurt) for t in s.canonical.targets())
    }
    assert moved and moved != shapes, "shapes with and without frankfurt"
    offered = {(0, i): m for i, m in enumerate(drained.values())}
    offered |= {(1, i): m for i, m in enumerate(up.values())}
    for view, first, second in (
        (frozenset(), drained, up),
        (frozenset({"frankfurt"}), drained, up),
    ):
        kept, stale = still_valid_maps(geo, shapes, view, offered)  # type: ignore[arg-type]
        assert not stale
        for shape in moved:  # only one of the two holds: that one, first or second
            want = first[shape] if view else second[shape]
            assert kept[shape].runs4 is want.runs4
        for shape in shapes - moved:  # both hold: the first
            assert kept[shape].runs4 is first[shape].runs4


def test_the_files_follow_the_order_over_a_non_blocking_pipe(
    world: tuple[Geo, Snapshot],
) -> None:
    geo, snapshot = world
    maps = answer_maps(geo, set(snapshot.shapes.values()), frozenset())
    outgoing, incoming = SharedMapsOut(), SharedMapsIn()
    main_end, worker_end = socket.socketpair()
    bound_pipe(main_end)  # (as the pool's pairs: a blocking call gives up after PIPE_TIMEOUT)
    bound_pipe(worker_end)
    to_worker, from_main = Connection(main_end.detach()), Connection(worker_end.detach())
    try:
        files = outgoing.update(maps.values())
        os.set_blocking(from_main.fileno(), False)  # as the worker's event loop leaves it
        to_worker.send(("maps", len(files)))

        def files_later() -> None:  # the files, a moment after the order
            time.sleep(0.2)
            with socket.socket(fileno=os.dup(to_worker.fileno())) as stream:
                socket.send_fds(stream, [b"F"], files)

        sender = threading.Thread(target=files_later)
        sender.start()
        kind, descriptors = receive_message(from_main)
        sender.join(timeout=10)
        assert kind == "maps" and len(descriptors) == len(files)
        assert not os.get_blocking(from_main.fileno())  # the pipe's mode is put back
        incoming.receive(descriptors)
        assert len(incoming.for_index(geo.index)) == len(maps)
        # and as the pool sends them: the order, then the files at once
        send_message(to_worker, "maps", len(files), files)
        kind, descriptors = receive_message(from_main)
        incoming.receive(descriptors)
        assert len(incoming.for_index(geo.index)) == len(maps)
        send_message(to_worker, "health", ["frankfurt"])
        assert receive_message(from_main) == ("health", ["frankfurt"])
    finally:
        outgoing.close()
        to_worker.close()
        from_main.close()


def test_a_message_bigger_than_the_pipe_crosses_it_whole_both_ways() -> None:
    """Both ends non-blocking, as event loops leave them: a report of a few MB (a worker's,
    with the networks it sampled) is written and read whole, not cut at the pipe's buffer
    (the main process took a worker whose report came in pieces for dead)."""
    first, second = socket.socketpair()
    bound_pipe(first)
    bound_pipe(second)
    sender, receiver = Connection(first.detach()), Connection(second.detach())
    try:
        os.set_blocking(sender.fileno(), False)
        os.set_blocking(receiver.fileno(), False)
        report = {"sample": [(("1", 24, bytes(4)), b"www", 1, float(i)) for i in range(60_000)]}
        writer = threading.Thread(target=send_message, args=(sender, "stats", report))
        writer.start()
        assert receiver.poll(10)
        assert receive_message(receiver) == ("stats", report)
        writer.join(timeout=10)
        assert not writer.is_alive()
        assert not os.get_blocking(sender.fileno()) and not os.get_blocking(receiver.fileno())
    finally:
        sender.close()
        receiver.close()


def _worker_pid(server: GeodnsServer) -> int | None:
    assert server.proc is not None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid"))
        if int(parent) == server.proc.pid and b"geodns.daemon.workers" in command:
            return int(entry.name)
    return None


def _scopes(server: GeodnsServer, subnet: str, count: int = 40) -> set[tuple[str, int]]:
    """(address, scope) of `count` queries, each from a fresh socket."""
    seen = set()
    for _ in range(count):
        reply = server.query(f"www.{ZONE}", "A", ecs=subnet)
        ecs = next(o for o in reply.options if isinstance(o, dns.edns.ECSOption))
        seen.add((reply.answer[0][0].to_text(), ecs.scopelen))
    return seen


def test_workers_answer_from_the_main_process_maps() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    config = {"sites": example["sites"], "workers": 2, "watch_zones": False}
    zones = {ZONE: (ROOT / "zones" / f"{ZONE}.yaml").read_text()}
    with GeodnsServer(config, zones) as server:
        # what the maps say, and what a record decided per place would say, for IPv4 /24s
        # whose map block is wider than their database network
        loaded = load_config(server.config_path)
        geo = load_geo(loaded, build=True)
        snapshot = build_snapshot(loaded, geo)
        assert geo.index is not None
        record = next(r for r in snapshot.shapes if r.owner == f"www.{ZONE}." and r.family == 4)
        views: tuple[frozenset[str], ...] = (frozenset(), frozenset({"frankfurt"}))
        built = {down: answer_maps(geo, set(snapshot.shapes.values()), down) for down in views}
        shape = snapshot.shapes[record]
        expected: dict[str, dict[frozenset[str], int]] = {}
        rng = random.Random(5)
        for value in (rng.getrandbits(24) << 8 for _ in range(5_000)):
            scopes = {down: built[down][shape].lookup(4, value)[1] for down in views}
            if 0 < max(scopes.values()) < geo.index.runs4.lookup(value)[1]:
                expected[f"{ipaddress.IPv4Address(value)}/24"] = scopes
            if len(expected) == 4:
                break
        assert expected, "no subnet whose map block is wider than its network"

        deadline = time.monotonic() + STARTED_WITHIN
        worker, worker_maps = None, ""
        while time.monotonic() < deadline and "geodns-answer-map" not in worker_maps:
            worker = worker or _worker_pid(server)
            if worker is not None:
                worker_maps = Path(f"/proc/{worker}/maps").read_text()
            time.sleep(0.1)
        assert worker is not None and "geodns-answer-map" in worker_maps
        assert "_multiarray_umath" not in worker_maps  # no numpy: it built no map itself
        assert server.proc is not None
        assert "_multiarray_umath" in Path(f"/proc/{server.proc.pid}/maps").read_text()

        for down in (frozenset(), frozenset({"frankfurt"})):
            if down:
                assert server.cli("drain", "frankfurt").returncode == 0
            for subnet, scopes in expected.items():
                want = scopes[down]
                seen = _scopes(server, subnet)
                while {s for _, s in seen} != {want} and time.monotonic() < deadline:
                    time.sleep(0.1)  # a drain's maps: rebuilt, then handed over
                    seen = _scopes(server, subnet)
                assert {s for _, s in seen} == {want}, (subnet, sorted(down), seen)
                assert len({a for a, _ in seen}) == 1, (subnet, seen)
        assert "geodns-answer-map" in Path(f"/proc/{worker}/maps").read_text()
        assert "_multiarray_umath" not in Path(f"/proc/{worker}/maps").read_text()

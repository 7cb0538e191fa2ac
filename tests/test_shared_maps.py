"""Answer maps built by a child process and shared by every serving process
(geodns.daemon.mapbuilder, geodns.geo.sharedmaps), and the pipe they cross.

In one process: a map handed over through a sealed memory file answers exactly what the map
built in the process answers, for addresses all over both spaces and under every health view
of tests/test_answer_maps.py; its file cannot be changed; the builder child (a real
`python -m geodns.daemon.mapbuilder`) gives, from a cached index, the maps built in the
process, and the main process keeps their files while they serve and closes them after; a set
handed over again keeps the files of the maps it keeps and closes the others; the files cross
a real socket pair in a worker's order, also when the pipe is non-blocking (as the event loop
leaves it) and the files arrive after the order.

End to end: a server with `workers: 2` on the bundled example, started the first time. Neither
process imports numpy (the maps and the index were built by children), both map the files, and every answer, from both processes
(fresh sockets: the kernel spreads them), carries the map's scope, which for the subnets asked
is wider than the database network's (what a record decided per place answers), before and
after a drain. With its cached index removed under it, a one-process server builds a drain's
maps itself, says so, and answers with the maps' scopes all the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import mmap
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import dns.edns
import pytest
import yaml

from geodns.common.errors import MapBuildError
from geodns.common.pipes import bound_pipe, child_command, receive_message, send_message
from geodns.config.loader import load_geo
from geodns.config.server import load_config
from geodns.daemon.app import App
from geodns.daemon.mapbuilder import MapBuilder
from geodns.geo.answers import AnswerMap
from geodns.geo.index import PlaceIndex, cache_key, load_index, save_index
from geodns.geo.locator import Geo
from geodns.geo.sharedmaps import (
    SharedMapsIn,
    SharedMapsOut,
    adopt,
    publish,
    publish_set,
    read_listing,
    sealed_file,
    write_listing,
)
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


def test_the_builder_child_gives_the_maps_built_here_and_they_are_kept_while_they_serve(
    world: tuple[Geo, Snapshot], tmp_path: Path
) -> None:
    geo, snapshot = world
    assert geo.index is not None
    save_index(geo.index, tmp_path)
    cached = load_index(tmp_path, geo.index.digest)
    assert cached is not None and cached.directory == tmp_path
    shapes = list(set(snapshot.shapes.values()))
    outgoing = SharedMapsOut()
    try:
        for down in VIEWS:
            built = answer_maps(geo, shapes, down)
            received = outgoing.receive_built(MapBuilder().build(cached, shapes, down), cached)
            assert {s.key for s in received} == {s.key for s in built}
            by_key = {s.key: m for s, m in built.items()}
            for shape, answer_map in received.items():
                assert answer_map.down == down and answer_map.index is cached
                _same_map(by_key[shape.key], answer_map)
        assert len(outgoing.files) == len(shapes) * len(VIEWS)  # all kept until an update
        # the last view's maps in service: only their files stay open, and nothing is shared
        # without workers
        in_service = list(received.values())
        before = set(outgoing.files)
        assert outgoing.update(in_service, share=False) == []
        assert set(outgoing.files) == {id(m.runs4) for m in in_service} < before
        # with workers: the same files, not new copies, behind a listing
        files = outgoing.update(in_service)
        assert files[1:] == [outgoing.files[id(m.runs4)][2] for m in in_service]
    finally:
        outgoing.close()
    # an index the child cannot load (not from a cache directory; its files gone): it says so
    with pytest.raises(MapBuildError, match="cache directory"):
        MapBuilder().build(dataclasses.replace(cached, directory=None), shapes, frozenset())
    gone = load_index(tmp_path, geo.index.digest)
    assert gone is not None
    for entry in sorted(tmp_path.rglob("*"), reverse=True):
        entry.unlink() if entry.is_file() else entry.rmdir()
    with pytest.raises(MapBuildError, match="cannot read the cached place index"):
        MapBuilder().build(gone, shapes, frozenset())
    stopped = MapBuilder()  # a stopping server starts no child
    stopped.stop()
    with pytest.raises(MapBuildError, match="stopping"):
        stopped.build(cached, shapes, frozenset())
    assert not stopped.running


@pytest.fixture
def cached(world: tuple[Geo, Snapshot], tmp_path: Path) -> PlaceIndex:
    """The example's index as a server holds it: loaded from a cache directory."""
    geo, _ = world
    assert geo.index is not None
    save_index(geo.index, tmp_path)
    index = load_index(tmp_path, geo.index.digest)
    assert index is not None
    return index


def _open_descriptors() -> set[int]:
    return {int(entry.name) for entry in Path("/proc/self/fd").iterdir()}


def test_a_set_that_cannot_be_taken_leaves_no_file_open(
    world: tuple[Geo, Snapshot], cached: PlaceIndex
) -> None:
    """receive_built takes a builder's set whole or not at all: a listing that is not one, a
    count that does not match, a map that cannot be made over its file."""
    geo, snapshot = world
    maps = answer_maps(geo, set(snapshot.shapes.values()), frozenset())
    outgoing = SharedMapsOut()
    before = _open_descriptors()

    def not_a_listing(files: list[int]) -> list[int]:
        os.close(files[0])
        return [sealed_file("not-a-listing", 3, [(memoryview(b"abc"), 0)]), *files[1:]]

    def a_file_short(files: list[int]) -> list[int]:
        os.close(files[-1])
        return files[:-1]

    for spoil in (not_a_listing, a_file_short, _with_bad_part):
        files = spoil(publish_set(maps.values()))
        with pytest.raises((ValueError, TypeError, pickle.UnpicklingError)):
            outgoing.receive_built(files, cached)
        assert outgoing.files == {}
        assert _open_descriptors() <= before, f"a descriptor left open ({spoil.__name__})"
    outgoing.close()


def _with_bad_part(files: list[int]) -> list[int]:
    """The same set with its last map's first part cut to 3 bytes: no array of 4-byte items."""
    notices = read_listing(files[0])
    os.close(files[0])
    last = notices[-1]
    offset, _, form = last.parts[0]
    notices[-1] = dataclasses.replace(last, parts=((offset, 3, form), *last.parts[1:]))
    return [write_listing(notices), *files[1:]]


def test_the_builder_keeps_its_rankings_beside_the_index(
    world: tuple[Geo, Snapshot], cached: PlaceIndex
) -> None:
    """The sites ranked for every place are kept as files in the index's cache entry and
    mapped by the next build (a second for 100 sites on a City database, at every health
    change); a file that is not a ranking is ranked again, with the same maps."""
    geo, snapshot = world
    assert cached.directory is not None
    shapes = list(set(snapshot.shapes.values()))
    entry = cached.directory / cache_key(cached.digest)
    built = answer_maps(geo, shapes, frozenset({"frankfurt"}))
    by_key = {s.key: m for s, m in built.items()}
    outgoing = SharedMapsOut()
    try:
        for spoil in (False, False, True):
            if spoil:  # every kept ranking cut short: not one any more
                for path in entry.glob("rank-*.npy"):
                    path.write_bytes(path.read_bytes()[:100])
            files = MapBuilder().build(cached, shapes, frozenset({"frankfurt"}))
            for shape, answer_map in outgoing.receive_built(files, cached).items():
                _same_map(by_key[shape.key], answer_map)
            kept = sorted(entry.glob("rank-*.npy"))
            assert kept, "no ranking kept"
            assert all(path.stat().st_size > 1000 for path in kept)  # (ranked again)
        # a ranking no build used for 30 days (a site set the config dropped) is removed by the
        # next build, and so is a file its writer left half-written over an hour ago (a builder
        # killed by a stop); those it uses, and a file being written now, are kept
        stale = entry / "rank-0123456789abcdef0123456789abcdef.npy"
        abandoned = entry / ".rank-0123456789abcdef0123456789abcdef.npy.4242"
        writing = entry / ".rank-fedcba9876543210fedcba9876543210.npy.4243"
        for path in (stale, abandoned, writing):
            path.write_bytes(b"old")
        for path in (stale, abandoned):
            os.utime(
                path, (time.time() - 7200, time.time() - 7200) if path is abandoned else (1, 1)
            )
        outgoing.receive_built(MapBuilder().build(cached, shapes, frozenset()), cached)
        assert not stale.exists() and sorted(entry.glob("rank-*.npy")) == kept
        assert not abandoned.exists() and writing.exists()
    finally:
        outgoing.close()


def test_the_builder_works_above_descriptor_1024(
    world: tuple[Geo, Snapshot], cached: PlaceIndex
) -> None:
    """A server with many connections open has pipe descriptors past 1023, where select()
    fails: the builder waits with poll."""
    import resource

    _, snapshot = world
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"at most {hard} open files here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    outgoing = SharedMapsOut()
    try:
        assert max(held) >= 1024
        shapes = list(set(snapshot.shapes.values()))
        received = outgoing.receive_built(MapBuilder().build(cached, shapes, frozenset()), cached)
        assert len(received) == len(shapes)
    finally:
        outgoing.close()
        for descriptor in held:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_stop_kills_the_child_still_building(
    world: tuple[Geo, Snapshot], cached: PlaceIndex
) -> None:
    """The child is frozen (SIGSTOP) as soon as it runs, so that it is still building when the
    builder stops: the build ends at once with an error, and the child is gone."""
    _, snapshot = world
    shapes = list(set(snapshot.shapes.values()))
    builder = MapBuilder()
    outcome: list[object] = []

    def build() -> None:
        try:
            outcome.append(builder.build(cached, shapes, frozenset()))
        except MapBuildError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    deadline = time.monotonic() + 30
    while not builder.running and time.monotonic() < deadline:
        time.sleep(0.001)
    (child,) = list(builder.running)
    os.kill(child.pid, signal.SIGSTOP)
    builder.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], MapBuildError), outcome
    assert "killed by signal 9" in str(outcome[0])
    assert child.returncode == -signal.SIGKILL
    assert not builder.running


PID_ONE_BUILD = """
import sys
from pathlib import Path
from geodns.daemon.mapbuilder import MapBuilder
from geodns.geo.index import load_index
from geodns.geo.sharedmaps import SharedMapsOut
from geodns.serving.snapshot import build_snapshot
from geodns.config.server import load_config
from geodns.config.loader import load_geo
import os
assert os.getpid() == 1
config = load_config(Path(sys.argv[1]))
shapes = list(set(build_snapshot(config, load_geo(config, build=True)).shapes.values()))
index = load_index(Path(sys.argv[2]), sys.argv[3])
print(len(SharedMapsOut().receive_built(MapBuilder().build(index, shapes, frozenset()), index)))
"""


def test_a_server_running_as_pid_1_has_its_maps_built(cached: PlaceIndex) -> None:
    """In a container without an init, geodns is PID 1, and its children's parent is 1: a
    child that took that for "my parent died" stopped at once, and every build fell back."""
    command = ["unshare", "-Urfp", "--mount-proc", sys.executable, "-c", PID_ONE_BUILD]
    command += [str(EXAMPLE), str(cached.directory), cached.digest]
    try:
        probe = subprocess.run(
            ["unshare", "-Urfp", "--mount-proc", "true"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("no unshare here")
    if probe.returncode != 0:
        pytest.skip("no PID namespace for this user here")
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) > 0


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
            name = (entry / "comm").read_text()
        except OSError:
            continue
        parent = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid"))
        if int(parent) == server.proc.pid and name.startswith("geodns-worker"):  # (forked)
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


def test_a_child_imports_this_geodns_not_one_planted_where_it_runs(tmp_path: Path) -> None:
    """Children (workers, the map and index builders) run `python -P` with this geodns first
    on their path: a `geodns` package in the working directory is not what they import."""
    planted = tmp_path / "geodns"
    planted.mkdir()
    (planted / "__init__.py").write_text("print('planted'); raise SystemExit(42)\n")
    command, environment = child_command(
        "geodns.daemon.mapbuilder", "not-a-descriptor", str(os.getpid())
    )
    assert command[:3] == [sys.executable, "-P", "-m"]
    result = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60
    )
    assert "planted" not in result.stdout and result.returncode != 42
    assert "not-a-descriptor" in result.stderr  # the real builder read its arguments
    # without -P the planted one would have been taken
    unsafe = subprocess.run(
        [sys.executable, "-m", "geodns.daemon.mapbuilder"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unsafe.returncode == 42


def test_workers_answer_from_the_main_process_maps() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    config = {"sites": example["sites"], "workers": 2, "watch_zones": False}
    zones = {ZONE: (ROOT / "zones" / f"{ZONE}.yaml").read_text()}
    server = GeodnsServer(config, zones)
    loaded = load_config(server.config_path)
    with server:
        # a first start: the small database's index is built at start, by a child process
        # (built in the main process, numpy stayed mapped in it), and cached for this test
        geo = load_geo(loaded)
        # what the maps say, and what a record decided per place would say, for IPv4 /24s
        # whose map block is wider than their database network
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
        main_maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
        assert "geodns-answer-map" in main_maps  # the main process too: a child built them
        assert "_multiarray_umath" not in main_maps

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
        for pid in (worker, server.proc.pid):
            assert "geodns-answer-map" in Path(f"/proc/{pid}/maps").read_text()
            assert "_multiarray_umath" not in Path(f"/proc/{pid}/maps").read_text()


def test_without_its_cached_index_the_main_process_builds_a_drains_maps_itself(
    tmp_path: Path,
) -> None:
    """The cache directory removed under a running server (a cleanup, a full disk's
    remedy): the builder child cannot map the index, and the main process builds the maps
    of a drain itself from the index it has mapped; the answers carry the maps' scopes."""
    example = yaml.safe_load(EXAMPLE.read_text())
    cache = tmp_path / "cache"
    config = {"sites": example["sites"], "watch_zones": False, "cache_dir": str(cache)}
    zones = {ZONE: (ROOT / "zones" / f"{ZONE}.yaml").read_text()}
    server = GeodnsServer(config, zones)
    loaded = load_config(server.config_path)
    geo = load_geo(loaded, build=True)  # cached before the start, as in the test above
    with server:
        snapshot = build_snapshot(loaded, geo)
        assert geo.index is not None
        record = next(r for r in snapshot.shapes if r.owner == f"www.{ZONE}." and r.family == 4)
        drained = frozenset({"frankfurt"})
        shape = snapshot.shapes[record]
        built = answer_maps(geo, [shape], drained)[shape]
        rng = random.Random(9)
        wide = {}
        for value in (rng.getrandbits(24) << 8 for _ in range(5_000)):
            scope = built.lookup(4, value)[1]
            if 0 < scope < geo.index.runs4.lookup(value)[1]:
                wide[f"{ipaddress.IPv4Address(value)}/24"] = scope
            if len(wide) == 3:
                break
        assert wide, "no subnet whose map block is wider than its network"
        deadline = time.monotonic() + STARTED_WITHIN
        assert server.proc is not None
        maps_file = Path(f"/proc/{server.proc.pid}/maps")
        while "geodns-answer-map" not in maps_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)  # the first maps, from the child
        assert "geodns-answer-map" in maps_file.read_text()
        assert "_multiarray_umath" not in maps_file.read_text()
        status = json.loads(server.cli("status", "--json").stdout)
        assert status["answer_maps"] == len(set(snapshot.shapes.values()))
        assert status["answer_maps_pending"] == 0
        for entry in sorted(cache.rglob("*"), reverse=True):
            if "geo-index" in str(entry):
                entry.unlink() if entry.is_file() else entry.rmdir()
        assert server.cli("drain", "frankfurt").returncode == 0
        for subnet, want in wide.items():
            seen = _scopes(server, subnet, 5)
            while {s for _, s in seen} != {want} and time.monotonic() < deadline:
                time.sleep(0.1)
                seen = _scopes(server, subnet, 5)
            assert {s for _, s in seen} == {want}, (subnet, seen)
        assert "_multiarray_umath" in maps_file.read_text()  # built here, with numpy
        assert server.alive()
        lines = server.stderr_text().splitlines()
        events = [json.loads(line) for line in lines if line.startswith("{")]
        built_here = [e for e in events if e.get("event") == "answer_maps_built_here"]
        assert built_here and "cannot read the cached place index" in built_here[0]["error"]

"""Answer maps built in a short-lived child process, handed back as sealed memory files.

The main process built every answer map itself, in a thread: numpy imported for good (7 MB of
libraries and its heap), the rankings and the build's temporaries left in the heap (a thread's
malloc arena that trimming cannot empty while a few live chunks sit in it), and the GIL held
by the build while queries waited. On the 10,000-name zone that was 32 MB of the 86 MB a
server held once its maps were there. Now the main process sends the shapes to build (the
records' decision structures without addresses), the health view and its place index's
digest to `python -P -m geodns.daemon.mapbuilder`, which maps the same cached index, builds the
maps, copies each into a sealed memory file (geodns.geo.sharedmaps.publish, as the main
process copied its own for the workers before) and hands the files back over a socket pair
(SCM_RIGHTS), then exits. The main process maps them read-only and answers from them as a
worker does (its lookups cost what a built map's do), and hands the same files on to its
workers: no serving process imports numpy, and the machine holds one copy of each map.

A child costs a process start and numpy's import (0.2-0.3 s a build, measured); it runs
at the server's own priority, so that under full load the maps still come (records are
decided per place meanwhile, correct but slower). Where it cannot run (no memfd, an index not
loaded from the cache directory, the cache files removed, the child killed) the main process
builds in its own thread as before and says so once per build (`answer_maps_built_here`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from geodns.common.errors import MapBuildError
from geodns.common.pipes import (
    bound_pipe,
    child_command,
    receive_message,
    send_message,
    stop_with_parent,
)
from geodns.geo.answers import Rankings, Shape, build_map
from geodns.geo.index import PlaceIndex, cache_key, load_index
from geodns.geo.sharedmaps import publish_set

BUILD_TIMEOUT = 60.0  # seconds a child may take (a 100-PoP real City index: about a second)


class MapBuilder:
    """Starts the builder children of one server, and kills those still running when it
    stops (a stop waits for no build: the thread waiting for a killed child sees it end)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen[bytes]] = set()
        self.stopped = False

    def build(self, index: PlaceIndex, shapes: list[Shape], down: frozenset[str]) -> list[int]:
        """The maps of `shapes` under `down` on `index` (a cached one), built by a child
        process: the descriptors of their sealed files, the listing first (see
        SharedMapsOut.receive_built). Blocking: callers run it in a thread. MapBuildError
        where the child could not, or the server is stopping."""
        if index.directory is None:
            raise MapBuildError("the place index was not loaded from a cache directory")
        parent, child = socket.socketpair()
        with parent, child:
            bound_pipe(parent)
            bound_pipe(child)
            command, environment = child_command(
                "geodns.daemon.mapbuilder", str(child.fileno()), str(os.getpid())
            )
            with self.lock:
                if self.stopped:
                    raise MapBuildError("the server is stopping")
                process = subprocess.Popen(command, pass_fds=(child.fileno(),), env=environment)
                self.running.add(process)
            connection = Connection(parent.detach())
        broken: BaseException | None = None
        try:
            send_message(connection, "build", (str(index.directory), index.digest, shapes, down))
            if not connection.poll(BUILD_TIMEOUT):  # (poll, not select: any descriptor number)
                raise MapBuildError(f"no answer maps after {BUILD_TIMEOUT:.0f} s")
            kind, payload = receive_message(connection)
        except (OSError, EOFError) as exc:
            broken = exc
        finally:
            connection.close()
            if process.poll() is None:
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            with self.lock:
                self.running.discard(process)
        if broken is not None:
            code = process.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            raise MapBuildError(f"the map builder ended ({how}): {broken or 'no answer'}")
        if kind != "maps":
            raise MapBuildError(str(payload))
        descriptors: list[int] = payload
        return descriptors

    def stop(self) -> None:
        """Kill the children still building; start no more."""
        with self.lock:
            self.stopped = True
            for process in self.running:
                with contextlib.suppress(OSError):
                    process.kill()


def builder_main(argv: list[str]) -> int:
    """The child: `python -m geodns.daemon.mapbuilder FD PARENT`; one order, one answer, then
    exit. Killed with the parent (SIGKILL: nothing to clean up), and deaf to the SIGINT and
    SIGTERM that a stop sends the whole process group or unit: the parent decides, so that it
    never mistakes a stop's signal for a failed build and builds the maps itself."""
    descriptor, parent = argv
    stop_with_parent(int(parent), signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    connection = Connection(int(descriptor))
    _, (directory, digest, shapes, down) = receive_message(connection)
    try:
        index = load_index(Path(directory), digest)
        if index is None:
            raise MapBuildError(
                f"cannot read the cached place index {digest[:12]} in {directory} (removed or "
                "damaged: `geodns check` builds it again, and the next build uses it)"
            )
        rankings = Rankings(index, Path(directory) / cache_key(digest))  # kept for the next
        files = publish_set([build_map(shape, index, rankings, down) for shape in shapes])
        rankings.prune()
    except Exception as exc:  # told to the main process, which builds them itself
        send_message(connection, "error", f"{type(exc).__name__}: {exc}")
        return 1
    send_message(connection, "maps", len(files), files)
    return 0


if __name__ == "__main__":
    raise SystemExit(builder_main(sys.argv[1:]))

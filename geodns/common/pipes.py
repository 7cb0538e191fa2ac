"""The pipe between the main process and a child it started: whole pickled messages, and
open files passed beside them (SCM_RIGHTS), over one end of a socket pair each.

Used by the worker processes (geodns.daemon.workers) and the answer-map builder
(geodns.daemon.mapbuilder). Kept apart from both so that a child imports only this (no
asyncio: 45 ms of a map builder's start).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct
import sys
import sysconfig
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

FILES_PER_MESSAGE = 200  # descriptors per SCM_RIGHTS message (Linux takes at most 253)
PIPE_TIMEOUT = 10.0  # seconds a blocking send or receive on a child's pipe may take
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_command(module: str, *arguments: str) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) to run `module` of geodns in a child Python: this interpreter with
    `-P` (the working directory is not put on the module path, so nothing planted there is
    imported) and the directory this geodns was imported from first on PYTHONPATH (the child
    runs the same code, also from a source tree that is not installed)."""
    environment = dict(os.environ)
    paths = list(filter(None, environment.get("PYTHONPATH", "").split(os.pathsep)))
    installed = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    if PACKAGE_ROOT not in installed:  # (site-packages first would shadow the standard library)
        paths.insert(0, PACKAGE_ROOT)
    if paths:
        environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return [sys.executable, "-P", "-m", module, *arguments], environment


@contextlib.contextmanager
def _whole_messages(connection: Connection) -> Iterator[None]:
    """The pipe in blocking mode while one message (and the files that follow it) is read or
    written whole. An event loop's reader makes it non-blocking, and then a message bigger than
    what one system call moves (a worker's report carries the networks it sampled, up to
    hundreds of KB under cold traffic) failed half-way: read in part, the rest not there yet,
    so the main process took the worker for dead and restarted it. Each blocking call is
    bounded by the socket's timeouts (PIPE_TIMEOUT, set at the pair's creation): a peer that
    stops half-way is an error, not a hang. The mode is put back after."""
    descriptor = connection.fileno()
    was_blocking = os.get_blocking(descriptor)
    os.set_blocking(descriptor, True)
    try:
        yield
    finally:
        os.set_blocking(descriptor, was_blocking)


def bound_pipe(end: socket.socket) -> None:
    """Give one end of a worker's socket pair its timeouts for blocking sends and receives
    (socket options: they hold for every descriptor of it, in both processes)."""
    whole, fraction = divmod(PIPE_TIMEOUT, 1)
    timeout = struct.pack("ll", int(whole), int(fraction * 1_000_000))
    end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
    end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)


def send_message(
    connection: Connection, kind: str, payload: Any, descriptors: list[int] | None = None
) -> None:
    """One message, whole; open files (`descriptors`) follow it on the same stream, in
    SCM_RIGHTS messages of one byte each (receive_message reads them next)."""
    with _whole_messages(connection):
        connection.send((kind, payload))
        if descriptors:
            with socket.socket(fileno=os.dup(connection.fileno())) as stream:
                for begin in range(0, len(descriptors), FILES_PER_MESSAGE):
                    chunk = descriptors[begin : begin + FILES_PER_MESSAGE]
                    socket.send_fds(stream, [b"F"], chunk)


def receive_message(connection: Connection) -> tuple[str, Any]:
    """The next message, whole. A "maps" order's payload, a count of files, becomes the files
    themselves, received (None: build your own maps)."""
    with _whole_messages(connection):
        kind, payload = connection.recv()
        if kind != "maps" or payload is None:
            return kind, payload
        descriptors: list[int] = []
        try:
            with socket.socket(fileno=os.dup(connection.fileno())) as stream:
                while len(descriptors) < payload:
                    wanted = min(FILES_PER_MESSAGE, payload - len(descriptors))
                    _, files, flags, _ = socket.recv_fds(stream, 1, wanted)
                    descriptors += files
                    if flags & socket.MSG_CTRUNC:
                        raise OSError("answer-map files cut short (descriptor limit?)")
                    if not files:
                        raise EOFError("an answer-maps order without its files")
        except BaseException:
            for descriptor in descriptors:
                os.close(descriptor)
            raise
        return kind, descriptors


def stop_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """`signum` when the parent process (pid `parent`, as it said on our command line) dies,
    however it dies (Linux's PR_SET_PDEATHSIG): a child must not outlive the server that
    started it. If the parent is already gone (we were handed to another reaper before the
    call), stop now. The parent is named, not assumed to differ from 1: a server that runs as
    PID 1 (a container without an init) has children whose parent is 1."""
    with contextlib.suppress(OSError, AttributeError):  # the loaded C library's prctl
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:
        raise SystemExit(1)


def name_process(name: str) -> None:
    """Set this process's name as ps, top and pgrep show it (`comm`, 15 bytes at most; Linux's
    PR_SET_NAME): a forked worker's command line is the main process's."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15])

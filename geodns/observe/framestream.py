"""Frame Streams, the transport of dnstap: length-prefixed frames, to a file or a Unix socket.

A data frame is a 32-bit big-endian length and the payload. A control frame starts with a zero
length (the escape), then its own length, its type, and fields (only CONTENT_TYPE is used). A
file holds START (with the content type), data frames, STOP. On a socket the writer says READY
with the content types it offers, the reader ACCEPTs one, the writer sends START, data frames,
and STOP when it is done, which the reader answers with FINISH. This is what fstrm_capture,
dnstap-read, dnscollector and Vector's dnstap source speak.

`SocketOutput` is a spool output (geodns.observe.spool): it connects in the spool's writer
thread, and while no reader listens it says it is not `ready`, so entries are dropped and
counted rather than queued. It tries to connect again every RECONNECT_INTERVAL seconds. A reader
that stops reading fills the socket's buffer; the writer thread then blocks in sendall (the
query path does not notice), the spool fills and further entries are dropped and counted.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time

from geodns.common.logs import get_logger

log = get_logger("geodns.observe.framestream")

CONTROL_ACCEPT = 0x01
CONTROL_START = 0x02
CONTROL_STOP = 0x03
CONTROL_READY = 0x04
CONTROL_FINISH = 0x05
FIELD_CONTENT_TYPE = 0x01
MAX_CONTROL_FRAME = 512  # ours are ~40 bytes; a reader's longer answer is not a Frame Streams one
RECONNECT_INTERVAL = 2.0
HANDSHAKE_TIMEOUT = 2.0
SEND_TIMEOUT = 5.0  # a reader that takes no byte for this long is dropped and reconnected


def data_frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def control_frame(kind: int, content_type: bytes | None = None) -> bytes:
    body = struct.pack(">I", kind)
    if content_type is not None:
        body += struct.pack(">II", FIELD_CONTENT_TYPE, len(content_type)) + content_type
    return struct.pack(">II", 0, len(body)) + body


def parse_control(frame: bytes) -> tuple[int, list[bytes]]:
    """A control frame's body (after escape and length) -> (type, content types)."""
    if len(frame) < 4:
        raise ValueError("control frame shorter than its type")
    (kind,) = struct.unpack_from(">I", frame)
    types: list[bytes] = []
    offset = 4
    while offset + 8 <= len(frame):
        field, length = struct.unpack_from(">II", frame, offset)
        offset += 8
        if offset + length > len(frame):
            raise ValueError("control field runs past its frame")
        if field == FIELD_CONTENT_TYPE:
            types.append(frame[offset : offset + length])
        offset += length
    return kind, types


def file_header(content_type: bytes) -> bytes:
    return control_frame(CONTROL_START, content_type)


def file_footer() -> bytes:
    return control_frame(CONTROL_STOP)


class SocketOutput:
    """A bidirectional Frame Streams connection to a reader listening on a Unix socket."""

    def __init__(self, path: str, content_type: bytes) -> None:
        self.path = path
        self.content_type = content_type
        self.ready = False
        self.sock: socket.socket | None = None
        self.next_attempt = 0.0
        self.connects = 0
        self._said_unreachable = False

    def start(self) -> None:
        self._connect()

    def idle(self) -> None:
        if self.sock is None and time.monotonic() >= self.next_attempt:
            self._connect()

    def write(self, chunks: list[bytes]) -> None:
        sock = self.sock
        if sock is None:  # queued before the connection dropped: they are lost
            raise OSError("dnstap reader went away")
        try:
            sock.sendall(b"".join(chunks))
        except OSError:
            self._drop_connection("write failed")
            raise

    def close(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self.ready = False
        with contextlib.suppress(OSError):
            sock.settimeout(HANDSHAKE_TIMEOUT)
            sock.sendall(control_frame(CONTROL_STOP))
            _read_control(sock)  # FINISH: the reader has everything
        sock.close()
        self.sock = None

    def _connect(self) -> None:
        self.next_attempt = time.monotonic() + RECONNECT_INTERVAL
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT)
            sock.connect(self.path)
            sock.sendall(control_frame(CONTROL_READY, self.content_type))
            kind, types = _read_control(sock)
            if kind != CONTROL_ACCEPT or (types and self.content_type not in types):
                raise OSError(f"reader answered control frame {kind} for {types!r}")
            sock.sendall(control_frame(CONTROL_START, self.content_type))
            sock.settimeout(SEND_TIMEOUT)
        except (OSError, ValueError) as exc:
            sock.close()
            if not self._said_unreachable:  # said once, until a connection succeeds
                self._said_unreachable = True
                log.warning("dnstap_reader_unreachable", socket=self.path, error=str(exc))
            return
        self.sock = sock
        self.connects += 1
        self._said_unreachable = False
        self.ready = True
        log.info("dnstap_reader_connected", socket=self.path)

    def _drop_connection(self, why: str) -> None:
        self.ready = False
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
        self.next_attempt = time.monotonic() + RECONNECT_INTERVAL
        log.warning("dnstap_reader_lost", socket=self.path, reason=why)


def _read_control(sock: socket.socket) -> tuple[int, list[bytes]]:
    head = _read_exact(sock, 8)
    escape, length = struct.unpack(">II", head)
    if escape != 0 or length > MAX_CONTROL_FRAME:
        raise ValueError("expected a Frame Streams control frame")
    return parse_control(_read_exact(sock, length))


def _read_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise OSError("reader closed the connection")
        data += chunk
    return data

"""UDP served in batches: many datagrams per system call each way (recvmmsg/sendmmsg, Linux).

Answering one datagram per recvfrom/sendto costs one CPython process two system calls and their
wrappers per query: about 8 µs of CPU on our benchmark VM, more than most answers cost. gdnsd and
other C servers read and write in batches with recvmmsg(2) and sendmmsg(2). CPython's socket
module offers neither, so this transport calls them through ctypes, on buffers and message
headers allocated once per socket, and hands each datagram to the same answer path as the
asyncio transport (geodns.serving.answer_path.answer). Where the C library lacks them (not Linux), or `udp.batch` is 0,
geodns uses asyncio's datagram transport instead.

The socket is read when the event loop says it is readable, at most ROUNDS batches at a time, so
TCP connections, the admin API and timers still get their turn under a flood. A reply the kernel
will not take at once (its send buffer full) is dropped and counted, as a C server would do:
waiting for room would delay every query behind it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import socket
import sys
import time
from time import perf_counter
from typing import Any

from geodns.common.caching import BoundedCache
from geodns.common.logs import get_logger
from geodns.serving.answer_path import ServerState, answer
from geodns.serving.client import Client, ClientFactory

log = get_logger("geodns.serving.udpbatch")

RECV_SLOT = 4096  # bytes per datagram read: one that fills it (cut, or that large) is dropped
SEND_SLOT = 4096  # bytes per reply: edns.max_udp_size is at most 4096
NAME_SLOT = 32  # bytes per peer address: a sockaddr_in6 is 28
SOCKADDR_LENGTH = {socket.AF_INET: 16, socket.AF_INET6: 28}  # a peer's address, by family
ROUNDS = 8  # batches per readable event before the loop runs its other work
EAGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)
# plain ints: the socket module's flags are enum members, whose `&` runs Python code
MSG_DONTWAIT = int(socket.MSG_DONTWAIT)
# Linux's option to set a receive buffer past net.core.rmem_max (socket has no name for it)
SO_RCVBUFFORCE: int | None = 33 if sys.platform.startswith("linux") else None


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def _libc_calls() -> tuple[Any, Any] | None:
    """(recvmmsg, sendmmsg) from the C library, or None where it has not got them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_CALLS = _libc_calls()


def available() -> bool:
    """Whether this platform can batch UDP system calls."""
    return _CALLS is not None and ctypes.sizeof(_MMsgHdr) % ctypes.sizeof(ctypes.c_void_p) == 0


class BatchedUdp:
    """One bound, non-blocking UDP socket answered in batches of up to `batch` datagrams."""

    def __init__(
        self, sock: socket.socket, state: ServerState, batch: int, clients: ClientFactory
    ) -> None:
        assert _CALLS is not None
        self.recvmmsg, self.sendmmsg = _CALLS
        self.sock = sock
        self.fd = sock.fileno()
        self.state = state
        self.batch = batch
        self.loop: asyncio.AbstractEventLoop | None = None
        # the address's bytes inside a sockaddr_in (after family and port) or a sockaddr_in6
        # (after family, port and flow label); the family of a socket never changes
        self.family = sock.family
        self.address_at = (4, 8) if sock.family == socket.AF_INET else (8, 24)
        self.factory = clients
        self.clients: BoundedCache[int | bytes, Client] = BoundedCache("clients")
        self._allocate(batch)

    def _allocate(self, batch: int) -> None:
        self.recv_buffer = ctypes.create_string_buffer(batch * RECV_SLOT)
        self.send_buffer = ctypes.create_string_buffer(batch * SEND_SLOT)
        self.names = ctypes.create_string_buffer(batch * NAME_SLOT)
        self.recv_iovecs = (_IoVec * batch)()
        self.send_iovecs = (_IoVec * batch)()
        self.recv_headers = (_MMsgHdr * batch)()
        self.send_headers = (_MMsgHdr * batch)()
        recv_base = ctypes.addressof(self.recv_buffer)
        send_base = ctypes.addressof(self.send_buffer)
        names_base = ctypes.addressof(self.names)
        self.name_addresses = [names_base + i * NAME_SLOT for i in range(batch)]
        for i in range(batch):
            self.recv_iovecs[i].iov_base = recv_base + i * RECV_SLOT
            self.recv_iovecs[i].iov_len = RECV_SLOT
            header = self.recv_headers[i].msg_hdr
            header.msg_name = self.name_addresses[i]
            header.msg_namelen = NAME_SLOT
            header.msg_iov = ctypes.addressof(self.recv_iovecs[i])
            header.msg_iovlen = 1
            self.send_iovecs[i].iov_base = send_base + i * SEND_SLOT
            header = self.send_headers[i].msg_hdr
            header.msg_iov = ctypes.addressof(self.send_iovecs[i])
            header.msg_iovlen = 1
        self.recv_address = ctypes.addressof(self.recv_headers)
        self.send_address = ctypes.addressof(self.send_headers)
        self.header_size = ctypes.sizeof(_MMsgHdr)
        # the headers as 32-bit words and as pointers, to read and write fields without
        # building a ctypes object per datagram
        word = ctypes.sizeof(ctypes.c_uint32)
        pointer = ctypes.sizeof(ctypes.c_void_p)
        self.recv_words = memoryview(self.recv_headers).cast("B").cast("I")
        self.send_pointers = memoryview(self.send_headers).cast("B").cast("P")
        self.send_words = memoryview(self.send_headers).cast("B").cast("I")
        self.send_lengths = memoryview(self.send_iovecs).cast("B").cast("P")
        self.words_per_header = self.header_size // word
        self.pointers_per_header = self.header_size // pointer
        self.length_word = _MMsgHdr.msg_len.offset // word
        self.namelen_word = _MsgHdr.msg_namelen.offset // word
        self.name_pointer = _MsgHdr.msg_name.offset // pointer
        self.iov_len_pointer = _IoVec.iov_len.offset // pointer
        self.pointers_per_iovec = ctypes.sizeof(_IoVec) // pointer
        self.send_view = memoryview(self.send_buffer).cast("B")
        # per datagram slot: (its number, its header's first word, its buffer's offset, where
        # its peer's key is): worked out once, not per datagram
        address_from, address_to = self.address_at
        self.key_size = address_to - address_from
        # an IPv4 peer's key is its address read as one native word (no bytes made per
        # datagram); an IPv6 peer's the 16 bytes of its address
        self.peers = memoryview(self.names).cast("B").cast("I") if self.key_size == 4 else None
        key_unit = 4 if self.peers is not None else 1
        self.slots = [
            (
                i,
                i * self.words_per_header,
                i * RECV_SLOT,
                (i * NAME_SLOT + address_from) // key_unit,
            )
            for i in range(batch)
        ]
        # the send headers: each at its own datagram's peer, whose address is of the socket's
        # family, so of one length
        name_length = SOCKADDR_LENGTH[self.family]
        self.shifted = 0  # send headers pointed elsewhere by the last batch (see _answer)
        self._point_home(batch)
        for i in range(batch):
            self.send_words[i * self.words_per_header + self.namelen_word] = name_length

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        if self.loop is not None:
            self.loop.remove_reader(self.fd)
            self.loop = None
        self.sock.close()

    def _client(self, key: int | bytes) -> Client:
        """A peer, made once and kept for its next datagram (bounded like every cache); `key`
        is its address's bytes, or for IPv4 those as a native word (see `_allocate`)."""
        packed = key.to_bytes(4, sys.byteorder) if isinstance(key, int) else key
        client = self.factory.from_text(socket.inet_ntop(self.family, packed))
        self.clients.put(key, client, 2 * len(packed) + 64)
        return client

    def _readable(self) -> None:
        for _ in range(ROUNDS):
            count = self.recvmmsg(self.fd, self.recv_address, self.batch, MSG_DONTWAIT, None)
            if count <= 0:
                if count < 0 and ctypes.get_errno() not in EAGAIN:
                    log.debug("recvmmsg_failed", errno=ctypes.get_errno())
                return
            self._answer(count)
            if count < self.batch:
                return

    def _answer(self, count: int) -> None:
        """Answer the `count` datagrams just read, then send the replies in one call.

        Reply k goes out through send header k, which points at peer k's address (set once,
        in `_allocate`) as long as every datagram before it got a reply; only when one did not
        (dropped, rate limited) is a header pointed at another slot's peer, and put back after
        the send. The per-datagram work is what is left: a slice of the query, the peer's key,
        `answer()`, the reply's copy and length."""
        started = perf_counter()
        state = self.state
        tap = state.tap
        words, recv_buffer, names, peers = self.recv_words, self.recv_buffer, self.names, self.peers
        send_view, send_lengths = self.send_view, self.send_lengths
        length_word, key_size = self.length_word, self.key_size
        per_iovec, iov_len = self.pointers_per_iovec, self.iov_len_pointer
        clients = self.clients
        now = time.time()
        replies = 0
        for i, header, start, peer in self.slots[:count]:
            size = words[header + length_word]
            if size >= RECV_SLOT:  # cut at the slot (MSG_TRUNC): no DNS query is this large
                state.dropped += 1
                continue
            data: bytes = recv_buffer[start : start + size]  # type: ignore[assignment]
            key: int | bytes = (
                peers[peer] if peers is not None else names[peer : peer + key_size]  # type: ignore[assignment]
            )
            client = clients.get(key)
            if client is None:
                client = self._client(key)
            try:
                response = answer(state, data, client, False, now)
            except Exception:  # a bug outside the answer path's own guards must not stop us
                state.errors += 1
                state.error_log.exception("udp_error", client=client.text, size=len(data))
                continue
            if tap is not None:
                tap.batched(self, i * NAME_SLOT, data, response)
            if response is None:
                continue
            size = len(response)
            if size > SEND_SLOT:  # never: UDP replies are cut to edns.max_udp_size (<= 4096)
                state.dropped += 1
                continue
            start = replies * SEND_SLOT
            send_view[start : start + size] = response
            send_lengths[replies * per_iovec + iov_len] = size
            if replies != i:  # an earlier datagram got no reply: this one goes out earlier
                self._point(replies, i)
            replies += 1
        if replies:
            self._send(replies)
            state.udp_latency.observe(perf_counter() - started, replies)
        if self.shifted:
            self._point_home(self.shifted)

    def _point(self, reply: int, peer: int) -> None:
        """Send reply slot `reply` to the peer of datagram `peer` (a later one)."""
        self.send_pointers[reply * self.pointers_per_header + self.name_pointer] = (
            self.name_addresses[peer]
        )
        self.shifted = max(self.shifted, reply + 1)

    def _point_home(self, slots: int) -> None:
        """Point the first `slots` send headers back at their own datagram's peer."""
        for i in range(slots):
            self.send_pointers[i * self.pointers_per_header + self.name_pointer] = (
                self.name_addresses[i]
            )
        self.shifted = 0

    def _send(self, replies: int) -> None:
        sent = 0
        while sent < replies:
            done = self.sendmmsg(
                self.fd, self.send_address + sent * self.header_size, replies - sent, 0
            )
            if done > 0:
                sent += done
                continue
            error = ctypes.get_errno()
            if error in EAGAIN:  # the kernel's send buffer is full: drop, do not wait
                self.state.dropped += replies - sent
                return
            if error != errno.EINTR:  # anything else is that one reply's problem: skip it
                self.state.dropped += 1
                sent += 1


def open_socket(address: str, port: int, family: int, reuse_port: bool) -> socket.socket:
    """A bound, non-blocking UDP socket set up as asyncio's datagram endpoint would set it up."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a receive buffer of `size` bytes (0: leave the system's default); the bytes of
    queries the socket can now hold (the kernel reports twice that, for its bookkeeping).

    The default (about 208 KiB on Linux) holds a few hundred small datagrams: a burst that
    arrives while the event loop accepts TCP connections or swaps a snapshot overflows it and
    the kernel drops queries (the soak counted 5% of datagrams dropped so, gdnsd 0.01%, both on
    the default). As Unbound's `so-rcvbuf` does, SO_RCVBUFFORCE is tried first (it needs
    CAP_NET_ADMIN, which root has), then SO_RCVBUF, which Linux caps at net.core.rmem_max."""
    if size > 0:
        for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
                break
            except OSError:
                continue
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2

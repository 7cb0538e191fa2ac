"""The search tree of a MaxMind DB file, walked without decoding the record at the leaf.

maxminddb's reader decodes the whole record on every lookup (about 12 us for a GeoIP2-City
record, more than everything else a query costs). What a query needs is only *which* record an
address falls in and the prefix length of its network: this module answers that from the tree
(MaxMind DB format 2.0, section "Search Tree"), so the locator decodes each record once and keeps
its place, and an address never seen before costs a short walk. The node reached after the first
bits of an address is remembered per prefix, so most walks are a handful of steps.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from struct import unpack_from
from typing import BinaryIO

NO_RECORD = -1  # the address is in no network of the database
IPV4_MEMO_BITS = 16

IPV6_MEMO_BITS = 32


class SearchTree:
    """(data record offset, prefix length) for an address; offsets identify records."""

    def __init__(self, path: Path, node_count: int, record_size: int, ip_version: int) -> None:
        if record_size not in (24, 28, 32):
            raise ValueError(f"{path}: unsupported MaxMind DB record size {record_size}")
        self.node_count = node_count
        self.record_size = record_size
        self.node_bytes = record_size // 4
        self._file: BinaryIO = path.open("rb")
        self.buffer = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.ip_version = ip_version
        self._fault_in(node_count * self.node_bytes)
        # IPv4 lives under ::/96 in an IPv6 tree
        self.ipv4_start = self._descend(0, 0, 96, 128)[0] if ip_version == 6 else 0
        # the node (or leaf) reached after an address's first bits, by those bits: for IPv4
        # every one of them, found at load (a few tens of ms); for IPv6 as addresses come
        self._memo4 = self._first_steps(self.ipv4_start, IPV4_MEMO_BITS)
        self._memo6: dict[int, tuple[int, int]] = {}
        # the rest of a walk, one loop per record size: the hot part of a never-seen network
        self._walk = {24: self._walk24, 28: self._walk28, 32: self._walk32}[record_size]

    def _fault_in(self, size: int) -> None:
        """Touch every page of the tree once, so that no query pays for a page fault (a
        first walk through a never-touched page cost several microseconds)."""
        buffer = self.buffer
        for offset in range(0, min(size, len(buffer)), mmap.PAGESIZE):
            buffer[offset]

    def close(self) -> None:
        self.buffer.close()
        self._file.close()

    def lookup(self, family: int, value: int) -> tuple[int, int]:
        """The record of an address (family 4 or 6, as an int) and its network's prefix length.

        The record is NO_RECORD for an address the database does not cover; the prefix length is
        then that of the empty network around it. IPv4 prefixes count from the IPv4 address.
        """
        if family == 4:
            bits = 32
            node, depth = self._memo4[value >> (32 - IPV4_MEMO_BITS)]
        else:
            bits = 128
            top = value >> (128 - IPV6_MEMO_BITS)
            found = self._memo6.get(top)
            if found is None:
                found = self._memo6[top] = self._descend(0, value, IPV6_MEMO_BITS, 128)
            node, depth = found
        node_count = self.node_count
        if node < node_count:
            node, shift = self._walk(node, value, bits - 1 - depth)
            depth = bits - 1 - shift
        if node <= node_count:  # == node_count: the empty record
            return NO_RECORD, depth
        return node - node_count - 16, depth

    # Each walk follows the bits of `value` from bit `shift` down (31 or 127 is the first bit)
    # until it reaches a leaf or runs out of bits; it returns (node or leaf, shift after it).

    def _walk24(self, node: int, value: int, shift: int) -> tuple[int, int]:
        buffer, node_count = self.buffer, self.node_count
        while node < node_count and shift >= 0:
            offset = node * 6 + ((value >> shift) & 1) * 3
            node = (buffer[offset] << 16) | (buffer[offset + 1] << 8) | buffer[offset + 2]
            shift -= 1
        return node, shift

    def _walk28(self, node: int, value: int, shift: int) -> tuple[int, int]:
        buffer, node_count = self.buffer, self.node_count
        while node < node_count and shift >= 0:
            offset = node * 7
            if (value >> shift) & 1:  # the middle byte's low nibble leads the right record
                node = ((buffer[offset + 3] & 0x0F) << 24) | (
                    (buffer[offset + 4] << 16) | (buffer[offset + 5] << 8) | buffer[offset + 6]
                )
            else:
                node = ((buffer[offset + 3] & 0xF0) << 20) | (
                    (buffer[offset] << 16) | (buffer[offset + 1] << 8) | buffer[offset + 2]
                )
            shift -= 1
        return node, shift

    def _walk32(self, node: int, value: int, shift: int) -> tuple[int, int]:
        buffer, node_count = self.buffer, self.node_count
        while node < node_count and shift >= 0:
            node = unpack_from(">I", buffer, node * 8 + ((value >> shift) & 1) * 4)[0]
            shift -= 1
        return node, shift

    def _first_steps(self, start: int, memo_bits: int) -> list[tuple[int, int]]:
        """(node or leaf, depth) after each of the 2**memo_bits first-bit patterns from `start`:
        the tree's top levels walked once, depth first."""
        node_count, span_bits = self.node_count, memo_bits
        memo: list[tuple[int, int]] = [(start, 0)] * (1 << span_bits)
        stack = [(start, 0, 0)]  # node, depth, the bits followed to reach it
        while stack:
            node, depth, prefix = stack.pop()
            if depth == span_bits or node >= node_count:
                width = span_bits - depth
                memo[prefix << width : (prefix + 1) << width] = [(node, depth)] * (1 << width)
                continue
            stack.append((self._child(node, 1), depth + 1, prefix << 1 | 1))
            stack.append((self._child(node, 0), depth + 1, prefix << 1))
        return memo

    def _child(self, node: int, bit: int) -> int:
        """The left (bit 0) or right (bit 1) record of a node."""
        return self._descend(node, bit, 1, 1)[0]

    def _descend(
        self, node: int, value: int, until: int, bits: int, depth: int = 0
    ) -> tuple[int, int]:
        """Follow the bits of `value` (`bits` long) from `node` at `depth` down to depth `until`
        or a leaf, whichever comes first; return (node or leaf value, depth reached)."""
        buffer, node_count, size = self.buffer, self.node_count, self.node_bytes
        record_size = self.record_size
        while depth < until and node < node_count:
            bit = (value >> (bits - 1 - depth)) & 1
            offset = node * size
            if record_size == 24:
                offset += 3 * bit
                node = (buffer[offset] << 16) | (buffer[offset + 1] << 8) | buffer[offset + 2]
            elif record_size == 32:
                node = unpack_from(">I", buffer, offset + 4 * bit)[0]
            elif bit:  # 28 bits: the middle byte's low nibble leads the right record
                node = ((buffer[offset + 3] & 0x0F) << 24) | (
                    (buffer[offset + 4] << 16) | (buffer[offset + 5] << 8) | buffer[offset + 6]
                )
            else:
                node = ((buffer[offset + 3] & 0xF0) << 20) | (
                    (buffer[offset] << 16) | (buffer[offset + 1] << 8) | buffer[offset + 2]
                )
            depth += 1
        return node, depth

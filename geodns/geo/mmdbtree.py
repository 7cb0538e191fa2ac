"""The search tree of a MaxMind DB file, walked without decoding the record at the leaf.

maxminddb's reader decodes the whole record on every lookup (about 12 us for a GeoIP2-City
record, more than everything else a query costs). What a query needs is only *which* record an
address falls in and the prefix length of its network: this module answers that from the tree
(MaxMind DB format 2.0, section "Search Tree"), so the locator decodes each record once and keeps
its place, and an address never seen before costs a short walk.

At load, the tree's nodes are unpacked into one flat array of 32-bit children (two per node),
whatever the file's record size: a step of the walk is then one array index instead of three
byte reads and shifts from the file (about 0.1 us a step instead of 0.5), and the bytes are
rearranged by slice assignments, which run at memory speed (tens of ms for a 100 MB database).
The node reached after the first bits of an address is remembered per prefix, so most walks
are a handful of steps.
"""

from __future__ import annotations

import mmap
import sys
from array import array
from pathlib import Path

NO_RECORD = -1  # the address is in no network of the database
IPV6_MEMO_BITS = 32
# the two nibbles of a 28-bit node's middle byte: the high one leads the left record
HIGH_NIBBLE = bytes(b >> 4 for b in range(256))
LOW_NIBBLE = bytes(b & 0x0F for b in range(256))


def unpack_children(tree: bytes | mmap.mmap, node_count: int, record_size: int) -> memoryview:
    """The children of every node as native 32-bit integers: node n's left record at 2n, its
    right one at 2n + 1."""
    node_bytes = record_size // 4
    size = node_count * node_bytes
    if len(tree) < size:
        raise ValueError(f"search tree cut short: {len(tree)} of {size} bytes")

    def column(first: int) -> bytes:  # byte `first` of every node
        return tree[first:size:node_bytes]

    out = bytearray(8 * node_count)
    # big-endian byte i of a record goes to byte at[i] of its 32-bit integer in memory
    at = (0, 1, 2, 3) if sys.byteorder == "big" else (3, 2, 1, 0)
    if record_size == 32:  # left: bytes 0-3, right: bytes 4-7
        for i in range(8):
            out[4 * (i // 4) + at[i % 4] :: 8] = column(i)
    else:  # 24 bits: left 0-2, right 3-5; 28: left 0-2 and 3's high nibble, right 4-6 and 3's low
        right = 3 if record_size == 24 else 4
        for i in range(3):
            out[at[i + 1] :: 8] = column(i)
            out[4 + at[i + 1] :: 8] = column(right + i)
        if record_size == 28:
            middle = column(3)
            out[at[0] :: 8] = middle.translate(HIGH_NIBBLE)
            out[4 + at[0] :: 8] = middle.translate(LOW_NIBBLE)
    return memoryview(out).cast("I")


class SearchTree:
    """(data record offset, prefix length) for an address; offsets identify records."""

    def __init__(self, path: Path, node_count: int, record_size: int, ip_version: int) -> None:
        if record_size not in (24, 28, 32):
            raise ValueError(f"{path}: unsupported MaxMind DB record size {record_size}")
        self.node_count = node_count
        self.record_size = record_size
        self.ip_version = ip_version
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
            try:
                self.children = unpack_children(m, node_count, record_size)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
        # IPv4 lives under ::/96 in an IPv6 tree
        self.ipv4_start = self._descend(0, 0, 96, 128)[0] if ip_version == 6 else 0
        # the node (or leaf) reached after an address's first bits, by those bits: for IPv4
        # every one of them, found at load (a few tens of ms) and packed as node << 6 | depth
        # in one flat array (one memory access per look-up); for IPv6 as addresses come
        self._memo4 = array(
            "q", [node << 6 | depth for node, depth in self._first_steps(self.ipv4_start, 16)]
        )
        self._memo6: dict[int, tuple[int, int]] = {}

    def close(self) -> None:
        self.children.release()

    def lookup(self, family: int, value: int) -> tuple[int, int]:
        """The record of an address (family 4 or 6, as an int) and its network's prefix length.

        The record is NO_RECORD for an address the database does not cover; the prefix length is
        then that of the empty network around it. IPv4 prefixes count from the IPv4 address.
        """
        if family == 4:
            shift = 15  # the memo holds the first 16 bits
            packed = self._memo4[value >> 16]
            node, depth = packed >> 6, packed & 63
        else:
            shift = 127 - IPV6_MEMO_BITS
            top = value >> (128 - IPV6_MEMO_BITS)
            found = self._memo6.get(top)
            if found is None:
                found = self._memo6[top] = self._descend(0, value, IPV6_MEMO_BITS, 128)
            node, depth = found
        node_count = self.node_count
        if node < node_count:  # not a leaf within the memo's bits: the walk goes on from there
            children = self.children
            while node < node_count and shift >= 0:
                node = children[node + node + ((value >> shift) & 1)]
                shift -= 1
            depth = (31 if family == 4 else 127) - shift
        if node <= node_count:  # == node_count: the empty record
            return NO_RECORD, depth
        return node - node_count - 16, depth

    def _first_steps(self, start: int, memo_bits: int) -> list[tuple[int, int]]:
        """(node or leaf, depth) after each of the 2**memo_bits first-bit patterns from `start`:
        the tree's top levels walked once, depth first."""
        node_count, children = self.node_count, self.children
        memo: list[tuple[int, int]] = [(start, 0)] * (1 << memo_bits)
        stack = [(start, 0, 0)]  # node, depth, the bits followed to reach it
        while stack:
            node, depth, prefix = stack.pop()
            if depth == memo_bits or node >= node_count:
                width = memo_bits - depth
                memo[prefix << width : (prefix + 1) << width] = [(node, depth)] * (1 << width)
                continue
            stack.append((children[2 * node + 1], depth + 1, prefix << 1 | 1))
            stack.append((children[2 * node], depth + 1, prefix << 1))
        return memo

    def _descend(self, node: int, value: int, until: int, bits: int) -> tuple[int, int]:
        """Follow the bits of `value` (`bits` long) from `node` down to depth `until` or a
        leaf, whichever comes first; return (node or leaf value, depth reached)."""
        node_count, children = self.node_count, self.children
        depth = 0
        while depth < until and node < node_count:
            node = children[2 * node + ((value >> (bits - 1 - depth)) & 1)]
            depth += 1
        return node, depth

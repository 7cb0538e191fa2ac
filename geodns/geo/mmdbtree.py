"""The search tree of a MaxMind DB file (format 2.0, section "Search Tree") as an array.

The place index (geodns.geo.index) walks the whole tree once, level by level with numpy; for
that, the tree's nodes are unpacked into one flat array of 32-bit children (two per node),
whatever the file's record size (24, 28 or 32 bits). The bytes are rearranged by slice
assignments, which run at memory speed (tens of ms for a 100 MB database).
"""

from __future__ import annotations

import mmap
import sys

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

"""Address runs: the whole IPv4 or IPv6 address space cut into consecutive blocks, each with a
label, looked up by bisection. The one lookup structure of the geo layer.

A database's search tree, a place index and an answer map are all the same thing seen from a
query: "which label does this address have, and over which block around it does that label
hold". A sorted array of block starts answers both: bisection finds the block, and the widest
CIDR prefix around the address that stays inside the block is the ECS scope a resolver may
cache the answer for (`widest_prefix`). Neighbouring blocks with the same label are always
merged, so that prefix is as wide as the labelling allows: gdnsd's merged networks, computed
by arithmetic at query time instead of stored.

Arrays are numpy at build time and plain `memoryview`s at query time (indexing a memoryview
gives Python ints, which `bisect` compares fast); IPv6 starts are two 64-bit halves. IPv4 runs
carry an index of the first 16 bits so a lookup bisects a few entries, not a million. Runs
read from a cached place index (`mapped`) are memoryviews of the files alone: numpy is imported
only when a numpy array of them is asked for (an answer map's build, after binding).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    import numpy as np
else:
    from geodns.geo import lazynumpy as np  # numpy once first used: see there

V4_INDEX_BITS = 16
ALIAS_BASE = -2  # IPv6 labels at or below this: an alias of IPv4 space (see Runs6.lookup)


def widest_prefix(value: int, start: int, end: int, bits: int) -> int:
    """The shortest prefix length whose block around `value` lies within [start, end): the
    arithmetic both lookups write out inline (a call per query cost more than the sum).

    The block of 2**k addresses holding `value` starts at or after `start` exactly when
    `value` and `start - 1` differ above bit k, and ends at or before `end` exactly when
    `value` and `end` differ above bit k; so k is bounded by the highest differing bits.
    """
    k = bits
    if start > 0:
        k = min(k, (value ^ (start - 1)).bit_length() - 1)
    if end < 1 << bits:
        k = min(k, (value ^ end).bit_length() - 1)
    return bits - k


class ArrayOver:
    """An attribute that is a numpy array over one of its object's memoryviews (no copy): made
    the first time it is asked for, and kept in the object's `arrays` by its name. The view is
    the object's attribute `view`, or (None) its `columns[name]`. Answering reads the
    memoryviews; numpy comes in with the first array (an answer map's build, after binding)."""

    def __init__(self, dtype: str, view: str | None = None) -> None:
        self.dtype, self.view = dtype, view
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, owner_object: None, owner: type) -> ArrayOver: ...
    @overload
    def __get__(self, owner_object: object, owner: type | None = None) -> np.ndarray: ...
    def __get__(self, owner_object: Any, owner: type | None = None) -> Any:
        if owner_object is None:
            return self
        made: dict[str, np.ndarray] = owner_object.arrays
        array = made.get(self.name)
        if array is None:
            view = (
                owner_object.columns[self.name]
                if self.view is None
                else getattr(owner_object, self.view)
            )
            array = made[self.name] = np.frombuffer(view, dtype=self.dtype)
        return array


def merge(labels: np.ndarray, *starts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Drop every start whose label equals the previous block's: neighbours with one label
    become one block. Returns (*starts, labels) kept; IPv6 passes its two halves."""
    keep = np.ones(len(labels), dtype=bool)
    keep[1:] = labels[1:] != labels[:-1]
    return (*(s[keep] for s in starts), labels[keep])


class Runs4:
    """IPv4 blocks: starts (uint32, ascending, the first is 0) and an int32 label each.

    Two tables of the first 16 bits speed a lookup up. `_index[b]` counts the blocks that start
    at or before b.0.0, so a bisection only searches the blocks of one /16. And when a whole /16
    lies inside one block, `_whole[b]` holds that block's label and the widest prefix of any
    address in it (the same for all: a block wider than /16 is a union of whole /16s), so most
    lookups are one array read (answer maps merge runs by answer: their blocks are wide).
    """

    __slots__ = ("arrays", "_starts", "_labels", "_index", "_whole", "_count")

    def __init__(self, starts: np.ndarray, labels: np.ndarray, narrow: bool = False) -> None:
        """With `narrow` (answer maps, never saved), labels are kept in the narrowest integer
        type that holds them (see narrowest)."""
        bases = np.arange((1 << V4_INDEX_BITS) + 1, dtype=np.int64) << 16
        index = np.searchsorted(starts, bases, "right")
        whole = _whole_buckets(starts, labels, index, bases)
        labels = narrowest(labels) if narrow else labels.astype(np.int32, copy=False)
        self._set(
            _view(starts, np.uint32),
            _view(labels, labels.dtype),
            _view(index, np.uint32),
            _view(whole, np.int64),
        )
        self.arrays: dict[str, np.ndarray] = {"starts": starts, "labels": labels}

    @classmethod
    def mapped(
        cls, starts: memoryview, labels: memoryview, index: memoryview, whole: memoryview
    ) -> Runs4:
        """Runs from memoryviews of their arrays and of their two tables (`tables`), as a
        cached place index holds them: no numpy until an array is asked for. ValueError when
        the tables are not of their sizes."""
        if len(index) != (1 << V4_INDEX_BITS) + 1 or len(whole) != 1 << V4_INDEX_BITS:
            raise ValueError("IPv4 runs: tables of the wrong size")
        runs = object.__new__(cls)
        runs._set(starts, labels, index, whole)
        runs.arrays = {}
        return runs

    def _set(
        self, starts: memoryview, labels: memoryview, index: memoryview, whole: memoryview
    ) -> None:
        self._starts, self._labels, self._index, self._whole = starts, labels, index, whole
        self._count = len(starts)

    def views(self) -> tuple[memoryview, memoryview, memoryview, memoryview]:
        """The memoryviews `mapped` takes, in its order (to copy them into shared memory)."""
        return self._starts, self._labels, self._index, self._whole

    starts = ArrayOver("uint32", "_starts")
    labels = ArrayOver("int32", "_labels")
    index_table = ArrayOver("uint32", "_index")
    whole_table = ArrayOver("int64", "_whole")

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """The /16 tables (index, whole), as arrays to save beside the runs."""
        return self.index_table, self.whole_table

    def lookup(self, value: int) -> tuple[int, int]:
        """(label, prefix) of an IPv4 address given as an int."""
        top = value >> 16
        whole = self._whole[top]
        if whole:
            return (whole >> 8) - WHOLE_BIAS, whole & 0xFF
        starts, index = self._starts, self._index
        first = index[top]
        i = bisect_right(starts, value, first - 1 if first else 0, index[top + 1]) - 1
        # widest_prefix(value, start, end, 32) written out: most of a cold query's lookup was
        # the calls (this one, min's and max's), not the arithmetic
        start = starts[i]
        prefix = 33 - (value ^ (start - 1)).bit_length() if start else 0
        if i + 1 < self._count:
            bound = 33 - (value ^ starts[i + 1]).bit_length()
            if bound > prefix:
                prefix = bound
        return self._labels[i], prefix

    @property
    def nbytes(self) -> int:
        return self._starts.nbytes + self._labels.nbytes + 12 * ((1 << V4_INDEX_BITS) + 1)


class Runs6:
    """IPv6 blocks: starts as two uint64 halves (ascending as pairs), an int32 label each.

    A label at or below ALIAS_BASE marks IPv4 space seen through IPv6 (::/96, ::ffff:0:0/96,
    6to4, Teredo in MaxMind databases): ALIAS_BASE - label is the alias's prefix length P,
    and the 32 bits after it are the IPv4 address to look up.

    With `narrow` (answer maps, never saved), labels are kept in the narrowest integer type
    that holds them, and low halves only up to the last that is not zero: most databases'
    networks are /64 or wider, and but for a few blocks under ::/64 (IPv4 aliases) every block
    starts on a /64, so a block takes 9 bytes, not 20.
    """

    __slots__ = ("arrays", "_hi", "_lo", "_labels", "_count", "_kept_low")

    def __init__(
        self, hi: np.ndarray, lo: np.ndarray, labels: np.ndarray, narrow: bool = False
    ) -> None:
        labels = narrowest(labels) if narrow else labels.astype(np.int32, copy=False)
        if narrow:
            lo = lo[: int(np.flatnonzero(lo)[-1]) + 1 if lo.any() else 0].copy()  # (not a view)
        self._set(_view(hi, np.uint64), _view(lo, np.uint64), _view(labels, labels.dtype))
        self.arrays: dict[str, np.ndarray] = {"hi": hi, "labels": labels}
        if len(lo) == len(hi):
            self.arrays["lo"] = lo

    @classmethod
    def mapped(cls, hi: memoryview, lo: memoryview, labels: memoryview) -> Runs6:
        """Runs from memoryviews of their arrays (see Runs4.mapped)."""
        runs = object.__new__(cls)
        runs._set(hi, lo, labels)
        runs.arrays = {}
        return runs

    def _set(self, hi: memoryview, lo: memoryview, labels: memoryview) -> None:
        self._hi, self._lo, self._labels = hi, lo, labels
        self._count = len(labels)
        self._kept_low = len(lo)  # the blocks from this one on start on a /64

    def views(self) -> tuple[memoryview, memoryview, memoryview]:
        """The memoryviews `mapped` takes, in its order (see Runs4.views)."""
        return self._hi, self._lo, self._labels

    hi = ArrayOver("uint64", "_hi")
    lo = ArrayOver("uint64", "_lo")
    labels = ArrayOver("int32", "_labels")

    def lookup(self, value: int) -> tuple[int, int]:
        """(label, prefix) of an IPv6 address given as an int."""
        hi_view, lo_view, kept_low = self._hi, self._lo, self._kept_low
        hi = value >> 64
        upper = bisect_right(hi_view, hi)
        if upper > kept_low:  # the last block at or below hi starts on a /64: it holds value
            i = upper - 1
        else:
            lower = bisect_left(hi_view, hi, 0, upper)
            i = bisect_right(lo_view, value & 0xFFFFFFFFFFFFFFFF, lower, upper) - 1
            if i < lower:  # no block with this hi starts at or below lo: the last one before
                i = lower - 1
        start = hi_view[i] << 64 | (lo_view[i] if i < kept_low else 0)
        # widest_prefix(value, start, end, 128) written out, as in Runs4.lookup
        prefix = 129 - (value ^ (start - 1)).bit_length() if start else 0
        following = i + 1
        if following < self._count:
            end = hi_view[following] << 64 | (lo_view[following] if following < kept_low else 0)
            bound = 129 - (value ^ end).bit_length()
            if bound > prefix:
                prefix = bound
        return self._labels[i], prefix

    @property
    def nbytes(self) -> int:
        return self._hi.nbytes + self._lo.nbytes + self._labels.nbytes


WHOLE_BIAS = 1 << 33  # labels are stored biased in `_whole`, so any label packs non-zero


def _whole_buckets(
    starts: np.ndarray, labels: np.ndarray, index: np.ndarray, bases: np.ndarray
) -> np.ndarray:
    """Per /16: (label + WHOLE_BIAS) << 8 | prefix when the /16 lies inside one block, else 0."""
    buckets = 1 << V4_INDEX_BITS
    whole = np.zeros(buckets, dtype=np.int64)
    if len(starts) == 0:
        return whole
    base = bases[:buckets]
    first = index[:buckets] - 1  # the block holding each /16's first address
    # the /16 lies inside that block when no other block starts at or before its last address
    inside = np.searchsorted(starts, base + 0xFFFF, "right") == index[:buckets]
    starts64 = starts.astype(np.int64)
    block_start = starts64[first]
    following = np.minimum(first + 1, len(starts) - 1)
    block_end = np.where(first + 1 < len(starts), starts64[following], 1 << 32)
    low = np.where(block_start > 0, _bit_length(base ^ (block_start - 1)) - 1, 32)
    high = np.where(block_end < (1 << 32), _bit_length(base ^ block_end) - 1, 32)
    prefix = 32 - np.minimum(np.minimum(low, high), 32)
    packed = (labels.astype(np.int64)[first] + WHOLE_BIAS) << 8 | prefix
    whole[inside & (prefix <= 16)] = packed[inside & (prefix <= 16)]
    return whole


def narrowest(labels: np.ndarray) -> np.ndarray:
    """`labels` as int8, int16 or int32, the narrowest that holds them (an answer map's are
    answer ids and alias labels: a byte each for up to 127 answers)."""
    low, high = (int(labels.min()), int(labels.max())) if len(labels) else (0, 0)
    for kind in (np.int8, np.int16):
        limits = np.iinfo(kind)
        if limits.min <= low and high <= limits.max:
            return labels.astype(kind)
    return labels.astype(np.int32, copy=False)


def _bit_length(values: np.ndarray) -> np.ndarray:
    """int.bit_length of non-negative integers below 2**53, element-wise."""
    return np.where(values > 0, np.frexp(values.astype(np.float64))[1], 0)


def alias_prefix(label: int) -> int:
    """The prefix length of an IPv6 alias of IPv4 space, from its label."""
    return ALIAS_BASE - label


def alias_label(prefix: int) -> int:
    return ALIAS_BASE - prefix


def _view(array: np.ndarray, dtype: Any) -> memoryview:
    """A memoryview of `array` as `dtype` in native order: indexing it gives Python ints."""
    return np.ascontiguousarray(array, dtype=dtype).data

"""Address runs (geodns.geo.runs): a bisection, a table of whole /16s and the widest-prefix
arithmetic give, for every address, its block's label and the shortest prefix whose block
lies inside it; held to a brute-force reference on random runs."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from geodns.geo.runs import Runs4, Runs6, merge, widest_prefix


def reference(starts: list[int], labels: list[int], value: int, bits: int) -> tuple[int, int]:
    i = max(k for k, start in enumerate(starts) if start <= value)
    end = starts[i + 1] if i + 1 < len(starts) else 1 << bits
    for prefix in range(bits + 1):
        base = value >> (bits - prefix) << (bits - prefix)
        if base >= starts[i] and base + (1 << (bits - prefix)) <= end:
            return labels[i], prefix
    raise AssertionError("unreachable: the /bits block is inside")


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.integers(1, (1 << 32) - 1), max_size=40, unique=True),
    wide=st.lists(st.integers(1, (1 << 16) - 1), max_size=10, unique=True),
    seed=st.integers(0, 1 << 30),
)
def test_ipv4_lookups_match_the_reference(cuts: list[int], wide: list[int], seed: int) -> None:
    rng = random.Random(seed)
    starts = sorted({0, *cuts, *(w << 16 for w in wide)})  # some on /16 boundaries
    labels = [rng.randrange(-1, 4) for _ in starts]
    merged_starts, merged_labels = merge(
        np.array(labels, dtype=np.int32), np.array(starts, dtype=np.uint32)
    )
    ms, ml = merged_starts.tolist(), merged_labels.tolist()
    probes = (
        [rng.getrandbits(32) for _ in range(60)] + [s for s in ms] + [max(s - 1, 0) for s in ms]
    )
    for narrow in (False, True):  # (an answer map's labels: a byte each here)
        runs = Runs4(merged_starts, merged_labels, narrow=narrow)
        assert runs._labels.itemsize == (1 if narrow else 4)
        for value in probes:
            assert runs.lookup(value) == reference(ms, ml, value, 32), (narrow, hex(value))


@settings(max_examples=100, deadline=None)
@given(
    cuts=st.lists(st.integers(1, (1 << 128) - 1), max_size=30, unique=True),
    seed=st.integers(0, 1 << 30),
    on_64s=st.booleans(),
)
def test_ipv6_lookups_match_the_reference(cuts: list[int], seed: int, on_64s: bool) -> None:
    """Blocks anywhere, or (`on_64s`) starting on a /64 but a few under ::/64, as most
    databases' networks do: narrow runs (an answer map's) then keep the low halves of those few
    only, and answer the same."""
    rng = random.Random(seed)
    if on_64s:
        cuts = [c & ~((1 << 64) - 1) for c in cuts if c >> 64]
        cuts += [rng.getrandbits(64) | 1 for _ in range(rng.randrange(4))]  # under ::/64
    starts = sorted({0, *cuts, *(c & ~((1 << 64) - 1) for c in cuts[:5])})  # shared hi halves
    labels = [rng.randrange(-130, 3) for _ in starts]  # (alias labels go below -128)
    hi = np.array([s >> 64 for s in starts], dtype=np.uint64)
    lo = np.array([s & ((1 << 64) - 1) for s in starts], dtype=np.uint64)
    mh, mlo, ml = merge(np.array(labels, dtype=np.int32), hi, lo)
    merged = [int(h) << 64 | int(low) for h, low in zip(mh.tolist(), mlo.tolist(), strict=True)]
    probes = [rng.getrandbits(128) for _ in range(40)] + merged + [max(s - 1, 0) for s in merged]
    probes += [(s & ~((1 << 64) - 1)) | rng.getrandbits(64) for s in merged]  # within a /64
    probes += [rng.getrandbits(64) for _ in range(10)]  # under ::/64
    for narrow in (False, True):
        runs = Runs6(mh, mlo, ml, narrow=narrow)
        low = [i for i, half in enumerate(mlo.tolist()) if half]  # (on_64s: none)
        assert runs._kept_low == (low[-1] + 1 if low else 0) if narrow else len(mlo)
        assert runs._labels.itemsize == (
            2 if narrow and min(ml.tolist()) < -128 else 4 - 3 * narrow
        )
        for value in probes:
            assert runs.lookup(value) == reference(merged, ml.tolist(), value, 128), hex(value)


def test_widest_prefix_examples() -> None:
    assert widest_prefix(0x0A010203, 0x0A000000, 0x0B000000, 32) == 8  # 10.0.0.0/8
    assert widest_prefix(0x0A010203, 0, 1 << 32, 32) == 0
    assert widest_prefix(0x0A010203, 0x0A010203, 0x0A010204, 32) == 32

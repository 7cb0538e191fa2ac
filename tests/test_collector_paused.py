"""collector_paused (geodns.common.caching): no cyclic collection while a snapshot or an index
is built, and what the build made moved out of the youngest generation once it succeeded:
frozen in a process that keeps its heap frozen (the server), handed to the oldest generation
in any other, never both. Each case runs in an interpreter of its own: the collector's state
is the process's."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CASES = textwrap.dedent(
    """
    import gc, sys
    from geodns.common.caching import collector_paused, freeze_heap

    case = sys.argv[1]
    if case == "frozen-heap":
        freeze_heap()  # as the server's settle_heap leaves it
    frozen = gc.get_freeze_count()
    gc.collect()
    kept = []
    try:
        with collector_paused():
            kept.extend([i] for i in range(50_000))  # tracked objects that live on
            assert not gc.isenabled()
            if case == "failed":
                raise ValueError
    except ValueError:
        pass
    assert gc.isenabled()
    grew = gc.get_freeze_count() - frozen
    made = id(kept[0])  # (where it is: a generation, or frozen when in none)
    where = next((str(g) for g in (0, 1, 2) if made in {id(o) for o in gc.get_objects(g)}), "frozen")
    print(case, where, grew)
    """
)


def run(case: str) -> tuple[str, int]:
    """(where an object the build made is: its generation or "frozen", objects it froze)."""
    done = subprocess.run(
        [sys.executable, "-c", CASES, case], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    _, where, grew = done.stdout.split()
    return where, int(grew)


def test_a_build_hands_what_it_made_to_the_oldest_generation() -> None:
    assert run("plain") == ("2", 0)  # not left young, and not frozen


def test_a_build_in_a_process_that_keeps_its_heap_frozen_is_frozen_too() -> None:
    where, grew = run("frozen-heap")
    assert where == "frozen" and grew >= 50_000  # and the heap frozen before stays frozen


def test_a_failed_build_leaves_its_garbage_to_the_collector() -> None:
    where, grew = run("failed")
    assert where in ("0", "1") and grew == 0

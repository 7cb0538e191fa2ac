"""Answer maps: for one shape of dynamic record under one health view, the answer of every
address in the world, as runs of equal answers. One bisection per query gives the decision and
the widest ECS scope that is true for it.

gdnsd precomputes, per geo map, the ranked data centres of every database network and merges
neighbours with the same ranking. geodns goes one step further and merges by *answer*: the
place index (geodns.geo.index) already has runs of one place each; each place gets an answer
slot under the current health view, computed for all places at once with numpy; runs with the
same answer are merged. So the scope a resolver is given is the largest block in which every
address gets the same answer right now: never wider (a drained site's users get blocks of
their new answer, narrower or wider than before), and as wide as the database allows.

How a place's slot is found, without calling `evaluate` per place:
- the first rule whose geos match the place's codes (the distinct (continent, country,
  subdivision) codes are few: ~4,400 in a City database) gives its rule;
- under a catch-all rule of a `nearest` record, the first `answers` candidates that are up in
  the place's ranking (geodns.geo.ranking) give its nearest choice; when no candidate is up,
  the ranking as if all were up is kept too (`all_down: fail_open` answers by it);
- places with the same (rule, choice) are one slot, and one representative place per slot is
  decided by `evaluate()` itself: the map answers what the reference decision answers.

Records are grouped into shapes: the record with every target replaced by a placeholder of its
position. 10,000 names served by the same sites are one shape, so one map; a concrete record
turns the shape's placeholder answer into its own addresses by position. Records decided per
network (sticky, subnet rules) or not by place at all have no map.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
else:
    from geodns.geo import lazynumpy as np  # numpy once first used: see there

from geodns.geo.dynamic import (
    Candidate,
    Decision,
    DynamicRecord,
    Pool,
    Target,
    evaluate,
    rule_matches_place,
)
from geodns.geo.index import UNLOCATED, PlaceIndex
from geodns.geo.places import Place, Placement
from geodns.geo.ranking import rank
from geodns.geo.runs import ALIAS_BASE, Runs4, Runs6, alias_label, alias_prefix

RANK_DEPTH = 16  # nearest sites ranked per place ahead of time (deeper on demand)
RANKINGS_KEPT = 30 * 86400.0  # seconds a kept ranking no build used stays (see Rankings)
HALF_WRITTEN_KEPT = 3600.0  # seconds before a ranking's unfinished file (its writer killed) goes
RELABEL_CHUNK = 1 << 18  # blocks relabelled at a time (a few MB of temporaries)
LOWEST_LABEL = alias_label(128)  # the lowest label a place index holds (an IPv6 alias)
NO_PLACE = Placement(None, 4, 0, 0)


@dataclass(frozen=True, eq=False)
class Shape:
    """A record's decision structure without its addresses: records of one shape share maps.
    Shapes are made once per snapshot build and compared by identity on the query path; `key`
    (hashing it walks every candidate) only matches a new build's shapes with the old maps."""

    key: Hashable
    canonical: DynamicRecord  # targets' addresses replaced by "#<position>"


def shape_of(record: DynamicRecord) -> Shape | None:
    """The shape of a record decided by place alone, or None (per network, or not by place)."""
    if record.per_network or not record.depends_on_place:
        return None
    positions = {id(target): index for index, target in enumerate(record.targets())}

    def canon(target: Target) -> Target:
        return Target(f"#{positions[id(target)]}", target.site, target.weight, target.status)

    pools = {
        name: Pool(pool.name, tuple(canon(t) for t in pool.targets), *_pool_rest(pool))
        for name, pool in record.pools.items()
    }
    candidates = tuple(
        Candidate(
            c.name,
            c.latitude,
            c.longitude,
            tuple(canon(t) for t in c.targets),
            pools[c.pool.name] if c.pool is not None else None,
        )
        for c in record.candidates
    )
    canonical = DynamicRecord(
        owner="",
        rtype=record.rtype,
        ttl=0,
        values=tuple(canon(t) for t in record.values),
        pools=pools,
        rules=record.rules,
        nearest=record.nearest,
        candidates=candidates,
        answers=record.answers,
        default_order=record.default_order,
        all_down=record.all_down,
    )
    key = (
        canonical.values,
        tuple(sorted(pools.items())),
        tuple((r.number, r.pool, r.geos) for r in record.rules),
        record.nearest,
        candidates,
        record.answers,
        record.default_order,
        record.all_down,
    )
    return Shape(key, canonical)


def _pool_rest(pool: Pool) -> tuple[Any, ...]:
    return pool.fallback, pool.location, pool.site


@dataclass(frozen=True, eq=False)
class AnswerMap:
    """Which answer every address gets, for one shape under one health view.

    `answers[i]` is answer i's decision for the shape's canonical record (placeholder
    addresses) and the place that represents it (None: unlocated addresses).
    """

    shape: Shape
    runs4: Runs4
    runs6: Runs6 | None
    answers: tuple[tuple[Decision, int | None], ...]
    unlocated: int  # the answer id of addresses the database does not place
    down: frozenset[str]
    index: PlaceIndex
    build_seconds: float
    decisions: dict[DynamicRecord, list[Decision | None]] = field(default_factory=dict)
    # one Decision per answer id and values for all the records of the shape, by answer id
    # then by the values (the Decision's own tuple: no key of its own): a zone's many names of
    # one pool of addresses share it (10,000 such names held 1.3 MB of equal ones)
    shared: dict[int, dict[tuple[str, ...], Decision]] = field(default_factory=dict)

    def lookup(self, family: int, value: int) -> tuple[int, int]:
        """(answer id, ECS scope) of an address."""
        if family == 4:
            return self.runs4.lookup(value)
        return self.lookup6(value)

    def lookup6(self, value: int) -> tuple[int, int]:
        """(answer id, ECS scope) of an IPv6 address; IPv4 seen through an alias (::/96,
        ::ffff:0:0/96, 6to4, Teredo) answers as that IPv4 address, scoped in IPv6 terms."""
        if self.runs6 is None:
            return self.unlocated, 0
        label, prefix = self.runs6.lookup(value)
        if label > ALIAS_BASE:
            return label, prefix
        offset = alias_prefix(label)
        inner = (value >> (96 - offset)) & 0xFFFFFFFF if offset <= 96 else 0
        label, prefix4 = self.runs4.lookup(inner)
        return label, offset + prefix4

    def decision(self, record: DynamicRecord, answer: int) -> Decision:
        """A concrete record's decision for an answer id: the canonical one with the record's
        own addresses (memoised per record; bounded by the map's few answers)."""
        made = self.decisions.get(record)
        if made is None:
            made = self.decisions[record] = [None] * len(self.answers)
        decision = made[answer]
        if decision is None:
            canonical = self.answers[answer][0]
            targets = record.targets()
            values = tuple(targets[int(v[1:])].value for v in canonical.values)
            by_values = self.shared.get(answer)
            if by_values is None:
                by_values = self.shared[answer] = {}
            decision = by_values.get(values)
            if decision is None:
                decision = by_values[values] = Decision(
                    values,
                    0,
                    canonical.site,
                    canonical.rule,
                    servfail=canonical.servfail,
                    varies=canonical.varies,
                )
            made[answer] = decision
        return decision

    def placement(self, answer: int, family: int, value: int, prefix: int) -> Placement:
        """The placement `evaluate` needs to decide a varying answer per query: the answer's
        representative place, at the client's address."""
        place_id = self.answers[answer][1]
        place = self.index.place(place_id) if place_id is not None else None
        return Placement(place, family, value, prefix)

    @property
    def nbytes(self) -> int:
        return self.runs4.nbytes + (self.runs6.nbytes if self.runs6 is not None else 0)


class Rankings:
    """Per place index: the ranked candidates of every place, per set of candidate sites.

    With a `directory` (the map builder's: the place index's own cache entry) each matrix is
    also kept there as a file and mapped by the next build: ranking every place of a City
    database against 100 sites takes about a second, and a short-lived builder process would
    otherwise rank again at every health change (a second of a drain's maps, against 0.1 s for
    the build itself). A file that cannot be written or read is ranked again."""

    def __init__(self, index: PlaceIndex, directory: Path | None = None) -> None:
        self.index = index
        self.directory = directory
        self.matrices: dict[tuple[tuple[str, float, float], ...], np.ndarray] = {}

    def of(self, candidates: tuple[Candidate, ...], depth: int) -> np.ndarray:
        key = tuple((c.name, c.latitude, c.longitude) for c in candidates)
        wanted = min(depth, len(candidates))
        matrix = self.matrices.get(key)
        if matrix is None or matrix.shape[1] < wanted:
            depth = max(depth, RANK_DEPTH)
            path = self._file(key, depth)
            matrix = self._load(path, min(depth, len(candidates)))
            if matrix is None:
                matrix = rank(
                    self.index.latitude,
                    self.index.longitude,
                    [(c.latitude, c.longitude) for c in candidates],
                    [c.name for c in candidates],
                    depth,
                )
                self._save(path, matrix)
            self.matrices[key] = matrix
        return matrix

    def _file(self, key: tuple[tuple[str, float, float], ...], depth: int) -> Path | None:
        if self.directory is None:
            return None
        name = hashlib.sha256(repr((key, depth)).encode()).hexdigest()[:32]
        return self.directory / f"rank-{name}.npy"

    def _load(self, path: Path | None, columns: int) -> np.ndarray | None:
        if path is None:
            return None
        try:
            matrix = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if matrix.dtype != np.int16 or matrix.shape != (self.index.place_count, columns):
            return None
        with contextlib.suppress(OSError):  # used now: prune() keeps it
            os.utime(path)
        return matrix

    def prune(self, unused_for: float = RANKINGS_KEPT) -> None:
        """Remove the kept rankings no build has used for `unused_for` seconds (those of site
        sets the config no longer has; the place index's entry goes whole when unused), and
        the unfinished files of writers killed half-way (a stopping server kills its builder)
        once an hour old: a ranking is written in a second."""
        if self.directory is None:
            return
        now = time.time()
        with contextlib.suppress(OSError):
            for pattern, kept in (("rank-*.npy", unused_for), (".rank-*.npy.*", HALF_WRITTEN_KEPT)):
                for path in self.directory.glob(pattern):
                    with contextlib.suppress(OSError):
                        if path.stat().st_mtime < now - kept:
                            path.unlink()

    def _save(self, path: Path | None, matrix: np.ndarray) -> None:
        if path is None:
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            with temporary.open("wb") as handle:
                np.save(handle, matrix, allow_pickle=False)
            os.replace(temporary, path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()


def build_map(
    shape: Shape, index: PlaceIndex, rankings: Rankings, down: frozenset[str]
) -> AnswerMap:
    """The answer map of a shape under the health view `down` (tens of ms for a City index)."""
    started = time.perf_counter()
    record = shape.canonical
    slot_keys = _slot_keys(record, index, rankings, down)
    keys, representative, slot_of_place = np.unique(
        _row_codes(slot_keys), return_index=True, return_inverse=True
    )
    slot_of_place = slot_of_place.reshape(-1)
    answers: list[tuple[Decision, int | None]] = []
    answer_of: dict[tuple[Any, ...], int] = {}

    def answer_id(decision: Decision, place_id: int | None) -> int:
        merge_key = (
            decision.values,
            decision.site,
            decision.servfail,
            decision.varies,
            decision.rule if decision.varies else None,
        )
        found = answer_of.get(merge_key)
        if found is None:
            found = answer_of[merge_key] = len(answers)
            answers.append((decision, place_id))
        return found

    slot_answer = np.empty(len(keys), dtype=np.int32)
    for slot, place_id in enumerate(representative.tolist()):
        slot_answer[slot] = answer_id(
            representative_decision(record, index, place_id, down), place_id
        )
    # unlocated addresses: decided without a place; merged with a located answer when equal
    unlocated = answer_id(representative_decision(record, index, None, down), None)
    answer_of_place = slot_answer[slot_of_place]
    starts4, labels4 = _answer_runs(
        index.runs4.labels, answer_of_place, unlocated, index.runs4.starts
    )
    runs4 = Runs4(starts4, labels4, narrow=True)  # (a map is never saved: see Runs4)
    runs6 = None
    if index.runs6 is not None:
        hi, lo = index.runs6.hi, index.runs6.lo
        hi, lo, labels6 = _answer_runs(index.runs6.labels, answer_of_place, unlocated, hi, lo)
        runs6 = Runs6(hi, lo, labels6, narrow=True)
    seconds = time.perf_counter() - started
    return AnswerMap(shape, runs4, runs6, tuple(answers), unlocated, down, index, seconds)


def representative_decision(
    record: DynamicRecord, index: PlaceIndex, place_id: int | None, down: frozenset[str]
) -> Decision:
    """The decision for an answer's representative place (None: the unlocated addresses), as
    a map's build makes it, and as a worker makes it again for a map it is handed
    (geodns.geo.sharedmaps): the one way both decide."""
    placement = NO_PLACE if place_id is None else Placement(index.place(place_id), 4, 0, 0)
    return evaluate(record, placement, down, 0)


def _row_codes(rows: np.ndarray) -> np.ndarray:
    """One int64 per row, equal exactly when the rows are (values from -1 up, in a mixed
    radix), so rows are told apart by a 1-D sort rather than numpy's much slower row sort;
    rows too wide to fit 63 bits fall back to comparing whole rows."""
    base = int(rows.max(initial=0)) + 2
    if rows.shape[1] * math.log2(base) >= 62:
        return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)
    codes = np.zeros(len(rows), dtype=np.int64)
    for column in range(rows.shape[1]):
        codes = codes * base + (rows[:, column].astype(np.int64) + 1)
    return codes


def _answer_runs(
    labels: np.ndarray, answer_of_place: np.ndarray, unlocated: int, *starts: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The index's blocks (`starts`, `labels`) relabelled by answer and merged where neighbours
    get the same one: (*starts, labels) kept, as `merge` gives them. A block's answer is its
    place's, the unlocated addresses' for UNLOCATED, and an IPv6 alias label (ALIAS_BASE and
    below) stays as it is. Done a chunk of blocks at a time, through one table indexed by
    label: a City index has millions of blocks, and relabelling them all at once, then merging,
    made 30-50 MB of temporaries at every rebuild (the RSS of a soak jumped by that much for the
    second after each health change)."""
    offset = -LOWEST_LABEL  # table[label + offset] is the label's answer
    table = np.empty(offset + len(answer_of_place), dtype=np.int32)
    table[:offset] = np.arange(LOWEST_LABEL, 0, dtype=np.int32)  # alias labels: themselves
    table[offset + UNLOCATED] = unlocated
    table[offset:] = answer_of_place
    kept_starts: list[list[np.ndarray]] = [[] for _ in starts]
    kept_labels: list[np.ndarray] = [np.empty(0, dtype=np.int32)]
    previous: int | None = None  # the answer of the last block of the chunk before
    for begin in range(0, len(labels), RELABEL_CHUNK):
        end = begin + RELABEL_CHUNK
        part = np.asarray(labels[begin:end], dtype=np.int32) + offset
        if int(part.min()) < 0 or int(part.max()) >= len(table):  # as indexing would say
            raise IndexError("a place index's label outside its places")
        answers = np.take(table, part, mode="clip")  # (checked above; "raise" buffers)
        keep = np.empty(len(answers), dtype=bool)
        keep[0] = previous is None or int(answers[0]) != previous
        np.not_equal(answers[1:], answers[:-1], out=keep[1:])
        for kept, block_starts in zip(kept_starts, starts, strict=True):
            kept.append(block_starts[begin:end][keep])
        kept_labels.append(answers[keep])
        previous = int(answers[-1])
    return (
        *(np.concatenate([s[:0], *kept]) for s, kept in zip(starts, kept_starts, strict=True)),
        np.concatenate(kept_labels),
    )


def _slot_keys(
    record: DynamicRecord, index: PlaceIndex, rankings: Rankings, down: frozenset[str]
) -> np.ndarray:
    """One row per place: [rule, nearest choice under `down`..., choice if all up...], -1
    where a part does not apply. Places with equal rows get the same decision."""
    rule_of_code = np.array([_first_rule(record, codes) for codes in index.codes], dtype=np.int32)
    rule = rule_of_code[np.asarray(index.code)]
    columns = [rule[:, None]]
    if record.nearest and record.candidates:
        catch_all = np.array(
            [True] + [r.catch_all for r in record.rules], dtype=bool
        )  # index 0: no rule matched (a record without rules)
        nearest_places = catch_all[rule + 1]
        up = np.array([any(t.up(down) for t in c.targets) for c in record.candidates])
        want = min(record.answers, int(up.sum()))
        if want:
            columns.append(_first_up(rankings, record, up, want, nearest_places))
        else:  # nothing up: fail_open answers as if everything were up
            everything = np.ones(len(record.candidates), dtype=bool)
            choice = _first_up(rankings, record, everything, record.answers, nearest_places)
            columns.append(choice)
    return np.concatenate(columns, axis=1)


def _first_rule(record: DynamicRecord, codes: tuple[Any, ...]) -> int:
    """The index (from 0) of the first rule matching a place with these codes, -1 for none."""
    continent, country, subdivision = codes
    place = Place(continent, country, subdivision, None, 0.0, 0.0, "country")
    for number, rule in enumerate(record.rules):
        if rule_matches_place(rule, place):
            return number
    return -1


def _first_up(
    rankings: Rankings,
    record: DynamicRecord,
    up: np.ndarray,
    want: int,
    rows: np.ndarray,
) -> np.ndarray:
    """Per place: the first `want` candidates that are up in its ranking (-1 where `rows`
    is False, and -1 padding). Ranked deeper when the ranking ahead of time is too short."""
    count = len(record.candidates)
    down_count = int((~up).sum())
    depth = min(count, want + down_count)
    ranking = rankings.of(record.candidates, depth)[:, :depth]
    up_in_rank = up[ranking]
    first = np.argsort(~up_in_rank, axis=1, kind="stable")[:, :want]
    chosen = np.take_along_axis(ranking, first, axis=1).astype(np.int32)
    chosen[~rows] = -1
    return chosen

"""Answer maps built once, out of every serving process, and read by all from shared memory.

A map's arrays live in an anonymous memory file (memfd) sealed against any change: a child
process builds them (geodns.daemon.mapbuilder), copies each map into its own file and hands the
files to the main process over a socket pair (SCM_RIGHTS), with one more file listing them
(`MapNotice`s: what each holds, pickled; an order on a pipe stays a few bytes however many maps
there are, so it never fills the pipe's buffer). The main process maps each file read-only and
answers from it (`SharedMapsOut.receive_built`), and hands the same files on to its workers
over their pipes (`SharedMapsOut.update`), which map them as well (`SharedMapsIn`). Lookups read
a mapped map through memoryviews, as they read a cached place index (geodns.geo.runs). The
machine holds one copy of each map, and no serving process imports numpy.

A map is a pure function of (its shape, the health of its targets, the place index), so a
process takes a shared map exactly where it would have built that one: `still_valid_maps`
matches it by the shape's key, the states and the index (the digest here, then identity). Its
answers (a decision per answer id) are not shipped but decided again in each process from each
answer's representative place, by the build's own function (`representative_decision`).

Workers build no map: a record whose map has not arrived yet is decided per place (correct,
each place's own block as scope), as during any rebuild. Where a memory file cannot be made,
the main process builds its maps itself, says so, and every worker builds its own.
"""

from __future__ import annotations

import fcntl
import functools
import itertools
import mmap
import operator
import os
import pickle
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

from geodns.geo.answers import AnswerMap, Shape, representative_decision
from geodns.geo.index import PlaceIndex
from geodns.geo.runs import Runs4, Runs6

ALIGN = 8  # each array starts on a multiple of this many bytes
# no more writes, growing, shrinking or seals (Linux's flags; elsewhere 0, and sealed_file
# refuses: workers then build their own maps)
SEALS = functools.reduce(
    operator.or_,
    (getattr(fcntl, f"F_SEAL_{seal}", 0) for seal in ("SEAL", "SHRINK", "GROW", "WRITE")),
)
RUNS4_PARTS = 4  # Runs4.views(): starts, labels, /16 index, /16 whole labels
Part = tuple[int, int, str]  # (offset, bytes, memoryview format)


@dataclass(frozen=True, slots=True)
class MapNotice:
    """What a process is told of one shared map (pickled in a set's listing; the file goes
    beside)."""

    token: int  # the sender's number for the map: a worker maps each file once
    shape: Shape
    down: frozenset[str]  # the health view it was built under
    digest: str  # its place index's
    size: int  # bytes of the file
    parts: tuple[Part, ...]  # Runs4.views(), then Runs6.views() if any
    representatives: tuple[int | None, ...]  # answer id -> the place id that decided it
    unlocated: int


def sharing_supported() -> bool:
    """Whether this system makes sealed memory files (Linux's memfd with seals)."""
    return hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS")


def sealed_file(name: str, size: int, chunks: Iterable[tuple[memoryview, int]]) -> int:
    """A memory file of `size` bytes holding each (bytes, offset) chunk, sealed against any
    change: its descriptor (OSError where the system has no memfd or sealing)."""
    if not sharing_supported():
        raise OSError("no sealed memory files (memfd) on this system")
    descriptor = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(descriptor, size)
        for data, offset in chunks:
            while data:
                written = os.pwrite(descriptor, data, offset)
                data, offset = data[written:], offset + written
        fcntl.fcntl(descriptor, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def publish(answer_map: AnswerMap, token: int) -> tuple[MapNotice, int]:
    """A sealed memory file holding the map's arrays, and its notice: (notice, descriptor)."""
    views = list(answer_map.runs4.views())
    if answer_map.runs6 is not None:
        views += answer_map.runs6.views()
    parts: list[Part] = []
    size = 0
    for view in views:
        parts.append((size, view.nbytes, view.format))
        size += -(-view.nbytes // ALIGN) * ALIGN
    chunks = [(view.cast("B"), offset) for view, (offset, _, _) in zip(views, parts, strict=True)]
    descriptor = sealed_file("geodns-answer-map", size, chunks)
    notice = MapNotice(
        token,
        answer_map.shape,
        answer_map.down,
        answer_map.index.digest,
        size,
        tuple(parts),
        tuple(place_id for _, place_id in answer_map.answers),
        answer_map.unlocated,
    )
    return notice, descriptor


def publish_set(maps: Iterable[AnswerMap]) -> list[int]:
    """Sealed files for `maps`: the listing, then one per map (tokens from 1), as a builder
    child hands them to the main process (OSError: they cannot be made; none stays open)."""
    notices: list[MapNotice] = []
    descriptors: list[int] = []
    try:
        for token, answer_map in enumerate(maps, 1):
            notice, descriptor = publish(answer_map, token)
            notices.append(notice)
            descriptors.append(descriptor)
        return [write_listing(notices), *descriptors]
    except BaseException:
        for descriptor in descriptors:
            os.close(descriptor)
        raise


def write_listing(notices: list[MapNotice]) -> int:
    """The sealed file listing the shared maps (their notices, pickled)."""
    data = memoryview(pickle.dumps(notices, pickle.HIGHEST_PROTOCOL))
    return sealed_file("geodns-answer-maps", len(data), [(data, 0)])


def read_listing(descriptor: int) -> list[MapNotice]:
    """The notices of a listing file (from the main process of this server, over its private
    pipe: the only writer of what is unpickled here)."""
    size = os.fstat(descriptor).st_size
    data = bytearray()
    while len(data) < size:
        chunk = os.pread(descriptor, size - len(data), len(data))
        if not chunk:
            raise ValueError("answer-map listing cut short")
        data += chunk
    notices = pickle.loads(data)
    if not isinstance(notices, list) or not all(isinstance(n, MapNotice) for n in notices):
        raise ValueError("not an answer-map listing")
    return notices


def open_set(descriptors: list[int]) -> tuple[list[MapNotice], list[int]]:
    """The notices and map files of a set as publish_set and SharedMapsOut.update give it (the
    listing, then one file per map). The listing is closed; the files are the caller's, but on
    an error (ValueError: not such a set) they are closed too."""
    files = descriptors[1:]
    try:
        notices = read_listing(descriptors[0]) if descriptors else []
        if len(files) != len(notices):
            raise ValueError(f"{len(notices)} answer maps listed, {len(files)} files")
    except BaseException:
        for descriptor in files:
            os.close(descriptor)
        raise
    finally:
        if descriptors:
            os.close(descriptors[0])
    return notices, files


def adopt(notice: MapNotice, memory: mmap.mmap, index: PlaceIndex) -> AnswerMap:
    """The shared map over `memory` (its file, mapped read-only), for the worker's `index`
    (the same digest): runs from memoryviews, answers decided again."""
    whole = memoryview(memory)
    views = [
        whole[offset : offset + length].cast(form)  # type: ignore[call-overload]  # (a str)
        for offset, length, form in notice.parts
    ]
    starts, labels, index_table, whole_table = views[:RUNS4_PARTS]
    runs4 = Runs4.mapped(starts, labels, index_table, whole_table)
    runs6 = Runs6.mapped(*views[RUNS4_PARTS:]) if len(views) > RUNS4_PARTS else None
    record = notice.shape.canonical
    answers = tuple(
        (representative_decision(record, index, place_id, notice.down), place_id)
        for place_id in notice.representatives
    )
    return AnswerMap(notice.shape, runs4, runs6, answers, notice.unlocated, notice.down, index, 0.0)


class SharedMapsOut:
    """The main process's side: the files of the maps it serves, received from the builder
    child (or, for a map it built itself, made here when the workers need it), kept open to
    hand to the workers while their map serves, and closed when it leaves."""

    def __init__(self) -> None:
        self.tokens = itertools.count(1)
        # id(map's IPv4 runs) -> (those runs, notice, descriptor): the runs object is what a
        # kept map shares with its copies (still_valid_maps replaces the shape, not the runs)
        self.files: dict[int, tuple[Runs4, MapNotice, int]] = {}
        self.listing: int | None = None
        self.lock = threading.Lock()  # maps received in build threads, shared on the loop

    def receive_built(self, descriptors: list[int], index: PlaceIndex) -> dict[Shape, AnswerMap]:
        """The maps of a builder child's files (geodns.daemon.mapbuilder: the listing, then one
        per map), mapped read-only on `index` (the one they were built on); their files stay
        open here until `update` finds their maps out of service (ValueError: not such a set,
        OSError: a file that cannot be mapped; then none stays open)."""
        notices, files = open_set(descriptors)
        adopted: list[tuple[AnswerMap, MapNotice, int]] = []
        try:
            for notice, descriptor in zip(notices, files, strict=True):
                memory = mmap.mmap(descriptor, notice.size, prot=mmap.PROT_READ)
                with self.lock:
                    notice = replace(notice, token=next(self.tokens))  # this process's number
                adopted.append((adopt(notice, memory, index), notice, descriptor))
        except BaseException:  # all or none: every file closed (a map made is dropped)
            for descriptor in files:
                os.close(descriptor)
            raise
        with self.lock:
            for answer_map, notice, descriptor in adopted:
                self.files[id(answer_map.runs4)] = (answer_map.runs4, notice, descriptor)
        return {answer_map.shape: answer_map for answer_map, _, _ in adopted}

    def update(self, maps: Iterable[AnswerMap], share: bool = True) -> list[int]:
        """Keep the files of `maps`, the maps now in service, and close the others; with
        `share`, the files to hand the workers: the listing, then one per map (a map this
        process built itself gets its file now; open until the next update; OSError: it
        cannot be made). Without workers nothing is shared: []."""
        with self.lock:
            current: dict[int, tuple[Runs4, MapNotice, int]] = {}
            try:
                for answer_map in maps:
                    key = id(answer_map.runs4)
                    held = self.files.get(key) or current.get(key)
                    if held is None or held[0] is not answer_map.runs4:
                        if not share:
                            continue
                        notice, descriptor = publish(answer_map, next(self.tokens))
                        held = (answer_map.runs4, notice, descriptor)
                    current[key] = held
            finally:
                kept = {held[2] for held in current.values()}
                for _, _, descriptor in self.files.values():
                    if descriptor not in kept:
                        os.close(descriptor)
                self.files = current
            if not share:
                return []
            listing = write_listing([notice for _, notice, _ in current.values()])
            if self.listing is not None:
                os.close(self.listing)
            self.listing = listing
            return [listing, *(descriptor for _, _, descriptor in current.values())]

    def close(self) -> None:
        with self.lock:
            for _, _, descriptor in self.files.values():
                os.close(descriptor)
            if self.listing is not None:
                os.close(self.listing)
            self.files, self.listing = {}, None


class SharedMapsIn:
    """A worker's side: the main process's maps in service, mapped, and adopted per index."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # received on the event loop, adopted in build threads
        self.mapped: dict[int, tuple[MapNotice, mmap.mmap]] = {}
        self.adopted: dict[int, AnswerMap] = {}  # by token

    def receive(self, descriptors: list[int]) -> None:
        """The main process's new set, as SharedMapsOut.update gave it (what is not in it is
        dropped: the main process no longer serves it); each file is mapped once, and every
        descriptor closed (ValueError: not such a set)."""
        notices, files = open_set(descriptors)
        with self.lock:
            mapped: dict[int, tuple[MapNotice, mmap.mmap]] = {}
            try:
                for notice, descriptor in zip(notices, files, strict=True):
                    held = self.mapped.get(notice.token)
                    if held is None:
                        memory = mmap.mmap(descriptor, notice.size, prot=mmap.PROT_READ)
                        held = (notice, memory)
                    mapped[notice.token] = held
            finally:  # mapped or not (a failed mmap: this set is dropped whole), none stays open
                for descriptor in files:
                    os.close(descriptor)
            self.mapped = mapped
            self.adopted = {t: m for t, m in self.adopted.items() if t in mapped}

    def for_index(self, index: PlaceIndex | None) -> dict[Shape, AnswerMap]:
        """The shared maps built on `index` (by digest), as maps of that index object."""
        if index is None:
            return {}
        found: dict[Shape, AnswerMap] = {}
        with self.lock:
            for token, (notice, memory) in self.mapped.items():
                if notice.digest != index.digest:
                    continue
                answer_map = self.adopted.get(token)
                if answer_map is None or answer_map.index is not index:
                    answer_map = self.adopted[token] = adopt(notice, memory, index)
                found[answer_map.shape] = answer_map
        return found

"""The place index: every network of a GeoIP database, merged into runs of one place each,
built once per database and shared by every process through a cache file.

A query must not pay for the database's shape: a search-tree walk and a record decode per new
network cost tens of microseconds and a copy of the tree per process. So, once per database
file (its SHA-256), the whole tree is walked level by level with numpy, every distinct record
is decoded once into a place, neighbouring networks with the same place are merged, and the
result is written to a cache directory as plain arrays (.npy) plus a small JSON table of places.
Every process maps those files read-only: one copy per machine, in the page cache. A restart or
a reload with the same database loads it in milliseconds, and without numpy: the files are
mapped and read as memoryviews (`_mapped`), which is all answering needs; numpy arrays over
them are made when an answer map is built, after the server binds (80 ms of imports less
before a restart's first answer).

Places are stored as columns (latitude, longitude, an index into a table of distinct
(continent, country, subdivision) codes, a city name index, a precision flag), and `Place`
objects are made only when the slow path or `geodns explain` asks for one.

IPv4 inside an IPv6 tree (::/96) and its MaxMind aliases (::ffff:0:0/96, 6to4, Teredo) become
alias runs of the IPv6 table, looked up in the IPv4 runs (geodns.geo.runs).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import ipaddress
import json
import mmap
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
else:
    from geodns.geo import lazynumpy as np  # numpy once first used: see there

from geodns.common.caching import collector_paused
from geodns.geo.codes import CONTINENT_OF
from geodns.geo.database import GeoDatabase
from geodns.geo.mmdbtree import unpack_children
from geodns.geo.places import COUNTRY_POINTS, Place, Placement
from geodns.geo.runs import ArrayOver, Runs4, Runs6, alias_label, alias_prefix, merge

FORMAT = 2  # bump when what the cache files hold, or how places are read, changes
UNLOCATED = -1


COLUMNS = {  # a place index's columns, by name, and their numpy types
    "latitude": "float64",
    "longitude": "float64",
    "code": "int32",
    "city": "int32",
    "precision": "int8",
}
COLUMN_FILES = {  # ... and the cache file (.npy) each is saved in
    "latitude": "lat",
    "longitude": "lon",
    "code": "code",
    "city": "city",
    "precision": "precision",
}


@dataclass(frozen=True, eq=False)
class PlaceIndex:
    """Where every address is: runs of place ids, and the places' columns (COLUMNS: latitude,
    longitude, `code` an index into `codes`, `city` one into `cities` or -1, `precision` 1 for
    city coordinates, 0 for a country's point), as memoryviews (what answering reads) and as
    numpy arrays made over them when first asked for (`latitude`...)."""

    runs4: Runs4
    runs6: Runs6 | None
    columns: dict[str, memoryview]  # by COLUMNS' names
    codes: tuple[tuple[str | None, str | None, str | None], ...]  # continent, country, subdiv.
    cities: tuple[str, ...]
    database_type: str
    build_epoch: int
    digest: str
    build_seconds: float
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # made from `columns`
    mappings: tuple[mmap.mmap, ...] = ()  # the cache files it is read from (a loaded index)
    directory: Path | None = None  # the cache directory it was loaded from (a loaded index)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_places", {})

    latitude = ArrayOver(COLUMNS["latitude"])
    longitude = ArrayOver(COLUMNS["longitude"])
    code = ArrayOver(COLUMNS["code"])
    city = ArrayOver(COLUMNS["city"])
    precision = ArrayOver(COLUMNS["precision"])

    @property
    def place_count(self) -> int:
        return len(self.columns["latitude"])

    def place(self, place_id: int) -> Place | None:
        """The Place of an id (made once, then kept: the slow path keys memos by identity)."""
        if place_id < 0:
            return None
        made: dict[int, Place] = self._places  # type: ignore[attr-defined]
        found = made.get(place_id)
        if found is None:
            columns = self.columns
            continent, country, subdivision = self.codes[columns["code"][place_id]]
            city = columns["city"][place_id]
            found = made[place_id] = Place(
                continent,
                country,
                subdivision,
                self.cities[city] if city >= 0 else None,
                float(columns["latitude"][place_id]),
                float(columns["longitude"][place_id]),
                "city" if columns["precision"][place_id] else "country",
            )
        return found

    def label(self, family: int, value: int) -> tuple[int, int, int, int]:
        """(place id or UNLOCATED, prefix of its run, family, address) of one address, with
        IPv6 aliases of IPv4 space resolved to the IPv4 address they carry."""
        if family == 4:
            label, prefix = self.runs4.lookup(value)
            return label, prefix, 4, value
        if self.runs6 is None:
            return UNLOCATED, 0, 6, value
        label, prefix = self.runs6.lookup(value)
        if label >= UNLOCATED:
            return label, prefix, 6, value
        offset = alias_prefix(label)
        inner = (value >> (96 - offset)) & 0xFFFFFFFF if offset <= 96 else 0
        label, prefix4 = self.runs4.lookup(inner)
        return label, offset + prefix4, 4, inner

    def locate(self, family: int, value: int) -> Placement:
        """The Placement of an address: its place and the widest prefix with the same place.
        An IPv4-mapped address is placed as its IPv4 address, with IPv4 prefix lengths."""
        if family == 6 and value >> 32 == 0xFFFF:
            family, value = 4, value & 0xFFFFFFFF
        place_id, prefix, _, _ = self.label(family, value)
        return Placement(self.place(place_id), family, value, prefix)

    def release_pages(self) -> None:
        """Tell the kernel this process is done with the cache files' pages for now.

        Building an answer map reads the whole index, and every page it read then counts in
        the process's resident memory (21 MB of the synthetic City database's, more of a
        real one's) though queries never read them again: a map answers from its own arrays.
        madvise(MADV_DONTNEED) on a read-only file mapping only unmaps them: they stay in
        the page cache, shared by every process and reclaimable, and the next read (a map
        built again after a health change, `explain`, a place decided on the slow path)
        maps them back without reading the disk unless the kernel reclaimed them. gdnsd
        does the like: it closes its database once its maps are built."""
        advice: int | None = getattr(mmap, "MADV_DONTNEED", None)  # not on every system
        if advice is None:
            return
        for mapping in self.mappings:
            with contextlib.suppress(OSError, ValueError):  # closed, or refused: no harm
                mapping.madvise(advice)

    @property
    def nbytes(self) -> int:
        runs6 = self.runs6.nbytes if self.runs6 is not None else 0
        return self.runs4.nbytes + runs6 + sum(c.nbytes for c in self.columns.values())


def columns_of(arrays: dict[str, np.ndarray]) -> dict[str, memoryview]:
    """Memoryviews of the COLUMNS arrays (contiguous, of their types)."""
    return {
        name: np.ascontiguousarray(arrays[name], dtype=kind).data for name, kind in COLUMNS.items()
    }


# -- building ----------------------------------------------------------------------------------


def build_index(database: GeoDatabase) -> PlaceIndex:
    """Walk the database's whole tree and decode each distinct record once (seconds for a
    City database, milliseconds for a country one)."""
    started = time.perf_counter()
    node_count = database.node_count
    children = np.frombuffer(
        unpack_children(database.data, node_count, database.record_size), dtype=np.uint32
    ).reshape(node_count, 2)
    if database.ip_version == 6:
        ipv4_root = _descend_zeros(children, node_count, 96)
        v4 = _leaves(children, node_count, ipv4_root, 32, None) if ipv4_root < node_count else None
        v6 = _leaves(children, node_count, 0, 128, ipv4_root if ipv4_root < node_count else None)
    else:
        v4, v6 = _leaves(children, node_count, 0, 32, None), None
    if v4 is None:  # the whole IPv4 space is one leaf of the IPv6 tree
        v4 = (np.zeros((1, 2), dtype=np.uint64), np.array([ipv4_root], dtype=np.int64))
    values = [v4[1]] + ([v6[1]] if v6 is not None else [])
    with collector_paused():  # decoding makes millions of dicts: the collector only slows it
        record_values, place_of_value, table = _decode(database, v4, v6, np.concatenate(values))
    labels4 = _label(v4[1], record_values, place_of_value, node_count)
    starts4 = v4[0][:, 1].astype(np.uint32)
    order = np.argsort(starts4, kind="stable")
    merged_starts, merged_labels = merge(labels4[order], starts4[order])
    runs4 = Runs4(merged_starts, merged_labels)
    runs6 = None
    if v6 is not None:
        labels6 = _label(v6[1], record_values, place_of_value, node_count)
        order = np.lexsort((v6[0][:, 1], v6[0][:, 0]))
        hi, lo, merged_labels = merge(labels6[order], v6[0][order, 0], v6[0][order, 1])
        runs6 = Runs6(hi, lo, merged_labels)
    columns = {name: table.pop(name) for name in COLUMNS}
    return PlaceIndex(
        runs4=runs4,
        runs6=runs6,
        columns=columns_of(columns),
        codes=table["codes"],
        cities=table["cities"],
        database_type=database.database_type,
        build_epoch=database.build_epoch,
        digest=database.digest,
        build_seconds=time.perf_counter() - started,
        arrays=columns,
    )


def _descend_zeros(children: np.ndarray, node_count: int, depth: int) -> int:
    node = 0
    for _ in range(depth):
        if node >= node_count:
            break
        node = int(children[node, 0])
    return node


def _leaves(
    children: np.ndarray, node_count: int, root: int, bits: int, alias_of: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Every leaf under `root`: ([hi, lo] start rows as uint64, raw record values), where a
    raw value is node_count (empty), above it (a record) or alias_label(depth) (an edge to
    the IPv4 subtree, in an IPv6 walk). Level by level, each level one numpy step."""
    nodes = np.array([root], dtype=np.int64)
    hi = np.zeros(1, dtype=np.uint64)
    lo = np.zeros(1, dtype=np.uint64)
    found_starts: list[np.ndarray] = []
    found_values: list[np.ndarray] = []
    if root >= node_count:
        return np.zeros((1, 2), dtype=np.uint64), np.array([root], dtype=np.int64)
    for depth in range(bits):
        kids = children[nodes].astype(np.int64)  # shape (n, 2)
        bit = bits - 1 - depth  # the bit a right turn sets
        right_hi, right_lo = hi.copy(), lo.copy()
        if bits == 128 and bit >= 64:
            right_hi |= np.uint64(1) << np.uint64(bit - 64)
        else:
            right_lo |= np.uint64(1) << np.uint64(bit)
        all_nodes = kids.ravel()
        all_hi = np.stack([hi, right_hi], axis=1).ravel()
        all_lo = np.stack([lo, right_lo], axis=1).ravel()
        leaf = all_nodes >= node_count
        if alias_of is not None:
            alias = all_nodes == alias_of
            if alias.any():
                found_starts.append(np.stack([all_hi[alias], all_lo[alias]], axis=1))
                found_values.append(np.full(int(alias.sum()), alias_label(depth + 1)))
            internal = ~leaf & ~alias
        else:
            internal = ~leaf
        if leaf.any():
            found_starts.append(np.stack([all_hi[leaf], all_lo[leaf]], axis=1))
            found_values.append(all_nodes[leaf])
        nodes, hi, lo = all_nodes[internal], all_hi[internal], all_lo[internal]
        if len(nodes) == 0:
            break
    if len(nodes):  # deeper than the address: a malformed tree
        raise ValueError("search tree deeper than the address length")
    return np.concatenate(found_starts), np.concatenate(found_values)


def _decode(
    database: GeoDatabase,
    v4: tuple[np.ndarray, np.ndarray],
    v6: tuple[np.ndarray, np.ndarray] | None,
    all_values: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Decode every distinct record once: (sorted record values, place id per value, columns)."""
    node_count = database.node_count
    records, first = np.unique(all_values[all_values > node_count], return_index=True)
    count4 = len(v4[1])
    located = all_values > node_count
    positions = np.flatnonzero(located)[first]  # where each record first appears
    rows: dict[tuple[Any, ...], int] = {}
    codes: dict[tuple[Any, ...], int] = {}
    cities: dict[str, int] = {}
    lat: list[float] = []
    lon: list[float] = []
    code: list[int] = []
    city: list[int] = []
    precision: list[int] = []
    place_of_value = np.empty(len(records), dtype=np.int32)
    for i, position in enumerate(positions.tolist()):
        if position < count4:
            address: Any = ipaddress.IPv4Address(int(v4[0][position, 1]))
        else:
            assert v6 is not None
            hi, lo = v6[0][position - count4]
            address = ipaddress.IPv6Address(int(hi) << 64 | int(lo))
        place = database.place_at(address)
        if place is None:
            place_of_value[i] = UNLOCATED
            continue
        row = rows.get(place.key)
        if row is None:
            row = rows[place.key] = len(lat)
            codes_key = (place.continent, place.country, place.subdivision)
            code.append(codes.setdefault(codes_key, len(codes)))
            city.append(cities.setdefault(place.city, len(cities)) if place.city else -1)
            lat.append(place.latitude)
            lon.append(place.longitude)
            precision.append(1 if place.precision == "city" else 0)
        place_of_value[i] = row
    table = {
        "latitude": np.array(lat, dtype=np.float64),
        "longitude": np.array(lon, dtype=np.float64),
        "code": np.array(code, dtype=np.int32),
        "city": np.array(city, dtype=np.int32),
        "precision": np.array(precision, dtype=np.int8),
        "codes": tuple(codes),
        "cities": tuple(cities),
    }
    return records, place_of_value, table


def _label(
    values: np.ndarray, records: np.ndarray, place_of_value: np.ndarray, node_count: int
) -> np.ndarray:
    """Raw leaf values -> labels: place ids, UNLOCATED for empty leaves, aliases kept."""
    labels = np.full(len(values), UNLOCATED, dtype=np.int32)
    is_record = values > node_count
    labels[is_record] = place_of_value[np.searchsorted(records, values[is_record])]
    is_alias = values < 0
    labels[is_alias] = values[is_alias]
    return labels


# -- the cache directory -----------------------------------------------------------------------


def reading_fingerprint() -> str:
    """What decides an index's places besides the database's bytes: octoDNS's continent of
    each country (geodns/geo/codes_table.py) and the countries' representative points
    (geodns/data/country_points.csv). Both are in the cache key, so an index read under other
    tables (an older geodns, or a newer octoDNS table) is built anew rather than served: such an
    index placed a user in Cyprus in EU, where octoDNS, and so every rule, says AS."""
    digest = hashlib.sha256(repr(sorted(CONTINENT_OF.items())).encode())
    with contextlib.suppress(OSError):
        digest.update(COUNTRY_POINTS.read_bytes())
    return digest.hexdigest()[:12]


INDEX_PREFIX = "geo-index-"  # the name of every cached index's directory starts so


def cache_key(digest: str) -> str:
    return f"{INDEX_PREFIX}v{FORMAT}-{reading_fingerprint()}-{digest[:32]}"


def holds_indexes(directory: Path) -> bool:
    """Whether the cache directory holds any index (of any database): without one, nothing
    needs a database's digest to be looked up."""
    try:
        return any(path.name.startswith(INDEX_PREFIX) for path in directory.iterdir())
    except OSError:
        return False


def save_index(index: PlaceIndex, directory: Path) -> Path:
    """Write the index under `directory` atomically (a temp dir renamed into place)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    final = directory / cache_key(index.digest)
    temp = Path(tempfile.mkdtemp(prefix=".building-", dir=directory))
    try:
        v4_index, v4_whole = index.runs4.tables()
        arrays = {
            "v4_starts": index.runs4.starts,
            "v4_labels": index.runs4.labels,
            "v4_index": v4_index,
            "v4_whole": v4_whole,
            **{file: getattr(index, name) for name, file in COLUMN_FILES.items()},
        }
        if index.runs6 is not None:
            arrays["v6_hi"] = index.runs6.hi
            arrays["v6_lo"] = index.runs6.lo
            arrays["v6_labels"] = index.runs6.labels
        for name, array in arrays.items():
            np.save(temp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        meta = {
            "format": FORMAT,
            "digest": index.digest,
            "database_type": index.database_type,
            "build_epoch": index.build_epoch,
            "build_seconds": index.build_seconds,
            "codes": index.codes,
            "cities": index.cities,
        }
        (temp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        for path in temp.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        try:
            os.rename(temp, final)
        except OSError:  # another process saved the same index first: keep theirs
            shutil.rmtree(temp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final


def load_index(directory: Path, digest: str) -> PlaceIndex | None:
    """The cached index of a database, mapped read-only; None when absent or unreadable."""
    path = directory / cache_key(digest)
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("digest") != digest:
            return None

        mappings: list[mmap.mmap] = []

        def array(name: str) -> memoryview:
            view = _mapped(path / f"{name}.npy")
            if isinstance(view.obj, mmap.mmap):
                mappings.append(view.obj)
            return view

        runs6 = None
        if (path / "v6_labels.npy").exists():
            runs6 = Runs6.mapped(array("v6_hi"), array("v6_lo"), array("v6_labels"))
        runs4 = Runs4.mapped(
            array("v4_starts"), array("v4_labels"), array("v4_index"), array("v4_whole")
        )
        columns = {name: array(file) for name, file in COLUMN_FILES.items()}
        with contextlib.suppress(OSError):  # used now: prune_cache keeps it
            os.utime(path)
        return PlaceIndex(
            runs4=runs4,
            runs6=runs6,
            columns=columns,
            codes=tuple((c[0], c[1], c[2]) for c in meta["codes"]),
            cities=tuple(meta["cities"]),
            database_type=meta["database_type"],
            build_epoch=int(meta["build_epoch"]),
            digest=digest,
            build_seconds=float(meta["build_seconds"]),
            mappings=tuple(mappings),
            directory=directory,
        )
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        return None


# numpy's type strings of the arrays an index saves -> memoryview formats of this machine's order
_BYTE_ORDER = "<" if sys.byteorder == "little" else ">"
_FORMATS = {
    f"{_BYTE_ORDER}f8": "d",
    f"{_BYTE_ORDER}i4": "i",
    f"{_BYTE_ORDER}u4": "I",
    f"{_BYTE_ORDER}i8": "q",
    f"{_BYTE_ORDER}u8": "Q",
    "|i1": "b",
}


def _mapped(path: Path) -> memoryview:
    """A one-dimensional .npy file (as numpy.save writes it) mapped read-only, as a memoryview
    of its values: numpy's format read by hand, so that loading an index imports no numpy.
    ValueError when the file is not such an array of a type above."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    view = memoryview(mapping)
    if bytes(view[:6]) != b"\x93NUMPY":
        raise ValueError(f"{path.name}: not a .npy file")
    if view[6] == 1:
        start, length = 10, int.from_bytes(view[8:10], "little")
    elif view[6] in (2, 3):
        start, length = 12, int.from_bytes(view[8:12], "little")
    else:
        raise ValueError(f"{path.name}: .npy version {view[6]}")
    header = ast.literal_eval(bytes(view[start : start + length]).decode("latin-1"))
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: no .npy header")
    kind = _FORMATS.get(str(header.get("descr")))
    shape = header.get("shape")
    if (
        kind is None
        or header.get("fortran_order")
        or not isinstance(shape, tuple)
        or len(shape) != 1
    ):
        raise ValueError(f"{path.name}: not a one-dimensional array geodns saved")
    data = start + length
    end = data + struct.calcsize(kind) * shape[0]
    if end > len(view):
        raise ValueError(f"{path.name}: cut short")
    return view[data:end].cast(kind)  # type: ignore[call-overload]


UNUSED_DAYS = 30  # a cached index no server has loaded for this long is removed
STALE_BUILD_DAYS = 1  # a build directory left this long is a dead build's


def prune_cache(directory: Path, now: float | None = None) -> int:
    """Remove the cached indexes no server has loaded for UNUSED_DAYS (load_index marks an
    index used) and dead builds' leftovers; how many went. The cache directory may be shared
    by several servers with other databases, so an index in use elsewhere is kept: it was
    loaded (marked) at that server's start."""
    now = time.time() if now is None else now
    removed = 0
    with contextlib.suppress(OSError):
        for path in directory.iterdir():
            if path.name.startswith(INDEX_PREFIX):
                limit = UNUSED_DAYS
            elif path.name.startswith(".building-"):
                limit = STALE_BUILD_DAYS
            else:
                continue
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > limit * 86400:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
    return removed


def build_and_save(database_path: str, cache_dir: str, waited_for: bool = False) -> str:
    """Build and save the index of one database; returns the database's digest. The background
    build process's work, at a lower priority so the servers keep their CPU; or (`waited_for`)
    the build a starting server waits for (geodns.config.loader), at its own priority."""
    from geodns.geo.codes import continent_of

    if not waited_for:
        with contextlib.suppress(OSError):
            os.nice(10)
    database = GeoDatabase(Path(database_path), database_path, 0, continent_of)
    try:
        index = build_index(database)
        save_index(index, Path(cache_dir))
    finally:
        database.close()
    return index.digest


if __name__ == "__main__":
    # the daemon's background build: DATABASE CACHE_DIR -> the digest; with PARENT (the pid of
    # a server that waits for it at start), at full priority, ending if that server dies
    if len(sys.argv) > 3:
        from geodns.common.pipes import stop_with_parent

        stop_with_parent(int(sys.argv[3]), signal.SIGKILL)
    print(build_and_save(sys.argv[1], sys.argv[2], waited_for=len(sys.argv) > 3))

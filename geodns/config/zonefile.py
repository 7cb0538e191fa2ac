"""Load octoDNS YamlProvider zone files into validated Zone objects.

One `<zone>.yaml` per zone; top-level keys are record names relative to the zone (`''` is the
apex, `'*'` a wildcard), each holding one record or a list of records with `type`, `ttl` and
`value`/`values` as octoDNS defines them. geodns's own settings live under `octodns: {geodns:}`.

What a file means is what octoDNS means by it: each value is checked as octoDNS's default
validators check it (geodns.config.rdata), records octoDNS loads but no nameserver can serve
(URLFWD, provider-specific types) are skipped with a warning, as an octoDNS provider skips what
it does not support, and so are records octoDNS itself leaves alone (`octodns.ignored`). Every
problem is collected with its file, line and column, so one `geodns check` run shows them all;
a zone with errors is refused whole, a zone with warnings only is served with them.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, cast

from dnslib import AAAA, NS, SOA, A, DNSBuffer, DNSLabel

from geodns.common.errors import ConfigError, Problem, did_you_mean
from geodns.common.reader import Reader
from geodns.common.yamlsrc import (
    NO_HASH,
    Entry,
    Known,
    KnownBlocks,
    KnownRun,
    MappingEntries,
    MarkedDict,
    MarkedList,
    Moved,
    RepeatedBlocks,
    UnusualYaml,
    content_key,
    load_yaml,
    relocated,
)
from geodns.config.rdata import (
    ALIAS,
    SERVED_TYPES,
    SERVICE_NAME,
    SERVICE_NAME_TYPES,
    SINGLE_VALUE_TYPES,
    TYPE_CODES,
    UNSERVABLE_TYPES,
    ValueAt,
    parse_value,
    type_name,
)
from geodns.dns.zone import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_DNAME,
    TYPE_NS,
    TYPE_SOA,
    RRset,
    Zone,
    changed_names,
    check_name,
)

MAX_TTL = 2_147_483_647  # RFC 2181 section 8
DEFAULT_TTL = 3600  # octoDNS's default
RECORD_KEYS = ("type", "ttl", "value", "values", "octodns", "dynamic", "geo")
DYNAMIC_TYPES = (TYPE_A, TYPE_AAAA, TYPE_CNAME)  # what geodns answers per query
MAX_CNAME_CHAIN = 8
ZONE_MAPPING = "a mapping of record names to records"  # what a zone file's document is

__all__ = [
    "MAX_TTL",
    "LastLoad",
    "SoaSettings",
    "check_name",
    "load_zone_file",
    "read_zone_file",
    "zone_name_from_file",
]


@dataclass(frozen=True, slots=True)
class SoaSettings:
    """What octoDNS leaves to the provider: the SOA fields (see docs/zones.md for defaults)."""

    mname: str | None = None
    rname: str | None = None
    serial: int | None = None
    refresh: int = 3600
    retry: int = 600
    expire: int = 1_209_600
    minimum: int = 300
    ttl: int = 3600


DynamicCompiler = Callable[[Reader, str, int, int, Mapping[str, tuple[str, ...]]], Any]
"""Compiles an A/AAAA/CNAME record's `dynamic`/`octodns.geodns` settings: (the record's reader,
owner, rtype, ttl, the zone's static addresses by name) -> dynamic spec, or None after reporting
problems through the reader. Supplied by the caller so zone loading knows nothing of geo."""


def zone_name_from_file(path: Path) -> str:
    stem = path.name[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    return stem.lower().rstrip(".") + "."


def load_zone_file(
    path: Path,
    soa: SoaSettings,
    compile_dynamic: DynamicCompiler,
    nameservers: tuple[str, ...] = (),
) -> Zone:
    """Parse and validate one zone file; raise ConfigError with every problem found.

    `nameservers` (from the geodns config) answer for a zone that has no NS record at its apex.
    """
    return read_zone_file(path, soa, compile_dynamic, nameservers)[0]


class LastLoad(NamedTuple):
    """What a zone file's load leaves for the next one: its blocks (yamlsrc.KnownBlocks: a
    block whose lines are unchanged is taken as it was read) and the zone it made (a node that
    zone holds as it is needs no whole-zone check again: see _ZoneLoader.assemble). `names`
    and `nodes` have, per block, the name and own node of what was kept of it (None: none),
    so that a run of blocks is taken by slicing them (see _ZoneLoader._store_run); `lacking`
    has, in order, the blocks whose node is None. `fresh` has the names of the zone whose node
    is not the very one of the zone of the load before (None: there was none), as
    geodns.dns.zone.changed_names would find them: the records' shapes look at those again."""

    blocks: KnownBlocks
    zone: Zone
    names: list[str | None]
    nodes: list[dict[int, RRset] | None]
    lacking: array[int]
    fresh: list[str] | None = None  # the zone's names whose node is not the last load's


def read_zone_file(
    path: Path,
    soa: SoaSettings,
    compile_dynamic: DynamicCompiler,
    nameservers: tuple[str, ...] = (),
    last: LastLoad | None = None,
) -> tuple[Zone, LastLoad | None]:
    """load_zone_file, handed what the file's last load left (`last`, read with the same
    compiler's sites): a block whose lines are unchanged is not parsed or read again, its
    records are taken as they were (see _ZoneLoader.read_records). Returns the zone and what
    the next load may take of this one (None when the file was read the classic way)."""
    origin = zone_name_from_file(path)
    error = check_name(origin)
    if error:
        raise ConfigError([Problem(str(path), 0, f"file name is not a zone name: {error}")])
    known = last.blocks if last is not None else None
    loader = _ZoneLoader(path, origin, compile_dynamic, last)
    entries = MappingEntries(path, ZONE_MAPPING, moved=True, known=known, remember=True)
    try:
        loader.read_records(entries)
    except UnusualYaml:  # merge keys, tags on collections: the whole file the classic way
        data = load_yaml(path)
        if not isinstance(data, MarkedDict):
            raise ConfigError([Problem(str(path), 1, f"expected {ZONE_MAPPING}")]) from None
        loader = _ZoneLoader(path, origin, compile_dynamic, last)
        loader.read_records(data)
    loader.compile_cnames()
    zone = loader.assemble(soa, nameservers)
    if any(p.is_error for p in loader.problems) or zone is None:
        raise ConfigError(loader.problems)
    blocks = loader.known_blocks()
    if blocks is None:
        return zone, None
    return zone, LastLoad(
        blocks, zone, loader.kept_names, loader.kept_nodes, loader.kept_lacking, loader.fresh
    )


@dataclass(slots=True)
class _Alias:
    """An apex ALIAS, answered as the A/AAAA of its in-zone target once the zone is read."""

    target: str
    ttl: int
    line: int
    column: int


@dataclass(slots=True)
class _Read:
    """A record read into the zone: its RRset, and what compiling its `dynamic`/
    `octodns.geodns` settings needs (an A/AAAA record is compiled as it is read, a CNAME once
    the whole zone is: its pool values may name in-zone hosts)."""

    record: MarkedDict
    rrset: RRset
    lenient: bool
    content: Hashable  # the record's content_key: records written alike compile once
    moved: int = 0  # `record` is one written alike that many lines up (yamlsrc.Moved)


class _BlockRecords(NamedTuple):
    """What a top-level block of a zone file read into the zone, every record without a
    problem: kept (yamlsrc.Known) so that a reload finding the block's lines unchanged stores
    the same RRsets again. Lines are those of the load that kept it. `node` is the node the
    block made, when no other block put records at its name: never changed once made (the
    loader copies such a node before it adds to it), so a reload that takes the block where it
    was puts that very dict in its zone (see _ZoneLoader._store_run)."""

    name: str
    written: tuple[tuple[Any, int, int], ...]  # as _ZoneLoader.written has them
    stored: tuple[tuple[RRset, int, int], ...]  # each RRset as compiled, and where it was stored
    lowered: str  # the key, as _ZoneLoader.written has it
    node: dict[int, RRset] | None


@dataclass(frozen=True, slots=True)
class _ReadRecord:
    """What a record written without a problem reads as, whatever its name: kept per content
    so that every other record written alike skips the reading (see _ZoneLoader._record)."""

    rtype: int
    ttl: int
    rdatas: tuple[Any, ...]
    dynamic: bool
    lenient: bool


class _ZoneLoader:
    """Reads one zone file's records, then checks the whole zone and builds it."""

    def __init__(
        self,
        path: Path,
        origin: str,
        compile_dynamic: DynamicCompiler,
        last: LastLoad | None = None,
    ) -> None:
        self.path, self.origin = path, origin
        self.last = last  # what the file's last load left (its blocks are read by MappingEntries)
        self.compile_dynamic = compile_dynamic
        self.problems: list[Problem] = []
        # the file's reader, for problems only: every key of a zone file is a record name
        self.file = Reader(str(path), MarkedDict(), "zone", (), self.problems)
        self.line = self.column = 1  # the file's mapping, once read
        # where each name's records were written, for problems found once the zone is read
        self.written: dict[str, tuple[int, int, tuple[tuple[Any, int, int], ...]]] = {}
        self.written_in_runs: list[tuple[Known, ...]] = []  # the same, of blocks taken in runs
        self.nodes: dict[str, dict[int, RRset]] = {}
        self.aliases: dict[str, _Alias] = {}
        self.cnames: list[_Read] = []  # dynamic CNAMEs, compiled once the zone is read
        # records written alike are read and compiled once, found by their content_key
        self.read_alike: dict[Hashable, _ReadRecord] = {}
        self.compiled_alike: dict[Hashable, Any] = {}
        # the blocks as a next load may take them (None: the file was not read by blocks):
        # what is kept of each block, in the file's order, and its text's hash
        self.blocks: RepeatedBlocks | None = None
        self.kept: list[Known | None] = []
        self.kept_hashes = array("q")
        self.kept_names: list[str | None] = []  # (LastLoad's columns)
        self.kept_nodes: list[dict[int, RRset] | None] = []
        self.kept_lacking = array("q")
        self.unchanged: set[str] = set()  # names whose node is a block's own (never changed)
        self.stored: list[tuple[str, int, int, int]] = []  # this entry's: name, type, place
        self.own_reading = False  # this entry compiled a record that is read per name
        self.fresh: list[str] | None = None  # once assembled after a last load: see LastLoad

    def add(self, line: int, message: str, column: int = 0) -> None:
        self.file.add(line, message, column=column)

    def warn(self, line: int, message: str, column: int = 0) -> None:
        self.file.add(line, message, column=column, severity="warning")

    # -- records -------------------------------------------------------------------------------

    def read_records(self, mapping: MappingEntries | MarkedDict) -> None:
        """Read each record as its entry arrives (from MappingEntries the file's values are not
        all held at once), or from a file read whole."""
        entries: Iterable[Entry] = mapping
        if isinstance(mapping, MarkedDict):
            entries = [(k, v, mapping.line_of(k), mapping.column_of(k)) for k, v in mapping.items()]
        by_blocks = mapping if isinstance(mapping, MappingEntries) else None
        problems, aliases, cnames, stored = self.problems, self.aliases, self.cnames, self.stored
        for key, value, line, column in entries:
            if by_blocks is not None and self.blocks is None:
                self.blocks = by_blocks.blocks  # known once the iteration has begun
            kind = type(value)
            if kind is KnownRun:  # blocks unchanged where they were: their records at once
                self._store_run(value)
                continue
            if kind is Known:  # the same lines as at the last load: the same records
                self._store_known(value, line)
                continue
            before = len(problems) + len(aliases) + len(cnames)  # each of them only grows
            stored.clear()
            self.own_reading = False
            self._entry(key, value, line, column)
            if self.blocks is not None:
                clean = before == len(problems) + len(aliases) + len(cnames)
                self._keep(self._remember(key, line, column) if clean else None, line)
        self.line, self.column = mapping.line, mapping.column

    def _entry(self, key: Any, value: Any, line: int, column: int) -> None:
        """Read one top-level entry: a name's record or list of records."""
        name = self._owner_name(key, line, column)
        if name is None:
            return
        key = str(key)
        moved = 0  # lines between the record and the one written alike whose marks it has
        content = None  # the record's content_key, when it is one read alike before
        if type(value) is Moved:
            value, moved = value.value, value.lines
            if isinstance(value, MarkedDict):
                content = content_key(value)
            if content is None or content not in self.read_alike:
                value, moved, content = relocated(value, moved), 0, None  # its own marks
        if not isinstance(value, MarkedList):  # one record (most names): no lists made
            self.written[key.lower()] = (line, column, (_written_type(value, moved),))
            self._record(value, line, column, name, key, moved, content)
            return
        places = [(value.line_of(i), value.column_of(i)) for i in range(len(value))]
        records = list(value)
        written = tuple(_written_type(record, moved) for record in records)
        self.written[key.lower()] = (line, column, written)
        for record, (record_line, record_column) in zip(records, places, strict=True):
            self._record(record, record_line, record_column, name, key, moved)

    def _remember(self, key: Any, line: int, column: int) -> Known | None:
        """Keep what the entry just read stored, for the next load to take while its block's
        lines are unchanged: only an entry read without a problem, into RRsets alone (no apex
        ALIAS, no dynamic CNAME: those are finished once the whole zone is read, from other
        names' records), none read per name (an octoDNS healthcheck makes a site of its own),
        none whose pools or rules name lines of the file (`names_lines`, for `geodns check`:
        a record compiled alike names the first one's, which the next load may place
        elsewhere)."""
        assert self.blocks is not None
        if line not in self.blocks.hashes or self.own_reading or not self.stored:
            return None
        nodes = self.nodes
        stored = tuple([(nodes[n][t], at, at_column) for n, t, at, at_column in self.stored])
        for rrset, _, _ in stored:
            spec = rrset.dynamic
            if spec is not None and spec.names_lines:
                return None
        name, lowered = stored[0][0].name, key.lower()
        lowered = key if lowered == key else lowered  # (one string, not two)
        kept = _BlockRecords(
            name, self.written[lowered][2], stored, lowered, self._own_node(name, stored)
        )
        return Known(key, column, line, kept)

    def _own_node(self, name: str, stored: tuple[Any, ...]) -> dict[int, RRset] | None:
        """The node at `name` if it holds the RRsets just stored and no others: from now on
        never changed (see _put), so that the block's next load may take it whole."""
        node = self.nodes.get(name)
        if node is None or len(node) != len(stored):
            return None
        self.unchanged.add(name)
        return node

    def _keep(self, known: Known | None, line: int) -> None:
        """Keep what was kept of the block at `line`, for the next load (in the file's order:
        one entry per block)."""
        assert self.blocks is not None
        hashed = self.blocks.hashes.get(line, NO_HASH) if known is not None else NO_HASH
        if hashed == NO_HASH:
            known = None
        name, node = (known.kept.name, known.kept.node) if known is not None else (None, None)
        if node is None:
            self.kept_lacking.append(len(self.kept_nodes))
        self.kept_names.append(name)
        self.kept_nodes.append(node)
        self.kept.append(known)
        self.kept_hashes.append(hashed)

    def _store_run(self, run: KnownRun) -> None:
        """Store the records of blocks known from the last load, on the lines they were on: each
        one's node is the very dict it made then (unchanged since, see _put), so the lot is put
        in the zone by a few dict updates. Runs at names already stored take the way of one
        block at a time (_store_known), which reports what reading them would. (No name is
        twice in a run of nodes of their own: two blocks of one load at one name never both
        make it.)"""
        start, stop = run.start, run.stop
        known = cast(tuple[Known, ...], run.known.known[start:stop])  # none None
        assert self.last is not None and run.known is self.last.blocks
        names = self.last.names[start:stop]
        lacking = self.last.lacking  # (blocks without a node of their own, in order)
        at = bisect_left(lacking, start)
        one_lacks = at < len(lacking) and lacking[at] < stop
        nodes = self.nodes
        if one_lacks or not nodes.keys().isdisjoint(names):
            for block in known:
                self._store_known(block, block.line)
            return
        own = self.last.nodes[start:stop]  # (none None)
        nodes.update(zip(names, own, strict=True))  # type: ignore[arg-type]
        self.unchanged.update(names)  # type: ignore[arg-type]
        self.written_in_runs.append(known)  # looked at only for a problem (place_of)
        self.kept.extend(known)
        self.kept_hashes.extend(run.known.hashes[start:stop])
        self.kept_names.extend(names)
        self.kept_nodes.extend(own)

    def _store_known(self, known: Known, line: int) -> None:
        """Store the records of a block known from the last load, now at `line`, as reading
        it would (a second record of a type at a name is the same problem)."""
        kept: _BlockRecords = known.kept
        shift = line - known.line
        key = str(known.key)
        written, stored = kept.written, kept.stored
        nodes = self.nodes
        if not shift and kept.node is not None and kept.name not in nodes:  # as it was
            self.written[kept.lowered] = (line, known.column, written)
            nodes[kept.name] = kept.node
            self.unchanged.add(kept.name)
            self._keep(known, line)
            return
        if shift:
            written = tuple((t, at + shift if at else at, c) for t, at, c in written)
            stored = tuple(  # (the constructor: dataclasses.replace takes twice as long)
                (
                    RRset(r.name, r.rtype, r.ttl, r.rdatas, r.line + shift, r.dynamic),
                    at + shift,
                    column,
                )
                for r, at, column in stored
            )
        self.written[kept.lowered] = (line, known.column, written)
        fresh = kept.name not in nodes
        for rrset, at, column in stored:
            node = nodes.get(rrset.name)
            if node is None:
                nodes[rrset.name] = {rrset.rtype: rrset}
            else:
                self._put(rrset, at, column, key)
        own = self._own_node(kept.name, stored) if fresh else None
        # kept again, at its new line
        records = _BlockRecords(kept.name, written, stored, kept.lowered, own)
        self._keep(Known(known.key, known.column, line, records), line)

    def known_blocks(self) -> KnownBlocks | None:
        """The blocks this load kept, for the next one (None: not read by blocks)."""
        if self.blocks is None:
            return None
        return KnownBlocks.of(self.blocks, self.kept, self.kept_hashes)

    def _owner_name(self, key: Any, line: int, column: int) -> str | None:
        origin = self.origin
        if not isinstance(key, str):
            self.add(line, f"record name must be a string, got {key!r}", column)
            return None
        lowered = key.lower()
        if lowered == "@":
            self.add(line, "invalid name '@': the apex is written '' in octoDNS", column)
            return None
        if lowered.endswith("."):
            if lowered == origin or lowered.endswith("." + origin):
                relative = lowered[: -len(origin)].rstrip(".")
                self.add(
                    line,
                    f"name '{key}' must be relative to the zone: write '{relative}' "
                    "(octoDNS names are relative)",
                    column,
                )
            else:
                self.add(line, f"name '{key}' is outside the zone '{origin}'", column)
            return None
        name = f"{lowered}.{origin}" if lowered else origin
        error = check_name(name)
        if error:
            self.add(line, f"invalid name '{key}': {error}", column)
            return None
        if "*" in lowered:
            labels = lowered.split(".")
            if any(label == "*" for label in labels[1:]) or any(
                "*" in label and label != "*" for label in labels
            ):
                self.add(
                    line, f"invalid name '{key}': '*' may only be the whole leftmost label", column
                )
                return None
        return name

    def _record(
        self,
        record: Any,
        line: int,
        column: int,
        name: str,
        key: str,
        moved: int = 0,
        content: Hashable | None = None,
    ) -> None:
        """Read one record into the zone; a lenient record's errors become warnings and the
        record is skipped (octoDNS loads it with a warning; nothing wrong can be served).
        `moved`: the record is one read alike before, written that many lines further down;
        `content`: its content_key, when the caller has it."""
        if not isinstance(record, MarkedDict):
            self.add(line, "expected a record mapping with 'type' and 'value' or 'values'", column)
            return
        if content is None:
            content = content_key(record)
        alike = self.read_alike.get(content)
        if alike is not None:
            # compiled alike before too: made whole, not made and then compiled (_compile)
            spec = self.compiled_alike.get(content) if alike.dynamic else None
            dynamic = spec.with_owner(name) if spec is not None else None
            line_of = record.line + moved
            rrset = RRset(name, alike.rtype, alike.ttl, alike.rdatas, line_of, dynamic)
            if alike.dynamic and spec is None:  # to be compiled: what that needs
                read_alike = _Read(record, rrset, alike.lenient, content, moved)
                self._store(read_alike, True, line, column, key)
            else:
                self._put_stored(rrset, line, column, key)
            return
        problems: list[Problem] = []
        reader = Reader(str(self.path), record, "record", RECORD_KEYS, problems, prefix="")
        octodns = record.get("octodns")
        lenient = isinstance(octodns, MarkedDict) and octodns.get("lenient") is True
        read = self._read_record(reader, name, key)
        if lenient and any(p.is_error for p in problems):
            problems = _lenient(problems)
            read = None
        self.problems.extend(problems)
        if read is None:
            return
        stored, dynamic = read
        if isinstance(stored, _Alias):
            self.aliases[name] = stored
            return
        if not problems and type_name(stored.rtype) not in SERVICE_NAME_TYPES:
            # read the same for any name: only a service type's checks depend on it
            self.read_alike[content] = _ReadRecord(
                stored.rtype, stored.ttl, stored.rdatas, dynamic, lenient
            )
        self._store(_Read(record, stored, lenient, content), dynamic, line, column, key)

    def _store(self, read: _Read, dynamic: bool, line: int, column: int, key: str) -> None:
        """Put a record's RRset at its name; compile it if it is `dynamic`."""
        if not self._put_stored(read.rrset, line, column, key) or not dynamic:
            return
        rrset = read.rrset
        if rrset.rtype == TYPE_CNAME:
            self.cnames.append(read)  # compiled once every record is read
        else:
            self._compile(read, {})  # an A/AAAA record needs none of the zone's addresses

    def _put_stored(self, rrset: RRset, line: int, column: int, key: str) -> bool:
        """_put, and note the RRset among those this entry stored (see _remember)."""
        if not self._put(rrset, line, column, key):
            return False
        self.stored.append((rrset.name, rrset.rtype, line, column))
        return True

    def _put(self, rrset: RRset, line: int, column: int, key: str) -> bool:
        """Put an RRset at its name, unless the name has one of its type already (a problem
        reported at `line`)."""
        node = self.nodes.get(rrset.name)
        if node is None:  # a new name (a node of its own, until another record joins it)
            self.nodes[rrset.name] = {rrset.rtype: rrset}
            return True
        if rrset.rtype in node:
            self.add(line, f"second {type_name(rrset.rtype)} record at '{key}'", column)
            return False
        self._changing(rrset.name)[rrset.rtype] = rrset
        return True

    def _changing(self, name: str) -> dict[int, RRset]:
        """The node at `name`, to be changed: a block's own node (kept for the next load, and
        perhaps the zone in service's too) is copied first."""
        node = self.nodes[name]
        if name in self.unchanged:
            self.unchanged.discard(name)
            node = self.nodes[name] = dict(node)
        return node

    def _read_record(
        self, reader: Reader, name: str, key: str
    ) -> tuple[RRset | _Alias, bool] | None:
        """The record's RRset (or apex ALIAS) and whether it is answered per query, or None
        when it is skipped or wrong (reported)."""
        record = reader.mapping
        rtype_name = reader.get("type", str, None, "a record type such as A")
        if rtype_name is None:
            if "type" not in record:
                reader.add(
                    record.line,
                    "record has no 'type' (expected e.g. type: A)",
                    column=record.column,
                )
            return None
        rtype_name = rtype_name if "/" in rtype_name else rtype_name.upper()
        type_line, type_column = record.line_of("type"), record.column_of("type")
        if "/" in rtype_name or rtype_name in UNSERVABLE_TYPES:
            why = UNSERVABLE_TYPES.get(rtype_name, "a type of one octoDNS provider, not DNS data")
            reader.add(
                type_line,
                f"{rtype_name} record '{key}' skipped: {why}",
                column=type_column,
                severity="warning",
            )
            return None
        if rtype_name == "SOA":
            reader.add(
                type_line,
                "SOA is not written in zone files; set it under 'soa' in the geodns config",
                column=type_column,
            )
            return None
        if rtype_name not in SERVED_TYPES:
            served = sorted(SERVED_TYPES)
            reader.add(
                type_line,
                f"unsupported type '{rtype_name}'{did_you_mean(rtype_name, served)}; "
                f"expected one of {', '.join(served)}",
                column=type_column,
            )
            return None
        relative = key.lower()
        if rtype_name in SERVICE_NAME_TYPES and not SERVICE_NAME.match(relative):
            reader.add(
                type_line,
                f"a {rtype_name} record's name is _service._proto (RFC 2782/7553), not '{key}'",
                column=type_column,
            )
            return None
        if rtype_name == ALIAS and relative:
            reader.add(
                type_line,
                "ALIAS is only at the zone apex ('' key), as in octoDNS",
                column=type_column,
            )
            return None
        ttl = reader.int_in("ttl", 0, MAX_TTL, DEFAULT_TTL)
        octodns = record.get("octodns")
        if octodns is not None and not isinstance(octodns, MarkedDict):
            reader.problem("octodns", "expected a mapping")
            return None
        if isinstance(octodns, MarkedDict) and octodns.get("ignored") is True:
            reader.add(
                octodns.line_of("ignored"),
                f"{rtype_name} record '{key}' skipped: octodns.ignored (octoDNS leaves it alone)",
                column=octodns.column_of("ignored"),
                severity="warning",
            )
            return None
        values = self._values(reader, rtype_name)
        if values is None:
            return None
        before = reader.error_count()
        rdatas = [
            parse_value(rtype_name, value, ValueAt(reader, rtype_name, line, column))
            for value, line, column in values
        ]
        dynamic = self._dynamic_settings(reader, rtype_name, key)
        if reader.error_count() != before:
            return None
        if rtype_name == ALIAS:
            return _Alias(str(rdatas[0]).lower(), ttl, record.line, record.column), False
        rtype = TYPE_CODES[rtype_name]
        return RRset(name, rtype, ttl, tuple(_dedupe(rdatas)), line=record.line), dynamic

    def _values(self, reader: Reader, rtype_name: str) -> list[tuple[Any, int, int]] | None:
        """(value, line, column) of each value of a record, or None (reported)."""
        record = reader.mapping
        has_value, has_values = "value" in record, "values" in record
        if has_value and has_values:
            reader.problem("values", "use either 'value' or 'values', not both")
            return None
        if not has_value and not has_values:
            reader.add(
                record.line,
                f"{rtype_name} record has no 'value' or 'values'",
                column=record.column,
            )
            return None
        if has_value:
            value = record["value"]
            if isinstance(value, MarkedList):
                reader.problem("value", "'value' holds one value; use 'values' for a list")
                return None
            return [(value, record.line_of("value"), record.column_of("value"))]
        values = record["values"]
        if rtype_name in SINGLE_VALUE_TYPES:
            reader.problem("values", f"{rtype_name} takes one 'value', not 'values'")
            return None
        if not isinstance(values, MarkedList):
            return [(values, record.line_of("values"), record.column_of("values"))]
        if not values:
            reader.problem("values", "'values' is empty")
            return None
        return [(item, values.line_of(i), values.column_of(i)) for i, item in enumerate(values)]

    def _dynamic_settings(self, reader: Reader, rtype_name: str, key: str) -> bool:
        """Whether the record is answered per query (compiled later); reports the settings
        geodns does not apply, as octoDNS's providers do for what they do not support."""
        record = reader.mapping
        octodns = record.get("octodns")
        has_geodns = isinstance(octodns, MarkedDict) and "geodns" in octodns
        has_dynamic = "dynamic" in record
        if "geo" in record:
            if has_dynamic:
                reader.problem("geo", "a record has 'dynamic' or octoDNS's old 'geo', not both")
            else:
                reader.add(
                    record.line_of("geo"),
                    f"{rtype_name} record '{key}': octoDNS's deprecated 'geo' is not served; "
                    "every user gets the plain values (write 'dynamic' rules instead)",
                    column=record.column_of("geo"),
                    severity="warning",
                )
        if not has_dynamic and not has_geodns:
            return False
        if TYPE_CODES.get(rtype_name) in DYNAMIC_TYPES:
            return True
        if has_geodns:
            assert isinstance(octodns, MarkedDict)
            reader.add(
                octodns.line_of("geodns"),
                f"octodns.geodns applies to A, AAAA and CNAME records, not {rtype_name}",
                column=octodns.column_of("geodns"),
            )
            return False
        what = "a dynamic DNAME" if rtype_name == "DNAME" else f"'dynamic' on {rtype_name}"
        reader.add(
            record.line_of("dynamic"),
            f"{what} is not answered per query by geodns (it answers dynamic A, AAAA and CNAME "
            "records): the plain value is served",
            column=record.column_of("dynamic"),
            severity="warning",
        )
        return False

    # -- dynamic records -----------------------------------------------------------------------

    def compile_cnames(self) -> None:
        """Compile every dynamic CNAME, knowing the zone's static addresses (a pool value that
        names an in-zone host takes the site of that host's addresses)."""
        addresses: dict[str, tuple[str, ...]] = {}
        for name, node in self.nodes.items() if self.cnames else ():
            found = tuple(
                str(rdata)
                for rtype in (TYPE_A, TYPE_AAAA)
                if (rrset := node.get(rtype)) is not None and rrset.dynamic is None
                for rdata in rrset.rdatas
            )
            if found:
                addresses[name] = found
        for pending in self.cnames:
            self._compile(pending, addresses)

    def _compile(self, pending: _Read, addresses: Mapping[str, tuple[str, ...]]) -> None:
        rrset = pending.rrset
        node = self._changing(rrset.name)
        spec = self.compiled_alike.get(pending.content)  # the content says the type too
        if spec is not None:
            node[rrset.rtype] = RRset(
                rrset.name,
                rrset.rtype,
                rrset.ttl,
                rrset.rdatas,
                rrset.line,
                spec.with_owner(rrset.name),
            )
            return
        problems: list[Problem] = []
        record = relocated(pending.record, pending.moved) if pending.moved else pending.record
        reader = Reader(str(self.path), record, "record", tuple(record), problems, prefix="")
        spec = self.compile_dynamic(reader, rrset.name, rrset.rtype, rrset.ttl, addresses)
        failed = any(p.is_error for p in problems)
        self.problems.extend(_lenient(problems) if failed and pending.lenient else problems)
        if failed:
            del node[rrset.rtype]
        elif spec is not None:
            node[rrset.rtype] = replace(rrset, dynamic=spec)
            if _compiles_alike_anywhere(pending.record, rrset.rtype):
                if not problems:
                    self.compiled_alike[pending.content] = spec
            else:  # compiled for its name (a healthcheck makes a site of its own)
                self.own_reading = True

    # -- the whole zone ------------------------------------------------------------------------

    def place_of(self, name: str, rtype: int | None = None) -> tuple[int, int]:
        """Line and column of the record of `rtype` at `name` (or of the name's key, or of the
        file's first key), for a problem found only once the whole zone is read."""
        relative = "" if name == self.origin else name[: -len(self.origin) - 1]
        written = self.written.get(relative)
        if written is None and self.written_in_runs:  # a block of a run, perhaps
            for run in self.written_in_runs:  # into `written`, once: it was not read again
                for known in run:  # after the run (its names were new when it came)
                    self.written.setdefault(
                        known.kept.lowered, (known.line, known.column, known.kept.written)
                    )
            self.written_in_runs.clear()
            written = self.written.get(relative)
        if written is None:
            return self.line, self.column
        line, column, records = written
        for written_type, record_line, record_column in records:
            if isinstance(written_type, str) and TYPE_CODES.get(written_type.upper(), -1) == rtype:
                return record_line, record_column
        return line, column

    def assemble(self, soa: SoaSettings, nameservers: tuple[str, ...]) -> Zone | None:
        """Check whole-zone rules (apex NS, CNAME exclusivity, ALIAS, DNAME, glue) and build
        the Zone. A node the last load's zone (`previous`) holds as it is passed these checks
        then and has not changed since (see _changing), so they look at the other nodes only:
        a reload that changed one block of a 10,000-name zone checks one name, not 10,000."""
        origin, nodes = self.origin, self.nodes
        previous = self.previous
        before = previous.nodes if previous is not None else {}
        fresh = changed_names(nodes, before)
        for name in [n for n in fresh if not nodes[n]]:  # (a node held as it is never is)
            del nodes[name]
        for name in fresh:
            node = nodes.get(name)
            if node is not None and TYPE_CNAME in node and len(node) > 1:
                others = ", ".join(sorted(type_name(t) for t in node if t != TYPE_CNAME))
                line, column = self.place_of(name, TYPE_CNAME)
                self.add(
                    line,
                    f"CNAME at '{name}' beside other data ({others}); a CNAME must stand alone",
                    column,
                )
        nodes.setdefault(origin, {})
        apex = self._changing(origin)  # its SOA is added below
        if TYPE_CNAME in apex:
            line, column = self.place_of(origin, TYPE_CNAME)
            self.add(line, "a CNAME cannot be at the zone apex", column)
        self._aliases(apex)
        dnames = self._dnames(fresh, before)
        if not self._apex_ns(apex, soa, nameservers):
            return None
        held = previous.delegations if previous is not None else frozenset()
        delegations = self._held(fresh, before, TYPE_NS, held) - {origin}
        self._glue(delegations)
        zone = self._zone(soa, apex, delegations, dnames, self._empty_non_terminals(fresh))
        if previous is not None:  # the names new since `previous`, then: those left (some are
            # left out above) and the apex, copied to take the SOA if it was a block's own
            self.fresh = [name for name in fresh if name in nodes]
            if apex is not before.get(origin) and origin not in fresh:
                self.fresh.append(origin)
        return zone

    @property
    def previous(self) -> Zone | None:
        """The zone the file's last load made (see assemble)."""
        return self.last.zone if self.last is not None else None

    def _held(
        self,
        fresh: list[str],
        before: Mapping[str, dict[int, RRset]],
        rtype: int,
        held_before: frozenset[str],
    ) -> frozenset[str]:
        """The names whose node holds `rtype`: those of the previous zone's (`held_before`)
        whose node is still the very dict it was, and any fresh node's."""
        nodes = self.nodes
        held = [name for name in fresh if rtype in nodes.get(name, ())]
        for name in held_before:
            node = nodes.get(name)
            if node is not None and node is before.get(name):
                held.append(name)
        return frozenset(held)

    def _empty_non_terminals(self, fresh: list[str]) -> frozenset[str]:
        """The names between the apex and a node that hold nothing (RFC 4592 section 2.2.2):
        the previous zone's when the names are the same (as many, and each fresh one was
        there: the others are there by definition)."""
        nodes, origin, previous = self.nodes, self.origin, self.previous
        if (
            previous is not None
            and len(nodes) == len(previous.nodes)
            and all(name in previous.nodes for name in fresh if name in nodes)
        ):
            return previous.empty_non_terminals
        ents = set()
        for name in nodes:
            candidate = name
            while candidate != origin:
                candidate = candidate.split(".", 1)[1]
                if candidate != origin and candidate not in nodes:
                    ents.add(candidate)
        return frozenset(ents)

    def _zone(
        self,
        soa: SoaSettings,
        apex: dict[int, RRset],
        delegations: frozenset[str],
        dnames: frozenset[str],
        ents: frozenset[str],
    ) -> Zone:
        """The zone, its SOA added at the apex."""
        origin = self.origin
        first_ns = str(apex[TYPE_NS].rdatas[0].label).lower()
        serial = soa.serial if soa.serial is not None else _file_serial(self.path)
        soa_rdata = SOA(
            soa.mname or first_ns,
            soa.rname or f"hostmaster.{origin}",
            (serial, soa.refresh, soa.retry, soa.expire, soa.minimum),
        )
        soa_rrset = RRset(origin, TYPE_SOA, soa.ttl, (soa_rdata,))
        apex[TYPE_SOA] = soa_rrset
        return Zone(
            origin=origin,
            path=str(self.path),
            soa=soa_rrset,
            nodes=self.nodes,
            delegations=delegations,
            empty_non_terminals=ents,
            negative_ttl=min(soa.ttl, soa.minimum),
            dnames=dnames,
            warnings=tuple(p for p in self.problems if not p.is_error),
        )

    def _aliases(self, apex: dict[int, RRset]) -> None:
        """An apex ALIAS answers A and AAAA queries with the addresses of its target, which
        must be in this zone: geodns does not resolve names elsewhere (it is no resolver), so
        an ALIAS to another zone is refused rather than answered with nothing."""
        alias = self.aliases.get(self.origin)
        if alias is None:
            return
        if TYPE_A in apex or TYPE_AAAA in apex:
            self.add(alias.line, "ALIAS at the apex beside A or AAAA records", alias.column)
            return
        target = alias.target
        if not (target == self.origin or target.endswith("." + self.origin)):
            self.add(
                alias.line,
                f"ALIAS target '{target}' is outside the zone: geodns answers an ALIAS from the "
                "A/AAAA records of a name in this zone (it does not resolve other zones); "
                "write A/AAAA records at the apex instead",
                alias.column,
            )
            return
        seen = {self.origin}
        for _ in range(MAX_CNAME_CHAIN):
            node = self.nodes.get(target, {})
            cname = node.get(TYPE_CNAME)
            if cname is None or cname.dynamic is not None or target in seen:
                break
            seen.add(target)
            target = str(cname.rdatas[0].label).lower()
        node = self.nodes.get(target, {})
        found = False
        for rtype in (TYPE_A, TYPE_AAAA):
            rrset = node.get(rtype)
            if rrset is not None:
                apex[rtype] = RRset(
                    self.origin, rtype, alias.ttl, rrset.rdatas, alias.line, rrset.dynamic
                )
                found = True
        if not found:
            self.add(
                alias.line,
                f"ALIAS target '{alias.target}' has no A or AAAA record in this zone",
                alias.column,
            )

    def _dnames(self, fresh: list[str], before: Mapping[str, dict[int, RRset]]) -> frozenset[str]:
        """The DNAME owners; names below one can never be answered (RFC 6672 section 2.4:
        the DNAME rewrites every query below it), so they are left out with a warning."""
        previous = self.previous
        dnames = self._held(fresh, before, TYPE_DNAME, previous.dnames if previous else frozenset())
        for name in list(self.nodes) if dnames else ():
            above = next((d for d in dnames if name.endswith("." + d)), None)
            if above is not None:
                line, column = self.place_of(name)
                self.warn(
                    line,
                    f"'{name}' is below the DNAME at '{above}' and is never answered "
                    "(occluded, RFC 6672); it is left out",
                    column,
                )
                del self.nodes[name]
        dnames = frozenset(name for name in dnames if name in self.nodes)  # (none occluded)
        for name in dnames:
            if name != self.origin and TYPE_NS in self.nodes[name]:
                line, column = self.place_of(name, TYPE_NS)
                self.add(line, f"DNAME at '{name}' beside a delegation (NS below the apex)", column)
        return dnames

    def _apex_ns(
        self, apex: dict[int, RRset], soa: SoaSettings, nameservers: tuple[str, ...]
    ) -> bool:
        """The zone's nameservers: its apex NS, else the config's `nameservers` (octoDNS zones
        often leave NS to the provider) with a warning; warnings for a single nameserver and
        for an SOA MNAME that names none of them, as gdnsd's and BIND's checkers give."""
        ns = apex.get(TYPE_NS)
        if ns is None:
            if not nameservers:
                self.add(
                    self.line,
                    f"zone '{self.origin}' has no NS record at the apex ('' key): add one, or "
                    "list the zone's nameservers in the geodns config (nameservers:)",
                    self.column,
                )
                return False
            self.warn(
                self.line,
                f"zone '{self.origin}' has no NS record at the apex: answered with the "
                f"config's nameservers ({', '.join(nameservers)})",
                self.column,
            )
            rdatas = tuple(NS(DNSLabel(n)) for n in nameservers)
            ns = apex[TYPE_NS] = RRset(self.origin, TYPE_NS, soa.ttl, rdatas)
        names = [str(rdata.label).lower() for rdata in ns.rdatas]
        line, column = self.place_of(self.origin, TYPE_NS)
        if len(names) == 1:
            self.warn(
                line,
                f"zone '{self.origin}' has a single nameserver ({names[0]}); RFC 1034 and "
                "RFC 2182 ask for at least two, on different networks",
                column,
            )
        if soa.mname is not None and soa.mname.lower() not in names:
            self.warn(
                line,
                f"the config's soa.mname '{soa.mname}' is not one of the zone's nameservers "
                f"({', '.join(names)})",
                column,
            )
        return True

    def _glue(self, delegations: frozenset[str]) -> None:
        """Each in-zone nameserver of a delegation needs an address here (in the file's
        order: a set's order depends on how it was built)."""
        for (line, column), cut in sorted((self.place_of(c, TYPE_NS), c) for c in delegations):
            ns = self.nodes[cut][TYPE_NS]
            for rdata in ns.rdatas:
                target = str(rdata.label).lower()
                in_zone = target == self.origin or target.endswith("." + self.origin)
                node = self.nodes.get(target, {})
                if in_zone and TYPE_A not in node and TYPE_AAAA not in node:
                    self.add(
                        line,
                        f"delegation '{cut}' names in-zone nameserver '{target}' that has no "
                        "A/AAAA glue record in this zone",
                        column,
                    )


def _compiles_alike_anywhere(record: MarkedDict, rtype: int) -> bool:
    """Whether a dynamic record compiles to the same spec (but its owner) at any name of the
    zone: an A/AAAA record without an octoDNS healthcheck. A CNAME's pool values take the sites
    of in-zone names, and a healthcheck probes the record's own name by default."""
    octodns = record.get("octodns")
    has_healthcheck = isinstance(octodns, MarkedDict) and "healthcheck" in octodns
    return rtype in (TYPE_A, TYPE_AAAA) and not has_healthcheck


def _written_type(record: Any, moved: int = 0) -> tuple[Any, int, int]:
    """A record's written type and place, kept for problems found once the zone is read."""
    if isinstance(record, MarkedDict):
        return record.get("type"), record.line + moved, record.column
    return None, 0, 0


def _lenient(problems: list[Problem]) -> list[Problem]:
    """A lenient record's problems (octodns.lenient): octoDNS loads the record with a warning;
    geodns warns too, and skips it, since nothing wrong can be served."""
    return [
        replace(p, severity="warning", message=f"{p.message} (octodns.lenient: record skipped)")
        for p in problems
    ]


def _dedupe(rdatas: list[Any]) -> list[Any]:
    """Each value once (RFC 2181 section 5), compared by wire form: dnslib's equality of some
    rdata classes (CAA) compares nothing and would fold distinct values."""
    if len(rdatas) < 2:
        return rdatas
    if all(type(r) is A or type(r) is AAAA for r in rdatas):  # their octets are their wire form
        return list({(type(r), r.data): r for r in rdatas}.values())
    seen: dict[bytes, Any] = {}
    for rdata in rdatas:
        buffer = DNSBuffer()
        rdata.pack(buffer)
        seen.setdefault(bytes(buffer.data), rdata)
    return list(seen.values())


def _file_serial(path: Path) -> int:
    """The zone file's modification time as Unix seconds, within the SOA's 32 bits."""
    try:
        return int(path.stat().st_mtime) % 2**32
    except OSError:
        return 1

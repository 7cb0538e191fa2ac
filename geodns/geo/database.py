"""Opening a GeoIP database safely: a private copy, its metadata, its schema checked.

Operators replace database files in place (`cp new.mmdb GeoLite2-City.mmdb`) as often as
atomically (geoipupdate). A file mapped into memory and truncated or rewritten under a running
process kills it with SIGBUS, so geodns never maps the operator's file: it reads the bytes once
and maps a private, anonymous copy (a memfd on Linux, an unlinked temporary file elsewhere)
that no other process can change. A copy read while the file was being rewritten is caught by
maxminddb's own checks or by the schema check below, and the previous database keeps serving.

The schema is checked when the database is opened (`geodns check`, start, reload): records
sampled across the address space must hold something geodns can place a user by (see
geodns.geo.places.schema_of); an ASN or anonymous-IP database is refused with a message naming
its type and what it lacks, never served as "nobody is located".
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import itertools
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geodns.common.errors import ConfigError, Problem
from geodns.geo.places import (
    CountryPoints,
    Place,
    PlaceReader,
    load_country_points,
    schema_of,
)

SAMPLES = 128  # addresses per family looked up to learn the schema, and records read from the
# tree's start: 128 of each decide it in 7 ms (512 took 26-30 ms of a first start)
ContinentOf = Callable[[str], str | None]
FileIdentity = tuple[tuple[int, int, int], str]  # (mtime, size, inode) and SHA-256: file_identity


class GeoDatabase:
    """One MaxMind DB file, read into a private mapping. Raises ConfigError when it cannot be
    used (unreadable, not a MaxMind DB, no location fields)."""

    def __init__(
        self,
        path: Path,
        where: str,
        line: int,
        continent_of: ContinentOf,
        identity: FileIdentity | None = None,
    ) -> None:
        self.path = path
        self.where, self.line = where, line
        try:
            stat = path.stat()
            if not has_metadata(path):  # before reading it all: cheap, and no copy made
                raise self._error(
                    f"cannot open GeoIP database {path}: no MaxMind DB metadata in its last "
                    f"{METADATA_WINDOW // 1024} KiB (a copy in progress, or a file cut short?)"
                )
            data = path.read_bytes()
        except OSError as exc:
            raise self._error(f"cannot read GeoIP database {path}: {exc.strerror}") from None
        self.signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        # the digest of the file as `identity` (file_identity) read it moments ago, when its
        # (mtime, size, inode) has not changed since: 25 ms of hashing less for a City
        # database. Else it is taken of the bytes read, or of their private copy, when first
        # asked for (see `digest`). (The digest names the index to look for; the background
        # build hashes what it reads itself, and an index of other bytes is never taken.)
        self._digest: str | None = None
        self._copy: int | None = None  # the private copy's descriptor (a memfd), if open
        if identity is not None and identity[0] == self.signature:
            self._digest = identity[1]
        self._digesting = threading.Lock()
        self.data = data
        # maxminddb where a database is opened (20 ms of imports): a server restarted onto a
        # database whose place index is cached answers without it (geodns.config.loader)
        import maxminddb

        try:
            self.reader, self._copy = _open_private(data)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise self._error(f"cannot open GeoIP database {path}: {exc}") from None
        metadata = self.reader.metadata()
        self.database_type: str = metadata.database_type
        self.build_epoch: int = metadata.build_epoch
        self.ip_version: int = metadata.ip_version
        self.node_count: int = metadata.node_count
        self.record_size: int = metadata.record_size
        self.schema = self._check_schema()
        self.points: CountryPoints = load_country_points()
        self.places = PlaceReader(self.schema, self.points, continent_of)

    def _error(self, message: str) -> ConfigError:
        return ConfigError([Problem(self.where, self.line, message)])

    def _check_schema(self) -> str:
        """The schema most sampled records have; ConfigError when none has location fields."""
        schemas: Counter[str] = Counter()
        keys: Counter[str] = Counter()
        for record in self.sample_records():
            schema = schema_of(record)
            if schema is not None:
                schemas[schema] += 1
            if isinstance(record, dict):
                keys.update(list(record))
        if schemas:
            return schemas.most_common(1)[0][0]
        held = ", ".join(sorted(keys)) or "nothing at the sampled addresses"
        raise self._error(
            f"GeoIP database {self.path} is a {self.database_type!r} database without location "
            "fields: geodns needs a City or Country database (country and/or latitude and "
            "longitude: MaxMind GeoIP2/GeoLite2 or DB-IP City/Country, or ip-location-db's "
            f"flat city/country schema); its records hold {held}"
        )

    def sample_records(self) -> list[Any]:
        """Records at addresses spread over the space, and those of the first networks (a
        small database may have nothing at the spread addresses)."""
        import maxminddb

        records = []
        try:
            for address in _sample_addresses(self.ip_version):
                record = self.reader.get(address)
                if record is not None:
                    records.append(record)
            records += [record for _, record in itertools.islice(iter(self.reader), SAMPLES)]
        except (ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise self._error(f"GeoIP database {self.path} is corrupt: {exc}") from None
        return records

    def place_at(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Place | None:
        """The place of the database record holding one address (decoded now)."""
        return self.places.place(self.reader.get(address))

    def place_and_prefix(
        self, address: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> tuple[Place | None, int]:
        record, prefix = self.reader.get_with_prefix_len(address)
        return self.places.place(record), prefix

    @property
    def digest(self) -> str:
        """The SHA-256 of the bytes read (hex). Taken when first asked for, not when the file
        is read: a first start, whose cache holds no index to look up, answers before it hashes
        (16 ms for a 23 MB database, 70 ms for 100 MB); the server asks for it in a thread when
        the background build's index is ready (geodns.daemon.app). Of the bytes read while they
        are held, else of the private copy (the same bytes, already resident: no second copy).
        Raises ValueError when neither is left (`close`)."""
        with self._digesting:
            if self._digest is None:
                if self.data:
                    self._digest = hashlib.sha256(self.data).hexdigest()
                elif self._copy is not None:
                    with open(self._copy, "rb", closefd=False) as copy:
                        copy.seek(0)  # (the descriptor's offset is where writing it ended)
                        self._digest = hashlib.file_digest(copy, "sha256").hexdigest()
                else:
                    raise ValueError(f"GeoIP database {self.path}: closed before its digest")
            return self._digest

    def release_bytes(self) -> None:
        """Drop the bytes read from the file (the private mapping stays): the index build reads
        the file itself. Without a private copy to take it from later, the digest is taken
        first."""
        if self.data and self._copy is None:
            self.digest  # noqa: B018 (taken now: the bytes are going)
        self.data = b""

    def close(self) -> None:
        self.data = b""
        with contextlib.suppress(Exception):
            self.reader.close()
        with self._digesting:
            if self._copy is not None:
                os.close(self._copy)
                self._copy = None


METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"  # starts the metadata (MaxMind DB format 2.0)
METADATA_WINDOW = 128 * 1024  # the format puts the metadata within the file's last 128 KiB


def has_metadata(path: Path) -> bool:
    """Whether the file ends the way every MaxMind DB does, with its metadata marker in the
    last 128 KiB: a file being rewritten in place, or cut short, does not. Raises OSError."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - METADATA_WINDOW))
        return METADATA_MARKER in handle.read(METADATA_WINDOW)


def file_identity(path: Path) -> FileIdentity:
    """A database file's (mtime, size, inode) and the SHA-256 of its bytes, read through a
    small buffer (hashlib.file_digest): what finds its cached place index without holding a
    copy of the file. The signature is taken first, so a file rewritten meanwhile looks changed
    on disk and is read again. Raises OSError."""
    stat = path.stat()
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino), digest


def _open_private(data: bytes) -> tuple[Any, int | None]:
    """A maxminddb reader over an anonymous copy of `data` that nobody else can change, and
    the copy's descriptor (a memfd, kept to hash the copy later: see GeoDatabase.digest; None
    where there are no memfds, and the copy is an unlinked temporary file)."""
    import maxminddb

    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("geodns-geoip", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            reader = maxminddb.open_database(f"/proc/self/fd/{fd}", maxminddb.MODE_MMAP_EXT)
        except BaseException:
            os.close(fd)
            raise
        return reader, fd
    with tempfile.NamedTemporaryFile(prefix="geodns-geoip-") as handle:  # not Linux
        handle.write(data)
        handle.flush()
        return maxminddb.open_database(handle.name, maxminddb.MODE_MMAP), None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _sample_addresses(ip_version: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses spread over the space: IPv4 evenly, IPv6 over the global unicast 2000::/3."""
    step4 = (1 << 32) // SAMPLES
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.IPv4Address(i * step4 + step4 // 3) for i in range(SAMPLES)
    ]
    if ip_version == 6:
        step6 = (1 << 125) // SAMPLES
        addresses += [
            ipaddress.IPv6Address((1 << 125) + i * step6 + step6 // 3) for i in range(SAMPLES)
        ]
    return addresses

"""The geography a snapshot answers with: a database, its place index when built, and how to
place one address.

Two ways to place an address, one protocol (`Locator.locate(family, value) -> Placement`):
- `PlaceIndex` (geodns.geo.index): every network precomputed, shared by all processes; what
  a server uses as soon as the index of its database exists (loaded from the cache directory,
  or built in the background on the first start with a new database).
- `DirectLocator`: looks each network up in the database itself (maxminddb's C reader over a
  private copy, geodns.geo.database), decoding its record: what serves during the seconds a
  new City database's index takes to build, and what `geodns check` uses.

`Geo` bundles the one in use with what the rest of geodns asks about the database (its type,
build date, path) and the per-index memo of site rankings.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from geodns.common.caching import BoundedCache
from geodns.geo.answers import Rankings
from geodns.geo.database import GeoDatabase
from geodns.geo.index import PlaceIndex
from geodns.geo.places import Placement


class Locator(Protocol):
    def locate(self, family: int, value: int) -> Placement: ...


class DirectLocator:
    """Places addresses by looking them up in the database, caching per network."""

    def __init__(self, database: GeoDatabase) -> None:
        self.database = database
        self.cache: BoundedCache[tuple[int, int], Placement] = BoundedCache("direct_places")

    def locate(self, family: int, value: int) -> Placement:
        if family == 6 and value >> 32 == 0xFFFF:  # IPv4-mapped: the IPv4 address's place
            family, value = 4, value & 0xFFFFFFFF
        found = self.cache.get((family, value))
        if found is not None:
            return found
        if family == 6 and self.database.ip_version == 4:
            return Placement(None, 6, value, 0)
        address = ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)
        place, prefix = self.database.place_and_prefix(address)
        placement = Placement(place, family, value, prefix)
        self.cache.put((family, value), placement, 96)
        return placement


@dataclass(frozen=True, eq=False)
class Geo:
    """The geography in use: a database's identity, and its index or its direct locator."""

    path: Path
    signature: tuple[int, int, int]  # the file's (mtime, size, inode) when it was read
    database_type: str
    build_epoch: int
    index: PlaceIndex | None
    direct: DirectLocator | None
    rankings: Rankings | None

    @classmethod
    def from_index(cls, database: GeoDatabase, index: PlaceIndex) -> Geo:
        return cls.from_cached_index(database.path, database.signature, index)

    @classmethod
    def from_cached_index(
        cls, path: Path, signature: tuple[int, int, int], index: PlaceIndex
    ) -> Geo:
        """The database at `path` (as it was when `signature` was taken), answered through its
        index: the database itself is not needed."""
        return cls(
            path,
            signature,
            index.database_type,
            index.build_epoch,
            index,
            None,
            Rankings(index),
        )

    @classmethod
    def from_database(cls, database: GeoDatabase) -> Geo:
        return cls(
            database.path,
            database.signature,
            database.database_type,
            database.build_epoch,
            None,
            DirectLocator(database),
            None,
        )

    def with_index(self, index: PlaceIndex) -> Geo:
        """The same database, now answered through its place index."""
        return Geo(
            self.path,
            self.signature,
            self.database_type,
            self.build_epoch,
            index,
            None,
            Rankings(index),
        )

    def read_again(self, path: Path, signature: tuple[int, int, int]) -> Geo:
        """The same database found again (the same bytes, at `path` with this `signature`),
        answered through the same index and rankings."""
        return replace(self, path=path, signature=signature)

    @property
    def digest(self) -> str:
        """The SHA-256 of the database's bytes: its index's, or taken of the bytes read when
        first asked for (GeoDatabase.digest: a hash of up to 100 MB, for a thread)."""
        if self.index is not None:
            return self.index.digest
        assert self.direct is not None
        return self.direct.database.digest

    def changed_on_disk(self) -> bool:
        """Whether the file at `path` is no longer the one read (a stat, no read)."""
        try:
            stat = self.path.stat()
        except OSError:
            return False
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino) != self.signature

    @property
    def locator(self) -> Locator:
        if self.index is not None:
            return self.index
        assert self.direct is not None
        return self.direct

    def locate(self, family: int, value: int) -> Placement:
        return self.locator.locate(family, value)

    def close(self) -> None:
        if self.direct is not None:
            self.direct.database.close()

"""The in-memory zone model: immutable RRsets arranged by owner name.

Names are kept lower-case, absolute, with a trailing dot ("www.cdn.example.com."). A zone is
frozen once built; the engine only reads it, so a snapshot can be shared by every query without
locks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dnslib import QTYPE

from geodns.common.errors import Problem

TYPE_A = QTYPE.A
TYPE_NS = QTYPE.NS
TYPE_CNAME = QTYPE.CNAME
TYPE_SOA = QTYPE.SOA
TYPE_PTR = QTYPE.PTR
TYPE_MX = QTYPE.MX
TYPE_TXT = QTYPE.TXT
TYPE_AAAA = QTYPE.AAAA
TYPE_SRV = QTYPE.SRV
TYPE_DNAME = 39
TYPE_DS = QTYPE.DS
TYPE_OPT = 41
TYPE_IXFR = 251
TYPE_AXFR = 252
TYPE_ANY = 255
TYPE_CAA = 257

ADDRESS_TYPES = (TYPE_A, TYPE_AAAA)


_LONG_LABEL = re.compile(r"[^.]{64}")


def check_name(name: str) -> str | None:
    """Why an absolute domain name is invalid, or None when it is fine."""
    if (  # the common case at C speed: ASCII, short, no empty or long label (a zone's names)
        name.isascii()
        and 1 < len(name) < 255
        and name.endswith(".")
        and not name.startswith(".")
        and ".." not in name
        and _LONG_LABEL.search(name) is None
    ):
        return None
    if not name.endswith("."):
        return "a fully qualified name must end with '.'"
    if name == ".":
        return None
    body = name[:-1]
    if len(name.encode("ascii", "replace")) + 1 > 255:
        return "name is longer than 255 octets"
    for label in body.split("."):
        if not label:
            return "name has an empty label"
        if len(label) > 63:
            return f"label '{label[:20]}...' is longer than 63 octets"
        if not label.isascii():
            return f"label '{label}' is not ASCII (use its IDNA 'xn--' form)"
    return None


@dataclass(frozen=True, slots=True, eq=False)
class RRset:
    """All records of one type at one owner name, with their dnslib rdata objects.

    `dynamic` is set on A/AAAA/CNAME RRsets whose answer is chosen per query (see
    geodns.geo.dynamic); their `rdatas` are then the record's plain values, the last resort.
    """

    name: str
    rtype: int
    ttl: int
    rdatas: tuple[Any, ...]
    line: int = 0
    dynamic: Any = None


def changed_names(
    nodes: Mapping[str, dict[int, RRset]], before: Mapping[str, dict[int, RRset]]
) -> list[str]:
    """The names of `nodes` whose node is not the very dict `before` holds at that name. A
    reload puts the unchanged blocks' nodes into the new zone as they are, never changed (see
    config.zonefile), so any other node is new or changed: what the whole-zone checks and the
    records' shapes look at again."""
    return [name for name, node in nodes.items() if before.get(name) is not node]


@dataclass(frozen=True, slots=True, eq=False)
class Zone:
    """One authoritative zone: its apex, SOA, and every owner name's RRsets.

    `dnames` are the owners of DNAME records (RFC 6672): every name below one is answered by
    substitution. `warnings` are what loading the zone file found doubtful but served anyway.
    """

    origin: str
    path: str
    soa: RRset
    nodes: dict[str, dict[int, RRset]]
    delegations: frozenset[str]
    empty_non_terminals: frozenset[str]
    negative_ttl: int
    dnames: frozenset[str] = frozenset()
    warnings: tuple[Problem, ...] = ()

    def contains(self, name: str) -> bool:
        return name == self.origin or name.endswith("." + self.origin)

    def delegation_for(self, name: str) -> str | None:
        """The highest zone cut at or above `name` (below the apex), or None."""
        if not self.delegations:
            return None
        parts = name.split(".")
        origin_parts = self.origin.count(".")
        # walk from the label just below the apex down to the name itself
        for cut in range(len(parts) - origin_parts - 1, -1, -1):
            candidate = ".".join(parts[cut:])
            if candidate in self.delegations:
                return candidate
        return None

    def dname_above(self, name: str) -> str | None:
        """The owner of the DNAME strictly above `name` (at or below the apex), or None."""
        if not self.dnames:
            return None
        candidate = name
        while candidate != self.origin:
            candidate = candidate.split(".", 1)[1]
            if candidate in self.dnames:
                return candidate
        return None

    def exists(self, name: str) -> bool:
        return name in self.nodes or name in self.empty_non_terminals

    def closest_encloser(self, name: str) -> str:
        """The longest existing ancestor of a name that does not exist (RFC 4592 section 3.3.1)."""
        candidate = name
        while candidate != self.origin:
            candidate = candidate.split(".", 1)[1]
            if self.exists(candidate):
                return candidate
        return self.origin

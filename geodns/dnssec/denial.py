"""Authenticated denial of existence with NSEC (RFC 4034 section 4, RFC 4035 section 3.1.3).

The chain is made when the zone is signed: every authoritative owner name (the apex, each
name with data, each delegation point; not glue below a cut, not empty non-terminals) in
canonical order, each NSEC naming the next and the types at its owner. A negative answer then
only looks up which NSEC matches or covers a name: a bisection, no signing.

Why NSEC (docs/dnssec.md): it is precomputed whole, so nothing is signed per query (compact
denial, RFC 9824, and NSEC3 white lies sign per query name); an NXDOMAIN needs at most two
NSEC records, no hashing; and a GeoDNS zone's names are public hostnames, so what zone walking
reveals (NSEC3's reason to exist) is not secret.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

TYPE_NSEC = 46 + 1
TYPE_RRSIG = 46


def canonical(name: str) -> dns.name.Name:
    """A name as dnspython's Name, whose ordering is DNSSEC's canonical order. Names here are
    geodns.dns.resolve.name_of's keys (labels as latin-1 text, a '.' inside a label escaped):
    built from their octets, not parsed as text, so that a query name holding any byte (which
    text parsing would read as an escape or refuse as IDNA) is placed in the chain as it is."""
    if name == ".":
        return dns.name.root
    labels = [label.replace("\\046", ".").encode("latin-1") for label in name[:-1].split(".")]
    return dns.name.Name([*labels, b""])


class NsecChain:
    """The zone's NSEC records: owner names in canonical order and the rdata of each."""

    def __init__(self, types_by_name: Mapping[str, Iterable[int]]) -> None:
        ordered = sorted(types_by_name, key=canonical)
        self.names = ordered
        self.keys = [canonical(name) for name in ordered]
        self.rdatas: dict[str, dns.rdata.Rdata] = {}
        for position, name in enumerate(ordered):
            following = ordered[(position + 1) % len(ordered)]
            types = {*types_by_name[name], TYPE_RRSIG, TYPE_NSEC}
            text = " ".join(
                dns.rdatatype.to_text(dns.rdatatype.RdataType(t)) for t in sorted(types)
            )
            self.rdatas[name] = dns.rdata.from_text(
                dns.rdataclass.IN, dns.rdatatype.NSEC, f"{following} {text}"
            )

    def owner_covering(self, name: str) -> str:
        """The owner of the NSEC that covers a name that is not in the chain (for the apex's
        NSEC, the last one wraps around to the apex)."""
        position = bisect_right(self.keys, canonical(name)) - 1
        return self.names[position]  # -1: below the first name cannot happen (apex is first)

    def __contains__(self, name: str) -> bool:
        return name in self.rdatas

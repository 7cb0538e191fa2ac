"""Resolving a (name, type) against the zones into a pre-encoded answer.

RFC 1034 section 4.3.2's algorithm, for authoritative data only: find the zone, stop at zone cuts
(referral), substitute below a DNAME (RFC 6672), match the name, follow CNAMEs inside the zone,
synthesise from wildcards (RFC 4592), else NXDOMAIN. The result is a `Prepared`: the answer, authority and additional sections already
encoded for this exact (lower-cased) question, so a repeat query only patches the header.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dnslib import AAAA, CNAME, QTYPE, RD, RR, A, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from geodns.dns.zone import (
    ADDRESS_TYPES,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_CNAME,
    TYPE_DNAME,
    TYPE_DS,
    TYPE_MX,
    TYPE_NS,
    TYPE_SOA,
    TYPE_SRV,
    RRset,
    Zone,
)

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_YXDOMAIN = 6
MAX_CNAME_CHAIN = 8
_POINTER_TO_QUESTION = b"\xc0\x0c"  # a compressed name: the question's, right after the header
CLASS_IN = 1
MAX_VARIANTS = 256  # encoded decisions kept per dynamic answer (a record has a few)
TYPE_NSEC = 47


class ZoneSignatures(Protocol):
    """A signed zone's DNSSEC records, all made before any query (geodns.dnssec.signer):
    a signed answer is joined from them, never signed here. `name` is the RRset's owner in
    the zone (a wildcard's is '*.'), `owner` the name written in the answer."""

    def rrsigs(self, name: str, rtype: int, owner: DNSLabel) -> list[RR]: ...

    def value_rrsigs(
        self, name: str, rtype: int, values: tuple[str, ...], owner: DNSLabel
    ) -> list[RR] | None: ...

    def hinfo_rrsigs(self, name: str, owner: DNSLabel) -> list[RR]: ...

    def nsec_at(self, name: str) -> list[RR]: ...

    def nsec_covering(self, name: str) -> list[RR]: ...


@dataclass(frozen=True, slots=True)
class Sections:
    """Encoded answer/authority/additional sections following a question of known length."""

    body: bytes
    ancount: int
    nscount: int
    arcount: int


@dataclass(slots=True, eq=False)
class Prepared:
    """What to answer one (name, type): rcode, AA, and the encoded sections.

    `reduced` is the same answer without the additional section, sent when the full one does not
    fit; `referral` answers must keep their glue, so for them not fitting means TC. A dynamic answer
    has `dynamic` set and gets its sections per decision from `variant()`; `source` is the zone
    a dynamic CNAME's chosen target is followed in.
    """

    rcode: int
    authoritative: bool
    full: Sections
    reduced: Sections
    referral: bool = False
    dynamic: Any = None
    zone: str | None = None
    wire: bytes = b""  # the question's lower-case wire name (the prepared cache's key: no copy)
    qtype: int = 0
    prefix: tuple[RR, ...] = ()
    owner: DNSLabel | None = None  # a dynamic answer's owner; None: the question's own name
    ttl: int = 0
    # the encoded decisions: the first inline, the others in a dict made for the second (a
    # name of a nearest-PoP record mostly gets one; an empty dict and its entry are 224 bytes,
    # 2.2 MB for a zone of 10,000 such names)
    first_values: tuple[str, ...] | None = None
    first_sections: Sections | None = None
    more_variants: dict[tuple[str, ...], Sections] | None = None
    source: Zone | None = None
    # DNSSEC (a signed zone asked with DO=1): the records' signatures, the RRset's name in
    # the zone (a wildcard's), and the wildcard's proof for the authority section
    signing: ZoneSignatures | None = None
    rrset_name: str = ""
    proof: tuple[RR, ...] = ()
    unsigned: int = 0  # variants answered without a signature (none was made: a bug)

    @property
    def size(self) -> int:
        """About how many bytes this answer keeps (for the prepared cache's bound)."""
        more = self.more_variants
        variants = (self.first_values is not None) + (len(more) if more is not None else 0)
        return 512 + len(self.full.body) + len(self.reduced.body) + 128 * variants

    def variant(self, values: tuple[str, ...]) -> Sections:
        """The encoded sections for one dynamic decision, cached per tuple of chosen values
        (addresses, or a CNAME's target)."""
        if values == self.first_values:  # (a decision's tuple: mostly the very same object)
            assert self.first_sections is not None
            return self.first_sections
        more = self.more_variants
        if more is not None:
            sections = more.get(values)
            if sections is not None:
                return sections
        sections = self._encode(values)
        if self.first_values is None:
            self.first_values, self.first_sections = values, sections
        elif more is None:
            self.more_variants = {values: sections}
        elif len(more) < MAX_VARIANTS - 1:
            more[values] = sections
        return sections

    def _encode(self, values: tuple[str, ...]) -> Sections:
        rtype = self.dynamic.rtype
        if values and rtype == TYPE_CNAME:
            return self._cname_variant(values[0])
        if values and self.owner_is_question():
            return address_answers(rtype, self.ttl, values)
        if values:
            rrs = [_address_rr(self.answer_owner(), rtype, self.ttl, a) for a in values]
            rrs.extend(self._signatures(rtype, values))
            return encode(self.labels, self.qtype, [*self.prefix, *rrs], list(self.proof), [])
        # no value chosen: NODATA, with the zone's SOA (made now: this is rare)
        assert self.source is not None
        negative = signed_soa(self.source, self.signing)
        return encode(self.labels, self.qtype, list(self.prefix), negative, [])

    @property
    def labels(self) -> tuple[bytes, ...]:
        """The question's labels, split when a new decision is encoded (kept split, they were
        2.1 MB for a zone of 10,000 names)."""
        return split_wire(self.wire)

    def answer_owner(self) -> DNSLabel:
        """The name a dynamic answer's records are owned by (made when needed: kept for each
        of 10,000 names, a DNSLabel was 0.8 MB)."""
        return self.owner if self.owner is not None else DNSLabel(self.labels)

    def owner_is_question(self) -> bool:
        """Whether a decision's answer is address records owned by the question's own name
        and nothing else (no CNAME before them, no signature or proof after them): then its
        encoding does not depend on the name (see address_answers)."""
        return (
            len(self.wire) > 1  # the root is written as its one zero byte, never a pointer
            and not self.prefix
            and not self.proof
            and self.signing is None
            and self.owner is None
        )

    def _signatures(self, rtype: int, values: tuple[str, ...]) -> list[RR]:
        """The pre-made RRSIG of this value set ([] unsigned; counted when one is missing)."""
        if self.signing is None:
            return []
        owner = self.answer_owner()
        rrsigs = self.signing.value_rrsigs(self.rrset_name, rtype, values, owner)
        if rrsigs is None:
            self.unsigned += 1
            return []
        return rrsigs

    def _cname_variant(self, target: str) -> Sections:
        """A dynamic CNAME's answer: the CNAME to the chosen target, followed inside the zone
        as a static CNAME is when what it leads to is a static positive answer. Otherwise (a
        target in another zone, itself dynamic, or a name with no data) the CNAME stands
        alone and the resolver asks for the target itself, which is always correct."""
        cname = RR(self.answer_owner(), QTYPE.CNAME, ttl=self.ttl, rdata=CNAME(DNSLabel(target)))
        answer = [*self.prefix, cname, *self._signatures(TYPE_CNAME, (target,))]
        zone = self.source
        if self.qtype != TYPE_CNAME and zone is not None and zone.contains(target):
            chase = _Resolution(zone, self.wire, self.qtype, self.signing)
            chase.answer = list(answer)
            chased = chase.follow(target, DNSLabel(target), {target})
            if (
                chased.rcode == RCODE_NOERROR
                and chased.dynamic is None
                and not chased.referral
                and chased.full.nscount == 0
            ):
                return chased.full
        return encode(self.labels, self.qtype, answer, list(self.proof), [])


def address_answers(rtype: int, ttl: int, values: tuple[str, ...]) -> Sections:
    """The answer section of A or AAAA records owned by the question's name, byte for byte as
    encode() writes it (each owner a pointer to the question at offset 12, class IN), written
    directly: dnslib took 60-100 us for what this does in 2, and a zone of 10,000 nearest-PoP
    names needs one per name and site chosen (again after every reload). Addresses are the
    zone's, already validated. tests/test_fast_paths.py holds the two equal."""
    family, size = (socket.AF_INET, 4) if rtype == TYPE_A else (socket.AF_INET6, 16)
    head = _POINTER_TO_QUESTION + struct.pack("!HHIH", rtype, CLASS_IN, ttl, size)
    body = b"".join(head + socket.inet_pton(family, value) for value in values)
    return Sections(body, len(values), 0, 0)


def signed_soa(zone: Zone, signing: ZoneSignatures | None) -> list[RR]:
    """The SOA of a negative answer, with its RRSIG when signing."""
    origin = DNSLabel(zone.origin)
    soa = [RR(origin, QTYPE.SOA, ttl=zone.negative_ttl, rdata=zone.soa.rdatas[0])]
    if signing is not None:
        soa.extend(signing.rrsigs(zone.origin, TYPE_SOA, origin))
    return soa


def _address_rr(owner: DNSLabel | None, rtype: int, ttl: int, address: str) -> RR:
    return RR(owner, rtype, ttl=ttl, rdata=A(address) if rtype == TYPE_A else AAAA(address))


def encode(
    labels: tuple[bytes, ...],
    qtype: int,
    answer: list[RR],
    authority: list[RR],
    additional: list[RR],
) -> Sections:
    """Encode the three sections as they follow this question, with name compression."""
    record = DNSRecord(DNSHeader(), q=DNSQuestion(DNSLabel(labels), qtype))
    record.rr, record.auth, record.ar = answer, authority, additional
    packed = bytes(record.pack())
    question_length = sum(len(label) + 1 for label in labels) + 1 + 4
    return Sections(packed[12 + question_length :], len(answer), len(authority), len(additional))


EMPTY = Sections(b"", 0, 0, 0)


def name_of(labels: tuple[bytes, ...]) -> str:
    """The dictionary key for wire labels. A '.' inside a label is data (RFC 2181 section 11), so
    it becomes its escape, which no zone name contains and which does not split the name."""
    return "".join(label.decode("latin-1").replace(".", "\\046") + "." for label in labels) or "."


def split_wire(key: bytes) -> tuple[bytes, ...]:
    labels = []
    position = 0
    while key[position]:
        length = key[position]
        labels.append(key[position + 1 : position + 1 + length])
        position += 1 + length
    return tuple(labels)


class Resolver:
    """Resolves names against one immutable set of zones."""

    def __init__(
        self, zones: dict[str, Zone], signatures: Mapping[str, ZoneSignatures] | None = None
    ) -> None:
        self.zones = zones
        self.signatures = signatures or {}

    def find_zone(self, name: str) -> Zone | None:
        candidate = name
        while True:
            zone = self.zones.get(candidate)
            if zone is not None:
                return zone
            if candidate == ".":
                return None
            candidate = candidate.split(".", 1)[1] or "."

    def resolve(self, wire: bytes, qtype: int, dnssec: bool = False) -> Prepared:
        """The answer to (name, type), the name in lower-case wire form; with `dnssec` (the
        query's DO bit), a signed zone's answer carries its RRSIGs and NSEC proofs (RFC 4035
        section 3.1)."""
        labels = split_wire(wire)
        name = name_of(labels)
        zone = self.find_zone(name)
        if zone is None:
            return Prepared(RCODE_REFUSED, False, EMPTY, EMPTY)
        signing = self.signatures.get(zone.origin) if dnssec else None
        return _Resolution(zone, wire, qtype, signing, labels).run(name)


class _Resolution:
    """One slow-path resolution inside one zone."""

    def __init__(
        self,
        zone: Zone,
        wire: bytes,
        qtype: int,
        signing: ZoneSignatures | None = None,
        labels: tuple[bytes, ...] | None = None,
    ) -> None:
        self.zone, self.wire, self.qtype = zone, wire, qtype
        self.labels = split_wire(wire) if labels is None else labels
        self.signing = signing
        self.answer: list[RR] = []
        self.additional: list[RR] = []
        self.proof: list[RR] = []  # DNSSEC: NSEC records of a wildcard answer (authority)

    def run(self, name: str) -> Prepared:
        return self.follow(name, DNSLabel(self.labels), {name})

    def follow(self, name: str, owner: DNSLabel, visited: set[str]) -> Prepared:
        """Answer `name` (written `owner` in the answer), after what `self.answer` holds."""
        zone, qtype = self.zone, self.qtype
        for _ in range(MAX_CNAME_CHAIN):
            cut = zone.delegation_for(name)
            if cut is not None and not (cut == name and qtype == TYPE_DS):
                if self.answer:
                    return self._positive()
                return self._referral(cut)
            dname = zone.dname_above(name)
            if dname is not None:
                target = self._substitute(name, owner, dname)
                if target is None:
                    return self._positive(RCODE_YXDOMAIN)
                if qtype == TYPE_CNAME or not zone.contains(target) or target in visited:
                    return self._positive()
                visited.add(target)
                name, owner = target, DNSLabel(target)
                continue
            node = zone.nodes.get(name)
            wildcard: str | None = None
            if node is None and name not in zone.empty_non_terminals and cut is None:
                wildcard = "*." + zone.closest_encloser(name)
                node = zone.nodes.get(wildcard)
            if node is None:
                rcode = RCODE_NOERROR if zone.exists(name) else RCODE_NXDOMAIN
                return self._negative(rcode, name)
            if self.signing is not None and wildcard is not None:
                self.proof.extend(self.signing.nsec_covering(name))  # RFC 4035 section 3.1.3.3
            if qtype == TYPE_ANY:
                return self._any(node, owner)
            if qtype == TYPE_NSEC and self.signing is not None and wildcard is None:
                nsec = self.signing.nsec_at(name)
                if nsec:
                    self.answer.extend(nsec)
                    return self._positive()
            rrset = node.get(qtype)
            if rrset is not None:
                if rrset.dynamic is not None:
                    return self._dynamic(rrset, owner)
                self._add(rrset, owner)
                self._add_targets(rrset)
                return self._positive()
            cname = node.get(TYPE_CNAME)
            if cname is None:
                return self._negative(RCODE_NOERROR, name, wildcard)
            if cname.dynamic is not None:
                return self._dynamic(cname, owner)
            self._add(cname, owner)
            if qtype == TYPE_CNAME:
                return self._positive()
            target = str(cname.rdatas[0].label).lower()
            if not zone.contains(target) or target in visited:
                return self._positive()  # out of zone, or a loop: the chain so far is the answer
            visited.add(target)
            name, owner = target, DNSLabel(target)
        return self._positive()

    def _add(self, rrset: RRset, owner: DNSLabel) -> None:
        """An RRset into the answer, with its RRSIG when signing."""
        self.answer.extend(_rrs(rrset, owner))
        if self.signing is not None:
            self.answer.extend(self.signing.rrsigs(rrset.name, rrset.rtype, owner))

    def _positive(self, rcode: int = RCODE_NOERROR) -> Prepared:
        self.additional = _unique(self.additional)
        proof = _unique(self.proof)
        full = encode(self.labels, self.qtype, self.answer, proof, self.additional)
        reduced = (
            encode(self.labels, self.qtype, self.answer, proof, []) if self.additional else full
        )
        return Prepared(rcode, True, full, reduced, zone=self.zone.origin)

    def _substitute(self, name: str, owner: DNSLabel, dname: str) -> str | None:
        """RFC 6672 section 2.2: the DNAME, and a CNAME from the name to the name with the
        DNAME's owner replaced by its target; None when that name would be too long (the
        answer is then YXDOMAIN)."""
        rrset = self.zone.nodes[dname][TYPE_DNAME]
        self._add(rrset, DNSLabel(dname))
        root = str(rrset.rdatas[0].label).lower()
        target = name[: -len(dname)] + (root if root != "." else "")
        if len(target) > 254:  # 255 octets on the wire
            return None
        self.answer.append(RR(owner, QTYPE.CNAME, ttl=rrset.ttl, rdata=CNAME(DNSLabel(target))))
        return target

    def _signed_soa(self) -> list[RR]:
        return signed_soa(self.zone, self.signing)

    def _negative(self, rcode: int, name: str = "", wildcard: str | None = None) -> Prepared:
        authority = self._signed_soa()
        if self.signing is not None:
            authority.extend(self._denial(rcode, name, wildcard))
        sections = encode(self.labels, self.qtype, self.answer, _unique(authority), [])
        return Prepared(rcode, True, sections, sections, zone=self.zone.origin)

    def _denial(self, rcode: int, name: str, wildcard: str | None) -> list[RR]:
        """The NSEC records proving a negative answer (RFC 4035 section 3.1.3): for NXDOMAIN
        the name's and the source of synthesis's absence; for NODATA the name's own NSEC (an
        empty non-terminal's covering one), plus the wildcard's when the wildcard matched."""
        signing = self.signing
        assert signing is not None
        if rcode == RCODE_NXDOMAIN:
            closest = self.zone.closest_encloser(name)
            return signing.nsec_covering(name) + signing.nsec_covering("*." + closest)
        proof = signing.nsec_covering(name)
        if wildcard is not None:
            proof += signing.nsec_at(wildcard)
        return proof

    def _referral(self, cut: str) -> Prepared:
        ns = self.zone.nodes[cut][TYPE_NS]
        authority = _rrs(ns, DNSLabel(cut))
        if self.signing is not None:  # the DS RRset, signed, or the NSEC proving there is none
            ds = self.zone.nodes[cut].get(TYPE_DS)
            if ds is not None:
                authority.extend(_rrs(ds, DNSLabel(cut)))
                authority.extend(self.signing.rrsigs(cut, TYPE_DS, DNSLabel(cut)))
            else:
                authority.extend(self.signing.nsec_at(cut))
        glue = []
        for rdata in ns.rdatas:
            glue.extend(self._addresses_of(str(rdata.label).lower()))
        glue = _unique(glue)
        full = encode(self.labels, self.qtype, [], authority, glue)
        return Prepared(RCODE_NOERROR, False, full, full, referral=True, zone=self.zone.origin)

    def _any(self, node: dict[int, RRset], owner: DNSLabel) -> Prepared:
        """RFC 8482: one RRset, or a synthesised HINFO when that RRset would be dynamic."""
        static = [node[t] for t in sorted(node) if node[t].dynamic is None]
        if TYPE_CNAME in node:
            self._add(node[TYPE_CNAME], owner)
        elif self.signing is not None and static:  # one RRset that has a signature
            self._add(static[0], owner)
        else:
            ttl = min(rrset.ttl for rrset in node.values())
            self.answer.append(RR(owner, QTYPE.HINFO, ttl=ttl, rdata=RD(b"\x07RFC8482\x00")))
            if self.signing is not None:
                name = next(iter(node.values())).name
                self.answer.extend(self.signing.hinfo_rrsigs(name, owner))
        return self._positive()

    def _dynamic(self, rrset: RRset, owner: DNSLabel) -> Prepared:
        return Prepared(
            RCODE_NOERROR,
            True,
            EMPTY,
            EMPTY,
            dynamic=rrset.dynamic,
            zone=self.zone.origin,
            wire=self.wire,
            qtype=self.qtype,
            prefix=tuple(self.answer),
            owner=None if owner.label == self.labels else owner,
            ttl=rrset.ttl,
            source=self.zone,
            signing=self.signing,
            rrset_name=rrset.name,
            proof=tuple(_unique(self.proof)),
        )

    def _add_targets(self, rrset: RRset) -> None:
        if rrset.rtype not in (TYPE_NS, TYPE_MX, TYPE_SRV):
            return
        for rdata in rrset.rdatas:
            target = rdata.target if rrset.rtype == TYPE_SRV else rdata.label
            self.additional.extend(self._addresses_of(str(target).lower()))

    def _addresses_of(self, target: str) -> list[RR]:
        node = self.zone.nodes.get(target) if self.zone.contains(target) else None
        if not node:
            return []
        rrs: list[RR] = []
        signing = self.signing if self.zone.delegation_for(target) is None else None  # glue: no
        for rtype in ADDRESS_TYPES:
            rrset = node.get(rtype)
            if rrset is not None:
                owner = DNSLabel(target)
                rrs.extend(_rrs(rrset, owner))
                if signing is not None and rrset.dynamic is None:
                    rrs.extend(signing.rrsigs(target, rtype, owner))
                elif signing is not None:
                    values = tuple(str(r) for r in rrset.rdatas)
                    rrs.extend(signing.value_rrsigs(target, rtype, values, owner) or [])
        return rrs


def _unique(rrs: list[RR]) -> list[RR]:
    """Each RR once (RFC 2181 section 5), e.g. when two MX records name the same host."""
    seen: set[tuple[str, int, str]] = set()
    result = []
    for rr in rrs:
        key = (str(rr.rname).lower(), rr.rtype, str(rr.rdata))
        if key not in seen:
            seen.add(key)
            result.append(rr)
    return result


def _rrs(rrset: RRset, owner: DNSLabel) -> list[RR]:
    return [RR(owner, rrset.rtype, ttl=rrset.ttl, rdata=rdata) for rdata in rrset.rdatas]


__all__ = ["TYPE_AAAA", "Prepared", "Resolver", "Sections", "ZoneSignatures", "encode"]

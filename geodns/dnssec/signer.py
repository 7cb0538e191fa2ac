"""Signing a zone: every RRset, every value set of every dynamic record, the NSEC chain.

`sign_zone()` runs when a snapshot is built, re-signed before its signatures expire, or when
a key changes state (off the event loop; geodns.serving.snapshot and geodns.daemon.app). The
`SignedZone` it returns only hands out records made then: geodns.dns.resolve joins them into
replies, so a query never signs. Signatures are made by dnspython's `dns.dnssec.sign` (its
canonical forms of RFC 4034 section 6) with `cryptography`'s keys; a signature whose RRset,
key and validity still hold is carried over from the previous signing rather than made again
(a reload signs only what changed).

A geo zone has a dozen signatures per name (every value set of its dynamic records, its
NSEC), and dnspython's `sign` spends about 80% of each building objects. So the ZSK's
signatures are made by `_ZoneSigner`, which lays out the signed data of RFC 4034 section
3.1.8.1 (the RRSIG's fields, then each record in canonical order) from bytes prepared once per
name, with each RDATA in dnspython's canonical form (`to_digestable`; an address is its 4 or
16 octets). tests/test_dnssec.py checks that it gives the very bytes dnspython's `sign` gives
(Ed25519 signatures are deterministic: they must be identical). The KSK's few signatures
(DNSKEY, CDS, CDNSKEY) are made by dnspython's `sign` itself.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from dnslib import RD, RR, DNSBuffer, DNSLabel

from geodns.dns.zone import TYPE_A, TYPE_AAAA, TYPE_DS, TYPE_NS, RRset, Zone
from geodns.dnssec.denial import TYPE_NSEC, TYPE_RRSIG, NsecChain
from geodns.dnssec.keys import KSK, ZoneKey
from geodns.dnssec.policy import DnssecPolicy
from geodns.dnssec.rollover import KeySet

TYPE_DNSKEY = 48
TYPE_CDS = 59
TYPE_CDNSKEY = 60
TYPE_HINFO = 13
KEY_TYPES = (TYPE_DNSKEY, TYPE_CDS, TYPE_CDNSKEY)  # signed by the KSK
HINFO_RFC8482 = b"\x07RFC8482\x00"  # what an ANY query gets (geodns.dns.resolve)
IN = dns.rdataclass.IN

ValueSets = Mapping[tuple[str, int], Iterable[frozenset[str]]]


class _Uncompressed(DNSBuffer):
    """dnslib's buffer without name compression: rdata as it is signed (RFC 4034 6.2)."""

    def encode_name(self, name: object) -> None:
        self.encode_name_nocompress(name)


def rdata_wire(rdata: object) -> bytes:
    buffer = _Uncompressed()
    rdata.pack(buffer)  # type: ignore[attr-defined]
    return bytes(buffer.data)


@dataclass(frozen=True)
class Signature:
    """The RRSIG(s) of one RRset as they go on the wire (one per signing key: two KSKs sign
    the DNSKEY RRset during a KSK roll), and when they stop being valid."""

    ttl: int
    wires: tuple[bytes, ...]
    expiration: int


@dataclass(eq=False)
class SignedZone:
    """A zone with its DNSSEC records, all made when it was signed.

    `zone` is the zone served for the origin (the input plus DNSKEY, CDS and CDNSKEY at the
    apex). Lookups return dnslib records for geodns.dns.resolve; `owner` is the name as it
    appears in the answer (a wildcard's RRSIG is given the query name).
    """

    zone: Zone
    policy: DnssecPolicy
    keys: KeySet
    signed_at: float
    static: dict[tuple[str, int], Signature] = field(default_factory=dict)
    values: dict[tuple[str, int], dict[frozenset[str], Signature]] = field(default_factory=dict)
    hinfo: dict[str, Signature] = field(default_factory=dict)
    chain: NsecChain | None = None
    nsec: dict[str, Signature] = field(default_factory=dict)
    nsec_ttl: int = 0
    max_ttl: int = 0
    made: int = 0  # signatures made by this signing
    reused: int = 0  # carried over from the previous one
    seconds: float = 0.0
    incomplete: tuple[str, ...] = ()  # dynamic records whose value sets were cut short
    memo: dict[tuple[object, ...], Signature] = field(default_factory=dict)
    key_files: tuple[object, ...] = ()  # the key store's signature when signed

    @property
    def origin(self) -> str:
        return self.zone.origin

    @property
    def earliest_expiry(self) -> float:
        return float(min((s.expiration for s in self.memo.values()), default=0))

    def due(self, now: float) -> bool:
        """Whether it must be signed again now: signatures near expiry or a key event."""
        if self.earliest_expiry - now <= self.policy.signature_refresh:
            return True
        return self.keys.next_event is not None and now >= self.keys.next_event

    # -- what geodns.dns.resolve asks (the ZoneSignatures protocol) ------------------------------

    def rrsigs(self, name: str, rtype: int, owner: DNSLabel) -> list[RR]:
        signature = self.static.get((name, rtype))
        return [] if signature is None else _rrsigs(owner, signature)

    def value_rrsigs(
        self, name: str, rtype: int, values: tuple[str, ...], owner: DNSLabel
    ) -> list[RR] | None:
        by_values = self.values.get((name, rtype))
        signature = by_values.get(frozenset(values)) if by_values is not None else None
        return None if signature is None else _rrsigs(owner, signature)

    def hinfo_rrsigs(self, name: str, owner: DNSLabel) -> list[RR]:
        signature = self.hinfo.get(name)
        return [] if signature is None else _rrsigs(owner, signature)

    def nsec_at(self, name: str) -> list[RR]:
        """The NSEC record owned by `name` and its RRSIG ([] when the name has none)."""
        chain = self.chain
        if chain is None or name not in chain:
            return []
        owner = DNSLabel(name)
        rdata = chain.rdatas[name]
        return [
            RR(owner, TYPE_NSEC, ttl=self.nsec_ttl, rdata=RD(rdata.to_wire())),
            *_rrsigs(owner, self.nsec[name]),
        ]

    def nsec_covering(self, name: str) -> list[RR]:
        """The NSEC that proves `name` does not exist (or, for a name in the chain, its own)."""
        if self.chain is None:
            return []
        return self.nsec_at(name if name in self.chain else self.chain.owner_covering(name))


def _rrsigs(owner: DNSLabel, signature: Signature) -> list[RR]:
    return [RR(owner, TYPE_RRSIG, ttl=signature.ttl, rdata=RD(wire)) for wire in signature.wires]


def with_key_records(zone: Zone, keys: KeySet, policy: DnssecPolicy) -> Zone:
    """The zone with DNSKEY (every published key), CDS and CDNSKEY (the KSKs, RFC 7344) at
    its apex."""
    origin = dns.name.from_text(zone.origin)
    dnskeys = [key.dnskey for key in keys.published]
    ksks = [key for key in keys.published if key.role == KSK]
    cds = [dns.dnssec.make_cds(origin, key.dnskey, "SHA256") for key in ksks]
    cdnskey = [dns.dnssec.make_cdnskey(key.private.public_key(), key.algorithm) for key in ksks]
    apex = dict(zone.nodes.get(zone.origin, {}))
    for rtype, rdatas in ((TYPE_DNSKEY, dnskeys), (TYPE_CDS, cds), (TYPE_CDNSKEY, cdnskey)):
        apex[rtype] = RRset(
            zone.origin,
            rtype,
            policy.dnskey_ttl,
            tuple(RD(rdata.to_wire()) for rdata in rdatas),
        )
    return replace(zone, nodes={**zone.nodes, zone.origin: apex})


class _Signer:
    """One signing run: keys, validity and the previous run's signatures to carry over."""

    def __init__(
        self,
        origin: str,
        keys: KeySet,
        policy: DnssecPolicy,
        now: float,
        previous: SignedZone | None,
    ) -> None:
        self.origin = dns.name.from_text(origin)
        self.keys = keys
        self.policy = policy
        self.now = now
        self.inception = int(now - policy.inception_offset)
        self.expiration = int(now + policy.signature_validity)
        self.previous = previous.memo if previous is not None else {}
        self.memo: dict[tuple[object, ...], Signature] = {}
        self.made = 0
        self.reused = 0
        self.zsk = _ZoneSigner(keys.zsk, self.origin, self.inception, self.expiration)

    def sign_addresses(self, name: str, rtype: int, ttl: int, values: frozenset[str]) -> Signature:
        """A dynamic record's value set (A or AAAA), by `_AddressSigner`."""
        key = self.keys.zsk
        memo_key = (name, rtype, ttl, values, ((key.tag, key.algorithm),))
        old = self.previous.get(memo_key)
        if old is not None and old.expiration - self.now > self.policy.signature_refresh:
            self.memo[memo_key] = old
            self.reused += 1
            return old
        signature = Signature(
            ttl, (self.zsk.sign_addresses(name, rtype, ttl, values),), self.expiration
        )
        self.memo[memo_key] = signature
        self.made += 1
        return signature

    def sign(self, name: str, rtype: int, ttl: int, rdatas: list[dns.rdata.Rdata]) -> Signature:
        signers: tuple[ZoneKey, ...] = self.keys.ksks if rtype in KEY_TYPES else (self.keys.zsk,)
        wires = tuple(sorted(r.to_digestable(self.origin) for r in rdatas))
        memo_key = (name, rtype, ttl, wires, tuple((k.tag, k.algorithm) for k in signers))
        old = self.previous.get(memo_key)
        if old is not None and old.expiration - self.now > self.policy.signature_refresh:
            self.memo[memo_key] = old
            self.reused += 1
            return old
        if rtype not in KEY_TYPES:  # the ZSK's: laid out by _ZoneSigner
            signature = Signature(ttl, (self.zsk.sign(name, rtype, ttl, wires),), self.expiration)
            self.memo[memo_key] = signature
            self.made += 1
            return signature
        rrset = dns.rrset.RRset(dns.name.from_text(name), IN, _rdtype(rtype))
        for rdata in rdatas:
            rrset.add(rdata, ttl)
        made = []
        for key in signers:
            rrsig = dns.dnssec.sign(
                rrset,
                key.private,
                self.origin,
                key.dnskey,
                inception=self.inception,
                expiration=self.expiration,
            )
            made.append(bytes(rrsig.to_wire() or b""))
        signature = Signature(ttl, tuple(made), self.expiration)
        self.memo[memo_key] = signature
        self.made += 1
        return signature


class _ZoneSigner:
    """RRSIGs by one key without dnspython's per-record objects: the RRSIG's fixed fields and
    each record's header are made once per (owner, type, TTL); an RRset then costs a sort, a
    join and the signature itself."""

    def __init__(self, key: ZoneKey, origin: dns.name.Name, inception: int, expiration: int):
        self.key = key
        self.signer = origin.canonicalize().to_wire() or b""
        self.times = struct.pack(">II", expiration, inception)
        self.heads: dict[tuple[str, int, int], tuple[bytes, bytes]] = {}

    def sign_addresses(self, name: str, rtype: int, ttl: int, values: Iterable[str]) -> bytes:
        """The RRSIG RDATA (wire) over the A or AAAA RRset of `values` at `name`."""
        family = socket.AF_INET if rtype == TYPE_A else socket.AF_INET6
        return self.sign(name, rtype, ttl, [socket.inet_pton(family, value) for value in values])

    def sign(self, name: str, rtype: int, ttl: int, rdatas: Iterable[bytes]) -> bytes:
        """The RRSIG RDATA (wire) over the RRset at `name` whose RDATAs, in canonical form
        (RFC 4034 section 6.2), are `rdatas`."""
        head = self.heads.get((name, rtype, ttl))
        if head is None:
            owner = dns.name.from_text(name)
            labels = len(owner) - 1 - (1 if owner.is_wild() else 0)
            fields = struct.pack(">HBBI", rtype, self.key.algorithm, labels, ttl)
            rrsig = fields + self.times + struct.pack(">H", self.key.tag) + self.signer
            record = (owner.canonicalize().to_wire() or b"") + struct.pack(">HHI", rtype, 1, ttl)
            head = self.heads[(name, rtype, ttl)] = (rrsig, record)
        rrsig, record = head
        data = rrsig + b"".join(
            record + struct.pack(">H", len(rdata)) + rdata for rdata in sorted(set(rdatas))
        )
        private = self.key.private
        if isinstance(private, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            signature = private.sign(data)
        return rrsig + signature


def _rdtype(rtype: int) -> dns.rdatatype.RdataType:
    return dns.rdatatype.RdataType.make(rtype)


def _from_dnslib(rtype: int, rdata: object) -> dns.rdata.Rdata:
    wire = rdata_wire(rdata)
    return dns.rdata.from_wire(IN, _rdtype(rtype), wire, 0, len(wire))


def _from_values(rtype: int, values: Iterable[str]) -> list[dns.rdata.Rdata]:
    return [dns.rdata.from_text(IN, _rdtype(rtype), value) for value in values]


def sign_zone(
    zone: Zone,
    keys: KeySet,
    policy: DnssecPolicy,
    now: float,
    value_sets: ValueSets,
    previous: SignedZone | None = None,
    incomplete: tuple[str, ...] = (),
    key_files: tuple[object, ...] = (),
) -> SignedZone:
    """Sign a zone with the keys of `keys` at `now`. `value_sets`: for each dynamic RRset
    (owner, type), every value set it can answer (geodns.geo.answersets)."""
    started = time.perf_counter()
    served = with_key_records(zone, keys, policy)
    signer = _Signer(zone.origin, keys, policy, now, previous)
    signed = SignedZone(served, policy, keys, now, incomplete=incomplete, key_files=key_files)
    types_by_name: dict[str, list[int]] = {}
    max_ttl = max(zone.negative_ttl, policy.dnskey_ttl)
    for name, node in served.nodes.items():
        cut = served.delegation_for(name)
        if (cut is not None and cut != name) or served.dname_above(name) is not None:
            continue  # glue below a cut, or occluded by a DNAME: not authoritative data
        types_by_name[name] = list(node)
        static = False
        for rtype, rrset in node.items():
            max_ttl = max(max_ttl, rrset.ttl)
            if cut == name and rtype != TYPE_DS:
                continue  # the NS RRset of a delegation is the child's: not signed here
            if rrset.dynamic is None:
                static = True
                rdatas = [_from_dnslib(rtype, r) for r in rrset.rdatas]
                signed.static[(name, rtype)] = signer.sign(name, rtype, rrset.ttl, rdatas)
                continue
            by_values = signed.values.setdefault((name, rtype), {})
            for values in value_sets.get((name, rtype), ()):
                if rtype in (TYPE_A, TYPE_AAAA):
                    by_values[values] = signer.sign_addresses(name, rtype, rrset.ttl, values)
                else:
                    by_values[values] = signer.sign(
                        name, rtype, rrset.ttl, _from_values(rtype, sorted(values))
                    )
        if not static and cut != name:  # an ANY query there is answered with HINFO (RFC 8482)
            ttl = min(rrset.ttl for rrset in node.values())
            hinfo = dns.rdata.from_wire(
                IN, dns.rdatatype.HINFO, HINFO_RFC8482, 0, len(HINFO_RFC8482)
            )
            signed.hinfo[name] = signer.sign(name, TYPE_HINFO, ttl, [hinfo])
    chain = NsecChain(types_by_name)
    signed.chain = chain
    signed.nsec_ttl = min(zone.negative_ttl, zone.soa.ttl)  # RFC 9077
    for name in chain.names:
        signed.nsec[name] = signer.sign(name, TYPE_NSEC, signed.nsec_ttl, [chain.rdatas[name]])
    signed.max_ttl = max_ttl
    signed.memo = signer.memo
    signed.made, signed.reused = signer.made, signer.reused
    signed.seconds = time.perf_counter() - started
    return signed


__all__ = ["SignedZone", "sign_zone", "with_key_records", "TYPE_NS"]

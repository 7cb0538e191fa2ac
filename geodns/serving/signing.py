"""DNSSEC for snapshots: which zones are signed, with which keys, and when to sign again.

The glue between the server config, the geo layer's answer sets and geodns.dnssec. Signing
runs where snapshots are built (start, reload: geodns.serving.snapshot.build_snapshot) and in
`resign()` when signatures near expiry or a key changes state (geodns.daemon.app calls it in
a thread). A health change never signs: every value set a dynamic record can answer under any
health view was signed with the zone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from geodns.common.errors import ConfigError, Problem
from geodns.config.server import ServerConfig
from geodns.dns.zone import Zone
from geodns.dnssec.keys import KeyStore, ZoneKey
from geodns.dnssec.policy import DnssecPolicy
from geodns.dnssec.rollover import Plan, keep_keys, key_set
from geodns.dnssec.signer import SignedZone, ValueSets, sign_zone
from geodns.geo.answersets import answer_sets
from geodns.geo.dynamic import DynamicRecord

KEY_LEAD = 600.0  # seconds before its publication a successor key's files are written


def value_sets(zone: Zone) -> tuple[ValueSets, tuple[str, ...]]:
    """Every value set of every dynamic RRset of a zone, and the records whose list the
    limit cut short (geodns check warns about them)."""
    found: dict[tuple[str, int], set[frozenset[str]]] = {}
    cut: list[str] = []
    for name, node in zone.nodes.items():
        for rtype, rrset in node.items():
            record: DynamicRecord | None = rrset.dynamic
            if record is None:
                continue
            sets, truncated = answer_sets(record)
            found[(name, rtype)] = sets
            if truncated:
                cut.append(name)
    return found, tuple(cut)


def sign_zones(
    config: ServerConfig,
    zones: Mapping[str, Zone],
    now: float,
    previous: Mapping[str, SignedZone] | None = None,
) -> dict[str, SignedZone]:
    """Sign every zone the config signs; raise ConfigError when a zone has no usable keys
    (`geodns serve` makes them before building its first snapshot: `keep_all_keys`)."""
    signed: dict[str, SignedZone] = {}
    problems: list[Problem] = []
    for origin, policy in config.dnssec.items():
        zone = zones.get(origin)
        if zone is None:
            continue
        store = KeyStore(policy.key_directory, origin)
        try:
            keys = key_set(store.load(), now)
        except Exception as exc:  # a damaged key file: the old snapshot keeps serving
            problems.append(Problem(str(store.directory), 0, str(exc)))
            continue
        if keys is None:
            problems.append(
                Problem(
                    str(store.directory),
                    0,
                    f"zone {origin}: no active DNSSEC keys (geodns serve makes them on start)",
                )
            )
            continue
        sets, cut = value_sets(zone)
        old = previous.get(origin) if previous else None
        signed[origin] = sign_zone(
            zone, keys, policy, now, sets, old, cut, key_files=store.signature()
        )
    if problems:
        raise ConfigError(problems)
    return signed


def max_ttl(zone: Zone, policy: DnssecPolicy) -> int:
    ttls = [rrset.ttl for node in zone.nodes.values() for rrset in node.values()]
    return max([zone.negative_ttl, policy.dnskey_ttl, *ttls])


def keep_all_keys(
    config: ServerConfig, zones: Mapping[str, Zone], now: float
) -> Iterator[tuple[str, Plan, list[ZoneKey]]]:
    """One step of every signed zone's key schedule (the main process only: it alone writes
    key files): first keys on the first start, successors ahead of a rollover, removals.
    A zone missing from `zones` (not loaded yet: the step at start, or a zone newly signed
    by a reload) gets only its first keys; its successors wait for a step that knows the
    zone's largest TTL, which sets when the replaced ZSK may leave."""
    for origin, policy in config.dnssec.items():
        zone = zones.get(origin)
        ttl = max_ttl(zone, policy) if zone is not None else None
        store = KeyStore(policy.key_directory, origin)
        keys, step = keep_keys(store, policy, now, ttl, KEY_LEAD)
        yield origin, step, keys


@dataclass(frozen=True)
class SigningDue:
    """Why a snapshot must be signed again (empty: it need not)."""

    zones: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.zones)


def signing_due(signed: Mapping[str, SignedZone], config: ServerConfig, now: float) -> SigningDue:
    """Zones whose signatures near expiry, whose keys change state now, or whose key files
    changed (another process made a successor)."""
    due = []
    for origin, zone in signed.items():
        policy = config.dnssec.get(origin, zone.policy)
        if zone.due(now) or KeyStore(policy.key_directory, origin).signature() != zone.key_files:
            due.append(origin)
    return SigningDue(tuple(due))

"""Which keys are in the zone and which sign, at a given time; what to do next to roll them.

Pure functions of (keys, policy, now): the clock is passed in, so a test can run a whole ZSK
rollover in milliseconds and the daemon calls the same code with the wall clock.

The ZSK rolls by pre-publication (RFC 6781 section 4.1.1.1; timings from RFC 7583 section 3.2):

    publish N --Ipub--> N signs, O retires --Iret--> O removed
    Ipub = dnskey_ttl + propagation_delay   (every cache has a DNSKEY RRset holding N)
    Iret = propagation_delay + max TTL      (every signature by O has left the caches)

geodns re-signs the whole zone at once when N becomes active (Dsgn = 0), so no answer is
ever signed by a key a validator may not have in its cached DNSKEY RRset. The KSK is rolled
by hand (it needs the parent's DS, see docs/dnssec.md); CDS/CDNSKEY tell parents that read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from geodns.dnssec.keys import KSK, ZSK, KeyStore, ZoneKey
from geodns.dnssec.policy import DnssecPolicy


@dataclass(frozen=True)
class KeySet:
    """The keys of a zone at one moment: the DNSKEY RRset, and which keys sign what."""

    published: tuple[ZoneKey, ...]
    ksks: tuple[ZoneKey, ...]  # sign the apex's DNSKEY, CDS and CDNSKEY RRsets
    zsk: ZoneKey  # signs everything else
    next_event: float | None  # when any key's state changes next (None: never)

    @property
    def tags(self) -> tuple[int, ...]:
        return tuple(sorted(key.tag for key in self.published))


def key_set(keys: Sequence[ZoneKey], now: float) -> KeySet | None:
    """The key set at `now`, or None when no KSK or no ZSK is active."""
    published = tuple(k for k in keys if k.published(now))
    ksks = tuple(k for k in published if k.role == KSK and k.active(now))
    zsks = [k for k in published if k.role == ZSK and k.active(now)]
    if not ksks or not zsks:
        return None
    zsk = max(zsks, key=lambda k: (k.activate, k.tag))  # the newest active one signs
    return KeySet(published, ksks, zsk, _next_event(keys, now))


def _next_event(keys: Sequence[ZoneKey], now: float) -> float | None:
    times = [
        t
        for k in keys
        for t in (k.publish, k.activate, k.retire, k.remove)
        if t is not None and t > now
    ]
    return min(times) if times else None


@dataclass(frozen=True)
class NewKey:
    role: str
    publish: float
    activate: float


@dataclass(frozen=True)
class Plan:
    """What the key keeper does now: make keys, store new timings, delete removed keys."""

    new: tuple[NewKey, ...] = ()
    update: tuple[ZoneKey, ...] = ()
    delete: tuple[ZoneKey, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.new or self.update or self.delete)


def publication_interval(policy: DnssecPolicy) -> int:
    """Ipub: from a new ZSK's publication to its first signature."""
    return policy.dnskey_ttl + policy.propagation_delay


def retire_interval(policy: DnssecPolicy, max_ttl: int) -> int:
    """Iret: from an old ZSK's last signature to its removal from the DNSKEY RRset."""
    return policy.propagation_delay + max(max_ttl, policy.dnskey_ttl)


def plan(
    keys: Sequence[ZoneKey],
    policy: DnssecPolicy,
    now: float,
    max_ttl: int | None,
    lead: float = 0,
) -> Plan:
    """The next steps of the schedule at `now`. `lead`: make a successor that much before its
    publication time, so every process reads its file before it must publish it. `max_ttl`:
    the zone's largest TTL, which sets when a replaced ZSK may leave (Iret); None while the
    zone is not loaded (a server's first step at start): then only missing first keys are
    made, and the successor waits for the next step, which knows the zone."""
    new: list[NewKey] = []
    update: list[ZoneKey] = []
    notes: list[str] = []
    live = [k for k in keys if k.remove is None or k.remove > now]
    if not any(k.role == KSK for k in live):
        new.append(NewKey(KSK, now, now))
    zsks = sorted((k for k in live if k.role == ZSK), key=lambda k: (k.activate, k.tag))
    if not zsks:
        new.append(NewKey(ZSK, now, now))
    elif policy.zsk_lifetime and max_ttl is not None:
        newest = zsks[-1]
        roll_at = newest.activate + policy.zsk_lifetime
        publish_at = roll_at - publication_interval(policy)
        if now >= publish_at - lead:
            publish = max(publish_at, now)
            activate = max(roll_at, publish + publication_interval(policy))
            new.append(NewKey(ZSK, publish, activate))
            remove = activate + retire_interval(policy, max_ttl)
            for old in zsks:
                if old.retire is None or old.retire > activate:
                    update.append(replace(old, retire=activate, remove=remove))
            notes.append(f"ZSK {newest.tag} rolls at {activate:.0f}")
    delete = tuple(k for k in keys if k.remove is not None and k.remove <= now)
    return Plan(tuple(new), tuple(update), delete, tuple(notes))


def carry_out(store: KeyStore, plan_now: Plan, algorithm: int, now: float) -> list[ZoneKey]:
    """Make, update and delete key files as `plan_now` says; return the keys on disk after."""
    for old in plan_now.update:
        store.save(old)
    for wanted in plan_now.new:
        store.generate(wanted.role, algorithm, now, wanted.publish, wanted.activate)
    for gone in plan_now.delete:
        store.delete(gone)
    return store.load()


def keep_keys(
    store: KeyStore, policy: DnssecPolicy, now: float, max_ttl: int | None, lead: float = 0
) -> tuple[list[ZoneKey], Plan]:
    """One step of the unattended schedule for a zone (the main process calls it on start and
    then periodically): the keys after it, and what was done."""
    keys = store.load()
    step = plan(keys, policy, now, max_ttl, lead)
    if step.empty:
        return keys, step
    return carry_out(store, step, policy.algorithm, now), step


def key_problems(keys: Sequence[ZoneKey], policy: DnssecPolicy, now: float) -> list[str]:
    """What `geodns check` warns about a zone's keys: missing, not active, past their time."""
    if not keys:
        return ["no DNSSEC keys yet: `geodns serve` makes a KSK and a ZSK on its first start"]
    found = []
    if key_set(keys, now) is None:
        found.append("no active KSK and ZSK at this time: the zone cannot be signed")
    zsks = sorted((k for k in keys if k.role == ZSK), key=lambda k: k.activate)
    if zsks and policy.zsk_lifetime:
        newest = zsks[-1]
        overdue = now - (newest.activate + policy.zsk_lifetime)
        if overdue > 0:
            found.append(
                f"ZSK {newest.tag} is {overdue / 86400:.1f} days past its lifetime "
                "(a running geodns rolls it; is it running?)"
            )
    for key in keys:
        if key.role == KSK and policy.ksk_lifetime and key.age(now) > policy.ksk_lifetime:
            found.append(f"KSK {key.tag} is older than ksk_lifetime: roll it (docs/dnssec.md)")
    return found

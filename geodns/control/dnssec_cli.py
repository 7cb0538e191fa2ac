"""`geodns dnssec ...` (DS records and key states for the operator) and the DNSSEC part of
`geodns check`."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from geodns.common.errors import Problem
from geodns.config.server import ServerConfig
from geodns.dns.zone import Zone
from geodns.dnssec.keys import KSK, KeyFileError, KeyStore, ds_records
from geodns.dnssec.rollover import key_problems
from geodns.geo.answersets import DEFAULT_LIMIT
from geodns.serving.signing import value_sets


def dnssec_warnings(config: ServerConfig, zones: dict[str, Zone], now: float) -> list[Problem]:
    """Warnings about the keys of every signed zone (missing, unreadable, too open, overdue)
    and about dynamic records with more value sets than are signed ahead."""
    problems: list[Problem] = []
    for origin, policy in sorted(config.dnssec.items()):
        store = KeyStore(policy.key_directory, origin)
        where = str(store.directory)
        try:
            keys = store.load()
        except KeyFileError as exc:
            problems.append(Problem(where, 0, str(exc), severity="error"))
            continue
        for message in key_problems(keys, policy, now) + store.unsafe_permissions():
            problems.append(Problem(where, 0, f"zone {origin}: {message}", severity="warning"))
        zone = zones.get(origin)
        if zone is None:
            continue
        _, cut = value_sets(zone)
        for name in cut:
            problems.append(
                Problem(
                    zone.path,
                    0,
                    f"{name}: more than {DEFAULT_LIMIT} answer sets; only the first are signed "
                    "ahead, other answers would not validate (fewer candidates or `answers`)",
                    severity="warning",
                )
            )
    return problems


def cmd_dnssec(args: argparse.Namespace, config: ServerConfig) -> int:
    zone = args.zone.lower().rstrip(".") + "."
    policy = config.dnssec.get(zone)
    if policy is None:
        print(f"geodns dnssec: zone {zone} is not signed (zones.{zone.rstrip('.')}.dnssec.enabled)")
        return 1
    store = KeyStore(policy.key_directory, zone)
    keys = store.load()
    now = time.time()
    if not keys:
        print(f"geodns dnssec: no keys for {zone} in {store.directory} (geodns serve makes them)")
        return 1
    if args.action == "ds":
        for line in ds_records(keys, now):
            print(line)
        return 0
    if args.action == "add-ksk":  # step 1 of a KSK roll: both KSKs sign the DNSKEY RRset
        key = store.generate(KSK, policy.algorithm, now, now, now)
        print(f"made {key.label}; a running geodns signs with it within a minute. Its DS:")
        print(f"{zone} IN DS {key.ds().to_text()}")
        return 0
    if args.action == "retire-ksk":  # the last step: the parent publishes only the new DS
        old = [k for k in keys if k.role == KSK and k.tag == args.tag]
        if not old or len([k for k in keys if k.role == KSK]) < 2:
            print(f"geodns dnssec: no KSK {args.tag}, or it is the zone's only KSK")
            return 1
        store.save(replace(old[0], retire=now, remove=now))
        print(f"KSK {args.tag} leaves the zone within a minute")
        return 0
    for key in sorted(keys, key=lambda k: (k.role, k.activate)):
        states = [
            "published" if key.published(now) else "unpublished",
            "signing" if key.active(now) else "not signing",
        ]
        times = [
            f"{what} {_when(t)}"
            for what, t in (
                ("publish", key.publish),
                ("activate", key.activate),
                ("retire", key.retire),
                ("remove", key.remove),
            )
            if t is not None
        ]
        print(f"{key.label} algorithm {key.algorithm}: {', '.join(states)}; {'; '.join(times)}")
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

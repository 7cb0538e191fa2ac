"""A zone's DNSSEC settings (`zones: {ZONE: {dnssec: ...}}` in the server config)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ECDSAP256SHA256 = 13
ED25519 = 15
ALGORITHMS = {"ecdsap256sha256": ECDSAP256SHA256, "ed25519": ED25519}
ALGORITHM_NAMES = {number: name.upper() for name, number in ALGORITHMS.items()}

DAY = 86400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


def parse_duration(value: object) -> int | None:
    """Seconds from an int or a text such as '14d', '12h', '90s'; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return int(match.group(1)) * _UNITS[match.group(2) or "s"]
    return None


@dataclass(frozen=True)
class DnssecPolicy:
    """How one zone is signed and how its keys roll.

    Times are seconds. Signatures are valid from `inception_offset` before signing (clocks of
    validators may lag) to `signature_validity` after it, and are all made again when less
    than `signature_refresh` remains. The ZSK is replaced every `zsk_lifetime` by
    pre-publication (RFC 6781 section 4.1.1.1, RFC 7583 section 3.2): its successor is
    published `dnskey_ttl + propagation_delay` before it signs, and the old key stays
    published until every signature it made has expired from caches.
    """

    key_directory: Path
    algorithm: int = ECDSAP256SHA256
    signature_validity: int = 14 * DAY
    signature_refresh: int = 7 * DAY
    inception_offset: int = 3600
    dnskey_ttl: int = 3600
    zsk_lifetime: int = 90 * DAY
    ksk_lifetime: int = 0  # age after which `geodns check` says to roll the KSK by hand; 0: never
    propagation_delay: int = 3600

    @property
    def algorithm_name(self) -> str:
        return ALGORITHM_NAMES.get(self.algorithm, str(self.algorithm))

    def problems(self) -> list[str]:
        """What makes the schedule unsafe (the config loader reports these)."""
        found = []
        if self.signature_refresh >= self.signature_validity:
            found.append("signature_refresh must be shorter than signature_validity")
        if self.zsk_lifetime and self.zsk_lifetime <= 2 * (
            self.dnskey_ttl + self.propagation_delay
        ):
            found.append("zsk_lifetime must be longer than twice dnskey_ttl + propagation_delay")
        return found

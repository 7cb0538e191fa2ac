"""DNSSEC in /metrics: when the earliest signature expires, how old each key is, what the last
signing cost. A collector of its own, read at scrape time from the current snapshot's signed
zones (geodns.dnssec.signer.SignedZone)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:  # a server without DNSSEC does not import the signer (dnspython, cryptography)
    from geodns.dnssec.signer import SignedZone


class DnssecCollector:
    """Gauges of every signed zone. `signed` returns the zones being served; `clock` is
    the server's notion of now (the one its key schedule runs on)."""

    def __init__(
        self, signed: Callable[[], Mapping[str, SignedZone]], clock: Callable[[], float]
    ) -> None:
        self.signed = signed
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        zones = self.signed()
        if not zones:
            return
        now = self.clock()
        expiry = GaugeMetricFamily(
            "geodns_dnssec_signature_expiry_timestamp_seconds",
            "When the zone's earliest RRSIG expires (signing again is due before)",
            labels=["zone"],
        )
        ages = GaugeMetricFamily(
            "geodns_dnssec_key_age_seconds",
            "Seconds since a published key became active (negative: not yet active)",
            labels=["zone", "role", "tag", "algorithm", "signing"],
        )
        count = GaugeMetricFamily(
            "geodns_dnssec_signatures", "RRSIGs the zone's last signing holds", labels=["zone"]
        )
        seconds = GaugeMetricFamily(
            "geodns_dnssec_signing_seconds",
            "How long the zone's last signing took",
            labels=["zone"],
        )
        for origin, zone in sorted(zones.items()):
            expiry.add_metric([origin], zone.earliest_expiry)
            count.add_metric([origin], len(zone.memo))
            seconds.add_metric([origin], zone.seconds)
            signers = {zone.keys.zsk.tag, *(k.tag for k in zone.keys.ksks)}
            for key in zone.keys.published:
                ages.add_metric(
                    [
                        origin,
                        key.role,
                        str(key.tag),
                        str(key.algorithm),
                        str(key.tag in signers).lower(),
                    ],
                    now - key.activate,
                )
        yield from (expiry, ages, count, seconds)

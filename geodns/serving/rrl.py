"""Response rate limiting (RRL), in the manner of BIND, NSD and Knot DNS.

A spoofed query makes a server send its answer to the victim whose address was forged; RRL
caps how many identical responses one client network gets per second, so geodns cannot be used
to flood someone. Responses are counted per (client network, response kind): a positive answer
per name and type, NXDOMAIN, NODATA and referrals per zone (so random names share one budget),
errors per network alone (geodns.serving.engine._rrl_key). Networks are /24 for IPv4 and /56
for IPv6 (geodns.serving.client).

Each account is a token bucket refilled at `rate` per second and holding at most one second of
credit. Over the limit the balance goes into debt, up to `window` seconds' worth, so a flood
keeps being limited for a while after it slows (a real client rarely notices). A limited
response is dropped, except every `slip`-th one, which goes out truncated (TC=1, no records): a
real resolver behind a spoofed flood retries over TCP, which is never limited, and gets its
answer. A client showing a valid DNS cookie is never limited (it cannot be spoofed), and one
showing only its own cookie gets BADCOOKIE with a server cookie to retry with.

Time comes in as `now`; the accounts are bounded (the "rrl" line of geodns.common.caching).
"""

from __future__ import annotations

from geodns.common.caching import BoundedCache
from geodns.config.server import RrlSettings

SEND = 0
SLIP = 1
DROP = 2


class ResponseRateLimiter:
    """The accounts of one process (each worker limits its own share of the traffic)."""

    def __init__(self, settings: RrlSettings) -> None:
        self.rate = settings.rate
        self.debt = -settings.window * settings.rate
        self.slip = settings.slip
        self.accounts: BoundedCache[tuple[bytes, bytes], list[float]] = BoundedCache("rrl")
        self.slipped = 0  # responses limited, for /metrics (the server state's rrl_* read them)
        self.dropped = 0

    def check(self, network: bytes, kind: bytes, now: float) -> int:
        """SEND, SLIP or DROP for one response of `kind` to `network` at time `now`."""
        key = (network, kind)  # both keep their hash: no new bytes to hash per response
        account = self.accounts.get(key)
        rate = self.rate
        if account is None:
            self.accounts.put(key, [rate - 1.0, now, 0.0], len(network) + len(kind) + 120)
            return SEND
        balance = account[0] + (now - account[1]) * rate
        if balance > rate:  # at most one second of credit
            balance = rate
        account[1] = now
        if balance >= 1.0:
            account[0] = balance - 1.0
            return SEND
        account[0] = max(self.debt, balance - 1.0)
        account[2] += 1
        if self.slip and account[2] % self.slip == 0:
            self.slipped += 1
            return SLIP
        self.dropped += 1
        return DROP

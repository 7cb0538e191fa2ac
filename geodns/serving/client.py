"""Who sent a query: the peer address in every form the answer path needs, made once per peer.

The batched UDP transport keeps one `Client` per peer address it has seen (a bounded cache),
TCP one per connection, so a query never formats or parses an address: the text is for logs
and metrics, the family and integer value locate a resolver that sends no Client Subnet, and
`network` (the /24 or /56 around it, as bytes) is what response rate limiting counts by.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

RRL_PREFIX_V4 = 24
RRL_PREFIX_V6 = 56


@dataclass(frozen=True, slots=True)
class Client:
    """One peer. Slots rather than a NamedTuple: every query reads `exempt` (rate limiting),
    and a NamedTuple's field is read through the type's generic attribute lookup."""

    text: str
    family: int  # 4 or 6
    value: int
    network: bytes  # the RRL network: family byte + the address's first 24 / 56 bits
    exempt: bool  # from response rate limiting (loopback, or configured)


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class ClientFactory:
    """Makes Clients, knowing which networks are exempt from rate limiting."""

    def __init__(
        self,
        exempt: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = LOOPBACK,
        prefix_v4: int = RRL_PREFIX_V4,
        prefix_v6: int = RRL_PREFIX_V6,
    ) -> None:
        self.exempt = tuple(exempt)
        self.prefix_v4, self.prefix_v6 = prefix_v4, prefix_v6

    def from_text(self, text: str) -> Client:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 peer on a dual-stack socket
        return self.from_address(address)

    def from_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Client:
        family = address.version
        value = int(address)
        bits, keep = (32, self.prefix_v4) if family == 4 else (128, self.prefix_v6)
        network = bytes((family,)) + (value >> (bits - keep)).to_bytes((keep + 7) // 8, "big")
        exempt = any(address in net for net in self.exempt if net.version == family)
        return Client(str(address), family, value, network, exempt)

"""geodns: an authoritative GeoDNS nameserver that answers with the nearest healthy site."""

__version__ = "0.1.0"

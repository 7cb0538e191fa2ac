"""DNSSEC: keys, their rollover schedule, and the signatures of every answer geodns can give.

Everything here runs when a snapshot is built or re-signed, never per query: the signer turns
a zone (and every value set each dynamic record can answer) into signatures and NSEC records
that geodns.dns.resolve only joins into replies. docs/dnssec.md says what is signed when.
"""

"""A fleet of nameservers that acts as one through etcd: shared drains, health by quorum.

`member` runs this server's part (geodns.fleet.member.FleetMember); `etcd` is the client of
etcd's JSON gateway; `quorum` the pure health rule; `identity` what a member serves; `metrics`
the Prometheus families. See docs/fleet.md.
"""

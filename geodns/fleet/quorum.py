"""The fleet's health rule: a site is down when more than a share of its vantage points say so.

Pure: votes in, verdicts out. Every member runs the same function on the same votes (the member
records in etcd, its own live votes in place of its own record), so every member reaches the same
verdict and answers the same.

A vote is one member's verdict on one site from its own probes: "up", "down", or "unchecked"
(its probes have no result yet), which is no vote. With `down_share` 0.5 (the default) a site is
down when more than half of the members that have a result say so: 2 of 3, 2 of 2, 1 of 1, but
not 1 of 2 or 1 of 3. So one member whose own path to a site breaks does not pull it for anyone,
and a fleet that has shrunk to one member decides like a server on its own. A site nobody has a
result for gets no verdict: each member then follows its own checks (up until checked).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from geodns.health.state import DOWN, UP, SharedVerdict

MAX_REASON_MEMBERS = 5  # members named in a down cause; the rest are counted


def decide(
    votes_by_member: Mapping[str, Mapping[str, Mapping[str, Any]]], down_share: float
) -> dict[str, SharedVerdict]:
    """{member: {site: {"state": ..., "detail": ...}}} -> {site: verdict} for every site with a vote."""
    tallies: dict[str, tuple[list[str], list[str]]] = {}
    details: dict[tuple[str, str], str] = {}
    for member, votes in sorted(votes_by_member.items()):
        for site, vote in votes.items():
            state = vote.get("state") if isinstance(vote, Mapping) else None
            if state not in (UP, DOWN):
                continue
            down, up = tallies.setdefault(site, ([], []))
            (down if state == DOWN else up).append(member)
            if state == DOWN:
                details[site, member] = str(vote.get("detail") or "")
    verdicts = {}
    for site, (down, up) in tallies.items():
        voters = len(down) + len(up)
        is_down = len(down) > down_share * voters
        reason = ""
        if is_down:
            named = ", ".join(
                f"{m} ({details[site, m]})" if details[site, m] else m
                for m in down[:MAX_REASON_MEMBERS]
            )
            more = (
                f" and {len(down) - MAX_REASON_MEMBERS} more"
                if len(down) > MAX_REASON_MEMBERS
                else ""
            )
            reason = f"down at {len(down)} of {voters} vantage points: {named}{more}"
        verdicts[site] = SharedVerdict(is_down, len(down), voters, reason)
    return verdicts

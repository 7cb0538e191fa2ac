"""Every set of values a dynamic record can answer, under any health view, for any client.

DNSSEC signs answers when a snapshot is built, never per query (geodns.dnssec.signer), so it
needs this list ahead of time. It follows `evaluate()` (geodns.geo.dynamic) case by case:
- a pool answers one value (by weight, by sticky hashing, or as a fallback): every target
  alone; the same for `all_down: <pool>`;
- `nearest` answers the first `answers` candidates that are up (in distance order, sticky
  order, or `default_order`): every combination of 1..`answers` candidates, each giving the
  values of its targets that can be up together (a site's), or one target (a pool's);
- the record's plain values (last resort): every subset that can be up together, of the
  values it can then hold: under `nearest` with `default_order` (and no pools) the last
  resort is reached only when no candidate is up for a located user (the values that are
  always up) or none of `default_order` is up for an unlocated one (the other sites' values);
- `all_down: fail_open` answers as if everything were up: the same sets with every target.
Targets "can be up together" by site: targets that obey the same site are up or down at once,
`status: up` ones always are, `status: down` ones never are (except under fail-open).

The list is a superset (a combination may need a health view no one ever sees) and is
bounded: `limit` sets per record, the smaller combinations first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import combinations, product

from geodns.geo.dynamic import Candidate, DynamicRecord, Target

DEFAULT_LIMIT = 4096


def _up_groups(targets: Sequence[Target]) -> Iterator[frozenset[str]]:
    """The non-empty value sets of `targets` that can be up at once (plus all of them)."""
    always = frozenset(
        t.value for t in targets if t.status == "up" or (t.status == "obey" and t.site is None)
    )
    by_site: dict[str, set[str]] = {}
    for t in targets:
        if t.status == "obey" and t.site is not None:
            by_site.setdefault(t.site, set()).add(t.value)
    sites = sorted(by_site)
    if len(sites) > 12:  # 4096 subsets: take each site alone, and all of them
        choices: list[tuple[str, ...]] = [(s,) for s in sites] + [tuple(sites)]
    else:
        choices = [c for n in range(len(sites) + 1) for c in combinations(sites, n)]
    for chosen in choices:
        values = set(always)
        for site in chosen:
            values |= by_site[site]
        if values:
            yield frozenset(values)
    if targets:
        yield frozenset(t.value for t in targets)  # fail-open: as if all were up


def _contributions(candidate: Candidate) -> list[frozenset[str]]:
    if candidate.pool is not None:  # one value, chosen by weight when several are up
        return [frozenset((t.value,)) for t in candidate.targets]
    return list(dict.fromkeys(_up_groups(candidate.targets)))


def _last_resort_values(record: DynamicRecord) -> tuple[Target, ...]:
    """The plain values that can be up when evaluate() falls back to them."""
    if not (record.nearest and record.default_order and not record.pools):
        return record.values
    ordered = {c.name for c in record.candidates if c.name in record.default_order}
    sites = {t.site for c in record.candidates if c.name in ordered for t in c.targets}
    return tuple(t for t in record.values if t.status != "obey" or t.site not in sites)


def answer_sets(
    record: DynamicRecord, limit: int = DEFAULT_LIMIT
) -> tuple[set[frozenset[str]], bool]:
    """(the value sets, whether the limit cut the list short)."""
    found: set[frozenset[str]] = set()

    def add(values: frozenset[str]) -> bool:
        if values:
            found.add(values)
        return len(found) < limit

    for target in record.targets():
        if not add(frozenset((target.value,))):
            return found, True
    for values in _up_groups(_last_resort_values(record)):
        if not add(values):
            return found, True
    if record.nearest and record.candidates:
        options = [_contributions(c) for c in record.candidates]
        for size in range(1, min(record.answers, len(options)) + 1):
            for chosen in combinations(options, size):
                for parts in product(*chosen):
                    if not add(frozenset().union(*parts)):
                        return found, True
    return found, False

"""Compiling a record's octoDNS `dynamic` block and `octodns: {geodns: ...}` settings into a
`geodns.geo.dynamic.DynamicRecord`, against the config's sites, with file:line problems.

The `dynamic` block is checked as octoDNS checks it (its DynamicValidator): pools with values of
the record's type, weights 1-100, statuses, fallbacks that exist and do not loop; rules ordered
subnets, then subnets with geos, then geos, each pool the target of one rule besides the
catch-all, no subnet or geo repeated or narrowed after a broader one, geo codes octoDNS knows
(geodns.geo.codes), a catch-all last, and no unused pool. Run-time decisions live in
geodns.geo.dynamic; this module only reads and checks YAML.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import replace
from typing import Any, TypeVar, cast

from geodns.common.errors import did_you_mean
from geodns.common.reader import Reader
from geodns.common.yamlsrc import MarkedDict, MarkedList
from geodns.dns.zone import TYPE_A, TYPE_AAAA, check_name
from geodns.geo.codes import geo_problem
from geodns.geo.dynamic import (
    Candidate,
    DynamicRecord,
    Pool,
    Rule,
    SubnetMatch,
    Target,
)
from geodns.geo.sites import CheckSpec, Site

GEODNS_KEYS = ("nearest", "answers", "sticky", "default_order", "all_down")
NEAREST_KEYS = ("pools",)
STICKY_KEYS = ("margin_km", "prefix_v4", "prefix_v6")
DYNAMIC_KEYS = ("pools", "rules")
POOL_KEYS = ("values", "fallback")
VALUE_KEYS = ("value", "weight", "status")
RULE_KEYS = ("pool", "geos", "subnets")
HEALTHCHECK_KEYS = ("host", "path", "port", "protocol")
HEALTHCHECK_PROTOCOLS = ("HTTP", "HTTPS", "ICMP", "TCP", "UDP")  # what octoDNS accepts
PROBED_PROTOCOLS = ("HTTP", "HTTPS", "TCP")  # what geodns probes
STATUSES = ("up", "down", "obey")
KINDS = {TYPE_A: "A", TYPE_AAAA: "AAAA"}  # any other dynamic type is a CNAME
_T = TypeVar("_T")


class DynamicCompilerForSites:
    """Compiles a record's dynamic settings against the config's sites (zonefile's hook)."""

    def __init__(self, sites: dict[str, Site]) -> None:
        self.sites = sites
        self.site_of: dict[str, str] = {}
        for site in sites.values():
            for address in site.ipv4 + site.ipv6:
                self.site_of[address] = site.name
        self.implicit_sites: dict[str, Site] = {}
        self.templates: dict[str, Site] = {}
        # equal values, candidates and their tuples, built once and shared by every record
        # that has them: a zone of 10,000 records over the same six addresses holds six
        # Targets, not 60,000 (see _share)
        self.shared: dict[Any, Any] = {}

    def compile(
        self,
        reader: Reader,
        owner: str,
        rtype: int,
        ttl: int,
        zone_addresses: Mapping[str, tuple[str, ...]] | None = None,
    ) -> DynamicRecord | None:
        """The DynamicRecord of the record `reader` reads, or None after reporting problems.

        `zone_addresses` are the zone's static addresses by owner name: a CNAME value that names
        an in-zone host whose addresses belong to one site takes that site's place and health.
        """
        record = reader.mapping
        before = reader.error_count()
        kind = KINDS.get(rtype, "CNAME")
        addresses = zone_addresses or {}
        octodns = record.get("octodns")
        raw_settings = octodns.get("geodns") if isinstance(octodns, MarkedDict) else None
        if raw_settings is None:
            raw_settings = MarkedDict(line=record.line, column=record.column)
        if not isinstance(raw_settings, MarkedDict):
            assert isinstance(octodns, MarkedDict)
            reader.add(
                octodns.line_of("geodns"),
                "octodns.geodns: expected a mapping",
                column=octodns.column_of("geodns"),
            )
            return None
        settings = reader.nested(raw_settings, "octodns.geodns", GEODNS_KEYS)
        health_site = self._healthcheck(reader, owner)
        raw_values = record.get("values", [record.get("value")])
        values = self._share_tuple(
            self._target(str(v), kind, addresses, health_site, 1, "obey")
            for v in (raw_values if isinstance(raw_values, list) else [raw_values])
            if v is not None
        )
        pools: dict[str, Pool] = {}
        rules: list[Rule] = []
        used: set[str] = set()
        if "dynamic" in record:
            pools, rules, used = self._dynamic(reader, kind, addresses, health_site)
        nearest, nearest_pools = self._nearest(settings)
        candidates: tuple[Candidate, ...] = ()
        if nearest:
            candidates = self._share_tuple(self._candidates(settings, pools, values, nearest_pools))
        answers = settings.int_in("answers", 1, 16, 1)
        if kind == "CNAME" and answers != 1:
            settings.problem("answers", "a CNAME answers one target")
        sticky_margin, sticky_prefix = self._sticky(settings)
        default_order = settings.strings("default_order", [], "a list of site names")
        names = [c.name for c in candidates]
        for name in default_order:
            if name not in names:
                settings.problem(
                    "default_order",
                    f"'{name}' is not a site of this record{did_you_mean(name, names)}",
                )
        all_down = settings.text("all_down", "fail_open", "fail_open, servfail or a pool name")
        if all_down not in ("fail_open", "servfail") and all_down not in pools:
            settings.problem(
                "all_down", f"expected fail_open, servfail or a pool name, got {all_down!r}"
            )
            all_down = "fail_open"
        self._unused_pools(reader, pools, used, all_down, nearest_pools or [])
        if not pools and not nearest and "dynamic" not in record:
            reader.add(
                record.line,
                "octodns.geodns needs nearest: true, or the record needs 'dynamic'",
                column=record.column,
            )
        if kind == "CNAME" and nearest and not pools:
            settings.problem(
                "nearest", "a CNAME has one value: nearest chooses among 'dynamic' pools"
            )
        if reader.error_count() != before:
            return None
        return DynamicRecord(
            owner=owner,
            rtype=rtype,
            ttl=ttl,
            values=values,
            pools=pools,
            rules=tuple(rules),
            nearest=nearest,
            candidates=candidates,
            answers=answers,
            sticky_margin_km=sticky_margin,
            sticky_prefix=sticky_prefix,
            default_order=tuple(default_order),
            all_down=all_down,
        )

    def _share(self, key: Hashable, make: Callable[[], _T]) -> _T:
        """The one object this compiler holds for `key`, made by `make` the first time. Keys are
        plain tuples (of strings, numbers and the ids of objects already shared, which this
        compiler keeps alive): hashing them is cheaper than hashing the frozen objects."""
        shared = self.shared.get(key)
        if shared is None:
            shared = self.shared[key] = make()
        return cast(_T, shared)

    def _share_tuple(self, items: Iterable[_T]) -> tuple[_T, ...]:
        """One tuple object per sequence of shared objects."""
        items = tuple(items)
        return self._share(("tuple", *map(id, items)), lambda: items)

    # -- values and their sites ----------------------------------------------------------------

    def _target(
        self,
        value: str,
        kind: str,
        addresses: Mapping[str, tuple[str, ...]],
        health_site: str | None,
        weight: int,
        status: str,
    ) -> Target:
        """A value with the site it follows: the site owning the address, or (a CNAME's target)
        the one site owning every address of that in-zone name; else, under an octoDNS
        healthcheck, a site of its own probed by that check."""
        if kind == "CNAME":
            canonical = value.lower()
            owners = {self.site_of.get(a) for a in addresses.get(canonical, ())}
            site = owners.pop() if len(owners) == 1 else None
        else:
            canonical = _canonical_ip(value)
            site = self.site_of.get(canonical)
        if site is None and health_site is not None:
            site = self._implicit_site(canonical, kind, health_site)
        return self._share(
            ("target", canonical, site, weight, status),
            lambda: Target(canonical, site, weight, status),
        )

    def _implicit_site(self, value: str, kind: str, template: str) -> str:
        """A value outside every site, under an octoDNS healthcheck: probe it by its own name."""
        spec = self.templates[template]
        name = f"{template}@{value}"
        if name not in self.implicit_sites:
            probed = value.rstrip(".") if kind == "CNAME" else value
            checks = tuple(replace(check, address=probed) for check in spec.checks)
            ipv4 = (value,) if kind == "A" else ()
            ipv6 = (value,) if kind == "AAAA" else ()
            self.implicit_sites[name] = Site(name, "pop", 0.0, 0.0, ipv4, ipv6, checks=checks)
        return name

    def _healthcheck(self, reader: Reader, owner: str) -> str | None:
        """The site template of the record's `octodns.healthcheck` (octoDNS's defaults: HTTPS,
        port 443, path /_dns, the record's name as host), or None."""
        octodns = reader.mapping.get("octodns")
        if not isinstance(octodns, MarkedDict) or "healthcheck" not in octodns:
            return None
        raw = octodns["healthcheck"]
        if not isinstance(raw, MarkedDict):
            reader.add(
                octodns.line_of("healthcheck"),
                "octodns.healthcheck: expected a mapping",
                column=octodns.column_of("healthcheck"),
            )
            return None
        spec = reader.nested(raw, "octodns.healthcheck", HEALTHCHECK_KEYS)
        protocol = spec.text("protocol", "HTTPS", "HTTP, HTTPS, ICMP, TCP or UDP")
        if protocol not in HEALTHCHECK_PROTOCOLS:
            spec.problem("protocol", f"expected HTTP, HTTPS, ICMP, TCP or UDP, got {protocol!r}")
            return None
        if protocol not in PROBED_PROTOCOLS:
            spec.problem(
                "protocol",
                f"geodns probes HTTP, HTTPS and TCP, not {protocol}: these values are not "
                "health-checked (they follow their sites, or count as up)",
                severity="warning",
            )
            return None
        check = CheckSpec(
            type=protocol.lower(),
            address="0.0.0.0",
            port=spec.int_in("port", 1, 65535, 443),
            path=spec.text("path", "/_dns"),
            host=spec.text("host", owner.rstrip(".")),
        )
        name = f"healthcheck:{owner.rstrip('.')}"
        self.templates[name] = Site(name, "pop", 0.0, 0.0, (), (), checks=(check,))
        return name

    # -- octoDNS's dynamic block -----------------------------------------------------------------

    def _dynamic(
        self,
        reader: Reader,
        kind: str,
        addresses: Mapping[str, tuple[str, ...]],
        health_site: str | None,
    ) -> tuple[dict[str, Pool], list[Rule], set[str]]:
        """The pools and rules, and the pools a rule or a fallback uses."""
        raw = reader.mapping["dynamic"]
        if not isinstance(raw, MarkedDict):
            reader.problem("dynamic", "expected a mapping with pools and rules")
            return {}, [], set()
        dynamic = reader.nested(raw, "dynamic", DYNAMIC_KEYS)
        if not dynamic.require("pools", "rules"):
            return {}, [], set()
        raw_pools = raw["pools"]
        if not isinstance(raw_pools, MarkedDict) or not raw_pools:
            dynamic.problem("pools", "expected a mapping of pool names to pools")
            return {}, [], set()
        pools: dict[str, Pool] = {}
        for name, pool_raw in raw_pools.items():
            pool = self._pool(dynamic, str(name), pool_raw, raw_pools, kind, addresses, health_site)
            if pool is not None:
                pools[pool.name] = pool
        fallbacks = self._fallbacks(dynamic, pools)
        rules, targeted = self._rules(dynamic, pools)
        # octoDNS: a fallback to a pool named "default" means the record's plain values
        pools = {
            name: replace(pool, fallback=None) if pool.fallback == "default" else pool
            for name, pool in pools.items()
        }
        return pools, rules, targeted | fallbacks

    def _unused_pools(
        self,
        reader: Reader,
        pools: dict[str, Pool],
        used: set[str],
        all_down: str,
        nearest_pools: list[str],
    ) -> None:
        """octoDNS refuses a pool that no rule and no fallback uses. One that only geodns's
        settings use (an all_down "sorry" pool, a nearest candidate) is geodns's to accept,
        with a warning that octoDNS refuses the record."""
        for pool in pools.values():
            if pool.name in used:
                continue
            if pool.name == all_down or pool.name in nearest_pools:
                reader.add(
                    pool.line,
                    f"dynamic.pools.{pool.name}: only octodns.geodns uses this pool; octoDNS "
                    "refuses pools that no rule and no fallback uses, so it refuses this record",
                    column=pool.column,
                    severity="warning",
                )
            else:
                reader.add(
                    pool.line,
                    f"dynamic.pools.{pool.name}: no rule and no fallback uses this pool "
                    "(octoDNS refuses unused pools)",
                    column=pool.column,
                )

    def _pool(
        self,
        dynamic: Reader,
        name: str,
        raw: Any,
        raw_pools: MarkedDict,
        kind: str,
        addresses: Mapping[str, tuple[str, ...]],
        health_site: str | None,
    ) -> Pool | None:
        where = f"dynamic.pools.{name}"
        line, column = raw_pools.line_of(name), raw_pools.column_of(name)
        if not isinstance(raw, MarkedDict):
            dynamic.add(line, f"{where}: expected a mapping with values", column=column)
            return None
        pool = dynamic.nested(raw, where, POOL_KEYS)
        if not pool.require("values"):
            return None
        raw_values = raw["values"]
        if not isinstance(raw_values, MarkedList) or not raw_values:
            pool.problem("values", "expected a list of {value, weight, status}")
            return None
        before = pool.error_count()
        targets = []
        for index, item in enumerate(raw_values):
            item_where = f"{where}.values[{index + 1}]"
            if not isinstance(item, MarkedDict):
                pool.add(
                    raw_values.line_of(index),
                    f"{item_where}: expected {{value: ..., weight: N, status: obey}}",
                    column=raw_values.column_of(index),
                )
                continue
            entry = pool.nested(item, item_where, VALUE_KEYS)
            if not entry.require("value"):
                continue
            value = self._pool_value(entry, kind)
            weight = entry.int_in("weight", 1, 100, 1)
            if len(raw_values) == 1 and weight != 1:
                entry.problem("weight", "a pool's only value has weight 1 (octoDNS)")
            status = entry.text("status", "obey", "up, down or obey")
            if status not in STATUSES:
                entry.problem("status", f"expected up, down or obey, got {status!r}")
            if value is not None:
                targets.append(self._target(value, kind, addresses, health_site, weight, status))
        fallback = None  # octoDNS allows `fallback: null`
        if raw.get("fallback") is not None:
            fallback = pool.text("fallback", None, "the name of another pool")
        if pool.error_count() != before:
            return None
        located = [t.site for t in targets if t.site in self.sites]
        site = located[0] if located else None
        location = (self.sites[site].latitude, self.sites[site].longitude) if site else None
        return Pool(name, tuple(targets), fallback, location, site, line, column)

    def _pool_value(self, entry: Reader, kind: str) -> str | None:
        """A pool value of the record's type: an IPv4 or IPv6 address, or a target name."""
        value = entry.mapping["value"]
        if kind == "CNAME":
            problem = check_name(value.lower()) if isinstance(value, str) else "not a name"
            if problem is None:
                return str(value)
            entry.problem(
                "value", f"expected a fully qualified name ending with '.', got {value!r}"
            )
            return None
        family = ipaddress.IPv4Address if kind == "A" else ipaddress.IPv6Address
        try:
            return str(family(value if isinstance(value, str) else ""))
        except ValueError:
            example = "192.0.2.1" if kind == "A" else "2001:db8::1"
            entry.problem(
                "value",
                f"expected an IPv{4 if kind == 'A' else 6} address such as {example}, got {value!r}",
            )
            return None

    def _fallbacks(self, dynamic: Reader, pools: dict[str, Pool]) -> set[str]:
        """Every pool named as a fallback; a fallback that does not exist, or a chain that
        loops, is an error (as in octoDNS)."""
        named: set[str] = set()
        for pool in pools.values():
            if pool.fallback is None:
                continue
            if pool.fallback not in pools:
                dynamic.add(
                    pool.line,
                    f"dynamic.pools.{pool.name}.fallback: no pool '{pool.fallback}'"
                    f"{did_you_mean(pool.fallback, pools)}",
                    column=pool.column,
                )
                continue
            named.add(pool.fallback)
            chain = [pool.name]
            current: str | None = pool.fallback
            while current is not None and current in pools:
                if current in chain:
                    dynamic.add(
                        pool.line,
                        f"dynamic.pools.{pool.name}.fallback: the fallbacks loop: "
                        f"{' -> '.join([*chain, current])}",
                        column=pool.column,
                    )
                    break
                chain.append(current)
                current = pools[current].fallback
        return named

    def _rules(self, dynamic: Reader, pools: dict[str, Pool]) -> tuple[list[Rule], set[str]]:
        raw_rules = dynamic.mapping["rules"]
        if not isinstance(raw_rules, MarkedList) or not raw_rules:
            dynamic.problem("rules", "expected a list of rules")
            return [], set()
        rules: list[Rule] = []
        targeted: set[str] = set()
        subnets_seen: dict[Any, int] = {}
        geos_seen: dict[str, int] = {}
        catch_all_seen = False
        previous: tuple[bool, bool] = (False, False)  # the rule before: (subnets, geos)
        for index, raw in enumerate(raw_rules):
            number = index + 1
            where = f"dynamic.rules[{number}]"
            if not isinstance(raw, MarkedDict):
                dynamic.add(
                    raw_rules.line_of(index),
                    f"{where}: expected a mapping with a pool",
                    column=raw_rules.column_of(index),
                )
                continue
            rule = dynamic.nested(raw, where, RULE_KEYS)
            if not rule.require("pool"):
                continue
            pool = rule.text("pool", "", "a pool name")
            raw_subnets = rule.items("subnets", "a list of subnets")
            raw_geos = rule.items("geos", "a list of geo codes such as EU, AS-ID or NA-US-CA")
            has = (bool(raw_subnets), bool(raw_geos))
            if pool and pool not in pools:
                rule.problem("pool", f"no pool '{pool}'{did_you_mean(pool, pools)}")
            elif pool in targeted and any(has):
                rule.problem(
                    "pool",
                    f"pool '{pool}' is already the pool of an earlier rule "
                    "(octoDNS: a pool is the target of one rule, besides the catch-all)",
                )
            targeted.add(pool)
            if index and has == (True, True) and previous == (False, True):
                rule.add(
                    raw.line,
                    f"{where}: a rule with subnets and geos comes before every "
                    "geos-only rule (octoDNS)",
                    column=raw.column,
                )
            elif index and has == (True, False) and previous[1]:
                rule.add(
                    raw.line,
                    f"{where}: a subnets-only rule comes before every rule with geos (octoDNS)",
                    column=raw.column,
                )
            if not any(has):
                if catch_all_seen:
                    rule.add(raw.line, f"{where}: a second catch-all rule", column=raw.column)
                catch_all_seen = True
            previous = has
            subnets = self._subnets(rule, raw_subnets, number, subnets_seen)
            geos, places = self._geos(rule, raw_geos, number, geos_seen)
            rules.append(Rule(number, pool, subnets, geos, places))
        last = raw_rules[-1]
        if isinstance(last, MarkedDict) and (last.get("subnets") or last.get("geos")):
            dynamic.add(
                raw_rules.line_of(len(raw_rules) - 1),
                "dynamic.rules: the last rule must be the catch-all (pool only, no subnets or geos)",
                column=raw_rules.column_of(len(raw_rules) - 1),
            )
        return rules, targeted

    def _subnets(
        self, rule: Reader, raw: MarkedList, number: int, seen: dict[Any, int]
    ) -> tuple[SubnetMatch, ...]:
        """A rule's subnets; like octoDNS, no host bits, and none seen in an earlier rule,
        neither the same nor inside one."""
        networks = []
        for index, subnet in enumerate(raw):
            try:
                networks.append(ipaddress.ip_network(str(subnet)))
            except ValueError:
                rule.add(
                    raw.line_of(index),
                    f"{rule.where}.subnets: {subnet!r} is not a subnet such as 192.0.2.0/24 "
                    "(with no host bits set)",
                    column=raw.column_of(index),
                )
        for network in sorted(networks, key=lambda n: (n.version, n)):
            for earlier, where in seen.items():
                if earlier.version != network.version:
                    continue
                if network == earlier or network.subnet_of(earlier):
                    what = "" if network == earlier else f" is inside {earlier}, which"
                    rule.problem("subnets", f"subnet {network}{what} is already in rule {where}")
            seen[network] = number
        return tuple(SubnetMatch(network) for network in networks)

    def _geos(
        self, rule: Reader, raw: MarkedList, number: int, seen: dict[str, int]
    ) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
        """A rule's geo codes, each one octoDNS knows, none repeated or narrower than one seen
        before (NA-US after NA); with the place of each, for `geodns check`'s warnings."""
        geos: list[str] = []
        places: list[tuple[int, int]] = []
        for index, geo in enumerate(raw):
            line, column = raw.line_of(index), raw.column_of(index)
            code = str(geo)
            problem = geo_problem(code)
            if problem is not None:
                rule.add(line, f"{rule.where}.geos: {problem}", column=column)
                continue
            geos.append(code)
            places.append((line, column))
        for code in sorted(geos):
            for earlier, where in seen.items():
                if code == earlier:
                    rule.problem("geos", f"geo {code} is already in rule {where}")
                elif code.startswith(earlier + "-"):
                    rule.problem(
                        "geos",
                        f"geo {code} is inside {earlier}, already in rule {where}: "
                        "it can never match",
                    )
            seen[code] = number
        return tuple(geos), tuple(places)

    # -- geodns's settings -----------------------------------------------------------------------

    def _nearest(self, settings: Reader) -> tuple[bool, list[str] | None]:
        value = settings.mapping.get("nearest", False)
        if isinstance(value, MarkedDict):
            section = settings.section("nearest", NEAREST_KEYS)
            return True, section.strings("pools", [], "a list of pool names") or None
        if not isinstance(value, bool):
            settings.problem("nearest", f"expected true, false or {{pools: [...]}}, got {value!r}")
            return False, None
        return value, None

    def _candidates(
        self,
        settings: Reader,
        pools: dict[str, Pool],
        values: tuple[Target, ...],
        only: list[str] | None,
    ) -> tuple[Candidate, ...]:
        candidates = []
        if pools:
            for name in only or list(pools):
                pool = pools.get(name)
                if pool is None:
                    settings.problem(
                        "nearest", f"pools: no pool '{name}'{did_you_mean(name, pools)}"
                    )
                    continue
                if pool.location is None:
                    settings.problem(
                        "nearest",
                        f"pool '{name}' has no value that belongs to a site, so it has no location",
                    )
                    continue
                candidates.append(Candidate(name, *pool.location, pool.targets, pool))
            return tuple(candidates)
        by_site: dict[str, list[Target]] = {}
        for target in values:
            if target.site not in self.sites:
                settings.problem(
                    "nearest",
                    f"value {target.value} belongs to no site in the config; declare it under sites",
                )
                continue
            by_site.setdefault(target.site, []).append(target)
        for site_name, targets in by_site.items():
            site = self.sites[site_name]
            shared_targets = self._share_tuple(targets)
            candidates.append(
                self._share(
                    ("candidate", site_name, id(shared_targets)),
                    functools.partial(
                        Candidate, site_name, site.latitude, site.longitude, shared_targets
                    ),
                )
            )
        return tuple(candidates)

    def _sticky(self, settings: Reader) -> tuple[float | None, tuple[int, int]]:
        sticky = settings.mapping.get("sticky")
        if sticky is None or sticky is False:
            return None, (24, 56)
        if sticky is True:
            return 0.0, (24, 56)
        if not isinstance(sticky, MarkedDict):
            settings.problem("sticky", f"expected true or {{margin_km: N}}, got {sticky!r}")
            return None, (24, 56)
        section = settings.section("sticky", STICKY_KEYS)
        margin = section.number_in("margin_km", 0, 40_075, 0.0)  # the Earth's circumference
        v4 = section.int_in("prefix_v4", 0, 32, 24)
        v6 = section.int_in("prefix_v6", 0, 128, 56)
        return margin, (v4, v6)


@functools.lru_cache(maxsize=65_536)
def _canonical_ip(value: str) -> str:
    """An address in canonical text (memoised: a big zone repeats its sites' few addresses)."""
    return str(ipaddress.ip_address(value))

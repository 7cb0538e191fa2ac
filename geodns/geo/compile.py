"""Compiling a record's octoDNS `dynamic` block and `octodns: {geodns: ...}` settings into a
`geodns.geo.dynamic.DynamicRecord`, against the config's sites, with file:line problems.

Run-time decisions live in geodns.geo.dynamic; this module only reads and checks YAML.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from geodns.common.errors import did_you_mean, report_unknown_keys
from geodns.common.yamlsrc import MarkedDict, MarkedList
from geodns.dns.zone import TYPE_A
from geodns.geo.dynamic import (
    Candidate,
    DynamicRecord,
    Pool,
    Rule,
    SubnetMatch,
    Target,
)
from geodns.geo.sites import CheckSpec, Site

GEODNS_KEYS = ("nearest", "answers", "sticky", "default_order", "all_down", "pools")
NEAREST_KEYS = ("pools",)
STICKY_KEYS = ("margin_km", "prefix_v4", "prefix_v6")
POOL_KEYS = ("values", "fallback")
VALUE_KEYS = ("value", "weight", "status")
RULE_KEYS = ("pool", "geos", "subnets")
HEALTHCHECK_KEYS = ("host", "path", "port", "protocol")


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

    def compile(
        self,
        record: MarkedDict,
        owner: str,
        rtype: int,
        ttl: int,
        report: Callable[[int, str], None],
    ) -> DynamicRecord | None:
        problems_before = _Counter(report)
        add = problems_before.add
        octodns = record.get("octodns")
        settings = octodns.get("geodns") if isinstance(octodns, MarkedDict) else None
        if settings is None:
            settings = MarkedDict(line=record.line)
        if not isinstance(settings, MarkedDict):
            add(record.line_of("octodns"), "octodns.geodns: expected a mapping")
            return None
        for key in settings:
            if key not in GEODNS_KEYS:
                add(
                    settings.line_of(key),
                    f"octodns.geodns: unknown key '{key}'{did_you_mean(str(key), GEODNS_KEYS)}; "
                    f"expected one of {', '.join(GEODNS_KEYS)}",
                )
        health_site = self._healthcheck(record, owner, add)
        raw_values = record.get("values", [record.get("value")])
        values = tuple(
            self._target(str(v), health_site, 1, "obey") for v in raw_values if v is not None
        )
        pools: dict[str, Pool] = {}
        rules: list[Rule] = []
        dynamic = record.get("dynamic")
        if dynamic is not None:
            pools, rules = self._dynamic(dynamic, record.line_of("dynamic"), health_site, add)
        nearest_value = settings.get("nearest", False)
        nearest_pools: list[str] | None = None
        if isinstance(nearest_value, MarkedDict):
            for key in nearest_value:
                if key not in NEAREST_KEYS:
                    add(nearest_value.line_of(key), f"nearest: unknown key '{key}'")
            nearest_pools = list(nearest_value.get("pools") or [])
            nearest_value = True
        if not isinstance(nearest_value, bool):
            add(settings.line_of("nearest"), "nearest: expected true, false or {pools: [...]}")
            nearest_value = False
        candidates: tuple[Candidate, ...] = ()
        if nearest_value:
            candidates = self._candidates(
                pools, values, nearest_pools, settings.line_of("nearest"), add
            )
        answers = settings.get("answers", 1)
        if isinstance(answers, bool) or not isinstance(answers, int) or not 1 <= answers <= 16:
            add(settings.line_of("answers"), "answers: expected a whole number from 1 to 16")
            answers = 1
        sticky_margin, sticky_prefix = self._sticky(settings, add)
        default_order = settings.get("default_order", [])
        if not isinstance(default_order, list) or not all(
            isinstance(s, str) for s in default_order
        ):
            add(settings.line_of("default_order"), "default_order: expected a list of site names")
            default_order = []
        for name in default_order:
            if name not in {c.name for c in candidates}:
                add(
                    settings.line_of("default_order"),
                    f"default_order: '{name}' is not a site of this record"
                    f"{did_you_mean(name, [c.name for c in candidates])}",
                )
        all_down = settings.get("all_down", "fail_open")
        if not isinstance(all_down, str) or (
            all_down not in ("fail_open", "servfail") and all_down not in pools
        ):
            add(
                settings.line_of("all_down"),
                f"all_down: expected fail_open, servfail or a pool name, got {all_down!r}",
            )
        if not pools and not nearest_value:
            add(record.line, "octodns.geodns needs nearest: true, or the record needs 'dynamic'")
        family = 4 if rtype == TYPE_A else 6
        for target in values + tuple(t for p in pools.values() for t in p.targets):
            if (":" in target.address) != (family == 6):
                add(record.line, f"value {target.address} is not of the record's address family")
                break
        if problems_before.count:
            return None
        return DynamicRecord(
            owner=owner,
            rtype=rtype,
            ttl=ttl,
            values=values,
            pools=pools,
            rules=tuple(rules),
            nearest=nearest_value,
            candidates=candidates,
            answers=answers,
            sticky_margin_km=sticky_margin,
            sticky_prefix=sticky_prefix,
            default_order=tuple(default_order),
            all_down=all_down if isinstance(all_down, str) else "fail_open",
        )

    def _target(self, address: str, health_site: str | None, weight: int, status: str) -> Target:
        canonical = str(ipaddress.ip_address(address)) if _is_ip(address) else address
        site = self.site_of.get(canonical)
        if site is None and health_site is not None:
            site = self._implicit_site(canonical, health_site)
        return Target(canonical, site, weight, status)

    def _implicit_site(self, address: str, template: str) -> str:
        """A value outside every site, under an octoDNS healthcheck: probe it by its own name."""
        spec = self.templates[template]
        name = f"{template}@{address}"
        if name not in self.implicit_sites:
            checks = tuple(replace(check, address=address) for check in spec.checks)
            v6 = ":" in address
            self.implicit_sites[name] = Site(
                name,
                "pop",
                0.0,
                0.0,
                () if v6 else (address,),
                (address,) if v6 else (),
                checks=checks,
            )
        return name

    def _healthcheck(
        self, record: MarkedDict, owner: str, add: Callable[[int, str], None]
    ) -> str | None:
        octodns = record.get("octodns")
        if not isinstance(octodns, MarkedDict) or "healthcheck" not in octodns:
            return None
        spec = octodns["healthcheck"]
        if not isinstance(spec, MarkedDict):
            add(octodns.line_of("healthcheck"), "octodns.healthcheck: expected a mapping")
            return None
        for key in spec:
            if key not in HEALTHCHECK_KEYS:
                add(spec.line_of(key), f"octodns.healthcheck: unknown key '{key}'")
        protocol = str(spec.get("protocol", "HTTPS")).upper()
        if protocol not in ("HTTP", "HTTPS", "TCP"):
            add(
                spec.line_of("protocol"),
                "octodns.healthcheck.protocol: geodns probes HTTP, HTTPS or TCP",
            )
            return None
        port = spec.get("port", 443 if protocol == "HTTPS" else 80)
        check = CheckSpec(
            type=protocol.lower(),
            address="0.0.0.0",
            port=int(port),
            path=str(spec.get("path", "/_dns")),
            host=str(spec.get("host", owner.rstrip("."))),
        )
        name = f"healthcheck:{owner.rstrip('.')}"
        self.templates[name] = Site(name, "pop", 0.0, 0.0, (), (), checks=(check,))
        return name

    def _dynamic(
        self, dynamic: Any, line: int, health_site: str | None, add: Callable[[int, str], None]
    ) -> tuple[dict[str, Pool], list[Rule]]:
        pools: dict[str, Pool] = {}
        rules: list[Rule] = []
        if not isinstance(dynamic, MarkedDict):
            add(line, "dynamic: expected a mapping with pools and rules")
            return pools, rules
        report_unknown_keys(dynamic, ("pools", "rules"), add, "dynamic: ")
        raw_pools = dynamic.get("pools")
        if not isinstance(raw_pools, MarkedDict) or not raw_pools:
            add(dynamic.line_of("pools"), "dynamic.pools: expected a mapping of pool names")
            return pools, rules
        for name, raw in raw_pools.items():
            pool = self._pool(str(name), raw, raw_pools.line_of(name), health_site, add)
            if pool is not None:
                pools[pool.name] = pool
        for pool in pools.values():
            if pool.fallback is not None and pool.fallback not in pools:
                add(
                    raw_pools.line_of(pool.name),
                    f"dynamic.pools.{pool.name}.fallback: no pool '{pool.fallback}'"
                    f"{did_you_mean(pool.fallback, pools)}",
                )
        raw_rules = dynamic.get("rules")
        if not isinstance(raw_rules, MarkedList) or not raw_rules:
            add(dynamic.line_of("rules"), "dynamic.rules: expected a list of rules")
            return pools, rules
        for index, raw in enumerate(raw_rules):
            rule = self._rule(index + 1, raw, raw_rules.line_of(index), pools, add)
            if rule is not None:
                rules.append(rule)
        if rules and not rules[-1].catch_all:
            add(
                raw_rules.line_of(len(raw_rules) - 1),
                "dynamic.rules: the last rule must be the catch-all (pool only, no subnets or geos)",
            )
        return pools, rules

    def _pool(
        self,
        name: str,
        raw: Any,
        line: int,
        health_site: str | None,
        add: Callable[[int, str], None],
    ) -> Pool | None:
        if not isinstance(raw, MarkedDict):
            add(line, f"dynamic.pools.{name}: expected a mapping with values")
            return None
        report_unknown_keys(raw, POOL_KEYS, add, f"dynamic.pools.{name}: ")
        raw_values = raw.get("values")
        if not isinstance(raw_values, MarkedList) or not raw_values:
            add(raw.line_of("values"), f"dynamic.pools.{name}.values: expected a list of values")
            return None
        targets = []
        for index, item in enumerate(raw_values):
            at = raw_values.line_of(index)
            if not isinstance(item, MarkedDict) or "value" not in item:
                add(
                    at,
                    f"dynamic.pools.{name}.values: each item is {{value: ADDRESS, weight: N, status: obey}}",
                )
                continue
            report_unknown_keys(item, VALUE_KEYS, add, f"dynamic.pools.{name}: ")
            address = str(item["value"])
            if not _is_ip(address):
                add(
                    item.line_of("value"), f"dynamic.pools.{name}: {address!r} is not an IP address"
                )
                continue
            weight = item.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
                add(
                    item.line_of("weight"), f"dynamic.pools.{name}: weight must be 1..100 (octoDNS)"
                )
                weight = 1
            status = item.get("status", "obey")
            if status not in ("up", "down", "obey"):
                add(
                    item.line_of("status"), f"dynamic.pools.{name}: status must be up, down or obey"
                )
                status = "obey"
            targets.append(self._target(address, health_site, weight, status))
        fallback = raw.get("fallback")
        located = [t.site for t in targets if t.site in self.sites]
        site = located[0] if located else None
        location = (self.sites[site].latitude, self.sites[site].longitude) if site else None
        return Pool(name, tuple(targets), str(fallback) if fallback else None, location, site)

    def _rule(
        self,
        number: int,
        raw: Any,
        line: int,
        pools: dict[str, Pool],
        add: Callable[[int, str], None],
    ) -> Rule | None:
        if not isinstance(raw, MarkedDict) or "pool" not in raw:
            add(line, f"dynamic.rules[{number}]: expected a mapping with a pool")
            return None
        report_unknown_keys(raw, RULE_KEYS, add, f"dynamic.rules[{number}]: ")
        pool = str(raw["pool"])
        if pool not in pools:
            add(
                raw.line_of("pool"),
                f"dynamic.rules[{number}]: no pool '{pool}'{did_you_mean(pool, pools)}",
            )
            return None
        subnets = []
        for subnet in raw.get("subnets") or []:
            try:
                net = ipaddress.ip_network(str(subnet), strict=False)
            except ValueError:
                add(raw.line_of("subnets"), f"dynamic.rules[{number}]: {subnet!r} is not a subnet")
                continue
            subnets.append(SubnetMatch(net))
        geos = []
        for geo in raw.get("geos") or []:
            text = str(geo).upper()
            parts = text.split("-")
            if not (1 <= len(parts) <= 3 and all(len(p) == 2 and p.isalpha() for p in parts)):
                add(
                    raw.line_of("geos"),
                    f"dynamic.rules[{number}]: geo {geo!r} must look like AS, AS-ID or NA-US-CA",
                )
                continue
            geos.append(text)
        return Rule(number, pool, tuple(subnets), tuple(geos))

    def _candidates(
        self,
        pools: dict[str, Pool],
        values: tuple[Target, ...],
        only: list[str] | None,
        line: int,
        add: Callable[[int, str], None],
    ) -> tuple[Candidate, ...]:
        candidates = []
        if pools:
            for name in only or list(pools):
                pool = pools.get(name)
                if pool is None:
                    add(line, f"nearest.pools: no pool '{name}'{did_you_mean(name, pools)}")
                    continue
                if pool.location is None:
                    add(
                        line,
                        f"nearest: pool '{name}' has no value that belongs to a site, so it has no location",
                    )
                    continue
                candidates.append(Candidate(name, *pool.location, pool.targets, pool))
            return tuple(candidates)
        by_site: dict[str, list[Target]] = {}
        for target in values:
            if target.site not in self.sites:
                add(
                    line,
                    f"nearest: value {target.address} belongs to no site in the config; declare it under sites",
                )
                continue
            by_site.setdefault(target.site, []).append(target)
        for site_name, targets in by_site.items():
            site = self.sites[site_name]
            candidates.append(Candidate(site_name, site.latitude, site.longitude, tuple(targets)))
        return tuple(candidates)

    def _sticky(
        self, settings: MarkedDict, add: Callable[[int, str], None]
    ) -> tuple[float | None, tuple[int, int]]:
        sticky = settings.get("sticky")
        if sticky is None or sticky is False:
            return None, (24, 56)
        if sticky is True:
            return 0.0, (24, 56)
        if not isinstance(sticky, MarkedDict):
            add(settings.line_of("sticky"), "sticky: expected true or {margin_km: N}")
            return None, (24, 56)
        report_unknown_keys(sticky, STICKY_KEYS, add, "sticky: ")
        margin = sticky.get("margin_km", 0)
        if isinstance(margin, bool) or not isinstance(margin, int | float) or margin < 0:
            add(sticky.line_of("margin_km"), "sticky.margin_km: expected kilometres >= 0")
            margin = 0
        v4 = sticky.get("prefix_v4", 24)
        v6 = sticky.get("prefix_v6", 56)
        if not (isinstance(v4, int) and 0 <= v4 <= 32 and isinstance(v6, int) and 0 <= v6 <= 128):
            add(sticky.line, "sticky: prefix_v4 must be 0..32 and prefix_v6 0..128")
            v4, v6 = 24, 56
        return float(margin), (v4, v6)


class _Counter:
    def __init__(self, report: Callable[[int, str], None]) -> None:
        self.report = report
        self.count = 0

    def add(self, line: int, message: str) -> None:
        self.count += 1
        self.report(line, message)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True

"""Load octoDNS YamlProvider zone files into validated Zone objects.

One `<zone>.yaml` per zone; top-level keys are record names relative to the zone (`''` is the
apex, `'*'` a wildcard), each holding one record or a list of records with `type`, `ttl` and
`value`/`values` as octoDNS defines them. geodns's own settings live under `octodns: {geodns:}`.
Every problem is collected with its file and line, so one `geodns check` run shows them all.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnslib import AAAA, CAA, CNAME, MX, NS, PTR, SOA, SRV, TXT, A, DNSLabel

from geodns.common.errors import ConfigError, Problem, did_you_mean
from geodns.common.yamlsrc import MarkedDict, MarkedList, load_yaml
from geodns.dns.zone import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CAA,
    TYPE_CNAME,
    TYPE_MX,
    TYPE_NS,
    TYPE_PTR,
    TYPE_SOA,
    TYPE_SRV,
    TYPE_TXT,
    RRset,
    Zone,
)

MAX_TTL = 2_147_483_647  # RFC 2181 section 8
DEFAULT_TTL = 3600  # octoDNS's default
RECORD_KEYS = ("type", "ttl", "value", "values", "octodns", "dynamic")
TYPE_CODES = {
    "A": TYPE_A,
    "AAAA": TYPE_AAAA,
    "CNAME": TYPE_CNAME,
    "MX": TYPE_MX,
    "NS": TYPE_NS,
    "TXT": TYPE_TXT,
    "SRV": TYPE_SRV,
    "CAA": TYPE_CAA,
    "PTR": TYPE_PTR,
}
SINGLE_VALUE_TYPES = ("CNAME",)


@dataclass(frozen=True, slots=True)
class SoaSettings:
    """What octoDNS leaves to the provider: the SOA fields (see docs/zones.md for defaults)."""

    mname: str | None = None
    rname: str | None = None
    serial: int | None = None
    refresh: int = 3600
    retry: int = 600
    expire: int = 1_209_600
    minimum: int = 300
    ttl: int = 3600


class _Collector:
    """Collects problems for one file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.problems: list[Problem] = []

    def add(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))


def check_name(name: str) -> str | None:
    """Why an absolute domain name is invalid, or None when it is fine."""
    if not name.endswith("."):
        return "a fully qualified name must end with '.'"
    if name == ".":
        return None
    body = name[:-1]
    if len(name.encode("ascii", "replace")) + 1 > 255:
        return "name is longer than 255 octets"
    for label in body.split("."):
        if not label:
            return "name has an empty label"
        if len(label) > 63:
            return f"label '{label[:20]}...' is longer than 63 octets"
        if not label.isascii():
            return f"label '{label}' is not ASCII (use its IDNA 'xn--' form)"
    return None


def zone_name_from_file(path: Path) -> str:
    stem = path.name[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    return stem.lower().rstrip(".") + "."


def load_zone_file(path: Path, soa: SoaSettings, compile_dynamic: DynamicCompiler) -> Zone:
    """Parse and validate one zone file; raise ConfigError with every problem found."""
    origin = zone_name_from_file(path)
    problems = _Collector(path)
    error = check_name(origin)
    if error:
        raise ConfigError([Problem(str(path), 0, f"file name is not a zone name: {error}")])
    data = load_yaml(path)
    if data is None:
        data = MarkedDict(line=1)
    if not isinstance(data, MarkedDict):
        raise ConfigError([Problem(str(path), 1, "expected a mapping of record names to records")])
    rrsets: dict[str, dict[int, RRset]] = {}
    for key, value in data.items():
        line = data.line_of(key)
        name = _owner_name(key, origin, line, problems)
        if name is None:
            continue
        records = value if isinstance(value, MarkedList) else [value]
        record_lines = value.item_lines if isinstance(value, MarkedList) else [line]
        for record, record_line in zip(records, record_lines, strict=True):
            rrset = _parse_record(record, record_line, name, origin, problems, compile_dynamic)
            if rrset is None:
                continue
            node = rrsets.setdefault(name, {})
            if rrset.rtype in node:
                problems.add(record_line, f"second {_type_name(rrset.rtype)} record at '{key}'")
                continue
            node[rrset.rtype] = rrset
    zone = _assemble(origin, path, rrsets, data, soa, problems)
    if problems.problems:
        raise ConfigError(problems.problems)
    assert zone is not None
    return zone


DynamicCompiler = Callable[[MarkedDict, str, int, int, Callable[[int, str], None]], Any]
"""Compiles an A/AAAA record's `dynamic`/`octodns.geodns` settings: (record, owner, rtype, ttl,
report) -> dynamic spec or None. Supplied by the caller so zone loading knows nothing of geo."""


def _type_name(rtype: int) -> str:
    for name, code in TYPE_CODES.items():
        if code == rtype:
            return name
    return str(rtype)


def _owner_name(key: Any, origin: str, line: int, problems: _Collector) -> str | None:
    if not isinstance(key, str):
        problems.add(line, f"record name must be a string, got {key!r}")
        return None
    lowered = key.lower()
    if lowered.endswith("."):
        if lowered == origin or lowered.endswith("." + origin):
            problems.add(
                line,
                f"name '{key}' must be relative to the zone: write "
                f"'{lowered[: -len(origin)].rstrip('.')}' (octoDNS names are relative)",
            )
        else:
            problems.add(line, f"name '{key}' is outside the zone '{origin}'")
        return None
    name = f"{lowered}.{origin}" if lowered else origin
    error = check_name(name)
    if error:
        problems.add(line, f"invalid name '{key}': {error}")
        return None
    labels = lowered.split(".") if lowered else []
    if any(label == "*" for label in labels[1:]) or any(
        "*" in label and label != "*" for label in labels
    ):
        problems.add(line, f"invalid name '{key}': '*' may only be the whole leftmost label")
        return None
    return name


def _parse_record(
    record: Any,
    line: int,
    name: str,
    origin: str,
    problems: _Collector,
    compile_dynamic: DynamicCompiler,
) -> RRset | None:
    if not isinstance(record, MarkedDict):
        problems.add(line, "expected a record mapping with 'type' and 'value' or 'values'")
        return None
    ok = True
    for key in record:
        if key not in RECORD_KEYS:
            problems.add(
                record.line_of(key),
                f"unknown key '{key}'{did_you_mean(str(key), RECORD_KEYS)}; "
                f"expected one of {', '.join(RECORD_KEYS)}",
            )
            ok = False
    rtype_name = record.get("type")
    if not isinstance(rtype_name, str):
        problems.add(record.line, "record has no 'type' (expected e.g. type: A)")
        return None
    rtype_name = rtype_name.upper()
    if rtype_name == "SOA":
        problems.add(
            record.line_of("type"),
            "SOA is not written in zone files; set it under 'soa' in the geodns config",
        )
        return None
    if rtype_name not in TYPE_CODES:
        problems.add(
            record.line_of("type"),
            f"unsupported type '{rtype_name}'{did_you_mean(rtype_name, TYPE_CODES)}; "
            f"expected one of {', '.join(TYPE_CODES)}",
        )
        return None
    rtype = TYPE_CODES[rtype_name]
    ttl = record.get("ttl", DEFAULT_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
        problems.add(
            record.line_of("ttl"), f"ttl must be a whole number from 0 to {MAX_TTL}, got {ttl!r}"
        )
        ok = False
    values = _values(record, rtype_name, problems)
    if values is None:
        return None
    rdatas = []
    for value, value_line in values:
        try:
            rdatas.append(_RDATA_PARSERS[rtype_name](value, origin))
        except ValueError as exc:
            problems.add(value_line, f"{rtype_name} value {value!r}: {exc}")
            ok = False
    if rtype == TYPE_NS and name == origin and not rdatas:
        problems.add(record.line, "apex NS record has no values")
    dynamic = None
    if "dynamic" in record or _geodns_settings(record) is not None:
        if rtype not in (TYPE_A, TYPE_AAAA):
            problems.add(record.line, f"dynamic answers are only for A and AAAA, not {rtype_name}")
            return None
        if ok:
            dynamic = compile_dynamic(record, name, rtype, ttl, problems.add)
    elif "octodns" in record and not isinstance(record["octodns"], MarkedDict):
        problems.add(record.line_of("octodns"), "'octodns' must be a mapping")
    if not ok:
        return None
    return RRset(name, rtype, ttl, tuple(_dedupe(rdatas)), line=record.line, dynamic=dynamic)


def _geodns_settings(record: MarkedDict) -> Any:
    octodns = record.get("octodns")
    return octodns.get("geodns") if isinstance(octodns, MarkedDict) else None


def _dedupe(rdatas: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for rdata in rdatas:
        if rdata not in seen:
            seen.append(rdata)
    return seen


def _values(
    record: MarkedDict, rtype_name: str, problems: _Collector
) -> list[tuple[Any, int]] | None:
    has_value, has_values = "value" in record, "values" in record
    if has_value and has_values:
        problems.add(record.line_of("values"), "use either 'value' or 'values', not both")
        return None
    if not has_value and not has_values:
        problems.add(record.line, f"{rtype_name} record has no 'value' or 'values'")
        return None
    if has_value:
        value = record["value"]
        if isinstance(value, MarkedList):
            problems.add(
                record.line_of("value"), "'value' holds one value; use 'values' for a list"
            )
            return None
        return [(value, record.line_of("value"))]
    values = record["values"]
    if rtype_name in SINGLE_VALUE_TYPES:
        problems.add(record.line_of("values"), f"{rtype_name} takes one 'value', not 'values'")
        return None
    if not isinstance(values, MarkedList):
        values_list = MarkedList([values], line=record.line_of("values"))
        values = values_list
    if not values:
        problems.add(record.line_of("values"), "'values' is empty")
        return None
    return [(item, values.line_of(index)) for index, item in enumerate(values)]


def _fqdn(value: Any, origin: str) -> DNSLabel:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a fully qualified name ending with '.'")
    error = check_name(value.lower())
    if error:
        raise ValueError(error)
    return DNSLabel(value.lower())


def _ipv4(value: Any, origin: str) -> A:
    try:
        return A(str(ipaddress.IPv4Address(value if isinstance(value, str) else "")))
    except ValueError:
        raise ValueError("expected an IPv4 address such as 192.0.2.1") from None


def _ipv6(value: Any, origin: str) -> AAAA:
    try:
        return AAAA(str(ipaddress.IPv6Address(value if isinstance(value, str) else "")))
    except ValueError:
        raise ValueError("expected an IPv6 address such as 2001:db8::1") from None


def _fields(value: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> MarkedDict:
    if not isinstance(value, MarkedDict):
        raise ValueError(f"expected a mapping with {', '.join(required)}")
    for key in value:
        if key not in required + optional:
            raise ValueError(
                f"unknown key '{key}'{did_you_mean(str(key), required + optional)}; "
                f"expected {', '.join(required + optional)}"
            )
    missing = [key for key in required if key not in value]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return value


def _uint(value: Any, what: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise ValueError(f"{what} must be a whole number from 0 to {2**bits - 1}")
    return value


def _mx(value: Any, origin: str) -> MX:
    if isinstance(value, MarkedDict) and "priority" in value and "preference" not in value:
        fields = _fields(value, ("priority", "value"))
        return MX(_fqdn(fields["value"], origin), _uint(fields["priority"], "priority", 16))
    fields = _fields(value, ("preference", "exchange"))
    return MX(_fqdn(fields["exchange"], origin), _uint(fields["preference"], "preference", 16))


def _srv(value: Any, origin: str) -> SRV:
    fields = _fields(value, ("priority", "weight", "port", "target"))
    return SRV(
        _uint(fields["priority"], "priority", 16),
        _uint(fields["weight"], "weight", 16),
        _uint(fields["port"], "port", 16),
        _fqdn(fields["target"], origin),
    )


def _caa(value: Any, origin: str) -> CAA:
    fields = _fields(value, ("tag", "value"), ("flags",))
    tag, text = fields["tag"], fields["value"]
    if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z0-9]{1,15}", tag):
        raise ValueError("tag must be 1-15 letters or digits, e.g. issue")
    if not isinstance(text, str):
        raise ValueError("value must be a string")
    return CAA(_uint(fields.get("flags", 0), "flags", 8), tag, text)


def _txt(value: Any, origin: str) -> TXT:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("expected a string")
    data = str(value).replace("\\;", ";").encode("utf-8")
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    if sum(len(chunk) + 1 for chunk in chunks) > 65535:
        raise ValueError("text is longer than a record can hold")
    return TXT(chunks)


_RDATA_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "A": _ipv4,
    "AAAA": _ipv6,
    "CNAME": lambda value, origin: CNAME(_fqdn(value, origin)),
    "NS": lambda value, origin: NS(_fqdn(value, origin)),
    "PTR": lambda value, origin: PTR(_fqdn(value, origin)),
    "MX": _mx,
    "SRV": _srv,
    "CAA": _caa,
    "TXT": _txt,
}


def _assemble(
    origin: str,
    path: Path,
    nodes: dict[str, dict[int, RRset]],
    data: MarkedDict,
    soa: SoaSettings,
    problems: _Collector,
) -> Zone | None:
    """Check whole-zone rules (apex NS, CNAME exclusivity, glue) and build the Zone."""

    def line_of(name: str) -> int:
        relative = "" if name == origin else name[: -len(origin) - 1]
        return data.line_of(relative) if relative in data else data.line

    for name, node in nodes.items():
        if TYPE_CNAME in node and len(node) > 1:
            others = ", ".join(sorted(_type_name(t) for t in node if t != TYPE_CNAME))
            problems.add(
                node[TYPE_CNAME].line or line_of(name),
                f"CNAME at '{name}' beside other data ({others}); a CNAME must stand alone",
            )
    apex = nodes.get(origin, {})
    if TYPE_CNAME in apex:
        problems.add(apex[TYPE_CNAME].line, "a CNAME cannot be at the zone apex")
    if TYPE_NS not in apex:
        problems.add(data.line, f"zone '{origin}' has no NS record at the apex ('' key)")
        return None
    delegations = frozenset(n for n, node in nodes.items() if n != origin and TYPE_NS in node)
    for cut in delegations:
        for rdata in nodes[cut][TYPE_NS].rdatas:
            target = str(rdata.label).lower()
            in_zone = target == origin or target.endswith("." + origin)
            if in_zone and not (
                TYPE_A in nodes.get(target, {}) or TYPE_AAAA in nodes.get(target, {})
            ):
                problems.add(
                    nodes[cut][TYPE_NS].line,
                    f"delegation '{cut}' names in-zone nameserver '{target}' that has no "
                    "A/AAAA glue record in this zone",
                )
    ents = set()
    for name in nodes:
        candidate = name
        while candidate != origin:
            candidate = candidate.split(".", 1)[1]
            if candidate != origin and candidate not in nodes:
                ents.add(candidate)
    first_ns = str(apex[TYPE_NS].rdatas[0].label).lower()
    serial = soa.serial if soa.serial is not None else _file_serial(path)
    soa_rdata = SOA(
        soa.mname or first_ns,
        soa.rname or f"hostmaster.{origin}",
        (serial, soa.refresh, soa.retry, soa.expire, soa.minimum),
    )
    soa_rrset = RRset(origin, TYPE_SOA, soa.ttl, (soa_rdata,))
    nodes.setdefault(origin, {})[TYPE_SOA] = soa_rrset
    return Zone(
        origin=origin,
        path=str(path),
        soa=soa_rrset,
        nodes=nodes,
        delegations=delegations,
        empty_non_terminals=frozenset(ents),
        negative_ttl=min(soa.ttl, soa.minimum),
    )


def _file_serial(path: Path) -> int:
    """The zone file's modification time as Unix seconds, within the SOA's 32 bits."""
    try:
        return int(path.stat().st_mtime) % 2**32
    except OSError:
        return 1

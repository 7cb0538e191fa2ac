"""octoDNS record values -> DNS rdata: one parser per record type, checking what octoDNS checks.

Each record type octoDNS defines and a nameserver can serve has a parser here that takes one
value as octoDNS's YAML writes it (a string, or a mapping of the fields octoDNS names) and
returns the rdata geodns encodes on the wire, or None after reporting what is wrong at the
value's file:line:column. The checks are octoDNS's default ("legacy") validators, plus whatever
the wire format needs that octoDNS leaves to the provider (hex that is hex, names that are
names, numbers that fit their fields). Types whose wire form dnslib encodes as the RFCs say use
dnslib's rdata classes; the others are encoded here into raw rdata (`RD`), each checked against
dnspython's encoding by tests/test_rdata.py.

Types octoDNS knows that no nameserver can serve (URLFWD: an HTTP redirect that providers run in
their web front ends) are listed in `UNSERVABLE_TYPES`, and provider-specific types
(`Route53Provider/ALIAS`...) are recognised by their '/': the zone loader skips both with a
warning, as an octoDNS provider skips what it does not support.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dnslib import AAAA, CAA, CNAME, MX, NS, PTR, RD, SRV, TXT, A, DNSLabel

from geodns.common.reader import Reader
from geodns.common.yamlsrc import MarkedDict, MarkedList
from geodns.dns.zone import check_name

# the wire type code of every type geodns serves, by octoDNS's name for it
TYPE_CODES: dict[str, int] = {
    "A": 1,
    "NS": 2,
    "CNAME": 5,
    "PTR": 12,
    "MX": 15,
    "TXT": 16,
    "AAAA": 28,
    "LOC": 29,
    "SRV": 33,
    "NAPTR": 35,
    "DNAME": 39,
    "DS": 43,
    "SSHFP": 44,
    "TLSA": 52,
    "OPENPGPKEY": 61,
    "SVCB": 64,
    "HTTPS": 65,
    "SPF": 99,
    "URI": 256,
    "CAA": 257,
}
# ALIAS has no wire type: at the apex it is answered as the A/AAAA of its in-zone target
ALIAS = "ALIAS"
SERVED_TYPES = frozenset(TYPE_CODES) | {ALIAS}
# octoDNS types that are not DNS data, with why geodns skips them
UNSERVABLE_TYPES = {
    "URLFWD": "an HTTP redirect that DNS providers run in their web front ends, not DNS data",
}
# types whose record holds one `value` (octoDNS's ValueMixin)
SINGLE_VALUE_TYPES = frozenset({"CNAME", "ALIAS", "DNAME"})
# owner names octoDNS requires for a type: _service._proto (or a wildcard), RFC 2782 and 7553
SERVICE_NAME = re.compile(r"^(\*|_[^.]+)\.[^.]+")
SERVICE_NAME_TYPES = frozenset({"SRV", "URI"})
MAX_RDATA = 65535


def type_name(code: int) -> str:
    for name, value in TYPE_CODES.items():
        if value == code:
            return name
    return f"TYPE{code}"


@dataclass(slots=True)
class ValueAt:
    """One value of a record, as a parser sees it: its type and where it is in the file, to
    report what is wrong with it (through the record's reader, which shares the problems)."""

    reader: Reader
    rtype: str
    line: int
    column: int

    def fail(self, value: Any, message: str) -> None:
        self.reader.add(self.line, f"{self.rtype} value {value!r}: {message}", column=self.column)

    def fields(
        self, value: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> Reader | None:
        """The reader of a mapping value, its unknown and missing keys reported; None (reported)
        when the value is not a mapping."""
        if not isinstance(value, MarkedDict):
            self.fail(value, f"expected a mapping with {', '.join(required or optional)}")
            return None
        fields = Reader(
            self.reader.path,
            value,
            f"{self.rtype} value",
            (*required, *optional),
            self.reader.problems,
            prefix=f"{self.rtype} ",
        )
        fields.require(*required)
        return fields


class UncompressedName(RD):
    """The rdata of a type that is one domain name never compressed on the wire (DNAME, RFC
    6672 section 2.5); `label` is the name, for the resolver."""

    attrs = ("label",)

    def __init__(self, label: DNSLabel) -> None:
        self.label = label
        super().__init__(name_wire(label))

    def __repr__(self) -> str:
        return str(self.label)


def name_wire(label: DNSLabel) -> bytes:
    """A name in uncompressed wire form."""
    return b"".join(bytes((len(part),)) + part for part in label.label) + b"\x00"


def _character_string(data: bytes) -> bytes:
    return bytes((len(data),)) + data


# -- names and addresses ----------------------------------------------------------------------


def parse_name(value: Any, at: ValueAt, root_ok: bool = False) -> DNSLabel | None:
    """A fully qualified name; "." only where the type gives it a meaning (a null MX, SRV's
    "no service", a SVCB target of "the owner"), as octoDNS allows."""
    if not isinstance(value, str) or not value:
        at.fail(value, "expected a fully qualified name ending with '.'")
        return None
    lowered = value.lower()
    if lowered == "." and not root_ok:
        at.fail(value, "the root '.' is not a name this type can point to")
        return None
    error = check_name(lowered)
    if error:
        at.fail(value, error)
        return None
    return DNSLabel(lowered)


def _field_name(fields: Reader, key: str, at: ValueAt, root_ok: bool = False) -> DNSLabel | None:
    if key not in fields.mapping:
        return None
    value = fields.mapping[key]
    where = ValueAt(at.reader, at.rtype, fields.line_of(key), fields.mapping.column_of(key))
    return parse_name(value, where, root_ok)


def _ipv4(value: Any, at: ValueAt) -> A | None:
    text = canonical_address(value, 4)
    if text is None:
        at.fail(value, "expected an IPv4 address such as 192.0.2.1")
        return None
    return _address_rdata(text, 4)


def _ipv6(value: Any, at: ValueAt) -> AAAA | None:
    text = canonical_address(value, 6)
    if text is None:
        at.fail(value, "expected an IPv6 address such as 2001:db8::1")
        return None
    return _address_rdata(text, 6)


@functools.lru_cache(maxsize=65_536)
def _address_rdata(text: str, family: int) -> Any:
    """One shared dnslib rdata per address (rdata is only ever read once a zone is built)."""
    return A(text) if family == 4 else AAAA(text)


@functools.lru_cache(maxsize=65_536)
def canonical_address(value: Any, family: int) -> str | None:
    """An address in its canonical text form, or None. Memoised: a big zone repeats the same
    few site addresses thousands of times, and ipaddress's parser costs ~20 us each."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value))
    except ValueError:
        return None


def _target(kind: Callable[[DNSLabel], Any]) -> Callable[[Any, ValueAt], Any]:
    def parse(value: Any, at: ValueAt) -> Any:
        label = parse_name(value, at)
        return None if label is None else kind(label)

    return parse


# -- fields ------------------------------------------------------------------------------------


def _hex(fields: Reader, key: str) -> bytes | None:
    """A hex string field (octoDNS keeps fingerprints and digests as hex text)."""
    value = fields.mapping.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # a hex string of digits only reads as a YAML number
    if not isinstance(value, str) or not value:
        if key in fields.mapping:
            fields.problem(key, f"expected hexadecimal digits, got {value!r}")
        return None
    try:
        return binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        fields.problem(key, f"expected hexadecimal digits (an even number of them), got {value!r}")
        return None


def _text(fields: Reader, key: str, limit: int = 255) -> bytes | None:
    """A string field that goes on the wire as one character-string (at most 255 octets)."""
    value = fields.mapping.get(key)
    if key not in fields.mapping:
        return None
    if not isinstance(value, str):
        fields.problem(key, f"expected a string, got {value!r}")
        return None
    data = value.encode("utf-8")
    if len(data) > limit:
        fields.problem(key, f"longer than {limit} octets")
        return None
    return data


def _one_of(fields: Reader, key: str, allowed: tuple[int, ...], what: str) -> int:
    value = fields.int_in(key, 0, 255, allowed[0])
    if key in fields.mapping and value not in allowed:
        fields.problem(key, f"expected {what}, got {value}")
    return value


# -- the types ---------------------------------------------------------------------------------


def _mx(value: Any, at: ValueAt) -> MX | None:
    """{preference, exchange}; octoDNS's older {priority, value} too."""
    fields = at.fields(value, (), ("preference", "exchange", "priority", "value"))
    if fields is None:
        return None
    preference_key = (
        "preference" if "preference" in value or "priority" not in value else "priority"
    )
    exchange_key = "exchange" if "exchange" in value or "value" not in value else "value"
    fields.require(preference_key, exchange_key)
    preference = fields.int_in(preference_key, 0, 65535, 0)
    exchange = _field_name(fields, exchange_key, at, root_ok=True)  # ".": a null MX, RFC 7505
    return None if exchange is None else MX(exchange, preference)


def _srv(value: Any, at: ValueAt) -> SRV | None:
    fields = at.fields(value, ("priority", "weight", "port", "target"))
    if fields is None:
        return None
    numbers = [fields.int_in(key, 0, 65535, 0) for key in ("priority", "weight", "port")]
    target = _field_name(fields, "target", at, root_ok=True)  # ".": no such service here
    return None if target is None else SRV(*numbers, target)


def _caa(value: Any, at: ValueAt) -> CAA | None:
    fields = at.fields(value, ("tag", "value"), ("flags",))
    if fields is None:
        return None
    flags = fields.int_in("flags", 0, 255, 0)
    tag = fields.text("tag", None)
    if isinstance(tag, str) and not re.fullmatch(r"[A-Za-z0-9]{1,15}", tag):
        fields.problem("tag", f"expected 1-15 letters or digits such as issue, got {tag!r}")
        return None
    text = fields.text("value", None)
    if tag is None or text is None:
        return None
    return CAA(flags, tag, text)


def _sshfp(value: Any, at: ValueAt) -> RD | None:
    fields = at.fields(value, ("algorithm", "fingerprint_type", "fingerprint"))
    if fields is None:
        return None
    algorithm = _one_of(
        fields, "algorithm", (1, 2, 3, 4), "1 (RSA), 2 (DSA), 3 (ECDSA) or 4 (Ed25519)"
    )
    kind = _one_of(fields, "fingerprint_type", (1, 2), "1 (SHA-1) or 2 (SHA-256)")
    fingerprint = _hex(fields, "fingerprint")
    if fingerprint is None:
        return None
    if len(fingerprint) != {1: 20, 2: 32}.get(kind, len(fingerprint)):
        fields.problem(
            "fingerprint",
            f"fingerprint_type {kind} takes {40 if kind == 1 else 64} hex digits, "
            f"got {2 * len(fingerprint)}",
        )
        return None
    return RD(struct.pack("!BB", algorithm, kind) + fingerprint)


def _tlsa(value: Any, at: ValueAt) -> RD | None:
    fields = at.fields(
        value, ("certificate_usage", "selector", "matching_type", "certificate_association_data")
    )
    if fields is None:
        return None
    usage = fields.int_in("certificate_usage", 0, 3, 0)
    selector = fields.int_in("selector", 0, 1, 0)
    matching = fields.int_in("matching_type", 0, 2, 0)
    data = _hex(fields, "certificate_association_data")
    return None if data is None else RD(struct.pack("!BBB", usage, selector, matching) + data)


def _ds(value: Any, at: ValueAt) -> RD | None:
    """{key_tag, algorithm, digest_type, digest}; octoDNS's deprecated field names (flags,
    protocol, algorithm, public_key) mean those four, in that order, as octoDNS reads them."""
    if isinstance(value, MarkedDict) and ("public_key" in value or "flags" in value):
        names = ("flags", "protocol", "algorithm", "public_key")
    else:
        names = ("key_tag", "algorithm", "digest_type", "digest")
    fields = at.fields(value, names)
    if fields is None:
        return None
    key_tag = fields.int_in(names[0], 0, 65535, 0)
    algorithm = fields.int_in(names[1], 0, 255, 0)
    digest_type = fields.int_in(names[2], 0, 255, 0)
    digest = _hex(fields, names[3])
    return (
        None
        if digest is None
        else RD(struct.pack("!HBB", key_tag, algorithm, digest_type) + digest)
    )


NAPTR_FLAGS = ("S", "A", "U", "P")


def _naptr(value: Any, at: ValueAt) -> RD | None:
    fields = at.fields(value, ("order", "preference", "flags", "service", "regexp", "replacement"))
    if fields is None:
        return None
    order = fields.int_in("order", 0, 65535, 0)
    preference = fields.int_in("preference", 0, 65535, 0)
    flags = fields.text("flags", None)
    if isinstance(flags, str) and flags.upper() not in NAPTR_FLAGS:
        fields.problem("flags", f"expected one of S, A, U or P, got {flags!r}")
        return None
    service, regexp = _text(fields, "service"), _text(fields, "regexp")
    replacement = _field_name(fields, "replacement", at, root_ok=True)
    if flags is None or service is None or regexp is None or replacement is None:
        return None
    return RD(
        struct.pack("!HH", order, preference)
        + _character_string(flags.upper().encode())
        + _character_string(service)
        + _character_string(regexp)
        + name_wire(replacement)  # never compressed (RFC 3403 section 4.1)
    )


LOC_INTEGERS = (
    ("lat_degrees", 90),
    ("lat_minutes", 59),
    ("long_degrees", 180),
    ("long_minutes", 59),
)
LOC_NUMBERS = (
    ("lat_seconds", 0.0, 59.999),
    ("long_seconds", 0.0, 59.999),
    ("altitude", -100000.0, 42849672.95),
    ("size", 0.0, 90000000.0),
    ("precision_horz", 0.0, 90000000.0),
    ("precision_vert", 0.0, 90000000.0),
)


def _loc(value: Any, at: ValueAt) -> RD | None:
    """RFC 1876, from octoDNS's twelve fields (metres for altitude, size and precisions)."""
    keys = tuple(k for k, _ in LOC_INTEGERS) + tuple(k for k, _, _ in LOC_NUMBERS)
    fields = at.fields(value, (*keys, "lat_direction", "long_direction"))
    if fields is None:
        return None
    whole = {key: fields.int_in(key, 0, high, 0) for key, high in LOC_INTEGERS}
    number = {key: fields.number_in(key, low, high, 0.0) for key, low, high in LOC_NUMBERS}
    directions = {}
    for key, allowed in (("lat_direction", ("N", "S")), ("long_direction", ("E", "W"))):
        direction = fields.mapping.get(key)
        if key in fields.mapping and direction not in allowed:
            fields.problem(key, f"expected {allowed[0]} or {allowed[1]}, got {direction!r}")
        directions[key] = direction
    latitude = _loc_angle(whole["lat_degrees"], whole["lat_minutes"], number["lat_seconds"])
    longitude = _loc_angle(whole["long_degrees"], whole["long_minutes"], number["long_seconds"])
    if directions["lat_direction"] == "S":
        latitude = -latitude
    if directions["long_direction"] == "W":
        longitude = -longitude
    return RD(
        struct.pack(
            "!BBBBIII",
            0,  # version
            _loc_size(number["size"]),
            _loc_size(number["precision_horz"]),
            _loc_size(number["precision_vert"]),
            2**31 + latitude,
            2**31 + longitude,
            int(number["altitude"] * 100) + 10_000_000,  # centimetres above -100,000 m
        )
    )


def _loc_angle(degrees: int, minutes: int, seconds: float) -> int:
    """Thousandths of an arc second."""
    return (degrees * 3600 + minutes * 60) * 1000 + round(seconds * 1000)


def _loc_size(metres: float) -> int:
    """RFC 1876's size encoding: a digit and a power of ten of centimetres, one octet."""
    centimetres = int(metres * 100)
    exponent = len(str(centimetres)) - 1 if centimetres else 0
    return (centimetres // 10**exponent) << 4 | exponent


def _uri(value: Any, at: ValueAt) -> RD | None:
    fields = at.fields(value, ("priority", "weight", "target"))
    if fields is None:
        return None
    priority = fields.int_in("priority", 0, 65535, 0)
    weight = fields.int_in("weight", 0, 65535, 0)
    target = fields.text("target", None)
    if target == "":
        fields.problem("target", "expected a URI, got ''")
        return None
    if target is None:
        return None
    return RD(struct.pack("!HH", priority, weight) + target.encode("utf-8"))  # no length octet


def _openpgpkey(value: Any, at: ValueAt) -> RD | None:
    """The key in base64, as octoDNS writes it (spaces allowed, as in zone files)."""
    if not isinstance(value, str) or not value.strip():
        at.fail(value, "expected the key in base64")
        return None
    try:
        key = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        at.fail(value, "expected the key in base64")
        return None
    return RD(key)


# SvcParamKeys (RFC 9460 section 14.3.2) as octoDNS names them
SVC_KEYS = {
    "mandatory": 0,
    "alpn": 1,
    "no-default-alpn": 2,
    "port": 3,
    "ipv4hint": 4,
    "ech": 5,
    "ipv6hint": 6,
}


def _svcb(value: Any, at: ValueAt) -> RD | None:
    """SVCB and HTTPS (RFC 9460): {svcpriority, targetname, svcparams: {key: value}}."""
    fields = at.fields(value, ("svcpriority", "targetname"), ("svcparams",))
    if fields is None:
        return None
    priority = fields.int_in("svcpriority", 0, 65535, 0)
    target = _field_name(fields, "targetname", at, root_ok=True)  # ".": the owner itself
    params = fields.mapping.get("svcparams") or MarkedDict()
    if not isinstance(params, MarkedDict):
        fields.problem("svcparams", "expected a mapping of SvcParamKey to value")
        return None
    if priority == 0 and params:
        fields.problem("svcparams", "svcpriority 0 (AliasMode) takes no svcparams")
        return None
    before = fields.error_count()
    encoded: list[tuple[int, bytes]] = []
    for key, param in params.items():
        number, data = _svc_param(str(key), param, fields, params)
        if number is not None and data is not None:
            encoded.append((number, data))
    if target is None or fields.error_count() != before:
        return None
    wire = struct.pack("!H", priority) + name_wire(target)  # never compressed (section 2.2)
    for number, data in sorted(encoded):
        wire += struct.pack("!HH", number, len(data)) + data
    return RD(wire)


def _svc_param(
    key: str, value: Any, fields: Reader, params: MarkedDict
) -> tuple[int | None, bytes | None]:
    def fail(message: str) -> tuple[None, None]:
        fields.add(
            params.line_of(key),
            f"{fields.prefix}svcparams.{key}: {message}",
            column=params.column_of(key),
        )
        return None, None

    if key.startswith("key"):
        if not key[3:].isdigit() or not 0 <= int(key[3:]) <= 65535:
            return fail("expected keyNNNNN with a number from 0 to 65535")
        return int(key[3:]), b"" if value is None else str(value).encode("utf-8")
    number = SVC_KEYS.get(key)
    if number is None:
        return fail(f"unknown SvcParamKey; expected one of {', '.join(SVC_KEYS)} or keyNNNNN")
    if key == "no-default-alpn":
        return (number, b"") if value is None else fail("takes no value")
    if key == "port":
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
            return fail(f"expected a port number, got {value!r}")
        if int(value) > 65535:
            return fail(f"expected a port number, got {value!r}")
        return number, struct.pack("!H", int(value))
    if key == "ech":
        try:
            return number, base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            return fail("expected base64")
    if not isinstance(value, MarkedList) or not value:
        return fail("expected a list")
    if key == "alpn":
        ids = [str(item).encode("utf-8") for item in value]
        if any(not 0 < len(item) < 256 for item in ids):
            return fail("each protocol id is 1 to 255 octets")
        return number, b"".join(_character_string(item) for item in ids)
    if key == "mandatory":
        numbers = []
        for item in value:
            name = str(item)
            if name.startswith("key") and name[3:].isdigit():
                numbers.append(int(name[3:]))
            elif name in SVC_KEYS and name != "mandatory":
                numbers.append(SVC_KEYS[name])
            else:
                return fail(f"unsupported SvcParam {name!r} in mandatory")
        return number, b"".join(struct.pack("!H", n) for n in sorted(set(numbers)))
    family = ipaddress.IPv4Address if key == "ipv4hint" else ipaddress.IPv6Address
    try:
        return number, b"".join(family(str(item)).packed for item in value)
    except ValueError:
        return fail(f"expected IPv{4 if key == 'ipv4hint' else 6} addresses")


# -- TXT and SPF ----------------------------------------------------------------------------------

UNESCAPED_SEMICOLON = re.compile(r"\w;")
DOUBLE_ESCAPED_SEMICOLON = re.compile(r"\\\\;")
CHUNK_SEPARATOR = re.compile(r'(?<!\\)" "')
UNESCAPED_QUOTE = re.compile(r'(?<!\\)"')
ESCAPED = re.compile(r"\\(.)")


def txt_strings(text: str) -> list[bytes]:
    """The character-strings of one TXT/SPF value in octoDNS's notation; ValueError if wrong.

    octoDNS writes `;` as `\\;`. A value that starts with a double quote is in octoDNS's chunked
    notation, `"first string" "second string"` (what its `chunked_values` produce): each quoted
    chunk is one character-string, with `\\"` for a quote inside it. Any other value is one
    text. Strings longer than 255 octets are split into 255-octet character-strings, in order,
    as octoDNS does when it renders the value for a provider.
    """
    if UNESCAPED_SEMICOLON.search(text):
        raise ValueError("unescaped ';': octoDNS requires ';' to be written '\\;'")
    if DOUBLE_ESCAPED_SEMICOLON.search(text):
        raise ValueError("double-escaped ';': write '\\;'")
    if not text.isascii():
        raise ValueError("non-ASCII character (octoDNS accepts ASCII text only)")
    if text.startswith('"'):
        trailing = len(text) - 1 - len(text[:-1].rstrip("\\"))  # backslashes before the end
        if len(text) < 2 or not text.endswith('"') or trailing % 2:
            raise ValueError(
                'a value that starts with \'"\' is octoDNS\'s chunked notation: "a" "b"'
            )
        raw_chunks = CHUNK_SEPARATOR.split(text[1:-1])
        if any(UNESCAPED_QUOTE.search(chunk) for chunk in raw_chunks):
            raise ValueError('write a quote inside a chunk as \\"; chunks are separated by " "')
        chunks = [ESCAPED.sub(r"\1", chunk) for chunk in raw_chunks]
    else:
        chunks = [text.replace("\\;", ";")]
    strings: list[bytes] = []
    for chunk in chunks:
        data = chunk.encode("ascii")
        strings.extend(data[i : i + 255] for i in range(0, len(data), 255))
        if not data:
            strings.append(b"")
    if sum(len(s) + 1 for s in strings) > MAX_RDATA:
        raise ValueError("the text is longer than a record can hold (65535 octets)")
    return strings


def _txt(value: Any, at: ValueAt) -> TXT | None:
    if not isinstance(value, str):
        at.fail(value, "expected a string")
        return None
    try:
        return TXT(txt_strings(value))
    except ValueError as exc:
        at.fail(value, str(exc))
        return None


PARSERS: dict[str, Callable[[Any, ValueAt], Any]] = {
    "A": _ipv4,
    "AAAA": _ipv6,
    "CNAME": _target(CNAME),
    "ALIAS": _target(lambda label: label),
    "DNAME": _target(UncompressedName),
    "NS": _target(NS),
    "PTR": _target(PTR),
    "MX": _mx,
    "SRV": _srv,
    "CAA": _caa,
    "TXT": _txt,
    "SPF": _txt,
    "SSHFP": _sshfp,
    "TLSA": _tlsa,
    "DS": _ds,
    "NAPTR": _naptr,
    "LOC": _loc,
    "URI": _uri,
    "OPENPGPKEY": _openpgpkey,
    "SVCB": _svcb,
    "HTTPS": _svcb,
}


def parse_value(rtype: str, value: Any, at: ValueAt) -> Any:
    """The rdata of one value of a record of type `rtype` (a key of PARSERS), or None when it
    is wrong (every problem reported through `at`)."""
    before = at.reader.error_count()
    rdata = PARSERS[rtype](value, at)
    return rdata if at.reader.error_count() == before else None

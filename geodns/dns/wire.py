"""Bounds-checked parsing of DNS queries: header, one question, OPT and Client Subnet.

This is the first thing every packet meets, so it does only what an answer needs and copies
nothing it does not have to. Only two exceptions leave it: `Drop` (no reply is owed: shorter than
a header, or a response) and `FormError` (reply FORMERR). Anything else escaping is a bug.
"""

from __future__ import annotations

from struct import unpack_from

from geodns.common.errors import Drop, FormError

OPT_TYPE = 41
ECS_OPTION = 8
COOKIE_OPTION = 10  # RFC 7873
ECS_MAX_BITS = {1: 32, 2: 128}
# what a query carried, as bits of one int (counted per query: geodns.observe.metrics)
FEATURE_EDNS = 1
FEATURE_DO = 2
FEATURE_ECS = 4


class Query:
    """One parsed query. `question` is the question section as it goes back to the client."""

    __slots__ = (
        "id",
        "flags",
        "opcode",
        "qname",
        "key",
        "qtype",
        "qclass",
        "question",
        "edns",
        "version",
        "udp_size",
        "do",
        "ecs",
        "ecs_at_end",
        "cookie",
    )

    id: int
    flags: int
    opcode: int
    qname: bytes
    key: bytes
    qtype: int
    qclass: int
    question: bytes
    edns: bool
    version: int
    udp_size: int
    do: bool
    ecs: tuple[int, int, bytes] | None
    ecs_at_end: bool  # the ECS address is the packet's last bytes (geodns.serving.templates)
    cookie: bytes | None  # the COOKIE option's data: 8 (client) or 16-40 octets (+ server)

    @property
    def features(self) -> int:
        """FEATURE_* bits: an OPT record, the DO bit, an ECS option (read by the metrics only
        when a query is counted, so the parser does not pay for it)."""
        return (
            (FEATURE_EDNS if self.edns else 0)
            | (FEATURE_DO if self.do else 0)
            | (FEATURE_ECS if self.ecs is not None else 0)
        )


def parse_query(data: bytes) -> Query:
    """Parse a query packet; raise Drop or FormError, nothing else."""
    size = len(data)
    if size < 12:
        raise Drop("shorter than a header")
    query_id, flags, qdcount, ancount, nscount, arcount = unpack_from(">HHHHHH", data)
    if flags & 0x8000:
        raise Drop("QR=1: a response, not a query")
    if qdcount != 1:
        raise FormError(query_id, flags, f"QDCOUNT is {qdcount}, expected 1")
    qname, offset = _read_name(data, 12, query_id, flags)
    if offset + 4 > size:
        raise FormError(query_id, flags, "question is truncated")
    qtype, qclass = unpack_from(">HH", data, offset)
    offset += 4
    query = Query()
    query.id = query_id
    query.flags = flags
    query.opcode = (flags >> 11) & 0xF
    query.qname = qname
    query.key = qname.lower()
    query.qtype = qtype
    query.qclass = qclass
    query.question = (
        data[12:offset] if offset - 16 == len(qname) else qname + data[offset - 4 : offset]
    )
    query.edns = False
    query.version = 0
    query.udp_size = 512
    query.do = False
    query.ecs = None
    query.ecs_at_end = False
    query.cookie = None
    for _ in range(ancount + nscount):
        offset = _skip_record(data, offset, query_id, flags)
    for _ in range(arcount):
        offset = _read_additional(data, offset, query, query_id, flags)
    if offset != size:
        raise FormError(query_id, flags, "trailing bytes after the last record")
    return query


def _read_name(data: bytes, offset: int, query_id: int, flags: int) -> tuple[bytes, int]:
    """Return (uncompressed wire name, offset after it); pointers must point strictly back."""
    size = len(data)
    position = offset
    segment_start = offset
    end = -1
    length_total = 0
    parts: list[bytes] | None = None
    while True:
        if position >= size:
            raise FormError(query_id, flags, "name runs past the end of the packet")
        length = data[position]
        if length == 0:
            position += 1
            break
        if length >= 0xC0:
            if position + 1 >= size:
                raise FormError(query_id, flags, "truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[position + 1]
            if target >= segment_start:
                raise FormError(query_id, flags, "compression pointer loops or points forward")
            if parts is None:
                parts = [data[offset:position]]
            if end < 0:
                end = position + 2
            position = segment_start = target
            continue
        if length > 63:
            raise FormError(query_id, flags, "label longer than 63 octets or unknown label type")
        next_position = position + 1 + length
        if next_position > size:
            raise FormError(query_id, flags, "label runs past the end of the packet")
        length_total += length + 1
        if length_total > 254:
            raise FormError(query_id, flags, "name longer than 255 octets")
        if parts is not None and segment_start != offset:
            parts.append(data[position:next_position])
        position = next_position
    if parts is None:
        return data[offset:position], position
    return b"".join(parts) + b"\x00", end


def _skip_name(data: bytes, offset: int, query_id: int, flags: int) -> tuple[bool, int]:
    """Skip a name in a record; return (is_root, offset after it)."""
    start = offset
    _, end = _read_name(data, offset, query_id, flags)
    return data[start] == 0, end


def _skip_record(data: bytes, offset: int, query_id: int, flags: int) -> int:
    _, offset = _skip_name(data, offset, query_id, flags)
    if offset + 10 > len(data):
        raise FormError(query_id, flags, "record header is truncated")
    rdlength = unpack_from(">H", data, offset + 8)[0]
    offset += 10 + rdlength
    if offset > len(data):
        raise FormError(query_id, flags, "record data is truncated")
    return offset


def _read_additional(data: bytes, offset: int, query: Query, query_id: int, flags: int) -> int:
    is_root, name_end = _skip_name(data, offset, query_id, flags)
    if name_end + 10 > len(data):
        raise FormError(query_id, flags, "record header is truncated")
    rtype, rclass, ttl, rdlength = unpack_from(">HHIH", data, name_end)
    end = name_end + 10 + rdlength
    if end > len(data):
        raise FormError(query_id, flags, "record data is truncated")
    if rtype != OPT_TYPE:
        return end
    if query.edns:
        raise FormError(query_id, flags, "more than one OPT record")
    if not is_root:
        raise FormError(query_id, flags, "OPT owner name is not the root")
    query.edns = True
    query.udp_size = max(rclass, 512)
    query.version = (ttl >> 16) & 0xFF
    query.do = bool(ttl & 0x8000)
    position = name_end + 10
    while position < end:
        if position + 4 > end:
            raise FormError(query_id, flags, "truncated EDNS option")
        code, length = unpack_from(">HH", data, position)
        position += 4
        if position + length > end:
            raise FormError(query_id, flags, "EDNS option runs past the OPT record")
        if code == ECS_OPTION:
            if query.ecs is not None:  # RFC 7871 section 7.1.1: at most one
                raise FormError(query_id, flags, "more than one Client Subnet option")
            query.ecs = _parse_ecs(data[position : position + length], query_id, flags)
            query.ecs_at_end = position + length == len(data)
        elif code == COOKIE_OPTION:
            if query.cookie is not None:
                raise FormError(query_id, flags, "more than one COOKIE option")
            if length != 8 and not 16 <= length <= 40:  # RFC 7873 section 5.2
                raise FormError(query_id, flags, f"COOKIE option of {length} octets")
            query.cookie = data[position : position + length]
        position += length
    return end


def _parse_ecs(option: bytes, query_id: int, flags: int) -> tuple[int, int, bytes]:
    """Validate an RFC 7871 option; return (family, source prefix, address bytes)."""
    if len(option) < 4:
        raise FormError(query_id, flags, "Client Subnet option shorter than 4 octets")
    family, source, scope = unpack_from(">HBB", option)
    if scope:  # RFC 7871 section 6: in queries it MUST be 0
        raise FormError(query_id, flags, "Client Subnet SCOPE PREFIX-LENGTH is not 0 in a query")
    max_bits = ECS_MAX_BITS.get(family)
    if max_bits is None:
        raise FormError(query_id, flags, f"Client Subnet family {family} is unknown")
    if source > max_bits:
        raise FormError(query_id, flags, "Client Subnet source prefix too long for the family")
    address = option[4:]
    if len(address) != (source + 7) // 8:
        raise FormError(query_id, flags, "Client Subnet address length does not match the prefix")
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        raise FormError(query_id, flags, "Client Subnet address has bits beyond the prefix")
    return family, source, address

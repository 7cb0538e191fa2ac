"""Domain names from the wire, in presentation form for logs (RFC 1035 section 5.1)."""

from __future__ import annotations


def name_text(wire: bytes) -> str:
    """An uncompressed wire name in presentation form, as the client spelled it (case kept).

    '.' and '\\' inside a label are escaped with a backslash, bytes outside printable ASCII as
    \\DDD (RFC 1035 section 5.1), so a line can always be read back unambiguously.
    """
    labels = []
    position = 0
    while position < len(wire) and wire[position]:
        length = wire[position]
        label = wire[position + 1 : position + 1 + length]
        position += 1 + length
        text = []
        for byte in label:
            if byte in (0x2E, 0x5C):
                text.append("\\" + chr(byte))
            elif 0x21 <= byte <= 0x7E:
                text.append(chr(byte))
            else:
                text.append(f"\\{byte:03d}")
        labels.append("".join(text))
    return ".".join(labels) + "." if labels else "."

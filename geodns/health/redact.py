"""Health-check URLs as they may be shown in /status, /metrics and the fleet's shared records.

A check's target can carry a secret: `path: /health?api_key=...`, a token as a path segment, a
user name and password before the host. Whatever leaves the process for a reader (status, metrics
labels, what other members see) shows the check without them:

    https://user:pw@[2001:db8::1]:443/v1/health?api_key=abc  ->  https://[2001:db8::1]:443/v1/health?<redacted>

A query string and a fragment are replaced whole; userinfo is dropped; a path segment that looks
like a secret (long and mixing letters and digits, or following a segment named like one: token,
key, secret, password, auth, signature) becomes `<redacted>`. The redacted name is still unique
enough to tell a site's checks apart; the full key is only ever used inside the process.
"""

from __future__ import annotations

import re

REDACTED = "<redacted>"
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"',;]+", re.IGNORECASE)
SECRET_NAMES = re.compile(
    r"(api[-_]?)?(token|key|secret|passw(or)?d|pwd|auth|credential|signature|sig)s?",
    re.IGNORECASE,
)
RANDOM_LOOKING = re.compile(r"[A-Za-z0-9_\-+=.~%]{20,}")


def public_url(url: str) -> str:
    """`url` (a check key or URL) without query, fragment, userinfo or secret-looking segments."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _path(url)
    authority, slash, path = rest.partition("/")
    authority = authority.rpartition("@")[2]  # user:password@host -> host
    for mark in ("?", "#"):
        if mark in authority:  # no path: the query follows the authority at once
            authority = authority.split(mark, 1)[0] + mark + REDACTED
    return f"{scheme}://{authority}{slash}{_path(path) if slash else ''}"


def redact_text(text: str) -> str:
    """Every URL inside a free text (a probe's detail, a down cause) made public."""
    return URL.sub(lambda match: public_url(match.group(0)), text) if "://" in text else text


def _path(path: str) -> str:
    cut = min((i for i in (path.find("?"), path.find("#")) if i >= 0), default=-1)
    tail = ""
    if cut >= 0:
        path, tail = path[:cut], path[cut] + REDACTED
    segments = path.split("/")
    for index, segment in enumerate(segments):
        before = segments[index - 1] if index else ""
        if segment and (_random_looking(segment) or SECRET_NAMES.fullmatch(before)):
            segments[index] = REDACTED
        elif ";" in segment or "=" in segment:  # matrix parameters: name;key=value
            segments[index] = segment.split(";", 1)[0].split("=", 1)[0] + REDACTED
    return "/".join(segments) + tail


def _random_looking(segment: str) -> bool:
    return (
        RANDOM_LOOKING.fullmatch(segment) is not None
        and any(c.isdigit() for c in segment)
        and any(c.isalpha() for c in segment)
    )

"""The `fleet:` section: the etcd cluster a fleet of geodns nameservers shares, and this member.

Without `fleet:` geodns runs alone exactly as before. With it, drains live in etcd and every
member applies them; each member's health verdicts are published under a lease and a site is down
for the whole fleet when a share of the vantage points say so (docs/fleet.md). Checked here with
file:line problems like every other setting; nothing here talks to etcd.

    fleet:
      member: ns1                      # this nameserver's name in the fleet (default: host name)
      endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379, https://10.0.0.3:2379]
      prefix: /geodns/                 # every key geodns writes starts with it
      tls: {ca_file: ca.pem, cert_file: ns1.pem, key_file: ns1-key.pem}
      username: geodns                 # etcd authentication: the password is read from a file
      password_file: etcd-password
      lease_ttl: 10                    # seconds a dead member's verdicts outlive it
      timeout: 2                       # seconds for one request to etcd
      down_share: 0.5                  # down when MORE than this share of vantage points say so
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from geodns.common.reader import Reader

FLEET_KEYS = (
    "member",
    "endpoints",
    "prefix",
    "tls",
    "username",
    "password_file",
    "lease_ttl",
    "timeout",
    "down_share",
)
TLS_KEYS = ("ca_file", "cert_file", "key_file")
MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
PREFIX = re.compile(r"/[A-Za-z0-9._/-]*/")


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """Where the fleet's etcd is and how this member takes part (see the module docstring)."""

    member: str
    endpoints: tuple[str, ...]
    prefix: str = "/geodns/"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    lease_ttl: int = 10
    timeout: float = 2.0
    down_share: float = 0.5


def parse_fleet(top: Reader, base: Path) -> FleetConfig | None:
    """The `fleet:` section of the config (None when absent); problems go to `top`."""
    if not top.has("fleet") or top.mapping.get("fleet") is None:
        return None
    fleet = top.section("fleet", FLEET_KEYS)
    member = fleet.text("member", None, "a name such as ns1")
    if member is None:
        member = socket.gethostname().split(".")[0] or "geodns"
    if not MEMBER_NAME.fullmatch(member):
        fleet.problem(
            "member",
            f"expected a name of letters, digits, '.', '_' or '-' (at most 63), got {member!r}",
        )
    endpoints = fleet.strings(
        "endpoints", [], "a list of etcd client URLs such as https://10.0.0.1:2379"
    )
    if not endpoints:
        fleet.problem(
            "endpoints", "expected at least one etcd client URL such as http://127.0.0.1:2379"
        )
    for endpoint in endpoints:
        problem = _endpoint_problem(endpoint)
        if problem:
            fleet.problem("endpoints", problem)
    prefix = fleet.text("prefix", "/geodns/", "a key prefix such as /geodns/")
    if not PREFIX.fullmatch(prefix):
        fleet.problem(
            "prefix", f"expected a key prefix that starts and ends with '/', got {prefix!r}"
        )
    tls = fleet.section("tls", TLS_KEYS)
    files = {key: tls.text(key, None, "a file path") for key in TLS_KEYS}
    if (files["cert_file"] is None) != (files["key_file"] is None):
        fleet.problem(
            "tls", "cert_file and key_file go together (a client certificate and its key)"
        )
    if any(files.values()) and any(e.startswith("http://") for e in endpoints):
        fleet.problem("tls", "TLS settings need https:// endpoints")
    username = fleet.text("username", None, "an etcd user name")
    password_file = fleet.text("password_file", None, "a file holding the etcd password")
    if (username is None) != (password_file is None):
        fleet.problem("username", "username and password_file go together")
    lease_ttl = fleet.int_in("lease_ttl", 2, 300, 10)
    timeout = fleet.number_in("timeout", 0.1, 30, 2.0)
    down_share = fleet.number_in("down_share", 0, 0.99, 0.5)
    return FleetConfig(
        member=member,
        endpoints=tuple(e.rstrip("/") for e in endpoints),
        prefix=prefix,
        ca_file=_path(base, files["ca_file"]),
        cert_file=_path(base, files["cert_file"]),
        key_file=_path(base, files["key_file"]),
        username=username,
        password_file=_path(base, password_file),
        lease_ttl=lease_ttl,
        timeout=timeout,
        down_share=down_share,
    )


def _endpoint_problem(endpoint: str) -> str | None:
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return f"{endpoint!r} is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected http://HOST:PORT or https://HOST:PORT, got {endpoint!r}"
    if port is None:
        return f"{endpoint!r} has no port (etcd's client port is usually 2379)"
    if parts.path not in ("", "/") or parts.query or parts.username:
        return f"expected only scheme, host and port, got {endpoint!r}"
    return None


def _path(base: Path, value: str | None) -> Path | None:
    return base / value if value else None

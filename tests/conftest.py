"""Shared fixtures for the black-box conformance tests.

`in_process` (module scope) answers the zones below in this process, through the answer path the
server runs per packet, with the snapshot it would build: for what a query gets back, which needs
no socket. `server` runs geodns with the same zones as a real process, for what only a process
shows (transports, framing, surviving bad input) and for a few end-to-end checks per file. It is
one process for the whole session (a start costs ~0.9 s of CPU, and its users only ask it
questions); a test that would change it or must not share it starts its own with `make_server`,
which stops it after the test. If one module kills it, that module's own checks say so first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(Path(__file__).resolve().parents[1]) not in sys.path:  # `import geodns` without installing
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from inprocess import InProcessServer  # noqa: E402
from server_process import GeodnsServer  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _cache_home_of_the_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The servers and loaders of the tests keep their place-index cache and their default
    admin sockets (geodns.config.loader.cache_directory: $XDG_CACHE_HOME/geodns) in a
    directory of the test run, not in the user's ~/.cache/geodns: a run left hundreds of
    indexes and sockets there (servers killed on purpose leave their socket), and a test could
    have found an index cached by an earlier run."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-home"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


ZONE = "example.test"
REV_ZONE = "2.0.192.in-addr.arpa"
SERIAL = 2024010101

LONG_TXT = "".join("abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] for i in range(300))
MANY_COUNT = 40  # ~700-byte answer: over 512, under 1232
BIG_COUNT = 60  # ~1000-byte answer: fits 1232
HUGE_COUNT = 100  # ~1650-byte answer: over 1232, under 4096
MEDIUM_COUNT = 15  # ~300-byte answer: fits 512


def _addresses(prefix: str, count: int) -> str:
    return "\n".join(f"    - {prefix}.{i + 1}" for i in range(count))


# Every feature the core nameserver must handle. 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24
# and 2001:db8::/32 are documentation ranges; *.invalid names are never in any zone.
EXAMPLE_TEST_ZONE = f"""\
---
'':
  - type: NS
    ttl: 86400
    values:
      - ns1.example.test.
      - ns2.example.test.
  - type: MX
    ttl: 3600
    values:
      - preference: 10
        exchange: mail.example.test.
      - preference: 20
        exchange: mx.elsewhere.invalid.
  - type: TXT
    ttl: 600
    values:
      - v=spf1 -all
      - {LONG_TXT}
  - type: A
    ttl: 300
    value: 192.0.2.1
  - type: CAA
    values:
      - flags: 0
        tag: issue
        value: ca.example.net
ns1:
  - type: A
    value: 192.0.2.53
  - type: AAAA
    value: 2001:db8::53
ns2:
  type: A
  value: 192.0.2.54
mail:
  - type: A
    value: 192.0.2.25
  - type: AAAA
    value: 2001:db8::25
www:
  - type: A
    ttl: 120
    value: 192.0.2.80
  - type: AAAA
    ttl: 120
    value: 2001:db8::80
alias:
  type: CNAME
  ttl: 60
  value: www.example.test.
alias2:
  type: CNAME
  ttl: 60
  value: alias.example.test.
external:
  type: CNAME
  value: target.elsewhere.invalid.
dangling:
  type: CNAME
  value: nothere.example.test.
loop1:
  type: CNAME
  value: loop2.example.test.
loop2:
  type: CNAME
  value: loop1.example.test.
txt:
  type: TXT
  value: 'a\\;b c'
'*.wild':
  - type: A
    ttl: 90
    value: 192.0.2.100
  - type: TXT
    value: wildcard
'*.cw':
  type: CNAME
  value: www.example.test.
towild:
  type: CNAME
  value: foo.wild.example.test.
explicit.wild:
  type: A
  value: 192.0.2.101
deep.ent.wild:
  type: A
  value: 192.0.2.102
a.b.c:
  type: A
  value: 192.0.2.3
sub:
  type: NS
  ttl: 7200
  values:
    - ns1.sub.example.test.
    - ns.elsewhere.invalid.
ns1.sub:
  - type: A
    value: 192.0.2.200
  - type: AAAA
    value: 2001:db8::200
_sip._tcp:
  type: SRV
  values:
    - priority: 10
      weight: 5
      port: 5060
      target: sip.example.test.
sip:
  type: A
  value: 192.0.2.60
mx2:
  type: MX
  values:
    - preference: 10
      exchange: mail.example.test.
    - preference: 20
      exchange: mail.example.test.
ptr:
  type: PTR
  value: www.example.test.
many:
  type: A
  values:
{_addresses("198.51.100", MANY_COUNT)}
big:
  type: A
  values:
{_addresses("198.51.100", BIG_COUNT)}
huge:
  type: A
  values:
{_addresses("203.0.113", HUGE_COUNT)}
medium:
  type: A
  values:
{_addresses("203.0.113", MEDIUM_COUNT)}
"""

REVERSE_ZONE = """\
'':
  type: NS
  values:
    - ns1.example.test.
    - ns2.example.test.
'80':
  type: PTR
  value: www.example.test.
"""

# SOA: example.test gets explicit values (negative TTL = min(3600, 300) = 300); the reverse zone
# keeps the defaults for mname/rname/serial but has ttl < minimum (negative TTL = 120).
BASE_CONFIG: dict[str, Any] = {
    "soa": {"refresh": 7200, "retry": 900, "expire": 604800, "minimum": 300, "ttl": 3600},
    "zones": {
        ZONE: {
            "soa": {
                "serial": SERIAL,
                "mname": "ns1.example.test.",
                "rname": "hostmaster.example.test.",
            }
        },
        REV_ZONE: {"soa": {"ttl": 120, "minimum": 900}},
    },
}

BASE_ZONES = {ZONE: EXAMPLE_TEST_ZONE, REV_ZONE: REVERSE_ZONE}


def base_config(**overrides: Any) -> dict[str, Any]:
    config = {key: value for key, value in BASE_CONFIG.items()}
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> InProcessServer:
    """example.test and 2.0.192.in-addr.arpa as `server` serves them, answered in this process."""
    return InProcessServer(tmp_path_factory.mktemp("in-process"), base_config(), BASE_ZONES)


@pytest.fixture(scope="session")
def server() -> Iterator[GeodnsServer]:
    """geodns serving example.test and 2.0.192.in-addr.arpa (one process for the session)."""
    with GeodnsServer(base_config(), BASE_ZONES) as srv:
        yield srv


@pytest.fixture
def make_server() -> Iterator[Callable[..., GeodnsServer]]:
    """Factory for dedicated servers: make_server(config, zones) -> started GeodnsServer."""
    started: list[GeodnsServer] = []

    def factory(
        config: dict[str, Any] | None = None, zones: dict[str, Any] | None = None, **kwargs: Any
    ) -> GeodnsServer:
        srv = GeodnsServer(config, BASE_ZONES if zones is None else zones, **kwargs)
        started.append(srv)
        srv.start()
        return srv

    yield factory
    errors = []
    for srv in started:
        try:
            if srv.proc is not None:
                srv.stop()
        except AssertionError as exc:
            errors.append(str(exc))
        finally:
            srv.cleanup()
    if errors:
        pytest.fail("\n".join(errors))

"""The error family: every exception geodns raises on purpose derives from `GeodnsError`.

    GeodnsError
    ├── ConfigError      a config or zone file cannot be loaded (every Problem, with file:line)
    ├── PacketError      a packet that gets no normal answer (raised by geodns.dns.wire only)
    │   ├── Drop         no reply is owed: shorter than a header, or a response (QR=1)
    │   └── FormError    malformed: the reply is FORMERR
    ├── UnknownSiteError a drain or undrain names no site of the config
    ├── AdminError       the admin API could not be reached or refused a request
    ├── WorkerError      a worker process did not start
    ├── StateFileError   the state file could not be written (a drain is not acknowledged)
    └── FleetError       etcd, the fleet's store, could not be reached or refused a request

Anything else escaping a module is a bug. Configuration problems are collected, not raised one
at a time, so that `geodns check` can print every mistake in one run; each carries the file,
the line and what was expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake (or, with severity "warning", one doubt) in a config or zone file.

    `line` and `column` count from 1; 0 means "the whole file" / "the whole line".
    """

    path: str
    line: int
    message: str
    column: int = 0
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        """`file:line:column: severity: message`, as compilers print them; the line and column
        are left out when unknown (a file that cannot be read has no line 0)."""
        where = self.path
        if self.line:
            where += f":{self.line}"
            if self.column:
                where += f":{self.column}"
        return f"{where}: {self.severity}: {self.message}"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


class GeodnsError(Exception):
    """The root of every error geodns raises on purpose."""


class ConfigError(GeodnsError):
    """Raised when a config or zone set cannot be loaded; carries every problem found (the
    warnings found on the way too, so that they are not lost)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for an unknown key, or '' when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class PacketError(GeodnsError):
    """A packet that gets no normal answer; only geodns.dns.wire raises these."""


class Drop(PacketError):
    """The packet gets no reply at all."""


class FormError(PacketError):
    """The packet is malformed; the reply is FORMERR with this ID and these flags echoed."""

    def __init__(self, query_id: int, flags: int, reason: str) -> None:
        super().__init__(reason)
        self.query_id = query_id
        self.flags = flags


class UnknownSiteError(GeodnsError, KeyError):
    """A drain or undrain names a site the config does not have."""

    def __init__(self, site: str) -> None:
        super().__init__(site)
        self.site = site


class AdminError(GeodnsError):
    """The admin API could not be reached or refused the request; the message says why."""


class WorkerError(GeodnsError):
    """A worker process did not start (it exited, or did not report ready in time)."""


class MapBuildError(GeodnsError):
    """The child process that builds answer maps could not (the main process builds them)."""


class StateFileError(GeodnsError):
    """The state file could not be written, so a change that must survive a crash was undone."""


class FleetError(GeodnsError):
    """etcd could not be reached or refused a request; the message says which and why."""

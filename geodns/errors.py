"""The error types that cross module boundaries.

Configuration problems are collected, not raised one at a time, so that `geodns check` can print
every mistake in one run; each carries the file, the line and what was expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a config or zone file."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class ConfigError(Exception):
    """Raised when a config or zone set cannot be loaded; carries every problem found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for an unknown key, or '' when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def report_unknown_keys(
    mapping: Any, allowed: Collection[str], add: Callable[[int, str], None], where: str = ""
) -> int:
    """Report each key of a MarkedDict not in `allowed` at its own line, with a "did you mean";
    return how many there were. `where` prefixes the message (e.g. "sticky: ")."""
    unknown = 0
    for key in mapping:
        if key not in allowed:
            add(
                mapping.line_of(key), f"{where}unknown key '{key}'{did_you_mean(str(key), allowed)}"
            )
            unknown += 1
    return unknown

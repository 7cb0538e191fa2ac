"""One way to read checked settings out of YAML: the config, sites, zones and dynamic records.

Every file geodns reads is YAML loaded with the place of each key (geodns.common.yamlsrc), and
every mistake is reported where it is, as `file:line` with what was expected, all of them in one
run. A `Reader` wraps one mapping: it reports unknown keys (with a "did you mean") when made, and
its getters check a value's type and range, report a problem and return the default when the
value is wrong, so a caller can go on and find the next mistake. Readers of nested mappings share
one list of problems; `raise_if_any()` turns it into a ConfigError at the end.

    top = Reader(path, data, "config", TOP_KEYS)
    port = top.int_in("port", 0, 65535, 5353)
    tcp = top.section("tcp", ("idle_timeout", "max_connections"))
    idle = tcp.number_in("idle_timeout", 0.001, 3600, 10.0)
    top.raise_if_any()
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

from geodns.common.errors import ConfigError, Problem, did_you_mean
from geodns.common.yamlsrc import MarkedDict, MarkedList

T = TypeVar("T")


class Reader:
    """Typed, checked access to one YAML mapping, with file:line problems.

    `where` names the mapping in messages ("config", "tcp", "sites.fra"); `keys` are the keys it
    may hold. Problems go to `problems`, shared with the readers of nested sections. A value's
    problem is named `<where>.<key>`; `prefix` replaces the `<where>.` (e.g. "" for a zone's
    record, whose line already says which record it is).
    """

    def __init__(
        self,
        path: str,
        mapping: MarkedDict,
        where: str,
        keys: Collection[str],
        problems: list[Problem] | None = None,
        prefix: str | None = None,
    ) -> None:
        self.path, self.mapping, self.where = path, mapping, where
        self.prefix = prefix if prefix is not None else ("" if where == "config" else f"{where}.")
        self.problems: list[Problem] = [] if problems is None else problems
        self.unknown = 0
        for key in mapping:
            if key not in keys:
                self.unknown += 1
                self.add(
                    mapping.line_of(key),
                    f"unknown key '{key}' in {where}{did_you_mean(str(key), keys)}; "
                    f"expected one of {', '.join(keys)}",
                    column=mapping.column_of(key),
                )

    # -- reporting ------------------------------------------------------------------------------

    def add(self, line: int, message: str, *, column: int = 0, severity: str = "error") -> None:
        self.problems.append(Problem(self.path, line, message, column, severity))

    def problem(self, key: str, message: str, *, severity: str = "error") -> None:
        """A problem with the value of `key`, at its line: '<where>.<key>: <message>'."""
        self.add(
            self.mapping.line_of(key),
            f"{self.name(key)}: {message}",
            column=self.mapping.column_of(key),
            severity=severity,
        )

    def warn(self, key: str, message: str) -> None:
        self.problem(key, message, severity="warning")

    def name(self, key: str) -> str:
        """How messages name a key: 'port' at the top of the config, else 'tcp.idle_timeout'."""
        return f"{self.prefix}{key}"

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def error_count(self) -> int:
        """How many errors the shared list holds: compare before and after reading a part to
        tell whether that part was clean."""
        problems = self.problems
        if not problems:  # the common case, asked once or twice per value of every record
            return 0
        return sum(1 for p in problems if p.severity == "error")

    def require(self, *keys: str) -> bool:
        """Report each of `keys` the mapping lacks, at the mapping's line; True when none is."""
        missing = [key for key in keys if key not in self.mapping]
        if missing:
            self.add(
                self.mapping.line,
                f"{self.where}: missing {', '.join(missing)}",
                column=self.mapping.column,
            )
        return not missing

    def raise_if_any(self) -> None:
        """ConfigError with every problem (warnings too) when at least one is an error."""
        if self.errors():
            raise ConfigError(self.problems)

    # -- values ---------------------------------------------------------------------------------

    def has(self, key: str) -> bool:
        return key in self.mapping

    def line_of(self, key: str) -> int:
        return self.mapping.line_of(key)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, what: str) -> Any:
        """The value of `key` when it is of `kind` (a bool is not an int), else `default`."""
        if key not in self.mapping:
            return default
        value = self.mapping[key]
        ok = False if isinstance(value, bool) and kind is not bool else isinstance(value, kind)
        if not ok:
            self.problem(key, f"expected {what}, got {value!r}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self.get(key, bool, default, "true or false"))

    def text(self, key: str, default: T, what: str = "a string") -> str | T:
        value: str | T = self.get(key, str, default, what)
        return value

    def int_in(self, key: str, low: int, high: int, default: int) -> int:
        """A whole number from `low` to `high`."""
        what = f"a whole number from {low} to {high}"
        value = self.get(key, int, default, what)
        if not low <= value <= high:
            self.problem(key, f"expected {what}, got {value}")
            return default
        return int(value)

    def number_in(self, key: str, low: float, high: float, default: float) -> float:
        """A finite number (int or float) from `low` to `high`: no NaN, no infinity."""
        what = f"a number from {low:g} to {high:g}"
        value = self.get(key, (int, float), default, what)
        if not (math.isfinite(value) and low <= value <= high):
            self.problem(key, f"expected {what}, got {value!r}")
            return default
        return float(value)

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        """One of `choices` (compared in lower case)."""
        what = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
        value = self.get(key, str, default, what)
        lowered = value.lower()
        if lowered not in choices:
            self.problem(key, f"expected {what}, got {value!r}{did_you_mean(lowered, choices)}")
            return default
        return str(lowered)

    def strings(self, key: str, default: Sequence[str], what: str) -> list[str]:
        """A list of strings; a single string counts as a list of one."""
        if key not in self.mapping:
            return list(default)
        value = self.mapping[key]
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(key, f"expected {what}, got {value!r}")
            return list(default)
        return list(value)

    def section(self, key: str, keys: Collection[str]) -> Reader:
        """The reader of a nested mapping (an empty one when the key is absent)."""
        value = self.mapping.get(key)
        if value is None:
            value = MarkedDict(line=self.mapping.line_of(key), column=self.mapping.column_of(key))
        elif not isinstance(value, MarkedDict):
            self.problem(key, "expected a mapping")
            value = MarkedDict(line=self.mapping.line_of(key), column=self.mapping.column_of(key))
        return Reader(self.path, value, self.name(key), keys, self.problems)

    def nested(self, mapping: MarkedDict, where: str, keys: Collection[str]) -> Reader:
        """The reader of a mapping found inside this one (a list item, a pool), sharing the
        problems; `where` names it in messages."""
        return Reader(self.path, mapping, where, keys, self.problems)

    def items(self, key: str, what: str) -> MarkedList:
        """A list value (an empty one, with a problem, when it is something else)."""
        value = self.mapping.get(key)
        if value is None:
            return MarkedList(line=self.mapping.line_of(key))
        if not isinstance(value, MarkedList):
            self.problem(key, f"expected {what}")
            return MarkedList(line=self.mapping.line_of(key))
        return value

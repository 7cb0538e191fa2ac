"""YAML loading that remembers where every key and list item came from.

Every error geodns reports about a file names the line, so the loader returns dict and list
subclasses that carry the line of each key and item. Scalars stay plain Python values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from geodns.common.errors import ConfigError, Problem


class MarkedDict(dict[Any, Any]):
    """A mapping that knows its own line and the line (and column) of each key."""

    line: int = 0
    column: int = 0
    key_lines: dict[Any, int]
    key_columns: dict[Any, int]

    def __init__(self, *args: Any, line: int = 0, column: int = 0) -> None:
        super().__init__(*args)
        self.line, self.column = line, column
        self.key_lines, self.key_columns = {}, {}

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)

    def column_of(self, key: Any) -> int:
        return self.key_columns.get(key, self.column)


class MarkedList(list[Any]):
    """A sequence that knows its own line and the line (and column) of each item."""

    line: int = 0
    column: int = 0
    item_lines: list[int]
    item_columns: list[int]

    def __init__(self, *args: Any, line: int = 0, column: int = 0) -> None:
        super().__init__(*args)
        self.line, self.column = line, column
        self.item_lines, self.item_columns = [], []

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line

    def column_of(self, index: int) -> int:
        return self.item_columns[index] if 0 <= index < len(self.item_columns) else self.column


# libyaml's C parser where PyYAML was built with it (Debian's and PyPI's wheels are): it reads a
# zone of 10,000 records about ten times faster than the pure-Python one, with the same marks
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):
    """A safe loader that builds MarkedDict/MarkedList and rejects duplicate keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> MarkedDict:
    loader.flatten_mapping(node)
    result = MarkedDict(line=node.start_mark.line + 1, column=node.start_mark.column + 1)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "expected a plain key", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
        result.key_columns[key] = key_node.start_mark.column + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> MarkedList:
    result = MarkedList(
        (loader.construct_object(child, deep=True) for child in node.value),
        line=node.start_mark.line + 1,
        column=node.start_mark.column + 1,
    )
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    result.item_columns = [child.start_mark.column + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: Path) -> Any:
    """Parse one YAML file; syntax errors become a ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), 0, f"cannot read file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(str(path), 0, "file is not UTF-8 text")]) from exc
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError([Problem(str(path), line, f"invalid YAML: {exc.problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(str(path), 0, f"invalid YAML: {exc}")]) from exc
    return data

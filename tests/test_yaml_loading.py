"""The streaming YAML builder (geodns.common.yamlsrc.parse_yaml) against PyYAML's own loader.

parse_yaml builds the values straight from the parser's events so that a big zone leaves no
node tree behind; it must give what `yaml.load` gives with the same loader, value for value and
mark for mark, and refuse what it refuses (with a line). The uncommon constructs (merge keys, tags on
collections) go to the classic path, and must still come out the same.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from geodns.common.errors import ConfigError
from geodns.common.yamlsrc import (
    MappingEntries,
    MarkedDict,
    MarkedList,
    UnusualYaml,
    _Loader,
    load_yaml,
    parse_yaml,
)

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(
    [
        *ROOT.joinpath("zones").glob("*.yaml"),
        *ROOT.joinpath("tests", "octodns_corpus").glob("*.yaml"),
        *ROOT.joinpath("geodns", "data").glob("*.yaml"),
        *ROOT.joinpath("systemd").glob("*.yaml"),
    ]
)

CASES = [
    "",
    "a: 1",
    "- 1\n- two\n- 3.5\n- null\n- true\n- 2001-01-01\n",
    "a: &x [1, 2]\nb: *x\nc: {d: *x}\n",
    "a: &m {k: v}\nb:\n  <<: *m\n  j: w\n",  # a merge key: the classic path
    "a: !!set {x, y}\n",  # a tag on a collection: the classic path
    "a: !!str 12\nb: !!int '7'\nc: !!binary aGVsbG8=\n",
    "? [1, 2]\n: x\n",  # a key that is not plain
    "a: 1\na: 2\n",  # a duplicate key
    "a: *nowhere\n",  # an undefined alias
    "a: &x 1\nb: &x 2\n",  # a duplicate anchor
    "--- 1\n--- 2\n",  # two documents
    "a: [1, 2\n",  # a syntax error
    "a:\n  - b: 1\n    c: [x, {d: e}]\n  - 'quoted: yes'\n",
    "'': {type: A, value: 192.0.2.1}\nwww: [{type: A, values: [192.0.2.2]}, {type: TXT, value: x}]\n",
    "1: one\n2.5: two\ntrue: three\nnull: four\n",
    "x: |\n  literal\n  text\ny: >\n  folded\n  text\n",
]


def outcome(load: Any, text: str) -> tuple[str, Any]:
    """The value with its marks, or a refusal. Which of two errors is reported may differ (the
    classic loader parses the whole file before it builds anything, the stream builds as it
    parses and so stops at the first problem in file order); that both refuse may not, and the
    stream's refusal must name a line."""
    try:
        return "ok", described(load(text))
    except yaml.MarkedYAMLError as exc:
        assert exc.problem_mark is not None or exc.context_mark is not None
        return "error", None


def described(value: Any) -> Any:
    """A value with every mark spelled out, so that marks are compared too."""
    if isinstance(value, MarkedDict):
        return (
            "map",
            value.line,
            value.column,
            [(k, value.line_of(k), value.column_of(k), described(v)) for k, v in value.items()],
        )
    if isinstance(value, MarkedList):
        return (
            "list",
            value.line,
            value.column,
            [(value.line_of(i), value.column_of(i), described(v)) for i, v in enumerate(value)],
        )
    return value


def classic(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass


@pytest.mark.parametrize("text", CASES)
def test_cases_match_the_classic_loader(text: str) -> None:
    assert outcome(parse_yaml, text) == outcome(classic, text)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_bundled_files_match_the_classic_loader(path: Path) -> None:
    text = path.read_text()
    assert outcome(parse_yaml, text) == outcome(classic, text)


def test_mutated_documents_match_the_classic_loader() -> None:
    """Each bundled file cut, doubled and garbled at random places: the same values or a
    refusal from both (a bounded number of mutations, seeded)."""
    rng = random.Random(1035)
    texts = [path.read_text() for path in FILES]
    for _ in range(400):
        text = rng.choice(texts)
        at = rng.randrange(len(text) + 1)
        kind = rng.randrange(4)
        if kind == 0:
            mutated = text[:at]
        elif kind == 1:
            mutated = text[:at] + text[rng.randrange(len(text) + 1) :]
        elif kind == 2:
            mutated = text[:at] + rng.choice(":-&*!{}[],'\"#|> \n\t?") + text[at:]
        else:
            mutated = text[:at] + text[at:][: rng.randrange(200)] + text[at:]
        assert outcome(parse_yaml, mutated) == outcome(classic, mutated), mutated


def test_aliases_are_the_same_object() -> None:
    data = parse_yaml("a: &v [1, 2]\nb: *v\n")
    assert data["a"] is data["b"]


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError) as raised:
        load_yaml(path)
    assert raised.value.problems[0].path == str(path)


def entries_outcome(path: Path) -> tuple[str, Any]:
    """MappingEntries' entries as one described mapping (or 'unusual', or a refusal), to set
    beside load_yaml's."""
    entries = MappingEntries(path)
    try:
        items = [(k, line, column, described(v)) for k, v, line, column in entries]
    except UnusualYaml:
        return "unusual", None
    except ConfigError:
        return "error", None
    return "ok", ("map", entries.line, entries.column, items) if items else None


def load_outcome(path: Path) -> tuple[str, Any]:
    try:
        data = load_yaml(path)
    except ConfigError:
        return "error", None
    if data is not None and not isinstance(data, MarkedDict):
        return "error", None  # not a mapping: MappingEntries refuses it
    return "ok", described(data) if data else None


@pytest.mark.parametrize("text", CASES)
def test_mapping_entries_give_what_load_yaml_gives(text: str, tmp_path: Path) -> None:
    """Read one entry at a time (a zone's records), a file's mapping is the same, key for key
    and mark for mark; a construct left to the classic path says so (the zone is then read
    whole), and a broken file is refused by both."""
    path = tmp_path / "case.yaml"
    path.write_text(text)
    streamed = entries_outcome(path)
    if streamed[0] != "unusual":
        assert streamed == load_outcome(path)


def test_mapping_entries_of_mutated_zones_match_load_yaml(tmp_path: Path) -> None:
    rng = random.Random(4592)
    texts = [path.read_text() for path in FILES]
    path = tmp_path / "mutated.yaml"
    for _ in range(300):
        text = rng.choice(texts)
        at = rng.randrange(len(text) + 1)
        mutated = text[:at] + rng.choice(":-&*!{}[],'\"#|> \n\t?") + text[at:]
        path.write_text(mutated)
        streamed = entries_outcome(path)
        if streamed[0] != "unusual":
            assert streamed == load_outcome(path), mutated

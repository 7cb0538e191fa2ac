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

from geodns.common import yamlsrc
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


def test_a_syntax_error_names_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("a:\n  b: 1\n   c: 2\n")  # 'c' indented under 'b's value
    with pytest.raises(ConfigError) as raised:
        load_yaml(path)
    problem = raised.value.problems[0]
    assert (problem.path, problem.line, problem.column) == (str(path), 3, 5)
    assert str(problem).startswith(f"{path}:3:5: error: invalid YAML: ")


def entries_outcome(path: Path, entries: MappingEntries | None = None) -> tuple[str, Any]:
    """MappingEntries' entries as one described mapping (or 'unusual', or a refusal), to set
    beside load_yaml's."""
    entries = entries or MappingEntries(path)
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


# -- blocks written alike (RepeatedBlocks): parsed once, the others copies with their lines moved

REPEAT_CASES = [
    # (text, whether copies must be taken)
    ("a:\n- 1\n- 2\nb:\n- 1\n- 2\nc: 1\n", True),  # sequences at column 0
    ("a:\n  k: v\n# note\nb:\n  k: v\n# note\nc: 1", True),  # comments; no final newline
    ("a:\n  x\n  y\nb:\n  x\n  y\nc: 1\n", True),  # a plain scalar over two lines
    ("a:  \n  v\nb:  \n  v\nc: 1\n", True),  # spaces after the colon
    ("a: 1\nb:\n  v\nc:\n  v\nd: 2\n", True),  # a value on its key's line
    ("'':\n  k: [1, {x: y}]\n'w':\n  k: [1, {x: y}]\n\"v\":\n  k: [1, {x: y}]\nz:\n", True),
    ("a:\n  !!str 1\nb:\n  !!str 1\nc: 1\n", True),  # a tag
    ("a:\n  |+\n  y\n\nb:\n  |+\n  y\n\nc:\n  |+\n  y\n\n", True),  # kept line breaks
    ("a:\n  |+\n  y\n\nb:\n  |+\n  y\n\n", False),  # the last block is never a copy
    ("a:\n  |+\n  y\nb:\n  |+\n  y", False),  # ... nor without a final newline
    ('p:\n  y\na:\n  "x\nb:\n  y\nc:\n  z"\n', False),  # a quoted scalar over key lines
    ("a:\n  [1,\nb:\n  2]\nc:\n  [1,\nd:\n  2]\ne: 1\n", False),  # a flow collection too
    ("a:\n  [1,\nb:\n  2]\nc:\n  [1 ,\nd:\n  2]\ne: 1\n", False),  # ...closed by a repeat
    ("a:\nb:\n  2]\nc:\n  [1,\nd:\n  2]\ne: 1\n", False),
    ("a: &x\n  k: v\nb:\n  *x\nc:\n  *x\nd: 1\n", False),  # aliases
    ("a:\n  &x v\nb:\n  &x v\nc: 1\n", False),  # a duplicate anchor
    ("a:\n  v\nb:\n  v\na:\n  v\nz: 1\n", False),  # a duplicate key among the copies: read whole
    ("ab:\n  v\nyes:\n  v\nnull:\n  v\n1.5:\n  v\nx.y-z_1:\n  v\nz: 1\n", True),  # keys read
    ("1:\n  v\n2:\n  v\n3: x\n", True),  # keys that are not strings
    ("a:\n  v\n---\nb:\n  v\n---\nc: 1\n", False),  # document markers
    ("a:\n\tk: v\nb:\n\tk: v\nc: 1\n", False),  # tabs
    ("a:\r\n  k: v\r\nb:\r\n  k: v\r\nc: 1\r\n", True),  # read as text: newlines
    ("a:\n  k: v\x85  j: w\nb:\n  k: v\x85  j: w\nc: 1\n", False),  # a break YAML counts
    ("%YAML 1.1\n---\na:\n  v\nb:\n  v\nc: 1\n", True),  # a directive
    ("\ufeffa:\n  v\nb:\n  v\nc: 1\n", True),  # a byte order mark
    ("a:\n  <<: {k: v}\nb:\n  <<: {k: v}\nc: 1\n", False),  # a merge key: the classic path
    ("a:\n  v\nb:\n  v\n- x\n", False),  # a sequence after the mapping
    ("a:\n  v\nb:\n  v\n c: 1\n", False),  # an indented line after them
    ("---\n? ''\n: - k: v\na:\n  k: v\nb:\n  k: v\nc: 1\n", True),  # the apex as octoDNS writes it
    ("? a\n: v\n? b\n: v\nc: 1\n", False),  # keys written so are not blanked
    (":a:\n  v\nb:\n  v\nc: 1\n", False),  # a key the text does not show as one
]


def entries_with_copies(path: Path) -> tuple[tuple[str, Any], int]:
    """What a zone's loading reads (MappingEntries, or the file whole when it says 'unusual'),
    and how many entries were copies."""
    entries = MappingEntries(path)
    streamed = entries_outcome(path, entries)
    if streamed[0] == "unusual":
        return load_outcome(path), entries.copied
    return streamed, entries.copied


@pytest.mark.parametrize("case", REPEAT_CASES, ids=range(len(REPEAT_CASES)))
def test_blocks_written_alike_read_as_load_yaml_reads_them(
    case: tuple[str, bool], tmp_path: Path
) -> None:
    text, copies = case
    path = tmp_path / "case.yaml"
    path.write_bytes(text.encode())
    read, copied = entries_with_copies(path)
    assert read == load_outcome(path)
    assert (copied > 0) == copies


def with_repeats(text: str, rng: random.Random) -> str:
    """A file with each of its top-level blocks written again under new keys, some more than
    once, in shuffled order, before the original's last block."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line[:1] not in ("", " ", "\t", "#", "-", "\n")]
    blocks = ["".join(lines[a:b]) for a, b in zip(starts, starts[1:], strict=False)]
    copies = [block.split("\n", 1)[1] for block in blocks for _ in range(rng.randrange(3))]
    rng.shuffle(copies)
    head = "".join(lines[: starts[-1]]) if starts else text
    tail = "".join(lines[starts[-1] :]) if starts else ""
    return head + "".join(f"r{n}:\n{body}" for n, body in enumerate(copies)) + tail


def test_mutated_files_with_blocks_written_alike_read_as_load_yaml_reads_them(
    tmp_path: Path,
) -> None:
    """Bundled files with their blocks written again (copies), then garbled at random places,
    often inside a block that others repeat: what a zone's loading reads is what load_yaml
    reads, or both refuse it. Most of them take the copies (a bounded, seeded number)."""
    rng = random.Random(7871)
    texts = [with_repeats(path.read_text(), rng) for path in FILES]
    path = tmp_path / "mutated.yaml"
    with_copies = 0
    for round_ in range(300):
        text = rng.choice(texts)
        at = rng.randrange(len(text) + 1)
        kind = round_ % 5
        if kind == 1:  # a character inserted
            text = text[:at] + rng.choice(":-&*!{}[],'\"#|> \n\t?") + text[at:]
        elif kind == 2:  # cut short
            text = text[:at]
        elif kind == 3:  # a stretch left out
            text = text[:at] + text[rng.randrange(at, len(text) + 1) :]
        elif kind == 4:  # a stretch written twice
            text = text[:at] + text[at:][: rng.randrange(300)] + text[at:]
        path.write_text(text)
        read, copied = entries_with_copies(path)
        assert read == load_outcome(path), text
        with_copies += copied > 0
    assert with_copies > 100


def test_keys_of_blocks_written_alike_read_as_yaml_reads_them(tmp_path: Path) -> None:
    """A copy's key is taken from the text when it is a plain word the safe loader reads as a
    string; a word it reads as something else (a boolean, null, a number, a date) is parsed."""
    body = "  type: TXT\n  value: x\n"
    keys = ["www", "yes", "No", "null", "1.5", "0x1F", "e.x-1_", "y", "n1.5"]
    text = "first:\n" + body + "".join(f"{key}:\n{body}" for key in keys) + "last: 1\n"
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    entries = MappingEntries(path)
    read = entries_outcome(path, entries)
    assert read == load_outcome(path)
    assert entries.copied == len(keys)
    blocks = yamlsrc.RepeatedBlocks.find(text)
    assert blocks is not None
    taken = {key for key in blocks.keys.values()}
    assert taken == {"www", "e.x-1_", "y", "n1.5"}, taken


def test_a_zone_of_names_written_alike_is_parsed_once(tmp_path: Path) -> None:
    record = "  type: A\n  values:\n  - 192.0.2.1\n  octodns:\n    geodns:\n      nearest: true\n"
    text = "".join(f"n{i}:\n{record}" for i in range(200)) + "'':\n  type: TXT\n  value: x\n"
    path = tmp_path / "zone.yaml"
    path.write_text(text)
    entries = MappingEntries(path)
    read = entries_outcome(path, entries)
    assert entries.copied == 199
    assert read == load_outcome(path)


def test_a_plain_key_is_taken_from_the_text_only_when_yaml_reads_it_as_that_string() -> None:
    """_plain_key's own look at the safe loader's implicit resolvers gives what the resolver
    itself gives, for words YAML reads otherwise and for random ones (a bounded, seeded set)."""
    import string

    resolver = yaml.resolver.Resolver()
    rng = random.Random(4592)
    alphabet = string.ascii_letters + string.digits + "_.-:~=<+"
    words = ["yes", "No", "null", "~", "1.5", "0x1F", "1_000", ".inf", "-.nan", "2001-01-01"]
    words += ["on", "Off", "true", "n17", "n17.edge", "=", "<<", "0o17", "1e3", "190:20:30"]
    words += ["".join(rng.choices(alphabet, k=rng.randrange(1, 8))) for _ in range(20_000)]
    for word in words:
        text = f"{word}:"
        match = yamlsrc._PLAIN_KEY.fullmatch(text)
        reads = match and resolver.resolve(yaml.ScalarNode, match.group(1), (True, False))
        expected = match.group(1) if match and reads == "tag:yaml.org,2002:str" else None
        assert yamlsrc._plain_key(text, 0, len(text)) == expected, word

"""The project's habits, checked with the suite: lint, format, types, and one install command.

`.ci/run` runs the README's second command, which runs this suite, so CI fails when `ruff check`,
`ruff format --check` or mypy (zero errors on geodns/) would, and when the README's command and
.ci/run's drift apart.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_is_clean() -> None:
    result = _run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _run(str(BIN / "ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_error_in_geodns() -> None:
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```sh\n(.+?)\n```", text)[:2]


def test_ci_runs_the_readmes_second_command() -> None:
    second = _readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert second in ci.splitlines(), f".ci/run does not run the README's command:\n{second}"


def test_the_readme_commands_need_no_sudo_as_root() -> None:
    for command in _readme_commands():
        assert not re.search(r"(^|&& |; )sudo ", command), command


IMPORT_NAMES = {"pyyaml": "yaml", "prometheus-client": "prometheus_client", "dnspython": "dns"}


def test_declared_dependencies_are_the_ones_geodns_imports() -> None:
    """pyproject's runtime dependencies and geodns/'s third-party imports are the same set."""
    import ast
    import sys as _sys
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {
        IMPORT_NAMES.get(name, name.replace("-", "_"))
        for name in (
            re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower()
            for spec in project["dependencies"]
        )
    }
    imported: set[str] = set()
    for path in (ROOT / "geodns").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {
        name for name in imported if name not in _sys.stdlib_module_names and name != "geodns"
    }
    assert third_party == declared, f"imported {sorted(third_party)}, declared {sorted(declared)}"

"""The package tree is the architecture: lower layers never import higher ones.

Layers, lowest first (docs/architecture.md draws them): a module may import from its own package
and from the packages before it, never from one after it. The test reads every import statement
of geodns/ (also those inside functions), so a shortcut through a lazy import fails it too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "geodns"
LAYERS = (
    "common",
    "dns",
    "dnssec",
    "geo",
    "config",
    "health",
    "fleet",
    "observe",
    "serving",
    "daemon",
    "control",
)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "geodns" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "geodns":
                found.extend((node.lineno, f"geodns.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def test_every_module_lives_in_a_layer() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert loose == [], f"modules outside the layer packages: {loose}"
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages - {"data"} == set(LAYERS), packages


def test_no_layer_imports_a_higher_one() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _layer("geodns." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if own is None:
            continue
        for line, module in _imports(path):
            other = _layer(module)
            if other is not None and other > own:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module}")
    assert violations == [], "lower layers import higher ones:\n" + "\n".join(violations)


def test_what_a_server_loads_before_its_first_answer_imports_no_heavy_library() -> None:
    """The modules `geodns serve` imports before it answers leave numpy (the place index and
    answer maps, built after binding or in the background), aiohttp and prometheus-client
    (health probes, the admin API and its metrics, imported after binding) and the DNSSEC and
    fleet libraries to when they are first used: each was tens of milliseconds of every
    start, and a worker never uses the admin API."""
    import subprocess
    import sys

    heavy = (
        "numpy",
        "aiohttp",
        "prometheus_client",
        "cryptography",
        "geodns.fleet.client",
        "maxminddb",  # where a database is opened: a restart onto a cached index needs none
    )
    probe = (
        "import sys, geodns.control.cli, geodns.daemon.app, geodns.config.loader, "
        "geodns.serving.snapshot; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout

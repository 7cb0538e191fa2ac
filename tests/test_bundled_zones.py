"""The bundled zones are valid octoDNS YamlProvider zones and valid geodns zones.

octoDNS itself (its YamlProvider, with its default checks such as sorted keys) must accept every
file in zones/, so operators can manage them with octoDNS; and `geodns check` (the CLI's main(),
in this process: tests/test_cli_check.py and test_wheel.py run the real command) must accept
them. The complete example in docs/zones.md is checked the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from octodns.provider.yaml import YamlProvider
from octodns.zone import Zone
from test_cli_check import check_in_process

ROOT = Path(__file__).resolve().parents[1]
ZONE_FILES = sorted((ROOT / "zones").glob("*.yaml"))


def populate_with_octodns(directory: Path, zone_name: str) -> Zone:
    provider = YamlProvider(
        "config", str(directory), supports_root_ns=True, escaped_semicolons=True
    )
    zone = Zone(zone_name, [])
    provider.populate(zone)
    return zone


@pytest.mark.parametrize("path", ZONE_FILES, ids=lambda p: p.name)
def test_octodns_accepts_bundled_zone(path: Path) -> None:
    zone = populate_with_octodns(path.parent, path.stem + ".")
    names = {record.name for record in zone.records}
    assert "www" in names and "" in names


def test_bundled_zone_has_the_story() -> None:
    zone = populate_with_octodns(ROOT / "zones", "cdn.example.com.")
    dynamic = {r.name for r in zone.records if getattr(r, "dynamic", None)}
    assert "upload" in dynamic
    geodns = {r.name for r in zone.records if "geodns" in (r.octodns or {})}
    assert {"www", "img", "api", "account"} <= geodns


def test_geodns_check_accepts_bundled_config_and_zones() -> None:
    result = check_in_process()
    assert result.returncode == 0, result.stderr
    assert "cdn.example.com. OK" in result.stdout


@pytest.mark.parametrize("config", ["docs/failover-drill.yaml", "systemd/geodns.yaml"])
def test_documented_configs_load(config: str) -> None:
    from geodns.config.server import load_config

    loaded = load_config(ROOT / config)
    assert loaded.sites or config.startswith("systemd")


def test_docs_zone_example_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "zones.md").read_text()
    block = text.split("## A complete example", 1)[1]
    yaml_text = re.search(r"```yaml\n(.*?)```", block, re.S).group(1)
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "example.com.yaml").write_text(yaml_text)
    config = tmp_path / "geodns.yaml"
    config.write_text("zones_dir: zones\n")
    result = check_in_process("--config", str(config))
    assert result.returncode == 0, result.stderr
    populate_with_octodns(zones, "example.com.")

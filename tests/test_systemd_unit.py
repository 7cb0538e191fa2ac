"""systemd/geodns.service passes `systemd-analyze verify`, keeps its hardening, and the example
production config (systemd/geodns.yaml) loads and serves the bundled zone.

systemd-analyze comes with Debian's `systemd` package, which .ci/run installs; the systemd tests
are skipped only where it is missing. `verify` insists that ExecStart's program exists, so the
unit is checked as a copy whose /opt/geodns/bin/geodns points at a stand-in script.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from geodns.config.loader import load_geo
from geodns.config.server import load_config
from geodns.serving.snapshot import build_snapshot

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "geodns.service"
EXAMPLE = ROOT / "systemd" / "geodns.yaml"
INSTALLED = "/opt/geodns/bin/geodns"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (.ci/run installs Debian's systemd package)",
)


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> every value assigned in the unit (repeated keys accumulate, as in systemd)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with its program paths pointing at an executable stand-in in tmp_path."""
    program = tmp_path / "geodns"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    copy = tmp_path / "geodns.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED, str(program)))
    return copy


@needs_systemd_analyze
def test_systemd_analyze_verify(unit_copy: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "geodns.service" not in output, output  # no warnings about our unit either


@needs_systemd_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path, unit_copy: Path) -> None:
    """The check above is not vacuous: a misspelt directive makes verify complain."""
    broken = tmp_path / "broken" / "geodns.service"
    broken.parent.mkdir()
    broken.write_text(unit_copy.read_text().replace("ProtectHome=", "ProtectHomme="))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "ProtectHomme" in result.stdout + result.stderr


@needs_systemd_analyze
def test_security_exposure_is_low(unit_copy: Path) -> None:
    """`systemd-analyze security` rates the unit at most 2.0 ("OK") out of 10."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot rate units offline: {result.stderr.strip()}")
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_runs_installed_geodns_with_the_hardening() -> None:
    settings = unit_settings(UNIT.read_text())
    single = {key: values[-1] for key, values in settings.items()}
    assert single["Type"] == "notify"
    assert single["ExecStart"] == f"{INSTALLED} serve --config /etc/geodns/geodns.yaml"
    assert "/bin/kill -HUP $MAINPID" in settings["ExecReload"]
    assert single["User"] == "geodns"
    assert single["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert single["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert single["WatchdogSec"] == "30s"
    assert single["Restart"] == "on-failure"
    for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory", "CacheDirectory"):
        assert single[key] == "geodns"
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert single[key] == "yes", key
    assert single["ProtectSystem"] == "strict"
    assert single["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert single["SystemCallArchitectures"] == "native"
    assert settings["SystemCallFilter"][0] == "@system-service"
    assert single["UMask"] == "0027"


def test_example_config_matches_the_unit() -> None:
    """The paths the config names are the ones the unit makes writable or creates."""
    config = load_config(EXAMPLE)
    assert config.port == 53
    assert config.zones_dir == Path("/etc/geodns/zones")
    assert config.state_file == Path("/var/lib/geodns/state.json")
    assert config.admin.socket == "/run/geodns/admin.sock"
    assert config.log_format == "json"
    assert config.query_log.enabled is False
    assert "0.0.0.0" not in config.listen and "::" not in config.listen


def test_example_config_serves_the_bundled_zone(tmp_path: Path) -> None:
    """With zones_dir pointed at the repository's zones/, the example config builds a snapshot:
    its sites are the ones the bundled zone's dynamic records use."""
    text = EXAMPLE.read_text().replace("/etc/geodns/zones", str(ROOT / "zones"))
    config_path = tmp_path / "geodns.yaml"
    config_path.write_text(text)
    config = load_config(config_path)
    geo = load_geo(config, build=True)
    try:
        snapshot = build_snapshot(config, geo)
    finally:
        geo.close()
    assert "cdn.example.com." in snapshot.zones
    assert {"jakarta", "dc-asia", "dc-americas"} <= set(snapshot.sites)
    assert all(site.checks for site in config.sites.values())
    # nothing to warn about either: the SOA's primary is one of the zone's nameservers
    checked = subprocess.run(
        [sys.executable, "-m", "geodns", "check", "--strict", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

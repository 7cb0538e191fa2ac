"""geodns installed from a wheel (not a checkout) runs the bundled example.

The bundled zones live in the repository's zones/ and the wheel carries them as the package
geodns.zones (pyproject maps the directory), so `pip install .` then `geodns serve` finds them:
this builds the wheel with pip, unpacks it as an installation would, and checks the example
config and zones from there. (A fresh venv's `pip install .` and the README's dig commands were
run by hand for the change that made this work.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package() -> None:
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "geodns").rglob("__init__.py")
    }
    assert set(listed) == on_disk | {"geodns.zones"}


def test_the_wheel_carries_and_runs_the_bundled_example(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next(tmp_path.glob("geodns-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for zone in (ROOT / "zones").glob("*.yaml"):
            assert f"geodns/zones/{zone.name}" in names
        assert "geodns/data/example-config.yaml" in names
        assert "geodns/data/geodns-country.mmdb" in names
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
        site = tmp_path / "site"
        archive.extractall(site)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GEODNS_CONFIG")}
    env["PYTHONPATH"] = str(site)  # the unpacked wheel first; its dependencies from this venv
    result = subprocess.run(
        [sys.executable, "-m", "geodns", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{site / 'geodns' / 'zones' / 'cdn.example.com.yaml'}: zone cdn.example.com. OK" in (
        result.stdout
    )

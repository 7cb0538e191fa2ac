"""Dynamic A/AAAA records (placeholder until the geo engine lands)."""

from __future__ import annotations

from typing import Any

from geodns.sites import Site


class DynamicCompilerForSites:
    def __init__(self, sites: dict[str, Site]) -> None:
        self.sites = sites

    def compile(self, record: Any, owner: str, rtype: int, ttl: int, report: Any) -> Any:
        return None

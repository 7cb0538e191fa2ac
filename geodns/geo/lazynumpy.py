"""numpy, imported when first used rather than when the geo modules are.

The place index, the answer maps and the rankings are built with numpy, but a server answers
its first queries before it needs any of them (it builds its answer maps after binding, and a
fresh database's index in the background), and importing numpy took 60-80 ms of a start of
0.6-0.9 s. The geo modules therefore take `np` from here at run time (and from numpy itself for
the type checker): `np.zeros` imports numpy on its first use and is numpy's from then on. The
query path uses no numpy attribute, so the indirection costs nothing per query.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    """numpy's attribute `name`, numpy being imported the first time one is asked for."""
    return getattr(importlib.import_module("numpy"), name)

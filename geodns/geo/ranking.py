"""Sites ranked by distance for every place of a database at once.

`DynamicRecord.ranked` ranks the candidates for one place in Python; this module does the same
for all places of a place index with numpy (a City database has ~140,000 places: 0.1 s for 6
sites, about a second for 100). Both order by the haversine distance rounded to
DISTANCE_DECIMALS kilometres, then by name, so a difference in the last bit between numpy's
and libm's trigonometry cannot reorder two sites: only sites within a millionth of a metre of
each other tie, and ties go by name in both. tests/test_answer_maps.py holds the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
else:
    from geodns.geo import lazynumpy as np  # numpy once first used: see there

from geodns.geo.places import DISTANCE_DECIMALS, EARTH_RADIUS_KM

CHUNK = 32_768  # places per numpy step (bounds the temporary distance matrix)


def distance_matrix(
    latitude: np.ndarray, longitude: np.ndarray, sites: Sequence[tuple[float, float]]
) -> np.ndarray:
    """Haversine kilometres from every place (rows) to every site (columns), rounded."""
    phi1 = np.radians(np.asarray(latitude, dtype=np.float64))[:, None]
    lam1 = np.asarray(longitude, dtype=np.float64)[:, None]
    site_lat = np.array([s[0] for s in sites], dtype=np.float64)[None, :]
    site_lon = np.array([s[1] for s in sites], dtype=np.float64)[None, :]
    phi2 = np.radians(site_lat)
    a = (
        np.sin((phi2 - phi1) / 2) ** 2
        + np.cos(phi1) * np.cos(phi2) * np.sin(np.radians(site_lon - lam1) / 2) ** 2
    )
    distances = 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(a)))
    return np.round(distances, DISTANCE_DECIMALS)


def rank(
    latitude: np.ndarray,
    longitude: np.ndarray,
    sites: Sequence[tuple[float, float]],
    names: Sequence[str],
    depth: int,
) -> np.ndarray:
    """The `depth` nearest sites of every place, nearest first: an int16 matrix of site
    indices (places x depth). Equal distances are ordered by site name."""
    depth = min(depth, len(sites))
    by_name = np.argsort(np.array(names, dtype=object), kind="stable")
    ordered_sites = [sites[i] for i in by_name]
    out = np.empty((len(latitude), depth), dtype=np.int16)
    for begin in range(0, len(latitude), CHUNK):
        end = begin + CHUNK
        distances = distance_matrix(latitude[begin:end], longitude[begin:end], ordered_sites)
        # a stable sort of columns kept in name order: equal distances stay in name order
        chosen = np.argsort(distances, axis=1, kind="stable")[:, :depth]
        out[begin:end] = by_name[chosen]
    return out

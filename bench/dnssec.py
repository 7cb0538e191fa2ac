"""The signed workload: what DNSSEC costs geodns per warm geo query, against Knot DNS with
mod-geoip signing the same answers, and how long signing makes a snapshot build.

- geodns with its zone signed (ECDSA P-256): the warm workload's subnets asked without DO and
  with DO=1, saturated, server CPU per answered query for both (issue 18: at most 1.2x);
- Knot DNS (Debian's `knot` + `knot-module-geoip`, `dnssec-signing: on`) with a per-country
  answer map (bench/knot.py) on the subnets of the workload whose geodns answer is their
  country's, so the two servers give the same answers (checked: both are asked for every one);
- the build of a snapshot with signing, in this process: the bundled example (its config and
  database) and a zone of 10,000 nearest-PoP names (the benchmark's database and PoPs),
  with the time signing alone took and the number of signatures.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import maxminddb

from .answers import ask_geo
from .common import GEO_NAME, ZONE, log
from .dnswire import QTYPES, query_wire, write_binary
from .popsets import PopSet
from .servers import Setup, write_geodns

CHECKED_REPLIES = 200  # DO=1 replies of geodns validated with dnspython


def countries(db: Path, subnets: list[int]) -> dict[int, str]:
    """Each subnet's country code in the database ('' when it has none)."""
    found = {}
    with maxminddb.open_database(str(db)) as reader:
        for subnet in subnets:
            record = reader.get(f"{subnet >> 24}.{subnet >> 16 & 255}.{subnet >> 8 & 255}.1")
            country = ""
            if isinstance(record, dict):
                country = (record.get("country") or record.get("registered_country") or {}).get(
                    "iso_code", ""
                )
            found[subnet] = country
    return found


def per_country_answers(
    replies: dict[int, Any], country_of: dict[int, str]
) -> tuple[dict[str, str], list[int]]:
    """(country -> the single address geodns answers most of its subnets with, the subnets
    whose answer is their country's)."""
    votes: dict[str, Counter[str]] = {}
    for subnet, reply in replies.items():
        country = country_of.get(subnet, "")
        if country and isinstance(reply.answer, tuple) and len(reply.answer) == 1:
            votes.setdefault(country, Counter())[reply.answer[0]] += 1
    answers = {country: counter.most_common(1)[0][0] for country, counter in votes.items()}
    kept = [
        s
        for s, r in replies.items()
        if country_of.get(s) in answers and r.answer == (answers[country_of[s]],)
    ]
    return answers, kept


def validate_sample(port: int, subnets: list[int]) -> dict[str, int]:
    """Ask geodns with DO=1 and validate each reply's A RRset under the zone's DNSKEY RRset."""
    import dns.dnssec
    import dns.message
    import dns.name
    import dns.query
    import dns.rdatatype

    origin = dns.name.from_text(ZONE)
    keys_reply = dns.query.udp(
        dns.message.make_query(origin, "DNSKEY", want_dnssec=True),
        "127.0.0.1",
        port=port,
        timeout=2,
    )
    keys = {origin: keys_reply.find_rrset(keys_reply.answer, origin, 1, dns.rdatatype.DNSKEY)}
    valid = failed = 0
    for subnet in subnets:
        reply = dns.message.from_wire(
            dns.query.udp(
                dns.message.from_wire(query_wire(GEO_NAME, QTYPES["A"], (subnet, 24), do=True)),
                "127.0.0.1",
                port=port,
                timeout=2,
            ).to_wire()
        )
        rrset = next(r for r in reply.answer if r.rdtype == dns.rdatatype.A)
        signature = next(r for r in reply.answer if r.rdtype == dns.rdatatype.RRSIG)
        try:
            dns.dnssec.validate(rrset, signature, keys)
            valid += 1
        except dns.dnssec.ValidationFailure:
            failed += 1
    return {"valid": valid, "failed": failed}


def dnssec_run(bench: Any, db: Any, loads: Any, pops: PopSet, knot: bool) -> dict[str, Any]:
    """geodns unsigned vs signed warm queries, then Knot on the same signed workload."""
    from .scenarios import log_run, start

    setup = Setup(db.maxmind_path, pops, dnssec=True)  # Knot reads MaxMind's schema only
    result: dict[str, Any] = {"database": db.name, "pops": pops.label}
    server = bench.server("geodns", "geodns-dnssec", setup)
    result["geodns_start"] = start(bench, server)
    try:
        replies = ask_geo(server.port, loads.warm)
        answers, kept = per_country_answers(replies, countries(db.maxmind_path, loads.warm))
        result["subnets"] = {"warm": len(loads.warm), "kept": len(kept), "countries": len(answers)}
        files = {}
        for label, do in (("plain", False), ("signed", True)):
            path = bench.paths.out / f"queries-{db.name}-dnssec-{label}.bin"
            write_binary(path, [query_wire(GEO_NAME, QTYPES["A"], (s, 24), do=do) for s in kept])
            files[label] = path
        runs = {}
        for label in ("plain", "signed"):
            runs[label] = bench.load.saturated(server, files[label], warmup=True)
            log_run("geodns-dnssec", label, runs[label], None)
        result["geodns"] = runs
        result["geodns_signed_replies"] = ask_geo(server.port, kept, do=True)
        result["validated"] = validate_sample(server.port, kept[:CHECKED_REPLIES])
    finally:
        server.stop()
    plain = runs["plain"]["server_cpu_us_per_query"]
    signed = runs["signed"]["server_cpu_us_per_query"]
    result["signed_over_plain"] = round(signed / plain, 3) if plain else None
    if knot and shutil.which("knotd"):
        knot_setup = dataclasses.replace(setup, knot_answers=tuple(sorted(answers.items())))
        knot_server = bench.server("knot", "knot-dnssec", knot_setup)
        result["knot_start"] = start(bench, knot_server)
        try:
            knot_runs = {}
            for label in ("signed", "plain"):
                knot_runs[label] = bench.load.saturated(knot_server, files[label], warmup=True)
                log_run("knot-dnssec", label, knot_runs[label], None)
            result["knot"] = knot_runs
            knot_replies = ask_geo(knot_server.port, kept, do=True)
        finally:
            knot_server.stop()
        ours = result.pop("geodns_signed_replies")
        same = sum(1 for s in kept if ours[s].answer == knot_replies[s].answer)
        result["same_answers"] = {"same": same, "of": len(kept)}
    else:
        result.pop("geodns_signed_replies")
    return result


def build_times(db_path: Path, pops: PopSet, names: int, directory: Path) -> dict[str, Any]:
    """Snapshot builds with and without signing, in this process: the bundled example, and a
    zone of `names` nearest-PoP names on the benchmark's database."""
    import yaml

    from geodns.config.loader import load_geo
    from geodns.config.server import load_config
    from geodns.control.cli import EXAMPLE_CONFIG
    from geodns.serving.signing import keep_all_keys
    from geodns.serving.snapshot import build_snapshot

    out: dict[str, Any] = {}
    example = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    example_dir = directory / "example"
    shutil.rmtree(example_dir, ignore_errors=True)
    example_dir.mkdir(parents=True)
    example["zones"] = {
        ZONE: {"dnssec": {"enabled": True, "key_directory": str(example_dir / "keys")}}
    }
    (example_dir / "geodns.yaml").write_text(yaml.safe_dump(example))
    cases = [("example zone", example_dir / "geodns.yaml")]
    big_dir = directory / "big"
    shutil.rmtree(big_dir, ignore_errors=True)
    setup = Setup(db_path, pops, big_zone_names=names, dnssec=True)
    config_path = write_geodns(big_dir, 0, setup)
    data = yaml.safe_load(config_path.read_text())
    from .common import BIG_ZONE

    data["zones"][BIG_ZONE] = data["zones"][ZONE]
    config_path.write_text(yaml.safe_dump(data))
    cases.append((f"{names:,} dynamic names", config_path))
    for label, path in cases:
        config = load_config(path)
        geo = load_geo(config, build=True)
        now = time.time()
        for _ in keep_all_keys(config, {}, now):
            pass
        began = time.perf_counter()
        unsigned = build_snapshot(dataclasses.replace(config, dnssec={}), geo)
        plain_s = time.perf_counter() - began
        began = time.perf_counter()
        snapshot = build_snapshot(config, geo, now=now)
        signed_s = time.perf_counter() - began
        zones = snapshot.signed.values()
        out[label] = {
            "build_unsigned_s": round(plain_s, 3),
            "build_signed_s": round(signed_s, 3),
            "signing_s": round(sum(z.seconds for z in zones), 3),
            "signatures": sum(z.made for z in zones),
            "dynamic_names": sum(1 for z in zones for _ in z.values),
        }
        log(f"[dnssec build] {label}: {out[label]}")
        del unsigned, snapshot
        geo.close()
    return out


def dnssec_lines(section: dict[str, Any]) -> list[str]:
    """The DNSSEC part of the printed report."""
    lines = ["", "DNSSEC (warm geo queries, server CPU per answered query):"]
    run = section.get("run")
    if run:
        g = run["geodns"]
        lines.append(
            f"  geodns: {g['plain']['server_cpu_us_per_query']} us unsigned, "
            f"{g['signed']['server_cpu_us_per_query']} us signed (DO=1): "
            f"{run['signed_over_plain']}x; {run['subnets']['kept']:,} subnets of "
            f"{run['subnets']['countries']} countries; validated {run['validated']}"
        )
        if "knot" in run:
            k = run["knot"]
            lines.append(
                f"  Knot DNS + mod-geoip: {k['signed']['server_cpu_us_per_query']} us signed, "
                f"{k['plain']['server_cpu_us_per_query']} us unsigned; same answers "
                f"{run['same_answers']['same']:,} of {run['same_answers']['of']:,}"
            )
    for label, build in section.get("build", {}).items():
        lines.append(
            f"  snapshot build, {label}: {build['build_signed_s']} s signed "
            f"({build['signing_s']} s signing, {build['signatures']:,} signatures) vs "
            f"{build['build_unsigned_s']} s unsigned"
        )
    return lines

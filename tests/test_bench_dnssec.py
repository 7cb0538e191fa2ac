"""The benchmark's DNSSEC parts: DO=1 queries, the per-country answer map Knot DNS is given,
and the Knot DNS configuration itself, run for real (knotd with mod-geoip and signing) on a
small database: it must answer a German subnet with the German answer, signed, validating
under its own DNSKEY RRset, or the benchmark's figures compare nothing."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from pathlib import Path

import dns.dnssec
import dns.edns
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest
from mmdb_factory import country_record, write_country_db
from server_process import free_port

from bench import popsets
from bench.dnssec import per_country_answers
from bench.dnswire import QTYPES, GeoReply, query_wire
from bench.knot import geo_config, write_knot
from bench.servers import Setup


def test_do_queries_carry_the_do_bit() -> None:
    message = dns.message.from_wire(
        query_wire("www.cdn.example.com", QTYPES["A"], (0x55000000, 24), do=True)
    )
    assert message.ednsflags & dns.flags.DO
    plain = dns.message.from_wire(query_wire("www.cdn.example.com", QTYPES["A"], (0x55000000, 24)))
    assert not plain.ednsflags & dns.flags.DO


def test_per_country_answers_keep_only_subnets_that_agree() -> None:
    replies = {
        1: GeoReply(("192.0.2.1",), 16),
        2: GeoReply(("192.0.2.1",), 16),
        3: GeoReply(("192.0.2.9",), 16),  # a minority answer in DE: left out
        4: GeoReply(("192.0.2.4",), 16),
        5: GeoReply(("192.0.2.5", "192.0.2.6"), 16),  # two answers: no single one
    }
    countries = {1: "DE", 2: "DE", 3: "DE", 4: "ID", 5: "BR"}
    answers, kept = per_country_answers(replies, countries)
    assert answers == {"DE": "192.0.2.1", "ID": "192.0.2.4"}
    assert sorted(kept) == [1, 2, 4]
    text = geo_config(tuple(sorted(answers.items())), "192.0.2.100")
    assert '- geo: "DE"\n    A: 192.0.2.1' in text and '- geo: "*"\n    A: 192.0.2.100' in text


@pytest.mark.skipif(shutil.which("knotd") is None, reason="knot is not installed")
def test_knot_serves_the_signed_per_country_answers(tmp_path: Path) -> None:
    database = tmp_path / "country.mmdb"
    write_country_db(
        database,
        [("85.0.0.0/16", country_record("DE", "EU")), ("36.64.0.0/16", country_record("ID", "AS"))],
    )
    setup = Setup(
        database, popsets.six_pops(), knot_answers=(("DE", "198.51.100.21"), ("ID", "203.0.113.11"))
    )
    port = free_port()
    config = write_knot(tmp_path, port, dataclasses.replace(setup))
    check = subprocess.run(
        ["knotc", "-c", str(config), "conf-check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with (tmp_path / "knot.log").open("wb") as log:
        knot = subprocess.Popen(["knotd", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        origin = dns.name.from_text("cdn.example.com.")
        keys = None
        deadline = time.monotonic() + 20
        while keys is None:
            assert time.monotonic() < deadline, (tmp_path / "knot.log").read_text()
            assert knot.poll() is None, (tmp_path / "knot.log").read_text()
            try:
                reply = dns.query.udp(
                    dns.message.make_query(origin, "DNSKEY", want_dnssec=True),
                    "127.0.0.1",
                    port=port,
                    timeout=0.5,
                )
                keys = reply.find_rrset(reply.answer, origin, 1, dns.rdatatype.DNSKEY)
            except Exception:
                time.sleep(0.1)
        for subnet, address in (
            ("85.0.3.0/24", "198.51.100.21"),
            ("36.64.9.0/24", "203.0.113.11"),
            ("8.8.8.0/24", "198.51.100.31"),
        ):
            query = dns.message.make_query(
                "www.cdn.example.com",
                "A",
                want_dnssec=True,
                use_edns=0,
                options=[dns.edns.ECSOption.from_text(subnet)],
            )
            reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
            rrset = next(r for r in reply.answer if r.rdtype == dns.rdatatype.A)
            assert [r.address for r in rrset] == [address], subnet
            signature = next(r for r in reply.answer if r.rdtype == dns.rdatatype.RRSIG)
            dns.dnssec.validate(rrset, signature, {origin: keys})
    finally:
        knot.terminate()
        try:
            knot.wait(timeout=10)
        except subprocess.TimeoutExpired:
            knot.kill()

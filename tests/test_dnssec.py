"""DNSSEC in-process: every answer geodns gives a DO=1 query validates (dnspython's
validator, under the zone's DNSKEY RRset), negative answers carry their NSEC proofs, every
value set a dynamic record can answer was signed ahead, replies without DO are byte for byte
those of an unsigned server, truncation works at 1232 bytes, and a ZSK rollover driven by an
injected clock keeps every answer valid for a resolver holding any DNSKEY RRset it may have
cached. The real validating resolvers are in tests/test_dnssec_resolvers.py.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import time
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from dnssec_support import (
    EXAMPLE,
    EXTRA,
    FRANKFURT,
    JAKARTA,
    SAO_PAULO,
    ask,
    ask_message,
    covers,
    dnskeys,
    geo_for,
    load,
    nsecs,
    proves_nodata,
    query_bytes,
    rcode,
    signed_snapshot,
    validate,
    write_config,
)

from geodns.common.errors import ConfigError
from geodns.control.cli import main as cli_main
from geodns.dnssec.keys import KSK, ZSK, KeyFileError, KeyStore
from geodns.dnssec.rollover import key_set, publication_interval
from geodns.geo.dynamic import evaluate
from geodns.geo.places import Place, Placement, load_country_points
from geodns.observe.dnssec_metrics import DnssecCollector
from geodns.serving.answer_path import ServerState
from geodns.serving.signing import keep_all_keys, sign_zones, signing_due
from geodns.serving.snapshot import build_snapshot

EXAMPLE_NAMES = [
    "",
    "www",
    "img",
    "api",
    "upload",
    "account",
    "assets",
    "mx1",
    "ns1",
    "ns2",
    "_imap._tcp",
]
TYPES = ["A", "AAAA", "MX", "TXT", "CAA", "SRV", "NS", "SOA", "CNAME", "ANY", "NSEC"]


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dnssec")
    config = load(write_config(root))
    snapshot = signed_snapshot(config)
    state = ServerState(snapshot)
    keys = {dns.name.from_text(z): dnskeys(state, z) for z in (EXAMPLE, EXTRA)}
    return root, config, state, keys


def _name(label: str, zone: str = EXAMPLE) -> str:
    return f"{label}.{zone}" if label else zone


def test_every_answer_of_the_example_zone_validates(signed) -> None:
    _, _, state, keys = signed
    checked = 0
    for label, rdtype, ecs in itertools.product(EXAMPLE_NAMES, TYPES, [None, JAKARTA, FRANKFURT]):
        reply = ask_message(state, _name(label), rdtype, ecs=ecs)
        assert rcode(reply) == "NOERROR", (label, rdtype)
        validate(reply, keys)
        if not reply.answer:  # NODATA: the name's NSEC shows the type is not there
            qname = dns.name.from_text(_name(label))
            assert proves_nodata(reply, qname, dns.rdatatype.from_text(rdtype)), (label, rdtype)
        checked += 1
    assert checked == len(EXAMPLE_NAMES) * len(TYPES) * 3


def test_jakarta_and_frankfurt_get_different_signed_rrsets(signed) -> None:
    _, _, state, keys = signed
    answers = {}
    for who in (JAKARTA, FRANKFURT, SAO_PAULO):
        reply = ask_message(state, "www." + EXAMPLE, "A", ecs=who)
        validate(reply, keys)
        answers[who] = {r.address for rrset in reply.answer if rrset.rdtype == 1 for r in rrset}
        assert any(r.rdtype == dns.rdatatype.RRSIG for r in reply.answer)
    assert answers[JAKARTA] == {"203.0.113.11"}
    assert answers[FRANKFURT] == {"198.51.100.21"}
    assert len({frozenset(a) for a in answers.values()}) == 3


def test_nxdomain_proves_the_name_and_the_wildcard_absent(signed) -> None:
    _, _, state, keys = signed
    for name in ("nope." + EXAMPLE, "a.b.c." + EXAMPLE, "zzz." + EXTRA, "x.deep.ent." + EXTRA):
        reply = ask_message(state, name, "A")
        assert rcode(reply) == "NXDOMAIN"
        validate(reply, keys)
        qname = dns.name.from_text(name)
        assert any(covers(n, qname) for n in nsecs(reply)), name
        zone = dns.name.from_text(EXAMPLE if name.endswith(EXAMPLE) else EXTRA)
        closest = qname.parent()
        while closest != zone and not any(n.name == closest for n in nsecs(reply)):
            closest = closest.parent()
        # the source of synthesis at the closest encloser does not exist either
        wildcard = dns.name.from_text("*", closest if closest.is_subdomain(zone) else zone)
        assert any(covers(n, wildcard) for n in nsecs(reply)), name


def test_nodata_and_empty_non_terminals_validate(signed) -> None:
    _, _, state, keys = signed
    for name, rdtype in (
        ("mx1." + EXAMPLE, "AAAA"),
        ("ent." + EXTRA, "A"),
        ("ns1." + EXTRA, "TXT"),
    ):
        reply = ask_message(state, name, rdtype)
        assert rcode(reply) == "NOERROR" and not reply.answer
        validate(reply, keys)
        assert proves_nodata(reply, dns.name.from_text(name), dns.rdatatype.from_text(rdtype))


def test_wildcards_delegations_and_dname(signed) -> None:
    _, _, state, keys = signed
    # a static wildcard: the RRSIG's labels field says it was synthesised; the NSEC proves
    # the query name itself does not exist (RFC 4035 section 3.1.3.3)
    reply = ask_message(state, "anything.wild." + EXTRA, "TXT")
    validate(reply, keys)
    assert reply.answer[0][0].strings == (b"synthesised",)
    assert any(covers(n, dns.name.from_text("anything.wild." + EXTRA)) for n in nsecs(reply))
    # a wildcard that is dynamic, and a wildcard NODATA
    for who, address in ((JAKARTA, "192.0.2.1"), (FRANKFURT, "192.0.2.4")):
        reply = ask_message(state, "host.dyn." + EXTRA, "A", ecs=who)
        validate(reply, keys)
        assert [r.address for r in reply.answer[0]] == [address]
        assert nsecs(reply)
    reply = ask_message(state, "host.dyn." + EXTRA, "MX")
    validate(reply, keys)
    # no such name (covered), and the wildcard has no MX (its own NSEC): here one record
    assert any(covers(n, dns.name.from_text("host.dyn." + EXTRA)) for n in nsecs(reply))
    assert proves_nodata(reply, dns.name.from_text("*.dyn." + EXTRA), dns.rdatatype.MX)
    # a delegation with DS: the DS RRset, signed; without: an NSEC without the DS bit
    reply = ask_message(state, "www.signed-child." + EXTRA, "A")
    assert not reply.flags & dns.flags.AA
    validate(reply, keys)
    assert any(r.rdtype == dns.rdatatype.DS for r in reply.authority)
    reply = ask_message(state, "www.plain-child." + EXTRA, "A")
    validate(reply, keys)
    assert proves_nodata(reply, dns.name.from_text("plain-child." + EXTRA), dns.rdatatype.DS)
    reply = ask_message(state, "signed-child." + EXTRA, "DS")
    validate(reply, keys)
    assert reply.flags & dns.flags.AA and reply.answer
    reply = ask_message(state, "plain-child." + EXTRA, "DS")
    validate(reply, keys)
    assert not reply.answer
    # a DNAME: signed; the CNAME synthesised from it is not (RFC 6672 section 5.3.1)
    reply = ask_message(state, "x.alias." + EXTRA, "TXT")
    validate(reply, keys)
    assert any(r.rdtype == dns.rdatatype.DNAME for r in reply.answer)


def _places() -> list[Place]:
    places = [
        Place(continent, country, None, None, lat, lon, "country")
        for country, (continent, lat, lon, _) in sorted(load_country_points().items())
    ]
    return places


def test_every_decision_under_every_view_was_signed_ahead(signed) -> None:
    """evaluate() -- the reference decision -- for every country, several networks (sticky
    hashing), query IDs (weighted picks) and health views (none, each site, pairs, all down):
    each value set it answers has a signature made when the zone was signed."""
    _, config, state, _ = signed
    snapshot = state.snapshot
    places = _places()[::4] + [None]
    checked = 0
    for origin, zone in snapshot.signed.items():
        for (name, rtype), by_values in zone.values.items():
            record = snapshot.zones[origin].nodes[name][rtype].dynamic
            sites = sorted({t.site for t in record.targets() if t.site})
            views = [frozenset()] + [frozenset((s,)) for s in sites] + [frozenset(sites)]
            views += [frozenset(pair) for pair in itertools.combinations(sites, 2)]
            ordered = frozenset(record.default_order)  # unlocated users fall to the last resort
            views += [ordered] + [ordered | {s} for s in sites]
            for down in views:
                for place in places:
                    for network in (0x24560000, 0xC0000200):
                        placement = Placement(place, 4, network, 24) if place else None
                        for query_id in (0, 21845, 43690, 65535):
                            values = evaluate(record, placement, down, query_id).values
                            if values:
                                assert frozenset(values) in by_values, (name, values, down)
                                checked += 1
    assert checked > 10_000


def test_without_do_replies_are_byte_for_byte_those_of_an_unsigned_server(signed, tmp_path) -> None:
    root, config, state, _ = signed
    unsigned = ServerState(
        build_snapshot(load(write_config(tmp_path, signed=False)), geo_for(config))
    )
    for label, rdtype, ecs, edns in itertools.product(
        EXAMPLE_NAMES + ["nope"], TYPES[:-2], [None, JAKARTA], [True, False]
    ):
        if ecs and not edns:
            continue
        data = query_bytes(_name(label), rdtype, ecs=ecs, do=False, edns=edns)
        for tcp in (False, True):
            assert ask(state, data, tcp) == ask(unsigned, data, tcp), (label, rdtype, ecs, edns)


def test_dnssec_answers_from_the_reply_cache_and_templates_equal_the_full_path(signed) -> None:
    _, _, state, keys = signed
    for who in (JAKARTA, FRANKFURT, "36.86.64.0/24", "217.0.1.0/24"):
        data = query_bytes("www." + EXAMPLE, "A", ecs=who)
        first, second, third = (ask(state, data, tcp=False) for _ in range(3))
        assert first == second == third == ask(state, data, tcp=True)
        validate(dns.message.from_wire(third), keys)


def test_truncation_and_tcp_at_1232_bytes(signed) -> None:
    _, _, state, keys = signed
    data = query_bytes("big." + EXTRA, "TXT", payload=1232)
    over_udp = dns.message.from_wire(ask(state, data, tcp=False))
    assert over_udp.flags & dns.flags.TC and not over_udp.answer
    over_tcp = dns.message.from_wire(ask(state, data, tcp=True))
    assert not over_tcp.flags & dns.flags.TC and len(over_tcp.to_wire()) > 1232
    validate(over_tcp, keys)
    # without the unsigned additional section, a signed answer that fits is sent whole
    reply = dns.message.from_wire(ask(state, query_bytes(EXAMPLE, "NS", payload=512), tcp=False))
    assert not reply.flags & dns.flags.TC and reply.answer and not reply.additional[1:]
    validate(reply, keys)
    # every answer of the example zone fits 1232 bytes signed
    for label, rdtype in itertools.product(EXAMPLE_NAMES, TYPES):
        reply = ask(state, query_bytes(_name(label), rdtype, ecs=JAKARTA), tcp=False)
        assert not dns.message.from_wire(reply).flags & dns.flags.TC, (label, rdtype)


def test_ed25519_signs_too(tmp_path) -> None:
    config = load(write_config(tmp_path, {"algorithm": "ed25519"}))
    state = ServerState(signed_snapshot(config))
    keys = {dns.name.from_text(EXAMPLE): dnskeys(state, EXAMPLE)}
    assert {k.algorithm for k in keys[dns.name.from_text(EXAMPLE)]} == {15}
    for who in (JAKARTA, FRANKFURT):
        validate(ask_message(state, "img." + EXAMPLE, "A", ecs=who), keys)


def test_a_tampered_signature_does_not_validate(signed) -> None:
    _, _, state, keys = signed
    reply = ask_message(state, "www." + EXAMPLE, "A", ecs=JAKARTA)
    wire = bytearray(reply.to_wire())
    signature = next(r for r in reply.answer if r.rdtype == dns.rdatatype.RRSIG)[0].signature
    at = bytes(wire).index(signature)
    wire[at + 5] ^= 0x01
    with pytest.raises(dns.dnssec.ValidationFailure):
        validate(dns.message.from_wire(bytes(wire)), keys)


# -- keys and their schedule --------------------------------------------------------------------


def test_keys_are_private_to_their_owner_and_ds_matches_the_ksk(signed, capsys) -> None:
    root, config, state, keys = signed
    store = KeyStore(config.dnssec[EXAMPLE].key_directory, EXAMPLE)
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    pems = sorted(store.directory.glob("*.pem"))
    assert len(pems) == 2 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in pems)
    assert cli_main(["dnssec", "ds", EXAMPLE, "--config", str(root / "geodns.yaml")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    ksk = next(k for k in keys[dns.name.from_text(EXAMPLE)] if k.flags == 257)
    expected = dns.dnssec.make_ds(EXAMPLE, ksk, "SHA256").to_text()
    assert printed == [f"{EXAMPLE} IN DS {expected}"]
    assert cli_main(["dnssec", "keys", EXAMPLE, "--config", str(root / "geodns.yaml")]) == 0
    assert "KSK" in capsys.readouterr().out


def test_check_warns_about_missing_keys(tmp_path, capsys) -> None:
    path = write_config(tmp_path)
    assert cli_main(["check", "--config", str(path)]) == 0
    assert "no DNSSEC keys yet" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no active DNSSEC keys"):
        build_snapshot(load(path), geo_for(load(path)))


def test_a_key_directory_that_cannot_be_made_is_named_with_why(tmp_path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # as /etc/geodns is for the geodns user: nothing can be made in it
    store = KeyStore(blocker / "keys", EXAMPLE)
    with pytest.raises(KeyFileError, match="cannot make the DNSSEC key directory .*writable"):
        store.generate(KSK, 13, time.time(), time.time(), time.time())


def test_check_warns_about_a_ksk_older_than_ksk_lifetime(tmp_path, capsys) -> None:
    path = write_config(tmp_path, {"ksk_lifetime": "30d"})
    for _ in keep_all_keys(load(path), {}, time.time() - 31 * 86400):  # keys made a month ago
        pass
    assert cli_main(["check", "--config", str(path)]) == 0
    assert "is older than ksk_lifetime: roll it" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"algorithm": "rsasha1"}, "expected ecdsap256sha256 (13) or ed25519 (15)"),
        ({"signature_validity": "two weeks"}, "expected a duration"),
        (
            {"signature_validity": "1d", "signature_refresh": "2d"},
            "signature_refresh must be shorter",
        ),
        ({"zsk_lifetime": "1h"}, "zsk_lifetime must be longer"),
    ],
)
def test_bad_dnssec_settings_are_refused(tmp_path, settings, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(write_config(tmp_path, settings))


def test_signatures_are_made_again_before_they_expire(tmp_path) -> None:
    config = load(write_config(tmp_path, {"signature_validity": "2h", "signature_refresh": "1h"}))
    start = time.time()
    snapshot = signed_snapshot(config, start)
    assert not signing_due(snapshot.signed, config, start + 1800)
    assert signing_due(snapshot.signed, config, start + 3700)
    later = start + 3700
    signed = sign_zones(config, snapshot.zones, later, snapshot.signed)
    assert signed[EXAMPLE].earliest_expiry >= later + 7200 - 1
    assert signed[EXAMPLE].made > 0
    # a reload with nothing near expiry carries every signature over
    again = sign_zones(config, snapshot.zones, later + 60, signed)
    assert again[EXAMPLE].made == 0 and again[EXAMPLE].reused == len(signed[EXAMPLE].memo)


def test_metrics_show_expiry_and_key_ages(signed) -> None:
    _, _, state, _ = signed
    now = time.time()
    collector = DnssecCollector(lambda: state.snapshot.signed, lambda: now)
    families = {f.name: f for f in collector.collect()}
    expiry = families["geodns_dnssec_signature_expiry_timestamp_seconds"].samples
    assert {s.labels["zone"] for s in expiry} == {EXAMPLE, EXTRA}
    assert all(s.value > now + 7 * 86400 for s in expiry)
    ages = families["geodns_dnssec_key_age_seconds"].samples
    assert {s.labels["role"] for s in ages} == {KSK, ZSK}


def test_explain_says_which_key_signs(signed) -> None:
    from geodns.control.explain import explain

    _, config, _, _ = signed
    text = explain(config, JAKARTA, "www." + EXAMPLE, "A", frozenset(), "all up")
    tag = key_set(
        KeyStore(config.dnssec[EXAMPLE].key_directory, EXAMPLE).load(), time.time()
    ).zsk.tag
    assert f"signed with DO=1 by ZSK {tag}" in text


def test_a_zsk_rollover_keeps_every_answer_valid(tmp_path) -> None:
    """The whole pre-publication schedule with an injected clock: at every step, the answers
    validate under the DNSKEY RRset served then AND under any DNSKEY RRset a resolver may
    still hold from up to its TTL before; answers cached up to their TTL validate under the
    new RRset. The new ZSK is published Ipub before it signs; the old one leaves at the end."""
    policy = {
        "zsk_lifetime": "3d",
        "dnskey_ttl": 300,
        "propagation_delay": 60,
        "signature_validity": "14d",
        "signature_refresh": "7d",
    }
    path = write_config(tmp_path, policy)
    config = load(path)
    start = time.time()
    clock = [start]
    snapshot = signed_snapshot(config, start)
    state = ServerState(snapshot)
    names = [
        ("www." + EXAMPLE, "A", JAKARTA),
        ("www." + EXAMPLE, "A", FRANKFURT),
        ("nope." + EXAMPLE, "A", None),
        (EXAMPLE, "MX", None),
        ("host.dyn." + EXTRA, "A", JAKARTA),
    ]
    history: list[tuple[float, dict, list]] = []
    zsk_first_signing: dict[int, float] = {}
    published_at: dict[int, float] = {}

    def step(now: float) -> None:
        clock[0] = now
        zones = state.snapshot.zones
        for _ in keep_all_keys(config, zones, now):
            pass
        if signing_due(state.snapshot.signed, config, now):
            state.snapshot = state.snapshot.with_signatures(
                sign_zones(config, zones, now, state.snapshot.signed)
            )
        keys = {dns.name.from_text(z): dnskeys(state, z) for z in (EXAMPLE, EXTRA)}
        replies = [ask_message(state, n, t, ecs=e) for n, t, e in names]
        for key in keys[dns.name.from_text(EXAMPLE)]:
            published_at.setdefault(dns.dnssec.key_id(key), now)
        zsk = state.snapshot.signed[EXAMPLE].keys.zsk.tag
        zsk_first_signing.setdefault(zsk, now)
        history.append((now, keys, replies))

    t = start
    step(t)
    first_zsk = state.snapshot.signed[EXAMPLE].keys.zsk.tag
    published = {first_zsk}
    while first_zsk in published and len(history) < 100:  # through the roll and the removal
        next_event = min(
            (z.keys.next_event for z in state.snapshot.signed.values() if z.keys.next_event),
            default=None,
        )
        targets = [t + 6 * 3600]
        if next_event is not None:
            targets += [next_event - 1, next_event, next_event + 1]
        t = min(x for x in targets if x > t)
        step(t)
        published = {k.tag for k in state.snapshot.signed[EXAMPLE].keys.published}
    assert len(history) > 10
    last = state.snapshot.signed[EXAMPLE].keys
    assert last.zsk.tag != first_zsk, "the ZSK did not roll"
    assert first_zsk not in {k.tag for k in last.published}, "the old ZSK was not removed"
    new = last.zsk.tag
    ipub = publication_interval(config.dnssec[EXAMPLE])
    assert zsk_first_signing[new] - published_at[new] >= ipub
    for i, (t_i, keys_i, replies_i) in enumerate(history):
        for t_j, keys_j, replies_j in history[i:]:
            if t_j - t_i <= 300:  # a resolver that cached the DNSKEY RRset at t_i asks at t_j
                for reply in replies_j:
                    validate(reply, keys_i, now=t_j)
            if t_j - t_i <= 30:  # answers cached at t_i (TTL 30) checked with keys fetched at t_j
                for reply in replies_i:
                    validate(reply, keys_j, now=t_j)
    assert Path(tmp_path / "keys").is_dir()


def test_a_server_started_when_a_roll_is_due_keeps_the_old_zsk_for_the_zones_largest_ttl(
    tmp_path,
) -> None:
    """`geodns serve` takes its first key step before the zones are loaded. A successor made
    then would not know the zone's largest TTL (the example's NS: a day), and the old ZSK
    would leave the DNSKEY RRset while RRsets it signed may still sit in caches (RFC 7583
    Iret). So that step makes first keys only; the next one, with the zones, rolls."""
    path = write_config(
        tmp_path, {"zsk_lifetime": "3d", "dnskey_ttl": 300, "propagation_delay": 60}
    )
    config = load(path)
    policy = config.dnssec[EXAMPLE]
    start = time.time()
    snapshot = signed_snapshot(config, start)  # first keys, as at the first start
    store = KeyStore(policy.key_directory, EXAMPLE)
    (first,) = [k for k in store.load() if k.role == ZSK]
    restart = first.activate + policy.zsk_lifetime  # the server was down when the roll was due
    for _ in keep_all_keys(config, {}, restart):  # the step at start, before the zones load
        pass
    assert [k.tag for k in store.load() if k.role == ZSK] == [first.tag]
    for _ in keep_all_keys(config, snapshot.zones, restart):  # the upkeep, zones loaded
        pass
    zsks = {k.tag: k for k in store.load() if k.role == ZSK}
    assert len(zsks) == 2
    old = zsks[first.tag]
    largest = max(
        rrset.ttl for node in snapshot.zones[EXAMPLE].nodes.values() for rrset in node.values()
    )
    assert largest == 86400
    assert old.remove - old.retire == policy.propagation_delay + largest


def test_a_ksk_roll_by_hand_keeps_the_dnskey_rrset_valid_under_either_ds(tmp_path, capsys) -> None:
    """add-ksk: both KSKs sign the DNSKEY RRset, so a resolver with the old DS and one with
    the new both validate; retire-ksk: the old one leaves."""
    path = write_config(tmp_path)
    config = load(path)
    now = time.time()
    snapshot = signed_snapshot(config, now)
    store = KeyStore(config.dnssec[EXAMPLE].key_directory, EXAMPLE)
    old = next(k for k in store.load() if k.role == KSK)
    assert cli_main(["dnssec", "add-ksk", EXAMPLE, "--config", str(path)]) == 0
    capsys.readouterr()
    now = time.time() + 1  # after the new key's publication
    assert signing_due(snapshot.signed, config, now)
    state = ServerState(
        snapshot.with_signatures(sign_zones(config, snapshot.zones, now, snapshot.signed))
    )
    reply = ask_message(state, EXAMPLE, "DNSKEY")
    origin = dns.name.from_text(EXAMPLE)
    keyset = reply.find_rrset(reply.answer, origin, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    signatures = reply.find_rrset(
        reply.answer, origin, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY
    )
    ksks = [k for k in keyset if k.flags == 257]
    assert len(ksks) == 2 and len(signatures) == 2
    for ksk in ksks:  # a validator that trusts only this KSK (its DS) accepts the RRset
        only = dns.rrset.from_rdata_list(origin, keyset.ttl, [ksk])
        dns.dnssec.validate(keyset, signatures, {origin: only})
    assert cli_main(["dnssec", "retire-ksk", EXAMPLE, str(old.tag), "--config", str(path)]) == 0
    later = sign_zones(config, snapshot.zones, time.time() + 1, state.snapshot.signed)
    assert old.tag not in {k.tag for k in later[EXAMPLE].keys.published}
    assert cli_main(["dnssec", "retire-ksk", EXAMPLE, str(old.tag + 1), "--config", str(path)]) == 1


@pytest.mark.parametrize(
    ("owner", "rtype", "values"),
    [
        ("www.cdn.example.com.", "A", ["203.0.113.12", "198.51.100.21", "203.0.113.11"]),
        ("*.dyn.geo.test.", "A", ["192.0.2.4"]),
        ("api.cdn.example.com.", "AAAA", ["2001:db8:d2::100", "2001:db8:d1::100"]),
        ("cdn.example.com.", "MX", ["10 MX1.Cdn.Example.com.", "20 mx2.cdn.example.com."]),
        ("a.cdn.example.com.", "NSEC", ["B.cdn.example.com. A RRSIG NSEC"]),
    ],
)
def test_the_zone_signer_signs_what_dnspython_signs(tmp_path, owner, rtype, values) -> None:
    """Ed25519 signatures are deterministic, so the fast path for dynamic address sets must
    give byte for byte dnspython's RRSIG; an ECDSA one must validate."""
    from geodns.dnssec.signer import _ZoneSigner

    for algorithm in (15, 13):
        store = KeyStore(tmp_path / str(algorithm), EXAMPLE)
        key = store.generate(ZSK, algorithm, 0, 0, 0)
        origin = dns.name.from_text(owner.split(".", 2)[-1] if "geo.test" in owner else EXAMPLE)
        signer = _ZoneSigner(key, origin, 1_700_000_000, 1_800_000_000)
        rrset = dns.rrset.from_text_list(owner, 30, "IN", rtype, values)
        if rtype in ("A", "AAAA"):
            ours = signer.sign_addresses(owner, rrset.rdtype, 30, frozenset(values))
        else:
            wires = [r.to_digestable(origin) for r in rrset]
            ours = signer.sign(owner, rrset.rdtype, 30, wires)
        theirs = dns.dnssec.sign(
            rrset,
            key.private,
            origin,
            key.dnskey,
            inception=1_700_000_000,
            expiration=1_800_000_000,
        )
        if algorithm == 15:
            assert ours == theirs.to_wire()
        rrsig = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.RRSIG, ours, 0, len(ours))
        signatures = dns.rrset.from_rdata(owner, 30, rrsig)
        keys = {origin: dns.rrset.from_rdata(origin, 3600, key.dnskey)}
        dns.dnssec.validate(rrset, signatures, keys, now=1_750_000_000)

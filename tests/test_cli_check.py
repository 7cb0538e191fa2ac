"""`geodns check` (and `serve` on the same input): every mistake as `FILE:LINE: message`.

Each case writes a tiny config + zone directory, runs the command, and asserts exit code 1 and an
error line naming the right file, the right line, and a key phrase of the message. `check` runs
the CLI's own main() in this process (an interpreter start costs more than the check: ~0.4 s of
CPU each); its output and exit status were compared with the real command's for every case here
and were identical. The real command (`run_geodns`) still runs for --version, a good setup, a
setup with many errors, a missing file, --strict's exit status, and every `serve` case.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import BASE_ZONES, base_config
from server_process import REPO_ROOT, GeodnsServer
from test_rfc_4592 import RFC4592_ZONE

from geodns.control.cli import main

ERROR_LINE = re.compile(
    r"^(?P<path>[^\s:][^:]*):(?P<line>\d+)(?::(?P<column>\d+))?: "
    r"(?P<severity>error|warning): (?P<message>.+)$"
)

APEX = """\
'':
  type: NS
  values:
    - ns1.example.test.
    - ns2.example.test.
ns1:
  type: A
  value: 192.0.2.53
ns2:
  type: A
  value: 192.0.2.54
"""


def env() -> dict[str, str]:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else [])
    )
    return environ


def run_geodns(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geodns", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        stdin=subprocess.DEVNULL,
    )


def write_setup(root: Path, zones: dict[str, str], config: str | dict | None = None) -> Path:
    """config.yaml + zones/<file> under root; zone keys are file names without .yaml."""
    zones_dir = root / "zones"
    zones_dir.mkdir(parents=True, exist_ok=True)
    for name, text in zones.items():
        (zones_dir / f"{name}.yaml").write_text(text)
    config_path = root / "config.yaml"
    if config is None:
        config = {"zones_dir": "zones"}
    if isinstance(config, dict):
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        config_path.write_text(config)
    return config_path


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line number of the n-th line containing needle."""
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in text")


def errors(output: str) -> list[tuple[str, int, str]]:
    found = []
    for raw in output.splitlines():
        match = ERROR_LINE.match(raw.strip())
        if match:
            found.append((match["path"], int(match["line"]), match["message"]))
    return found


def assert_error(
    result: subprocess.CompletedProcess[str],
    filename: str,
    lines: int | set[int] | None,
    phrase: str,
) -> None:
    """An error line for `filename` (any directory) at one of `lines` whose message matches."""
    output = result.stdout + result.stderr
    wanted = {lines} if isinstance(lines, int) else lines
    candidates = [
        (path, line, message)
        for path, line, message in errors(output)
        if Path(path).name == filename
    ]
    for _, line, message in candidates:
        if (wanted is None or line in wanted) and re.search(phrase, message, re.IGNORECASE):
            return
    raise AssertionError(
        f"no '{filename}:{sorted(wanted) if wanted else '*'}: ...{phrase}...' error in:\n{output}"
    )


def check_in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`geodns check ARGS` run by the CLI's own main() in this process (no interpreter start),
    with its output and exit status as a finished process would give them."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check", *args])
    return subprocess.CompletedProcess(
        ["geodns", "check", *args], code, out.getvalue(), err.getvalue()
    )


def check(config_path: Path) -> subprocess.CompletedProcess[str]:
    return check_in_process("--config", str(config_path))


def check_fails(tmp_path: Path, zone_text: str, zone: str = "example.test"):
    result = check(write_setup(tmp_path, {zone: zone_text}))
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}{result.stderr}"
    return result


# --------------------------------------------------------------------------- good input


def test_good_zones_pass(tmp_path):
    zones = dict(BASE_ZONES)
    zones["example"] = RFC4592_ZONE
    config = base_config(zones_dir="zones")
    result = run_geodns("check", "--config", str(write_setup(tmp_path, zones, config)))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert errors(output) == [] or all("OK" in m for _, _, m in errors(output)), output


def test_check_says_whether_the_place_index_could_be_cached(tmp_path):
    """The bundled database is indexed at once; `check` says where the index is cached, or
    that it could not be (an unwritable cache directory: every start would index again)."""
    config_path = write_setup(tmp_path, {"example.test": APEX})
    cache = tmp_path / "cache"
    config_path.write_text(f"zones_dir: zones\ncache_dir: {cache}\n")
    result = run_geodns("check", "--config", str(config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"place index cached in {cache}" in result.stdout
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    config_path.write_text(f"zones_dir: zones\ncache_dir: {blocked / 'cache'}\n")
    result = run_geodns("check", "--config", str(config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"not cached: {blocked / 'cache'} cannot be written" in result.stdout
    assert "geo_index_not_saved" in result.stdout + result.stderr


def test_ttl_bounds_accepted(tmp_path):
    text = APEX + "zero:\n  type: A\n  ttl: 0\n  value: 192.0.2.1\n"
    text += "max:\n  type: A\n  ttl: 2147483647\n  value: 192.0.2.2\n"
    result = check(write_setup(tmp_path, {"example.test": text}))
    assert result.returncode == 0, result.stdout + result.stderr


def test_version():
    result = run_geodns("--version")
    assert result.returncode == 0
    assert re.search(r"\d+\.\d+\.\d+", result.stdout + result.stderr)


# ---------------------------------------------------------------------------- zone errors


@pytest.mark.parametrize("key", ["foo.other.", "www.example.org.", "other."])
def test_owner_outside_zone(tmp_path, key):
    text = APEX + f"'{key}':\n  type: A\n  value: 192.0.2.1\n"
    result = check_fails(tmp_path, text)
    assert_error(result, "example.test.yaml", line_of(text, key), r"outside|not in|not under")


def test_cname_beside_other_data(tmp_path):
    text = APEX + textwrap.dedent(
        """\
        www:
          - type: CNAME
            value: other.example.test.
          - type: A
            value: 192.0.2.1
        """
    )
    result = check_fails(tmp_path, text)
    lines = {line_of(text, "www:"), line_of(text, "type: CNAME")}
    assert_error(result, "example.test.yaml", lines, r"cname")


def test_cname_beside_ns_at_apex_or_mx(tmp_path):
    text = APEX + textwrap.dedent(
        """\
        mail:
          - type: MX
            value: {preference: 10, exchange: mx.example.test.}
          - type: CNAME
            value: other.example.test.
        """
    )
    result = check_fails(tmp_path, text)
    lines = {line_of(text, "mail:"), line_of(text, "type: CNAME")}
    assert_error(result, "example.test.yaml", lines, r"cname")


@pytest.mark.parametrize(
    "rtype,value",
    [
        ("A", "192.0.2.256"),
        ("A", "192.0.2"),
        ("A", "2001:db8::1"),
        ("A", "not-an-address"),
        ("AAAA", "2001:db8::g"),
        ("AAAA", "192.0.2.1"),
        ("AAAA", "2001:db8:::1"),
    ],
)
def test_bad_address(tmp_path, rtype, value):
    text = APEX + f"host:\n  type: {rtype}\n  ttl: 60\n  value: '{value}'\n"
    result = check_fails(tmp_path, text)
    assert_error(
        result, "example.test.yaml", line_of(text, f"value: '{value}'"), r"address|IPv4|IPv6"
    )


def test_bad_address_in_values_list_names_the_item_line(tmp_path):
    text = APEX + textwrap.dedent(
        """\
        host:
          type: A
          values:
            - 192.0.2.1
            - 192.0.2.2
            - 192.0.2.999
            - 192.0.2.4
        """
    )
    result = check_fails(tmp_path, text)
    assert_error(result, "example.test.yaml", line_of(text, "192.0.2.999"), r"address|IPv4")


@pytest.mark.parametrize("ttl", ["-1", "2147483648", "99999999999", "'sixty'"])
def test_ttl_out_of_range(tmp_path, ttl):
    text = APEX + f"host:\n  type: A\n  ttl: {ttl}\n  value: 192.0.2.1\n"
    result = check_fails(tmp_path, text)
    assert_error(result, "example.test.yaml", line_of(text, "ttl:"), r"ttl")


def test_delegation_without_glue(tmp_path):
    text = APEX + textwrap.dedent(
        """\
        sub:
          type: NS
          values:
            - ns1.sub.example.test.
            - ns.elsewhere.example.
        """
    )
    result = check_fails(tmp_path, text)
    lines = {line_of(text, "sub:"), line_of(text, "type: NS", 2), line_of(text, "ns1.sub")}
    assert_error(result, "example.test.yaml", lines, r"glue")


def test_delegation_with_glue_and_out_of_zone_ns_passes(tmp_path):
    text = APEX + textwrap.dedent(
        """\
        sub:
          type: NS
          values:
            - ns1.sub.example.test.
            - ns.elsewhere.example.
        ns1.sub:
          type: AAAA
          value: 2001:db8::1
        """
    )
    result = check(write_setup(tmp_path, {"example.test": text}))
    assert result.returncode == 0, result.stdout + result.stderr


def test_duplicate_zones(tmp_path):
    result = check(write_setup(tmp_path, {"example.test": APEX, "Example.Test": APEX}))
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    dup = [
        (path, line, message)
        for path, line, message in errors(output)
        if Path(path).name in ("example.test.yaml", "Example.Test.yaml")
        and re.search(r"duplicate|twice|already|more than one", message, re.IGNORECASE)
    ]
    assert dup, output


def test_duplicate_zones_trailing_dot(tmp_path):
    result = check(write_setup(tmp_path, {"example.test": APEX, "example.test.": APEX}))
    assert result.returncode == 1, result.stdout + result.stderr


@pytest.mark.parametrize(
    "bad,good", [("tll", "ttl"), ("vaule", "value"), ("valeus", "values"), ("tpye", "type")]
)
def test_unknown_record_key_suggests(tmp_path, bad, good):
    record = {"type": "A", "ttl": 60, "value": "192.0.2.1"}
    if bad in ("vaule", "valeus"):
        record.pop("value")
        record[bad] = "192.0.2.1" if bad == "vaule" else ["192.0.2.1"]
    elif bad == "tpye":
        record.pop("type")
        record[bad] = "A"
    else:
        record.pop("ttl")
        record[bad] = 60
    text = APEX + yaml.safe_dump({"host": record}, sort_keys=False)
    result = check_fails(tmp_path, text)
    if bad == "tpye":
        # without a type the record may be reported as a whole; the key line or the record line
        lines = {line_of(text, f"{bad}:"), line_of(text, "host:"), line_of(text, "host:") + 1}
    else:
        lines = line_of(text, f"{bad}:")
    assert_error(result, "example.test.yaml", lines, rf"did you mean '{good}'")


def test_missing_apex_ns(tmp_path):
    text = "www:\n  type: A\n  value: 192.0.2.1\n"
    result = check_fails(tmp_path, text)
    assert_error(result, "example.test.yaml", None, r"\bNS\b")


def test_invalid_yaml_reports_line(tmp_path):
    text = APEX + "www:\n  type: A\n  value: [192.0.2.1\n"
    result = check_fails(tmp_path, text)
    assert_error(result, "example.test.yaml", None, r"yaml|expected|flow")


def test_every_error_reported_one_per_line(tmp_path):
    text = APEX + textwrap.dedent(
        """\
        a:
          type: A
          value: 300.1.1.1
        b:
          type: A
          ttl: -5
          value: 192.0.2.1
        c:
          type: A
          tll: 60
          value: 192.0.2.1
        """
    )
    other = APEX + "'x.example.org.':\n  type: A\n  value: 192.0.2.1\n"
    config = write_setup(tmp_path, {"example.test": text, "other.test": other})
    result = run_geodns("check", "--config", str(config))
    assert result.returncode == 1
    assert_error(result, "example.test.yaml", line_of(text, "300.1.1.1"), r"address|IPv4")
    assert_error(result, "example.test.yaml", line_of(text, "ttl: -5"), r"ttl")
    assert_error(result, "example.test.yaml", line_of(text, "tll:"), r"did you mean 'ttl'")
    assert_error(result, "other.test.yaml", line_of(other, "x.example.org."), r"outside|not in")


# --------------------------------------------------------------------------- config errors


def test_unknown_config_key(tmp_path):
    config = "zones_dir: zones\nprot: 5353\nlisten: ['127.0.0.1']\n"
    result = check(write_setup(tmp_path, {"example.test": APEX}, config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert_error(result, "config.yaml", 2, r"prot")
    assert_error(result, "config.yaml", 2, r"did you mean 'port'")


def test_unknown_nested_config_key(tmp_path):
    config = "zones_dir: zones\ntcp:\n  max_connections: 10\n  idle_timout: 5\n"
    result = check(write_setup(tmp_path, {"example.test": APEX}, config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert_error(result, "config.yaml", 4, r"idle_timout")


@pytest.mark.parametrize(
    "setting,line",
    [
        ("port: 70000", 2),
        ("listen: ['not-an-ip']", 2),
        ("edns: {max_udp_size: 'big'}", 2),
        ("edns: {max_udp_size: 100}", 2),
        ("tcp: {max_connections: 0}", 2),
        ("tcp: {idle_timeout: -1}", 2),
        ("udp: {batch: 5000}", 2),
        ("udp: {batch: many}", 2),
        ("soa: {minimum: -1}", 2),
        ("logging: {level: loud}", 2),
    ],
)
def test_bad_config_value(tmp_path, setting, line):
    config = f"zones_dir: zones\n{setting}\n"
    result = check(write_setup(tmp_path, {"example.test": APEX}, config))
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert any(Path(p).name == "config.yaml" and n == line for p, n, _ in errors(output)), output


# ------------------------------------------------------------------------------- serve


def test_serve_with_broken_zone_exits_nonzero_with_same_errors(tmp_path):
    text = APEX + "host:\n  type: A\n  tll: 60\n  value: 192.0.2.1\n"
    config_path = write_setup(tmp_path, {"example.test": text}, {"zones_dir": "zones", "port": 0})
    checked = check(config_path)
    assert checked.returncode == 1
    try:
        served = run_geodns("serve", "--config", str(config_path), timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("serve kept running with a broken zone")
    assert served.returncode == 1  # as `geodns check` says it
    assert_error(served, "example.test.yaml", line_of(text, "tll:"), r"did you mean 'ttl'")
    check_errors = {e for e in errors(checked.stdout + checked.stderr)}
    serve_errors = {e for e in errors(served.stderr)}
    assert check_errors <= serve_errors, (check_errors, serve_errors)


def test_serve_with_bad_config_exits_nonzero(tmp_path):
    config_path = write_setup(tmp_path, {"example.test": APEX}, "zones_dir: zones\nprot: 1\n")
    try:
        served = run_geodns("serve", "--config", str(config_path), timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("serve kept running with a broken config")
    assert served.returncode == 1  # as `geodns check` says it
    assert_error(served, "config.yaml", 2, r"prot")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_gracefully(signum):
    srv = GeodnsServer(base_config(), BASE_ZONES)
    with srv:
        assert srv.answers("www.example.test")
        start = time.monotonic()
        code = srv.stop(signum=signum, check=False)
        assert code == 0, f"exit {code} after {signum!r}\n{srv.stderr_text()[-2000:]}"
        assert time.monotonic() - start < 10


# ------------------------------------------------------------- check: files, warnings, --strict


PROBLEM_LINE = re.compile(
    r"^(?P<path>[^\s:][^:]*):(?P<line>\d+):(?P<column>\d+): (?P<severity>error|warning): "
)
DYNAMIC = """\
www:
  dynamic:
    pools:
      asia:
        values:
          - value: 192.0.2.1
      california:
        values:
          - value: 192.0.2.2
      rest:
        values:
          - value: 192.0.2.3
    rules:
      - geos:
          - NA-US-CA
        pool: california
      - geos:
          - {asia}
        pool: asia
      - pool: rest
  type: A
  value: 192.0.2.3
"""


def test_check_takes_zone_files_and_checks_only_those(tmp_path):
    config = write_setup(tmp_path, {"broken.test": "www:\n  type: A\n  value: nope\n"})
    good = tmp_path / "example.test.yaml"
    good.write_text(APEX)
    result = check_in_process("--config", str(config), str(good))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "zone example.test. OK" in result.stdout
    assert "broken" not in result.stdout + result.stderr


def test_a_missing_zone_file_is_named_without_a_line(tmp_path):
    config = write_setup(tmp_path, {})
    missing = tmp_path / "nowhere.test.yaml"
    result = run_geodns("check", "--config", str(config), str(missing))
    assert result.returncode == 1
    assert f"{missing}: error: cannot read file: No such file or directory" in result.stderr
    assert ":0:" not in result.stderr


def test_problems_name_file_line_and_column(tmp_path):
    text = APEX + DYNAMIC.format(asia="EU-CY")
    result = check_in_process("--config", str(write_setup(tmp_path, {"example.test": text})))
    assert result.returncode == 1
    geo_line = line_of(text, "EU-CY")
    wanted = f"example.test.yaml:{geo_line}:13: error: dynamic.rules[2].geos: unknown country code 'EU-CY'"
    assert wanted in result.stderr, result.stderr


def test_warnings_are_printed_and_strict_makes_them_count(tmp_path):
    """The bundled country database has no subdivisions: the NA-US-CA rule never matches, and
    the pool only it leads to is never answered."""
    text = APEX + DYNAMIC.format(asia="AS")
    config = write_setup(tmp_path, {"example.test": text})
    result = check_in_process("--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    found = [PROBLEM_LINE.match(line) for line in result.stderr.splitlines()]
    warned = {(int(m["line"]), int(m["column"])) for m in found if m and m["severity"] == "warning"}
    assert (line_of(text, "NA-US-CA"), 13) in warned
    assert (line_of(text, "california:"), 7) in warned
    assert "rule 1: geo NA-US-CA never matches" in result.stderr
    assert "0 error(s), 2 warning(s)" in result.stderr
    strict = run_geodns("check", "--strict", "--config", str(config))  # the real exit status
    assert strict.returncode == 3, strict.stdout + strict.stderr


def test_a_country_the_database_never_returns_is_warned(tmp_path):
    from mmdb_factory import country_record, write_country_db

    db = write_country_db(tmp_path / "small.mmdb", [("192.0.2.0/24", country_record("JP", "AS"))])
    text = APEX + DYNAMIC.format(asia="AS-CY").replace("NA-US-CA", "AS-JP")
    config = write_setup(
        tmp_path, {"example.test": text}, {"zones_dir": "zones", "geoip": {"database": str(db)}}
    )
    result = check(config)
    assert result.returncode == 0
    assert (
        "geo AS-CY never matches: the database (GeoIP2-Country) never places a user in CY"
        in result.stderr
    )


@pytest.mark.parametrize(
    "zone,config,phrase",
    [
        (
            "www:\n  type: A\n  value: 192.0.2.1\n",
            {"nameservers": ["ns1.example.net."]},
            "no NS record at the apex",
        ),
        ("? ''\n: type: NS\n  value: ns1.example.net.\n", {}, "single nameserver"),
        (
            "x:\n  type: URLFWD\n  value: {code: 301, masking: 2, path: /, query: 0, target: 'http://a'}\n",
            {},
            "URLFWD record 'x' skipped",
        ),
    ],
)
def test_zone_warnings(tmp_path, zone, config, phrase):
    text = zone if "? ''" in zone or "nameservers" in config else APEX + zone
    config_path = write_setup(tmp_path, {"example.test": text}, {"zones_dir": "zones", **config})
    result = check_in_process("--config", str(config_path))
    assert result.returncode == 0, result.stderr
    assert re.search(
        rf"example\.test\.yaml:\d+:\d+: warning: .*{re.escape(phrase)}", result.stderr
    ), result.stderr


def test_problems_of_the_whole_zone_name_the_record_line_and_column(tmp_path):
    """Problems found once the whole zone is read (glue, CNAME beside data, a name below a DNAME,
    a single apex NS) point at the record, `file:line:column:`, like every other problem."""
    text = (
        "? ''\n: type: NS\n  value: ns1.example.net.\n"
        "sub:\n  type: NS\n  values: [ns.sub.example.test.]\n"
        "c:\n  - type: A\n    value: 192.0.2.1\n  - type: CNAME\n    value: x.example.test.\n"
        "d:\n  type: DNAME\n  value: x.example.net.\n"
        "w.d:\n  type: A\n  value: 192.0.2.2\n"
    )
    result = check_in_process("--config", str(write_setup(tmp_path, {"example.test": text})))
    assert result.returncode == 1
    for wanted in (
        ":2:3: warning: zone 'example.test.' has a single nameserver",
        ":5:3: error: delegation 'sub.example.test.' names in-zone nameserver",
        ":10:5: error: CNAME at 'c.example.test.' beside other data (A)",
        ":15:1: warning: 'w.d.example.test.' is below the DNAME",
    ):
        assert f"example.test.yaml{wanted}" in result.stderr, result.stderr


def test_a_dname_below_a_dname_is_left_out_with_a_warning(tmp_path):
    """A DNAME under another DNAME is occluded like any name below one: left out with a
    warning, the zone served (it once ended in a KeyError traceback)."""
    text = APEX + (
        "a:\n  type: DNAME\n  value: x.example.net.\nb.a:\n  type: DNAME\n  value: y.example.net.\n"
    )
    result = check_in_process("--config", str(write_setup(tmp_path, {"example.test": text})))
    assert result.returncode == 0, result.stderr
    assert "'b.a.example.test.' is below the DNAME at 'a.example.test.'" in result.stderr


def test_a_reader_that_goes_away_gets_no_traceback(tmp_path):
    """`geodns check | head -1`, `geodns status | head`: when the reader closes the pipe, geodns
    stops quietly with 141 (128 + SIGPIPE) instead of printing a BrokenPipeError traceback."""
    config = write_setup(tmp_path, {"example.test": APEX})
    proc = subprocess.Popen(
        [sys.executable, "-m", "geodns", "check", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # no reader: geodns's first line meets a closed pipe
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "Traceback" not in stderr.decode(), stderr.decode()
    assert proc.returncode == 141

"""The `geodns` command: serve, check, explain, and the admin commands for a running server."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from geodns import __version__
from geodns.common.errors import ConfigError, Problem
from geodns.common.logs import PRIORITIES, configure, to_journal
from geodns.config.server import load_config
from geodns.dns.zone import Zone

if TYPE_CHECKING:
    from geodns.config.server import ServerConfig
    from geodns.geo.locator import Geo

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "data" / "example-config.yaml"


SYSTEM_CONFIG = Path("/etc/geodns/geodns.yaml")


CONFIG_HELP = (
    "config file (default: $GEODNS_CONFIG, else /etc/geodns/geodns.yaml if it exists, "
    "else the bundled example)"
)


def _config_path(value: str | None) -> Path:
    """--config, else $GEODNS_CONFIG, else /etc/geodns/geodns.yaml when it exists (an installed
    server), else the bundled example (cdn.example.com on 127.0.0.1:5353)."""
    if value:
        return Path(value)
    if os.environ.get("GEODNS_CONFIG"):
        return Path(os.environ["GEODNS_CONFIG"])
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else EXAMPLE_CONFIG


def cmd_serve(args: argparse.Namespace) -> int:
    from geodns.daemon.app import run

    path = _config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:  # the errors `geodns check` prints, with its exit status
        _print_problems(exc.problems)
        return EXIT_ERRORS
    configure(config.log_level, config.log_format)
    # a reload asked for while we start (systemd, a deploy script) must not kill us: SIGHUP's
    # default action is to terminate; the event loop's handler replaces this once running
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return run(config, path)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_ERRORS
    except KeyboardInterrupt:
        return 0


EXIT_ERRORS = 1
EXIT_STRICT_WARNINGS = 3  # `check --strict`: no error, but warnings


def cmd_check(args: argparse.Namespace) -> int:
    """Check the config, the zones (those given, else every one in zones_dir) and the geo
    database; print every problem as `file:line:column: error|warning: message`.

    Exit 0 when there is no error (warnings are printed), 1 on any error, 3 when there are
    warnings only and --strict makes them count.
    """
    from geodns.config.loader import database_warnings, load_geo, load_zone_files, load_zones

    problems: list[Problem] = []
    zones: dict[str, Zone] = {}
    geo = None
    try:
        config = load_config(_config_path(args.config))
    except ConfigError as exc:
        return _report(exc.problems, args.strict)
    try:
        if args.zonefiles:
            zones = load_zone_files(config, [Path(f) for f in args.zonefiles])
        else:
            zones = load_zones(config)
    except ConfigError as exc:
        problems.extend(exc.problems)
    problems.extend(w for zone in zones.values() for w in zone.warnings)
    try:
        geo = load_geo(config)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if config.dnssec:
        from geodns.control.dnssec_cli import dnssec_warnings

        problems.extend(dnssec_warnings(config, zones, time.time()))
    if geo is not None:
        problems.extend(database_warnings(zones, geo))
        if not any(p.is_error for p in problems):
            print(
                f"{geo.path}: GeoIP database OK ({geo.database_type}; {_index_state(config, geo)})"
            )
        geo.close()
    if not any(p.is_error for p in problems):
        for origin, zone in sorted(zones.items()):
            count = sum(len(node) for node in zone.nodes.values())
            print(f"{zone.path}: zone {origin} OK ({count} RRsets)")
    return _report(problems, args.strict)


def cmd_dnssec(args: argparse.Namespace) -> int:
    from geodns.control.dnssec_cli import cmd_dnssec as run_dnssec

    try:
        config = load_config(_config_path(args.config))
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_ERRORS
    return run_dnssec(args, config)


def _index_state(config: ServerConfig, geo: Geo) -> str:
    """Whether the database's place index is in the cache directory, for `check`'s line."""
    from geodns.config.loader import cache_directory
    from geodns.geo.index import cache_key

    directory = cache_directory(config)
    if geo.index is None:
        return f"no place index cached yet in {directory}"
    if (directory / cache_key(geo.index.digest)).is_dir():
        return f"place index cached in {directory}"
    return f"place index built, but not cached: {directory} cannot be written"


def _report(problems: tuple[Problem, ...] | list[Problem], strict: bool) -> int:
    """Print the problems (by file, then place) and return the exit code they make."""
    _print_problems(sorted(problems, key=lambda p: (p.path, p.line, p.column)))
    if any(p.is_error for p in problems):
        return EXIT_ERRORS
    if strict and problems:
        return EXIT_STRICT_WARNINGS
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from geodns.control.explain import explain

    try:
        config = load_config(_config_path(args.config))
        down, note = _running_health(config)
        print(explain(config, args.client, args.name, args.type, down, note))
    except ConfigError as exc:
        _print_problems(exc.problems)
        return 1
    except ValueError as exc:
        print(f"geodns explain: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_whatif(args: argparse.Namespace) -> int:
    """Who would move if a site were drained or failed: the running server's answer over the
    networks it saw, or, with no server running, this config's over one user per country."""
    import asyncio
    import json

    from geodns.control import adminclient
    from geodns.daemon.whatif import format_table, what_if

    try:
        config = load_config(_config_path(args.config))
        note = ""
        try:
            result = adminclient.whatif(config, args.action, args.site)
        except adminclient.AdminUnreachable:
            from geodns.common.errors import did_you_mean
            from geodns.config.loader import load_geo
            from geodns.health.state import HealthState
            from geodns.serving.snapshot import build_snapshot

            snapshot = build_snapshot(config, load_geo(config))
            if args.site not in snapshot.sites:
                hint = did_you_mean(args.site, snapshot.sites) or ""
                raise ValueError(f"no site named '{args.site}'{hint}") from None
            health = HealthState(snapshot.sites, time.time())
            result = asyncio.run(what_if(snapshot, health, args.action, args.site, []))
            note = "no running server reachable: every site treated as up"
    except ConfigError as exc:
        _print_problems(exc.problems)
        return 1
    except (adminclient.AdminError, ValueError) as exc:
        print(f"geodns whatif: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_table(result, running=not note))
        if note:
            print(f"note: {note}")
    return 0


def _running_health(config: object) -> tuple[frozenset[str], str]:
    """The running server's view of which sites are down, or all up when it is not running."""
    try:
        from geodns.control import adminclient

        status = adminclient.status(config)
    except Exception:  # no server, no admin API: explain still works
        return frozenset(), "all sites treated as up (no running server reachable)"
    down = frozenset(
        name for name, site in status.get("sites", {}).items() if site.get("state") == "down"
    )
    return down, f"from the running server: down = {', '.join(sorted(down)) or 'none'}"


def _admin(args: argparse.Namespace, action: str) -> int:
    """drain / undrain / status / reload against the running server's admin API."""
    from geodns.control import adminclient

    try:
        config = load_config(_config_path(args.config))
        if action == "drain":
            drain = adminclient.drain(config, args.site, args.reason or "", args.duration)
            until = drain.get("until")
            when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(until)) if until else None
            print(f"drained {args.site}" + (f" until {when}" if when else " until undrained"))
        elif action == "undrain":
            result = adminclient.undrain(config, args.site)
            print(
                f"undrained {args.site}"
                if result.get("was_drained")
                else f"{args.site} was not drained"
            )
        elif action == "status":
            status = adminclient.status(config)
            if args.json:
                import json

                print(json.dumps(status, indent=2, sort_keys=True))
            else:
                print(adminclient.format_status(status))
        else:
            ok, errors = adminclient.reload(config)
            if not ok:
                for error in errors:
                    print(error, file=sys.stderr)
                print(
                    "reload failed: the server keeps its previous config and zones", file=sys.stderr
                )
                return 1
            print("reloaded")
    except ConfigError as exc:
        _print_problems(exc.problems)
        return 1
    except (adminclient.AdminError, ValueError) as exc:
        print(f"geodns {action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_problems(problems: tuple[Problem, ...] | list[Problem]) -> None:
    """Each problem as `file:line:column: error|warning: message`, then how many of each.

    Under systemd (stderr is the journal) each line starts with its syslog priority, as the
    server's log lines do, so that `journalctl -p warning` shows why a start or an
    `ExecReload=geodns check` failed; without it the journal files them as info."""
    if not problems:
        return
    journal = to_journal(sys.stderr)

    def prefix(severity: str) -> str:
        return f"<{PRIORITIES[severity]}>" if journal else ""

    for problem in problems:
        print(f"{prefix(problem.severity)}{problem}", file=sys.stderr)
    errors = sum(1 for p in problems if p.is_error)
    summary = f"{errors} error(s), {len(problems) - errors} warning(s)"
    print(f"{prefix('error' if errors else 'warning')}{summary}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geodns", description=__doc__)
    parser.add_argument("--version", action="version", version=f"geodns {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the nameserver in the foreground")
    serve.add_argument("--config", "-c", help=CONFIG_HELP)
    serve.set_defaults(func=cmd_serve)
    check = commands.add_parser(
        "check",
        help="validate the config, the zone files and the geo database",
        description="Validate the config, the zone files (those given, else every one in "
        "zones_dir) and the geo database. Prints each problem as "
        "'file:line:column: error|warning: message'. Exit status: 0 no error, 1 errors, "
        "3 warnings only with --strict.",
    )
    check.add_argument("--config", "-c", help=CONFIG_HELP)
    check.add_argument(
        "--strict", action="store_true", help="warnings count: exit 3 when there are only warnings"
    )
    check.add_argument("zonefiles", nargs="*", metavar="ZONEFILE", help="zone files to check")
    check.set_defaults(func=cmd_check)
    explain = commands.add_parser("explain", help="show what a user would be answered, and why")
    explain.add_argument("client", help="the user's address or ECS subnet, e.g. 36.64.0.0/24")
    explain.add_argument("name", help="the name asked for, e.g. www.cdn.example.com")
    explain.add_argument("--type", "-t", default="A", choices=["A", "AAAA", "a", "aaaa"])
    explain.add_argument("--config", "-c", help=CONFIG_HELP)
    explain.set_defaults(func=cmd_explain)
    whatif = commands.add_parser(
        "whatif", help="who would move, and how much farther, if a site were drained or failed"
    )
    whatif.add_argument("action", choices=["drain", "fail"])
    whatif.add_argument("site")
    whatif.add_argument("--json", action="store_true", help="the raw JSON of the what-if")
    whatif.add_argument("--config", "-c", help="the server's config file (to find its admin API)")
    whatif.set_defaults(func=cmd_whatif)
    dnssec = commands.add_parser(
        "dnssec",
        help="DNSSEC: the DS records for the parent zone, the keys and their schedule",
        description="ds: print the DS record(s) of the zone's KSK, for the parent zone. "
        "keys: every key of the zone with its state and timings. add-ksk: make a second KSK "
        "(a KSK roll, docs/dnssec.md); retire-ksk ZONE TAG: remove the old one.",
    )
    dnssec.add_argument("action", choices=["ds", "keys", "add-ksk", "retire-ksk"])
    dnssec.add_argument("zone", help="a signed zone, e.g. cdn.example.com")
    dnssec.add_argument("tag", nargs="?", type=int, help="retire-ksk: the old KSK's key tag")
    dnssec.add_argument("--config", "-c", help=CONFIG_HELP)
    dnssec.set_defaults(func=cmd_dnssec)
    drain = commands.add_parser("drain", help="take a site out of rotation (a drill, maintenance)")
    drain.add_argument("site")
    drain.add_argument("--reason", "-r", help="why, shown by status and in the log")
    drain.add_argument("--for", dest="duration", help="end by itself after e.g. 30s, 10m, 2h, 1d")
    undrain = commands.add_parser("undrain", help="put a drained site back in rotation")
    undrain.add_argument("site")
    status = commands.add_parser("status", help="every site's health, drains and reload state")
    status.add_argument("--json", action="store_true", help="the raw JSON of the admin API")
    reload = commands.add_parser("reload", help="re-read config and zones in the running server")
    for name, sub in (
        ("drain", drain),
        ("undrain", undrain),
        ("status", status),
        ("reload", reload),
    ):
        sub.add_argument("--config", "-c", help="the server's config file (to find its admin API)")
        sub.set_defaults(func=lambda args, action=name: _admin(args, action))
    return parser


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a reader that went away


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # `geodns status | head`, `geodns check | grep -m1 ...`: the reader has what it wanted.
        # Quietly, as other command-line tools stop; Python would print a traceback, and again
        # when it flushes stdout at exit unless stdout is pointed elsewhere first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE

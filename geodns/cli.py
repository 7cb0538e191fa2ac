"""The `geodns` command: serve, check, explain, and the admin commands for a running server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geodns import __version__
from geodns.config import load_config
from geodns.errors import ConfigError
from geodns.logs import configure


def _config_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def cmd_serve(args: argparse.Namespace) -> int:
    from geodns.app import run

    path = _config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    configure(config.log_level, config.log_format)
    try:
        return run(config, path)
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    except KeyboardInterrupt:
        return 0


def cmd_check(args: argparse.Namespace) -> int:
    from geodns.loader import load_zones

    path = _config_path(args.config)
    try:
        config = load_config(path)
        zones = load_zones(config)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    for origin, zone in sorted(zones.items()):
        count = sum(len(node) for node in zone.nodes.values())
        print(f"{zone.path}: zone {origin} OK ({count} RRsets)")
    return 0


def _print_problems(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    print(f"{len(exc.problems)} error(s)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geodns", description=__doc__)
    parser.add_argument("--version", action="version", version=f"geodns {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the nameserver in the foreground")
    serve.add_argument("--config", "-c", help="config file (default: built-in defaults)")
    serve.set_defaults(func=cmd_serve)
    check = commands.add_parser("check", help="validate the config and every zone file")
    check.add_argument("--config", "-c", help="config file (default: built-in defaults)")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)

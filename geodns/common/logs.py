"""structlog set-up: JSON lines when stderr is not a terminal, readable lines when it is.

Nothing is logged per query; events are start, stop, reloads, health changes and errors. Every
event names its logger (`"logger": "geodns.health"`), and so do the events of libraries that log
through the standard `logging` module (aiohttp, asyncio), which are passed through structlog.

Under systemd, stderr is a stream to the journal: systemd says so in $JOURNAL_STREAM (the
device and inode of that stream). Then each line starts with its syslog priority, `<3>` for an
error, `<4>` a warning, `<6>` info, `<7>` debug (sd-daemon(3)); the journal strips the prefix
and files the line under that priority, so `journalctl -u geodns -p warning` shows warnings and
errors only.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# syslog priorities (sd-daemon(3)): what the journal files a line under
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2}

Renderer = Callable[[Any, str, MutableMapping[str, Any]], str]


def to_journal(stream: TextIO) -> bool:
    """Whether `stream` is the journal stream systemd gave us ($JOURNAL_STREAM = "dev:inode")."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def with_priority(renderer: Renderer) -> Renderer:
    """Prefix each rendered line with its syslog priority, for the journal."""

    def render(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
        level = str(event_dict.get("level", method_name))
        return f"<{PRIORITIES.get(level, 6)}>{renderer(logger, method_name, event_dict)}"

    return render


def configure(level: str = "info", fmt: str = "auto", worker: int | None = None) -> None:
    """Configure structlog once for the process, writing to stderr. A worker process's lines
    carry `worker` (its index), so that the lines of N processes on one stream tell apart."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    if to_journal(sys.stderr):
        renderer = with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _add_logger_name,
            *([_add_worker(worker)] if worker is not None else []),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=_NamedPrintLogger.factory,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToStructlog)]:
        root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(LEVELS.get(level, logging.INFO))


def _add_worker(worker: int) -> Callable[[Any, str, MutableMapping[str, Any]], Any]:
    def add(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        event_dict.setdefault("worker", worker)
        return event_dict

    return add


class _ToStructlog(logging.Handler):
    """Records of the standard `logging` module (aiohttp, asyncio) as structlog events, with
    their logger's name, so they get the same format and the same journal priority."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = get_logger(record.name)
            extra: dict[str, Any] = {}
            if record.exc_info:
                extra["exc_info"] = record.exc_info
            logger.log(record.levelno, record.getMessage(), **extra)
        except Exception:  # a broken log line must not break the caller
            self.handleError(record)


class _NamedPrintLogger(structlog.PrintLogger):
    """structlog's PrintLogger to stderr, knowing the name it was asked for."""

    def __init__(self, name: str) -> None:
        super().__init__(file=sys.stderr)
        self.name = name

    @classmethod
    def factory(cls, *args: Any) -> _NamedPrintLogger:
        return cls(str(args[0]) if args else "geodns")


def _add_logger_name(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    event_dict.setdefault("logger", getattr(logger, "name", "geodns"))
    return event_dict


def get_logger(name: str = "geodns") -> Any:
    """A structlog logger whose every event carries `"logger": name`."""
    return structlog.get_logger(name)

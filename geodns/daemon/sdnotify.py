"""The systemd notify protocol (sd_notify(3)) without libsystemd: one datagram per message.

Under `Type=notify` systemd passes the path of a datagram socket in $NOTIFY_SOCKET; the service
sends newline-separated `KEY=VALUE` assignments to it: READY=1 when it serves, STATUS= for
`systemctl status`, STOPPING=1 on shutdown, WATCHDOG=1 as a keep-alive when WatchdogSec= is set.
A path starting with '@' names a socket in the abstract namespace (the '@' becomes a NUL byte).

Everything here is a no-op returning False when $NOTIFY_SOCKET is unset (a run in a terminal, in
tests, in a container), and a failure to send is reported by the return value, never raised:
the nameserver must not stop because its supervisor went away.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
    "watchdog_loop",
]


def _address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as an AF_UNIX address; None for forms we do not speak (vsock:...)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def notify(message: str) -> bool:
    """Send one notification datagram; True when it was sent, False when unset or it failed."""
    value = os.environ.get("NOTIFY_SOCKET")
    if not value:
        return False
    address = _address(value)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def _line(text: str) -> str:
    """One STATUS= value: a newline would start a new assignment, so it becomes a space."""
    return " ".join(text.splitlines())


def ready(status_text: str | None = None) -> bool:
    """READY=1: start-up (or a reload) is complete and queries are being answered."""
    if status_text is None:
        return notify("READY=1")
    return notify(f"READY=1\nSTATUS={_line(status_text)}")


def status(text: str) -> bool:
    """STATUS=: the one-line state `systemctl status` shows."""
    return notify(f"STATUS={_line(text)}")


def stopping(status_text: str | None = None) -> bool:
    """STOPPING=1: shutdown has begun (sent on SIGTERM, before the sockets close)."""
    if status_text is None:
        return notify("STOPPING=1")
    return notify(f"STOPPING=1\nSTATUS={_line(status_text)}")


def reloading(status_text: str | None = None, now_usec: int | None = None) -> bool:
    """RELOADING=1 with MONOTONIC_USEC (as Type=notify-reload requires): a reload has begun.

    systemd shows the unit as "reloading" until the next READY=1, so READY=1 must follow whether
    the reload succeeded or kept the old snapshot. `now_usec` is CLOCK_MONOTONIC in µs; default now.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000 if now_usec is None else now_usec
    message = f"RELOADING=1\nMONOTONIC_USEC={usec}"
    if status_text is not None:
        message += f"\nSTATUS={_line(status_text)}"
    return notify(message)


def watchdog() -> bool:
    """WATCHDOG=1: the keep-alive; systemd restarts the service when it stops coming."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds from $WATCHDOG_USEC, or None when it is not for us.

    None when unset, unparsable or zero, and when $WATCHDOG_PID names another process (the
    variables were inherited by a child). Ping at half this interval, as sd_watchdog_enabled(3)
    advises.
    """
    value = os.environ.get("WATCHDOG_USEC")
    if not value:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(value)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000


async def watchdog_loop(
    interval: float | None = None, alive: Callable[[], bool] | None = None
) -> None:
    """Send WATCHDOG=1 every `interval`/2 seconds until cancelled (interval: from the env).

    Runs on the event loop that answers queries, so a wedged loop stops the pings and systemd
    restarts the server. `alive`, if given, is asked before each ping; False skips that ping.
    Returns at once when the watchdog is not enabled.
    """
    if interval is None:
        interval = watchdog_interval()
    if interval is None:
        return
    period = interval / 2
    while True:
        if alive is None or alive():
            watchdog()
        await asyncio.sleep(period)

"""Queries per second of a static A query against a running geodns, measured with dnsperf.

Starts `geodns serve` on a free loopback port with the bundled example zone, sends
`www-static` A queries with dnsperf for a few seconds and prints the figure. Only 127.0.0.1 is
ever a target. Usage: python bench/static_qps.py [--seconds 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def wait_for(port: int, timeout: float = 15.0) -> None:
    """Wait until the server answers a UDP query (bounded in time)."""
    query = bytes.fromhex("abcd0000000100000000000003636f6d0000060001")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            sock.sendto(query, ("127.0.0.1", port))
            try:
                sock.recvfrom(512)
                return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError("geodns did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--name", default="mx1.cdn.example.com")
    args = parser.parse_args()
    if shutil.which("dnsperf") is None:
        print("dnsperf is not installed (apt-get install dnsperf)", file=sys.stderr)
        return 2
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "geodns.yaml"
        example = (ROOT / "geodns" / "data" / "example-config.yaml").read_text()
        config.write_text(
            example.replace("port: 5353", f"port: {port}")
            .replace('listen: ["127.0.0.1", "::1"]', 'listen: ["127.0.0.1"]')
            .replace("listen: 127.0.0.1:8053", "listen: null")
        )
        queries = Path(tmp) / "queries.txt"
        queries.write_text(f"{args.name} A\n" * 1000)
        server = subprocess.Popen(
            [sys.executable, "-m", "geodns", "serve", "--config", str(config)],
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(port)
            result = subprocess.run(
                [
                    "dnsperf",
                    "-s",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-d",
                    str(queries),
                    "-l",
                    str(args.seconds),
                    "-c",
                    str(args.clients),
                    "-q",
                    "100",
                ],
                capture_output=True,
                text=True,
                timeout=args.seconds + 30,
                check=False,
            )
        finally:
            server.terminate()
            server.wait(timeout=10)
    match = re.search(r"Queries per second:\s+([\d.]+)", result.stdout)
    lost = re.search(r"Queries lost:\s+(\d+)", result.stdout)
    if not match:
        print(result.stdout + result.stderr, file=sys.stderr)
        return 1
    print(
        f"static A ({args.name}): {float(match.group(1)):.0f} queries/s, lost {lost.group(1) if lost else '?'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

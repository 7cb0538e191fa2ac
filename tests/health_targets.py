"""Real health-check targets on 127.0.0.1 for the failover and fleet tests.

`HttpEndpoint` answers 200, 500, alternates, hangs, or is stopped and started again on the same
port; `TcpEndpoint` accepts and closes. Each runs in daemon threads of the test process.
"""

from __future__ import annotations

import http.server
import socket
import threading
from typing import Any


class HttpEndpoint:
    """A health endpoint on 127.0.0.1 that can answer 200, 500, alternate, hang, or be stopped."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        self.release = threading.Event()
        self.server: http.server.ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    def start(self) -> None:
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                endpoint.requests += 1
                mode = endpoint.mode
                if mode == "hang":
                    endpoint.release.wait(10)
                    return
                if mode == "flap":
                    mode = "ok" if endpoint.requests % 2 else "fail"
                status = 200 if mode == "ok" else 500
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.server = None
        self.release = threading.Event()


class TcpEndpoint:
    """A TCP health endpoint: a listening socket that accepts and closes."""

    def __init__(self) -> None:
        self.port = 0
        self.sock: socket.socket | None = None
        self.start()

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self.sock = sock

        def accept() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                conn.close()

        threading.Thread(target=accept, daemon=True).start()

    def stop(self) -> None:
        assert self.sock is not None
        self.sock.close()
        self.sock = None

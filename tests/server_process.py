"""Run a real `python -m geodns serve` process for black-box tests.

`GeodnsServer` writes a config file and zone files into a temporary directory, picks a free port
on 127.0.0.1 (and ::1 when the host has IPv6) that is usable for both UDP and TCP, starts the
server and waits, bounded, until it answers. It is generic: any extra config keys (`sites`,
`geoip`, `admin`, ...) are passed through unchanged. Only loopback addresses are ever targeted.

    with GeodnsServer({"tcp": {"idle_timeout": 1}}, {"example.test": ZONE_YAML}) as srv:
        reply = srv.query("www.example.test", "A")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"
# how long a start may take before the server counts as broken: a start costs ~0.9 s of CPU,
# which took more than 10 s on the 2-core machine loaded by other work; a server that exits
# during its start is reported at once
STARTUP_TIMEOUT = 60.0


def have_ipv6_loopback() -> bool:
    """True when ::1 can be bound on this host."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK_V6, 0))
        return True
    except OSError:
        return False


def free_port(hosts: Iterable[str] = (LOOPBACK_V4,), attempts: int = 50) -> int:
    """A port that is free for both UDP and TCP on every given loopback host (bounded tries)."""
    hosts = list(hosts)
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK_V4, 0))
            port = probe.getsockname()[1]
        sockets: list[socket.socket] = []
        try:
            for host in hosts:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = socket.socket(family, kind)
                    sockets.append(sock)
                    sock.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free UDP+TCP port found on loopback")


def free_tcp_port(host: str = LOOPBACK_V4) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def frame(message: bytes) -> bytes:
    """RFC 1035 section 4.2.2 / RFC 7766 framing: a two-octet length, then the message."""
    return struct.pack("!H", len(message)) + message


def recv_exact(sock: socket.socket, count: int, deadline: float) -> bytes | None:
    """Read exactly `count` bytes before `deadline`; None on EOF/reset/timeout."""
    data = b""
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(count - len(data))
        except (TimeoutError, ConnectionError, OSError):
            return None
        if not chunk:
            return None
        data += chunk
    return data


def recv_frame(sock: socket.socket, timeout: float = 2.0) -> bytes | None:
    """One length-prefixed DNS message from a TCP socket, or None (EOF, reset or timeout)."""
    deadline = time.monotonic() + timeout
    head = recv_exact(sock, 2, deadline)
    if head is None:
        return None
    (length,) = struct.unpack("!H", head)
    return recv_exact(sock, length, deadline) if length else b""


def wait_closed(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closes (EOF or reset) within `timeout`; data received is discarded."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65535)
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            return True
        if not chunk:
            return True


def make_query(
    qname: str | dns.name.Name,
    rdtype: str | int = "A",
    *,
    ecs: str | dns.edns.Option | None = None,
    edns: bool = True,
    payload: int = 1232,
    want_dnssec: bool = False,
    options: list[dns.edns.Option] | None = None,
    rd: bool = True,
) -> dns.message.QueryMessage:
    """A dnspython query the way `GeodnsServer.query` sends it."""
    opts = list(options or [])
    if ecs is not None:
        opts.append(ecs if isinstance(ecs, dns.edns.Option) else dns.edns.ECSOption.from_text(ecs))
    use_edns = 0 if (edns or opts or want_dnssec) else False
    message = dns.message.make_query(
        qname,
        rdtype,
        use_edns=use_edns,
        payload=payload,
        want_dnssec=want_dnssec,
        options=opts or None,
    )
    if not rd:
        message.flags &= ~dns.flags.RD
    return message


class ServerStartError(RuntimeError):
    pass


class GeodnsServer:
    """A `python -m geodns serve` child process with its own config and zone files.

    config: dict merged into the written config.yaml (keys given win; `port`, `listen`,
        `zones_dir` and `admin.listen` get test-friendly defaults when absent).
    zones: zone name -> YAML text or a dict/list structure (dumped as YAML), written to
        `<zones_dir>/<zone>.yaml`.
    files: extra relative path -> text/bytes written beside the config (e.g. a GeoIP db).
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        zones: Mapping[str, str | Mapping[str, Any]] | None = None,
        *,
        files: Mapping[str, str | bytes] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        ready_qname: str | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Iterable[str] = (),
        workdir: str | os.PathLike[str] | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.config: dict[str, Any] = dict(config or {})
        self.zones: dict[str, str | Mapping[str, Any]] = dict(zones or {})
        self.files = dict(files or {})
        self.startup_timeout = startup_timeout
        self.extra_env = dict(env or {})
        self.extra_args = list(extra_args)
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="geodns-test-"))
        self.host = LOOPBACK_V4
        self.ipv6 = have_ipv6_loopback()
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._stderr_file: Any = None
        self._stdout_file: Any = None
        self.ready_qname = ready_qname or (next(iter(self.zones)) if self.zones else ".")
        self.admin_port: int | None = None

        cfg = self.config
        if "listen" not in cfg:
            cfg["listen"] = [LOOPBACK_V4, LOOPBACK_V6] if self.ipv6 else [LOOPBACK_V4]
        if "port" not in cfg:
            hosts = [h for h in cfg["listen"] if h in (LOOPBACK_V4, LOOPBACK_V6)] or [LOOPBACK_V4]
            cfg["port"] = free_port(hosts)
        # one process unless a test asks for workers: most tests need no more, and CI has 2 cores
        cfg.setdefault("workers", 1)
        if "zones_dir" not in cfg:
            cfg["zones_dir"] = "zones"
        self.admin_token = admin_token  # drains and reloads over TCP need one
        if "admin" not in cfg:
            # the admin API listens on a fixed default port; give each test server its own
            self.admin_port = free_tcp_port()
            cfg["admin"] = {"listen": f"{LOOPBACK_V4}:{self.admin_port}"}
            if admin_token is not None:
                self.files["admin.token"] = admin_token + "\n"
                cfg["admin"]["token_file"] = "admin.token"
        self.port: int = int(cfg["port"])
        self.config_path = self.dir / "config.yaml"
        self.zones_dir = self.dir / str(cfg["zones_dir"])
        self.stderr_path = self.dir / "server.stderr"
        self.stdout_path = self.dir / "server.stdout"
        self.write_files()

    # ----------------------------------------------------------------- files
    def write_files(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.zones_dir.mkdir(parents=True, exist_ok=True)
        for name, content in self.zones.items():
            self.write_zone(name, content)
        for rel, content in self.files.items():
            path = self.dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)

    def zone_path(self, zone: str) -> Path:
        return self.zones_dir / f"{zone.rstrip('.')}.yaml"

    def write_zone(self, zone: str, content: str | Mapping[str, Any]) -> Path:
        path = self.zone_path(zone)
        text = (
            content if isinstance(content, str) else yaml.safe_dump(dict(content), sort_keys=False)
        )
        path.write_text(text)
        self.zones[zone] = content
        return path

    # --------------------------------------------------------------- process
    def command(self) -> list[str]:
        return [sys.executable, "-m", "geodns", "serve", "--config", str(self.config_path)]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `geodns ARGS --config <this server's config>` (drain, status, reload...)."""
        return subprocess.run(
            [sys.executable, "-m", "geodns", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.environment(),
        )

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.extra_env)
        return env

    def start(self) -> GeodnsServer:
        if self.alive():
            return self
        self._stderr_file = open(self.stderr_path, "ab")  # noqa: SIM115 - closed in stop()
        self._stdout_file = open(self.stdout_path, "ab")  # noqa: SIM115
        self.returncode = None
        env = self.environment()
        notified = self._notify_socket(env)
        try:
            self.proc = subprocess.Popen(
                self.command() + self.extra_args,
                stdin=subprocess.DEVNULL,
                stdout=self._stdout_file,
                stderr=self._stderr_file,
                cwd=str(self.dir),
                env=env,
            )
            try:
                self._wait_ready(notified)
            except BaseException:
                self.kill()
                raise
        finally:
            if notified is not None:
                notified.close()
        return self

    def _notify_socket(self, env: dict[str, str]) -> socket.socket | None:
        """A datagram socket named by $NOTIFY_SOCKET, as systemd gives a Type=notify service:
        the server says READY=1 once everything (the admin API too) has started, which is
        after its first answers. None when the test set its own NOTIFY_SOCKET."""
        if "NOTIFY_SOCKET" in self.extra_env:
            return None
        path = self.dir / "notify.sock"
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        env["NOTIFY_SOCKET"] = str(path)
        return sock

    def _wait_ready(self, notified: socket.socket | None) -> None:
        """Until the server answers over UDP and TCP, and (with `notified`) said READY=1."""
        deadline = time.monotonic() + self.startup_timeout
        query = make_query(self.ready_qname, "SOA").to_wire()
        answered = False
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ServerStartError(
                    f"geodns exited with {self.proc.returncode if self.proc else None} "
                    f"during startup:\n{self.stderr_text()}"
                )
            if not answered:
                answered = self.raw_udp(query, timeout=0.2) is not None
                if not answered:
                    continue
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.5) as sock,
            ):
                sock.sendall(frame(query))
                if recv_frame(sock, timeout=0.5) is not None:
                    self._wait_notified(notified, deadline)
                    return
            time.sleep(0.05)
        raise ServerStartError(
            f"geodns did not answer on {self.host}:{self.port} within "
            f"{self.startup_timeout}s (udp answered: {answered}):\n{self.stderr_text()}"
        )

    def _wait_notified(self, notified: socket.socket | None, deadline: float) -> None:
        while notified is not None and time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ServerStartError(f"geodns exited during startup:\n{self.stderr_text()}")
            notified.settimeout(max(0.01, min(0.2, deadline - time.monotonic())))
            try:
                message = notified.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in message.split(b"\n"):
                return
        if notified is not None:
            raise ServerStartError(f"geodns answered but never said READY=1:\n{self.stderr_text()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int | None:
        """Wait for the process to exit; its exit code, or None if it is still running."""
        if self.proc is None:
            return self.returncode
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._close_logs()
        return self.returncode

    def stop(
        self, *, check: bool = True, signum: int = signal.SIGTERM, timeout: float = 10.0
    ) -> int:
        """Stop gracefully (SIGTERM by default); with check, assert it exits 0 in time."""
        if self.proc is None:
            return self.returncode if self.returncode is not None else 0
        problem = None
        if self.proc.poll() is not None:
            problem = f"geodns had already exited with {self.proc.returncode}"
        else:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                problem = f"geodns did not exit within {timeout}s of signal {signum}"
                self.kill()
        code = self.proc.returncode
        self.returncode = code
        self.proc = None
        self._close_logs()
        if problem is None and code != 0:
            problem = f"geodns exited with {code} after signal {signum}"
        if check and problem:
            raise AssertionError(f"{problem}\n--- stderr ---\n{self.stderr_text()[-5000:]}")
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        if self.proc is not None:
            self.returncode = self.proc.returncode
        self._close_logs()

    def restart(self) -> GeodnsServer:
        self.stop()
        return self.start()

    def _close_logs(self) -> None:
        for handle in (self._stderr_file, self._stdout_file):
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
        self._stderr_file = self._stdout_file = None

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> GeodnsServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self.proc is not None:
                # don't mask a test failure with a shutdown failure
                self.stop(check=exc_type is None)
        finally:
            self.cleanup()

    # --------------------------------------------------------------- queries
    def query(
        self,
        qname: str | dns.name.Name,
        rdtype: str | int = "A",
        *,
        tcp: bool = False,
        ecs: str | dns.edns.Option | None = None,
        edns: bool = True,
        payload: int = 1232,
        want_dnssec: bool = False,
        source: str | None = None,
        timeout: float = 2.0,
        host: str | None = None,
        options: list[dns.edns.Option] | None = None,
        rd: bool = True,
    ) -> dns.message.Message:
        message = make_query(
            qname,
            rdtype,
            ecs=ecs,
            edns=edns,
            payload=payload,
            want_dnssec=want_dnssec,
            options=options,
            rd=rd,
        )
        return self.send(message, tcp=tcp, source=source, timeout=timeout, host=host)

    def send(
        self,
        message: dns.message.Message,
        *,
        tcp: bool = False,
        source: str | None = None,
        timeout: float = 2.0,
        host: str | None = None,
    ) -> dns.message.Message:
        where = host or self.host
        if tcp:
            return dns.query.tcp(message, where, timeout=timeout, port=self.port, source=source)
        return dns.query.udp(message, where, timeout=timeout, port=self.port, source=source)

    def raw_udp(
        self,
        data: bytes,
        timeout: float = 1.0,
        *,
        host: str | None = None,
        source: str | None = None,
    ) -> bytes | None:
        """Send raw bytes in one datagram (from `source`, a loopback address, if given); the
        first reply datagram, or None on timeout."""
        where = host or self.host
        family = socket.AF_INET6 if ":" in where else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            if source is not None:
                sock.bind((source, 0))
            sock.settimeout(timeout)
            sock.sendto(data, (where, self.port))
            try:
                reply, _ = sock.recvfrom(65535)
            except (TimeoutError, ConnectionError):
                return None
            return reply

    def metrics_text(self, timeout: float = 5.0) -> str:
        """GET /metrics from this server's admin API (no token configured)."""
        import urllib.request

        url = f"http://{LOOPBACK_V4}:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.read().decode()

    def tcp_connect(self, timeout: float = 2.0, *, host: str | None = None) -> socket.socket:
        """A connected TCP socket to the server (caller closes it)."""
        sock = socket.create_connection((host or self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def raw_tcp(self, data: bytes, timeout: float = 2.0) -> bytes | None:
        """Send one raw message framed with its length over a new connection; the reply or None."""
        with self.tcp_connect(timeout) as sock:
            sock.sendall(frame(data))
            return recv_frame(sock, timeout)

    def answers(self, qname: str, rdtype: str | int = "A", **kwargs: Any) -> bool:
        """True when a query gets any reply (used as a liveness probe)."""
        try:
            self.query(qname, rdtype, timeout=kwargs.pop("timeout", 2.0), **kwargs)
        except (dns.exception.DNSException, OSError):
            return False
        return True


# ------------------------------------------------------------------ hand-built wire messages
def encode_name(name: str) -> bytes:
    """Uncompressed wire form of a dotted name (no length checks: tests build bad names too)."""
    out = b""
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii")
        out += bytes([len(raw) & 0xFF]) + raw
    return out + b"\x00"


def build_header(
    qid: int = 0x1234,
    *,
    qr: int = 0,
    opcode: int = 0,
    aa: int = 0,
    tc: int = 0,
    rd: int = 1,
    ra: int = 0,
    rcode: int = 0,
    qdcount: int = 1,
    ancount: int = 0,
    nscount: int = 0,
    arcount: int = 0,
) -> bytes:
    flags = (qr << 15) | (opcode << 11) | (aa << 10) | (tc << 9) | (rd << 8) | (ra << 7) | rcode
    return struct.pack("!HHHHHH", qid, flags, qdcount, ancount, nscount, arcount)


def build_opt(
    payload: int = 1232,
    *,
    ext_rcode: int = 0,
    version: int = 0,
    do: int = 0,
    options: bytes = b"",
    owner: bytes = b"\x00",
    rdlen: int | None = None,
) -> bytes:
    """An OPT pseudo-RR (RFC 6891 section 6.1.2); `rdlen`/`owner` may be wrong on purpose."""
    ttl = (ext_rcode << 24) | (version << 16) | (do << 15)
    length = len(options) if rdlen is None else rdlen
    return owner + struct.pack("!HHIH", 41, payload, ttl, length) + options


def edns_option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def build_query(
    qname: str = "example.test",
    qtype: int = 6,
    qclass: int = 1,
    *,
    qid: int = 0x1234,
    opt: bytes | None = None,
    **header: Any,
) -> bytes:
    """A one-question query, optionally with an OPT RR in the additional section."""
    header.setdefault("arcount", 1 if opt is not None else 0)
    return (
        build_header(qid, **header)
        + encode_name(qname)
        + struct.pack("!HH", qtype, qclass)
        + (opt or b"")
    )


def parse_header(data: bytes) -> dict[str, int]:
    """The fixed 12-octet header of a message as a dict (raises on short data)."""
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    return {
        "id": qid,
        "qr": flags >> 15,
        "opcode": (flags >> 11) & 0xF,
        "aa": (flags >> 10) & 1,
        "tc": (flags >> 9) & 1,
        "rd": (flags >> 8) & 1,
        "ra": (flags >> 7) & 1,
        "z": (flags >> 4) & 7,
        "rcode": flags & 0xF,
        "qdcount": qd,
        "ancount": an,
        "nscount": ns,
        "arcount": ar,
    }

"""A real etcd cluster on loopback for the fleet tests: Debian's `etcd` binary, temp data dirs.

`EtcdCluster(size)` starts `size` etcd processes on free 127.0.0.1 ports (client and peer), waits
(bounded) until the cluster has a leader, and can stop, kill and start each node by its own
process, keeping its data directory, as an operator would. Heartbeat 50 ms and election timeout
500 ms make a cluster elect its leader in well under a second. `Relay` stands between a client
and a node and can be cut like a network partition: nothing is closed, packets stop flowing both
ways, and the client only notices by its own timeouts.
"""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from server_process import free_tcp_port

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Tls:
    """A test CA and the certificates made with it (openssl), for etcd and its clients."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, directory: Path) -> Tls:
        """A CA, a server certificate for 127.0.0.1 and a client certificate with no Common Name
        (etcd's JSON gateway refuses a client certificate that has one: docs/fleet.md)."""
        directory.mkdir(parents=True, exist_ok=True)

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=geodns test CA")  # fmt: skip
        for name, extension in (
            ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
            ("client", "extendedKeyUsage=clientAuth"),
        ):
            (directory / f"{name}.ext").write_text(extension + "\n")
            openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                    "-subj", "/CN=127.0.0.1" if name == "server" else "/O=geodns")  # fmt: skip
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                    "-extfile", f"{name}.ext")  # fmt: skip
        return cls(
            directory / "ca.pem",
            directory / "server.pem",
            directory / "server.key",
            directory / "client.pem",
            directory / "client.key",
        )

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


class EtcdNode:
    """One etcd process of a cluster."""

    def __init__(
        self, name: str, directory: Path, tls: Tls | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.tls = tls
        self.extra = extra
        self.client_port = free_tcp_port()
        self.peer_port = free_tcp_port()
        self.data_dir = directory / name
        self.log_path = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    def start(self, initial_cluster: str) -> None:
        assert ETCD is not None
        command = [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "geodns-test",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-level", "warn",
            *self.extra,
        ]  # fmt: skip
        if self.tls is not None:
            command += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
            ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def healthy(self) -> bool:
        """True when this node answers /health with a leader in its cluster."""
        context = self.tls.client_context() if self.tls else None
        try:
            with urllib.request.urlopen(
                f"{self.endpoint}/health", timeout=0.5, context=context
            ) as response:
                return json.loads(response.read()).get("health") == "true"
        except (OSError, ValueError):
            return False


class EtcdCluster:
    """`size` etcd nodes on loopback; `endpoints` are their client URLs."""

    def __init__(self, size: int = 1, *, tls: bool = False, extra: tuple[str, ...] = ()) -> None:
        if ETCD is None:
            raise RuntimeError("etcd is not installed: apt-get install etcd-server etcd-client")
        self.directory = Path(tempfile.mkdtemp(prefix="geodns-etcd-"))
        self.tls = Tls.make(self.directory / "tls") if tls else None
        self.nodes = [EtcdNode(f"etcd{i}", self.directory, self.tls, extra) for i in range(size)]
        self.initial_cluster = ",".join(f"{n.name}={n.peer_url}" for n in self.nodes)

    @property
    def endpoints(self) -> list[str]:
        return [node.endpoint for node in self.nodes]

    def start(self, *indexes: int, timeout: float = 20.0) -> EtcdCluster:
        """Start the given nodes (default: all) and wait until every running node is healthy."""
        for index in indexes or range(len(self.nodes)):
            if not self.nodes[index].alive():
                self.nodes[index].start(self.initial_cluster)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [node for node in self.nodes if node.alive()]
            if running and all(node.healthy() for node in running):
                return
            time.sleep(0.05)
        logs = "\n".join(n.log_path.read_text(errors="replace")[-2000:] for n in self.nodes)
        raise RuntimeError(f"etcd did not become healthy within {timeout}s:\n{logs}")

    def stop(self, *indexes: int, kill: bool = False) -> None:
        for index in indexes or range(len(self.nodes)):
            self.nodes[index].stop(kill=kill)

    def etcdctl(self, *args: str) -> str:
        """Run etcdctl against the cluster (with the client certificate when there is TLS)."""
        assert ETCDCTL is not None
        tls = []
        if self.tls is not None:
            tls = [f"--cacert={self.tls.ca}", f"--cert={self.tls.client_cert}"]
            tls.append(f"--key={self.tls.client_key}")
        result = subprocess.run(
            [ETCDCTL, "--endpoints", ",".join(self.endpoints), "--dial-timeout", "2s", *tls, *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
        return result.stdout

    def cleanup(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class Relay:
    """A TCP relay from a 127.0.0.1 port to a loopback target that can be partitioned.

    `partition()`: bytes stop flowing both ways on every connection and new connections are
    accepted but go nowhere; nothing is closed, as when a network path drops packets. `heal()`:
    the connections held during the partition are reset (as TCP would after one) and new ones
    flow again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((HOST, 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.partitioned = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def partition(self) -> None:
        self.partitioned.set()

    def heal(self) -> None:
        with self.lock:
            held, self.sockets = self.sockets, []
        for sock in held:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                sock.close()
        self.partitioned.clear()

    def close(self) -> None:
        self.closed.set()
        self.heal()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.sockets.append(client)
            if self.partitioned.is_set():
                continue  # held: accepted, going nowhere
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=1)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets.append(upstream)
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                if self.partitioned.is_set():
                    time.sleep(0.02)  # hold: what was sent stays in the kernel's buffers
                    continue
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except (OSError, ValueError):  # the other pump or heal() closed a socket
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.close()

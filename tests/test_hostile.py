"""Safe on the open internet (issue 12): files changed under a running server, a second
instance on the same port, a fast stop, response rate limiting and DNS cookies, on a real server
over loopback. What the rate limiter and the cookies decide is asked in-process with the clock
stopped (a burst's verdicts do not depend on the machine's speed); a real server shows a flood
limited over UDP and not over TCP, and dig's view of its cookie.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from inprocess import InProcessServer
from mmdb_factory import city_record, write_city_db
from server_process import GeodnsServer, free_port, free_tcp_port

ZONE = "hostile.test"
SITES = {
    "jkt": {"kind": "pop", "location": {"lat": -6.2, "lon": 106.8}, "addresses": ["192.0.2.1"]},
    "fra": {"kind": "pop", "location": {"lat": 50.1, "lon": 8.7}, "addresses": ["192.0.2.4"]},
}
JAKARTA_HERE = [("36.64.0.0/16", city_record("ID", "AS", -6.2, 106.8, "Jakarta"))]
FRANKFURT_HERE = [("36.64.0.0/16", city_record("DE", "EU", 50.1, 8.7, "Frankfurt"))]
ZONE_DATA = {
    "": {"type": "NS", "value": "ns1.hostile.test."},
    "ns1": {"type": "A", "value": "192.0.2.53"},
    "www": {
        "type": "A",
        "ttl": 30,
        "values": ["192.0.2.1", "192.0.2.4"],
        "octodns": {"geodns": {"nearest": True}},
    },
}


def ask(server: GeodnsServer, subnet: str, timeout: float = 2.0) -> list[str]:
    query = dns.message.make_query(
        f"www.{ZONE}", "A", use_edns=0, options=[dns.edns.ECSOption.from_text(subnet)]
    )
    reply = dns.query.udp(query, server.host, port=server.port, timeout=timeout)
    return [rr.address for rrset in reply.answer for rr in rrset]


def wait_for(check, seconds: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())


def test_a_database_overwritten_in_place_never_kills_the_server(tmp_path: Path) -> None:
    """issue 12.1: `cp other.mmdb the-file` (a truncated copy first) under a running server:
    it keeps answering from the database it read, then takes the good copy."""
    good = write_city_db(tmp_path / "jakarta.mmdb", JAKARTA_HERE)
    other = write_city_db(tmp_path / "frankfurt.mmdb", FRANKFURT_HERE)
    live = tmp_path / "live.mmdb"
    shutil.copyfile(good, live)
    config = {"sites": SITES, "geoip": {"database": str(live)}}
    with GeodnsServer(config, {ZONE: ZONE_DATA}) as server:
        assert ask(server, "36.64.1.0/24") == ["192.0.2.1"]
        data = other.read_bytes()
        with open(live, "r+b") as handle:  # in place, as cp does: same inode, truncated
            handle.truncate(0)
            handle.write(data[: len(data) // 3])
        for third in range(2, 40):  # keeps answering while the file is garbage
            assert ask(server, f"36.64.{third}.0/24") == ["192.0.2.1"]
            time.sleep(0.05)
        assert server.proc is not None and server.proc.poll() is None
        with open(live, "r+b") as handle:  # now the whole copy, still in place
            handle.truncate(0)
            handle.write(data)
        assert wait_for(lambda: ask(server, "36.64.99.0/24") == ["192.0.2.4"], 10)
        tmp = tmp_path / "next.mmdb"  # and atomically, as geoipupdate does
        shutil.copyfile(good, tmp)
        tmp.replace(live)
        assert wait_for(lambda: ask(server, "36.64.100.0/24") == ["192.0.2.1"], 10)
        log = server.stderr_path.read_text()
        assert "reload_failed" in log and "Traceback" not in log


def test_a_second_instance_on_a_held_port_refuses_to_start(tmp_path: Path) -> None:
    """issue 12.8: with SO_REUSEPORT (workers > 1) a second server would share the port and
    split the traffic. It must refuse, naming the address, the protocol and the port; the
    worker it forked at start ends with it, quietly (its output closed: run() returns)."""
    port = free_port()
    config = {"port": port, "listen": ["127.0.0.1"], "workers": 2, "sites": SITES}
    with GeodnsServer(config, {ZONE: ZONE_DATA}):
        second = GeodnsServer(dict(config), {ZONE: ZONE_DATA})
        try:
            result = subprocess.run(second.command(), capture_output=True, text=True, timeout=60)
        finally:
            second.cleanup()
        assert result.returncode != 0
        assert f"127.0.0.1 port {port} (udp) is already in use" in result.stderr
        assert "Traceback" not in result.stderr


def test_an_admin_port_clash_names_the_admin_address() -> None:
    admin_port = free_tcp_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", admin_port))
        holder.listen()
        server = GeodnsServer(
            {"admin": {"listen": f"127.0.0.1:{admin_port}"}, "sites": SITES}, {ZONE: ZONE_DATA}
        )
        try:
            result = subprocess.run(server.command(), capture_output=True, text=True, timeout=60)
        finally:
            server.cleanup()
    assert result.returncode != 0
    assert f"127.0.0.1 port {admin_port} (admin API, tcp)" in result.stderr


def test_sigterm_stops_within_a_couple_of_seconds_with_connections_open() -> None:
    """issue 12.9: open DNS-over-TCP and admin keep-alive connections must not hold a stop."""
    server = GeodnsServer({"sites": SITES}, {ZONE: ZONE_DATA})
    server.start()
    try:
        dns_tcp = server.tcp_connect()
        admin = socket.create_connection(("127.0.0.1", server.admin_port or 0))
        admin.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        time.sleep(0.2)
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=15)
        elapsed = time.monotonic() - started
        assert server.proc.returncode == 0
        # a stop's own work takes well under a second and its grace is STOP_GRACE + 1 = 2 s; the
        # holds this guards against are far longer (the TCP idle timeout, 10 s; aiohttp's
        # keep-alive and shutdown timeouts, 60 s and more), so the bound leaves room for a
        # loaded machine and still tells them apart
        assert elapsed < 8.0, f"stopping took {elapsed:.1f} s"
        for sock in (dns_tcp, admin):
            sock.close()
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        server.cleanup()


# -- response rate limiting and cookies --------------------------------------------------------

LIMITED = {"rrl": {"rate": 5, "slip": 2, "exempt": []}, "sites": SITES}
NOW = 1_700_000_000.0  # the in-process server's clock: a flood takes no time, whatever the load


@pytest.fixture(scope="module")
def limited() -> GeodnsServer:
    with GeodnsServer(LIMITED, {ZONE: ZONE_DATA}) as server:
        yield server


@pytest.fixture(scope="module")
def limited_in_process(tmp_path_factory: pytest.TempPathFactory) -> InProcessServer:
    """The limited server's config answered in-process, with its clock stopped: the limiter
    sees every query of a burst at the same instant (at a real server, how many get through
    depends on how fast the machine sends them)."""
    return InProcessServer(
        tmp_path_factory.mktemp("limited"), LIMITED, {ZONE: ZONE_DATA}, clock=lambda: NOW
    )


def _burst(server: InProcessServer, count: int, options: list | None = None) -> list[bytes | None]:
    """`count` identical queries over UDP, one after the other; the replies (None: dropped)."""
    query = dns.message.make_query(f"ns1.{ZONE}", "A", use_edns=0, options=options or [])
    replies: list[bytes | None] = []
    for number in range(count):
        query.id = number
        replies.append(server.raw_udp(query.to_wire(), timeout=0.3))
    return replies


def _limited_counts(server: InProcessServer) -> dict[str, float]:
    """geodns_rrl_responses_total by action, from /metrics' text."""
    counts = {}
    for line in server.metrics_text().splitlines():
        if line.startswith("geodns_rrl_responses_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('action="')[1].split('"')[0]] = float(value)
    return counts


def test_response_rate_limiting_drops_and_slips_a_flood(
    limited_in_process: InProcessServer,
) -> None:
    before = _limited_counts(limited_in_process)
    replies = _burst(limited_in_process, 60)
    answered = [r for r in replies if r is not None and not r[2] & 0x02]
    truncated = [r for r in replies if r is not None and r[2] & 0x02]
    dropped = replies.count(None)
    assert 5 <= len(answered) <= 20, len(answered)
    assert truncated and dropped, (len(truncated), dropped)
    assert abs(len(truncated) - dropped) <= 3  # slip 2: every other limited response
    after = _limited_counts(limited_in_process)  # /metrics counts each one it limited
    assert after["dropped"] - before.get("dropped", 0.0) == dropped, (before, after)
    assert after["slipped"] - before.get("slipped", 0.0) == len(truncated), (before, after)
    # TCP is never limited
    reply = limited_in_process.query(f"ns1.{ZONE}", "A", tcp=True)
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer


def test_a_real_server_limits_a_udp_flood_but_never_tcp(limited: GeodnsServer) -> None:
    """30 datagrams sent at once, then read: the limit is 5 a second, so a few are answered,
    the others dropped or (every other one) sent back truncated."""
    query = dns.message.make_query(f"ns1.{ZONE}", "A", use_edns=0)
    replies: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for number in range(30):
            query.id = number
            sock.sendto(query.to_wire(), (limited.host, limited.port))
        sock.settimeout(5.0)  # the first reply; then the rest come together
        with contextlib.suppress(TimeoutError):
            while len(replies) < 30:
                replies.append(sock.recv(4096))
                sock.settimeout(1.0)
    answered = [r for r in replies if not r[2] & 0x02]
    truncated = [r for r in replies if r[2] & 0x02]
    assert answered and truncated, (len(answered), len(truncated))
    assert len(replies) < 30, "nothing was dropped"
    assert 'geodns_rrl_responses_total{action="dropped"}' in limited.metrics_text()
    reply = dns.query.tcp(query, limited.host, port=limited.port, timeout=2)
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer


COOKIE = 10


def _cookie_of(reply: dns.message.Message) -> bytes | None:
    for option in reply.options:
        if option.otype == COOKIE:
            return option.to_wire()
    return None


def test_a_client_cookie_gets_a_server_cookie_that_lets_it_through_rrl(
    limited_in_process: InProcessServer,
) -> None:
    client = bytes.fromhex("0102030405060708")
    query = dns.message.make_query(
        f"www.{ZONE}", "A", use_edns=0, options=[dns.edns.GenericOption(COOKIE, client)]
    )
    reply = limited_in_process.send(query)
    cookie = _cookie_of(reply)
    assert cookie is not None and cookie[:8] == client and len(cookie) == 24
    assert cookie[8] == 1  # RFC 9018 version 1
    with_server = [dns.edns.GenericOption(COOKIE, cookie)]
    replies = _burst(limited_in_process, 40, with_server)
    assert all(r is not None and not r[2] & 0x02 for r in replies), "a valid cookie was limited"
    # a wrong server cookie is not trusted: answered with a fresh one, and limited again
    forged = [dns.edns.GenericOption(COOKIE, cookie[:-1] + bytes([cookie[-1] ^ 1]))]
    replies = _burst(limited_in_process, 40, forged)
    rcodes = {dns.message.from_wire(r).rcode() for r in replies if r is not None}
    assert dns.rcode.BADCOOKIE in rcodes  # limited clients with a cookie are told to use ours


def test_dig_shows_a_good_cookie(limited: GeodnsServer) -> None:
    if shutil.which("dig") is None:
        pytest.skip("dig is not installed")
    out = subprocess.run(
        ["dig", f"@{limited.host}", "-p", str(limited.port), f"www.{ZONE}", "+cookie"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert "COOKIE:" in out and "(good)" in out, out


@pytest.mark.parametrize("length", [7, 9, 15, 41])
def test_a_malformed_cookie_is_formerr(limited_in_process: InProcessServer, length: int) -> None:
    query = dns.message.make_query(
        f"www.{ZONE}", "A", use_edns=0, options=[dns.edns.GenericOption(COOKIE, bytes(length))]
    )
    reply = limited_in_process.send(query)
    assert reply.rcode() == dns.rcode.FORMERR


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(child) for child in text.split()}


def _workers(pid: int) -> set[int]:
    """The worker processes of a server: forked at start (named geodns-workerN) or started
    again (`python -m geodns.daemon.workers`); a map or index builder child is not one."""
    found = set()
    for child in _children(pid):
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{child}/comm").read_text()
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            if name.startswith("geodns-worker") or b"geodns.daemon.workers" in command:
                found.add(child)
    return found


@contextlib.contextmanager
def _two_workers() -> Iterator[tuple[GeodnsServer, int, int]]:
    """A `workers: 2` server once started: (the server, its main process, its one worker)."""
    config = {"workers": 2, "sites": SITES, "rrl": {"enabled": False}}
    with GeodnsServer(config, {ZONE: ZONE_DATA}) as server:
        assert server.proc is not None
        main = server.proc.pid
        assert wait_for(lambda: '"started"' in server.stderr_path.read_text(), 30)
        (worker,) = _workers(main)
        yield server, main, worker


def _answers_from_many_ports(server: GeodnsServer, count: int, timeout: float) -> list[list[str]]:
    """Ask `count` times, each from a new source port (SO_REUSEPORT spreads them over the
    processes); the answers that came back within `timeout` each."""
    got = []
    query = dns.message.make_query(
        f"www.{ZONE}", "A", use_edns=0, options=[dns.edns.ECSOption.from_text("36.64.1.0/24")]
    )
    for number in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            query.id = number
            sock.sendto(query.to_wire(), (server.host, server.port))
            with contextlib.suppress(TimeoutError):
                reply = dns.message.from_wire(sock.recv(4096))
                got.append([rr.address for rrset in reply.answer for rr in rrset])
    return got


def test_a_restarted_worker_follows_drains_from_its_first_answer() -> None:
    """A worker started again is handed the health view with its cookie secret and applies it
    before it binds: it never answers a drained site, even when the main process is too busy
    to send it anything more (here: stopped with SIGSTOP right after starting it, so every
    answer below comes from the new worker alone)."""
    with _two_workers() as (server, main, worker):
        assert server.cli("drain", "jkt").returncode == 0
        os.kill(worker, signal.SIGKILL)
        assert wait_for(lambda: "worker_restarted" in server.stderr_path.read_text(), 10, 0.01)
        server.send_signal(signal.SIGSTOP)
        try:
            got: list[list[str]] = []
            deadline = time.monotonic() + 30
            while len(got) < 5 and time.monotonic() < deadline:  # until the new worker answers
                got += _answers_from_many_ports(server, 20, 0.1)
            assert len(got) >= 5, "the restarted worker never answered"
            assert all(answer == ["192.0.2.4"] for answer in got), got
        finally:
            server.send_signal(signal.SIGCONT)


def _anonymous_shared_kb(pid: int) -> int:
    """kB of the process's anonymous memory (heap and unnamed mappings) that another process
    maps too, written before they parted (Shared_Dirty): what a fork left shared."""
    total, anonymous = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
            anonymous = len(fields) < 6 or fields[5] == "[heap]"
        elif fields[0] == "Shared_Dirty:" and anonymous:
            total += int(fields[1])
    return total


def test_workers_are_forked_at_start_and_share_the_interpreter_with_the_main_process() -> None:
    """The worker of `workers: 2` is forked by the main process before it loads anything: named
    geodns-worker1, the main process its parent, it shares with it the memory of the
    interpreter and the modules imported before the fork that neither wrote since (about 6 MB
    measured; a started worker, a new interpreter, shares none of its anonymous memory). It
    answers as a started one does; when it dies, it is started again as a new interpreter
    (the main process then runs an event loop and threads: it forks no more)."""
    with _two_workers() as (server, main, worker):
        assert Path(f"/proc/{worker}/comm").read_text().strip() == "geodns-worker1"
        assert _anonymous_shared_kb(worker) >= 2048, _anonymous_shared_kb(worker)
        got = _answers_from_many_ports(server, 40, 2.0)
        assert len(got) == 40 and all(answer == ["192.0.2.1"] for answer in got), got
        os.kill(worker, signal.SIGKILL)
        assert wait_for(lambda: len(_workers(main)) == 1 and worker not in _workers(main), 20)
        (restarted,) = _workers(main)
        command = Path(f"/proc/{restarted}/cmdline").read_bytes()
        assert b"geodns.daemon.workers" in command
        assert "Traceback" not in server.stderr_path.read_text()


POOL_SCRIPT = """
import asyncio, os, signal, sys
from pathlib import Path
from geodns.daemon import workers

config, entry = Path(sys.argv[1]), "geodns.daemon.app:run_worker"
real_fork = os.fork
os.fork = lambda: (_ for _ in ()).throw(BlockingIOError(11, "Resource temporarily unavailable"))
assert workers.fork_workers(2, entry, config) == {}  # a pids limit: nothing forked, no error
os.fork = real_fork
forked = workers.fork_workers(2, entry, config)
((process, _),) = forked.values()
os.kill(process.pid, signal.SIGKILL)  # gone before the pool takes it
assert process.wait(timeout=10) == -signal.SIGKILL

async def main():
    pool = workers.WorkerPool(config, 2, lambda *_: None, entry, None, forked=forked)
    await pool.start(timeout=60)
    print("ready", type(pool.processes[1]).__name__, flush=True)
    await pool.stop()

asyncio.run(main())
"""


def test_a_forked_worker_lost_before_the_pool_takes_it_is_started_afresh() -> None:
    """A worker forked at start can end before the main process is ready to take it (a stop's
    SIGTERM to the whole process group, the OOM killer): the pool then starts that worker as
    a new interpreter instead of failing the start on the dead one's pipe. A fork refused (a
    pids limit in a container) forks nothing and raises nothing: the pool starts them all.
    Run in a process of its own: a process with threads (pytest's) forks no workers."""
    server = GeodnsServer({"workers": 2, "sites": SITES}, {ZONE: ZONE_DATA})
    try:
        result = subprocess.run(
            [sys.executable, "-c", POOL_SCRIPT, str(server.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.cleanup()
    assert result.returncode == 0, result.stderr
    assert "ready Popen" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_worker_that_dies_is_started_again_and_follows_drains() -> None:
    """A worker killed (SIGBUS in issue 12.1, the OOM killer elsewhere) is reaped and started
    again, and is given the current health view: a drain made before it came back applies."""
    with _two_workers() as (server, main, worker):
        assert server.cli("drain", "jkt").returncode == 0
        os.kill(worker, signal.SIGKILL)
        assert wait_for(lambda: len(_workers(main)) == 1 and worker not in _workers(main), 20)
        assert wait_for(lambda: "worker_restarted" in server.stderr_path.read_text(), 10)
        time.sleep(1.0)  # likely bound by now; it applied the view it was handed before binding
        for source in range(2, 40):  # many source ports: the kernel spreads them over both
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2)
                query = dns.message.make_query(
                    f"www.{ZONE}",
                    "A",
                    use_edns=0,
                    options=[dns.edns.ECSOption.from_text("36.64.1.0/24")],
                )
                query.id = source
                sock.sendto(query.to_wire(), (server.host, server.port))
                reply = dns.message.from_wire(sock.recv(4096))
                assert [rr.address for rrset in reply.answer for rr in rrset] == ["192.0.2.4"]

"""A fleet member on an etcd that wants TLS, a client certificate and a password, as docs/fleet.md
sets it up: a real etcd (Debian's) with certificates made by openssl, users and roles made with
etcdctl, and a real geodns member. Simple tokens live 1 s here and the member renews its lease
every 2 s, so it must authenticate again on its own between renewals.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest
from etcd_process import ETCD, EtcdCluster
from server_process import GeodnsServer

from geodns.fleet.etcd import EtcdClient, EtcdError

pytestmark = pytest.mark.skipif(ETCD is None, reason="etcd is not installed (etcd-server)")

PASSWORD = "geodns-test-password"


def admin(server: GeodnsServer, method: str, path: str, body: object = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.admin_port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_tls_client_certificate_and_password_with_expiring_tokens(tmp_path: Path) -> None:
    with EtcdCluster(1, tls=True, extra=("--auth-token-ttl", "1")) as etcd:
        assert etcd.tls is not None
        for command in (  # docs/fleet.md, "Users and roles"
            ("user", "add", "root", "--new-user-password=root-test-password"),
            ("user", "grant-role", "root", "root"),
            ("role", "add", "geodns"),
            ("role", "grant-permission", "geodns", "--prefix=true", "readwrite", "/geodns/"),
            ("user", "add", "geodns", f"--new-user-password={PASSWORD}"),
            ("user", "grant-role", "geodns", "geodns"),
            ("auth", "enable"),
        ):
            etcd.etcdctl(*command)
        (tmp_path / "etcd-password").write_text(PASSWORD + "\n")
        config = {
            "sites": {
                "fra": {
                    "kind": "pop",
                    "location": {"lat": 50, "lon": 8},
                    "addresses": ["192.0.2.4"],
                }
            },
            "fleet": {
                "member": "ns1",
                "endpoints": etcd.endpoints,
                "tls": {
                    "ca_file": str(etcd.tls.ca),
                    "cert_file": str(etcd.tls.client_cert),
                    "key_file": str(etcd.tls.client_key),
                },
                "username": "geodns",
                "password_file": "etcd-password",
                "lease_ttl": 6,
                "timeout": 1,
            },
        }
        zones = {"secure.test": {"": {"type": "NS", "value": "ns1.secure.test."}}}
        with GeodnsServer(config, zones, workdir=tmp_path, admin_token="fleet-token") as server:
            deadline = time.monotonic() + 10
            while not admin(server, "GET", "/status")[1]["fleet"]["etcd"]["connected"]:
                assert time.monotonic() < deadline, server.stderr_text()[-3000:]
                time.sleep(0.05)
            assert admin(server, "POST", "/drain", {"site": "fra"})[0] == 200
            # the token expires unused between two lease renewals (every 2 s): each renewal and
            # the undrain must authenticate again by themselves, without losing the connection
            time.sleep(2.5)
            code, body = admin(server, "POST", "/undrain", {"site": "fra"})
            assert code == 200 and body["was_drained"] is True
            keys = etcd.etcdctl(
                "--user", "geodns:" + PASSWORD, "get", "/geodns/", "--prefix", "--keys-only"
            )
            assert "/geodns/members/ns1" in keys.split()
            assert "fleet_unreachable" not in server.stderr_text(), server.stderr_text()[-3000:]

        async def refused() -> list[str]:
            errors = []
            context = etcd.tls.client_context()
            for password, key in (("wrong", "/geodns/x"), (PASSWORD, "/elsewhere")):
                client = EtcdClient(
                    etcd.endpoints, ssl_context=context, username="geodns", password=password
                )
                try:
                    await client.put(key, "1")
                except EtcdError as exc:
                    errors.append(str(exc))
                finally:
                    await client.close()
            return errors

        wrong_password, outside_prefix = asyncio.run(refused())
        assert "authentication failed" in wrong_password
        assert "permission denied" in outside_prefix

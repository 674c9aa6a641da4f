"""Authentication through the real proxyd, in front of the demo HTTP backend's /echo (which
answers with the request it got, so a test sees what reached the server): Basic against
htpasswd files made by Debian's `htpasswd` (and an argon2 line made by argon2-cffi), API keys
from a header and the query, JWTs signed here (RS256, ES256, EdDSA) against PEM files and
against a JWKS served by a real HTTP server whose keys rotate, and forward auth against a
real auth service (tests/integration/auth_peers.py), up, slow and down."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import argon2
import pytest
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey
from prometheus_client.parser import text_string_to_metric_families

from .harness import Backend, ProcessList, Proxyd, free_port, wait_until

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent


# Helpers.


class Answer:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def echo(self) -> dict[str, Any]:
        """The backend's /echo of the request it got."""
        assert self.status == 200, (self.status, self.body[:300])
        return json.loads(self.body)

    def sent(self, name: str) -> list[str]:
        """The values of field `name` that reached the backend."""
        return [v for k, v in self.echo()["headers"] if k.lower() == name.lower()]


def request(
    port: int, target: str = "/echo", headers: dict[str, str] | None = None, timeout: float = 10
) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


def metric(admin: int, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def start_peer(processes: ProcessList, mode: str, *args: str) -> Backend:
    process = processes.start(f"auth-{mode}", [sys.executable, HERE / "auth_peers.py", mode, *args])
    match = process.wait_for_output(r"PORT (\d+)\n", 15)
    return Backend(process, int(match.group(1)))


def listener(name: str, port: int, auth: str) -> str:
    return (
        f"[http {name}]\nlisten = tcp:{port}:interface=127.0.0.1\nauth = {auth}\n"
        "routes =\n    path / -> pool web\n\n"
    )


def head(backend: Backend, admin: int) -> str:
    return (
        f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n\n"
        f"[pool web]\nservers = {backend.address}\n\n"
    )


# Basic.


def htpasswd(path: Path, options: str, cost: int, user: str, password: str) -> None:
    argv = ["htpasswd", options, "-C", str(cost), str(path), user, password]
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def users(tmp_path: Path) -> Path:
    """alice (bcrypt, `htpasswd -B`), bob (bcrypt at cost 12, slow enough for a burst to
    overlap) and carol (argon2id, which Debian's htpasswd cannot write)."""
    path = tmp_path / "users.htpasswd"
    htpasswd(path, "-cbB", 5, "alice", "pw-alice")
    htpasswd(path, "-bB", 12, "bob", "pw-bob")
    with path.open("a") as f:
        f.write(f"carol:{argon2.PasswordHasher().hash('pw-carol')}\n")
    return path


def basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_with_htpasswd_files(
    http_backend: Backend, proxyd: Callable[..., Proxyd], users: Path
) -> None:
    backend = http_backend
    port, admin = free_port(), free_port()
    proxy = proxyd(
        head(backend, admin)
        + f"[auth staff]\ntype = basic\nusers = {users}\nrealm = Staff only\n\n"
        + listener("front", port, "staff")
    )

    missing = request(port)
    assert missing.status == 401
    assert missing.header("WWW-Authenticate") == ['Basic realm="Staff only", charset="UTF-8"']

    granted = request(port, headers={**basic("alice", "pw-alice"), "X-Auth-User": "root"})
    assert granted.sent("X-Auth-User") == ["alice"]
    assert request(port, headers=basic("carol", "pw-carol")).sent("X-Auth-User") == ["carol"]

    wrong = request(port, headers=basic("alice", "pw-bob"))
    unknown = request(port, headers=basic("mallory", "pw-alice"))
    assert wrong.status == unknown.status == 401
    assert wrong.body == unknown.body
    assert wrong.header("WWW-Authenticate") == unknown.header("WWW-Authenticate")

    checks = metric(admin, "proxyd_auth_password_checks_total", listener="front")
    assert checks == 4  # alice, carol, the wrong password, the unknown user

    # A burst of the same credentials costs one hash (bob's, at cost 12), however many
    # requests come while it runs or after it.
    barrier = threading.Barrier(12)
    statuses: list[int] = []

    def burst() -> None:
        barrier.wait()
        statuses.append(request(port, headers=basic("bob", "pw-bob"), timeout=30).status)

    threads = [threading.Thread(target=burst) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [200] * 12
    assert request(port, headers=basic("bob", "pw-bob")).status == 200
    assert metric(admin, "proxyd_auth_password_checks_total", listener="front") == checks + 1

    failures = {
        reason: metric(
            admin, "proxyd_auth_failures_total", listener="front", method="basic", reason=reason
        )
        for reason in ("missing", "bad_password", "unknown_user")
    }
    assert failures == {"missing": 1, "bad_password": 1, "unknown_user": 1}
    log = proxy.log()
    assert "pw-" not in log and "mallory" not in log
    records = proxy.wait_access_records(18)
    assert [r.get("auth_user") for r in records[:3]] == [None, "alice", "carol"]


# API keys.


def test_api_keys_from_a_header_and_the_query_never_reach_the_backend(
    http_backend: Backend, proxyd: Callable[..., Proxyd], tmp_path: Path
) -> None:
    backend = http_backend
    keys = tmp_path / "keys.txt"
    keys.write_text(
        "# name sha256\n"
        f"deploy {hashlib.sha256(b'k-deploy-0123456789').hexdigest()}\n"
        f"ci {hashlib.sha256(b'k-ci-0123456789').hexdigest().upper()}\n"
    )
    port, admin = free_port(), free_port()
    proxy = proxyd(
        head(backend, admin)
        + f"[auth robots]\ntype = api_key\nkeys = {keys}\nquery_param = api_key\n\n"
        + listener("api", port, "robots")
    )
    by_header = request(port, headers={"X-API-Key": "k-deploy-0123456789", "X-Auth-Key": "root"})
    echo = by_header.echo()
    assert by_header.sent("X-Auth-Key") == ["deploy"]
    assert by_header.sent("X-API-Key") == []
    by_query = request(port, "/echo?a=1&api_key=k-ci-0123456789&b=2")
    assert by_query.echo()["target"] == "/echo?a=1&b=2"
    assert by_query.sent("X-Auth-Key") == ["ci"]
    refused = request(port, "/echo?api_key=k-guess-0123456789")
    assert refused.status == 401
    assert refused.header("WWW-Authenticate") == ['ApiKey realm="robots"']
    assert request(port).status == 401
    assert "k-deploy" not in json.dumps(echo)

    records = proxy.wait_access_records(4)
    assert [r["uri"] for r in records] == ["/echo", "/echo?a=1&b=2", "/echo", "/echo"]
    assert [r.get("auth_user") for r in records] == ["deploy", "ci", None, None]
    everything = proxy.log() + proxy.access_log.read_text()
    assert "k-ci-" not in everything and "k-guess" not in everything
    assert metric(admin, "proxyd_auth_failures_total", method="api_key") == 2


# JWT.


def sign(key: Any, alg: str, **claims: Any) -> str:
    payload = {
        "sub": "alice",
        "iss": "https://idp.test/",
        "aud": "proxyd",
        "exp": int(time.time()) + 300,
        "email": "alice@example.com",
        **claims,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # EdDSA, deprecated by RFC 9864
        return jwt.encode({"alg": alg, "kid": key.kid}, payload, key, [alg])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_jwks(path: Path, *keys: Any) -> None:
    """Replace the JWKS document at once (the server never serves half of one)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"keys": [key.as_dict(private=False) for key in keys]}))
    os.replace(temporary, path)


def test_jwt_from_pem_files_and_a_rotating_jwks(
    http_backend: Backend,
    proxyd: Callable[..., Proxyd],
    processes: ProcessList,
    tmp_path: Path,
) -> None:
    backend = http_backend
    rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    ec = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    ed = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
    pems = []
    for key in (rsa, ec, ed):
        pem = tmp_path / f"{key.kid}.pem"
        pem.write_bytes(key.as_pem(private=False))
        pems.append(pem)
    jwks_dir = tmp_path / "jwks"
    jwks_dir.mkdir()
    jwks = jwks_dir / "jwks.json"
    rotated = ECKey.generate_key("P-256", parameters={"kid": "ec-2"})
    write_jwks(jwks, rsa)
    issuer = start_peer(processes, "files", str(jwks_dir))

    pem_port, jwks_port, admin = free_port(), free_port(), free_port()
    key_lines = "".join(f"    {pem}\n" for pem in pems)
    common = (
        "issuer = https://idp.test/\naudience = proxyd\n"
        "claims =\n    sub X-Auth-User\n    email X-Auth-Email\n"
    )
    proxyd(
        head(backend, admin)
        + f"[auth pem]\ntype = jwt\nalgorithms = RS256 ES256 EdDSA\nkeys =\n{key_lines}{common}\n"
        + f"[auth idp]\ntype = jwt\nalgorithms = RS256 ES256\n"
        f"jwks = http://{issuer.address}/jwks.json\njwks_min_refresh = 1s\n{common}\n"
        + listener("pem", pem_port, "pem")
        + listener("idp", jwks_port, "idp")
    )

    for key, alg in ((rsa, "RS256"), (ec, "ES256"), (ed, "EdDSA")):
        answer = request(pem_port, headers={**bearer(sign(key, alg)), "X-Auth-User": "root"})
        assert answer.sent("X-Auth-User") == ["alice"], alg
        assert answer.sent("X-Auth-Email") == ["alice@example.com"]
    expired = request(pem_port, headers=bearer(sign(rsa, "RS256", exp=int(time.time()) - 60)))
    assert expired.status == 401
    assert expired.header("WWW-Authenticate") == [
        'Bearer realm="pem", error="invalid_token", error_description="The token has expired"'
    ]
    assert request(pem_port).header("WWW-Authenticate") == ['Bearer realm="pem"']

    # The JWKS: the issuer's key now, a key it has not published yet, then its rotation.
    assert request(jwks_port, headers=bearer(sign(rsa, "RS256"))).status == 200
    assert request(jwks_port, headers=bearer(sign(rotated, "ES256"))).status == 401
    write_jwks(jwks, rotated)
    wait_until(
        lambda: request(jwks_port, headers=bearer(sign(rotated, "ES256"))).status == 200,
        15,
        "a token of the new key to pass once the JWKS has it",
    )
    wait_until(
        lambda: request(jwks_port, headers=bearer(sign(rsa, "RS256"))).status == 401,
        15,
        "a token of the retired key to be refused once the JWKS dropped it",
    )
    assert metric(admin, "proxyd_auth_failures_total", method="jwt", reason="unknown_kid") >= 2


# Forward auth.


def test_forward_auth_against_a_real_auth_service(
    http_backend: Backend,
    proxyd: Callable[..., Proxyd],
    processes: ProcessList,
) -> None:
    backend = http_backend
    service = start_peer(processes, "forward-auth")
    gate, slow, down, cached, admin = (free_port() for _ in range(5))
    copy = "copy_headers = X-Auth-User X-Auth-Groups X-Auth-Uri X-Auth-Method X-Auth-For\n"
    closed = free_port()  # nothing listens there
    proxy = proxyd(
        head(backend, admin)
        + f"[auth gate]\ntype = forward\nurl = http://{service.address}/verify\n{copy}\n"
        + f"[auth slow]\ntype = forward\nurl = http://{service.address}/slow\ntimeout = 500ms\n\n"
        + f"[auth down]\ntype = forward\nurl = http://127.0.0.1:{closed}/verify\n\n"
        + f"[auth cached]\ntype = forward\nurl = http://{service.address}/verify\n{copy}"
        "cache_time = 1m\ncache_key = Authorization\n\n"
        + listener("gate", gate, "gate")
        + listener("slow", slow, "slow")
        + listener("down", down, "down")
        + listener("cached", cached, "cached")
    )

    granted = request(gate, "/echo?x=1", {**bearer("good-dave"), "X-Auth-User": "root"})
    assert granted.sent("X-Auth-User") == ["dave"]
    assert granted.sent("X-Auth-Groups") == ["staff"]
    assert granted.sent("X-Auth-Uri") == ["/echo?x=1"]
    assert granted.sent("X-Auth-Method") == ["GET"]
    assert granted.sent("X-Auth-For") == ["127.0.0.1"]

    refused = request(gate, headers=bearer("bad"))
    assert refused.status == 401
    assert refused.header("WWW-Authenticate") == ['Bearer realm="gate"']
    assert refused.header("Content-Type") == ["application/json"]
    assert refused.header("X-Internal") == []
    assert json.loads(refused.body) == {"error": "bad token"}

    login = request(gate, "/echo?y=2")
    assert login.status == 302
    assert login.header("Location") == ["/login?rd=%2Fecho%3Fy%3D2"]

    started = time.monotonic()
    assert request(slow, headers=bearer("good-dave")).status == 503
    assert 0.4 < time.monotonic() - started < 5  # the 500ms timeout, not a hang
    started = time.monotonic()
    assert request(down, headers=bearer("good-dave")).status == 503
    assert time.monotonic() - started < 5

    def hits() -> int:
        with urllib.request.urlopen(f"http://{service.address}/hits", timeout=10) as answer:
            return int(answer.read())

    before = hits()
    for _ in range(5):
        assert request(cached, headers=bearer("good-erin")).sent("X-Auth-User") == ["erin"]
    assert hits() == before + 1
    assert request(cached, headers=bearer("good-fred")).sent("X-Auth-User") == ["fred"]
    assert hits() == before + 2

    for listener_name, reason in (
        ("gate", "unauthorized"),
        ("gate", "denied"),
        ("slow", "timeout"),
        ("down", "unavailable"),
    ):
        count = metric(
            admin,
            "proxyd_auth_failures_total",
            listener=listener_name,
            method="forward",
            reason=reason,
        )
        assert count == 1, (listener_name, reason)
    assert "good-dave" not in proxy.log()


# Reloads.


def test_reloads_leave_no_jwks_timer_nor_thread_behind(
    http_backend: Backend,
    proxyd: Callable[..., Proxyd],
    processes: ProcessList,
    tmp_path: Path,
    users: Path,
) -> None:
    backend = http_backend
    rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    jwks_dir = tmp_path / "jwks"
    jwks_dir.mkdir()
    write_jwks(jwks_dir / "jwks.json", rsa)
    issuer = start_peer(processes, "files", str(jwks_dir))
    basic_port, jwt_port, admin = free_port(), free_port(), free_port()
    proxy = proxyd(
        head(backend, admin)
        + f"[auth staff]\ntype = basic\nusers = {users}\n\n"
        + "[auth idp]\ntype = jwt\nalgorithms = RS256\n"
        f"jwks = http://{issuer.address}/jwks.json\njwks_refresh = 1s\njwks_min_refresh = 1s\n"
        "audience = proxyd\n\n"
        + listener("staff", basic_port, "staff")
        + listener("idp", jwt_port, "idp")
    )
    token = bearer(sign(rsa, "RS256"))

    def fetches() -> int:
        with urllib.request.urlopen(f"http://{issuer.address}/hits/jwks.json") as answer:
            return int(answer.read())

    def threads() -> int:
        return len(os.listdir(f"/proc/{proxy.pid}/task"))

    assert request(basic_port, headers=basic("alice", "pw-alice")).status == 200
    assert request(basic_port, headers=basic("carol", "pw-carol")).status == 200
    assert request(jwt_port, headers=token).status == 200
    before = threads()
    for generation in (2, 3, 4):
        start_at = proxy.log_offset()
        proxy.process.signal_group(signal.SIGHUP)
        proxy.wait_for_log(rf"reloaded .*: generation {generation};", start=start_at)
        assert request(basic_port, headers=basic("alice", "pw-alice")).status == 200
        assert request(jwt_port, headers=token).status == 200
    assert threads() <= before

    # One JWKS source fetches each second: the three the reloads replaced fetch no more.
    first = fetches()
    started = time.monotonic()
    wait_until(lambda: fetches() >= first + 3, 15, "three more JWKS fetches")
    assert time.monotonic() - started > 1.5

"""The auth filter on the HTTP relay (MemoryReactorClock, StringTransports): every method's
grant and refusal paths as the client, the server, the access log and the metrics see them;
forged identity fields removed; API keys kept out of what goes upstream and of the logs;
the context's lifetime (JWKS timers, auth-service connections) and the hash threads."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import queue
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from proxyd.admin.metrics import metrics_registry
from proxyd.auth.api_keys import parse_api_keys
from proxyd.auth.fetch import Fetched, FetchTimeout
from proxyd.auth.htpasswd import UserTable, parse_htpasswd
from proxyd.auth.threads import HashThreads
from proxyd.config.auth_model import (
    ApiKeyAuthConfig,
    AuthConfig,
    BasicAuthConfig,
    ForwardAuthConfig,
    JwtAuthConfig,
)
from proxyd.config.model import (
    FilterConfig,
    HeaderRule,
    ProxyAction,
    RouteConfig,
    RouteMatch,
)
from proxyd.filters.api import Exchange, Filter, Options
from proxyd.filters.auth import AuthContext, AuthFilter, build_auth
from proxyd.metrics import add_counters
from tests.unit.test_http_relay import OK, Relay, field, request_lines

NOW = 0.0
"""The relay's clock starts at 0: tokens are dated from there."""

# Basic.


@pytest.fixture(scope="module")
def users() -> UserTable:
    """alice and bob (bcrypt at the lowest cost), each with the password 'pw-NAME'."""
    lines = [
        subprocess.run(
            ["htpasswd", "-nbB", "-C", "4", user, f"pw-{user}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for user in ("alice", "bob")
    ]
    return parse_htpasswd("\n".join(lines).encode(), "users.htpasswd")


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class Threads:
    """A fake hash pool: queues each check until the test runs it."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[[], bool], Deferred[bool]]] = []
        self.ran = 0

    def __call__(self, work: Callable[[], bool]) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.queued.append((work, d))
        return d

    def run_all(self) -> None:
        while self.queued:
            work, d = self.queued.pop(0)
            self.ran += 1
            d.callback(work())


class Seen(Filter):
    """After the auth filter: records the identity it set."""

    def __init__(self) -> None:
        super().__init__(Options("seen", {}))
        self.users: list[Any] = []

    def request_head(self, exchange: Exchange) -> None:
        self.users.append(exchange.vars.get("auth_user", "(none)"))


class FakeClient:
    """An HttpClient whose answers the test gives."""

    def __init__(self, reactor: Any, *, connect_timeout: float, persistent: bool = False) -> None:
        self.connect_timeout = connect_timeout
        self.persistent = persistent
        self.calls: list[tuple[str, list[tuple[bytes, bytes]], Deferred[Fetched]]] = []
        self.closed = False

    def get(
        self,
        url: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        *,
        timeout: float,
        max_body: int,
    ) -> Deferred[Fetched]:
        asked: Deferred[Fetched] = Deferred()
        self.calls.append((url, list(headers), asked))
        return asked

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


class AuthRelay(Relay):
    """A Relay whose route `/` authenticates with `auth`, followed by a Seen filter."""

    def __init__(self, auth: AuthConfig, **config: Any) -> None:
        self.threads = Threads()
        self.clients: list[FakeClient] = []
        self.seen = Seen()
        self._auth = auth

        def client(reactor: Any, **options: Any) -> FakeClient:
            made = FakeClient(reactor, **options)
            self.clients.append(made)
            return made

        # The context is made before the factory it counts for (as the factory would make
        # it in its __init__): `stats` reads the factory's when it counts.
        self.context = AuthContext(
            None,
            listener="front",
            stats=lambda: self.factory.stats,
            run_in_thread=self.threads,
            http_client=client,  # type: ignore[arg-type]
        )
        self.reactor_holder: list[Any] = []
        super().__init__(routes=(self._route(),), **config)

    def _route(self) -> RouteConfig:
        return RouteConfig(
            name="site",
            match=RouteMatch(path="/"),
            action=ProxyAction(pool="web"),
            filters=(
                FilterConfig("auth", "proxyd:auth", (), _Lazy(self)),
                FilterConfig("seen", "tests:Seen", (), self.seen),
            ),
        )

    @property
    def auth_filter(self) -> AuthFilter:
        return build_auth(self._auth, self.context)

    def failures(self) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for pools in self.factory.stats.snapshot()["http"]["front"].values():
            for servers in pools.values():
                for fields in servers.values():
                    add_counters(total, {"auth_failures": fields.get("auth_failures", {})})
                    add_counters(total, {"errors": fields.get("errors", {})})
                    add_counters(total, {"password_checks": fields.get("password_checks", 0)})
        return total


class _Lazy:
    """The auth filter, made once the relay's reactor exists (the context's clock)."""

    def __init__(self, relay: AuthRelay) -> None:
        self.relay = relay

    def request_head(self, exchange: Any) -> Any:
        relay = self.relay
        relay.context.reactor = relay.reactor
        return relay.auth_filter.request_head(exchange)


def basic_config(users: UserTable, **changes: Any) -> AuthConfig:
    settings: dict[str, Any] = {"users_file": "users.htpasswd", "users": users}
    settings.update(changes)
    return AuthConfig("staff", "basic", "Staff only", BasicAuthConfig(**settings))


def get(*fields: bytes, target: bytes = b"/a?x=1") -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: example.test", *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def proxied(relay: Relay) -> tuple[bytes, bytes]:
    upstream, ut = relay.accept_upstream()
    sent = ut.value()
    upstream.dataReceived(OK)
    return sent, relay.received()


def test_basic_without_credentials_is_401_with_the_challenge_and_error_page() -> None:
    relay = AuthRelay(basic_config(parse_htpasswd(b"", "empty")))
    relay.send(get())
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert field(answer, "WWW-Authenticate") == [b'Basic realm="Staff only", charset="UTF-8"']
    assert answer.endswith(b"401 Unauthorized\n")
    assert relay.pending_connects() == []
    record = relay.log.records[-1]
    assert record["status"] == 401
    assert record["error"] == "auth staff (basic): missing"
    assert relay.failures() == {
        "auth_failures": {"basic": {"missing": 1}},
        "errors": {"auth_failed": 1},
        "password_checks": 0,
    }


def test_basic_grant_waits_for_the_hash_and_sends_the_user_not_the_forged_one(
    users: UserTable,
) -> None:
    relay = AuthRelay(basic_config(users))
    relay.send(get(b"Authorization: " + basic("alice", "pw-alice"), b"x-auth-user: root"))
    assert relay.pending_connects() == [] and len(relay.threads.queued) == 1
    relay.threads.run_all()
    sent, answer = proxied(relay)
    assert field(sent, "X-Auth-User") == [b"alice"]
    assert field(sent, "Authorization") == [basic("alice", "pw-alice")]
    assert answer.endswith(b"hi")
    assert relay.seen.users == ["alice"]


def test_basic_burst_costs_one_hash_and_later_requests_none(users: UserTable) -> None:
    relay = AuthRelay(basic_config(users), keepalive=0)  # a new upstream connection each
    credentials = b"Authorization: " + basic("bob", "pw-bob")
    clients = [relay.client] + [relay.connect_client()[0] for _ in range(3)]
    for client in clients:
        relay.send(get(credentials), client)
    assert len(relay.threads.queued) == 1
    relay.threads.run_all()
    assert len(relay.pending_connects()) == 4
    for _ in range(4):
        proxied(relay)
    relay.send(get(credentials))
    assert relay.threads.queued == [] and relay.threads.ran == 1
    assert field(proxied(relay)[0], "X-Auth-User") == [b"bob"]
    assert relay.failures()["password_checks"] == 1


@pytest.mark.parametrize(
    ("user", "password", "reason"),
    [("alice", "wrong", "bad_password"), ("mallory", "pw-alice", "unknown_user")],
)
def test_basic_wrong_password_and_unknown_user_answer_alike(
    users: UserTable, user: str, password: str, reason: str
) -> None:
    relay = AuthRelay(basic_config(users))
    with capturedLogs() as events:
        relay.send(get(b"Authorization: " + basic(user, password)))
        relay.threads.run_all()
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert field(answer, "WWW-Authenticate") == [b'Basic realm="Staff only", charset="UTF-8"']
    assert relay.failures()["auth_failures"] == {"basic": {reason: 1}}
    text = "\n".join(formatEvent(event) for event in events)
    assert f"auth staff (basic): {reason}" in text
    assert user not in text and password not in text


def test_several_authorization_fields_are_refused_400(users: UserTable) -> None:
    relay = AuthRelay(basic_config(users))
    one = b"Authorization: " + basic("alice", "pw-alice")
    relay.send(get(one, one))
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert relay.threads.queued == []
    assert relay.log.records[-1]["error"] == "auth staff (basic): several Authorization fields"
    assert relay.failures()["auth_failures"] == {"basic": {"malformed": 1}}


def test_basic_overloaded_is_503(users: UserTable) -> None:
    relay = AuthRelay(basic_config(users, max_pending=1))
    relay.send(get(b"Authorization: " + basic("alice", "pw-alice")))
    other, ct = relay.connect_client()
    relay.send(get(b"Authorization: " + basic("bob", "pw-bob")), other)
    assert ct.value().startswith(b"HTTP/1.1 503 ")
    assert relay.failures()["auth_failures"] == {"basic": {"overloaded": 1}}


def test_a_client_leaving_while_its_hash_runs_leaves_the_others_served(users: UserTable) -> None:
    relay = AuthRelay(basic_config(users))
    credentials = b"Authorization: " + basic("alice", "pw-alice")
    leaving, _ = relay.connect_client()
    relay.send(get(credentials), leaving)
    relay.send(get(credentials))
    leaving.connectionLost()
    relay.threads.run_all()
    assert relay.threads.ran == 1
    assert len(relay.pending_connects()) == 1
    assert proxied(relay)[1].endswith(b"hi")


# API keys.


KEYS = parse_api_keys(
    (
        f"deploy {hashlib.sha256(b'k-deploy-123').hexdigest()}\n"
        f"ci {hashlib.sha256(b'k-ci-456').hexdigest()}\n"
    ).encode(),
    "keys.txt",
)


def api_key_config(**changes: Any) -> AuthConfig:
    settings: dict[str, Any] = {"keys_file": "keys.txt", "keys": KEYS, "query_param": "api_key"}
    settings.update(changes)
    return AuthConfig("robots", "api_key", "robots", ApiKeyAuthConfig(**settings))


def test_api_key_from_the_header_is_removed_and_its_name_sent() -> None:
    relay = AuthRelay(api_key_config())
    relay.send(get(b"X-API-Key: k-deploy-123", b"X-Auth-Key: admin"))
    sent, _ = proxied(relay)
    assert field(sent, "X-API-Key") == []
    assert field(sent, "X-Auth-Key") == [b"deploy"]
    assert b"k-deploy-123" not in sent
    assert relay.seen.users == ["deploy"]


def test_api_key_from_the_query_reaches_neither_the_server_nor_the_logs() -> None:
    relay = AuthRelay(api_key_config())
    relay.send(get(target=b"/a?x=1&api_key=k-ci-456&y=2"))
    sent, _ = proxied(relay)
    assert request_lines(sent)[0] == b"GET /a?x=1&y=2 HTTP/1.1"
    assert b"k-ci-456" not in sent
    assert field(sent, "X-Auth-Key") == [b"ci"]
    assert relay.log.records[-1]["uri"] == "/a?x=1&y=2"


def test_an_api_key_from_the_query_does_not_come_back_through_header_templates() -> None:
    rules = (HeaderRule("set", "X-Uri", "{uri}"), HeaderRule("set", "X-Query", "{query}"))
    relay = AuthRelay(api_key_config(), request_headers=rules)
    relay.send(get(target=b"/a?api_key=k-ci-456&y=2"))
    sent, _ = proxied(relay)
    assert field(sent, "X-Uri") == [b"/a?y=2"]
    assert field(sent, "X-Query") == [b"y=2"]
    assert b"k-ci-456" not in sent


def test_an_api_key_is_not_logged_when_the_request_is_refused_unjudged() -> None:
    relay = AuthRelay(api_key_config())
    with capturedLogs() as events:
        relay.send(get(b"Authorization: a", b"Authorization: b", target=b"/a?api_key=k-ci-456"))
    assert relay.received().startswith(b"HTTP/1.1 400 ")
    assert relay.log.records[-1]["uri"] == "/a"
    assert "k-ci-456" not in "\n".join(formatEvent(event) for event in events)


def test_an_unknown_api_key_is_401_and_not_logged() -> None:
    relay = AuthRelay(api_key_config())
    with capturedLogs() as events:
        relay.send(get(target=b"/a?api_key=guess-1"))
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert field(answer, "WWW-Authenticate") == [b'ApiKey realm="robots"']
    assert relay.log.records[-1]["uri"] == "/a"
    assert "guess-1" not in "\n".join(formatEvent(event) for event in events)
    assert relay.failures()["auth_failures"] == {"api_key": {"unknown_key": 1}}


def test_an_api_key_in_the_header_wins_and_the_query_one_is_stripped_too() -> None:
    relay = AuthRelay(api_key_config())
    relay.send(get(b"X-API-Key: k-ci-456", target=b"/a?api_key=k-deploy-123"))
    sent, _ = proxied(relay)
    assert field(sent, "X-Auth-Key") == [b"ci"]
    assert b"k-deploy-123" not in sent and b"k-ci-456" not in sent


# JWT.

RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
ED = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})


def token(key: Any, alg: str, **claims: Any) -> bytes:
    payload = {"sub": "alice", "exp": NOW + 300, "email": "alice@example.com", **claims}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.encode({"alg": alg, "kid": key.kid}, payload, key, [alg]).encode()


def public(*keys: Any) -> KeySet:
    return KeySet([type(key).import_key(key.as_dict(private=False)) for key in keys])


def jwt_config(**changes: Any) -> AuthConfig:
    settings: dict[str, Any] = {
        "algorithms": ("RS256", "ES256", "EdDSA"),
        "key_files": ("rsa.pem",),
        "keys": public(RSA, EC, ED),
        "claims": (("sub", "X-Auth-User"), ("email", "X-Auth-Email")),
        "leeway": 0.0,
    }
    settings.update(changes)
    return AuthConfig("sso", "jwt", "sso", JwtAuthConfig(**settings))


def jwt_relay(**changes: Any) -> AuthRelay:
    return AuthRelay(jwt_config(**changes), keepalive=0)


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS256"), (EC, "ES256"), (ED, "EdDSA")])
def test_a_good_token_passes_its_claims_and_no_forged_ones(key: Any, alg: str) -> None:
    relay = jwt_relay()
    relay.send(
        get(
            b"Authorization: Bearer " + token(key, alg),
            b"X-Auth-User: root",
            b"X-Auth-Email: root@example.com",
        )
    )
    sent, _ = proxied(relay)
    assert field(sent, "X-Auth-User") == [b"alice"]
    assert field(sent, "X-Auth-Email") == [b"alice@example.com"]
    assert relay.seen.users == ["alice"]


def test_an_expired_token_is_401_invalid_token() -> None:
    relay = jwt_relay()
    relay.send(get(b"Authorization: Bearer " + token(RSA, "RS256", exp=NOW - 1)))
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert field(answer, "WWW-Authenticate") == [
        b'Bearer realm="sso", error="invalid_token", error_description="The token has expired"'
    ]
    assert relay.failures()["auth_failures"] == {"jwt": {"expired": 1}}


def test_jwks_keys_are_fetched_through_the_context_and_rotated() -> None:
    url = "https://idp.test/jwks.json"
    relay = jwt_relay(key_files=(), keys=None, jwks=url)
    relay.context.start()  # nothing to start yet: the filter is made at the first request
    relay.send(get(b"Authorization: Bearer " + token(RSA, "RS256")))
    (jwks_client,) = relay.clients
    assert jwks_client.persistent is False
    fetched_url, _, asked = jwks_client.calls[0]
    assert fetched_url == url
    asked.callback(Fetched(200, (), _document(RSA)))
    sent, _ = proxied(relay)
    assert field(sent, "X-Auth-User") == [b"alice"]
    # A token of a key the set does not have yet: a refresh, once min_refresh has passed.
    relay.reactor.advance(10)
    relay.send(get(b"Authorization: Bearer " + token(EC, "ES256")))
    assert len(jwks_client.calls) == 2
    jwks_client.calls[1][2].callback(Fetched(200, (), _document(RSA, EC)))
    assert field(proxied(relay)[0], "X-Auth-User") == [b"alice"]
    relay.context.stop()
    assert jwks_client.closed


def _document(*keys: Any) -> bytes:
    return json.dumps({"keys": [key.as_dict(private=False) for key in keys]}).encode()


# Forward auth.


def forward_config(**changes: Any) -> AuthConfig:
    settings: dict[str, Any] = {
        "url": "http://auth.test:9000/verify",
        "copy_headers": ("X-Auth-User", "X-Auth-Groups"),
        "timeout": 1.0,
    }
    settings.update(changes)
    return AuthConfig("gate", "forward", "gate", ForwardAuthConfig(**settings))


def test_forward_grant_copies_the_services_fields_over_forged_ones() -> None:
    relay = AuthRelay(forward_config())
    relay.send(
        get(
            b"Authorization: Bearer t",
            b"Cookie: s=1",
            b"X-Auth-User: root",
            b"X-Other: 1",
            target=b"/a/%7Eb?x=1",
        )
    )
    (client,) = relay.clients
    assert client.persistent and client.connect_timeout == 1.0
    url, headers, asked = client.calls[0]
    assert url == "http://auth.test:9000/verify"
    assert dict(headers)[b"X-Forwarded-Uri"] == b"/a/%7Eb?x=1"
    assert dict(headers)[b"X-Forwarded-Method"] == b"GET"
    assert dict(headers)[b"X-Forwarded-Host"] == b"example.test"
    assert dict(headers)[b"X-Forwarded-For"] == b"10.0.0.7"
    assert dict(headers)[b"X-Forwarded-Proto"] == b"http"
    assert (b"Authorization", b"Bearer t") in headers and (b"Cookie", b"s=1") in headers
    assert b"X-Auth-User" not in dict(headers) and b"X-Other" not in dict(headers)
    asked.callback(Fetched(200, ((b"X-Auth-User", b"carol"), (b"X-Auth-Groups", b"ops")), b""))
    sent, _ = proxied(relay)
    assert field(sent, "X-Auth-User") == [b"carol"]
    assert field(sent, "X-Auth-Groups") == [b"ops"]
    assert relay.seen.users == ["carol"]


def test_forward_denial_passes_the_services_answer_and_counts_it() -> None:
    relay = AuthRelay(forward_config())
    with capturedLogs() as events:
        relay.send(get(b"Cookie: s=secret-session"))
        relay.clients[0].calls[0][2].callback(
            Fetched(
                401,
                (
                    (b"WWW-Authenticate", b'Bearer realm="gate"'),
                    (b"Content-Type", b"application/json"),
                    (b"X-Secret", b"internal"),
                ),
                b'{"login": "/sso"}',
            )
        )
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert field(answer, "WWW-Authenticate") == [b'Bearer realm="gate"']
    assert field(answer, "Content-Type") == [b"application/json"]
    assert field(answer, "X-Secret") == []
    assert answer.endswith(b'\r\n\r\n{"login": "/sso"}')
    assert relay.pending_connects() == []
    assert relay.failures() == {
        "auth_failures": {"forward": {"unauthorized": 1}},
        "errors": {"auth_failed": 1},
        "password_checks": 0,
    }
    text = "\n".join(formatEvent(event) for event in events)
    assert "auth gate (forward): unauthorized" in text and "secret-session" not in text


def test_forward_redirect_without_body_gets_proxyds_page_with_the_location() -> None:
    relay = AuthRelay(forward_config())
    relay.send(get())
    relay.clients[0].calls[0][2].callback(
        Fetched(302, ((b"Location", b"https://sso.test/login"),), b"")
    )
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 302 ")
    assert field(answer, "Location") == [b"https://sso.test/login"]
    assert answer.endswith(b"302 Found\n")


@pytest.mark.parametrize(
    ("error", "reason"),
    [(ConnectionRefusedError("refused"), "unavailable"), (FetchTimeout("2s"), "timeout")],
)
def test_forward_service_down_or_slow_is_503(error: Exception, reason: str) -> None:
    relay = AuthRelay(forward_config())
    with capturedLogs():
        relay.send(get())
        relay.clients[0].calls[0][2].errback(error)
    assert relay.received().startswith(b"HTTP/1.1 503 ")
    assert relay.failures()["auth_failures"] == {"forward": {reason: 1}}


def test_forward_trusted_proxy_chain_goes_in_x_forwarded_for() -> None:
    relay = AuthRelay(forward_config(), trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    relay.send(get(b"X-Forwarded-For: 198.51.100.1"))
    headers = dict(relay.clients[0].calls[0][1])
    assert headers[b"X-Forwarded-For"] == b"198.51.100.1, 10.0.0.7"


# The context's lifetime.


def test_routes_naming_the_same_section_share_one_filter(users: UserTable) -> None:
    context = AuthContext(Clock(), listener="l", stats=lambda: None, run_in_thread=Threads())  # type: ignore[arg-type,return-value]
    one = build_auth(basic_config(users), context)
    assert build_auth(basic_config(users), context) is one
    assert build_auth(basic_config(users, cache_time=1.0), context) is not one


def test_basic_without_threads_is_refused_at_build(users: UserTable) -> None:
    context = AuthContext(Clock(), listener="l", stats=lambda: None, run_in_thread=None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="password-check threads"):
        build_auth(basic_config(users), context)


def test_a_context_starts_its_jwks_and_stops_every_timer_and_connection() -> None:
    clock = Clock()
    clients: list[FakeClient] = []

    def client(reactor: Any, **options: Any) -> FakeClient:
        clients.append(FakeClient(reactor, **options))
        return clients[-1]

    context = AuthContext(
        clock,
        listener="l",
        stats=lambda: None,  # type: ignore[arg-type,return-value]
        run_in_thread=None,
        http_client=client,  # type: ignore[arg-type]
    )
    build_auth(jwt_config(key_files=(), keys=None, jwks="https://idp.test/k"), context)
    build_auth(forward_config(), context)
    assert clock.getDelayedCalls() == [] and clients[0].calls == []  # nothing before start
    context.start()
    context.start()
    assert len(clients[0].calls) == 1  # the JWKS fetch
    clients[0].calls[0][2].callback(Fetched(200, (), _document(RSA)))
    assert len(clock.getDelayedCalls()) == 1  # the next refresh
    stopped = context.stop()
    assert stopped.called
    assert clock.getDelayedCalls() == []
    assert all(made.closed for made in clients)
    context.stop()  # twice is harmless
    # A source made after the stop is never started.
    build_auth(jwt_config(key_files=(), keys=None, jwks="https://idp.test/other"), context)
    assert clock.getDelayedCalls() == []


def test_a_context_never_started_holds_nothing() -> None:
    clock = Clock()
    context = AuthContext(
        clock,
        listener="l",
        stats=lambda: None,  # type: ignore[arg-type,return-value]
        run_in_thread=None,
        http_client=FakeClient,  # type: ignore[arg-type]
    )
    build_auth(jwt_config(key_files=(), keys=None, jwks="https://idp.test/k"), context)
    assert clock.getDelayedCalls() == []


# The metrics as Prometheus shows them.


def test_auth_failures_are_exported_by_method_and_reason(users: UserTable) -> None:
    relay = AuthRelay(basic_config(users))
    relay.send(get())
    snapshot = relay.factory.stats.snapshot()
    document = {"workers": 1, "listeners": [], "pools": [], "metrics": snapshot}
    samples = [
        sample
        for metric in metrics_registry(document).collect()
        if metric.name == "proxyd_auth_failures"
        for sample in metric.samples
    ]
    assert [(s.name, s.labels, s.value) for s in samples] == [
        (
            "proxyd_auth_failures_total",
            {
                "listener": "front",
                "kind": "http",
                "route": "site",
                "pool": "web",
                "server": "",
                "method": "basic",
                "reason": "missing",
            },
            1.0,
        )
    ]


# The hash threads.


class ThreadReactor:
    """callFromThread into a queue the test drains: results come back on the test's thread."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Any, tuple[Any, ...]]] = queue.Queue()
        self.triggers: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.put((f, args))

    def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> object:
        self.triggers.append((phase, event, f))
        return len(self.triggers)

    def removeSystemEventTrigger(self, trigger: object) -> None:
        self.triggers = []

    def deliver(self) -> None:
        f, args = self.calls.get(timeout=10)
        f(*args)


def test_hash_threads_run_work_off_the_calling_thread_and_stop() -> None:
    reactor = ThreadReactor()
    threads = HashThreads(reactor, size=2)
    threads.start()
    assert reactor.triggers and reactor.triggers[0][:2] == ("during", "shutdown")
    results: list[Any] = []
    caller = threading.get_ident()
    threads.run(threading.get_ident).addCallback(results.append)
    reactor.deliver()
    assert len(results) == 1 and results[0] != caller
    threads.stop()
    assert reactor.triggers == []
    threads.stop()
    with pytest.raises(RuntimeError):
        threads.run(lambda: 1)
    assert not any(t.name.startswith("proxyd-auth") for t in threading.enumerate())

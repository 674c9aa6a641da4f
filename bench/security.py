"""Security at the edge, per request (docs/security.md): http-keepalive with an access list,
Basic authentication (its check cached), an API key and a JWT (RS256) on every request. Each
row's cost per request is its difference from http-keepalive's; nginx runs its equivalent
where it has one (allow/deny, auth_basic, a map on the key's header; it has no JWT check),
HAProxy its (an ACL on src, an ACL on the key's header)."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import replace

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from bench.http import (
    NGINX_PROXY_LOCATION,
    SMALL_BODY,
    HttpScenario,
    haproxy_http,
    nginx_upstream,
    proxyd_pool,
)
from bench.processes import redis_call
from bench.scenario import Bench, Load, Meter

USER, PASSWORD = "bench", "bench-password"
API_KEY = "bench-key-0123456789abcdef"
_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_TOKEN = jwt.encode(
    {"alg": "RS256"},
    {"sub": "bench", "iss": "bench", "exp": int(time.time()) + 30 * 86400},
    RSAKey.import_key(
        _PRIVATE.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    ),
)


def _basic() -> str:
    return "Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class _Guarded(HttpScenario):
    """http-keepalive behind one of the edge's checks: `proxyd_keys` go on the listener (with
    `sections` before it), `nginx_lines` in nginx's location, `haproxy_lines` in its frontend."""

    def __init__(
        self,
        name: str,
        title: str,
        headers: tuple[str, ...],
        proxyd_keys: str,
        nginx_lines: str | None,
        haproxy_lines: str | None,
    ) -> None:
        super().__init__(name, title, "/", len(SMALL_BODY), headers=headers)
        self.proxyd_keys = proxyd_keys
        self.nginx_lines = nginx_lines
        self.haproxy_lines = haproxy_lines
        self.not_applicable = {
            target: "no equivalent configured"
            for target, lines in (("nginx", nginx_lines), ("haproxy", haproxy_lines))
            if lines is None
        }

    def files(self, bench: Bench) -> str:
        """Writes what the proxies read into the bench's directory; proxyd's sections."""
        return ""

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        self.files(bench)
        lines = (self.nginx_lines or "").format(dir=bench.workdir)
        location = NGINX_PROXY_LOCATION.replace(
            "            proxy_max_temp_file_size 0;\n",
            f"            proxy_max_temp_file_size 0;\n{lines}",
        )
        server = f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n{location}    }}\n"
        return bench.nginx_http("nginx", nginx_upstream(origin) + self.nginx_maps() + server)

    def nginx_maps(self) -> str:
        return ""

    def haproxy(self, bench: Bench, port: int, origin: int) -> str:
        config = haproxy_http(bench, f"127.0.0.1:{port}", origin)
        return config.replace(
            "    default_backend origin\n",
            f"{self.haproxy_lines or ''}    default_backend origin\n",
        )

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        sections = self.files(bench)
        keys = self.proxyd_keys.format(dir=bench.workdir)
        listener = f"[http bench]\nlisten = tcp:{port}:interface=127.0.0.1\n{keys}"
        return f"{proxyd_pool(origin)}\n{sections}{listener}routes =\n    path / -> pool origin\n"


class _Acl(_Guarded):
    def __init__(self) -> None:
        super().__init__(
            "http-acl",
            "HTTP small answers, keep-alive, an allow/deny list on the client's address",
            (),
            "access =\n    deny 10.0.0.0/8\n    allow 127.0.0.0/8\n    deny all\n",
            "            deny 10.0.0.0/8;\n            allow 127.0.0.0/8;\n            deny all;\n",
            "    http-request deny if { src 10.0.0.0/8 } || ! { src 127.0.0.0/8 }\n",
        )


class _Basic(_Guarded):
    def __init__(self) -> None:
        super().__init__(
            "http-basic",
            "HTTP small answers, keep-alive, Basic authentication (bcrypt; proxyd caches the"
            " check, nginx hashes every request)",
            (_basic(),),
            "auth = users\n",
            '            auth_basic "bench";\n            auth_basic_user_file {dir}/users;\n',
            None,
        )

    def files(self, bench: Bench) -> str:
        path = bench.workdir / "users"
        if not path.exists():
            hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5)).decode()
            path.write_text(f"{USER}:{hashed.replace('$2b$', '$2y$', 1)}\n")
        return f"[auth users]\ntype = basic\nusers = {path}\n\n"


class _ApiKey(_Guarded):
    def __init__(self) -> None:
        super().__init__(
            "http-apikey",
            "HTTP small answers, keep-alive, an API key in a header",
            (f"X-API-Key: {API_KEY}",),
            "auth = keys\n",
            "            if ($bench_key_ok = 0) {{ return 401; }}\n",
            "    http-request deny deny_status 401"
            f" unless {{ req.hdr(x-api-key) -m str {API_KEY} }}\n",
        )

    def nginx_maps(self) -> str:
        return (
            "    map $http_x_api_key $bench_key_ok {\n"
            f'        default 0;\n        "{API_KEY}" 1;\n'
            "    }\n"
        )

    def files(self, bench: Bench) -> str:
        path = bench.workdir / "keys"
        path.write_text(f"bench {hashlib.sha256(API_KEY.encode()).hexdigest()}\n")
        return f"[auth keys]\ntype = api_key\nkeys = {path}\n\n"


class _Jwt(_Guarded):
    def __init__(self) -> None:
        super().__init__(
            "http-jwt",
            "HTTP small answers, keep-alive, a JWT bearer token (RS256) checked on each request",
            (f"Authorization: Bearer {_TOKEN}",),
            "auth = tokens\n",
            None,
            None,
        )

    def files(self, bench: Bench) -> str:
        path = bench.workdir / "jwt.pem"
        path.write_bytes(
            _PRIVATE.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return f"[auth tokens]\ntype = jwt\nalgorithms = RS256\nkeys = {path}\nissuer = bench\n\n"


class _RateLimit(_Guarded):
    def __init__(self) -> None:
        super().__init__(
            "http-ratelimit",
            "HTTP small answers, keep-alive, a rate limit per client address (never reached)",
            (),
            "ratelimits = per-client\n",
            "            limit_req zone=bench_rl burst=1000000 nodelay;\n",
            "    stick-table type ip size 100k expire 10s store http_req_rate(1s)\n"
            "    http-request track-sc0 src\n"
            "    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000 }\n",
        )

    def nginx_maps(self) -> str:
        # nginx judges in milliseconds: without a burst, two requests in the same one refuse.
        return "    limit_req_zone $binary_remote_addr zone=bench_rl:10m rate=1000000r/s;\n"

    def files(self, bench: Bench) -> str:
        return "[ratelimit per-client]\nrate = 1M/s\nkey = client\n\n"


class _RedisRateLimit(_RateLimit):
    """http-ratelimit's limit counted in a redis-server of the bench's own (started before the
    origin, stopped with it), each Redis call taking `allowance` more requests than are waiting;
    `on_store_error = deny`, so that requests let through unchecked would show as errors.
    nginx and HAProxy keep http-ratelimit's local limit: neither has a Redis one built in.
    A run's Redis calls per request go into its sample (`redis_calls_per_req`, in --json)."""

    def __init__(self, name: str, allowance: int, title: str) -> None:
        super().__init__()
        self.name = name
        self.title = title
        self.allowance = allowance
        self.needs = (*self.needs, "redis-server")

    def origin(self, bench: Bench) -> int:
        bench.redis()
        return super().origin(bench)

    def files(self, bench: Bench) -> str:
        allowance = f"local_allowance = {self.allowance}\n" if self.allowance else ""
        return (
            "[ratelimit per-client]\nrate = 1M/s\nkey = client\n"
            f"store = redis://127.0.0.1:{bench.redis_port}/0\non_store_error = deny\n"
            f"{allowance}\n"
        )

    def load(self, bench: Bench, port: int, meter: Meter) -> Load:
        before = _redis_calls(bench)
        load = super().load(bench, port, meter)
        calls = _redis_calls(bench) - before
        per_request = calls / load.operations if load.operations else 0.0
        return replace(load, extra={**load.extra, "redis_calls_per_req": per_request})


def _redis_calls(bench: Bench) -> int:
    """The rate-limit script calls (EVALSHA and EVAL) the bench's redis-server has answered."""
    assert bench.redis_port is not None
    stats = redis_call(bench.redis_port, "INFO", "commandstats").decode()
    found = re.findall(r"^cmdstat_(?:evalsha|eval):calls=(\d+)", stats, re.MULTILINE)
    return sum(map(int, found))


SCENARIOS = (
    _Acl(),
    _Basic(),
    _ApiKey(),
    _Jwt(),
    _RateLimit(),
    _RedisRateLimit(
        "http-ratelimit-redis",
        0,
        "HTTP small answers, keep-alive, http-ratelimit's limit counted in Redis, a call per"
        " request (a batch per key); nginx and HAProxy: their local limit, no Redis one built in",
    ),
    _RedisRateLimit(
        "http-ratelimit-redis-allowance",
        1000,
        "HTTP small answers, keep-alive, http-ratelimit's limit counted in Redis with"
        " local_allowance = 1000 (a call per ~1000 requests); nginx and HAProxy: their local"
        " limit, no Redis one built in",
    ),
)

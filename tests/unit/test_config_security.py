"""The security keys and sections (docs/security.md): [http]/[https]/[route] access, limits,
rules, auth, cors and response hardening; [rule], [cors] and [auth] sections; the L4
listeners' access and per-client limits. Every bad value is refused at load with the file's
line (and a file's own line for a problem inside a file it names)."""

from __future__ import annotations

import hashlib
import ipaddress
import textwrap
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from passlib.hash import apr_md5_crypt

from proxyd.config.auth_model import (
    ApiKeyAuthConfig,
    BasicAuthConfig,
    ForwardAuthConfig,
    JwtAuthConfig,
)
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import OFF, Config, Rate, SecurityHeadersConfig
from proxyd.config.warnings import auth_warnings
from proxyd.filters.security_headers import HIDDEN_BY_DEFAULT
from tests.certs import TestCA

POOL = "[pool web]\nservers = 127.0.0.1:9001\n"
HTTP = "[http h]\nlisten = tcp:8080\nroutes =\n    path / -> pool web\n"
"""Lines 1-2: the pool; the [http] section's first line is 3."""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A directory for the config file and the files it names."""
    return tmp_path


def load(directory: Path, text: str) -> Config:
    path = directory / "proxyd.ini"
    text = textwrap.dedent(text)
    path.write_text(text)
    return loads(text, str(path))


def errors(directory: Path, text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(directory, text)
    prefix = str(directory / "proxyd.ini")
    return [str(e).removeprefix(prefix) for e in info.value.errors]


def listener(directory: Path, keys: str, before: str = "") -> Any:
    return load(directory, POOL + before + HTTP + textwrap.dedent(keys)).http[0]


def listener_errors(directory: Path, keys: str, before: str = "") -> list[str]:
    return errors(directory, POOL + before + HTTP + textwrap.dedent(keys))


# Access lists.


def test_access_rules_and_a_list_file_are_read_in_order(conf: Path) -> None:
    (conf / "blocked.txt").write_text("# scanners\n192.0.2.0/24\n\n2001:db8::/32  # v6\n")
    found = listener(
        conf, "access =\n    deny file blocked.txt\n    allow 10.0.0.0/8\n    deny all\n"
    )
    rules = found.access
    assert [str(rule) for rule in rules.rules] == [
        "deny 192.0.2.0/24",
        "deny 2001:db8::/32",
        "allow 10.0.0.0/8",
        "deny all",
    ]
    assert rules.files == (str(conf / "blocked.txt"),)
    assert rules.allows("10.1.2.3") and not rules.allows("192.0.2.7")
    assert not rules.allows("172.16.0.1")


def test_an_unreadable_access_file_is_refused_on_its_line(conf: Path) -> None:
    [error] = listener_errors(conf, "access =\n    allow 10.0.0.0/8\n    deny file nope.txt\n")
    assert error.startswith(":9: [http h] access: expected a readable file of addresses")
    assert "nope.txt" in error and "No such file" in error


def test_a_bad_network_in_an_access_file_names_the_file_and_its_line(conf: Path) -> None:
    (conf / "list.txt").write_text("10.0.0.0/8\n10.0.0.1/8\n")
    [error] = listener_errors(conf, "access = allow file list.txt\n")
    assert error == (
        f":7: [http h] access: expected an address or CIDR network; found '10.0.0.1/8' (host"
        f" bits set) in {conf / 'list.txt'} line 2 (did you mean '10.0.0.0/8'?)"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "allow 10.0.0.1/8",
            ":7: [http h] access: expected an address, a CIDR network, 'all' or 'file PATH';"
            " found '10.0.0.1/8' (host bits set) (did you mean '10.0.0.0/8'?)",
        ),
        (
            "alow 10.0.0.0/8",
            ":7: [http h] access: expected 'allow' or 'deny', then an address, a CIDR network,"
            " 'all' or 'file PATH'; found 'alow 10.0.0.0/8' (did you mean 'allow'?)",
        ),
        (
            "allow 300.1.1.1",
            ":7: [http h] access: expected an address, a CIDR network, 'all' or 'file PATH';"
            " found '300.1.1.1'",
        ),
        (
            "deny",
            ":7: [http h] access: expected an address, a CIDR network, 'all' or 'file"
            " PATH' after 'deny'; found nothing",
        ),
    ],
)
def test_bad_access_rules_are_refused(conf: Path, value: str, expected: str) -> None:
    assert listener_errors(conf, f"access = {value}\n") == [expected]


def test_a_routes_access_list_is_its_own(conf: Path) -> None:
    config = load(
        conf,
        POOL
        + "[route admin]\npool = web\naccess =\n    allow 127.0.0.1\n    deny all\n"
        + "[http h]\nlisten = tcp:8080\nroutes =\n    path /admin/ -> route admin\n"
        + "    path / -> pool web\n",
    )
    admin, other = config.http[0].routes
    assert admin.security.access is not None and not admin.security.access.allows("10.0.0.1")
    assert other.security.access is None and config.http[0].access is None


# Request limits.


def test_limits_are_read(conf: Path) -> None:
    found = listener(conf, "allowed_methods = GET POST\nmax_query_length = 1KiB\n")
    assert found.allowed_methods == frozenset({"GET", "POST"})
    assert found.max_query_length == 1024


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            "allowed_methods = get\n",
            ":7: [http h] allowed_methods: expected a method name in upper case such as GET;"
            " found 'get' (did you mean 'GET'?)",
        ),
        (
            "allowed_methods =\n",
            ":7: [http h] allowed_methods: expected method names such as GET HEAD POST; found"
            " nothing",
        ),
        (
            "max_query_length = lots\n",
            ":7: [http h] max_query_length: expected a size from 0 to 1MiB such as 64KiB or"
            " 1MiB; found 'lots'",
        ),
        (
            "invalid_headers = strip\n",
            ":7: [http h] invalid_headers: expected 'drop', 'refuse', 'pass'; found 'strip'",
        ),
    ],
)
def test_bad_limits_are_refused(conf: Path, keys: str, expected: str) -> None:
    assert listener_errors(conf, keys) == [expected]


def test_a_route_may_only_lower_the_listeners_body_and_uri_limits(conf: Path) -> None:
    text = (
        POOL
        + "[route upload]\npool = web\nmax_body_size = 10MiB\nmax_uri_length = 1KiB\n"
        + "[route small]\npool = web\nmax_body_size = 0\n"
        + "[http h]\nlisten = tcp:8080\nmax_body_size = 1MiB\nroutes =\n"
        + "    path /up/ -> route upload\n    path / -> route small\n"
    )
    assert errors(conf, text) == [
        ":14: [http h] routes: expected routes whose max_body_size is at most the listener's"
        " (1048576 bytes: the listener reads every request within it before routing); found"
        " 'upload' with max_body_size = 10485760",
        ":15: [http h] routes: expected routes whose max_body_size is at most the listener's"
        " (1048576 bytes: the listener reads every request within it before routing); found"
        " 'small' with max_body_size = unlimited",
    ]
    route = load(conf, text.replace("10MiB", "512KiB").replace("max_body_size = 0\n", ""))
    assert route.http[0].routes[0].security.max_body_size == 512 * 1024
    assert route.http[0].routes[0].security.max_uri_length == 1024


# Rules.

RULES = """\
[rule admin]
match = path
pattern = ^/admin
[rule bots]
match = user_agent
pattern = (?i)sqlmap|nikto
mode = log_only
[rule token]
match = header X-Token
pattern = ^$
status = 401
"""


def test_rules_are_named_by_listeners_and_routes_in_order(conf: Path) -> None:
    config = load(
        conf,
        POOL
        + RULES
        + "[route r]\npool = web\nrules = token\n"
        + "[http h]\nlisten = tcp:8080\nrules = bots admin\nroutes =\n    path / -> route r\n",
    )
    found = config.http[0]
    assert [rule.name for rule in found.rules] == ["bots", "admin"]
    bots, admin = found.rules
    assert (bots.match, bots.mode, bots.status) == ("user_agent", "log_only", 403)
    assert (admin.match, admin.mode) == ("path", "enforce")
    [token] = found.routes[0].security.rules
    assert (token.match, token.header, token.status) == ("header", "x-token", 401)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            "match = path\npattern = ^/(admin\n",
            ":5: [rule r] pattern: expected a valid regular expression; found '^/(admin'"
            " (missing ), unterminated subpattern at position 2)",
        ),
        (
            "match = paht\npattern = x\n",
            ":4: [rule r] match: expected one of 'path', 'query', 'uri', 'method',"
            " 'user_agent', 'header' ('header NAME': that field's value); found 'paht' (did"
            " you mean 'path'?)",
        ),
        (
            "match = header\npattern = x\n",
            ":4: [rule r] match: expected 'header NAME'; found 'header'",
        ),
        (
            "match = path\npattern = x\nstatus = 500\n",
            ":6: [rule r] status: expected a status from 400 to 499; found '500'",
        ),
        (
            "match = path\npattern = x\nmode = warn\n",
            ":6: [rule r] mode: expected 'enforce', 'log_only'; found 'warn'",
        ),
        ("match = path\n", ":3: [rule r] pattern: expected a 'pattern' key; found none"),
    ],
)
def test_bad_rules_are_refused(conf: Path, rule: str, expected: str) -> None:
    text = POOL + "[rule r]\n" + rule + HTTP + "rules = r\n"
    assert errors(conf, text) == [expected]


def test_an_unknown_rule_name_is_refused_with_a_suggestion(conf: Path) -> None:
    assert listener_errors(conf, "rules = admin bot\n", before=RULES) == [
        ":18: [http h] rules: expected the name of a [rule] ('admin', 'bots', 'token'); found"
        " 'bot' (did you mean 'bots'?)"
    ]
    assert listener_errors(conf, "rules = admin admin\n", before=RULES) == [
        ":18: [http h] rules: expected each rule once; found 'admin' twice"
    ]


# CORS.


def test_a_cors_section_makes_a_policy(conf: Path) -> None:
    before = (
        "[cors app]\norigins =\n    https://app.example.com\n    https://*.example.org\n"
        "methods = GET, POST PUT\nheaders = Content-Type X-Requested-With\n"
        "expose_headers = X-Total\ncredentials = on\nmax_age = 10m\n"
    )
    found = listener(conf, "cors = app\n", before=before)
    policy = found.cors.policy
    assert found.cors.name == "app"
    assert policy.origins.matches("https://app.example.com")
    assert policy.origins.matches("https://a.b.example.org")
    assert not policy.origins.matches("https://example.org")
    assert policy.methods == frozenset({"GET", "POST", "PUT"})
    assert policy.headers == frozenset({"content-type", "x-requested-with"})
    assert (policy.expose_headers, policy.credentials, policy.max_age) == (("X-Total",), True, 600)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "origins = *\ncredentials = on\n",
            ":4: [cors c] origins: expected names listed one by one when credentials is on"
            " (browsers refuse '*' on a credentialed request); found '*'",
        ),
        (
            "origins = https://a.example\nheaders = *\ncredentials = on\n",
            ":5: [cors c] headers: expected names listed one by one when credentials is on"
            " (browsers refuse '*' on a credentialed request); found '*'",
        ),
        (
            "origins =\n    https://a.example\n    app.example.com\n",
            ":6: [cors c] origins: expected an origin, scheme://host[:port], such as"
            " https://app.example.com, https://*.example.com, ~REGEX, null or *; found"
            " 'app.example.com' (did you mean 'https://app.example.com'?)",
        ),
        (
            "origins = https://a.example/path\n",
            ":4: [cors c] origins: expected an origin without a path (scheme://host[:port]);"
            " found 'https://a.example/path' (did you mean 'https://a.example'?)",
        ),
        (
            "origins = ~(unclosed\n",
            ":4: [cors c] origins: expected a regular expression after '~'; found"
            " '~(unclosed' (missing ), unterminated subpattern at position 0)",
        ),
        ("credentials = on\n", ":3: [cors c] origins: expected a 'origins' key; found none"),
    ],
)
def test_bad_cors_sections_are_refused(conf: Path, section: str, expected: str) -> None:
    assert errors(conf, POOL + "[cors c]\n" + section + HTTP + "cors = c\n") == [expected]


def test_an_unknown_cors_name_is_refused_and_off_is_none(conf: Path) -> None:
    before = "[cors app]\norigins = https://app.example.com\n"
    assert listener_errors(conf, "cors = ap\n", before=before) == [
        ":9: [http h] cors: expected the name of a [cors] ('app'); found 'ap' (did you mean 'app'?)"
    ]
    assert listener(conf, "cors = off\n", before=before).cors is None


# Response hardening.


def test_hiding_defaults_and_keys(conf: Path) -> None:
    default = listener(conf, "")
    assert (default.hide_headers, default.pass_headers, default.server_header) == (
        (),
        (),
        "proxyd",
    )
    found = listener(
        conf, "hide_headers = X-Debug-Token\npass_headers = Server\nserver_header = off\n"
    )
    assert found.hide_headers == ("x-debug-token",)
    assert found.pass_headers == ("server",)
    assert found.server_header == ""
    assert b"server" in HIDDEN_BY_DEFAULT


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            "hide_headers = X(Debug)\n",
            ":7: [http h] hide_headers: expected a header field name (letters, digits and"
            " !#$%&'*+-.^_`|~); found 'X(Debug)'",
        ),
        (
            "server_header = ëx\n",
            ":7: [http h] server_header: expected a Server value (visible ASCII) or 'off';"
            " found 'ëx'",
        ),
        (
            "intercept_errors = 5xx 302\n",
            ":7: [http h] intercept_errors: expected 'off', or statuses and classes from 400 to"
            " 599 such as 5xx 404; found '302'",
        ),
        (
            "frame_options = DENY\n",
            ":7: [http h] frame_options: expected 'frame_options' only with security_headers ="
            " on; found no security_headers",
        ),
        (
            "security_headers = on\nframe_options = ALLOW-FROM https://a\n",
            ":8: [http h] frame_options: expected 'DENY', 'SAMEORIGIN' or 'off'; found"
            " 'ALLOW-FROM https://a' (use frame_ancestors)",
        ),
        (
            "security_headers = on\nreferrer_policy = origin-only\n",
            ":8: [http h] referrer_policy: expected Referrer-Policy values ('no-referrer',"
            " 'no-referrer-when-downgrade', 'origin', 'origin-when-cross-origin',"
            " 'same-origin', 'strict-origin', 'strict-origin-when-cross-origin', 'unsafe-url')"
            " or 'off'; found 'origin-only' (did you mean 'origin'?)",
        ),
        (
            "security_headers = on\ncontent_security_policy = default-src 'self';"
            " frame-ancestors 'none'\nframe_ancestors = 'self'\n",
            ":9: [http h] frame_ancestors: expected frame-ancestors in one place:"
            " content_security_policy or frame_ancestors; found both",
        ),
    ],
)
def test_bad_hardening_keys_are_refused(conf: Path, keys: str, expected: str) -> None:
    assert listener_errors(conf, keys) == [expected]


def test_intercept_errors_takes_statuses_and_classes(conf: Path) -> None:
    found = listener(conf, "intercept_errors = 5xx 404\n")
    assert found.intercept_errors == frozenset({404, *range(500, 600)})
    assert listener(conf, "intercept_errors = off\n").intercept_errors == frozenset()


def test_the_security_headers_preset(conf: Path) -> None:
    found = listener(
        conf,
        "security_headers = on\nframe_options = deny\nframe_ancestors = 'self'\n"
        "security_headers_override = on\n",
    ).security_headers
    assert found.enabled and found.override and found.frame_options == "DENY"
    assert dict(found.fields) == {
        b"X-Content-Type-Options": b"nosniff",
        b"X-Frame-Options": b"DENY",
        b"Referrer-Policy": b"strict-origin-when-cross-origin",
        b"Content-Security-Policy": b"frame-ancestors 'self'",
    }
    assert listener(conf, "security_headers = off\n").security_headers is None


def test_https_with_security_headers_gets_a_years_hsts_unless_it_says(conf: Path) -> None:
    pem = TestCA().issue(["localhost"]).write(conf / "cert.pem")
    https = (
        f"[https s]\nlisten = tcp:8443\ncertificates = {pem}\nroutes =\n    path / -> pool web\n"
    )
    preset = load(conf, POOL + https + "security_headers = on\n").http[0]
    assert preset.hsts == "max-age=31536000"
    own = load(conf, POOL + https + "security_headers = on\nhsts = off\n").http[0]
    assert own.hsts is None
    assert load(conf, POOL + https).http[0].hsts is None


def test_a_routes_settings_replace_the_listeners(conf: Path) -> None:
    config = load(
        conf,
        POOL
        + "[route r]\npool = web\nserver_header = off\nintercept_errors = off\n"
        + "security_headers = off\nallowed_methods = GET\nauth = off\ncors = off\n"
        + "[http h]\nlisten = tcp:8080\nroutes =\n    path / -> route r\n",
    )
    security = config.http[0].routes[0].security
    assert security.server_header == "" and security.intercept_errors == frozenset()
    assert security.security_headers == SecurityHeadersConfig(enabled=False)
    assert security.allowed_methods == frozenset({"GET"})
    assert security.auth == OFF and security.cors == OFF


# Authentication.


def write_htpasswd(directory: Path, *lines: str) -> Path:
    path = directory / "users.htpasswd"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def bcrypt_line(user: str, password: str) -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    return f"{user}:{hashed.replace('$2b$', '$2y$', 1)}"


def test_a_basic_auth_section_reads_its_users(conf: Path) -> None:
    write_htpasswd(conf, bcrypt_line("alice", "secret"))
    found = listener(
        conf,
        "auth = staff\n",
        before="[auth staff]\ntype = basic\nusers = users.htpasswd\ncache_time = 1m\n",
    ).auth
    assert (found.name, found.type, found.realm) == ("staff", "basic", "staff")
    method = found.method
    assert isinstance(method, BasicAuthConfig)
    assert "alice" in method.users and method.users.verify("alice", b"secret")
    assert (method.cache_time, method.max_pending, method.user_header) == (60.0, 64, "X-Auth-User")
    assert found.identity_headers == ("X-Auth-User",)


def test_weak_htpasswd_hashes_are_warned_about_with_their_file_line(conf: Path) -> None:
    write_htpasswd(conf, bcrypt_line("alice", "a"), f"bob:{apr_md5_crypt.hash('b')}")
    config = load(
        conf,
        POOL + "[auth staff]\ntype = basic\nusers = users.htpasswd\n" + HTTP + "auth = staff\n",
    )
    assert auth_warnings(config) == [
        f"{conf / 'users.htpasswd'}:2: [auth staff] users: user 'bob': APR1-MD5 (htpasswd -m)"
        " is a weak hash: rehash it with `htpasswd -B`"
    ]


def test_an_unreadable_htpasswd_file_is_refused(conf: Path) -> None:
    text = POOL + "[auth staff]\ntype = basic\nusers = missing.htpasswd\n" + HTTP
    assert errors(conf, text) == [
        f":5: [auth staff] users: expected a readable htpasswd file; found No such file or"
        f" directory ('{conf / 'missing.htpasswd'}')"
    ]


def test_a_bad_htpasswd_line_is_refused_with_the_files_line(conf: Path) -> None:
    write_htpasswd(conf, bcrypt_line("alice", "a"), "bob:plaintext")
    [error] = errors(conf, POOL + "[auth staff]\ntype = basic\nusers = users.htpasswd\n" + HTTP)
    assert error.startswith(":5: [auth staff] users: expected a hash made by `htpasswd -B`")
    assert f"(in {conf / 'users.htpasswd'} line 2)" in error
    assert "plaintext" not in error  # a password written in the clear is never shown


def test_an_api_key_section_reads_its_key_file(conf: Path) -> None:
    digest = hashlib.sha256(b"k-123").hexdigest()
    (conf / "keys").write_text(f"# name digest\nci {digest}\n")
    found = listener(
        conf,
        "auth = api\n",
        before="[auth api]\ntype = api_key\nkeys = keys\nquery_param = api_key\nrealm = API\n",
    ).auth
    method = found.method
    assert isinstance(method, ApiKeyAuthConfig)
    assert method.keys.name_of(b"k-123") == "ci"
    assert (method.header, method.query_param, method.name_header) == (
        "X-API-Key",
        "api_key",
        "X-Auth-Key",
    )
    assert found.realm == "API"


def test_a_key_file_with_a_malformed_digest_is_refused(conf: Path) -> None:
    (conf / "keys").write_text("ci abc123\n")
    [error] = errors(conf, POOL + "[auth api]\ntype = api_key\nkeys = keys\n" + HTTP)
    assert error == (
        ":5: [auth api] keys: expected a SHA-256 digest of 64 hex digits after the name; found"
        f" 6 characters (in {conf / 'keys'} line 1) (write the key's digest, as `printf %s KEY"
        " | sha256sum` prints it, not the key)"
    )


def test_a_jwt_section_reads_its_pem_keys(conf: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    (conf / "es.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    found = listener(
        conf,
        "auth = tokens\n",
        before="[auth tokens]\ntype = jwt\nalgorithms = ES256 RS256\nkeys = es.pem\n"
        "issuer = https://id.example\naudience = api\nleeway = 1m\n"
        "claims =\n    sub X-Auth-User\n    email X-Auth-Email\n",
    ).auth
    method = found.method
    assert isinstance(method, JwtAuthConfig)
    assert method.algorithms == ("ES256", "RS256") and len(list(method.keys)) == 1
    assert (method.issuer, method.audience, method.leeway) == ("https://id.example", "api", 60.0)
    assert method.claims == (("sub", "X-Auth-User"), ("email", "X-Auth-Email"))
    assert found.identity_headers == ("X-Auth-User", "X-Auth-Email")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "type = jwt\nalgorithms = RS265\njwks = https://id.example/jwks\n",
            ":5: [auth a] algorithms: expected one of RS256, RS384, RS512, PS256, PS384, PS512,"
            " ES256, ES384, ES512, EdDSA, Ed25519, Ed448, HS256, HS384, HS512; found 'RS265'"
            " (did you mean 'RS256'?)",
        ),
        (
            "type = jwt\nalgorithms = none\njwks = https://id.example/jwks\n",
            ":5: [auth a] algorithms: expected a JWS algorithm that signs; found 'none' ('none'"
            " means unsigned tokens, which anyone can forge (RFC 8725 3.1))",
        ),
        (
            "type = jwt\nalgorithms = HS256\njwks = https://id.example/jwks\n",
            ":5: [auth a] algorithms: expected public-key algorithms (RS*, PS*, ES*, EdDSA);"
            " found 'HS256' (an HMAC algorithm needs a shared secret, which [auth] does not"
            " take; beside public keys it would let a token signed with a public key pass (RFC"
            " 8725 2.1))",
        ),
        (
            "type = jwt\nalgorithms = RS256\njwks = id.example/jwks\n",
            ":6: [auth a] jwks: expected an http:// or https:// URL with a host; found"
            " 'id.example/jwks' (did you mean 'https://id.example/jwks'?)",
        ),
        (
            "type = jwt\nalgorithms = RS256\n",
            ":3: [auth a]: expected either 'keys' (PEM files) or 'jwks' (a URL); found neither",
        ),
        (
            "type = jwt\nalgorithms = RS256\nkeys = missing.pem\n",
            ":6: [auth a] keys: expected a readable PEM file; found '{dir}/missing.pem' (No such"
            " file or directory)",
        ),
        (
            "type = jwt\njwks = https://id.example/jwks\n",
            ":3: [auth a] algorithms: expected a 'algorithms' key (the JWS algorithms accepted,"
            " e.g. RS256); found none",
        ),
        (
            "type = basic\nusers = u\nalgorithms = RS256\n",
            ":6: [auth a] algorithms: expected 'algorithms' only with type = jwt; found type ="
            " basic",
        ),
        (
            "type = forward\nurl = http://127.0.0.1:9/auth\nrealm = x\n",
            ":6: [auth a] realm: expected 'realm' only with type = basic or api_key or jwt;"
            " found type = forward",
        ),
        (
            "type = forward\nurl = ftp://auth\n",
            ":5: [auth a] url: expected an http:// or https:// URL with a host; found 'ftp://auth'",
        ),
        (
            "type = forward\nurl = http://auth/check\ncache_time = 1m\n",
            ":6: [auth a] cache_time: expected a 'cache_key' too (the request fields a decision"
            " is remembered by); found cache_time = 60s without one",
        ),
        (
            "type = api_key\nkeys = k\nheader = off\n",
            ":6: [auth a] header: expected a header, a query_param, or both; found header = off"
            " alone",
        ),
        (
            "type = oauth\n",
            ":4: [auth a] type: expected 'basic', 'api_key', 'jwt', 'forward'; found 'oauth'",
        ),
    ],
)
def test_bad_auth_sections_are_refused(conf: Path, section: str, expected: str) -> None:
    (conf / "u").write_text(bcrypt_line("a", "b") + "\n")
    (conf / "k").write_text(f"ci {'0' * 64}\n")
    text = POOL + "[auth a]\n" + section + HTTP
    assert errors(conf, text) == [expected.replace("{dir}", str(conf))]


def test_a_forward_auth_section(conf: Path) -> None:
    found = listener(
        conf,
        "auth = sso\n",
        before="[auth sso]\ntype = forward\nurl = http://127.0.0.1:9100/check\ntimeout = 1s\n"
        "copy_headers = X-Auth-User X-Auth-Groups\ncache_time = 30s\ncache_key = Cookie\n",
    ).auth
    method = found.method
    assert isinstance(method, ForwardAuthConfig)
    assert method.request_headers == ("Authorization", "Cookie")
    assert method.copy_headers == ("X-Auth-User", "X-Auth-Groups")
    assert (method.timeout, method.cache_time, method.cache_key) == (1.0, 30.0, ("Cookie",))
    assert found.identity_headers == ("X-Auth-User", "X-Auth-Groups")


def test_routes_name_an_auth_or_turn_the_listeners_off(conf: Path) -> None:
    (conf / "u").write_text(bcrypt_line("a", "b") + "\n")
    config = load(
        conf,
        POOL
        + "[auth staff]\ntype = basic\nusers = u\n"
        + "[route public]\npool = web\nauth = off\n"
        + "[http h]\nlisten = tcp:8080\nauth = staff\nroutes =\n"
        + "    path /public/ -> route public\n    path / -> pool web\n",
    )
    http = config.http[0]
    assert http.auth is not None and http.auth.name == "staff"
    assert http.routes[0].security.auth == OFF
    assert http.routes[1].security.auth is None
    assert config.auth["staff"] is http.auth
    assert listener_errors(
        conf, "auth = staf\n", before="[auth staff]\ntype = basic\nusers = u\n"
    ) == [
        ":10: [http h] auth: expected the name of a [auth] ('staff'); found 'staf' (did you"
        " mean 'staff'?)"
    ]


# L4 listeners.


def test_l4_listeners_take_access_and_per_client_limits(conf: Path) -> None:
    config = load(
        conf,
        POOL
        + "[tcp t]\nlisten = tcp:9000\npool = web\naccess = deny 10.0.0.0/8\n"
        + "max_connections_per_client = 10\nmax_connection_rate_per_client = 100/m\n"
        + "[udp u]\nlisten = udp:5300\npool = web\naccess =\n    allow ::1\n    deny all\n"
        + "[websocket w]\nlisten = tcp:9001\npool = web\naccess = allow all\n"
        + "max_connection_rate_per_client = 5/s\n",
    )
    [tcp], [udp], [ws] = config.tcp, config.udp, config.websocket
    assert tcp.access is not None and not tcp.access.allows("10.1.1.1")
    assert tcp.max_connections_per_client == 10
    assert tcp.max_connection_rate_per_client == Rate(100, 60.0)
    assert udp.access is not None and udp.access.rules[0].network == ipaddress.ip_network("::1")
    assert ws.max_connection_rate_per_client == Rate(5, 1.0)
    assert ws.max_connections_per_client is None


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            "max_connection_rate_per_client = 10/h\n",
            ":6: [tcp t] max_connection_rate_per_client: expected a rate such as 10/s or 100/m;"
            " found '10/h'",
        ),
        (
            "max_connections_per_client = 0\n",
            ":6: [tcp t] max_connections_per_client: expected a whole number from 1; found '0'",
        ),
        (
            "access = allow 10.0.0.0/33\n",
            ":6: [tcp t] access: expected an address, a CIDR network, 'all' or 'file PATH';"
            " found '10.0.0.0/33'",
        ),
    ],
)
def test_bad_l4_keys_are_refused(conf: Path, keys: str, expected: str) -> None:
    text = POOL + "[tcp t]\nlisten = tcp:9000\npool = web\n" + keys
    assert errors(conf, text) == [expected]


def test_udp_takes_no_per_client_connection_limits(conf: Path) -> None:
    text = POOL + "[udp u]\nlisten = udp:5300\npool = web\nmax_connections_per_client = 3\n"
    [error] = errors(conf, text)
    assert error.startswith(":6: [udp u] max_connections_per_client: expected a key of udp")

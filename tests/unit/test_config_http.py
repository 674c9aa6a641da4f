"""The HTTP relay's configuration: [http] and [route] sections, the route and header-rule
grammar, the http check and the HTTP pool keys, and every error they report."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.cli import main
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import load, loads
from proxyd.config.model import (
    HeaderRule,
    HttpCheck,
    HttpListenerConfig,
    PoolConfig,
    ProxyAction,
    RedirectAction,
    RespondAction,
    RouteConfig,
    RouteMatch,
)
from proxyd.config.routes import match_path
from proxyd.relay.http.routing import normalize_path

POOLS = """\
[pool web]
servers = 127.0.0.1:9001
[pool api]
servers = 127.0.0.1:9002
[pool static]
servers = 127.0.0.1:9003
"""
"""Lines 1 to 6."""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        loads(text, "proxyd.ini")
    return [str(e) for e in info.value.errors]


def http(routes: str = "path / -> pool web", **keys: str) -> str:
    """POOLS, then `[http h]` on line 7, `listen` on 8, `routes =` on 9, the routes from 10."""
    text = POOLS + "[http h]\nlisten = tcp:8080\nroutes =\n"
    text += "".join(f"    {line}\n" for line in routes.splitlines())
    text += "".join(f"{key} = {value}\n" for key, value in keys.items())
    return text


def routes_of(routes: str, extra: str = "") -> tuple[RouteConfig, ...]:
    return loads(http(routes) + extra, "proxyd.ini").http[0].routes


def route_error(route: str) -> str:
    (error,) = errors_of(http(route))
    prefix = "proxyd.ini:10: [http h] routes: expected "
    assert error.startswith(prefix), error
    return error[len(prefix) :]


FULL = """\
[proxyd]
access_log = /var/log/proxyd/all.log

[pool web]
servers = 127.0.0.1:9001
check = http GET /healthz host example.com expect 200,204 body "ok"
keepalive = 16
keepalive_timeout = 30s
sticky_cookie = SRV

[pool api]
servers = 127.0.0.1:9002

[pool static]
servers = 127.0.0.1:9003

[pool debug]
servers = 127.0.0.1:9004

[http public]
listen = tcp:8080:interface=127.0.0.1
routes =
    host api.example.com  path /v1/  -> pool api  strip_prefix
    host *.example.com path /old/ -> redirect 301 https://{host}/new{path}
    path /static/ method GET,HEAD -> pool static rewrite "^/static/(.*)$" /assets/\\1 host cdn
    path /health -> respond 200 "ok"   ; a comment
    path / header X-Canary=1 -> pool web
    path / header X-Debug -> route debug
    path / -> pool web
trusted_proxies = 10.0.0.0/8 127.0.0.1
    ::1
request_headers =
    set X-Proxy proxyd
    add X-Client "{client_ip} via {scheme}"
    remove X-Internal
response_headers =
    add Strict-Transport-Security "max-age=63072000"
via = no
max_header_size = 16KiB
max_headers = 50
max_uri_length = 4KiB
max_body_size = 10MiB
header_timeout = 5s
body_timeout = 30s
keepalive_timeout = 1m
connect_timeout = 2s
response_timeout = 90s
idle_timeout = 2m
retries = 0
error_pages =
    502 503 504 errors/5xx.html
    404 /ABSOLUTE/404.html
access_log = -

[http plain]
listen = tcp:8081
routes = -> route maintenance

[route debug]
pool = debug
strip_prefix = yes
rewrite = "^/x/(.*)$" /y/\\1
host = debug.internal:8080
request_headers = set X-Debug-Route "{route}"
response_headers =
    remove Server
    add X-Route {route}

[route maintenance]
respond = 503 "down for maintenance"
content_type = text/html; charset=utf-8
"""


@pytest.fixture
def full(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / "5xx.html").write_text("<h1>down</h1>")
    (tmp_path / "404.html").write_text("<h1>not here</h1>")
    path = tmp_path / "proxyd.ini"
    path.write_text(FULL.replace("/ABSOLUTE", str(tmp_path)))
    return path, str(tmp_path)


def test_a_full_http_file_becomes_frozen_values_with_the_written_settings(full) -> None:
    path, base = full
    config = load(str(path))
    web = config.pools["web"]
    assert web.check == HttpCheck(
        method="GET",
        path="/healthz",
        host="example.com",
        expect=((200, 200), (204, 204)),
        body=b"ok",
    )
    assert (web.keepalive, web.keepalive_timeout, web.sticky_cookie) == (16, 30.0, "SRV")
    public, plain = config.http
    assert public.name == "public" and public.listen == "tcp:8080:interface=127.0.0.1"
    assert public.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert public.request_headers == (  # in the order they apply: remove, ..., set, ..., add
        HeaderRule("remove", "X-Internal"),
        HeaderRule("set", "X-Proxy", "proxyd"),
        HeaderRule("add", "X-Client", "{client_ip} via {scheme}"),
    )
    assert public.response_headers == (
        HeaderRule("add", "Strict-Transport-Security", "max-age=63072000"),
    )
    assert (public.via, public.max_header_size, public.max_headers) == (False, 16384, 50)
    assert (public.max_uri_length, public.max_body_size) == (4096, 10 << 20)
    assert (public.header_timeout, public.body_timeout, public.keepalive_timeout) == (5, 30, 60)
    assert (public.connect_timeout, public.response_timeout, public.idle_timeout) == (2, 90, 120)
    assert public.retries == 0
    assert public.error_pages == (
        (502, f"{base}/errors/5xx.html"),
        (503, f"{base}/errors/5xx.html"),
        (504, f"{base}/errors/5xx.html"),
        (404, f"{base}/404.html"),
    )
    assert public.access_log == "-"
    assert plain.access_log == "/var/log/proxyd/all.log", "inherits [proxyd] access_log"


def test_routes_become_route_configs_with_their_file_lines(full) -> None:
    path, _ = full
    public, plain = load(str(path)).http
    assert public.routes == (
        RouteConfig(
            "api.example.com/v1/",
            RouteMatch(host="api.example.com", path="/v1/"),
            ProxyAction("api", strip_prefix=True),
            line=23,
        ),
        RouteConfig(
            "*.example.com/old/",
            RouteMatch(host="*.example.com", path="/old/"),
            RedirectAction(301, "https://{host}/new{path}"),
            line=24,
        ),
        RouteConfig(
            "*/static/",
            RouteMatch(path="/static/", methods=frozenset({"GET", "HEAD"})),
            ProxyAction(
                "static",
                rewrite=(re.compile("^/static/(.*)$"), "/assets/{1}"),
                host="cdn",
            ),
            line=25,
        ),
        RouteConfig("*/health", RouteMatch(path="/health"), RespondAction(200, "ok"), line=26),
        RouteConfig("*/", RouteMatch(headers=(("x-canary", "1"),)), ProxyAction("web"), line=27),
        RouteConfig(
            "debug",
            RouteMatch(headers=(("x-debug", None),)),
            ProxyAction(
                "debug",
                strip_prefix=True,
                rewrite=(re.compile("^/x/(.*)$"), "/y/{1}"),
                host="debug.internal:8080",
            ),
            request_headers=(HeaderRule("set", "X-Debug-Route", "{route}"),),
            response_headers=(
                HeaderRule("remove", "Server"),
                HeaderRule("add", "X-Route", "{route}"),
            ),
            line=28,
        ),
        RouteConfig("*/", RouteMatch(), ProxyAction("web"), line=29),
    )
    assert plain.routes == (
        RouteConfig(
            "maintenance",
            RouteMatch(),
            RespondAction(503, "down for maintenance", "text/html; charset=utf-8"),
            line=57,
        ),
    )


def test_http_listener_and_pool_keys_have_their_defaults() -> None:
    config = loads(http())
    assert config.http[0] == HttpListenerConfig(
        name="h",
        listen="tcp:8080",
        routes=(RouteConfig("*/", RouteMatch(), ProxyAction("web"), line=10),),
    )
    listener = config.http[0]
    assert (listener.via, listener.max_header_size, listener.max_headers) == (True, 32768, 100)
    assert (listener.max_uri_length, listener.max_body_size, listener.retries) == (8192, 0, 2)
    assert (listener.header_timeout, listener.body_timeout, listener.keepalive_timeout) == (
        10.0,
        60.0,
        75.0,
    )
    assert (listener.connect_timeout, listener.response_timeout, listener.idle_timeout) == (
        5.0,
        60.0,
        60.0,
    )
    assert listener.access_log == "-" and listener.error_pages == () == listener.trusted_proxies
    pool = config.pools["web"]
    assert (pool.keepalive, pool.keepalive_timeout, pool.sticky_cookie) == (None, 60.0, None)
    assert PoolConfig("x", ()).keepalive is None
    unlimited = loads("[pool web]\nservers = 127.0.0.1:1\nkeepalive = unlimited\n")
    assert unlimited.pools["web"].keepalive is None


def test_a_route_on_the_routes_line_itself_has_that_line() -> None:
    config = loads(
        POOLS + "[http h]\nlisten = tcp:1\nroutes = path /a -> pool web\n  -> pool api\n"
    )
    assert [(r.name, r.line) for r in config.http[0].routes] == [("*/a", 9), ("*/", 10)]


@pytest.mark.parametrize(
    ("route", "match"),
    [
        ("-> pool web", RouteMatch()),
        ("host API.Example.COM -> pool web", RouteMatch(host="api.example.com")),
        ("host example.com. -> pool web", RouteMatch(host="example.com")),
        ("host *.Example.com -> pool web", RouteMatch(host="*.example.com")),
        ("host 10.0.0.1 -> pool web", RouteMatch(host="10.0.0.1")),
        ("host [::1] -> pool web", RouteMatch(host="[::1]")),
        ("path /a%2Fb/ -> pool web", RouteMatch(path="/a%2Fb/")),
        ("method GET -> pool web", RouteMatch(methods=frozenset({"GET"}))),
        (
            "method POST,PUT path /x host a.b -> pool web",
            RouteMatch(host="a.b", path="/x", methods=frozenset({"POST", "PUT"})),
        ),
        (
            'header X-A header X-B=1 header "X-C=a b" header X-D= -> pool web',
            RouteMatch(headers=(("x-a", None), ("x-b", "1"), ("x-c", "a b"), ("x-d", ""))),
        ),
    ],
)
def test_route_matchers_parse(route: str, match: RouteMatch) -> None:
    (parsed,) = routes_of(route)
    assert parsed.match == match


@pytest.mark.parametrize(
    ("route", "action"),
    [
        ("-> pool web", ProxyAction("web")),
        (
            "-> pool web host upstream.internal strip_prefix",
            ProxyAction("web", strip_prefix=True, host="upstream.internal"),
        ),
        (
            "-> pool web rewrite ^/(?P<rest>.*)$ /v2/\\g<rest>",
            ProxyAction("web", rewrite=(re.compile("^/(?P<rest>.*)$"), "/v2/{rest}")),
        ),
        ("-> redirect 308 https://{host}{uri}", RedirectAction(308, "https://{host}{uri}")),
        ("-> redirect 302 /{{literal}}", RedirectAction(302, "/{{literal}}")),
        ("-> respond 204", RespondAction(204)),
        ("-> respond 404 'not; here'", RespondAction(404, "not; here")),
        ('-> respond 200 ""', RespondAction(200)),
    ],
)
def test_route_actions_parse(route: str, action: object) -> None:
    (parsed,) = routes_of(route)
    assert parsed.action == action


def test_a_route_section_may_redirect_and_carry_header_rules() -> None:
    (parsed,) = routes_of(
        "path /old/ -> route old",
        "[route old]\nredirect = 301 https://example.com{path}\n"
        "response_headers = set Cache-Control no-store\n",
    )
    assert parsed == RouteConfig(
        "old",
        RouteMatch(path="/old/"),
        RedirectAction(301, "https://example.com{path}"),
        response_headers=(HeaderRule("set", "Cache-Control", "no-store"),),
        line=10,
    )


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (
            "path /a pool web",
            "a route 'MATCHERS -> ACTION' such as 'path /api/ -> pool api'; found "
            "'path /a pool web'",
        ),
        (
            "path /a->pool web",
            "a route 'MATCHERS -> ACTION' such as 'path /api/ -> pool api'; found "
            "'path /a->pool web' ('->' needs spaces around it)",
        ),
        (
            "paht /a -> pool web",
            "a matcher ('host', 'path', 'method', 'header') before '->'; found 'paht' "
            "(did you mean 'path'?)",
        ),
        ("path -> pool web", "a value after 'path'; found nothing"),
        ("path /a path /b -> pool web", "'path' once; found 'path' twice"),
        ("host a host b -> pool web", "'host' once; found 'host' twice"),
        ("path", "a route 'MATCHERS -> ACTION' such as 'path /api/ -> pool api'; found 'path'"),
        (
            "path /a ->",
            "an action ('pool', 'redirect', 'respond', 'route') after '->'; found nothing",
        ),
        (
            "-> poll web",
            "an action ('pool', 'redirect', 'respond', 'route') after '->'; found 'poll' "
            "(did you mean 'pool'?)",
        ),
        (
            "host api.example.com:8080 -> pool web",
            "a host name such as api.example.com or *.example.com, without a port; found "
            "'api.example.com:8080' (a route matches the host without its port)",
        ),
        (
            "host * -> pool web",
            "a host name such as api.example.com or *.example.com, without a port; found '*' "
            "(leave out 'host' to match any host)",
        ),
        (
            "host bad_host! -> pool web",
            "a host name such as api.example.com or *.example.com, without a port; found "
            "'bad_host!'",
        ),
        (
            "host a.*.com -> pool web",
            "a host name such as api.example.com or *.example.com, without a port; found 'a.*.com'",
        ),
        ("path api -> pool web", "a normalised path starting with '/'; found 'api'"),
        (
            "path /a/../b -> pool web",
            "a normalised path starting with '/'; found '/a/../b' (dot segments are removed "
            "from request paths)",
        ),
        (
            "path /a/./ -> pool web",
            "a normalised path starting with '/'; found '/a/./' (dot segments are removed "
            "from request paths)",
        ),
        (
            "path /a//b -> pool web",
            "a normalised path starting with '/'; found '/a//b' (repeated slashes are merged in "
            "request paths)",
        ),
        (
            "path /%7euser -> pool web",
            "a normalised path starting with '/'; found '/%7euser' ('%7e' is not %XX in upper "
            "case)",
        ),
        (
            "path /%7Euser -> pool web",
            "a normalised path starting with '/'; found '/%7Euser' (write '~' for '%7E')",
        ),
        (
            "path /a?b=1 -> pool web",
            "a normalised path starting with '/'; found '/a?b=1' (a route matches the path, "
            "without a query)",
        ),
        (
            "path /café -> pool web",
            "a normalised path starting with '/'; found '/café' (percent-encode other "
            "characters as UTF-8, as %C3%A9 for é)",
        ),
        (
            "method get -> pool web",
            "a method name in upper case such as GET; found 'get' (did you mean 'GET'?)",
        ),
        ("method GET,,HEAD -> pool web", "a method name in upper case such as GET; found ''"),
        (
            "header X(A) -> pool web",
            "a header field name in 'header NAME[=VALUE]' (letters, digits and "
            "!#$%&'*+-.^_`|~); found 'X(A)'",
        ),
        ("-> pool", "a pool name after 'pool'; found nothing"),
        (
            "-> pool web strip_prefx",
            "a pool option ('strip_prefix', 'rewrite', 'host'); found 'strip_prefx' (did you "
            "mean 'strip_prefix'?)",
        ),
        (
            "-> pool web strip_prefix strip_prefix",
            "'strip_prefix' once; found 'strip_prefix' twice",
        ),
        ("-> pool web rewrite ^/a", "'rewrite REGEX REPLACEMENT'; found 'rewrite ^/a'"),
        (
            '-> pool web rewrite "^/(a" /b',
            "a valid regular expression; found '^/(a' (missing ), unterminated subpattern at "
            "position 2)",
        ),
        (
            '-> pool web rewrite "^/(a)/(b)$" /\\3',
            "a replacement using groups {1} to {2} of its regex or request variables; found "
            "'/\\\\3' ({3} is not one of them)",
        ),
        (
            "-> pool web rewrite ^/a$ /\\1",
            "a replacement using request variables (the regex has no groups); found '/\\\\1' "
            "({1} is not one of them)",
        ),
        (
            "-> pool web rewrite ^/(a)$ /\\g<nope>",
            "a replacement using groups {1} to {1} of its regex or request variables; found "
            "'/\\\\g<nope>' ({nope} is not one of them)",
        ),
        ("-> pool web host", "a host name after 'host'; found nothing"),
        (
            "-> pool web host a:b",
            "a host name such as example.com, with an optional :PORT; found 'a:b'",
        ),
        (
            "-> redirect 300 /x",
            "a redirect status ('301', '302', '303', '307', '308'); found '300'",
        ),
        ("-> redirect 301", "'redirect CODE LOCATION'; found 'redirect 301'"),
        ("-> redirect 301 'a b'", "a location without spaces; found 'a b'"),
        (
            "-> redirect 301 https://{hots}/",
            "a template using only {client_ip}, {host}, {scheme}, {uri}, {path}, {query}, "
            "{method}, {request_id}, {route}, {tls_version}, {tls_cipher}, {tls_sni}, "
            "{tls_client_subject}, {tls_client_issuer}, {tls_client_fingerprint}, "
            "{tls_client_verify}; found '{hots}' (did you mean 'host'?)",
        ),
        (
            "-> redirect 301 https://{host:>9}/",
            "a template using only {client_ip}, {host}, {scheme}, {uri}, {path}, {query}, "
            "{method}, {request_id}, {route}, {tls_version}, {tls_cipher}, {tls_sni}, "
            "{tls_client_subject}, {tls_client_issuer}, {tls_client_fingerprint}, "
            "{tls_client_verify}; found '{host:>9}'",
        ),
        (
            "-> redirect 301 https://{host/",
            "a template with balanced braces ('{{' and '}}' are literal braces); found "
            "'https://{host/' (expected '}' before end of string)",
        ),
        (
            "-> redirect 301 https://x}/",
            "a template with balanced braces ('{{' and '}}' are literal braces); found "
            "'https://x}/' (Single '}' encountered in format string)",
        ),
        ("-> respond 99", "a response status from 200 to 599; found '99'"),
        ("-> respond 100", "a response status from 200 to 599; found '100'"),
        ("-> respond 600", "a response status from 200 to 599; found '600'"),
        ("-> respond ok", "a response status from 200 to 599; found 'ok'"),
        ("-> respond 204 body", "no body with status 204; found 'body'"),
        ("-> respond 200 a b", "'respond CODE [BODY]'; found 'respond 200 a b'"),
        ("-> route", "'route NAME'; found 'route'"),
        (
            '-> respond 200 "open',
            "a route with balanced quotes; found '-> respond 200 \"open' (No closing quotation)",
        ),
    ],
)
def test_bad_routes_are_errors_naming_the_line(route: str, message: str) -> None:
    assert route_error(route) == message


def test_every_bad_route_line_is_reported_at_once_on_its_own_line() -> None:
    found = errors_of(http("path /a -> pool web\npath b -> pool web\n-> pool nope\n-> pool api\n"))
    assert [e.split(": expected")[0] for e in found] == [
        "proxyd.ini:11: [http h] routes",
        "proxyd.ini:12: [http h] routes",
    ]


def test_an_unknown_pool_in_a_route_is_an_error_with_did_you_mean() -> None:
    assert errors_of(http("path /a -> pool wbe")) == [
        "proxyd.ini:10: [http h] routes: expected the name of a [pool] ('api', 'static', 'web'); "
        "found 'wbe' (did you mean 'web'?)"
    ]


def test_an_unknown_route_section_is_an_error_with_did_you_mean() -> None:
    assert errors_of(http("path /a -> route admn") + "[route admin]\nrespond = 403\n") == [
        "proxyd.ini:10: [http h] routes: expected the name of a [route] ('admin'); found 'admn' "
        "(did you mean 'admin'?)"
    ]
    assert errors_of(http("path /a -> route admin")) == [
        "proxyd.ini:10: [http h] routes: expected the name of a [route] (none defined); "
        "found 'admin'"
    ]


def test_an_unknown_pool_in_a_route_section_is_an_error() -> None:
    assert errors_of(http("path /a -> route r") + "[route r]\npool = stat\n") == [
        "proxyd.ini:12: [route r] pool: expected the name of a [pool] ('api', 'static', 'web'); "
        "found 'stat' (did you mean 'static'?)"
    ]


def test_references_are_checked_beside_other_errors_of_the_listener() -> None:
    found = errors_of(POOLS + "[http h]\nlisten = tcp:x\nroutes = -> pool nope\n")
    assert [e.split(": expected")[0] for e in found] == [
        "proxyd.ini:8: [http h] listen",
        "proxyd.ini:9: [http h] routes",
    ]


def test_a_route_section_with_errors_is_reported_once_not_at_its_users() -> None:
    found = errors_of(http("-> route r") + "[route r]\nrespond = 99\n")
    assert found == [
        "proxyd.ini:12: [route r] respond: expected a response status from 200 to 599; found '99'"
    ]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "[route r]\nstrip_prefix = on\n",
            "proxyd.ini:12: [route r]: expected exactly one of 'pool', 'redirect', 'respond'; "
            "found none",
        ),
        (
            "[route r]\npool = web\nrespond = 200\n",
            "proxyd.ini:14: [route r] respond: expected exactly one of 'pool', 'redirect', "
            "'respond'; found 'pool' and 'respond'",
        ),
        (
            "[route r]\nrespond = 200\nstrip_prefix = on\n",
            "proxyd.ini:14: [route r] strip_prefix: expected 'strip_prefix' only in a [route] "
            "with 'pool'; found a [route] with 'respond'",
        ),
        (
            "[route r]\npool = web\ncontent_type = text/html\n",
            "proxyd.ini:14: [route r] content_type: expected 'content_type' only in a [route] "
            "with 'respond'; found a [route] with 'pool'",
        ),
        (
            "[route r]\nrespond = 200\ncontent_type = html\n",
            "proxyd.ini:14: [route r] content_type: expected a media type such as text/html; "
            "charset=utf-8; found 'html'",
        ),
        (
            "[route r]\npool = web\nrewrite = ^/(a)$\n",
            "proxyd.ini:14: [route r] rewrite: expected REGEX REPLACEMENT, such as "
            "\"^/old/(.*)$\" /new/{1}; found '^/(a)$'",
        ),
        (
            "[route r]\nrespond = 200\nrequest_header = set A b\n",
            "proxyd.ini:14: [route r] request_header: expected a key of route sections; found "
            "'request_header' (did you mean 'request_headers'?)",
        ),
        (
            "[route]\nrespond = 200\n",
            "proxyd.ini:12: [route]: expected [route NAME]; found [route]",
        ),
    ],
)
def test_bad_route_sections_are_errors(section: str, message: str) -> None:
    found = errors_of(http("-> pool web") + "\n" + section)
    assert found == [message]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "set Host example.com",
            "a header other than Connection, Transfer-Encoding, Content-Length, Host, "
            "Keep-Alive, Upgrade, TE, Trailer; found 'Host' (the Host sent upstream is the "
            "pool action's 'host')",
        ),
        *(
            (
                f"{op} {name} x" if op != "remove" else f"remove {name}",
                "a header other than Connection, Transfer-Encoding, Content-Length, Host, "
                f"Keep-Alive, Upgrade, TE, Trailer; found '{name}' (proxyd writes the "
                "hop-by-hop and framing fields itself)",
            )
            for op, name in [
                ("set", "Connection"),
                ("add", "transfer-encoding"),
                ("remove", "Content-Length"),
                ("set", "Keep-Alive"),
                ("set", "Upgrade"),
                ("add", "TE"),
                ("set", "Trailer"),
            ]
        ),
        (
            "sett X-A 1",
            "'remove', 'rename', 'replace', 'set', 'add_if_absent', 'add', 'append' (a header"
            " rule); found 'sett' (did you mean 'set'?)",
        ),
        ("set", "a header name after 'set'; found nothing"),
        ("set X-A", "one value after 'set X-A' (quote a value with spaces); found nothing"),
        ("add X-A a b", "one value after 'add X-A' (quote a value with spaces); found 'a b'"),
        ("remove X-A b", "'remove NAME' with no value; found 'remove X-A b'"),
        (
            "set X:A b",
            "a header field name (letters, digits and !#$%&'*+-.^_`|~); found 'X:A'",
        ),
        (
            "set X-A {client}",
            "a template using only {client_ip}, {host}, {scheme}, {uri}, {path}, {query}, "
            "{method}, {request_id}, {route}, {tls_version}, {tls_cipher}, {tls_sni}, "
            "{tls_client_subject}, {tls_client_issuer}, {tls_client_fingerprint}, "
            "{tls_client_verify}; found '{client}' (did you mean 'client_ip'?)",
        ),
        (
            "set X-A {host.real}",
            "a template using only {client_ip}, {host}, {scheme}, {uri}, {path}, {query}, "
            "{method}, {request_id}, {route}, {tls_version}, {tls_cipher}, {tls_sni}, "
            "{tls_client_subject}, {tls_client_issuer}, {tls_client_fingerprint}, "
            "{tls_client_verify}; found '{host.real}' (did you mean 'host'?)",
        ),
        (
            "set X-A {host!r}",
            "a template using only {client_ip}, {host}, {scheme}, {uri}, {path}, {query}, "
            "{method}, {request_id}, {route}, {tls_version}, {tls_cipher}, {tls_sni}, "
            "{tls_client_subject}, {tls_client_issuer}, {tls_client_fingerprint}, "
            "{tls_client_verify}; found '{host!r}'",
        ),
        (
            "set X-A {}",
            "a template using only {client_ip}, {host}, {scheme}, {uri}, {path}, {query}, "
            "{method}, {request_id}, {route}, {tls_version}, {tls_cipher}, {tls_sni}, "
            "{tls_client_subject}, {tls_client_issuer}, {tls_client_fingerprint}, "
            "{tls_client_verify}; found '{}'",
        ),
    ],
)
def test_bad_header_rules_are_errors(rule: str, message: str) -> None:
    text = http(request_headers="\n    set X-Ok 1\n    " + rule)
    assert errors_of(text) == [f"proxyd.ini:13: [http h] request_headers: expected {message}"]


def test_header_rule_values_keep_literal_braces() -> None:
    config = loads(http(response_headers='set X-Json \'{{"a": "{route}"}}\''))
    assert config.http[0].response_headers == (HeaderRule("set", "X-Json", '{{"a": "{route}"}}'),)


@pytest.mark.parametrize(
    ("check", "value"),
    [
        ("http", HttpCheck()),
        ("http HEAD", HttpCheck(method="HEAD")),
        ("http /ping?full=1", HttpCheck(path="/ping?full=1")),
        ("http GET /healthz expect 200", HttpCheck(path="/healthz", expect=((200, 200),))),
        ("http expect 2xx,301-302", HttpCheck(expect=((200, 299), (301, 302)))),
        ("http host example.com:8080", HttpCheck(host="example.com:8080")),
        ('http body "ok\\r\\n"', HttpCheck(body=b"ok\r\n")),
        (
            "http POST /check host a.b expect 204 body ''",
            HttpCheck("POST", "/check", "a.b", ((204, 204),), b""),
        ),
    ],
)
def test_http_check_specs_parse(check: str, value: HttpCheck) -> None:
    assert loads(f"[pool a]\nservers = 127.0.0.1:1\ncheck = {check}\n").pools["a"].check == value


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ("http get", "a method name in upper case such as GET; found 'get' (did you mean 'GET'?)"),
        (
            "http GET /x exepct 200",
            "'host', 'expect', 'body' after 'http [METHOD] [PATH]'; found 'exepct' (did you "
            "mean 'expect'?)",
        ),
        (
            "http expect 200 /x",
            "'host', 'expect', 'body' after 'http [METHOD] [PATH]'; found '/x' (the method and "
            "the path come first)",
        ),
        ("http expect", "a value after 'expect'; found nothing"),
        (
            "http OPTIONS *",
            "'host', 'expect', 'body' after 'http [METHOD] [PATH]'; found '*'",
        ),
        ("http expect 200 expect 204", "'expect' once; found 'expect' twice"),
        (
            "http expect 700",
            "status codes from 100 to 599 such as 200, 200,204, 200-399 or 2xx; found '700'",
        ),
        (
            "http expect 399-200",
            "status codes from 100 to 599 such as 200, 200,204, 200-399 or 2xx; found '399-200'",
        ),
        (
            "http expect 200,",
            "status codes from 100 to 599 such as 200, 200,204, 200-399 or 2xx; found '200,'",
        ),
        (
            "http expect 6xx",
            "status codes from 100 to 599 such as 200, 200,204, 200-399 or 2xx; found '6xx'",
        ),
        (
            "http host a_b:99999",
            "a host name such as example.com, with an optional :PORT; found 'a_b:99999'",
        ),
        ('http "/a b"', "a path starting with '/' (visible ASCII, no spaces); found '/a b'"),
        (
            'http body "unterminated',
            "a check with balanced quotes; found 'http body \"unterminated' (No closing quotation)",
        ),
    ],
)
def test_bad_http_checks_are_errors(check: str, message: str) -> None:
    assert errors_of(f"[pool a]\nservers = 127.0.0.1:1\ncheck = {check}\n") == [
        f"proxyd.ini:3: [pool a] check: expected {message}"
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("keepalive", "-1", "keepalive: expected a whole number from 0 or unlimited; found '-1'"),
        (
            "keepalive_timeout",
            "0s",
            "keepalive_timeout: expected a duration above zero; found '0s'",
        ),
        (
            "sticky_cookie",
            "my;cookie",
            "sticky_cookie: expected a cookie name (letters, digits and !#$%&'*+-.^_`|~); "
            "found 'my;cookie'",
        ),
        (
            "sticky_cookie",
            '"SRV ID"',
            "sticky_cookie: expected a cookie name (letters, digits and !#$%&'*+-.^_`|~); "
            "found '\"SRV ID\"'",
        ),
    ],
)
def test_bad_http_pool_keys_are_errors(key: str, value: str, message: str) -> None:
    assert errors_of(f"[pool a]\nservers = 127.0.0.1:1\n{key} = {value}\n") == [
        f"proxyd.ini:3: [pool a] {message}"
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("via", "maybe", "expected on or off; found 'maybe'"),
        (
            "max_header_size",
            "100",
            "expected a size from 1KiB to 1MiB such as 64KiB or 1MiB; found '100'",
        ),
        ("max_headers", "0", "expected a whole number from 1 to 10000; found '0'"),
        (
            "max_uri_length",
            "2MiB",
            "expected a size from 256B to 1MiB such as 64KiB or 1MiB; found '2MiB'",
        ),
        (
            "max_body_size",
            "-1",
            "expected a size from 0 to 1TiB such as 64KiB or 1MiB; found '-1'",
        ),
        *(
            (key, "0", "expected a duration above zero; found '0'")
            for key in (
                "header_timeout",
                "body_timeout",
                "keepalive_timeout",
                "connect_timeout",
                "response_timeout",
                "idle_timeout",
            )
        ),
        ("retries", "101", "expected a whole number from 0 to 100; found '101'"),
        ("access_log", "", "expected '-' (stdout), 'off' or a file path; found nothing"),
        (
            "trusted_proxies",
            "10.0.0.1/8",
            "expected an IP address or network such as 10.0.0.0/8; found '10.0.0.1/8' "
            "(10.0.0.1/8 has host bits set)",
        ),
        (
            "trusted_proxies",
            "localhost",
            "expected an IP address or network such as 10.0.0.0/8; found 'localhost' "
            "('localhost' does not appear to be an IPv4 or IPv6 network)",
        ),
        (
            "listen",
            "tcp:http",
            "expected a Twisted endpoint such as tcp:8080:interface=127.0.0.1; found "
            "'tcp:http' (invalid literal for int() with base 10: 'http')",
        ),
        (
            "rutes",
            "x",
            "expected a key of http sections; found 'rutes' (did you mean 'routes'?)",
        ),
    ],
)
def test_bad_http_listener_values_are_errors(key: str, value: str, message: str) -> None:
    text = http(**{key: value})
    if key == "listen":
        text = text.replace("listen = tcp:8080\n", "")
    line = text.splitlines().index(f"{key} = {value}") + 1
    assert errors_of(text) == [f"proxyd.ini:{line}: [http h] {key}: {message}"]


def test_listen_and_routes_are_required() -> None:
    assert errors_of(POOLS + "[http h]\nvia = on\n") == [
        "proxyd.ini:7: [http h] listen: expected a 'listen' key; found none",
        "proxyd.ini:7: [http h] routes: expected a 'routes' key; found none",
    ]
    assert errors_of(POOLS + "[http h]\nlisten = tcp:1\nroutes =\n") == [
        "proxyd.ini:9: [http h] routes: expected at least one route, one a line; found none"
    ]


def test_trusted_proxies_errors_name_their_continuation_line() -> None:
    text = http(trusted_proxies="10.0.0.0/8\n    192.168.0.0/16 ::1/200")
    assert errors_of(text) == [
        "proxyd.ini:12: [http h] trusted_proxies: expected an IP address or network such as "
        "10.0.0.0/8; found '::1/200' ('::1/200' does not appear to be an IPv4 or IPv6 network)"
    ]


def test_error_pages_are_relative_to_the_config_file_and_must_be_readable(
    tmp_path: Path,
) -> None:
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "502.html").write_text("bad gateway")
    path = tmp_path / "proxyd.ini"
    path.write_text(
        http(error_pages="\n    502 pages/502.html\n    503 pages/missing.html\n    504 pages")
    )
    with pytest.raises(ConfigErrors) as info:
        load(str(path))
    assert [str(e) for e in info.value.errors] == [
        f"{path}:13: [http h] error_pages: expected a readable file; found "
        f"'{tmp_path}/pages/missing.html' (No such file or directory)",
        f"{path}:14: [http h] error_pages: expected a readable file; found "
        f"'{tmp_path}/pages' (Is a directory)",
    ]


@pytest.mark.parametrize(
    ("pages", "message"),
    [
        ("502", "expected STATUS [STATUS...] FILE such as '502 503 errors/5xx.html'; found '502'"),
        ("302 x.html", "expected an error status from 400 to 599; found '302'"),
        ("5xx x.html", "expected an error status from 400 to 599; found '5xx'"),
    ],
)
def test_bad_error_page_lines_are_errors(pages: str, message: str) -> None:
    assert errors_of(http(error_pages=pages)) == [f"proxyd.ini:11: [http h] error_pages: {message}"]


def test_an_error_status_given_twice_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "e.html").write_text("x")
    path = tmp_path / "proxyd.ini"
    path.write_text(http(error_pages="\n    502 503 e.html\n    503 e.html"))
    with pytest.raises(ConfigErrors) as info:
        load(str(path))
    assert [str(e) for e in info.value.errors] == [
        f"{path}:13: [http h] error_pages: expected each status once; found 503 twice"
    ]


def test_the_section_kinds_now_include_http_and_route() -> None:
    assert errors_of("[htp x]\n") == [
        "proxyd.ini:1: [htp x]: expected a section kind ('proxyd', 'admin', 'pool', 'tcp', "
        "'udp', 'websocket', 'http', 'https', 'route', 'rule', 'cors', 'auth', 'ratelimit',"
        " 'cache', 'acme', 'gslb', 'filter');"
        " found [htp]"
        " (did you mean 'http'?)"
    ]


def test_a_route_section_may_come_after_the_listener_that_uses_it() -> None:
    config = loads("[route r]\nrespond = 200\n" + http("-> route r"))
    assert config.http[0].routes[0].action == RespondAction(200)


@given(st.text(alphabet="/.%2eEaA1F~-_", max_size=20))
def test_a_route_path_the_config_accepts_is_already_normalised(path: str) -> None:
    try:
        accepted = match_path(path)
    except ValueError:
        return
    assert normalize_path(accepted) == accepted


def test_proxyd_check_warns_about_routes_that_can_never_match(tmp_path: Path, capsys) -> None:
    path = tmp_path / "proxyd.ini"
    path.write_text(
        POOLS + "[http public]\nlisten = tcp:1\nroutes =\n"
        "    path /api/ -> pool web\n"
        "    path /other/ -> pool api\n"
        "    path /api/ -> pool api    ; a duplicate\n"
        "[http other]\nlisten = tcp:2\nroutes = -> pool web\n"
        "    method GET -> pool api\n"
        "    path / -> pool static\n"
    )
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: ok (3 pools, 0 tcp listeners, 2 http listeners)\n"
    assert err.splitlines() == [
        f"{path}:12: [http public] routes: this route can never match: "
        "'path /api/ -> pool api' is shadowed by line 10 ('path /api/ -> pool web')",
        f"{path}:17: [http other] routes: this route can never match: "
        "'path / -> pool static' is shadowed by line 15 ('-> pool web')",
    ]


def test_proxyd_check_without_warnings_prints_only_ok(tmp_path: Path, capsys) -> None:
    path = tmp_path / "proxyd.ini"
    path.write_text(http("path /a/ -> pool api\npath / -> pool web"))
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr() == (f"{path}: ok (3 pools, 0 tcp listeners, 1 http listeners)\n", "")


def test_proxyd_check_with_errors_exits_1(tmp_path: Path, capsys) -> None:
    path = tmp_path / "proxyd.ini"
    path.write_text(http("path /a/ -> pool nope"))
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1] == f"{path}: 1 error(s)"


def test_header_rules_apply_in_kongs_order_whatever_the_order_written() -> None:
    config = loads(
        "[pool web]\nservers = 127.0.0.1:9001\n\n[http h]\nlisten = tcp:8080\n"
        "routes =\n    path / -> pool web\nrequest_headers =\n"
        "    append X-Trail b\n    add_if_absent X-Default d\n    set X-Set s\n"
        "    replace X-Replace r\n    rename X-From X-To\n    remove X-Gone\n"
        "    add X-Trail c\n",
        "proxyd.ini",
    )
    assert [(rule.op, rule.name) for rule in config.http[0].request_headers] == [
        ("remove", "X-Gone"),
        ("rename", "X-From"),
        ("replace", "X-Replace"),
        ("set", "X-Set"),
        ("add_if_absent", "X-Default"),
        ("add", "X-Trail"),
        ("add", "X-Trail"),
    ]
    assert config.http[0].request_headers[1].value == "X-To"
    assert [rule.value for rule in config.http[0].request_headers[5:]] == ["b", "c"]


@pytest.mark.parametrize(
    ("rule", "found"),
    [
        ("rename X-A", "one new name after 'rename X-A'"),
        ("rename X-A Host", "a header other than"),
        ("rename X-A X-B X-C", "one new name"),
        ("replace X-A", "one value after 'replace X-A'"),
        ("prepend X-A v", "did you mean"),
    ],
)
def test_bad_header_rules(rule: str, found: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        loads(
            "[pool web]\nservers = 127.0.0.1:9001\n\n[http h]\nlisten = tcp:8080\n"
            f"routes =\n    path / -> pool web\nrequest_headers =\n    {rule}\n",
            "proxyd.ini",
        )
    assert found in str(info.value.errors[0]), info.value.errors[0]

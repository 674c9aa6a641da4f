"""The request path policy: encoded slashes and backslashes (escaped_slashes), path parameters
on dot segments, routes matched without path parameters; no spelling of a path gets a request
past a `path /admin/` route."""

from __future__ import annotations

import pytest

from proxyd.config.load import loads
from proxyd.config.model import (
    ESCAPED_SLASHES,
    HttpListenerConfig,
    ProxyAction,
    RespondAction,
    RouteConfig,
    RouteMatch,
)
from proxyd.relay.http.routing import (
    BadPath,
    RouteTable,
    request_path,
    rewrite_path,
    without_parameters,
)
from tests.unit.test_config_http import errors_of, http
from tests.unit.test_http_relay import Relay, request_lines, route

# request_path: the policy itself.

ENCODED = [
    "/public%2f..%2fadmin/",
    "/public%2F..%2Fadmin/",
    "/public%5c..%5cadmin/",
    "/public%5C..%5Cadmin/",
    "/a%2Fb",
    "/a%5cb",
]
BACKSLASHES = ["/public\\..\\admin/", "/public/..\\admin/", "\\admin/", "/a\\b"]


@pytest.mark.parametrize("path", ENCODED + BACKSLASHES)
def test_encoded_slashes_and_backslashes_are_refused_by_default(path: str) -> None:
    with pytest.raises(BadPath, match="encoded slash or backslash"):
        request_path(path)
    with pytest.raises(BadPath, match="encoded slash or backslash"):
        request_path(path, "reject")


@pytest.mark.parametrize(
    ("path", "decoded"),
    [
        ("/public%2f..%2fadmin/", "/admin/"),
        ("/public%2F..%2Fadmin/", "/admin/"),
        ("/public%5c..%5cadmin/", "/admin/"),
        ("/public\\..\\admin/", "/admin/"),
        ("/public/..\\admin/", "/admin/"),
        ("/a%2Fb", "/a/b"),
        ("/a%5C%5Cb", "/a/b"),
        ("/a%2f%2e%2e%2fb", "/b"),
        ("/a%252Fb", "/a%252Fb"),  # a literal "%2F": not a slash
    ],
)
def test_decode_turns_encoded_slashes_and_backslashes_into_slashes_then_normalises(
    path: str, decoded: str
) -> None:
    assert request_path(path, "decode") == decoded


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("/public%2f..%2fadmin/", "/public%2F..%2Fadmin/"),
        ("/a%5cb", "/a%5Cb"),
        ("/a\\b", "/a\\b"),
    ],
)
def test_keep_routes_and_sends_them_as_data(path: str, kept: str) -> None:
    assert request_path(path, "keep") == kept


@pytest.mark.parametrize(
    "path",
    [
        "/public/..;/admin/",
        "/public/..;x=1/admin/",
        "/public/.;/admin/",
        "/public/%2e%2e;/admin/",
        "/public/.%2E;jsessionid=1/admin/",
        "/..;",
    ],
)
@pytest.mark.parametrize("escaped_slashes", ESCAPED_SLASHES)
def test_path_parameters_on_a_dot_segment_are_always_refused(
    path: str, escaped_slashes: str
) -> None:
    with pytest.raises(BadPath, match=r"dot segment \('\.\.;'\)"):
        request_path(path, escaped_slashes)


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/%61dmin/", "/admin/"),
        ("/public/%2e%2e/admin/", "/admin/"),
        ("/app/page;jsessionid=1A2B", "/app/page;jsessionid=1A2B"),
        ("/a;v=1/b", "/a;v=1/b"),
        ("/a..;/b", "/a..;/b"),  # not a dot segment
        ("/a/b?x", "/a/b?x"),
    ],
)
def test_other_paths_are_normalised_as_before(path: str, normal: str) -> None:
    assert request_path(path) == normal


@pytest.mark.parametrize("escaped_slashes", ["reject", "decode", "keep"])
def test_an_encoded_nul_is_always_refused(escaped_slashes: str) -> None:
    with pytest.raises(BadPath, match=r"NUL"):
        request_path("/admin%00.html", escaped_slashes)


def test_an_invalid_path_is_refused_as_before() -> None:
    with pytest.raises(BadPath, match=r"^invalid request path$"):
        request_path("/a b")


# Routes are matched without path parameters.


@pytest.mark.parametrize(
    ("path", "view"),
    [
        ("/admin;x/secret", "/admin/secret"),
        ("/admin;/", "/admin/"),
        ("/a/;x/b", "/a/b"),
        ("/a;x", "/a"),
        ("/;x", "/"),
        ("/a/b", "/a/b"),
    ],
)
def test_the_path_routes_are_matched_on_has_no_parameters(path: str, view: str) -> None:
    assert without_parameters(path) == view


def admin_table() -> RouteTable:
    return RouteTable(
        [
            RouteConfig("public", RouteMatch(path="/"), ProxyAction("web"), line=1),
            RouteConfig("admin", RouteMatch(path="/admin/"), RespondAction(403), line=2),
        ]
    )


@pytest.mark.parametrize("path", ["/admin;x/secret", "/admin;/", "/admin;jsessionid=1/x"])
def test_a_directory_route_holds_for_its_path_with_parameters(path: str) -> None:
    found = admin_table().match("", request_path(path), "GET", {})
    assert found is not None and found.name == "admin"


def test_strip_prefix_strips_a_prefix_matched_without_parameters() -> None:
    api = RouteConfig("api", RouteMatch(path="/v1/"), ProxyAction("web", strip_prefix=True))
    assert rewrite_path(api, "/v1/users;x") == "/users;x"
    assert rewrite_path(api, "/v1;x/users") == "/users"


# Through the relay: the bypasses of a `path /admin/` rule.

BYPASSES = [
    "/public/..;/admin/",
    "/public/%2e%2e/admin/",
    "/%61dmin/",
    "/public%2f..%2fadmin/",
    "/public%2F..%2Fadmin/",
    "/public%5c..%5cadmin/",
    "/public\\..\\admin/",
    "/public/..\\admin/",
    "/admin;x/",
    "/public/%2e%2e;/admin/",
]


def admin_relay(**config: str) -> Relay:
    return Relay(
        routes=(
            route("/", ProxyAction(pool="web")),
            route("/admin/", RespondAction(status=403, body="no")),
        ),
        **config,
    )


@pytest.mark.parametrize("path", BYPASSES)
@pytest.mark.parametrize("escaped_slashes", ["reject", "decode"])
def test_no_spelling_of_the_path_gets_past_an_admin_rule(path: str, escaped_slashes: str) -> None:
    relay = admin_relay(escaped_slashes=escaped_slashes)
    relay.send(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = relay.received()
    assert answer.startswith((b"HTTP/1.1 403", b"HTTP/1.1 400")), answer[:40]
    assert relay.pending_connects() == [], "sent to the public pool"


def test_an_encoded_slash_is_answered_400_and_logged_with_why() -> None:
    relay = admin_relay()
    relay.send(b"GET /public%2F..%2Fadmin/ HTTP/1.1\r\nHost: a\r\n\r\n")
    assert relay.received().startswith(b"HTTP/1.1 400")
    [record] = relay.log.records
    assert record["status"] == 400
    assert record["error"] == "encoded slash or backslash in the path (escaped_slashes = reject)"


def test_decode_sends_the_decoded_normal_path_upstream() -> None:
    relay = admin_relay(escaped_slashes="decode")
    relay.send(b"GET /public%2Fdocs%5Cindex.html?q=%2F HTTP/1.1\r\nHost: a\r\n\r\n")
    _, upstream = relay.accept_upstream()
    assert request_lines(upstream.value())[0] == b"GET /public/docs/index.html?q=%2F HTTP/1.1"


def test_keep_sends_encoded_slashes_upstream_as_received() -> None:
    relay = admin_relay(escaped_slashes="keep")
    relay.send(b"GET /api/projects/group%2fname HTTP/1.1\r\nHost: a\r\n\r\n")
    _, upstream = relay.accept_upstream()
    assert request_lines(upstream.value())[0] == b"GET /api/projects/group%2Fname HTTP/1.1"


def test_path_parameters_are_sent_upstream_as_received() -> None:
    relay = admin_relay()
    relay.send(b"GET /app;v=2/page;jsessionid=1A HTTP/1.1\r\nHost: a\r\n\r\n")
    _, upstream = relay.accept_upstream()
    assert request_lines(upstream.value())[0] == b"GET /app;v=2/page;jsessionid=1A HTTP/1.1"


# Configuration.


@pytest.mark.parametrize("value", ESCAPED_SLASHES)
def test_escaped_slashes_is_read_on_http_listeners(value: str) -> None:
    assert loads(http(escaped_slashes=value)).http[0].escaped_slashes == value
    assert loads(http()).http[0].escaped_slashes == "reject"


def test_a_wrong_escaped_slashes_is_an_error_with_a_suggestion() -> None:
    assert errors_of(http(escaped_slashes="decoded")) == [
        "proxyd.ini:11: [http h] escaped_slashes: expected 'reject', 'decode', 'keep'; "
        "found 'decoded' (did you mean 'decode'?)"
    ]


def test_a_route_path_with_parameters_is_an_error() -> None:
    assert errors_of(http("path /admin;x/ -> pool web")) == [
        "proxyd.ini:10: [http h] routes: expected a normalised path starting with '/'; found "
        "'/admin;x/' (routes match request paths without their ';' parameters)"
    ]


def test_websocket_passthrough_keeps_encoded_slashes() -> None:
    config = loads(
        "[pool chat]\nservers = 127.0.0.1:9001\n"
        "[websocket w]\nlisten = tcp:8090\npool = chat\nmode = passthrough\n"
    )
    as_http: HttpListenerConfig = config.websocket[0].as_http()
    assert as_http.escaped_slashes == "keep"

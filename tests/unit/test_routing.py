"""Routing: path normalisation, the most specific route winning whatever the line order,
upstream path rewriting, and the detection of routes that can never match."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.config.load import loads
from proxyd.config.model import (
    ProxyAction,
    RespondAction,
    RouteConfig,
    RouteMatch,
)
from proxyd.relay.http.routing import (
    RouteTable,
    normalize_path,
    rewrite_path,
    unreachable,
)


def route(line: int, path: str = "/", *, pool: str = "web", **match: object) -> RouteConfig:
    """A route written on `line`, named by that line so that a test can say which won."""
    return RouteConfig(
        name=f"line {line}",
        match=RouteMatch(path=path, **match),  # type: ignore[arg-type]
        action=ProxyAction(pool),
        line=line,
    )


def winner(
    routes: list[RouteConfig],
    host: str = "",
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> str | None:
    found = RouteTable(routes).match(host, path, method, headers or {})
    return found.name if found is not None else None


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("/%2e%2e/etc/passwd", "/etc/passwd"),
        ("/a/%2E%2e/b", "/b"),
        ("/a/.%2e/b", "/b"),
        ("/%2e/a", "/a"),
        ("//a//b//", "/a/b/"),
        ("//", "/"),
        ("/./a/./b/.", "/a/b/"),
        ("/a/../../b", "/b"),
        ("/../..", "/"),
        ("/a/b/..", "/a/"),
        ("/a/..", "/"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a..b/...", "/a..b/..."),
        ("/%41%62%7e%2D%5f", "/Ab~-_"),
        ("/a%2Fb", "/a%2Fb"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2f..%2fb", "/a%2F..%2Fb"),
        ("/%25", "/%25"),
        ("/%2541", "/%2541"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a;b=c,d:e@f!$&'()*+", "/a;b=c,d:e@f!$&'()*+"),
    ],
)
def test_paths_are_normalised(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


@pytest.mark.parametrize(
    "path",
    [
        "",
        "a/b",
        "*",
        "http://x/",
        "/a%",
        "/a%4",
        "/a%zz",
        "/a%g0",
        "/a b",
        "/a\tb",
        "/\x00",
        "/a\r\n",
        "/\x7f",
        "/café",
    ],
)
def test_invalid_paths_are_refused(path: str) -> None:
    assert normalize_path(path) is None


_PATH_PIECES = st.sampled_from(
    ["/", "//", ".", "..", "%2e", "%2E", "%2f", "%41", "%7e", "%25", "%", "%4", "a", "b", "~", "-"]
)


@given(st.lists(_PATH_PIECES, max_size=12).map(lambda parts: "/" + "".join(parts)))
def test_normalising_twice_changes_nothing_and_leaves_no_dot_segments(path: str) -> None:
    normal = normalize_path(path)
    if normal is None:
        return
    assert normalize_path(normal) == normal
    assert normal.startswith("/")
    segments = normal.split("/")
    assert "." not in segments and ".." not in segments
    assert "//" not in normal
    assert not re.search(r"%(?![0-9A-F]{2})", normal)


@given(st.text(max_size=40))
def test_any_text_is_normalised_idempotently_or_refused(path: str) -> None:
    normal = normalize_path(path)
    if normal is not None:
        assert normalize_path(normal) == normal
        assert "/../" not in normal + "/" and "/./" not in normal + "/"


def test_an_exact_host_beats_a_wildcard_which_beats_no_host() -> None:
    routes = [
        route(1, "/api/"),
        route(2, host="*.example.com"),
        route(3, host="api.example.com"),
    ]
    assert winner(routes, "api.example.com", "/api/x") == "line 3"
    assert winner(routes, "www.example.com", "/api/x") == "line 2"
    assert winner(routes, "example.org", "/api/x") == "line 1"
    assert winner(routes, "", "/api/x") == "line 1"
    assert winner(routes, "example.org", "/") is None


def test_a_longer_wildcard_suffix_beats_a_shorter_one() -> None:
    routes = [
        route(1, host="*.com"),
        route(2, host="*.example.com"),
        route(3, host="*.a.example.com"),
    ]
    assert winner(routes, "x.a.example.com") == "line 3"
    assert winner(routes, "a.example.com") == "line 2", "*.a.example.com needs a label before"
    assert winner(routes, "b.example.com") == "line 2"
    assert winner(routes, "example.com") == "line 1"
    assert winner(routes, "example.org") is None


def test_a_wildcard_does_not_match_the_bare_domain_or_a_mere_suffix() -> None:
    routes = [route(1, host="*.example.com")]
    assert winner(routes, "example.com") is None
    assert winner(routes, "badexample.com") is None
    assert winner(routes, "a.b.example.com") == "line 1"


def test_the_longest_path_prefix_wins_whatever_the_line_order() -> None:
    routes = [route(1, "/"), route(2, "/api/v1/"), route(3, "/api/")]
    assert winner(routes, path="/api/v1/users") == "line 2"
    assert winner(routes, path="/api/v2") == "line 3"
    assert winner(routes, path="/apix") == "line 1"
    assert winner(list(reversed(routes)), path="/api/v1/users") == "line 2"


def test_a_path_prefix_is_a_plain_string_prefix() -> None:
    routes = [route(1, "/api")]
    assert winner(routes, path="/apix") == "line 1"
    assert winner(routes, path="/ap") is None


def test_the_host_is_compared_before_the_path() -> None:
    routes = [route(1, "/very/long/prefix/"), route(2, "/", host="a.example")]
    assert winner(routes, "a.example", "/very/long/prefix/x") == "line 2"


def test_a_method_list_beats_none_and_fewer_methods_beat_more() -> None:
    routes = [
        route(1, "/a"),
        route(2, "/a", methods=frozenset({"GET", "HEAD", "POST"})),
        route(3, "/a", methods=frozenset({"GET", "HEAD"})),
    ]
    assert winner(routes, path="/a", method="GET") == "line 3"
    assert winner(routes, path="/a", method="POST") == "line 2"
    assert winner(routes, path="/a", method="DELETE") == "line 1"


def test_a_longer_path_beats_a_method_list() -> None:
    routes = [route(1, "/a", methods=frozenset({"GET"})), route(2, "/a/b")]
    assert winner(routes, path="/a/b", method="GET") == "line 2"


def test_more_header_conditions_win_and_values_must_be_exact() -> None:
    routes = [
        route(1, "/"),
        route(2, "/", headers=(("x-canary", "1"),)),
        route(3, "/", headers=(("x-canary", None), ("x-debug", None))),
    ]
    assert winner(routes, headers={"x-canary": "1", "x-debug": ""}) == "line 3"
    assert winner(routes, headers={"x-canary": "1"}) == "line 2"
    assert winner(routes, headers={"x-canary": "10"}) == "line 1"
    assert winner(routes, headers={"x-canary": "1, 1"}) == "line 1"
    assert winner(routes, headers={"x-debug": "1"}) == "line 1"


def test_remaining_ties_go_to_the_earlier_line_then_to_the_earlier_route() -> None:
    routes = [route(5, "/a", pool="second"), route(3, "/a", pool="first")]
    assert winner(routes, path="/a") == "line 3"
    same_line = [
        RouteConfig("one", RouteMatch(), ProxyAction("a")),
        RouteConfig("two", RouteMatch(), ProxyAction("b")),
    ]
    assert RouteTable(same_line).match("", "/", "GET", {}) is same_line[0]


def test_routes_from_a_config_file_match_as_written() -> None:
    config = loads(
        "[pool web]\nservers = 127.0.0.1:1\n[pool api]\nservers = 127.0.0.1:2\n"
        "[http h]\nlisten = tcp:1\nroutes =\n"
        "    path / -> pool web\n"
        "    host API.example.com path /v1/ -> pool api strip_prefix\n"
        "    path /health -> respond 200 ok\n"
    )
    table = RouteTable(config.http[0].routes)
    found = table.match("api.example.com", "/v1/users", "GET", {})
    assert found is not None and found.name == "api.example.com/v1/"
    assert rewrite_path(found, "/v1/users") == "/users"
    health = table.match("other", "/health", "GET", {})
    assert health is not None and health.action == RespondAction(200, "ok")


_HOSTS = ["a.example.com", "b.example.com", "x.a.example.com", "example.com", "other.org"]
_ROUTE_HOSTS = [None, "a.example.com", "example.com", "*.example.com", "*.a.example.com", "*.org"]
_PATHS = ["/", "/a", "/a/", "/a/b", "/b"]
_METHODS = [None, frozenset({"GET"}), frozenset({"GET", "POST"}), frozenset({"POST"})]
_HEADERS = [(), (("x", None),), (("x", "1"),), (("x", None), ("y", "2"))]

_routes = st.lists(
    st.builds(
        RouteMatch,
        host=st.sampled_from(_ROUTE_HOSTS),
        path=st.sampled_from(_PATHS),
        methods=st.sampled_from(_METHODS),
        headers=st.sampled_from(_HEADERS),
    ),
    max_size=8,
).map(
    lambda matches: [
        RouteConfig(f"r{i}", m, ProxyAction("p"), line=10 + i) for i, m in enumerate(matches)
    ]
)


def _host_matches(pattern: str | None, host: str) -> bool:
    if pattern is None:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def _slow_match(
    routes: list[RouteConfig], host: str, path: str, method: str, headers: dict[str, str]
) -> RouteConfig | None:
    """The rule of the module docstring, written out plainly."""

    def key(r: RouteConfig) -> tuple[int, ...]:
        m = r.match
        host_rank = (0, 0) if m.host is None else (1, len(m.host)) if "*" in m.host else (2, 0)
        methods = (1, -len(m.methods)) if m.methods else (0, 0)
        return (*host_rank, len(m.path), *methods, len(m.headers), -r.line)

    candidates = [
        r
        for r in routes
        if _host_matches(r.match.host, host)
        and path.startswith(r.match.path)
        and (r.match.methods is None or method in r.match.methods)
        and all(n in headers and (v is None or headers[n] == v) for n, v in r.match.headers)
    ]
    return max(candidates, key=key) if candidates else None


@given(
    _routes,
    st.sampled_from(_HOSTS),
    st.sampled_from(_PATHS),
    st.sampled_from(["GET", "POST"]),
    st.sampled_from([{}, {"x": "1"}, {"x": "2", "y": "2"}, {"x": "1", "y": "2"}]),
)
def test_the_table_picks_what_the_plain_rule_picks(
    routes: list[RouteConfig], host: str, path: str, method: str, headers: dict[str, str]
) -> None:
    assert RouteTable(routes).match(host, path, method, headers) == _slow_match(
        routes, host, path, method, headers
    )


@given(_routes)
def test_an_unreachable_route_is_never_chosen(routes: list[RouteConfig]) -> None:
    never = {id(r) for r, _ in unreachable(routes)}
    table = RouteTable(routes)
    for host in _HOSTS:
        for path in _PATHS:
            for method in ("GET", "POST", "PUT"):
                for headers in ({}, {"x": "1"}, {"x": "1", "y": "2"}, {"y": "2"}):
                    found = table.match(host, path, method, headers)
                    assert found is None or id(found) not in never


@pytest.mark.parametrize(
    ("path", "action", "upstream"),
    [
        ("/v1/x", ProxyAction("p", strip_prefix=True), "/x"),
        ("/v1/", ProxyAction("p", strip_prefix=True), "/"),
        ("/v1/a/b/", ProxyAction("p", strip_prefix=True), "/a/b/"),
        ("/v1/x", ProxyAction("p"), "/v1/x"),
        (
            "/static/css/a.css",
            ProxyAction("p", rewrite=(re.compile("^/static/(.*)$"), "/assets/{1}")),
            "/assets/css/a.css",
        ),
        ("/v1/a/a", ProxyAction("p", strip_prefix=True, rewrite=(re.compile("a"), "b")), "/b/a"),
        (
            "/v1/old/x",
            ProxyAction("p", strip_prefix=True, rewrite=(re.compile("^/old"), "/new")),
            "/new/x",
        ),
        ("/v1/x", ProxyAction("p", rewrite=(re.compile("^/v1/"), "")), "/x"),
        ("/v1/x", ProxyAction("p", rewrite=(re.compile("^/nomatch"), "/y")), "/v1/x"),
    ],
)
def test_rewrite_path_strips_the_prefix_then_applies_the_rewrite(
    path: str, action: ProxyAction, upstream: str
) -> None:
    assert rewrite_path(RouteConfig("r", RouteMatch(path="/v1/"), action), path) == upstream


@pytest.mark.parametrize(
    ("prefix", "path", "upstream"),
    [("/v1", "/v1", "/"), ("/v1", "/v1/x", "/x"), ("/v1", "/v1x", "/x"), ("/", "/a/b", "/a/b")],
)
def test_strip_prefix_always_leaves_a_leading_slash(prefix: str, path: str, upstream: str) -> None:
    r = RouteConfig("r", RouteMatch(path=prefix), ProxyAction("p", strip_prefix=True))
    assert rewrite_path(r, path) == upstream


def test_rewrite_path_leaves_other_actions_alone() -> None:
    r = RouteConfig("r", RouteMatch(path="/a"), RespondAction(200))
    assert rewrite_path(r, "/a/b") == "/a/b"


def test_a_duplicate_route_is_shadowed_by_the_earlier_line() -> None:
    first, second = route(12, "/api/", pool="b"), route(14, "/api/", pool="a")
    assert unreachable([second, first]) == [(second, first)]


def test_a_broader_route_later_in_the_file_is_not_reported_when_it_still_matches_something() -> (
    None
):
    routes = [route(1, "/a/"), route(2, "/"), route(3, "/a/", methods=frozenset({"GET"}))]
    assert unreachable(routes) == []


def test_a_broader_method_list_earlier_in_a_tie_does_not_hide_a_narrower_one() -> None:
    broad = route(1, "/a", methods=frozenset({"GET", "HEAD"}))
    narrow = route(2, "/a", methods=frozenset({"GET"}))
    assert unreachable([broad, narrow]) == []
    same = route(3, "/a", methods=frozenset({"HEAD", "GET"}))
    assert unreachable([broad, narrow, same]) == [(same, broad)]


def test_a_catch_all_shadows_only_what_it_outranks() -> None:
    catch_all = route(1, "/")
    assert unreachable([catch_all, route(2, "/")]) == [(route(2, "/"), catch_all)]
    assert unreachable([catch_all, route(2, "/", host="a.example")]) == []
    assert unreachable([catch_all, route(2, "/", headers=(("x", None),))]) == []


def test_header_presence_shadows_an_exact_value_of_the_same_rank() -> None:
    present = route(1, "/", headers=(("x-canary", None),))
    exact = route(2, "/", headers=(("x-canary", "1"),))
    assert unreachable([present, exact]) == [(exact, present)]
    exact_first = route(1, "/", headers=(("x-canary", "1"),))
    present_later = route(2, "/", headers=(("x-canary", None),))
    assert unreachable([exact_first, present_later]) == []


def test_a_wildcard_host_shadows_a_longer_wildcard_only_when_it_ranks_first() -> None:
    short = route(1, "/", host="*.example.com")
    long = route(2, "/", host="*.a.example.com")
    assert unreachable([short, long]) == []
    exact = route(3, "/", host="a.example.com")
    same = route(4, "/", host="a.example.com")
    assert unreachable([short, long, exact, same]) == [(same, exact)]


def test_a_rewrite_template_takes_groups_by_number_and_name_and_the_requests_variables() -> None:
    from proxyd.config.routes import regex_rewrite
    from proxyd.relay.http.headers import RequestContext

    ctx = RequestContext(
        "10.0.0.1", 4000, "https", "api.example", "GET", "/u/7", "", "/u/7", "id", "r"
    )
    action = ProxyAction(
        "p", rewrite=regex_rewrite(r"^/u/(?P<id>\d+)(/x)?$", r"/users/{id}{2}/\1/{method}/{{x}}")
    )
    route = RouteConfig("r", RouteMatch(path="/"), action)
    assert rewrite_path(route, "/u/7", ctx) == "/users/7/7/GET/{x}"
    assert rewrite_path(route, "/u/7/x", ctx) == "/users/7/x/7/GET/{x}"
    assert rewrite_path(route, "/other", ctx) == "/other"  # no match: unchanged

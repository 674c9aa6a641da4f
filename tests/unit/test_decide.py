"""Routing as a pure function (proxyd.relay.http.decide), table-driven, without transports."""

from __future__ import annotations

import pytest

from proxyd.config.model import (
    Address,
    ProxyAction,
    RespondAction,
    RouteConfig,
    RouteMatch,
)
from proxyd.metrics import ErrorKind
from proxyd.relay.http.decide import MEMO_SIZE, Place, Refused, Routed, decide, split_host
from proxyd.relay.http.messages import Request
from proxyd.relay.http.routing import RouteTable
from proxyd.tls import PeerTls

ROUTES = RouteTable(
    (
        RouteConfig("api", RouteMatch(host="api.test", path="/v1/"), ProxyAction("api")),
        RouteConfig("hello", RouteMatch(path="/hello"), RespondAction(200, "hi")),
        RouteConfig("web", RouteMatch(host="www.test", path="/"), ProxyAction("web")),
    )
)
PEER = Address("10.0.0.7", 40000)
LOCAL = Address("127.0.0.1", 8080)


def request(method: bytes, target: bytes, host: bytes = b"www.test") -> Request:
    return Request(method, target, "1.1", [(b"Host", host)], host=host)


def run(
    req: Request,
    tls: PeerTls | None = None,
    slashes: str = "reject",
    memo: dict[tuple[bytes, bytes, bytes], Place] | None = None,
    routes: RouteTable = ROUTES,
) -> Refused | Routed:
    return decide(
        req,
        peer=PEER,
        local=LOCAL,
        tls=tls,
        routes=routes,
        escaped_slashes=slashes,
        new_request_id=lambda: "id1",
        memo=memo,
    )


@pytest.mark.parametrize(
    ("req", "refused"),
    [
        (
            request(b"CONNECT", b"www.test:443"),
            Refused(405, "CONNECT is not served by a reverse proxy", ErrorKind.REFUSED),
        ),
        (
            Request(b"CONNECT", b"/", "2", [(b"host", b"www.test")], upgrade=True),
            Refused(501, "extended CONNECT is served for websocket only", ErrorKind.REFUSED),
        ),
        (
            request(b"GET", b"ftp://www.test/"),
            Refused(400, "invalid request target", ErrorKind.BAD_REQUEST),
        ),
        (
            request(b"GET", b"http:///x"),
            Refused(400, "invalid request target", ErrorKind.BAD_REQUEST),
        ),
        (request(b"GET", b"/", b"a b"), Refused(400, "invalid Host", ErrorKind.BAD_REQUEST)),
        (request(b"GET", b"/\xff"), Refused(400, "invalid request target", ErrorKind.BAD_REQUEST)),
    ],
)
def test_requests_that_cannot_be_routed_are_refused(req: Request, refused: Refused) -> None:
    assert run(req) == refused


@pytest.mark.parametrize(
    ("req", "route", "path", "query", "host_name"),
    [
        (request(b"GET", b"/v1/x?a=1", b"API.test:8080"), "api", "/v1/x", "a=1", "api.test"),
        (request(b"GET", b"/hello", b"any.test"), "hello", "/hello", "", "any.test"),
        (request(b"POST", b"/a/../b", b"www.test."), "web", "/b", "", "www.test"),
        (request(b"GET", b"http://api.test/v1/?q", b"www.test"), "api", "/v1/", "q", "api.test"),
        (request(b"OPTIONS", b"*"), "web", "*", "", "www.test"),
        (request(b"GET", b"/nothing", b"other.test"), None, "/nothing", "", "other.test"),
    ],
)
def test_routed_requests_carry_their_route_and_normalized_target(
    req: Request, route: str | None, path: str, query: str, host_name: str
) -> None:
    decision = run(req)
    assert isinstance(decision, Routed)
    assert (decision.route.name if decision.route else None) == route
    assert (decision.ctx.path, decision.ctx.query, decision.host_name) == (path, query, host_name)
    assert decision.ctx.request_id == "id1" and decision.ctx.client_ip == "10.0.0.7"


def test_an_absolute_form_target_replaces_host() -> None:
    decision = run(request(b"GET", b"http://api.test:81/v1/", b"www.test"))
    assert isinstance(decision, Routed)
    assert decision.headers == [(b"Host", b"api.test:81")]
    assert decision.ctx.host == "api.test:81"


def test_encoded_slashes_follow_the_listeners_policy() -> None:
    assert isinstance(run(request(b"GET", b"/a%2Fb")), Refused)
    decoded = run(request(b"GET", b"/a%2Fb"), slashes="decode")
    assert isinstance(decoded, Routed) and decoded.ctx.path == "/a/b"


def test_tls_facts_reach_the_context() -> None:
    decision = run(request(b"GET", b"/"), tls=PeerTls(version="TLSv1.3", server_name="www.test"))
    assert isinstance(decision, Routed)
    assert (decision.ctx.scheme, decision.ctx.tls_version) == ("https", "TLSv1.3")


@pytest.mark.parametrize(
    ("host", "name"),
    [(b"Example.TEST.", "example.test"), (b"[::1]:8080", "[::1]"), (b"a b", None), (b"", "")],
)
def test_split_host(host: bytes, name: str | None) -> None:
    assert split_host(host) == name


def test_the_memo_remembers_origin_form_places_and_gives_the_same_decision() -> None:
    memo: dict[tuple[bytes, bytes, bytes], Place] = {}
    first = run(request(b"GET", b"/v1/a/../x?q=1", b"api.test"), memo=memo)
    again = run(request(b"GET", b"/v1/a/../x?q=1", b"api.test"), memo=memo)
    assert list(memo) == [(b"/v1/a/../x?q=1", b"api.test", b"GET")]
    assert isinstance(first, Routed) and isinstance(again, Routed)
    assert (again.route, again.ctx.path, again.ctx.query, again.host_name) == (
        first.route,
        "/v1/x",
        "q=1",
        "api.test",
    )
    run(request(b"GET", b"http://api.test/v1/", b"www.test"), memo=memo)  # absolute-form
    assert len(memo) == 1  # not kept
    assert isinstance(run(request(b"GET", b"/a%2Fb"), memo=memo), Refused)
    assert len(memo) == 1  # refusals are not kept


def test_the_memo_is_bounded_and_unused_when_routes_match_headers() -> None:
    memo: dict[tuple[bytes, bytes, bytes], Place] = {}
    for n in range(MEMO_SIZE + 1):
        run(request(b"GET", b"/p%d" % n), memo=memo)
    assert len(memo) == 1  # full at MEMO_SIZE: started again
    by_header = RouteTable(
        (RouteConfig("h", RouteMatch(path="/", headers=(("x-a", None),)), ProxyAction("web")),)
    )
    memo.clear()
    run(request(b"GET", b"/"), memo=memo, routes=by_header)
    assert memo == {}

"""CORS (proxyd.filters.cors): origin patterns and their errors, preflights answered or
refused, the CORS fields on actual responses, driven on a small fake exchange; and one
preflight through the relay, to see that it never reaches a server."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from proxyd.config.errors import Invalid
from proxyd.config.model import FilterConfig
from proxyd.filters.api import Answer, Headers, Reject, header
from proxyd.filters.cors import Cors, CorsPolicy, parse_origin_patterns
from tests.unit.test_http_relay import OK, Relay, field

APP = "https://app.example.com"


class FakeExchange:
    """What the built-in filters read and change of an exchange, as plain attributes."""

    def __init__(
        self,
        method: str = "GET",
        request: Iterable[tuple[str, str]] = (),
        response: Iterable[tuple[str, str]] = (),
        answer: Answer | None = None,
    ) -> None:
        self.method = method
        self.request_headers: Headers = [(n.encode(), v.encode()) for n, v in request]
        self.response_headers: Headers = [(n.encode(), v.encode()) for n, v in response]
        self.status = 200
        self.answer = answer
        self.vars: dict[str, Any] = {}
        self.reactor: Any = None
        self.path, self.query = "/", ""
        self.host, self.scheme, self.client_ip = "api.test", "https", "10.0.0.7"
        self.request_id, self.route_name, self.server = "r1", "api", None

    def use_pool(self, name: str) -> None:
        raise AssertionError("CORS never changes the pool")

    def response(self, name: str) -> str | None:
        return header(self.response_headers, name)


def cors(*origins: str, **policy: Any) -> Cors:
    return Cors(CorsPolicy(parse_origin_patterns(origins or (APP,)), **policy))


def preflight(
    cors_filter: Cors, origin: str = APP, method: str = "POST", headers: str | None = None
) -> Answer | None:
    request = [("Origin", origin), ("Access-Control-Request-Method", method)]
    if headers is not None:
        request.append(("Access-Control-Request-Headers", headers))
    return cors_filter.request_head(FakeExchange("OPTIONS", request))


def actual(cors_filter: Cors, origin: str | None = APP, **kwargs: Any) -> FakeExchange:
    exchange = FakeExchange(request=[] if origin is None else [("Origin", origin)], **kwargs)
    assert cors_filter.request_head(exchange) is None
    cors_filter.response_head(exchange)
    return exchange


def fields(answer: Answer | None) -> dict[str, str]:
    assert answer is not None
    return {name.decode(): value.decode() for name, value in answer.headers}


# Origin patterns.


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://a.example.com", True),
        ("https://a.b.example.com", True),
        ("https://A.Example.COM", True),
        ("https://a.example.com:443", True),
        ("https://example.com", False),
        ("https://evil-example.com", False),
        ("https://a.evil-example.com", False),
        ("https://example.com.evil.test", False),
        ("https://a.example.com.evil.test", False),
        ("http://a.example.com", False),
        ("https://a.example.com:8443", False),
        ("https://.example.com", False),
        ("https://evil.test/.example.com", False),
        ("https://evil.test?.example.com", False),
        ("https://evil.test@a.example.com", False),
        ("null", False),
    ],
)
def test_a_wildcard_origin_matches_subdomains_at_any_depth_only(origin: str, allowed: bool) -> None:
    assert parse_origin_patterns(["https://*.example.com"]).matches(origin) is allowed


def test_an_exact_origin_matches_scheme_host_and_port_with_the_host_in_any_case() -> None:
    patterns = parse_origin_patterns(["https://App.Example.com:443", "http://localhost:3000"])
    assert patterns.matches("https://app.example.com")
    assert patterns.matches("HTTPS://APP.EXAMPLE.COM")
    assert patterns.matches("http://localhost:3000")
    assert not patterns.matches("http://app.example.com")
    assert not patterns.matches("https://app.example.com:8443")
    assert not patterns.matches("http://localhost:3001")
    assert not patterns.matches("http://localhost")
    assert not patterns.matches("https://app.example.com.evil.test")


def test_a_regex_origin_must_match_the_whole_origin() -> None:
    patterns = parse_origin_patterns([r"~https://[a-z]+\.test"])
    assert patterns.matches("https://dev.test")
    assert not patterns.matches("https://dev.test.evil.example")
    assert not patterns.matches("https://x.https://dev.test")
    anchored = parse_origin_patterns([r"~^https://.*\.test$"])
    assert anchored.matches("https://a.b.test")
    assert not anchored.matches("http://a.test")


def test_null_is_allowed_only_when_listed() -> None:
    assert not parse_origin_patterns(["~.*", "https://*.example.com"]).matches("null")
    assert parse_origin_patterns(["null"]).matches("null")


def test_star_allows_every_origin() -> None:
    patterns = parse_origin_patterns(["*"])
    assert patterns.any_origin
    assert patterns.matches("https://anything.test")


@pytest.mark.parametrize(
    ("texts", "expected", "hint", "line"),
    [
        ([APP, "https://app.example.com/"], "an origin without a path", APP, 1),
        (["https://app.example.com/api"], "an origin without a path", APP, 0),
        (["app.example.com"], "an origin, scheme://host[:port]", "https://app.example.com", 0),
        (["~https://(unclosed"], "a regular expression after '~'", None, 0),
        (["https://a.*.example.com"], "'*' only as a whole first label", None, 0),
        (["https://*"], "'*' only as a whole first label", None, 0),
        (["https://app.example.com:99999"], "a port from 1 to 65535", None, 0),
        (["https://user@app.example.com"], "an origin without user information", None, 0),
        (["https://exämple.com"], "a host name in ASCII", None, 0),
        ([APP, "*"], "'*' alone", None, 1),
        ([], "at least one origin", None, 0),
    ],
)
def test_a_bad_origin_pattern_is_refused_with_what_was_expected(
    texts: list[str], expected: str, hint: str | None, line: int
) -> None:
    with pytest.raises(Invalid) as raised:
        parse_origin_patterns(texts)
    assert raised.value.expected.startswith(expected)
    assert (hint is None) == (raised.value.hint is None)
    if hint is not None:
        assert raised.value.hint is not None and hint in raised.value.hint
    assert raised.value.value_line == line


@pytest.mark.parametrize(
    ("origins", "policy", "key"),
    [
        (["*"], {}, "cors_origins"),
        ([APP], {"headers": ["*"]}, "cors_headers"),
        ([APP], {"methods": ["*"]}, "cors_methods"),
        ([APP], {"expose_headers": ["*"]}, "cors_expose_headers"),
    ],
)
def test_a_wildcard_with_credentials_is_refused_as_browsers_would_refuse_it(
    origins: list[str], policy: dict[str, Any], key: str
) -> None:
    with pytest.raises(ValueError, match=rf"^expected {key}: .*cors_credentials is on"):
        CorsPolicy(parse_origin_patterns(origins), credentials=True, **policy)


def test_a_header_name_that_is_not_a_token_is_refused() -> None:
    with pytest.raises(Invalid, match="cors_headers"):
        CorsPolicy(parse_origin_patterns([APP]), headers=["X Bad"])


# Preflights.


def test_an_allowed_preflight_is_answered_204_with_the_policy() -> None:
    answer = preflight(
        cors(methods=["GET", "PUT", "DELETE"], headers=["X-Token", "Content-Type"], max_age=600),
        headers="x-token,content-type",
    )
    assert answer is not None and not isinstance(answer, Reject)
    assert answer.status == 204 and answer.body == b""
    assert fields(answer) == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Methods": "DELETE, GET, PUT",
        "Access-Control-Allow-Headers": "x-token, content-type",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }


def test_a_credentialed_preflight_echoes_the_origin_and_allows_credentials() -> None:
    answer = preflight(
        cors("https://*.example.com", credentials=True), origin="https://b.example.com"
    )
    assert fields(answer)["Access-Control-Allow-Origin"] == "https://b.example.com"
    assert fields(answer)["Access-Control-Allow-Credentials"] == "true"


def test_a_preflight_for_every_origin_gets_star_and_no_credentials() -> None:
    answer = preflight(cors("*"), origin="https://anyone.test", method="POST")
    assert fields(answer)["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in fields(answer)


@pytest.mark.parametrize(
    ("asked", "why"),
    [
        ({"origin": "https://evil.test"}, "origin 'https://evil.test' not allowed"),
        ({"origin": "null"}, "origin 'null' not allowed"),
        ({"method": "DELETE"}, "method 'DELETE' not allowed"),
        ({"headers": "x-token, x-other"}, "header x-other not allowed"),
        ({"headers": "authorization"}, "header authorization not allowed"),
    ],
)
def test_a_refused_preflight_is_a_403_without_cors_fields(asked: dict[str, str], why: str) -> None:
    answer = preflight(cors(methods=["PUT"], headers=["X-Token"]), **asked)
    assert isinstance(answer, Reject)
    assert answer.status == 403
    assert why in answer.why
    assert not any(name.lower().startswith(b"access-control-") for name, _ in answer.headers)


def test_safelisted_methods_are_allowed_whatever_the_methods_listed() -> None:
    answer = preflight(cors(methods=["PUT"]), method="POST")
    assert answer is not None and not isinstance(answer, Reject)
    assert fields(answer)["Access-Control-Allow-Methods"] == "PUT"


def test_star_headers_allow_any_header_but_authorization_unless_listed() -> None:
    anything = cors(headers=["*"])
    assert fields(preflight(anything, headers="x-a,x-b"))["Access-Control-Allow-Headers"] == (
        "x-a, x-b"
    )
    assert isinstance(preflight(anything, headers="x-a,authorization"), Reject)
    listed = cors(headers=["*", "Authorization"])
    assert preflight(listed, headers="x-a,authorization") is not None
    assert not isinstance(preflight(listed, headers="x-a,authorization"), Reject)


def test_star_methods_allow_any_method_and_answer_the_one_asked() -> None:
    answer = preflight(cors(methods=["*"]), method="PURGE")
    assert fields(answer)["Access-Control-Allow-Methods"] == "PURGE"


def test_an_options_without_a_requested_method_is_not_a_preflight_and_goes_on() -> None:
    cors_filter = cors()
    assert cors_filter.request_head(FakeExchange("OPTIONS", [("Origin", APP)])) is None
    no_origin = [("Access-Control-Request-Method", "PUT")]
    assert cors_filter.request_head(FakeExchange("OPTIONS", no_origin)) is None
    exchange = actual(cors_filter, method="OPTIONS")
    assert exchange.response("Access-Control-Allow-Origin") == APP


def test_a_preflight_is_answered_by_proxyd_without_reaching_a_server() -> None:
    relay = Relay(filters=(FilterConfig("cors", "tests:F", (), cors()),))
    relay.send(
        b"OPTIONS /a HTTP/1.1\r\nHost: api.test\r\nOrigin: https://app.example.com\r\n"
        b"Access-Control-Request-Method: POST\r\n\r\n"
    )
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 204 ")
    assert relay.pending_connects() == []
    assert field(answer, "Access-Control-Allow-Origin") == [APP.encode()]
    assert field(answer, "Content-Length") == []
    relay.send(
        b"OPTIONS /a HTTP/1.1\r\nHost: api.test\r\nOrigin: https://evil.test\r\n"
        b"Access-Control-Request-Method: POST\r\n\r\n"
    )
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert field(answer, "Access-Control-Allow-Origin") == []
    assert relay.pending_connects() == []
    assert "origin 'https://evil.test' not allowed" in relay.log.records[-1]["error"]
    relay.send(b"GET /a HTTP/1.1\r\nHost: api.test\r\nOrigin: https://evil.test\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    answer = relay.received()
    assert field(answer, "Access-Control-Allow-Origin") == []
    assert field(answer, "Vary") == [b"Origin"]


# Actual requests.


def test_an_allowed_origin_gets_its_origin_credentials_and_exposed_headers() -> None:
    exchange = actual(cors(credentials=True, expose_headers=["X-Total", "ETag"]))
    assert exchange.response("Access-Control-Allow-Origin") == APP
    assert exchange.response("Access-Control-Allow-Credentials") == "true"
    assert exchange.response("Access-Control-Expose-Headers") == "X-Total, ETag"
    assert exchange.response("Vary") == "Origin"


def test_a_disallowed_origin_gets_no_cors_fields_but_vary() -> None:
    exchange = actual(cors(credentials=True, expose_headers=["X-Total"]), "https://evil.test")
    assert [name for name, _ in exchange.response_headers] == [b"Vary"]


def test_a_request_without_origin_still_varies_on_origin() -> None:
    exchange = actual(cors(), None, response=[("Content-Type", "text/plain")])
    assert exchange.response("Vary") == "Origin"
    assert exchange.response("Access-Control-Allow-Origin") is None


@pytest.mark.parametrize(
    ("vary", "merged"),
    [
        ([("Vary", "Accept-Encoding")], ["Accept-Encoding, Origin"]),
        ([("Vary", "Accept"), ("vary", "Cookie")], ["Accept", "Cookie, Origin"]),
        ([("Vary", "accept, ORIGIN")], ["accept, ORIGIN"]),
        ([("Vary", "*")], ["*"]),
        ([("Vary", "")], ["Origin"]),
    ],
)
def test_vary_origin_is_merged_with_the_servers_vary(
    vary: list[tuple[str, str]], merged: list[str]
) -> None:
    exchange = actual(cors(), response=vary)
    assert [v.decode() for n, v in exchange.response_headers if n.lower() == b"vary"] == merged


def test_the_servers_cors_fields_are_replaced_by_the_policy() -> None:
    backend = [
        ("Access-Control-Allow-Origin", "https://evil.test"),
        ("access-control-allow-credentials", "true"),
        ("Access-Control-Expose-Headers", "X-Secret"),
        ("X-Kept", "1"),
    ]
    allowed = actual(cors(expose_headers=["X-Total"]), response=backend)
    assert allowed.response("Access-Control-Allow-Origin") == APP
    assert allowed.response("Access-Control-Allow-Credentials") is None
    assert allowed.response("Access-Control-Expose-Headers") == "X-Total"
    assert allowed.response("X-Kept") == "1"
    refused = actual(cors(), "https://evil.test", response=backend)
    assert [n for n, _ in refused.response_headers] == [b"X-Kept", b"Vary"]


def test_star_gives_every_response_star_and_no_vary() -> None:
    with_origin = actual(cors("*", expose_headers=["X-Total"]), "https://any.test")
    without = actual(cors("*"), None)
    assert with_origin.response("Access-Control-Allow-Origin") == "*"
    assert with_origin.response("Access-Control-Expose-Headers") == "X-Total"
    assert without.response("Access-Control-Allow-Origin") == "*"
    assert with_origin.response("Vary") is None


def test_proxyds_own_answers_get_cors_fields_so_a_script_can_read_them() -> None:
    refusal = Reject(401, "no token")
    exchange = actual(cors(), response=[], answer=refusal)
    assert exchange.response("Access-Control-Allow-Origin") == APP


def test_several_origin_fields_are_no_allowed_origin() -> None:
    exchange = FakeExchange(request=[("Origin", APP), ("Origin", APP)])
    cors().response_head(exchange)
    assert exchange.response("Access-Control-Allow-Origin") is None

"""The security filters on the HTTP relay (proxyd.relay.http.chains), driven through the relay
on StringTransports: access lists (and the address they judge), request limits, rules,
invalid header names, hiding the backends, intercept_errors, the security_headers preset,
CORS and auth in the chain, and the chain's order."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any

import pytest

from proxyd.access.networks import AccessList, parse_rules
from proxyd.admin.metrics import metrics_registry
from proxyd.auth.api_keys import parse_api_keys
from proxyd.config.auth_model import ApiKeyAuthConfig, AuthConfig
from proxyd.config.model import (
    OFF,
    CorsConfig,
    ProxyAction,
    RespondAction,
    RouteConfig,
    RouteMatch,
    RouteSecurity,
    RuleConfig,
    SecurityHeadersConfig,
)
from proxyd.filters.cors import CorsPolicy, parse_origin_patterns
from proxyd.filters.security_headers import preset
from tests.unit.test_http_relay import OK, Relay, field, request_lines

FIRST = "127.0.0.1:9001"


def acl(*lines: str) -> AccessList:
    return parse_rules(enumerate(lines), "")


def secured(path: str = "/", name: str | None = None, **security: Any) -> RouteConfig:
    return RouteConfig(
        name=name or f"*{path}",
        match=RouteMatch(path=path),
        action=ProxyAction(pool="web"),
        security=RouteSecurity(**security),
    )


def get(path: str = "/", *fields: str, method: str = "GET") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: a\r\n" + "".join(f"{f}\r\n" for f in fields)
    return head.encode("latin-1") + b"\r\n"


_last: dict[int, Any] = {}


def proxied(relay: Relay, response: bytes = OK) -> tuple[bytes, bytes]:
    """What the server got and what the client got once it answered `response`: on a new
    connection where the relay asked for one, else on the one kept alive."""
    if relay.pending_connects():
        _last[id(relay)] = relay.accept_upstream()
    upstream, ut = _last[id(relay)]
    sent = ut.value()
    ut.clear()
    upstream.dataReceived(response)
    return sent, relay.received()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def errors(relay: Relay, route: str = "*/", pool: str = "web", server: str = "") -> Any:
    cell = relay.factory.stats.snapshot()["http"]["front"][route][pool][server]
    return cell.get("errors", {})


# Access.


def test_the_listeners_access_list_refuses_other_clients_403() -> None:
    relay = Relay(access=acl("allow 10.0.0.0/8", "deny all"))
    relay.send(get())
    assert proxied(relay)[1].endswith(b"hi")  # 10.0.0.7
    other, transport = relay.connect_client("192.0.2.1")
    other.dataReceived(get())
    answer = transport.value()
    assert status(answer) == 403 and answer.endswith(b"403 Forbidden\n")
    assert relay.pending_connects() == []
    assert relay.log.records[-1]["error"] == "access denied to 192.0.2.1"
    assert errors(relay) == {"access_denied": 1}


def test_a_routes_list_is_checked_after_the_listeners() -> None:
    admin = secured("/admin/", access=acl("allow 10.0.0.9", "deny all"))
    relay = Relay(routes=(admin, secured("/")), access=acl("deny 192.0.2.0/24"))
    relay.send(get("/admin/x"))
    assert status(relay.received()) == 403
    relay.send(get("/other"))  # the listener's list alone
    assert proxied(relay)[1].endswith(b"hi")
    trusted, transport = relay.connect_client("10.0.0.9")
    trusted.dataReceived(get("/admin/x"))
    assert transport.value() == b""  # at the server
    assert relay.log.records[-1]["status"] == 200


def test_x_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    relay = Relay(
        access=acl("deny 192.0.2.0/24"),
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
    )
    relay.send(get("/", "X-Forwarded-For: 192.0.2.5, 10.0.0.3"))  # from 10.0.0.7: trusted
    assert status(relay.received()) == 403
    assert relay.log.records[-1]["error"] == "access denied to 192.0.2.5"
    relay.send(get("/", "X-Forwarded-For: 198.51.100.1"))
    assert proxied(relay)[1].endswith(b"hi")
    # An untrusted client's X-Forwarded-For is not read: its own address is judged.
    outsider, transport = relay.connect_client("192.0.2.77")
    outsider.dataReceived(get("/", "X-Forwarded-For: 198.51.100.1"))
    assert status(transport.value()) == 403


# Request limits.


def test_a_method_not_allowed_is_answered_405_with_allow() -> None:
    relay = Relay(allowed_methods=frozenset({"GET", "POST"}))
    relay.send(get("/", method="DELETE"))
    answer = relay.received()
    assert status(answer) == 405
    assert field(answer, "Allow") == [b"GET, HEAD, POST"]
    assert errors(relay) == {"method_not_allowed": 1}
    relay.send(get("/", method="HEAD"))  # GET allows HEAD
    assert relay.pending_connects() == [("127.0.0.1", 9001)]


def test_a_routes_methods_replace_the_listeners() -> None:
    route = secured("/", allowed_methods=frozenset({"PUT"}))
    relay = Relay(routes=(route,), allowed_methods=frozenset({"GET"}))
    relay.send(get("/"))
    assert field(relay.received(), "Allow") == [b"PUT"]


def test_uri_and_query_limits_answer_414() -> None:
    route = secured("/", max_uri_length=300)
    relay = Relay(routes=(route,), max_query_length=10)
    relay.send(get("/?" + "q" * 11))
    assert status(relay.received()) == 414
    relay.send(get("/" + "p" * 300))
    answer = relay.received()
    assert status(answer) == 414
    assert errors(relay) == {"uri_too_long": 2}
    relay.send(get("/" + "p" * 200 + "?q=1"))
    assert relay.pending_connects() == [("127.0.0.1", 9001)]


def test_a_body_over_the_routes_limit_by_its_length_is_refused_before_it_is_read() -> None:
    relay = Relay(routes=(secured("/", max_body_size=4),))
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
    answer = relay.received()
    assert status(answer) == 413 and field(answer, "Connection") == [b"close"]
    assert relay.pending_connects() == []
    assert relay.ct.disconnecting
    assert errors(relay) == {"body_too_large": 1}


def test_a_body_within_the_limit_keeps_its_content_length() -> None:
    relay = Relay(routes=(secured("/", max_body_size=4),))
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd")
    sent, answer = proxied(relay)
    assert field(sent, "Content-Length") == [b"4"] and field(sent, "Transfer-Encoding") == []
    assert sent.endswith(b"\r\n\r\nabcd") and answer.endswith(b"hi")


def test_a_chunked_body_is_counted_as_it_streams_and_cut_over_the_limit() -> None:
    relay = Relay(routes=(secured("/", max_body_size=6),))
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
    _, ut = relay.accept_upstream()
    assert ut.value().endswith(b"4\r\nabcd\r\n")
    relay.send(b"4\r\nefgh\r\n")
    answer = relay.received()
    assert status(answer) == 413
    assert ut.disconnecting  # the request to the server is given up
    assert relay.ct.disconnecting
    record = relay.log.records[-1]
    assert record["status"] == 413 and record["error"] == "body over 6 bytes"


# Rules.


def rule(name: str, match: str, pattern: str, **kwargs: Any) -> RuleConfig:
    return RuleConfig(name, match, re.compile(pattern), **kwargs)


def test_an_enforced_rule_refuses_on_the_normalized_path_and_names_itself() -> None:
    relay = Relay(rules=(rule("admin", "path", "^/admin"),))
    relay.send(get("/a/%2e%2e/admin/users"))
    answer = relay.received()
    assert status(answer) == 403
    record = relay.log.records[-1]
    assert record["rule"] == "admin" and record["error"] == "rule admin"
    assert record["auth_user"] is None
    cell = relay.factory.stats.snapshot()["http"]["front"]["*/"]["web"][""]
    assert cell["rule_matches"] == {"admin": {"enforce": 1}}
    assert cell["errors"] == {"rule_denied": 1}


def test_a_log_only_rule_lets_the_request_on_and_logs_it() -> None:
    relay = Relay(
        rules=(
            rule("bots", "user_agent", "(?i)sqlmap", mode="log_only"),
            rule("q", "query", "<script", mode="log_only"),
        )
    )
    relay.send(get("/x?a=%3Cscript%3E", "User-Agent: SQLMap/1.7"))
    assert proxied(relay)[1].endswith(b"hi")
    record = relay.log.records[-1]
    assert record["status"] == 200 and record["rule"] == "bots (log_only), q (log_only)"
    cell = relay.factory.stats.snapshot()["http"]["front"]["*/"]["web"][""]
    assert cell["rule_matches"] == {"bots": {"log_only": 1}, "q": {"log_only": 1}}
    relay.send(get("/x"))
    proxied(relay)
    assert relay.log.records[-1]["rule"] is None


def test_header_and_method_rules_and_a_routes_rules_after_the_listeners() -> None:
    route = secured("/", rules=(rule("token", "header", "^$", header="x-token", status=401),))
    relay = Relay(routes=(route,), rules=(rule("trace", "method", "^TRACE$", status=405),))
    relay.send(get("/", "X-Token: t"))
    assert relay.pending_connects() == [("127.0.0.1", 9001)]
    proxied(relay)
    relay.send(get("/"))  # no X-Token: searched as ""
    assert status(relay.received()) == 401
    relay.send(get("/", method="TRACE"))
    assert status(relay.received()) == 405
    assert relay.log.records[-1]["rule"] == "trace"


# Invalid header names.


def test_header_names_with_underscores_are_dropped_by_default() -> None:
    relay = Relay()
    relay.send(get("/", "X_Forwarded_For: 6.6.6.6", "X-Ok: 1"))
    sent, _ = proxied(relay)
    assert b"6.6.6.6" not in sent
    assert field(sent, "X-Ok") == [b"1"]
    assert field(sent, "X-Forwarded-For") == [b"10.0.0.7"]


def test_invalid_header_names_refused_or_passed() -> None:
    refused = Relay(invalid_headers="refuse")
    refused.send(get("/", "X_Forwarded_For: 6.6.6.6"))
    assert status(refused.received()) == 400
    assert refused.log.records[-1]["error"] == "invalid header name 'X_Forwarded_For'"
    passed = Relay(invalid_headers="pass")
    passed.send(get("/", "X_Forwarded_For: 6.6.6.6"))
    assert field(proxied(passed)[0], "X_Forwarded_For") == [b"6.6.6.6"]


# Hiding the backends.

BACKEND = (
    b"HTTP/1.1 200 OK\r\nServer: Apache/2.4.1 (Debian)\r\nX-Powered-By: PHP/8.1\r\n"
    b"X-Debug: on\r\nContent-Length: 2\r\n\r\nhi"
)


def test_the_backends_identity_is_hidden_and_proxyds_server_sent() -> None:
    relay = Relay()
    relay.send(get())
    answer = proxied(relay, BACKEND)[1]
    assert field(answer, "Server") == [b"proxyd"]
    assert field(answer, "X-Powered-By") == []
    assert field(answer, "X-Debug") == [b"on"]


def test_proxyds_own_answers_carry_its_server() -> None:
    route = RouteConfig("r", RouteMatch(path="/"), RespondAction(200, "ok"))
    relay = Relay(routes=(route,), access=acl("deny 10.0.0.7"))
    relay.send(get())
    assert field(relay.received(), "Server") == [b"proxyd"]


def test_a_request_refused_as_it_is_read_carries_proxyds_server_too() -> None:
    relay = Relay(max_uri_length=256)
    relay.send(get("/" + "x" * 300))
    answer = relay.received()
    assert status(answer) == 414 and field(answer, "Server") == [b"proxyd"]
    quiet = Relay(server_header="")
    quiet.send(b"NOT HTTP\r\n\r\n")
    assert field(quiet.received(), "Server") == []


def test_hide_pass_and_server_header_keys() -> None:
    relay = Relay(hide_headers=("x-debug",), pass_headers=("server",), server_header="")
    relay.send(get())
    answer = proxied(relay, BACKEND)[1]
    assert field(answer, "Server") == [b"Apache/2.4.1 (Debian)"]
    assert field(answer, "X-Debug") == [] and field(answer, "X-Powered-By") == []
    route = secured("/", server_header="edge")
    relay = Relay(routes=(route,))
    relay.send(get())
    assert field(proxied(relay, BACKEND)[1], "Server") == [b"edge"]


# intercept_errors.

TRACE = b"Traceback: at db.internal.example:5432\n"
FAILING = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\nVary: Origin\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(TRACE), TRACE)
)


def test_a_servers_error_body_is_replaced_by_proxyds_page() -> None:
    relay = Relay(intercept_errors=frozenset({500, 502}), error_pages={502: b"<h1>502</h1>"})
    relay.send(get())
    answer = proxied(relay, FAILING)[1]
    assert status(answer) == 500
    assert answer.endswith(b"\r\n\r\n500 Internal Server Error\n")
    assert b"db.internal" not in answer
    assert field(answer, "Vary") == [b"Origin"] and field(answer, "Server") == [b"proxyd"]
    record = relay.log.records[-1]
    assert record["status"] == 500 and record["upstream_status"] == 500
    relay.send(get())
    bad_gateway = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nxyz"
    answer = proxied(relay, bad_gateway)[1]
    assert answer.endswith(b"<h1>502</h1>") and field(answer, "Content-Type") == [
        b"text/html; charset=utf-8"
    ]


def test_errors_not_listed_pass_and_a_route_may_turn_interception_off() -> None:
    route = secured("/keep/", intercept_errors=frozenset())
    relay = Relay(routes=(route, secured("/")), intercept_errors=frozenset({500}))
    relay.send(get("/keep/"))
    assert b"Traceback" in proxied(relay, FAILING)[1]
    relay.send(get("/"))
    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"
    assert proxied(relay, not_found)[1].endswith(b"nope")


# Security headers.


def hardening(**options: Any) -> SecurityHeadersConfig:
    override = options.pop("override", False)
    return SecurityHeadersConfig(enabled=True, override=override, fields=preset(**options))


def test_the_preset_is_added_without_overriding_the_server() -> None:
    relay = Relay(security_headers=hardening())
    relay.send(get())
    response = b"HTTP/1.1 200 OK\r\nX-Frame-Options: DENY\r\nContent-Length: 2\r\n\r\nhi"
    answer = proxied(relay, response)[1]
    assert field(answer, "X-Frame-Options") == [b"DENY"]
    assert field(answer, "X-Content-Type-Options") == [b"nosniff"]
    assert field(answer, "Referrer-Policy") == [b"strict-origin-when-cross-origin"]
    route = secured("/", security_headers=SecurityHeadersConfig(enabled=False))
    off = Relay(routes=(route,), security_headers=hardening())
    off.send(get())
    assert field(proxied(off)[1], "X-Content-Type-Options") == []


def test_override_replaces_the_servers_fields() -> None:
    relay = Relay(security_headers=hardening(override=True, frame_options="DENY"))
    relay.send(get())
    response = b"HTTP/1.1 200 OK\r\nX-Frame-Options: ALLOWALL\r\nContent-Length: 2\r\n\r\nhi"
    assert field(proxied(relay, response)[1], "X-Frame-Options") == [b"DENY"]


# CORS.

APP = "https://app.example.com"


def cors_config(**policy: Any) -> CorsConfig:
    return CorsConfig("app", CorsPolicy(parse_origin_patterns([APP]), **policy))


def test_a_preflight_is_answered_without_the_server_even_with_allowed_methods() -> None:
    relay = Relay(cors=cors_config(methods=["GET", "PUT"]), allowed_methods=frozenset({"GET"}))
    relay.send(get("/", f"Origin: {APP}", "Access-Control-Request-Method: PUT", method="OPTIONS"))
    answer = relay.received()
    assert status(answer) == 204
    assert field(answer, "Access-Control-Allow-Origin") == [APP.encode()]
    assert relay.pending_connects() == []
    relay.send(get("/", method="OPTIONS"))  # not a preflight: the method check holds
    assert status(relay.received()) == 405
    relay.send(get("/", f"Origin: {APP}"))
    answer = proxied(relay)[1]
    assert field(answer, "Access-Control-Allow-Origin") == [APP.encode()]
    assert field(answer, "Vary") == [b"Origin"]


def test_a_route_may_turn_the_listeners_cors_off() -> None:
    relay = Relay(routes=(secured("/", cors=OFF),), cors=cors_config())
    relay.send(get("/", f"Origin: {APP}"))
    assert field(proxied(relay)[1], "Access-Control-Allow-Origin") == []


# Auth in the chain.

KEY = b"k-123"


def api_key_auth() -> AuthConfig:
    table = parse_api_keys(f"ci {hashlib.sha256(KEY).hexdigest()}\n".encode(), "keys")
    method = ApiKeyAuthConfig(keys_file="keys", keys=table)
    return AuthConfig(name="api", type="api_key", realm="api", method=method)


def test_the_listeners_auth_applies_unless_a_route_turns_it_off() -> None:
    public = secured("/public/", auth=OFF)
    relay = Relay(routes=(public, secured("/")), auth=api_key_auth())
    relay.send(get("/", "X-Auth-Key: forged"))
    answer = relay.received()
    assert status(answer) == 401
    assert field(answer, "WWW-Authenticate") == [b'ApiKey realm="api"']
    assert relay.log.records[-1]["auth_user"] is None
    relay.send(get("/", "X-API-Key: k-123", "X-Auth-Key: forged"))
    sent, _ = proxied(relay)
    assert field(sent, "X-Auth-Key") == [b"ci"] and field(sent, "X-API-Key") == []
    assert relay.log.records[-1]["auth_user"] == "ci"
    relay.send(get("/public/"))
    assert proxied(relay)[1].endswith(b"hi")
    assert "auth_user" not in relay.log.records[-1]  # a chain without auth or rules


# The chain.


def test_the_chain_holds_the_rows_configured_in_the_documented_order() -> None:
    route = RouteConfig(
        "r",
        RouteMatch(path="/"),
        ProxyAction(pool="web"),
        security=RouteSecurity(
            access=acl("allow all"),
            max_body_size=10,
            rules=(rule("x", "path", "^/x"),),
            intercept_errors=frozenset({500}),
        ),
    )
    relay = Relay(
        routes=(route,),
        error_pages={404: b"x"},
        security_headers=hardening(),
        allowed_methods=frozenset({"GET"}),
        cors=cors_config(),
        auth=api_key_auth(),
        trace_context="on",
    )
    assert relay.factory.chains["r"].names == (
        "error_pages",
        "security_headers",
        "intercept_errors",
        "trace_context",
        "invalid_headers",
        "access",
        "request_limits",
        "rules",
        "cors",
        "auth",
        "forwarding",
    )
    assert relay.factory.chains[None].names == (
        "error_pages",
        "security_headers",
        "trace_context",
        "invalid_headers",
        "request_limits",
        "cors",
        "auth",
    )


def test_with_no_key_set_a_proxied_request_runs_only_the_default_rows() -> None:
    relay = Relay()
    chain = relay.factory.chains["*/"]
    assert chain.names == ("invalid_headers", "forwarding")
    assert chain.response_head == () and chain.hidden and chain.server == (b"Server", b"proxyd")


def test_a_request_refused_early_still_has_the_upper_rows_response_phases() -> None:
    relay = Relay(access=acl("deny all"), security_headers=hardening(), error_pages={403: b"no"})
    relay.send(get())
    answer = relay.received()
    assert answer.endswith(b"\r\n\r\nno")
    assert field(answer, "X-Content-Type-Options") == [b"nosniff"]
    assert request_lines(answer)[0] == b"HTTP/1.1 403 Forbidden"


@pytest.mark.parametrize(("mode", "expected"), [("drop", 200), ("refuse", 400)])
def test_header_names_are_checked_before_any_other_filter_reads_them(
    mode: str, expected: int
) -> None:
    relay = Relay(invalid_headers=mode, rules=(rule("u", "header", ".", header="x_u"),))
    relay.send(get("/", "X_U: 1"))
    if expected == 200:  # dropped: the rule never saw it
        proxied(relay)
    assert relay.log.records[-1]["status"] == expected
    assert relay.log.records[-1]["rule"] is None


def test_rule_matches_are_exported_by_rule_and_mode() -> None:
    relay = Relay(rules=(rule("bots", "user_agent", "curl", mode="log_only"),))
    relay.send(get("/", "User-Agent: curl/8"))
    proxied(relay)
    document = {
        "workers": 1,
        "listeners": [],
        "pools": [],
        "metrics": relay.factory.stats.snapshot(),
    }
    samples = [
        (sample.name, sample.labels, sample.value)
        for metric in metrics_registry(document).collect()
        if metric.name == "proxyd_rule_matches"
        for sample in metric.samples
    ]
    assert samples == [
        (
            "proxyd_rule_matches_total",
            {
                "listener": "front",
                "kind": "http",
                "route": "*/",
                "pool": "web",
                "server": "",
                "rule": "bots",
                "mode": "log_only",
            },
            1.0,
        )
    ]

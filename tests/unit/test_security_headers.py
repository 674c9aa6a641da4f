"""Response hardening (proxyd.filters.security_headers): the security_headers preset and its
values, added without overriding the server's unless told, and the backends' identifying
fields hidden behind proxyd's own Server."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from proxyd.config.errors import Invalid
from proxyd.config.model import FilterConfig
from proxyd.filters.api import Reject
from proxyd.filters.security_headers import (
    HIDDEN_BY_DEFAULT,
    HideHeaders,
    SecurityHeaders,
    hidden_names,
    parse_content_security_policy,
    parse_frame_ancestors,
    parse_frame_options,
    parse_referrer_policy,
    preset,
)
from tests.unit.test_cors import FakeExchange
from tests.unit.test_http_relay import Relay, field


def names(exchange: FakeExchange) -> list[str]:
    return [name.decode() for name, _ in exchange.response_headers]


# The preset.


def test_the_preset_defaults_are_nosniff_sameorigin_and_strict_origin_referrers() -> None:
    assert preset() == (
        (b"X-Content-Type-Options", b"nosniff"),
        (b"X-Frame-Options", b"SAMEORIGIN"),
        (b"Referrer-Policy", b"strict-origin-when-cross-origin"),
    )


def test_the_preset_leaves_out_what_is_switched_off() -> None:
    fields = preset(content_type_options=False, frame_options=None, referrer_policy="off")
    assert fields == ()


def test_frame_ancestors_alone_becomes_the_content_security_policy() -> None:
    fields = dict(preset(frame_ancestors="'self'  https://partner.example"))
    assert fields[b"Content-Security-Policy"] == b"frame-ancestors 'self' https://partner.example"


def test_frame_ancestors_is_added_to_a_given_content_security_policy() -> None:
    fields = dict(preset(content_security_policy="default-src 'self';", frame_ancestors="'none'"))
    assert fields[b"Content-Security-Policy"] == b"default-src 'self'; frame-ancestors 'none'"


def test_frame_ancestors_given_twice_is_refused() -> None:
    with pytest.raises(Invalid, match="frame-ancestors in one place"):
        preset(content_security_policy="frame-ancestors 'self'", frame_ancestors="'none'")


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (parse_frame_options, "deny", "DENY"),
        (parse_frame_options, " SameOrigin ", "SAMEORIGIN"),
        (parse_frame_options, "off", None),
        (parse_referrer_policy, "no-referrer, Strict-Origin", "no-referrer, strict-origin"),
        (parse_referrer_policy, "off", None),
        (parse_frame_ancestors, "'self'", "'self'"),
    ],
)
def test_preset_values_are_normalized(
    parse: Callable[[str], str | None], text: str, value: str | None
) -> None:
    assert parse(text) == value


@pytest.mark.parametrize(
    ("parse", "text", "hint"),
    [
        (parse_frame_options, "ALLOW-FROM https://a.test", "use frame_ancestors"),
        (parse_frame_options, "allow", None),
        (parse_referrer_policy, "strict-origin-when-crossorigin", "did you mean"),
        (parse_frame_ancestors, "'self'; script-src *", None),
        (parse_frame_ancestors, "'self'\x00", None),
        (parse_content_security_policy, "default-src 'self'\r\nSet-Cookie: a=b", None),
        (parse_content_security_policy, " ", None),
    ],
)
def test_bad_preset_values_are_refused(
    parse: Callable[[str], str | None], text: str, hint: str | None
) -> None:
    with pytest.raises(Invalid) as raised:
        parse(text)
    assert (raised.value.hint or "").startswith(hint or "")
    assert (hint is None) == (raised.value.hint is None)


# SecurityHeaders.


def test_security_headers_are_added_where_the_server_set_none() -> None:
    exchange = FakeExchange(response=[("Content-Type", "text/html")])
    SecurityHeaders(preset()).response_head(exchange)
    assert names(exchange) == [
        "Content-Type",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "Referrer-Policy",
    ]


def test_the_servers_own_security_headers_are_kept_unless_override() -> None:
    backend = [("x-frame-options", "DENY"), ("Referrer-Policy", "no-referrer")]
    kept = FakeExchange(response=backend)
    SecurityHeaders(preset()).response_head(kept)
    assert kept.response("X-Frame-Options") == "DENY"
    assert kept.response("Referrer-Policy") == "no-referrer"
    assert kept.response("X-Content-Type-Options") == "nosniff"
    overridden = FakeExchange(response=backend)
    SecurityHeaders(preset(), override=True).response_head(overridden)
    assert overridden.response("X-Frame-Options") == "SAMEORIGIN"
    assert overridden.response("Referrer-Policy") == "strict-origin-when-cross-origin"
    assert len(overridden.response_headers) == 3


def test_a_servers_csp_is_not_joined_by_a_second_policy() -> None:
    exchange = FakeExchange(response=[("Content-Security-Policy", "default-src *")])
    SecurityHeaders(preset(frame_ancestors="'none'")).response_head(exchange)
    assert exchange.response("Content-Security-Policy") == "default-src *"


def test_proxyds_own_answers_get_the_security_headers() -> None:
    answer = Reject(502, "no server")
    exchange = FakeExchange(response=[], answer=answer)
    exchange.response_headers = answer.headers
    SecurityHeaders(preset()).response_head(exchange)
    assert dict(answer.headers)[b"X-Content-Type-Options"] == b"nosniff"


# HideHeaders.


def test_identifying_fields_are_removed_in_any_case_and_proxyds_server_sent() -> None:
    exchange = FakeExchange(
        response=[
            ("SERVER", "Apache/2.4.41 (Ubuntu)"),
            ("x-powered-by", "PHP/7.4.3"),
            ("X-AspNet-Version", "4.0.30319"),
            ("Content-Type", "text/html"),
        ]
    )
    HideHeaders().response_head(exchange)
    assert names(exchange) == ["Content-Type", "Server"]
    assert exchange.response("Server") == "proxyd"


def test_no_server_field_when_told_none() -> None:
    exchange = FakeExchange(response=[("Server", "gunicorn")])
    HideHeaders(server=None).response_head(exchange)
    assert exchange.response_headers == []


def test_a_passed_server_field_is_kept_and_proxyds_not_added() -> None:
    exchange = FakeExchange(response=[("Server", "gunicorn"), ("X-Powered-By", "Flask")])
    HideHeaders(hidden_names(pass_=["Server"])).response_head(exchange)
    assert exchange.response_headers == [(b"Server", b"gunicorn")]


def test_hidden_names_add_to_and_take_from_the_default_set() -> None:
    hidden = hidden_names(hide=["X-Debug-Token"], pass_=["x-runtime"])
    assert b"x-debug-token" in hidden
    assert b"x-runtime" not in hidden
    assert hidden >= HIDDEN_BY_DEFAULT - {b"x-runtime"}


def test_a_server_value_that_could_split_the_head_is_refused() -> None:
    with pytest.raises(Invalid):
        HideHeaders(server=b"proxyd\r\nX-Evil: 1")


def test_proxyds_server_field_on_a_server_response_through_the_relay() -> None:
    relay = Relay(
        filters=(
            FilterConfig("hide", "tests:F", (), HideHeaders()),
            FilterConfig("security", "tests:F", (), SecurityHeaders(preset())),
        )
    )
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.18.0\r\nX-Frame-Options: DENY\r\n"
        b"Content-Length: 2\r\n\r\nhi"
    )
    answer = relay.received()
    assert field(answer, "Server") == [b"proxyd"]
    assert field(answer, "X-Frame-Options") == [b"DENY"]
    assert field(answer, "X-Content-Type-Options") == [b"nosniff"]

"""The HTTP relay's header policy: hop-by-hop removal, forwarding fields, Via, request ids,
header rules and their templates."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.config.model import HeaderRule
from proxyd.config.routes import TEMPLATE_VARIABLES
from proxyd.relay.http.headers import (
    HOP_BY_HOP,
    TEMPLATE_FIELDS,
    Headers,
    RequestContext,
    apply_rules,
    connection_tokens,
    expand,
    forward_request_headers,
    header_value,
    remove_hop_by_hop,
    request_id,
    response_headers,
)

CTX = RequestContext(
    client_ip="203.0.113.7",
    client_port=50123,
    scheme="http",
    host="www.example.com",
    method="GET",
    path="/a/b",
    query="x=1&y=2",
    uri="/a/b?x=1&y=2",
    request_id="req-1",
    route="web",
)


def forward(
    headers: Headers, *, trusted: bool = False, via: bool = False, **changes: Any
) -> Headers:
    return forward_request_headers(
        headers, attrs.evolve(CTX, **changes), trusted=trusted, via=via, version="1.1"
    )


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


# Hop-by-hop fields.


def test_hop_by_hop_fields_are_removed_whatever_their_case() -> None:
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"PROXY-CONNECTION", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-Sum"),
        (b"transfer-encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"Proxy-Authorization", b"Basic eA=="),
        (b"Accept", b"*/*"),
    ]
    assert remove_hop_by_hop(headers) == [(b"Host", b"a"), (b"Accept", b"*/*")]


def test_hop_by_hop_names_are_lower_case() -> None:
    assert all(name == name.lower() for name in HOP_BY_HOP)
    assert b"connection" in HOP_BY_HOP and b"proxy-authorization" in HOP_BY_HOP


def test_fields_named_in_connection_are_removed_too() -> None:
    headers = [
        (b"Connection", b"close, X-Secret ,\tx-other"),
        (b"connection", b"Foo"),
        (b"X-Secret", b"1"),
        (b"X-OTHER", b"2"),
        (b"foo", b"3"),
        (b"X-Kept", b"4"),
    ]
    assert remove_hop_by_hop(headers) == [(b"X-Kept", b"4")]


def test_content_length_and_host_survive_being_named_in_connection() -> None:
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"Content-Length, Host, Cookie"),
        (b"Content-Length", b"5"),
        (b"Cookie", b"c=1"),
    ]
    assert remove_hop_by_hop(headers) == [(b"Host", b"a"), (b"Content-Length", b"5")]


def test_remove_hop_by_hop_returns_a_new_list_in_wire_order() -> None:
    headers = [(b"B", b"1"), (b"A", b"2"), (b"b", b"3")]
    result = remove_hop_by_hop(headers)
    assert result == headers and result is not headers


def test_connection_tokens_are_lower_case_from_every_field() -> None:
    headers = [(b"Connection", b"Keep-Alive, , Upgrade"), (b"CONNECTION", b" close ")]
    assert connection_tokens(headers) == {b"keep-alive", b"upgrade", b"close"}
    assert connection_tokens([(b"Host", b"a")]) == frozenset()


def test_header_value_joins_every_field_of_the_name() -> None:
    headers = [(b"Accept", b"a"), (b"X", b"1"), (b"ACCEPT", b"b")]
    assert header_value(headers, b"accept") == b"a, b"
    assert header_value(headers, b"x") == b"1"
    assert header_value(headers, b"missing") is None
    assert header_value([(b"Empty", b"")], b"empty") == b""


# X-Forwarded-*.


def test_untrusted_x_forwarded_for_is_the_client_alone() -> None:
    out = forward([(b"X-Forwarded-For", b"6.6.6.6")])
    assert values(out, b"x-forwarded-for") == [b"203.0.113.7"]


def test_trusted_x_forwarded_for_is_extended() -> None:
    out = forward([(b"X-Forwarded-For", b"198.51.100.1")], trusted=True)
    assert values(out, b"x-forwarded-for") == [b"198.51.100.1, 203.0.113.7"]


def test_trusted_x_forwarded_for_fields_are_combined_in_order() -> None:
    headers = [
        (b"x-forwarded-for", b"198.51.100.1, 198.51.100.2"),
        (b"Accept", b"*/*"),
        (b"X-Forwarded-For", b"198.51.100.3"),
        (b"X-Forwarded-For", b""),
    ]
    out = forward(headers, trusted=True)
    assert values(out, b"x-forwarded-for") == [
        b"198.51.100.1, 198.51.100.2, 198.51.100.3, 203.0.113.7"
    ]


def test_trusted_without_x_forwarded_for_starts_one() -> None:
    assert values(forward([], trusted=True), b"x-forwarded-for") == [b"203.0.113.7"]


def test_x_forwarded_proto_and_host_are_set_for_untrusted_clients() -> None:
    headers = [(b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"evil.example")]
    out = forward(headers)
    assert values(out, b"x-forwarded-proto") == [b"http"]
    assert values(out, b"x-forwarded-host") == [b"www.example.com"]


def test_x_forwarded_proto_and_host_from_trusted_proxies_are_kept() -> None:
    headers = [(b"x-forwarded-proto", b"https"), (b"X-Forwarded-Host", b"shop.example:8443")]
    out = forward(headers, trusted=True)
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-host") == [b"shop.example:8443"]
    assert (b"x-forwarded-proto", b"https") in out  # as received


def test_trusted_proxies_without_them_get_them_set() -> None:
    out = forward([], trusted=True, scheme="https")
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-host") == [b"www.example.com"]


def test_x_forwarded_host_is_left_out_without_a_host() -> None:
    out = forward([(b"X-Forwarded-Host", b"evil.example")], host="")
    assert values(out, b"x-forwarded-host") == []


def test_other_fields_keep_their_order_and_case() -> None:
    headers = [(b"Host", b"www.example.com"), (b"accept", b"*/*"), (b"X-Custom", b"1")]
    out = forward(headers)
    assert out[:3] == headers
    assert [name for name, _ in out[3:]] == [
        b"X-Forwarded-For",
        b"X-Forwarded-Proto",
        b"X-Forwarded-Host",
        b"Forwarded",
        b"X-Request-ID",
    ]


# Forwarded (RFC 7239).


def test_forwarded_element_for_an_ipv4_client() -> None:
    out = forward([])
    assert values(out, b"forwarded") == [b"for=203.0.113.7;host=www.example.com;proto=http"]


def test_forwarded_element_brackets_and_quotes_an_ipv6_client() -> None:
    out = forward([], client_ip="2001:db8::1", scheme="https")
    assert values(out, b"forwarded") == [b'for="[2001:db8::1]";host=www.example.com;proto=https']


def test_forwarded_host_with_a_port_is_quoted() -> None:
    out = forward([], host="www.example.com:8080")
    assert values(out, b"forwarded") == [b'for=203.0.113.7;host="www.example.com:8080";proto=http']
    out = forward([], host="[2001:db8::2]:8080")
    assert values(out, b"forwarded") == [b'for=203.0.113.7;host="[2001:db8::2]:8080";proto=http']


def test_forwarded_quoted_string_escapes_quotes_and_backslashes() -> None:
    out = forward([], host='a"b\\c')
    assert values(out, b"forwarded") == [b'for=203.0.113.7;host="a\\"b\\\\c";proto=http']


def test_forwarded_without_host_or_client_address() -> None:
    out = forward([], host="", client_ip="")
    assert values(out, b"forwarded") == [b"for=unknown;proto=http"]


def test_forwarded_element_follows_each_of_client_host_and_scheme() -> None:
    """The element is cached by (client_ip, host, scheme): each one changes it."""
    seen = [
        values(forward([], **changes), b"forwarded")
        for changes in (
            {},
            {"client_ip": "203.0.113.8"},
            {"host": "other.example.com"},
            {"scheme": "https"},
            {},
        )
    ]
    assert seen == [
        [b"for=203.0.113.7;host=www.example.com;proto=http"],
        [b"for=203.0.113.8;host=www.example.com;proto=http"],
        [b"for=203.0.113.7;host=other.example.com;proto=http"],
        [b"for=203.0.113.7;host=www.example.com;proto=https"],
        [b"for=203.0.113.7;host=www.example.com;proto=http"],
    ]


def test_untrusted_forwarded_is_dropped() -> None:
    out = forward([(b"Forwarded", b"for=6.6.6.6")])
    assert values(out, b"forwarded") == [b"for=203.0.113.7;host=www.example.com;proto=http"]


def test_trusted_forwarded_elements_are_kept_and_one_appended() -> None:
    headers = [
        (b"Forwarded", b'for=192.0.2.60;proto=https, for="[2001:db8:cafe::17]"'),
        (b"forwarded", b"for=198.51.100.17"),
    ]
    out = forward(headers, trusted=True)
    assert values(out, b"forwarded") == [
        b'for=192.0.2.60;proto=https, for="[2001:db8:cafe::17]", for=198.51.100.17, '
        b"for=203.0.113.7;host=www.example.com;proto=http"
    ]


_PROXY_SET_NAMES = [
    "X-Real-IP",
    "Client-IP",
    "True-Client-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
    "X-Original-Forwarded-For",
    "X-Forwarded-Port",
    "X-Forwarded-Server",
    "X-Forwarded-Prefix",
    "X-Forwarded-Scheme",
    "X-Forwarded-Ssl",
    "Front-End-Https",
    "X-Url-Scheme",
    "X-Original-URL",
    "X-Rewrite-URL",
]


@pytest.mark.parametrize("name", _PROXY_SET_NAMES)
def test_client_address_and_other_proxy_set_fields_are_removed_unless_from_trusted_proxies(
    name: str,
) -> None:
    for spelling in (name, name.lower(), name.upper()):
        out = forward([(spelling.encode(), b"127.0.0.1"), (b"Accept", b"*/*")])
        assert values(out, name.lower().encode()) == []
        assert values(out, b"accept") == [b"*/*"]
        assert values(out, b"x-forwarded-for") == [b"203.0.113.7"]
    out = forward([(name.encode(), b"198.51.100.1"), (b"Accept", b"*/*")], trusted=True)
    assert out[:2] == [(name.encode(), b"198.51.100.1"), (b"Accept", b"*/*")]  # as received
    assert values(out, b"x-forwarded-proto") == [b"http"]
    assert values(out, b"x-forwarded-host") == [b"www.example.com"]


def test_a_forged_x_real_ip_does_not_reach_the_server_beside_the_real_address() -> None:
    headers = [
        (b"X-Real-IP", b"10.0.0.1"),
        (b"True-Client-IP", b"10.0.0.1"),
        (b"Client-IP", b"10.0.0.1"),
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"Forwarded", b"for=10.0.0.1"),
    ]
    out = forward(headers)
    assert not [value for _, value in out if b"10.0.0.1" in value]


# Via.


def test_via_is_added_to_requests_when_enabled() -> None:
    assert values(forward([], via=True), b"via") == [b"1.1 proxyd"]
    assert values(forward([], via=False), b"via") == []


def test_via_uses_the_received_version() -> None:
    out = forward_request_headers([], CTX, trusted=False, via=True, version="1.0")
    assert values(out, b"via") == [b"1.0 proxyd"]


def test_via_extends_an_existing_via_in_place() -> None:
    headers = [(b"Via", b"1.0 fred"), (b"Accept", b"*/*"), (b"VIA", b"1.1 p.example (Squid)")]
    out = forward(headers, via=True)
    assert out[:3] == [
        (b"Via", b"1.0 fred"),
        (b"Accept", b"*/*"),
        (b"VIA", b"1.1 p.example (Squid), 1.1 proxyd"),
    ]


def test_an_existing_via_is_passed_on_unchanged_when_disabled() -> None:
    out = forward([(b"Via", b"1.0 fred")], via=False)
    assert values(out, b"via") == [b"1.0 fred"]


def test_response_via_is_appended_when_enabled() -> None:
    headers = [(b"Content-Type", b"text/plain"), (b"via", b"1.1 cdn")]
    assert response_headers(headers, via=True, version="1.1") == [
        (b"Content-Type", b"text/plain"),
        (b"via", b"1.1 cdn, 1.1 proxyd"),
    ]
    assert response_headers([(b"A", b"1")], via=True, version="1.0") == [
        (b"A", b"1"),
        (b"Via", b"1.0 proxyd"),
    ]


def test_response_headers_without_via_are_unchanged_copies() -> None:
    headers = [(b"Via", b"1.1 cdn"), (b"X", b"1")]
    result = response_headers(headers, via=False, version="1.1")
    assert result == headers and result is not headers


# Request ids.


def generated() -> str:
    return "generated"


@pytest.mark.parametrize(
    "incoming",
    [b"abc-123", b"x", b"!" * 200, bytes(range(0x21, 0x7F))],
)
def test_a_valid_incoming_request_id_is_used(incoming: bytes) -> None:
    assert request_id([(b"X-Request-Id", incoming)], generated) == incoming.decode()


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"X-Request-ID", b"")],
        [(b"X-Request-ID", b"a" * 201)],
        [(b"X-Request-ID", b"has space")],
        [(b"X-Request-ID", b"tab\there")],
        [(b"X-Request-ID", b"caf\xc3\xa9")],
        [(b"X-Request-ID", b"del\x7f")],
        [(b"X-Request-ID", b"a"), (b"x-request-id", b"b")],
    ],
)
def test_an_invalid_or_missing_request_id_is_generated(headers: Headers) -> None:
    assert request_id(headers, generated) == "generated"


def test_incoming_request_ids_are_replaced_by_the_contexts() -> None:
    headers = [(b"X-Request-ID", b"old"), (b"x-request-id", b"older")]
    for trusted in (True, False):
        out = forward(headers, trusted=trusted, request_id="new-id")
        assert values(out, b"x-request-id") == [b"new-id"]


# Templates.


def test_template_fields_are_the_ones_the_config_accepts() -> None:
    assert set(TEMPLATE_VARIABLES) == TEMPLATE_FIELDS


@pytest.mark.parametrize(
    ("template", "expanded"),
    [
        ("", ""),
        ("plain", "plain"),
        ("{client_ip}", "203.0.113.7"),
        ("{scheme}://{host}{uri}", "http://www.example.com/a/b?x=1&y=2"),
        ("{method} {path} ? {query}", "GET /a/b ? x=1&y=2"),
        ("id={request_id};route={route}", "id=req-1;route=web"),
        ("{{client_ip}}", "{client_ip}"),
        ("{{{host}}}", "{www.example.com}"),
        ("}}{{", "}{"),
        ("{host}{host}", "www.example.comwww.example.com"),
    ],
)
def test_expand(template: str, expanded: str) -> None:
    assert expand(template, CTX) == expanded
    assert expand(template, CTX) == expanded  # the cached form gives the same


def test_expand_uses_each_requests_context() -> None:
    assert expand("{path}", CTX) == "/a/b"
    assert expand("{path}", attrs.evolve(CTX, path="/other")) == "/other"


@pytest.mark.parametrize("template", ["{client_port}", "{nope}", "{host!r}", "{host:>5}", "{"])
def test_templates_the_config_would_refuse_are_value_errors(template: str) -> None:
    with pytest.raises(ValueError):
        expand(template, CTX)


# Header rules.


def test_set_replaces_every_field_of_the_name_at_the_first_ones_place() -> None:
    headers = [(b"A", b"1"), (b"x-tag", b"old1"), (b"B", b"2"), (b"X-TAG", b"old2")]
    out = apply_rules(headers, [HeaderRule("set", "X-Tag", "new")], CTX)
    assert out == [(b"A", b"1"), (b"X-Tag", b"new"), (b"B", b"2")]


def test_set_appends_when_the_field_is_absent() -> None:
    out = apply_rules([(b"A", b"1")], [HeaderRule("set", "X-Tag", "{route}")], CTX)
    assert out == [(b"A", b"1"), (b"X-Tag", b"web")]


def test_add_appends_a_field_even_when_one_exists() -> None:
    headers = [(b"X-Tag", b"a"), (b"B", b"2")]
    out = apply_rules(headers, [HeaderRule("add", "x-tag", "b")], CTX)
    assert out == [(b"X-Tag", b"a"), (b"B", b"2"), (b"x-tag", b"b")]


def test_remove_deletes_every_field_of_the_name_whatever_its_case() -> None:
    headers = [(b"Server", b"x"), (b"A", b"1"), (b"SERVER", b"y")]
    assert apply_rules(headers, [HeaderRule("remove", "server")], CTX) == [(b"A", b"1")]
    assert apply_rules([(b"A", b"1")], [HeaderRule("remove", "Server")], CTX) == [(b"A", b"1")]


def test_rules_apply_in_order() -> None:
    rules = [
        HeaderRule("add", "X-A", "1"),
        HeaderRule("add", "X-A", "2"),
        HeaderRule("set", "x-a", "3"),
        HeaderRule("add", "X-B", "4"),
        HeaderRule("remove", "X-B"),
        HeaderRule("add", "X-B", "5"),
    ]
    assert apply_rules([(b"C", b"0")], rules, CTX) == [(b"C", b"0"), (b"x-a", b"3"), (b"X-B", b"5")]
    remove_then_set = [HeaderRule("remove", "X-A"), HeaderRule("set", "X-A", "new")]
    assert apply_rules([(b"X-A", b"1"), (b"C", b"0")], remove_then_set, CTX) == [
        (b"C", b"0"),
        (b"X-A", b"new"),
    ]


def test_rules_do_not_change_the_list_they_are_given() -> None:
    headers = [(b"X-A", b"1")]
    apply_rules(headers, [HeaderRule("set", "X-A", "2"), HeaderRule("add", "X-B", "3")], CTX)
    assert headers == [(b"X-A", b"1")]


def test_rule_values_are_expanded_and_encoded() -> None:
    rules = [
        HeaderRule("set", "X-Client", "{client_ip}:{{literal}}"),
        HeaderRule("add", "X-Latin", "caf\u00e9"),
        HeaderRule("add", "X-Utf8", "snow \u2603"),
        HeaderRule("add", "X-Host", "{host}"),
    ]
    out = apply_rules([], rules, attrs.evolve(CTX, host="h\u00f6st"))
    assert out == [
        (b"X-Client", b"203.0.113.7:{literal}"),
        (b"X-Latin", b"caf\xe9"),
        (b"X-Utf8", b"snow \xe2\x98\x83"),
        (b"X-Host", b"h\xf6st"),
    ]


def test_no_rules_give_an_equal_list() -> None:
    headers = [(b"A", b"1")]
    assert apply_rules(headers, [], CTX) == headers


# Properties.

_names = st.sampled_from(
    [b"Connection", b"connection", b"Keep-Alive", b"TE", b"X-A", b"x-a", b"Host", b"Accept"]
)
_fields = st.lists(st.tuples(_names, st.sampled_from([b"x-a", b"close", b"1", b"te, x-a"])))


@given(_fields)
def test_remove_hop_by_hop_keeps_exactly_the_end_to_end_fields_in_order(fields: Headers) -> None:
    named = connection_tokens(fields) - {b"host", b"content-length"}
    expected = [f for f in fields if f[0].lower() not in HOP_BY_HOP | named]
    assert remove_hop_by_hop(fields) == expected
    assert remove_hop_by_hop(expected) == expected


_more_names = st.sampled_from(
    [b"Connection", b"CONNECTION", b"Upgrade", b"Expect", b"Content-Length", b"Host", b"X-A"]
)
_more_values = st.sampled_from(
    [b"keep-alive", b"Upgrade", b" X-A ,, close", b"host, content-length", b"expect", b"1"]
)


@given(
    st.lists(st.tuples(_more_names, _more_values)),
    st.sampled_from([frozenset(), frozenset({b"expect"}), frozenset({b"x-a", b"host"})]),
)
def test_remove_hop_by_hop_also_drops_the_fields_asked_for(
    fields: Headers, also: frozenset[bytes]
) -> None:
    named = connection_tokens(fields) - {b"host", b"content-length"}
    expected = [f for f in fields if f[0].lower() not in HOP_BY_HOP | also | named]
    assert remove_hop_by_hop(fields, also) == expected


@given(_fields, st.booleans(), st.booleans())
def test_forwarding_fields_appear_once_each(fields: Headers, trusted: bool, via: bool) -> None:
    out = forward(remove_hop_by_hop(fields), trusted=trusted, via=via)
    for name in (b"x-forwarded-for", b"forwarded", b"x-request-id"):
        assert len(values(out, name)) == 1
    assert len(values(out, b"via")) == (1 if via else 0)


def test_rename_replace_and_add_if_absent() -> None:
    headers = [(b"X-Old", b"1"), (b"A", b"2"), (b"x-old", b"3")]
    rules = [
        HeaderRule("rename", "X-Old", "X-New"),
        HeaderRule("replace", "A", "{route}"),
        HeaderRule("replace", "Missing", "never"),
        HeaderRule("add_if_absent", "A", "not-added"),
        HeaderRule("add_if_absent", "B", "added"),
    ]
    assert apply_rules(headers, rules, CTX) == [
        (b"X-New", b"1"),
        (b"A", b"web"),
        (b"X-New", b"3"),
        (b"B", b"added"),
    ]

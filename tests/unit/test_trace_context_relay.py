"""`trace_context` on the HTTP relay (proxyd.filters.trace_context), driven through the relay
on StringTransports: the client's trace continued with proxyd's span, a new one begun when
it is absent or malformed (or always, with `restart`), tracestate passed on, the access
log's trace_id, on refused requests too; and the key's config."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from proxyd.access.networks import parse_rules
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import HttpListenerConfig
from tests.unit.test_http_relay import Relay, field, route
from tests.unit.test_security_filters import get, proxied, status

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
_SENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


def sent_trace(upstream: bytes) -> tuple[str, str, str]:
    """The one traceparent the server got: (trace id, parent id, flags)."""
    values = field(upstream, "traceparent")
    assert len(values) == 1, values
    match = _SENT.fullmatch(values[0].decode())
    assert match is not None, values
    trace, parent, flags = match.groups()
    return trace, parent, flags


def test_a_valid_traceparent_is_continued_with_proxyds_span() -> None:
    relay = Relay(trace_context="on")
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-01"))
    upstream, answer = proxied(relay)
    assert answer.endswith(b"hi")
    trace, parent, flags = sent_trace(upstream)
    assert (trace, flags) == (TRACE, "01")
    assert parent != PARENT
    assert relay.log.records[-1]["trace_id"] == TRACE


def test_an_unsampled_trace_stays_unsampled_and_undefined_flags_are_cleared() -> None:
    relay = Relay(trace_context="on")
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-02"))
    assert sent_trace(proxied(relay)[0])[::2] == (TRACE, "00")


def test_no_traceparent_begins_a_new_unsampled_trace_logged_with_its_id() -> None:
    relay = Relay(trace_context="on")
    relay.send(get("/", "tracestate: a=1"))
    upstream, _ = proxied(relay)
    trace, _, flags = sent_trace(upstream)
    assert flags == "00"
    assert field(upstream, "tracestate") == []  # not without its traceparent
    assert relay.log.records[-1]["trace_id"] == trace
    relay.send(get("/"))
    assert sent_trace(proxied(relay)[0])[0] != trace  # each request its own


@pytest.mark.parametrize(
    "fields",
    [
        (f"traceparent: 00-{TRACE.upper()}-{PARENT}-01",),
        (f"traceparent: 00-{'0' * 32}-{PARENT}-01",),
        (f"traceparent: ff-{TRACE}-{PARENT}-01",),
        ("traceparent: nonsense",),
        # Two fields are one list, hence an invalid value (as the spec's test suite has it).
        (f"traceparent: 00-{TRACE}-{PARENT}-01", f"traceparent: 00-{TRACE}-{PARENT}-01"),
    ],
)
def test_a_malformed_traceparent_begins_a_new_trace_without_tracestate(
    fields: tuple[str, ...],
) -> None:
    relay = Relay(trace_context="on")
    relay.send(get("/", *fields, "tracestate: a=1"))
    upstream, _ = proxied(relay)
    trace, _, _ = sent_trace(upstream)
    assert trace != TRACE.lower()
    assert field(upstream, "tracestate") == []
    assert relay.log.records[-1]["trace_id"] == trace


def test_tracestate_fields_are_passed_on_as_one_list_in_their_order() -> None:
    relay = Relay(trace_context="on")
    relay.send(
        get(
            "/",
            "TraceState: congo=t61rcWkgMzE",
            f"TraceParent: 00-{TRACE}-{PARENT}-01",
            "tracestate: rojo=00f067aa0ba902b7",
        )
    )
    upstream, _ = proxied(relay)
    assert sent_trace(upstream)[0] == TRACE
    assert field(upstream, "tracestate") == [b"congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"]


def test_an_invalid_tracestate_is_dropped_and_the_trace_continued() -> None:
    relay = Relay(trace_context="on")
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-01", "tracestate: Upper=1"))
    upstream, _ = proxied(relay)
    assert sent_trace(upstream)[0] == TRACE
    assert field(upstream, "tracestate") == []


def test_restart_ignores_the_clients_trace_and_drops_its_tracestate() -> None:
    relay = Relay(trace_context="restart")
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-01", "tracestate: a=1"))
    upstream, _ = proxied(relay)
    trace, _, flags = sent_trace(upstream)
    assert trace != TRACE and flags == "00"
    assert field(upstream, "tracestate") == []
    assert relay.log.records[-1]["trace_id"] == trace


def test_a_request_refused_by_access_control_has_a_trace_id() -> None:
    relay = Relay(trace_context="on", access=parse_rules(enumerate(["deny all"]), ""))
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-01"))
    assert status(relay.received()) == 403
    assert relay.pending_connects() == []
    record = relay.log.records[-1]
    assert record["error"] == "access denied to 10.0.0.7"
    assert record["trace_id"] == TRACE


def test_a_request_no_route_matches_has_a_trace_id() -> None:
    relay = Relay(trace_context="on", routes=(route("/only/"),))
    relay.send(get("/elsewhere"))
    assert status(relay.received()) == 404
    assert re.fullmatch("[0-9a-f]{32}", relay.log.records[-1]["trace_id"])


def test_off_by_default_the_fields_pass_untouched_and_the_log_has_no_trace_id() -> None:
    relay = Relay()
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-01", "tracestate: a=1"))
    upstream, _ = proxied(relay)
    assert field(upstream, "traceparent") == [f"00-{TRACE}-{PARENT}-01".encode()]
    assert field(upstream, "tracestate") == [b"a=1"]
    assert "trace_id" not in relay.log.records[-1]
    assert "trace_context" not in relay.factory.chains["*/"].names


def test_trace_context_is_the_first_request_row() -> None:
    relay = Relay(trace_context="on", access=parse_rules(enumerate(["allow all"]), ""))
    assert relay.factory.chains["*/"].names == (
        "trace_context",
        "invalid_headers",
        "access",
        "forwarding",
    )
    assert relay.factory.chains[None].names[0] == "trace_context"


# Config.

HTTP = (
    "[pool web]\nservers = 127.0.0.1:9001\n"
    "[http h]\nlisten = tcp:8080\nroutes =\n    path / -> pool web\n"
)
"""Lines 1 to 6; a key given after them is on line 7."""


def load_http(tmp_path: Path, keys: str) -> HttpListenerConfig:
    path = tmp_path / "proxyd.ini"
    text = HTTP + textwrap.dedent(keys)
    path.write_text(text)
    return loads(text, str(path)).http[0]


@pytest.mark.parametrize("value", ["off", "on", "restart"])
def test_trace_context_takes_off_on_or_restart(tmp_path: Path, value: str) -> None:
    assert load_http(tmp_path, f"trace_context = {value}\n").trace_context == value


def test_trace_context_is_off_by_default(tmp_path: Path) -> None:
    assert load_http(tmp_path, "").trace_context == "off"


def test_a_bad_trace_context_is_refused_with_the_files_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        load_http(tmp_path, "via = on\ntrace_context = yes\n")
    assert [str(e) for e in info.value.errors] == [
        f"{tmp_path / 'proxyd.ini'}:8: [http h] trace_context: expected 'off', 'on', "
        "'restart'; found 'yes'"
    ]

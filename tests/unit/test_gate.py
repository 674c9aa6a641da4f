"""proxyd.access.gate: a listener's access list, then its per-client limits, and the
throttled log of refusals, on twisted.internet.task.Clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from proxyd.access.gate import ACCESS_DENIED, CLIENT_LIMIT, LOG_INTERVAL, Gate
from proxyd.access.networks import AccessList, parse_rules
from proxyd.config.model import TcpListenerConfig, UdpListenerConfig, WebSocketListenerConfig
from proxyd.config.security_model import Rate


def rules(*lines: str) -> AccessList:
    return parse_rules(enumerate(lines, 1), "/")


def tcp(**keys: Any) -> TcpListenerConfig:
    return TcpListenerConfig(name="db", listen="tcp:13306", pool="db", **keys)


def gate_of(config: Any, clock: Clock | None = None) -> Gate:
    gate = Gate.of(config, clock or Clock())
    assert gate is not None
    return gate


def refusals(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace") == "proxyd.access"]


def text(event: dict[str, Any]) -> str:
    return str(event["log_format"].format(**event))


# Which listeners get a gate.


def test_a_listener_without_access_or_limits_has_no_gate() -> None:
    assert Gate.of(tcp(), Clock()) is None
    assert Gate.of(UdpListenerConfig(name="u", listen="udp:5300", pool="p"), Clock()) is None
    assert Gate.of(WebSocketListenerConfig(name="w", listen="tcp:1", pool="p"), Clock()) is None


def test_an_access_list_without_rules_makes_no_gate() -> None:
    assert Gate.of(tcp(access=AccessList()), Clock()) is None


def test_each_key_alone_makes_a_gate_with_only_that_part() -> None:
    by_access = gate_of(tcp(access=rules("deny all")))
    assert by_access.access is not None and by_access.limits is None
    by_count = gate_of(tcp(max_connections_per_client=3))
    assert by_count.access is None and by_count.limits is not None
    assert (by_count.limits.max_connections, by_count.limits.max_rate) == (3, None)
    by_rate = gate_of(tcp(max_connection_rate_per_client=Rate(100, 60.0)))
    assert by_rate.limits is not None
    assert (by_rate.limits.max_rate, by_rate.limits.rate_period) == (100.0, 60.0)


def test_the_gate_is_named_after_the_listeners_kind() -> None:
    assert gate_of(tcp(access=rules("deny all"))).kind == "tcp"
    ws = WebSocketListenerConfig(name="w", listen="tcp:1", pool="p", max_connections_per_client=1)
    assert (gate_of(ws).kind, gate_of(ws).listener) == ("websocket", "w")
    udp = UdpListenerConfig(name="u", listen="udp:5300", pool="p", access=rules("deny all"))
    assert gate_of(udp).kind == "udp"


# Admission.


def test_the_access_list_decides_first_match_wins() -> None:
    gate = gate_of(tcp(access=rules("deny 127.0.0.2", "allow 127.0.0.0/8", "deny all")))
    assert gate.admit("127.0.0.1") is None
    assert gate.admit("127.0.0.2") == ACCESS_DENIED
    assert gate.admit("192.0.2.1") == ACCESS_DENIED
    assert gate.admit("::ffff:127.0.0.1") is None  # a dual-stack socket's IPv4 peer


def test_a_denied_address_takes_no_connection_slot() -> None:
    gate = gate_of(tcp(access=rules("deny 192.0.2.9"), max_connections_per_client=1))
    assert gate.admit("192.0.2.9") == ACCESS_DENIED
    assert gate.limits is not None and gate.limits.tracked == 0


def test_max_connections_per_client_admits_exactly_the_bound_then_release_lets_one_in() -> None:
    gate = gate_of(tcp(max_connections_per_client=2))
    assert [gate.admit("192.0.2.1") for _ in range(3)] == [None, None, CLIENT_LIMIT]
    assert gate.admit("192.0.2.2") is None  # per address
    gate.release("192.0.2.1")
    assert gate.admit("192.0.2.1") is None
    assert gate.admit("192.0.2.1") == CLIENT_LIMIT


def test_the_rate_bound_admits_a_burst_then_one_per_interval() -> None:
    clock = Clock()
    gate = gate_of(tcp(max_connection_rate_per_client=Rate(2, 1.0)), clock)
    assert [gate.admit("192.0.2.1") for _ in range(3)] == [None, None, CLIENT_LIMIT]
    clock.advance(0.5)
    assert gate.admit("192.0.2.1") is None
    assert gate.admit("192.0.2.1") == CLIENT_LIMIT


def test_release_on_a_gate_without_limits_does_nothing() -> None:
    gate = gate_of(tcp(access=rules("allow all")))
    assert gate.admit("192.0.2.1") is None
    gate.release("192.0.2.1")


# The log of refusals.


def test_the_first_refusal_is_logged_with_structured_fields() -> None:
    gate = gate_of(tcp(access=rules("deny all")))
    with capturedLogs() as events:
        gate.admit("192.0.2.7")
    (event,) = refusals(events)
    assert text(event) == "tcp db: 192.0.2.7 refused: access denied"
    assert event["log_level"] is LogLevel.info
    assert (event["listener"], event["client"], event["reason"], event["suppressed"]) == (
        "db",
        "192.0.2.7",
        "access_denied",
        0,
    )


def test_a_limit_is_logged_as_a_warning_in_its_own_words() -> None:
    clock = Clock()
    gate = gate_of(
        tcp(max_connections_per_client=1, max_connection_rate_per_client=Rate(10, 60.0)), clock
    )
    with capturedLogs() as events:
        gate.admit("192.0.2.7")
        gate.admit("192.0.2.7")
        gate.release("192.0.2.7")
        clock.advance(LOG_INTERVAL)
        for _ in range(10):  # 9 tokens left, and a sixth of one refilled
            if gate.admit("192.0.2.7") is None:
                gate.release("192.0.2.7")
    first, second = refusals(events)
    assert text(first) == "tcp db: 192.0.2.7 refused: max_connections_per_client 1 reached"
    assert text(second) == (
        "tcp db: 192.0.2.7 refused: max_connection_rate_per_client 10/m reached"
    )
    assert first["log_level"] is second["log_level"] is LogLevel.warn
    assert first["reason"] == second["reason"] == "client_limit"


def test_refusals_are_logged_at_most_once_a_second_with_the_count_left_out() -> None:
    clock = Clock()
    gate = gate_of(tcp(access=rules("deny all")), clock)
    with capturedLogs() as events:
        for _ in range(5):
            gate.admit("192.0.2.7")
            clock.advance(0.1)
        assert len(refusals(events)) == 1
        clock.advance(0.5)  # a second since the first line
        gate.admit("192.0.2.8")
        gate.admit("192.0.2.9")
        clock.advance(LOG_INTERVAL)
        gate.admit("192.0.2.10")
    lines = refusals(events)
    assert [text(e) for e in lines] == [
        "tcp db: 192.0.2.7 refused: access denied",
        "tcp db: 192.0.2.8 refused: access denied (4 more refused since the last such line)",
        "tcp db: 192.0.2.10 refused: access denied (1 more refused since the last such line)",
    ]
    assert [e["suppressed"] for e in lines] == [0, 4, 1]


def test_each_listener_has_its_own_log_throttle() -> None:
    clock = Clock()
    one = gate_of(tcp(access=rules("deny all")), clock)
    other = gate_of(
        UdpListenerConfig(name="u", listen="udp:5300", pool="p", access=rules("deny all")), clock
    )
    with capturedLogs() as events:
        one.admit("192.0.2.7")
        other.admit("192.0.2.7")
    assert [text(e) for e in refusals(events)] == [
        "tcp db: 192.0.2.7 refused: access denied",
        "udp u: 192.0.2.7 refused: access denied",
    ]

"""The private autobahn names the WebSocket message relay (proxyd.relay.websocket_legs)
overrides or calls, one test each: when an autobahn upgrade changes one, the test fails
naming the module to update. pyproject.toml bounds autobahn below the next major version."""

from __future__ import annotations

import inspect

import pytest
from autobahn import __version__ as VERSION
from autobahn.websocket.protocol import WebSocketProtocol

MODULE = "proxyd/relay/websocket_legs.py (ClientLeg)"


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("_fail_connection", ["self", "code", "reason"]),
        ("_protocol_violation", ["self", "reason"]),
        ("_invalid_payload", ["self", "reason"]),
        ("processData", ["self"]),
        ("consumeData", ["self"]),
    ],
)
def test_the_methods_the_client_leg_overrides_or_calls(name: str, parameters: list[str]) -> None:
    method = getattr(WebSocketProtocol, name, None)
    assert method is not None, f"autobahn {VERSION} has no {name}: {MODULE} must be updated"
    found = list(inspect.signature(method).parameters)
    assert found == parameters, f"autobahn {VERSION} changed {name}{found}: update {MODULE}"


def test_a_violation_fails_the_connection_through_fail_connection() -> None:
    """ClientLeg defers a failure by answering True from _protocol_violation and
    _invalid_payload before autobahn's own, which must call _fail_connection (whose call it
    then makes itself, later, in fail_now)."""
    for name in ("_protocol_violation", "_invalid_payload"):
        source = inspect.getsource(getattr(WebSocketProtocol, name))
        assert "_fail_connection(" in source, f"autobahn {VERSION} changed {name}: {MODULE}"


def test_frames_are_parsed_from_data_and_current_frame() -> None:
    """ClientLeg._in_close_frame reads the frame being processed (current_frame) or the
    unprocessed bytes (data), as processData keeps them."""
    source = inspect.getsource(WebSocketProtocol.processData)
    for attribute in ("self.current_frame", "self.data"):
        assert attribute in source, f"autobahn {VERSION} no longer keeps {attribute}: {MODULE}"

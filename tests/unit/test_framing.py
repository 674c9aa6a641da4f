"""How a response's head is framed for the client (proxyd.relay.http.framing), table-driven."""

from __future__ import annotations

import pytest

from proxyd.relay.http.framing import frame

LENGTH = [(b"Content-Length", b"5")]


@pytest.mark.parametrize(
    ("facts", "chunked", "keep_alive", "added"),
    [
        ({}, False, True, []),
        ({"length_known": False}, True, True, [b"Transfer-Encoding: chunked"]),
        ({"length_known": False, "version": "1.0"}, False, False, [b"Connection: close"]),
        ({"version": "1.0"}, False, True, [b"Connection: keep-alive"]),
        ({"keep_alive": False}, False, False, [b"Connection: close"]),
        ({"closing": True}, False, False, [b"Connection: close"]),
        ({"request_done": False}, False, False, [b"Connection: close"]),
        ({"has_body": False, "length_known": False}, False, True, []),
        (
            {"transformed": True},
            True,
            True,
            [b"-Content-Length", b"Transfer-Encoding: chunked"],
        ),
        (
            {"transformed": True, "version": "1.0"},
            False,
            False,
            [b"-Content-Length", b"Connection: close"],
        ),
    ],
)
def test_framing(
    facts: dict[str, object], chunked: bool, keep_alive: bool, added: list[bytes]
) -> None:
    settings: dict[str, object] = {
        "version": "1.1",
        "keep_alive": True,
        "closing": False,
        "request_done": True,
        "has_body": True,
        "length_known": True,
    }
    settings.update(facts)
    framed_chunked, framed_keep_alive, fields = frame(list(LENGTH), **settings)  # type: ignore[arg-type]
    assert (framed_chunked, framed_keep_alive) == (chunked, keep_alive)
    expected = [] if b"-Content-Length" in added else [b"Content-Length: 5"]
    expected += [field for field in added if not field.startswith(b"-")]
    assert [name + b": " + value for name, value in fields] == expected

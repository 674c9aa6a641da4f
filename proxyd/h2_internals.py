"""What proxyd uses of the `h2` package beyond its public interface, behind one adapter here
(as proxyd.twisted_internals does for Twisted's): tests/unit/test_h2_internals.py fails,
naming this module, when an h2 upgrade changes it; pyproject.toml bounds h2's version.

- H2Connection.state_machine.state and h2.connection.ConnectionState: h2 closes a client
  connection's state machine when the server sends GOAWAY, although the streams the server
  took may still finish (RFC 9113 6.8); proxyd.relay.http.h2_upstream puts the state back
  (and opens no new stream on that connection).
"""

from __future__ import annotations

from h2.connection import ConnectionState, H2Connection


def keep_open_after_goaway(connection: H2Connection) -> None:
    """Let the streams a GOAWAY kept finish on a client connection (h2 closed it)."""
    connection.state_machine.state = ConnectionState.CLIENT_OPEN

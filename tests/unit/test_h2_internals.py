"""The h2 package's internals proxyd relies on (proxyd.h2_internals): each test fails,
naming that module, when an h2 upgrade changes one."""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import ConnectionTerminated

from proxyd.h2_internals import keep_open_after_goaway


def test_after_goaway_the_kept_streams_may_still_be_used() -> None:
    """proxyd.h2_internals.keep_open_after_goaway: update it if this fails."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    stream = client.get_next_available_stream_id()
    client.send_headers(
        stream,
        [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")],
        end_stream=True,
    )
    server.receive_data(client.data_to_send())
    server.close_connection(last_stream_id=stream)
    events = client.receive_data(server.data_to_send())
    assert any(isinstance(event, ConnectionTerminated) for event in events)
    assert client.state_machine.state == ConnectionState.CLOSED
    keep_open_after_goaway(client)
    client.acknowledge_received_data(0, stream)  # raises on a closed connection
    assert client.state_machine.state == ConnectionState.CLIENT_OPEN

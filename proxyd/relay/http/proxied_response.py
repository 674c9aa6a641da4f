"""The server's response in an exchange, as its Forward hands it over: its fields made the
client's (hop-by-hop removed, Via, hidden ones), run through the chain's response filters,
then framed for the client and streamed (through the body filters, or read whole by one),
or, for a WebSocket upgrade the server accepted, a tunnel opened.

A base class of proxyd.relay.http.exchange.Exchange, apart so that each module holds one
thing; the Exchange's own state (its forward, its state moves, its finish) is what these
methods use."""

from __future__ import annotations

from proxyd.filters.api import Headers
from proxyd.filters.chain import Step
from proxyd.metrics import ErrorKind
from proxyd.relay.http import headers as policy
from proxyd.relay.http.framing import frame
from proxyd.relay.http.messages import Response, chunk
from proxyd.relay.http.own_answers import OwnAnswers
from proxyd.relay.http.roles import Listener
from proxyd.relay.http.state import STREAMING, TUNNEL
from proxyd.relay.http.tunnel import Tunnel
from proxyd.relay.http.upstream import UpstreamConnection


class ProxiedResponse(OwnAnswers):
    """The proxied-response part of an Exchange."""

    __slots__ = (
        "_client_chunked",
        "_client_keep_alive",
        "_trailers",
        "_tunnel_conn",
        "response",
        "tunnel",
        "tunnel_close",
    )

    response: Response | None
    """The server's response head, once the Forward has it."""
    _trailers: Headers | None
    """The server's trailers, while the body filters finish the response's body."""
    tunnel: Tunnel | None
    tunnel_close: str | None
    """Why the tunnel ended, for the access log."""
    _tunnel_conn: UpstreamConnection | None
    """The server's connection after its 101, until the tunnel opens (after the response
    head's filters)."""

    # The exchange's state this class reads (proxyd.relay.http.exchange.Exchange).
    factory: Listener

    # The server's response, from the Forward.

    def upstream_response(self, response: Response) -> None:
        self.response = response
        self.status = response.status
        fields = policy.remove_hop_by_hop(response.headers)
        chain = self.chain
        self.response_fields = policy.response_headers(
            fields,
            via=self.config.via,
            version=response.version,
            hidden=chain.hidden,
            server=chain.server,
        )
        if self._added_fields is not None:
            self.response_fields += self._added_fields
        steps = chain.response_head
        if steps:
            self._respond(steps)
        elif self._tunnel_conn is None:
            self._send_response()  # no response filter: straight to streaming
        else:
            self._open_tunnel(self._tunnel_conn)

    def upstream_switched(self, response: Response, conn: UpstreamConnection) -> None:
        """A 101 to the WebSocket upgrade: pass it on, then splice the two connections."""
        self._tunnel_conn = conn
        self.upstream_response(response)

    def upstream_body(self, data: bytes) -> None:
        run = self._response_run
        if run is not None:
            run.feed(data, False)
        elif not self.finished:
            self.response_bytes += len(data)
            self.client.send(chunk(data) if self._client_chunked else [data])

    def upstream_end(self, trailers: Headers | None) -> None:
        run = self._response_run
        if run is not None:
            self._trailers = trailers
            run.feed(b"", True)
        elif not self.finished:
            self.client.send_end(self._client_chunked, trailers)
            self._finish(keep_alive=self._client_keep_alive)

    def upstream_cut(self, why: str, kind: ErrorKind) -> None:
        """The response broke off after its head went to the client, or while a filter read
        its body before the head (then answered 502, or 504 for a server gone idle)."""
        if self.response_started:
            self._cut(why, kind)
        else:
            self.fail(504 if kind is ErrorKind.UPSTREAM_IDLE else 502, why, kind)

    def tunnel_ended(self, tunnel: Tunnel) -> None:
        self.factory.tunnel_closed()
        self.request_bytes += tunnel.bytes_in
        self.response_bytes += tunnel.bytes_out
        self.tunnel_close = str(tunnel.reason)
        self._finish(keep_alive=False)

    # The response head's filters, then the head to the client.

    def _response_ready(self) -> None:
        """The response head's filters are done: send it."""
        if self.answer is not None:
            self._send_answer(self.answer)
        elif self._tunnel_conn is not None:
            self._open_tunnel(self._tunnel_conn)
        else:
            self._send_response()

    def _send_response(self) -> None:
        response = self.response
        assert response is not None
        steps: tuple[Step, ...] = ()
        if not response.no_body and self.chain.response_body:
            plan = self._body_plan("response_body")
            if plan is None:
                return
            if plan.buffers:
                self._buffer_response(plan)
                return
            steps = plan.steps
            if steps:
                self._response_run = self._body_run(
                    plan, "response_body", self._response_body_out, self._hold_response
                )
                if plan.keeps_length:
                    steps = ()  # the body is passed on as it is: its framing too
        fields = self._frame(not response.no_body, response.content_length is not None, bool(steps))
        reason = response.reason if self.status == response.status else b""
        self._move(STREAMING)
        self.client.send_head(self.status, reason, fields)
        forward = self.forward
        if forward is not None and forward._held:
            forward.hold(False)

    def _response_buffered(self, data: bytes, end: bool) -> None:
        """The whole body a filter buffered, transformed: the head goes with it, with its
        length (the server's trailers, which need chunked framing, are dropped)."""
        response = self.response
        if self.finished or response is None:
            return
        self._response_run = None
        self.response_fields = [
            f for f in self.response_fields if f[0].lower() != b"content-length"
        ]
        self.response_fields.append((b"Content-Length", b"%d" % len(data)))
        fields = self._frame(True, True)
        reason = response.reason if self.status == response.status else b""
        self._move(STREAMING)
        self.response_bytes = len(data)
        self.client.send_head(self.status, reason, fields, data)
        self._finish(keep_alive=self._client_keep_alive)

    def _frame(self, has_body: bool, length_known: bool, transformed: bool = False) -> Headers:
        """The response's fields framed (proxyd.relay.http.framing), its framing kept."""
        self._client_chunked, self._client_keep_alive, fields = frame(
            self.response_fields,
            self.request.version,
            keep_alive=self._client_keep_alive,
            closing=self.client.closing,
            request_done=self.request_done,
            has_body=has_body,
            length_known=length_known,
            transformed=transformed,
        )
        return fields

    def _open_tunnel(self, conn: UpstreamConnection) -> None:
        self._tunnel_conn = None
        response = self.response
        assert response is not None
        self._move(TUNNEL)
        client = self.client.switched(response.reason, self.response_fields)
        self.status = client.status
        self.tunnel = Tunnel(self, client, conn, self.config.tunnel_timeout)
        self.factory.tunnel_opened()
        self.tunnel.start()

    def _response_body_out(self, data: bytes, end: bool) -> None:
        if self.finished:
            return
        if data:
            self.response_bytes += len(data)
            self.client.send(chunk(data) if self._client_chunked else [data])
        if end:
            self.client.send_end(self._client_chunked, self._trailers)
            self._finish(keep_alive=self._client_keep_alive)

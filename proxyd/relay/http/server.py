"""The client side of `[http NAME]`: a connection reads requests and runs one Exchange at a
time, in order (pipelined requests wait their turn, responses leave in request order).

Reading from the client is paused while any reason holds: the upstream's write buffer is full
("upstream"), or parsed events wait for the current exchange ("backlog"), so that a
connection holds at most about one read of unprocessed input.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    ILoggingContext,
    IProtocol,
    IPushProducer,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplements

from proxyd.accesslog import json_string
from proxyd.acme.challenges import CHALLENGE_PATH
from proxyd.clock import Deadline
from proxyd.config.model import Address
from proxyd.pool import Affinity
from proxyd.relay.http.client_sending import Sending
from proxyd.relay.http.exchange import Exchange
from proxyd.relay.http.h2_session import PREFACE, H2Session
from proxyd.relay.http.messages import (
    Body,
    End,
    Headers,
    HttpError,
    Request,
    last_chunk,
    response_head,
)
from proxyd.relay.http.outcome import (
    count_refusal,
    handshake_failed,
)
from proxyd.relay.http.roles import ConnectionFactory, ResponseWaiter
from proxyd.relay.http.tunnel import ConnectionPipe, Tunnel
from proxyd.relay.io import closes_at_once, no_delay
from proxyd.relay.send_timeout import SendTimeout
from proxyd.tls import PeerTls, peer_tls

_log = Logger(namespace="proxyd.relay.http")


def _address(address: IAddress) -> Address:
    host = getattr(address, "host", "")
    port = getattr(address, "port", 0)
    return Address(host, port)


class ClientConnection(Sending):
    """One client connection. It is its transport's producer: a full write buffer pauses the
    current exchange's upstream reads, and starts the client's send timeout (idle_timeout;
    a tunnel's tunnel_timeout): a client that takes none of what waits for it for that long
    is reset, as is a close that waits on such a client. On [https] it sits inside Twisted's
    TLS wrapper, which delivers no request bytes before the handshake is done.

    An IProtocol of its own rather than a subclass of Twisted's Protocol: so that mypyc
    compiles it as a native class (pyproject.toml's [tool.proxyd] mypyc)."""

    def __init__(self, factory: ConnectionFactory) -> None:
        self.factory = factory
        self.transport: Any = None
        self.reader = factory.new_reader()
        self.exchange: Exchange | None = None
        self.closing = False
        """No further request will be read: the current response is the last."""
        self.lost = False
        self.writable = True
        self._pause_reasons: set[str] = set()
        self._timer = Deadline(factory.reactor, self._timer_fired)
        self._timer_kind = ""
        """"header", "keepalive", or "" while an exchange runs."""
        self._response_timer = Deadline(factory.reactor, self._response_due)
        self._awaiting: ResponseWaiter | None = None
        """The exchange whose response timeout runs."""
        self.peer = Address("", 0)
        self.peer_text = ""
        """`peer` as the logs write it."""
        self.log_fields = ""
        """The listener and `peer_text` as the access log writes them."""
        self.local = Address("", 0)
        self.trusted = False
        self.affinity = Affinity()
        """What `balance = hash` keys on: the client's address."""
        self.tls: PeerTls | None = None
        """Set once the TLS handshake is done ([https])."""
        self.tunnel: Tunnel | None = None
        """Set once a WebSocket upgrade was answered 101: bytes go to it from then on."""
        self.h2: H2Session | None = None
        """Set once the connection speaks HTTP/2 (ALPN h2, or h2c's preface): bytes go to it."""
        self._sniff: bytes | None = b"" if factory.config.h2c else None
        """With h2c: the first bytes, until they are or are not HTTP/2's preface."""
        self._last_request = False
        """Draining: the request whose head is arriving is the last one."""
        self._producing = False
        """Registered as the transport's producer."""
        self._sending: SendTimeout | None = None
        """Made when the write buffer first fills, or at a close that has to wait."""
        self._send_timeout = factory.config.idle_timeout

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        return type(self).__name__

    def connectionMade(self) -> None:
        channel = self.channel
        self.peer = _address(channel.getPeer())
        self.peer_text = str(self.peer)
        self.log_fields = (
            f',"listener":{json_string(self.factory.config.name)}'
            f',"client":{json_string(self.peer_text)}'
        )
        self.local = _address(channel.getHost())
        self.trusted = self.factory.is_trusted(self.peer.host)
        self.affinity = Affinity(self.peer)
        # Writes are gathered per reactor turn already (SendBatch): what is sent is meant to
        # leave now, not after the peer's (possibly delayed) ACK of the previous segment.
        if not self.factory.no_delay_inherited:
            no_delay(channel)
        channel.registerProducer(self, True)
        self._producing = True
        self.factory.client_opened(self)
        self._set_timer("header")

    def dataReceived(self, data: bytes) -> None:
        if self.h2 is not None:
            self.h2.data_received(data)
            return
        if self.tunnel is not None:
            self.tunnel.client_data(data)
            return
        if self._sniff is not None:
            data = self._sniff + data
            if len(data) < len(PREFACE) and PREFACE.startswith(data):
                self._sniff = data
                return
            self._sniff = None
            if data.startswith(PREFACE):
                self._become_h2(data)
                return
        if self.closing and self.exchange is None:
            return
        upgraded = self.reader.upgraded
        if upgraded is not None:
            # After an upgrade request's head, bytes wait (one read at most) for the answer:
            # the tunnel's first bytes on a 101, else the start of the next request.
            self.reader.upgraded = upgraded + data
            self.pause_reading("upgrade")
            return
        self.reader.feed(data)
        self.drive()

    def handshakeCompleted(self) -> None:
        tls = self.tls = peer_tls(self.transport)
        if tls is not None and tls.alpn == "h2":
            self._become_h2(b"")

    def _become_h2(self, data: bytes) -> None:
        """The connection speaks HTTP/2 from now on: its streams are exchanges."""
        self._cancel_timer()
        self.factory.stats.cell("", "", "").http2_connections += 1
        self.h2 = H2Session(self, self.factory.config.http2_max_streams)
        if data:
            self.h2.data_received(data)

    def streams_idle(self, idle: bool) -> None:
        """HTTP/2: no stream is open (the keep-alive timeout runs), or one is."""
        if idle:
            self._set_timer("keepalive")
        else:
            self._cancel_timer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.factory.tls is not None and self.tls is None:
            handshake_failed(self.factory.config.name, self.peer_text, reason)
        self.lost = True
        if self.h2 is not None:
            self.h2.connection_lost(reason)
        self._timer_kind = ""
        # Released, not only cancelled: each holds a bound method of this connection, a
        # reference cycle the garbage collector would otherwise have to find, once per
        # connection.
        self._timer.release()
        if self._sending is not None:
            self._sending.cancel()
        self._awaiting = None
        self._response_timer.release()
        self.reader.release()
        if self.tunnel is not None:
            self.tunnel.client_lost(reason)
            self.factory.client_closed(self)
            return
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_lost()
        self.factory.client_closed(self)

    # Flow of parsed events to exchanges.

    def drive(self) -> None:
        reader = self.reader
        while not self.lost:
            exchange = self.exchange
            if exchange is None:
                if self.closing:
                    return
                event = reader.next_event()
                if event is None:
                    if reader.finished and reader.upgraded is not None:
                        self._after_upgrade()
                        reader = self.reader
                        continue
                    break
                if isinstance(event, Request):
                    self._start(event)
                elif isinstance(event, HttpError):
                    self._refuse(event)
                    return
                continue
            if not exchange.wants_request_events:
                break
            event = reader.peek()
            if event is None or isinstance(event, Request):
                break
            reader.next_event()
            assert isinstance(event, Body | End | HttpError)
            exchange.request_event(event)
        if self.exchange is None:
            self._set_timer("header" if reader.in_head else "keepalive")
        if reader.pending and self.exchange is not None:
            self.pause_reading("backlog")
        else:
            self.resume_reading("backlog")

    def _start(self, request: Request) -> None:
        self._timer_kind = ""
        self._timer.clear()
        if self._last_request:
            self.closing = True  # answered with Connection: close
        self.factory.requests += 1
        if not request.has_body and isinstance(self.reader.peek(), End):
            # llhttp ends a body-less request with its head: nothing to wait for.
            self.reader.next_event()
        acme = self.factory.acme
        if acme is not None and request.target.startswith(CHALLENGE_PATH):
            answer = acme.http.answer(request.target)
            if answer is not None:
                self._answer_challenge(answer)
                return
        exchange = self.exchange = Exchange(self, request)
        exchange.start()

    def _after_upgrade(self) -> None:
        # An upgrade that did not happen (refused, answered without 101, or not a WebSocket
        # one, whose Upgrade fields were removed): what followed its head is the next request.
        leftover = self.reader.upgraded or b""
        self.reader = self.factory.new_reader()
        self.resume_reading("upgrade")
        self.reader.feed(leftover)

    def _answer_challenge(self, key_authorization: bytes) -> None:
        """An ACME http-01 validation request (RFC 8555 8.3): its key authorization, then
        close (validators send one request a connection)."""
        self.closing = True
        head = response_head(
            200,
            b"",
            [
                (b"Content-Type", b"application/octet-stream"),
                (b"Content-Length", b"%d" % len(key_authorization)),
                (b"Connection", b"close"),
            ],
        )
        self.send([head, key_authorization])
        self.lose_connection()

    def _refuse(self, error: HttpError) -> None:
        """A request that cannot be parsed: answer it and close, as RFC 9112 asks."""
        self.closing = True
        body, content_type = self.factory.error_body(error.status)
        fields = [
            (b"Content-Type", content_type),
            (b"Content-Length", b"%d" % len(body)),
            (b"Connection", b"close"),
        ]
        server = self.factory.chains[None].server  # hide_headers' Server, as on every answer
        if server is not None:
            fields.append(server)
        head = response_head(error.status, b"", fields)
        self.factory.log_refusal(self, error)
        count_refusal(self.factory.stats, error)
        self.send([head, body])
        self.lose_connection()

    # Called by the exchange.

    def send(self, pieces: list[bytes]) -> None:
        if self.lost:
            return
        self.factory.sends.send(self.channel, pieces)

    def send_head(self, status: int, reason: bytes, fields: Headers, body: bytes = b"") -> None:
        head = response_head(status, reason, fields)
        self.send([head, body] if body else [head])

    def send_end(self, chunked: bool, trailers: Headers | None) -> None:
        if chunked:
            self.send([last_chunk(trailers)])

    def switched(self, reason: bytes, fields: Headers) -> ConnectionPipe:
        """The server switched to WebSocket: its 101 goes to the client, and this connection
        becomes the client side of the tunnel, with what the client sent behind its
        handshake."""
        upgrade = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
        self.send([response_head(101, reason, fields + upgrade)])
        early = self.reader.upgraded or b""
        self.reader.upgraded = b""
        return ConnectionPipe(self, early)

    def flush(self) -> None:
        """Send what waits in the factory's SendBatch now (before writing or closing
        otherwise)."""
        self.factory.sends.flush_to(self.channel)

    def lose_connection(self) -> None:
        """Close once what is buffered is sent, within the send timeout. The connection stops
        being its transport's producer unless an exchange still streams into it: a transport
        closing with its producer paused would resume the producer once its buffer drains,
        instead of closing."""
        self.flush()
        channel = self.channel
        if self._producing and (self.exchange is None or self.tunnel is not None):
            self._producing = False
            channel.unregisterProducer()
        if self.factory.sends.close(channel):
            return
        channel.loseConnection()
        if not self.lost and not closes_at_once(channel):
            self._send_watch().closing()

    def close_after_response(self) -> None:
        self.closing = True

    def drain(self) -> None:
        """proxyd is stopping: an idle keep-alive connection is closed now; a request in
        progress, one whose head is arriving, or the first one of a connection accepted but
        not yet asked anything (its request may be on its way), is answered (with
        Connection: close) and then the connection is closed; a WebSocket tunnel goes on until
        it ends. An HTTP/2 connection is sent GOAWAY: its open streams finish, then it
        closes."""
        if self.lost or self.tunnel is not None:
            return
        if self.h2 is not None:
            self.closing = True
            self.h2.drain()
        elif self.exchange is not None:
            self.close_after_response()
        elif self.reader.in_head or self._timer_kind == "header":
            self._last_request = True
        else:
            self.closing = True
            self._cancel_timer()
            self.lose_connection()

    def retire(self) -> None:
        """A reload replaced the config this connection started on: its request in progress,
        or its next one if it is idle, is its last (answered with Connection: close), so
        that the client's next connection gets the new config without any request lost. An
        idle connection that asks nothing more ends at its keep-alive timeout."""
        if self.lost or self.tunnel is not None:
            return
        if self.h2 is not None:
            self.drain()
            return
        if self.exchange is not None:
            self.close_after_response()
        else:
            self._last_request = True

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        if self.exchange is not exchange:
            return
        self.exchange = None
        self.resume_reading("upstream")
        if not keep_alive or self.closing or self.lost:
            self.closing = True
            self._cancel_timer()
            if not self.lost:
                self.lose_connection()
            return
        self.drive()

    def pause_reading(self, reason: str) -> None:
        if not self._pause_reasons and not self.lost:
            self.channel.pauseProducing()
        self._pause_reasons.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        if not self._pause_reasons and not self.lost:
            self.channel.resumeProducing()

    # IPushProducer, called by our transport about its write buffer.

    def pauseProducing(self) -> None:
        self.writable = False
        self._send_watch().paused()
        if self.tunnel is not None:
            self.tunnel.client_writable(False)
        elif self.exchange is not None:
            self.exchange.client_writable(False)
        elif self.h2 is not None:
            self.h2.writable(False)

    def resumeProducing(self) -> None:
        self.writable = True
        if self._sending is not None:
            self._sending.resumed()
        if self.tunnel is not None:
            self.tunnel.client_writable(True)
        elif self.exchange is not None:
            self.exchange.client_writable(True)
        elif self.h2 is not None:
            self.h2.writable(True)

    def stopProducing(self) -> None:
        pass


classImplements(ClientConnection, IProtocol, ILoggingContext, IPushProducer, IHandshakeListener)

"""The client side of `[http NAME]`: a connection reads requests and runs one Exchange at a
time, in order (pipelined requests wait their turn, responses leave in request order).

Reading from the client is paused while any reason holds: the upstream's write buffer is full
("upstream"), or parsed events wait for the current exchange ("backlog"), so that a
connection holds at most about one read of unprocessed input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHandshakeListener, IPushProducer, IReactorTCP
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from proxyd.accesslog import AccessLog, json_string
from proxyd.acme.challenges import CHALLENGE_PATH
from proxyd.clock import Deadline
from proxyd.config.model import Address, HttpListenerConfig
from proxyd.filters.auth import AuthContext
from proxyd.filters.concurrency import Concurrency
from proxyd.filters.local_answers import OriginCheck
from proxyd.filters.ratelimit import RateLimitContext
from proxyd.metrics import RelayStats
from proxyd.pool import Affinity, Pool
from proxyd.relay.http import headers as policy
from proxyd.relay.http.chains import build_chains
from proxyd.relay.http.client_sending import Sending
from proxyd.relay.http.client_timers import Timers
from proxyd.relay.http.decide import Place
from proxyd.relay.http.exchange import Exchange
from proxyd.relay.http.forward import attempt_policy
from proxyd.relay.http.h1 import RequestReader
from proxyd.relay.http.h2_session import PREFACE, H2Session
from proxyd.relay.http.messages import (
    Body,
    End,
    Headers,
    HttpError,
    Request,
    last_chunk,
    reason_phrase,
    response_head,
)
from proxyd.relay.http.outcome import (
    count,
    count_refusal,
    exchange_line,
    handshake_failed,
    refusal_record,
)
from proxyd.relay.http.roles import ResponseWaiter
from proxyd.relay.http.routing import RouteTable
from proxyd.relay.http.tunnel import Tunnel
from proxyd.relay.http.upstream import Upstreams
from proxyd.relay.io import (
    OpenConnections,
    SendBatch,
    Transport,
    closes_at_once,
    no_delay,
    retain_freed_memory,
)
from proxyd.relay.send_timeout import SendTimeout
from proxyd.resources import ProcessResources
from proxyd.tls import PeerTls, ServerTls, peer_tls

_log = Logger(namespace="proxyd.relay.http")


def _address(address: IAddress) -> Address:
    host = getattr(address, "host", "")
    port = getattr(address, "port", 0)
    return Address(host, port)


@implementer(IPushProducer, IHandshakeListener)
class ClientConnection(Sending, Timers, TwistedProtocol):
    """One client connection. It is its transport's producer: a full write buffer pauses the
    current exchange's upstream reads, and starts the client's send timeout (idle_timeout;
    a tunnel's tunnel_timeout): a client that takes none of what waits for it for that long
    is reset, as is a close that waits on such a client. On [https] it sits inside Twisted's
    TLS wrapper, which delivers no request bytes before the handshake is done."""

    def __init__(self, factory: HttpRelayFactory) -> None:
        self.factory: HttpRelayFactory = factory
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

    @property
    def channel(self) -> Transport:
        return cast(Transport, self.transport)

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
            self.h2.connection_lost()
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


class HttpRelayFactory(Factory[ClientConnection]):
    """The listening factory of one `[http NAME]`."""

    noisy = False

    def __init__(
        self,
        reactor: IReactorTCP,
        config: HttpListenerConfig,
        pools: Mapping[str, Pool],
        upstreams: Mapping[str, Upstreams],
        access_log: AccessLog,
        error_pages: Mapping[int, bytes] | None = None,
        websocket_only: OriginCheck | None = None,
        resources: ProcessResources | None = None,
    ) -> None:
        """`reactor` must provide IReactorTime as well. With `websocket_only` (a [websocket]
        listener in passthrough mode) requests other than WebSocket upgrades from allowed
        Origins are refused. `resources` are the process's (proxyd.resources, owned by the
        service): password-check threads, what makes the rate limits' tables, the span
        export."""
        self.reactor = cast(Any, reactor)
        self.config = config
        resources = resources or ProcessResources()
        hash_threads = resources.hash_threads
        self.auth = AuthContext(
            self.reactor,
            listener=config.name,
            stats=lambda: self.stats,
            run_in_thread=None if hash_threads is None else hash_threads.run,
        )
        """What the routes' authentication runs with and starts (proxyd.filters.auth): started
        with the factory, stopped once its last connection is over."""
        self.ratelimits = RateLimitContext(
            self.reactor,
            listener=config.name,
            trusted=config.trusted_proxies,
            tables=resources.limit_tables,
            redis=resources.redis,
        )
        """The rate limits' tables and their sweep (proxyd.filters.ratelimit), with the same
        lifetime as `auth`."""
        otlp = resources.otlp
        self.spans = None if config.otlp is None or otlp is None else otlp.sink(config.otlp)
        """Where the exchanges' spans go (otlp_endpoint: proxyd.otlp)."""
        self.pools = pools
        self.upstreams = upstreams
        self.access_log = access_log
        self.error_pages = dict(error_pages or {})
        self.routes = RouteTable(config.routes)
        self.attempts = attempt_policy(config)
        self.queues: dict[str, Concurrency] = {}
        """The routes' max_in_flight queues, by route (proxyd.filters.concurrency)."""
        self.places: dict[tuple[bytes, bytes, bytes], Place] = {}
        """Where requests went, by target, Host and method (proxyd.relay.http.decide)."""
        self.chains = build_chains(
            config,
            {name: pool.config for name, pool in pools.items()},
            self.error_pages,
            websocket_only,
            self.auth,
            lambda: self.stats,
            self.ratelimits,
            self.queues,
            self.spans,
            resources.caches,
        )
        """The filter chain of each route (proxyd.relay.http.chains)."""
        self.sends = SendBatch(self.reactor)
        self.acme = resources.acme if config.tls is None else None
        """Answers http-01 challenges before routing ([http] listeners; proxyd.acme)."""
        self.tls: ServerTls | None = (
            ServerTls(
                f"https {config.name}",
                config.tls,
                [b"h2", b"http/1.1"] if config.http2 else [b"http/1.1"],
                resources.ocsp,
            )
            if config.tls is not None
            else None
        )
        self._trusted = config.trusted_proxies
        self.connections = 0
        self._clients: OpenConnections[ClientConnection] = OpenConnections()
        self.requests = 0
        self.tunnels = 0
        """Upgraded (WebSocket) connections open now."""
        self.tunnels_total = 0
        self.stats = RelayStats(
            "websocket" if websocket_only is not None else config.kind, config.name
        )

    @property
    def stats(self) -> RelayStats:
        """The metrics by route, pool and server (proxyd.metrics), counted by each exchange;
        a reload hands them to the relay that replaces this one, which then shows its rate
        limits in them."""
        return self._stats

    @stats.setter
    def stats(self, stats: RelayStats) -> None:
        self._stats = stats
        stats.limits = self.ratelimits.snapshot if self.ratelimits.limits else None
        stats.queues = self._queue_figures if self.queues else None

    def _queue_figures(self) -> dict[str, dict[str, float]]:
        return {route: queue.figures() for route, queue in self.queues.items()}

    def take_over(self, old: object) -> None:
        """A reload: this relay replaces `old` (the relay of the listener of the same name):
        its unchanged rate limits go on with `old`'s tables."""
        if isinstance(old, HttpRelayFactory):
            self.ratelimits.take_over(old.ratelimits)

    def may_open_tunnel(self) -> bool:
        limit = self.config.max_tunnels
        return limit == 0 or self.tunnels < limit

    def tunnel_opened(self) -> None:
        self.tunnels += 1
        self.tunnels_total += 1

    def tunnel_closed(self) -> None:
        self.tunnels -= 1

    @property
    def clients(self) -> set[ClientConnection]:
        """The client connections open now."""
        return self._clients.open

    def client_opened(self, client: ClientConnection) -> None:
        self.connections += 1
        self._clients.add(client)
        if self._clients.draining:
            client._last_request = True  # accepted as the listener closed: one request

    def client_closed(self, client: ClientConnection) -> None:
        self.connections -= 1
        self._clients.discard(client)

    def drain(self) -> Deferred[None]:
        """Stopping: let every client connection finish what it is doing (see
        ClientConnection.drain). Fires once none is left."""
        if not self._clients.draining:
            for client in list(self.clients):
                client.drain()
        return self._clients.drain().addCallback(self._over)

    def retire(self) -> Deferred[None]:
        """A reload replaced this listener's relay: every client connection finishes with
        its next response (see ClientConnection.retire). Fires once none is left."""
        for client in list(self.clients):
            client.retire()
        return self._clients.drain().addCallback(self._over)

    def _over(self, _: object) -> None:
        """The last connection is over (a stop, or a reload replaced this relay): what the
        routes' authentication started ends (JWKS refreshes, auth-service connections), and
        the rate limits' sweep."""
        self.auth.stop()
        self.ratelimits.stop()

    def close_all(self) -> None:
        """The drain time is up: close every client connection still open (with what its
        transport has buffered; the process ends soon after anyway)."""
        for client in list(self.clients):
            client.lose_connection()

    def startFactory(self) -> None:
        """Listening: large bodies are relayed without page faults from here on; the routes'
        authentication fetches its JWKS; the rate limits' sweep starts."""
        retain_freed_memory()
        self.auth.start()
        self.ratelimits.start()

    def set_listening_port(self, port: Any) -> None:
        """Nothing to do: HTTP listeners do not pause accepting."""

    def error_body(self, status: int) -> tuple[bytes, bytes]:
        """Body and Content-Type of proxyd's own answer `status`: the error page, if any."""
        page = self.error_pages.get(status)
        if page is not None:
            return page, b"text/html; charset=utf-8"
        return b"%d %s\n" % (status, reason_phrase(status)), b"text/plain; charset=utf-8"

    def new_reader(self) -> RequestReader:
        config = self.config
        return RequestReader(
            max_header_size=config.max_header_size,
            max_headers=config.max_headers,
            max_uri_length=config.max_uri_length,
            max_body_size=config.max_body_size,
        )

    def buildProtocol(self, addr: IAddress | None) -> ClientConnection:
        return ClientConnection(self)

    def is_trusted(self, host: str) -> bool:
        return policy.is_trusted(host, self._trusted)

    def exchange_over(self, exchange: Exchange) -> None:
        """Count the exchange in the metrics and write its access-log line
        (proxyd.relay.http.outcome)."""
        count(exchange)
        if self.access_log.enabled:
            now = self.reactor.seconds()
            self.access_log.write(exchange_line(exchange, now), self.reactor)

    def log_refusal(self, client: ClientConnection, error: HttpError) -> None:
        if self.access_log.enabled:
            now = self.reactor.seconds()
            record = refusal_record(self.config.name, client.peer_text, error, now)
            self.access_log.log(record, self.reactor)

"""A WebSocket echo server on autobahn (Twisted): the peer of the conformance runs.

    python examples/ws_echo.py --port 9301 [--interface 127.0.0.1]

Every text and binary message is sent back as it came, on any path. It is set up as the
Autobahn test suite's own echo testee is: a failed connection is closed with a close
handshake rather than dropped (`failByDrop = False`, as RFC 6455 7.1.7 prefers),
permessage-deflate is accepted whatever parameters the client offers, and there is no limit
on frame or message size (the suite's 9.x cases send messages of up to 16 MiB).

Once listening it logs `ws echo server listening on HOST:PORT` on stdout (`--port 0` lets the
kernel pick the port).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageCompressOffer,
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

log = Logger()


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def accept_deflate(offers: list[PerMessageCompressOffer]) -> PerMessageDeflateOfferAccept | None:
    """Accepts the first permessage-deflate offer as it is (RFC 7692 7.1)."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def make_factory() -> WebSocketServerFactory:
    factory = WebSocketServerFactory(server="proxyd-ws-echo-example")
    factory.protocol = Echo
    factory.noisy = False
    factory.setProtocolOptions(
        failByDrop=False,
        perMessageCompressionAccept=accept_deflate,
        maxFramePayloadSize=0,
        maxMessagePayloadSize=0,
    )
    return factory


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9301, help="0: a free port, logged")
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)

    from twisted.internet import reactor as global_reactor

    # mypy types the global reactor by its zope interfaces, whose methods take no self.
    reactor: Any = global_reactor
    observer: Any = textFileLogObserver(sys.stdout)
    globalLogBeginner.beginLoggingTo([observer])
    port = reactor.listenTCP(args.port, make_factory(), backlog=1024, interface=args.interface)
    address = port.getHost()
    log.info("ws echo server listening on {host}:{port}", host=address.host, port=address.port)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])

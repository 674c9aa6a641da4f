"""A small WebSocket client on autobahn (Twisted), for trying the demo by hand.

    python examples/ws_client.py ws://127.0.0.1:8090/ [--origin URL] [--wait 1]

Each line read from stdin is sent as a text message; every message received is printed on its
own line. At the end of stdin it waits `--wait` seconds for answers, closes with 1000 and
prints the close code and reason it got back.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import stdio
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.protocols.basic import LineReceiver


class Client(WebSocketClientProtocol):
    done: Deferred[None]
    wait: float

    def onOpen(self) -> None:
        stdio.StandardIO(_Lines(self))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        text = payload.hex() if isBinary else payload.decode("utf-8")
        print(("binary " if isBinary else "") + text, flush=True)

    def stdin_ended(self) -> None:
        reactor: Any = self.factory.reactor
        reactor.callLater(self.wait, self.sendClose, 1000)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        print(f"closed: code {code} {reason or ''}".rstrip(), file=sys.stderr, flush=True)
        if not self.done.called:
            self.done.callback(None)


class _Lines(LineReceiver):
    delimiter = b"\n"

    def __init__(self, client: Client) -> None:
        self.client = client

    def lineReceived(self, line: bytes) -> None:
        self.client.sendMessage(line.rstrip(b"\r"), isBinary=False)

    def connectionLost(self, reason: Any = None) -> None:
        self.client.stdin_ended()


def main(reactor: Any, url: str, origin: str | None, wait: float) -> Deferred[None]:
    done: Deferred[None] = Deferred()
    factory = WebSocketClientFactory(url, origin=origin)
    factory.protocol = Client
    Client.done = done
    Client.wait = wait
    connectWS(factory, timeout=5)

    def failed(connector: Any, reason: Any) -> None:
        print(f"cannot connect: {reason.getErrorMessage()}", file=sys.stderr)
        if not done.called:
            done.callback(None)

    factory.clientConnectionFailed = failed  # type: ignore[method-assign]
    return done


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--origin")
    parser.add_argument("--wait", type=float, default=1.0, help="seconds to wait at stdin's end")
    args = parser.parse_args()
    react(main, (args.url, args.origin, args.wait))

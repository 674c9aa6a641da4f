"""A WebSocket chat server on autobahn (Twisted), for the demo and the integration tests.

    python examples/chat_server.py --port 9201 [--interface 127.0.0.1] [--name chat-1]

Every client that connects, on any path, joins the server's one room and is greeted with a
text message `{"server": NAME, "you": ID, "clients": N}` (ID numbers the connections from 1,
N counts the room with the newcomer): a client sees which server it landed on. Every text
message a client sends goes to every *other* member, in the order the server received them,
as `{"server": NAME, "from": ID, "text": TEXT}`; a binary message closes its sender with 1003
(Unsupported Data). The rooms of two servers are not linked.

A broadcast is framed once (autobahn's prepared messages) and the same bytes are written to
every member. A member that does not read keeps what it is sent in its transport's buffer up to
MAX_BACKLOG bytes past the point where the transport asked its producer to pause; beyond that
it leaves the room and is closed with 1008, so one slow reader neither stalls the room nor
makes the server's memory grow without bound.

A plain HTTP GET without `Upgrade` is answered `200 OK` with `chat server NAME: N clients`,
for health checks. Once listening, the server logs `chat server NAME listening on HOST:PORT`
on stdout (`--port 0` lets the kernel pick the port).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTCP
from twisted.internet.task import react
from twisted.logger import ILogObserver, Logger, globalLogBeginner, textFileLogObserver
from zope.interface import implementer

log = Logger()

MAX_BACKLOG = 1 << 20  # bytes a paused member may be sent before it is closed


@implementer(IPushProducer)
class Member(WebSocketServerProtocol):
    """One client in the room. It is its own transport's producer only to learn when the
    transport's write buffer is full (paused) and when it has drained (resumed)."""

    factory: ChatFactory

    def onOpen(self) -> None:
        self.paused = False
        self.backlog = 0
        self.serial = self.factory.join(self)
        self.registerProducer(self, True)
        welcome = {"server": self.factory.name, "you": self.serial, "clients": len(self.factory)}
        self.sendMessage(json.dumps(welcome).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.factory.leave(self)
            self.close(1003, "this room takes text messages only")
            return
        self.factory.broadcast(self, payload.decode())

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.leave(self)

    def close(self, code: int, reason: str) -> None:
        """Starts the closing handshake with an RFC 6455 7.4.1 code, which autobahn's
        sendClose refuses (it takes 1000 and 3000-4999 only)."""
        self.sendCloseFrame(code, reason.encode())

    def deliver(self, message: PreparedMessage, size: int) -> bool:
        """Sends a broadcast; False when this member is too far behind to stay."""
        if self.paused:
            self.backlog += size
            if self.backlog > MAX_BACKLOG:
                return False
        self.sendPreparedMessage(message)
        return True

    def pauseProducing(self) -> None:
        # The transport calls this on every write while its buffer is over the limit.
        if not self.paused:
            self.paused = True
            self.backlog = 0

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True

    def sendServerStatus(self, redirectUrl: str | None = None, redirectAfter: int = 0) -> None:
        """autobahn's answer to a GET without Upgrade: a line of text rather than its page."""
        body = f"chat server {self.factory.name}: {len(self.factory)} clients\n".encode()
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        self.sendData(head + body)
        self.wasClean = True  # autobahn then drops the connection: that is the exchange's end


class ChatFactory(WebSocketServerFactory):
    """The room: its members in the order they joined."""

    noisy = False

    def __init__(self, reactor: IReactorTCP, name: str) -> None:
        super().__init__(server="proxyd-chat-example", reactor=reactor)
        self.protocol = Member
        self.name = name
        self.members: dict[Member, None] = {}
        self.joined = 0

    def __len__(self) -> int:
        return len(self.members)

    def join(self, member: Member) -> int:
        self.joined += 1
        self.members[member] = None
        return self.joined

    def leave(self, member: Member) -> None:
        self.members.pop(member, None)

    def broadcast(self, sender: Member, text: str) -> None:
        """Frames the message once and writes the same bytes to every other member."""
        body = {"server": self.name, "from": sender.serial, "text": text}
        message = self.prepareMessage(json.dumps(body).encode())
        size = len(message.payloadHybi)
        behind = [
            member
            for member in self.members
            if member is not sender and not member.deliver(message, size)
        ]
        for member in behind:
            log.warn(
                "chat member {serial} is {size} bytes behind: closing it",
                serial=member.serial,
                size=member.backlog,
            )
            self.leave(member)
            member.close(1008, "too slow: messages were piling up")


def serve(reactor: Any, args: argparse.Namespace) -> Deferred[None]:
    """Listens and serves until the process is stopped (the Deferred never fires)."""
    factory = ChatFactory(reactor, args.name or "")
    port = reactor.listenTCP(args.port, factory, backlog=1024, interface=args.interface)
    address = port.getHost()
    host = f"[{address.host}]" if ":" in address.host else address.host
    factory.name = args.name or f"{host}:{address.port}"
    log.info(
        "chat server {name} listening on {host}:{port}",
        name=factory.name,
        host=address.host,
        port=address.port,
    )
    return Deferred()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9201, help="0: a free port, logged")
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--name", help="shown to clients (default: ADDRESS:PORT)")
    args = parser.parse_args(argv)

    globalLogBeginner.beginLoggingTo([cast(ILogObserver, textFileLogObserver(sys.stdout))])
    react(serve, [args])


if __name__ == "__main__":
    main(sys.argv[1:])

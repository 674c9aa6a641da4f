"""Many chat clients in one process, for test_websocket_chat.py:

    python chat_clients.py chat --url ws://127.0.0.1:PORT/ --clients 200 --messages 5
    python chat_clients.py failover --url ... --clients 60 --messages 3 --victim chat-a

They speak examples/chat_server.py's protocol: a client's welcome names the server it landed
on, and the clients a server welcomed form a room. In a chat round, every client sends
`--messages` text messages `INDEX:SEQ` (SEQ from 0), and waits until it has the last message
of every other member of its room.

- chat: the clients join (at most CONNECTING opening handshakes at a time), then one round.
- failover: the clients join, and `JOINED {"INDEX": SERVER, ...}` is printed; the test then
  kills `--victim`. Every client that server welcomed must be closed; each close is noted
  (code, reason, clean, wall-clock time), those clients connect again, and one round follows
  among all the clients.

Each phase is bounded by `--timeout`. At the end the clients close with 1000, and one line
`RESULT <json>` is printed: for every client, in index order, the servers that welcomed it,
its unexpected closes, and per sender index the SEQs it received in arrival order; plus
`error`, null when every phase completed. The test judges the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Coroutine, Sequence
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet.defer import (
    Deferred,
    DeferredSemaphore,
    FirstError,
    TimeoutError,
    ensureDeferred,
    gatherResults,
)
from twisted.internet.task import react
from twisted.python.failure import Failure

CONNECTING = 50  # opening handshakes in flight at once: a burst of 200 SYNs overflows backlogs
CLOSE_TIMEOUT = 5.0  # for the closing handshakes at the end


class PhaseFailed(Exception):
    pass


class ChatClient(WebSocketClientProtocol):
    factory: ChatClientFactory

    def onOpen(self) -> None:
        self.factory.member.protocol = self

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.member.on_message(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.member.on_close(wasClean, code, reason)


class ChatClientFactory(WebSocketClientFactory):
    """One connection of a member."""

    noisy = False

    def __init__(self, member: Member, url: str, reactor: Any) -> None:
        super().__init__(url, reactor=reactor)
        self.protocol = ChatClient
        self.member = member

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.member.on_failed(reason)


class Member:
    """A chat client that may connect more than once; what it saw is kept across them."""

    def __init__(self, index: int, url: str, reactor: Any) -> None:
        self.index = index
        self.url = url
        self.reactor = reactor
        self.servers: list[str] = []  # the server of each welcome, in order
        self.closes: list[dict[str, Any]] = []  # the closes it did not ask for
        self.received: dict[int, list[int]] = defaultdict(list)
        self.protocol: ChatClient | None = None
        self.welcomed: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.complete: Deferred[None] = Deferred()
        self.waiting_for: set[int] = set()  # senders whose last message has not come
        self.last_seq = -1
        self.leaving = False

    @property
    def server(self) -> str:
        return self.servers[-1] if self.servers else ""

    def connect(self) -> Deferred[None]:
        """Fires once the server's welcome has come."""
        self.welcomed = Deferred()
        self.closed = Deferred()
        factory = ChatClientFactory(self, self.url, self.reactor)
        connectWS(factory)
        return self.welcomed

    def on_message(self, message: dict[str, Any]) -> None:
        if "text" not in message:
            self.servers.append(message["server"])
            self.welcomed.callback(None)
            return
        sender, seq = (int(part) for part in message["text"].split(":"))
        self.received[sender].append(seq)
        if seq == self.last_seq and sender in self.waiting_for:
            self.waiting_for.discard(sender)
            if not self.waiting_for:
                self.complete.callback(None)

    def on_close(self, clean: bool, code: int | None, reason: str | None) -> None:
        if not self.leaving:
            self.closes.append(
                {"code": code, "reason": reason, "clean": clean, "time": time.time()}
            )
        if not self.welcomed.called:
            self.welcomed.errback(PhaseFailed(f"client {self.index}: closed ({code} {reason})"))
        self.protocol = None
        self.closed.callback(None)

    def on_failed(self, reason: Failure) -> None:
        self.welcomed.errback(PhaseFailed(f"client {self.index}: {reason.getErrorMessage()}"))
        self.closed.callback(None)

    def expect(self, senders: set[int], messages: int) -> None:
        self.waiting_for = set(senders)
        self.last_seq = messages - 1
        self.complete = Deferred()
        if not self.waiting_for:
            self.complete.callback(None)

    def send(self, text: str) -> None:
        if self.protocol is not None:
            self.protocol.sendMessage(text.encode())

    def leave(self) -> Deferred[None]:
        self.leaving = True
        if self.protocol is not None:
            self.protocol.sendClose(1000)
        return self.closed

    def report(self) -> dict[str, Any]:
        return {
            "servers": self.servers,
            "closes": self.closes,
            "received": {str(sender): seqs for sender, seqs in self.received.items()},
        }


async def within(
    reactor: Any, deferreds: Sequence[Deferred[Any]], seconds: float, what: str
) -> None:
    """Waits for all of `deferreds`; PhaseFailed when one fails or `seconds` pass first."""
    gathered: Deferred[Any] = gatherResults(list(deferreds), consumeErrors=True)
    try:
        await gathered.addTimeout(seconds, reactor)
    except TimeoutError:
        raise PhaseFailed(f"{what}: not done after {seconds:g}s") from None
    except FirstError as e:
        raise PhaseFailed(f"{what}: {e.subFailure.getErrorMessage()}") from None


async def join(reactor: Any, members: Sequence[Member], timeout: float) -> None:
    semaphore = DeferredSemaphore(CONNECTING)
    joins = [semaphore.run(member.connect) for member in members]
    await within(reactor, joins, timeout, f"{len(members)} clients joining")


async def chat_round(
    reactor: Any, members: Sequence[Member], messages: int, timeout: float
) -> None:
    rooms: dict[str, set[int]] = defaultdict(set)
    for member in members:
        rooms[member.server].add(member.index)
    for member in members:
        member.expect(rooms[member.server] - {member.index}, messages)
    for seq in range(messages):
        for member in members:
            member.send(f"{member.index}:{seq}")
    waiting = [member.complete for member in members]
    await within(reactor, waiting, timeout, f"{messages} messages from each of {len(members)}")


async def failover(reactor: Any, members: Sequence[Member], args: argparse.Namespace) -> None:
    print("JOINED " + json.dumps({m.index: m.server for m in members}), flush=True)
    victims = [member for member in members if member.server == args.victim]
    if not victims:
        raise PhaseFailed(f"no client landed on {args.victim}")
    closes = [member.closed for member in victims]
    await within(reactor, closes, args.timeout, f"closes of the {len(victims)} on {args.victim}")
    await join(reactor, victims, args.timeout)


async def run(reactor: Any, args: argparse.Namespace) -> None:
    members = [Member(index, args.url, reactor) for index in range(args.clients)]
    error = None
    try:
        await join(reactor, members, args.timeout)
        if args.mode == "failover":
            await failover(reactor, members, args)
        await chat_round(reactor, members, args.messages, args.timeout)
    except PhaseFailed as e:
        error = str(e)
    leaving = [member.leave() for member in members if member.protocol is not None]
    try:
        await within(reactor, leaving, CLOSE_TIMEOUT, "closing handshakes")
    except PhaseFailed as e:
        error = error or str(e)
    result = {"error": error, "clients": [member.report() for member in members]}
    print("RESULT " + json.dumps(result, separators=(",", ":")), flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["chat", "failover"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--messages", type=int, default=3)
    parser.add_argument("--victim", default="", help="failover: the server the test kills")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for each phase")
    args = parser.parse_args(argv)

    def start(reactor: Any) -> Deferred[None]:
        coroutine: Coroutine[Any, Any, None] = run(reactor, args)
        return ensureDeferred(coroutine)

    react(start)


if __name__ == "__main__":
    main(sys.argv[1:])

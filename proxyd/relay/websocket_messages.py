"""The messages of a message-mode WebSocket connection (proxyd.relay.websocket_connection's
Relay): each one counted, held to the client's max_messages_per_second, and passed to the
other leg. A base class of Relay, holding no state of its own."""

from __future__ import annotations

from typing import Any

from autobahn.exception import PayloadExceededError
from twisted.logger import Logger

from proxyd.metrics import Cell
from proxyd.relay.session import ConnectionRecord, IdleTimer, Side
from proxyd.relay.websocket_legs import OPEN, BackendLeg, ClientLeg, Leg
from proxyd.relay.websocket_policy import (
    MESSAGE_TOO_BIG,
    POLICY_VIOLATION,
    Close,
    MessageRate,
    WsClose,
)

_log = Logger(namespace="proxyd.relay.websocket")


class Messages:
    # The relay's state this class reads and counts (websocket_connection.Relay).
    factory: Any
    config: Any
    record: ConnectionRecord
    client: ClientLeg
    backend: BackendLeg | None
    messages_in: int
    messages_out: int
    _idle: IdleTimer
    _rate: MessageRate
    _cell: Cell | None
    _closing: bool

    def _set_word(self, word: Close) -> None:
        raise NotImplementedError

    def _close_both(self, side: Side, code: int, reason: str, peer_reason: str) -> None:
        raise NotImplementedError

    def message(self, side: Side, payload: bytes, is_binary: bool) -> None:
        self._idle.touch()
        factory = self.factory
        if side is Side.CLIENT:
            if not self._rate.allow(factory.reactor.seconds()):
                self._rate_exceeded()
                return
            self.messages_in += 1
            self.record.bytes_in += len(payload)
            factory.messages_in += 1
            if self._cell is not None:
                self._cell.bytes_in += len(payload)
            peer: Leg | None = self.backend
        else:
            self.messages_out += 1
            self.record.bytes_out += len(payload)
            factory.messages_out += 1
            if self._cell is not None:
                self._cell.bytes_out += len(payload)
            peer = self.client
        if peer is None or peer.state != OPEN:
            return
        try:
            peer.sendMessage(payload, is_binary)
        except PayloadExceededError:
            # Compressed for the client, a message at max_message_size may grow past it.
            self._set_word(WsClose.MESSAGE_TOO_BIG)
            self._close_both(peer.side, MESSAGE_TOO_BIG, "message too big", "message too big")

    def _rate_exceeded(self) -> None:
        if self._closing:
            return
        self._set_word(WsClose.MESSAGE_RATE)
        _log.info(
            "websocket {listener}: {client} sent over {limit} messages a second, closing",
            listener=self.config.name,
            client=str(self.record.client),
            limit=self.config.max_messages_per_second,
        )
        self._close_both(
            Side.CLIENT, POLICY_VIOLATION, "message rate exceeded", "client message rate exceeded"
        )

"""Shared helpers for the health tests: run a checker on MemoryReactorClock, play the server."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from proxyd.config.model import Address
from proxyd.health.checks import CheckFailed, run_check

ADDRESS = Address("192.0.2.10", 3306)


class Outcome:
    """Collects a check Deferred's result without leaving a failure unhandled."""

    def __init__(self, d: Deferred[None]) -> None:
        self.fired = False
        self.passed = False
        self.failure: Failure | None = None
        d.addCallbacks(self._passed, self._failed)

    def _passed(self, _: None) -> None:
        self.fired = True
        self.passed = True

    def _failed(self, failure: Failure) -> None:
        self.fired = True
        self.failure = failure

    @property
    def reason(self) -> str:
        """The CheckFailed reason; fails the test if the check did anything else."""
        assert self.fired, "the check has not finished"
        assert self.failure is not None, "the check passed"
        assert self.failure.check(CheckFailed), self.failure
        return str(self.failure.value)


class Conversation:
    """One check run on a MemoryReactorClock, with the test playing the server."""

    def __init__(self, check: object, timeout: float = 2.0, address: Address = ADDRESS) -> None:
        self.reactor = MemoryReactorClock()
        self.outcome = Outcome(run_check(self.reactor, address, check, timeout))
        self.protocol: Protocol | None = None
        self.transport = StringTransport()

    @property
    def factory(self) -> Any:
        return self.reactor.tcpClients[0][2]

    def connect(self) -> Conversation:
        host, port = self.reactor.tcpClients[0][:2]
        peer = IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)
        self.protocol = self.factory.buildProtocol(peer)
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)
        return self

    def receive(self, *chunks: bytes) -> Conversation:
        assert self.protocol is not None
        for chunk in chunks:
            self.protocol.dataReceived(chunk)
        return self

    def sent(self) -> bytes:
        """What the check has written since last asked."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def server_closes(self, clean: bool = True) -> Conversation:
        assert self.protocol is not None
        error = ConnectionDone() if clean else ConnectionLost()
        self.protocol.connectionLost(Failure(error))
        return self

    @property
    def passed(self) -> bool:
        assert self.outcome.fired, "the check has not finished"
        return self.outcome.passed

    @property
    def reason(self) -> str:
        return self.outcome.reason

    def assert_clean(self) -> None:
        """Finished, with no timer left and the connection closed (or the connect stopped)."""
        assert self.outcome.fired
        assert self.reactor.getDelayedCalls() == []
        if self.protocol is not None:
            assert self.transport.disconnecting
        else:
            connector = self.reactor.connectors[0]
            assert connector.stoppedConnecting or self.outcome.failure is not None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the offsets in `cuts` (those past its end ignored), in order."""
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    return [data[start:end] for start, end in itertools.pairwise(points)]

"""A TCP echo server for the demo: greets each client with its own address, then echoes.

python examples/echo_server.py 9001 9002
"""

from __future__ import annotations

import sys

from twisted.internet import protocol, reactor
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

log = Logger()


class Echo(protocol.Protocol):
    def connectionMade(self) -> None:
        host = self.transport.getHost()
        self.transport.write(f"hello from echo backend {host.host}:{host.port}\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


def main(ports: list[str]) -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    factory = protocol.Factory.forProtocol(Echo)
    factory.noisy = False
    for port in ports:
        reactor.listenTCP(int(port), factory, interface="127.0.0.1")
        log.info("echo backend listening on 127.0.0.1:{port}", port=port)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:] or ["9001", "9002"])

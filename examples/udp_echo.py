"""A UDP echo server for the demo and the tests: answers each datagram with `PORT: ` and the
datagram, so that a client sees which server answered.

    python examples/udp_echo.py [--interface 127.0.0.1] PORT [PORT ...]
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.python import log


class Echo(DatagramProtocol):
    def __init__(self, port: int) -> None:
        self.prefix = b"%d: " % port

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.transport.write(self.prefix + datagram, addr)  # type: ignore[union-attr]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("ports", type=int, nargs="+")
    args = parser.parse_args(argv)
    log.startLogging(sys.stdout)
    for port in args.ports:
        reactor.listenUDP(port, Echo(port), interface=args.interface, maxPacketSize=65535)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""twistd dropin: `twistd proxyd`. The real code is imported lazily from proxyd.tap."""

from twisted.application.service import ServiceMaker

Proxyd = ServiceMaker(
    "proxyd",
    "proxyd.tap",
    "A multi-protocol L4/L7 reverse proxy (HTTP, HTTPS, TCP, UDP, WebSocket).",
    "proxyd",
)

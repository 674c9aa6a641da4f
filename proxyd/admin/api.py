"""The admin listener's HTTP resource: GET /api/v1/status (JSON) and GET /metrics (Prometheus
text format, rendered by prometheus-client), behind a bearer token when one is configured."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from proxyd.admin.metrics import metrics_registry

log = Logger()

Status = Callable[[], Deferred[dict[str, Any]]]
"""Makes the status document (proxyd.admin.status.status_document) with the counters of now."""


class AdminResource(Resource):
    """Every path of the admin listener."""

    isLeaf = True

    def __init__(self, status: Status, token: str | None) -> None:
        super().__init__()
        self._status = status
        self._token = f"Bearer {token}".encode() if token is not None else None

    def render(self, request: Request) -> Any:
        request.setHeader(b"Server", b"proxyd")
        request.setHeader(b"Cache-Control", b"no-store")
        if not self._authorized(request):
            request.setResponseCode(401)
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="proxyd"')
            return _json(request, {"error": "a bearer token is required"})
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            return _json(request, {"error": "only GET and HEAD"})
        path = request.path.rstrip(b"/")
        if path == b"/api/v1/status":
            return self._later(request, lambda document: _json(request, document))
        if path == b"/metrics":
            return self._later(request, lambda document: _metrics(request, document))
        request.setResponseCode(404)
        return _json(request, {"error": "not found", "paths": ["/api/v1/status", "/metrics"]})

    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        given = request.getHeader(b"Authorization") or b""
        return hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._token)

    def _later(self, request: Request, render: Callable[[dict[str, Any]], bytes]) -> Any:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(document: dict[str, Any]) -> None:
            if not gone:
                request.write(render(document))
                request.finish()

        def failed(failure: Failure) -> None:
            log.failure("admin: {path} failed", failure, path=request.path.decode("latin-1"))
            if not gone:
                request.setResponseCode(500)
                request.write(_json(request, {"error": "internal error"}))
                request.finish()

        self._status().addCallbacks(answer, failed)
        return NOT_DONE_YET


def _json(request: Request, document: Any) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(document, indent=1).encode() + b"\n"


def _metrics(request: Request, document: dict[str, Any]) -> bytes:
    """The text format the scraper asks for (its Accept field): Prometheus's, or OpenMetrics."""
    accept = request.getHeader(b"Accept")
    encode, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
    request.setHeader(b"Content-Type", content_type.encode())
    return encode(metrics_registry(document))


class AdminSite(Site):
    """The admin listener's factory: no access-log line per request (reading is not a change)."""

    noisy = False

    def log(self, request: Any) -> None:
        """Nothing: GET requests change nothing."""

    def set_listening_port(self, port: Any) -> None:
        """Nothing: the admin listener never pauses accepting."""

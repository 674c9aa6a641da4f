"""The admin listener's HTTP resource (docs/operations.md):

    GET  /api/v1/status                         listeners, pools, servers, counters (JSON)
    GET  /api/v1/config                         the effective config, secrets masked
    POST /api/v1/pools/POOL/servers/SERVER      {"admin": "drain"|"maint"|"ready", "weight": N}
    POST /api/v1/reload                         read the config file again and serve it;
                                                {"force": true} lets it remove [admin]
    GET  /api/v1/caches                         each [cache]: entries, bytes, counters (JSON)
    POST /api/v1/caches/CACHE/purge             {"url"|"prefix"|"tag": ..., "soft": bool},
                                                or the same as a query
    GET  /metrics                               Prometheus text, rendered by prometheus-client
    GET  /, /stats/FILE                         the stats page (no token: it holds no data)

`[admin] token` may do everything, `read_token` only GET; without tokens (loopback only)
everyone may. Every change is logged with who asked: the client's address and the token's kind.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from prometheus_client.exposition import choose_encoder
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from proxyd.admin.metrics import metrics_registry
from proxyd.admin.page import asset
from proxyd.admin.status import config_document
from proxyd.cache.instance import Purge
from proxyd.cache.keys import effective_uri
from proxyd.config.model import AdminConfig
from proxyd.pool import ADMIN_STATES

log = Logger()

MAX_BODY = 64 * 1024
"""A change's JSON body is a few bytes; more is refused (413)."""

_POOLS = [b"", b"api", b"v1", b"pools"]
_CACHES = [b"", b"api", b"v1", b"caches"]

FULL, READ = "token", "read_token"
"""What a request may do: the kind of token it carries (FULL also without tokens)."""


class Proxy(Protocol):
    """What the admin API steers (proxyd.app.ProxydService)."""

    @property
    def config(self) -> Any: ...

    def status(self) -> Deferred[dict[str, Any]]: ...

    def change_server(
        self, pool: str, server: str, admin: str | None, weight: int | None, who: str
    ) -> Any: ...

    @property
    def reload_source(self) -> Callable[[bool], Deferred[Any]]: ...

    @property
    def purge_source(self) -> Callable[[str, Purge], Deferred[int]]: ...

    def announce_purge(self, cache: str, purge: Purge) -> None: ...


class AdminResource(Resource):
    """Every path of the admin listener."""

    isLeaf = True

    def __init__(self, proxy: Proxy, admin_config: AdminConfig) -> None:
        super().__init__()
        self._proxy = proxy
        self.admin_config = admin_config
        """The `[admin]` section: its tokens (a reload sets a new one)."""

    def render(self, request: Request) -> Any:
        request.setHeader(b"Server", b"proxyd")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        path = request.path.rstrip(b"/") or b"/"
        page = asset(path.decode("latin-1"))
        if page is not None:
            return self._get(request, lambda: _page(request, *page))
        access = self._access(request)
        if access is None:
            request.setResponseCode(401)
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="proxyd"')
            return _json(request, {"error": "a bearer token is required"})
        parts = path.split(b"/")
        if path == b"/api/v1/status":
            return self._get(request, lambda: self._status(request, access))
        if path == b"/api/v1/config":
            return self._get(request, lambda: _json(request, config_document(self._proxy.config)))
        if path == b"/metrics":
            return self._get(
                request, lambda: self._later(request, lambda document: _metrics(request, document))
            )
        if path == b"/api/v1/reload":
            return self._post(request, access, lambda who: self._reload(request, who))
        if len(parts) == 7 and parts[:4] == _POOLS and parts[5] == b"servers":
            pool, server = (unquote(part.decode("latin-1")) for part in (parts[4], parts[6]))
            return self._post(request, access, lambda who: self._change(request, pool, server, who))
        if path == b"/api/v1/caches":
            return self._get(
                request,
                lambda: self._later(
                    request, lambda document: _json(request, {"caches": document["caches"]})
                ),
            )
        if len(parts) == 6 and parts[:4] == _CACHES and parts[5] == b"purge":
            cache = unquote(parts[4].decode("latin-1"))
            return self._post(request, access, lambda who: self._purge(request, cache, who))
        request.setResponseCode(404)
        return _json(
            request,
            {
                "error": "not found",
                "paths": [
                    "/api/v1/status",
                    "/api/v1/config",
                    "/api/v1/pools/POOL/servers/SERVER",
                    "/api/v1/reload",
                    "/api/v1/caches",
                    "/api/v1/caches/CACHE/purge",
                    "/metrics",
                    "/",
                ],
            },
        )

    def _access(self, request: Request) -> str | None:
        """FULL, READ, or None (no valid token)."""
        config = self.admin_config
        if config.token is None:
            return FULL
        given = request.getHeader(b"Authorization") or b""
        given_bytes = given.encode("latin-1") if isinstance(given, str) else given
        if hmac.compare_digest(given_bytes, f"Bearer {config.token}".encode()):
            return FULL
        if config.read_token is not None and hmac.compare_digest(
            given_bytes, f"Bearer {config.read_token}".encode()
        ):
            return READ
        return None

    @staticmethod
    def _get(request: Request, answer: Callable[[], Any]) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            return _not_allowed(request, b"GET, HEAD")
        return answer()

    def _post(self, request: Request, access: str, change: Callable[[str], Any]) -> Any:
        if request.method != b"POST":
            return _not_allowed(request, b"POST")
        if access != FULL:
            request.setResponseCode(403)
            return _json(request, {"error": "this token may read, not change"})
        client = request.getClientAddress()
        host = client.host if isinstance(client, IPv4Address | IPv6Address) else "a unix socket"
        tokens = "no token" if self.admin_config.token is None else "token"
        return change(f"admin API, {host} ({tokens})")

    def _status(self, request: Request, access: str) -> Any:
        def render(document: dict[str, Any]) -> bytes:
            document["can_change"] = access == FULL
            return _json(request, document)

        return self._later(request, render)

    def _change(self, request: Request, pool: str, server: str, who: str) -> Any:
        body = _body(request, _CHANGE)
        if isinstance(body, bytes):
            return body
        unknown = sorted(set(body) - {"admin", "weight"})
        admin, weight = body.get("admin"), body.get("weight")
        if unknown or (admin is None and weight is None):
            return _bad(request, _CHANGE)
        if admin is not None and admin not in ADMIN_STATES:
            return _bad(request, '"admin" is one of ' + ", ".join(f'"{s}"' for s in ADMIN_STATES))
        if weight is not None and (type(weight) is not int):
            return _bad(request, '"weight" is a whole number')
        try:
            self._proxy.change_server(pool, server, admin, weight, who)
        except KeyError as e:
            request.setResponseCode(404)
            return _json(request, {"error": e.args[0]})
        except ValueError as e:
            return _bad(request, str(e))

        def render(document: dict[str, Any]) -> bytes:
            for shown in document["pools"]:
                if shown["name"] == pool:
                    for entry in shown["servers"]:
                        if entry["name"] == server:
                            return _json(request, entry)
            request.setResponseCode(404)  # a reload in the same turn took it away
            return _json(request, {"error": f"no server {server} in pool {pool}"})

        return self._later(request, render)

    def _reload(self, request: Request, who: str) -> Any:
        """Reload; `{"force": true}` lets the new file remove the admin listener (without
        it, such a reload is refused: proxyd.config.reload). No body is `{}`."""
        body = _body(request, _RELOAD, empty={})
        if isinstance(body, bytes):
            return body
        force = body.get("force", False)
        if set(body) - {"force"} or type(force) is not bool:
            return _bad(request, _RELOAD)
        if force:
            log.info("reload asked by {who}, forced", who=who, force=True)
        else:
            log.info("reload asked by {who}", who=who)

        def render(outcome: Any) -> bytes:
            if not outcome.reloaded:
                request.setResponseCode(422)
            return _json(request, outcome.document())

        return self._answer(request, self._proxy.reload_source(force), render)

    def _purge(self, request: Request, cache: str, who: str) -> Any:
        """Purge the cache `cache` by URL, prefix or tag, from a JSON body or, without one,
        the query (docs/cache.md); with workers, in every worker (proxyd.workers.master)."""
        content = request.content
        has_body = content is not None and content.read(1) != b""
        if content is not None:
            content.seek(0)
        if has_body:
            body = _body(request, _PURGE)
            if isinstance(body, bytes):
                return body
        else:
            body = {
                key.decode("latin-1"): values[-1].decode("utf-8", "replace")
                for key, values in (request.args or {}).items()
            }
            if "soft" in body:
                body["soft"] = _FLAGS.get(body["soft"].lower(), body["soft"])
        purge = _purge_of(body)
        if isinstance(purge, str):
            return _bad(request, purge)
        try:
            purged = self._proxy.purge_source(cache, purge)
        except KeyError as e:
            request.setResponseCode(404)
            return _json(request, {"error": e.args[0]})
        self._proxy.announce_purge(cache, purge)

        def render(count: int) -> bytes:
            log.info(
                "cache {cache}: purged {count} by {what}, asked by {who}",
                cache=cache,
                count=count,
                what=purge.describe(),
                who=who,
            )
            return _json(request, {"cache": cache, "purged": count})

        return self._answer(request, purged, render)

    def _later(self, request: Request, render: Callable[[dict[str, Any]], bytes]) -> Any:
        """Answer with `render` of the status document (the counters come asynchronously:
        with workers, from each of them)."""
        return self._answer(request, self._proxy.status(), render)

    @staticmethod
    def _answer(request: Request, result: Deferred[Any], render: Callable[[Any], bytes]) -> Any:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(value: Any) -> None:
            if not gone:
                request.write(render(value))
                request.finish()

        def failed(failure: Failure) -> None:
            log.failure("admin: {path} failed", failure, path=request.path.decode("latin-1"))
            if not gone:
                request.setResponseCode(500)
                request.write(_json(request, {"error": "internal error"}))
                request.finish()

        result.addCallbacks(answer, failed)
        return NOT_DONE_YET


def _json(request: Request, document: Any) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(document, indent=1).encode() + b"\n"


def _page(request: Request, content_type: bytes, body: bytes) -> bytes:
    """A file of the stats page: its script and style come from this listener alone."""
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(
        b"Content-Security-Policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    )
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    return body


def _not_allowed(request: Request, allow: bytes) -> bytes:
    request.setResponseCode(405)
    request.setHeader(b"Allow", allow)
    return _json(request, {"error": f"only {allow.decode()}"})


def _bad(request: Request, expected: str) -> bytes:
    request.setResponseCode(400)
    return _json(request, {"error": f"expected {expected}"})


_CHANGE = 'a JSON object with "admin" and/or "weight"'
_RELOAD = 'no body, or a JSON object with "force": true or false'
_PURGE = (
    'a JSON object (or a query) with exactly one of "url" (http://host/path?query),'
    ' "prefix" (http://host/path...) or "tag" (a Surrogate-Key or Cache-Tag), and "soft":'
    " true or false"
)
_FLAGS = {"1": True, "true": True, "on": True, "yes": True}
_FLAGS.update({"0": False, "false": False, "off": False, "no": False})


def _purge_of(body: dict[str, Any]) -> Purge | str:
    """The purge a request's fields ask for, or what was expected instead. A URL (and a
    prefix's scheme and host) are written as the cache keeps them: proxyd.cache.keys's
    effective URI, the host in lower case without the scheme's default port."""
    soft = body.get("soft", False)
    given = {key: body[key] for key in ("url", "prefix", "tag") if key in body}
    if set(body) - {"url", "prefix", "tag", "soft"} or type(soft) is not bool or len(given) != 1:
        return _PURGE
    [(kind, value)] = given.items()
    if not isinstance(value, str) or not value:
        return f'"{kind}" a non-empty string'
    if kind != "tag":
        uri = _effective(value, whole=kind == "url")
        if uri is None:
            return f'"{kind}" an absolute http:// or https:// URI with a host; found {value!r}'
        value = uri
    return Purge(**{kind: value}, soft=soft)


def _effective(text: str, whole: bool) -> str | None:
    """`text` as an effective URI (a prefix: its scheme and host, when the prefix has all
    of the host), or None when it is not an http(s) URI."""
    scheme, separator, rest = text.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in ("http", "https"):
        return None
    if not whole and not any(mark in rest for mark in "/?"):
        return f"{scheme}://{rest.lower()}"  # the host may go on: leave its port alone
    parts = urlsplit(f"{scheme}://{rest}")
    if not parts.netloc or "@" in parts.netloc:
        return None
    path = parts.path or ("/" if whole else "")
    return effective_uri(scheme, parts.netloc, path, parts.query)


def _body(
    request: Request, expected: str, empty: dict[str, Any] | None = None
) -> dict[str, Any] | bytes:
    """The request's JSON object (`empty` when the body is empty and that is allowed), or
    the error answer already made (`expected` says what the body should have been)."""
    content = request.content
    data = content.read(MAX_BODY + 1) if content is not None else b""
    if len(data) > MAX_BODY:
        request.setResponseCode(413)
        return _json(request, {"error": f"a body of at most {MAX_BODY} bytes"})
    if empty is not None and not data.strip():
        return empty
    try:
        body = json.loads(data or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _bad(request, expected)
    return body


def _metrics(request: Request, document: dict[str, Any]) -> bytes:
    """The text format the scraper asks for (its Accept field): Prometheus's, or OpenMetrics."""
    accept = request.getHeader(b"Accept")
    encode, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
    request.setHeader(b"Content-Type", content_type.encode())
    return encode(metrics_registry(document))


class AdminSite(Site):
    """The admin listener's factory: no access-log line per request (changes are logged by
    the resource, with who asked)."""

    noisy = False

    def log(self, request: Any) -> None:
        """Nothing: GET requests change nothing, and changes are logged as they happen."""

    def set_listening_port(self, port: Any) -> None:
        """Nothing: the admin listener never pauses accepting."""

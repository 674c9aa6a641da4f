"""`intercept_errors`: a server's response whose status is listed has its body replaced by
proxyd's own error page for that status (the listener's `error_pages` file, else a line of
text), as nginx's proxy_intercept_errors: a backend's stack trace, debug page or internal
addresses in an error body never reach the client.

The server's fields go with its body, but for the CORS ones (Access-Control-*, Vary), so
that a script allowed to read the response can still read its status. The rest of the
server's response is not read: its connection is closed rather than kept for reuse."""

from __future__ import annotations

from collections.abc import Mapping

from proxyd.filters.api import Answer, Headers
from proxyd.filters.internal import RelayExchange
from proxyd.relay.http.messages import reason_phrase

_KEPT = (b"access-control-", b"vary")


class InterceptErrors:
    """Built in where the listener or the route has intercept_errors."""

    def __init__(self, statuses: frozenset[int], pages: Mapping[int, bytes]) -> None:
        self.statuses = statuses
        self.pages = dict(pages)

    def response_head(self, exchange: RelayExchange) -> Answer | None:
        status = exchange.status
        if status not in self.statuses or exchange.answer is not None:
            return None
        kept: Headers = [f for f in exchange.response_headers if f[0].lower().startswith(_KEPT)]
        page = self.pages.get(status)
        if page is not None:
            return Answer(status, page, kept, content_type="text/html; charset=utf-8")
        body = b"%d %s\n" % (status, reason_phrase(status))
        return Answer(status, body, kept)

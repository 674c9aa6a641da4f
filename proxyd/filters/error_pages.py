"""`error_pages`: the body of proxyd's own error answers (Reject) for the statuses listed."""

from __future__ import annotations

from collections.abc import Mapping

from proxyd.filters.api import Reject, set_header
from proxyd.filters.internal import RelayExchange


class ErrorPages:
    def __init__(self, pages: Mapping[int, bytes]) -> None:
        self.pages = dict(pages)

    def response_head(self, exchange: RelayExchange) -> None:
        answer = exchange.answer
        if not isinstance(answer, Reject):
            return
        page = self.pages.get(answer.status)
        if page is not None:
            answer.body = page
            set_header(answer.headers, b"Content-Type", b"text/html; charset=utf-8")

"""Filters the integration tests load through a config's [filter] sections
(tests/integration/test_filters.py)."""

from __future__ import annotations

from twisted.internet import task

from proxyd.filters import Answer, Exchange, Filter, Options, add_header


class Local(Filter):
    """Answers `path` itself."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.path = options.text("path")

    def request_head(self, exchange: Exchange) -> Answer | None:
        if exchange.path == self.path:
            return Answer(200, f"answered by filter {self.name}\n")
        return None


class Tag(Filter):
    """Adds `header: value` to every request."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.header = options.text("header")
        self.value = options.text("value")

    def request_head(self, exchange: Exchange) -> None:
        add_header(exchange.request_headers, self.header, self.value)


class Upper(Filter):
    """Upper-cases response bodies, chunk by chunk."""

    def response_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
        return data.upper()


class Wait(Filter):
    """Holds requests to `path` for `delay` on a Deferred, then lets them go on."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.path = options.text("path")
        self.delay = options.duration("delay")

    def request_head(self, exchange: Exchange):  # type: ignore[no-untyped-def]
        if exchange.path != self.path:
            return None
        exchange.vars["held"] = exchange.reactor.seconds()
        return task.deferLater(exchange.reactor, self.delay, lambda: None)


class Boom(Filter):
    """Raises on `path`."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.path = options.text("path")

    def request_head(self, exchange: Exchange) -> None:
        if exchange.path == self.path:
            raise RuntimeError("boom on purpose")

"""A response body rewriter that streams: replaces `find` with `replace` in text responses
as they pass, never holding more than len(find) - 1 bytes back (a match may straddle two
reads), as nginx's sub_filter does.

    [filter brand]
    class = rewrite:BodyRewriter
    python_path = ../examples/filters
    find = http://internal.example
    replace = https://www.example.com
    content_types =            ; default: text/html text/plain
        text/html
        application/json
"""

from __future__ import annotations

from proxyd.filters import Exchange, Filter, OptionError, Options, header


class BodyRewriter(Filter):
    def __init__(self, options: Options) -> None:
        super().__init__(options)
        find = options.text("find")
        if not find:
            raise OptionError("find", "some text to find", "nothing")
        self.find = find.encode()
        self.replace = options.text("replace", "").encode()
        types = options.lines("content_types", ["text/html", "text/plain"])
        self.content_types = tuple(t.lower() for t in types)

    def response_head(self, exchange: Exchange) -> None:
        content_type = (header(exchange.response_headers, "content-type") or "").lower()
        encoding = (header(exchange.response_headers, "content-encoding") or "identity").lower()
        media = content_type.split(";")[0].strip()
        if media in self.content_types and encoding == "identity":
            exchange.vars[self.name] = b""  # the bytes held back from the previous read

    def response_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
        held = exchange.vars.get(self.name)
        if held is None:
            return data
        text = (held + data).replace(self.find, self.replace)
        if end:
            exchange.vars[self.name] = b""
            return text
        # Keep back what could be the start of a match that the next read completes.
        keep = 0
        for size in range(min(len(self.find) - 1, len(text)), 0, -1):
            if self.find.startswith(text[-size:]):
                keep = size
                break
        exchange.vars[self.name] = text[len(text) - keep :]
        return text[: len(text) - keep]

"""How a response's head is framed for the client, as a pure function of the facts: whether
its body goes chunked, whether the connection stays open, and the Connection field that says
so. Tested table-driven (tests/unit/test_framing.py)."""

from __future__ import annotations

from proxyd.relay.http.messages import Headers

Framing = tuple[bool, bool, Headers]
"""(chunked: the body goes chunked; keep_alive: the connection stays open after this
response; the head's fields, framed: Content-Length dropped when the body is transformed,
Transfer-Encoding and Connection added as needed). A plain tuple: made on every response."""


def frame(
    fields: Headers,
    version: str,
    keep_alive: bool,
    closing: bool,
    request_done: bool,
    has_body: bool,
    length_known: bool,
    transformed: bool = False,
) -> Framing:
    """Frame a response with `fields` to an HTTP/`version` request.

    - a body of unknown length (`length_known` false, or `transformed` by a filter, whose
      Content-Length is then dropped) goes chunked to an HTTP/1.1 client, and to the close to
      an HTTP/1.0 one;
    - the connection closes when the client asked (`keep_alive` false), when it is `closing`
      (draining, or a reload's last request), or when the request body was not all read
      (`request_done` false: an early answer; the rest cannot be told from a next request);
    - `Connection: close` says it closes; `Connection: keep-alive` tells an HTTP/1.0 client it
      does not;
    - an HTTP/2 stream (`version` "2") is framed by its connection: nothing is added, and it
      keeps the connection open.
    """
    if version == "2":
        # An HTTP/2 stream frames itself (DATA frames, END_STREAM), and its connection stays
        # open whatever happens to one stream: nothing to add.
        if transformed:
            fields = [(k, v) for k, v in fields if k.lower() != b"content-length"]
        return False, True, fields
    chunked = False
    if has_body:
        if transformed:
            fields = [(k, v) for k, v in fields if k.lower() != b"content-length"]
        if transformed or not length_known:
            if version == "1.1":
                chunked = True
                fields.append((b"Transfer-Encoding", b"chunked"))
            else:
                keep_alive = False
    keep_alive = keep_alive and request_done and not closing
    if not keep_alive:
        fields.append((b"Connection", b"close"))
    elif version == "1.0":
        fields.append((b"Connection", b"keep-alive"))
    return chunked, keep_alive, fields

"""[http] `invalid_headers`: request fields whose names have characters other than letters,
digits and '-' are dropped (the default), refused (400) or passed.

Why: CGI, WSGI, PHP and Rack read a request field as a variable, `X-Forwarded-For` as
HTTP_X_FORWARDED_FOR, and so does `X_Forwarded_For`: a client can send the second to spoof
the first where proxyd only rewrites the first (nginx drops such names by default:
ignore_invalid_headers, underscores_in_headers). Dropped first, before any other filter or
the server reads the request's fields.

Cost: the names joined and stripped of the valid characters (bytes.translate), about 0.35 µs
for six fields; the list is rebuilt only when a name is bad."""

from __future__ import annotations

from typing import Final

from proxyd.filters.api import Reject
from proxyd.filters.internal import RelayExchange
from proxyd.metrics import ErrorKind

_VALID: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"


def invalid_name(name: bytes) -> bool:
    """The name has a character other than a letter, a digit or '-' (or is empty)."""
    return not name or bool(name.translate(None, _VALID))


class InvalidHeaders:
    """Built in unless `invalid_headers = pass`."""

    def __init__(self, mode: str = "drop") -> None:
        if mode not in ("drop", "refuse"):
            raise ValueError(f"invalid_headers: drop or refuse, not {mode!r}")
        self.mode = mode

    def request_head(self, exchange: RelayExchange) -> Reject | None:
        fields = exchange.request_headers
        if not b"".join([name for name, _ in fields]).translate(None, _VALID):
            return None
        if self.mode == "refuse":
            bad = next(name for name, _ in fields if invalid_name(name))
            why = f"invalid header name {bad.decode('latin-1')[:60]!r}"
            return Reject(400, why, ErrorKind.BAD_REQUEST)
        fields[:] = [field for field in fields if not invalid_name(field[0])]
        return None

"""What an authentication method decides about one request's credentials."""

from __future__ import annotations

import attrs

Fields = tuple[tuple[bytes, bytes], ...]


@attrs.frozen
class Granted:
    """The credentials hold."""

    identity: str
    """Who: the user, the API key's name, the token's subject (the access log's `auth_user`)."""
    upstream: Fields = ()
    """Fields to add to the request sent upstream (after the same names are removed from the
    client's request, so that a client cannot forge them)."""


@attrs.frozen
class Denied:
    """The credentials are missing or do not hold: answer `status` with `fields` (a
    WWW-Authenticate challenge, say) and `body` (empty: proxyd's error page for `status`)."""

    status: int
    reason: str
    """Why, for the metrics' `reason` label and the log: a word from a small fixed set
    ("missing", "malformed", "unknown_user", "bad_password", "expired", "bad_signature",
    "unavailable", ...), never a secret nor a value the client chose."""
    fields: Fields = ()
    body: bytes = b""


Decision = Granted | Denied

"""The `[acme NAME]` section's settings (docs/acme.md): certificates obtained from an ACME
(RFC 8555) directory for the TLS listeners that name the section with `acme = NAME`. Frozen
attrs values, as the rest of proxyd.config.model."""

from __future__ import annotations

from typing import Final

import attrs

LETS_ENCRYPT: Final = "https://acme-v02.api.letsencrypt.org/directory"
"""Let's Encrypt's production directory: the default `directory`."""

CHALLENGES: Final = ("http-01", "tls-alpn-01")
"""The challenge types proxyd answers: http-01 on the [http] listeners (port 80 for a real
CA), tls-alpn-01 on the [https] listener itself (RFC 8737, port 443)."""


@attrs.frozen
class AcmeConfig:
    name: str
    names: tuple[str, ...]
    """The DNS names the certificate covers, lower case; the first is its common name."""
    storage: str
    """The directory of the account key, the certificate and its key (docs/acme.md)."""
    contact: tuple[str, ...] = ()
    """`mailto:` addresses given to the CA for expiry notices."""
    directory: str = LETS_ENCRYPT
    ca: str | None = None
    """A CA bundle the directory's HTTPS is verified against; None: the system's."""
    challenges: tuple[str, ...] = ("http-01", "tls-alpn-01")
    """Challenge types answered, in order of preference."""
    renew_before: float | None = None
    """Renew this long before expiry; None: at two thirds of the lifetime (30 days before
    for a 90-day certificate)."""
    retry_min: float = 60.0
    """The first wait after a failed attempt; each further failure doubles it..."""
    retry_max: float = 86400.0
    """... up to this."""
    eab_kid: str | None = None
    """External account binding (RFC 8555 7.3.4): the key identifier the CA gave, sent with
    `eab_hmac_key` when a new account is registered; None: no binding (both or neither)."""
    eab_hmac_key: str | None = attrs.field(default=None, repr=False)
    """The binding's MAC key the CA gave, base64url without padding. A secret: not in the
    repr, masked in the admin API's config (proxyd.admin.status.SECRET_KEYS)."""

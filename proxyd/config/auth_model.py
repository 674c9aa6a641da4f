"""`[auth NAME]` sections: how requests of the routes that name them authenticate (basic,
api_key, jwt, forward; docs/security.md). Frozen attrs values, as the rest of
proxyd.config.model; the tables a section names (htpasswd users, API keys, PEM keys) are read
when the file is loaded, so that a bad file is a config error with its line."""

from __future__ import annotations

from typing import Any

import attrs

AUTH_TYPES = ("basic", "api_key", "jwt", "forward")


@attrs.frozen
class BasicAuthConfig:
    users_file: str
    users: Any = attrs.field(eq=False, repr=False)
    """proxyd.auth.htpasswd.UserTable, read at load."""
    cache_time: float = 300.0
    max_pending: int = 64
    user_header: str | None = "X-Auth-User"


@attrs.frozen
class ApiKeyAuthConfig:
    keys_file: str
    keys: Any = attrs.field(eq=False, repr=False)
    """proxyd.auth.api_keys.KeyTable, read at load."""
    header: str | None = "X-API-Key"
    query_param: str | None = None
    name_header: str | None = "X-Auth-Key"


@attrs.frozen
class JwtAuthConfig:
    algorithms: tuple[str, ...]
    key_files: tuple[str, ...] = ()
    keys: Any = attrs.field(default=None, eq=False, repr=False)
    """joserfc KeySet from key_files, read at load (None with jwks)."""
    jwks: str | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    claims: tuple[tuple[str, str], ...] = ()
    """(claim, header) pairs: claims passed upstream."""
    identity_claim: str = "sub"
    jwks_refresh: float = 300.0
    jwks_min_refresh: float = 10.0


@attrs.frozen
class ForwardAuthConfig:
    url: str
    timeout: float = 2.0
    request_headers: tuple[str, ...] = ("Authorization", "Cookie")
    copy_headers: tuple[str, ...] = ()
    cache_time: float = 0.0
    cache_key: tuple[str, ...] = ()


@attrs.frozen
class AuthConfig:
    """`[auth NAME]`."""

    name: str
    type: str
    """One of AUTH_TYPES; `method` holds its settings."""
    realm: str
    method: BasicAuthConfig | ApiKeyAuthConfig | JwtAuthConfig | ForwardAuthConfig

    @property
    def identity_headers(self) -> tuple[str, ...]:
        """The fields this method sets on the upstream request: removed from the client's
        request first, so that a client cannot forge them."""
        method = self.method
        if isinstance(method, BasicAuthConfig):
            return (method.user_header,) if method.user_header else ()
        if isinstance(method, ApiKeyAuthConfig):
            return (method.name_header,) if method.name_header else ()
        if isinstance(method, JwtAuthConfig):
            return tuple(header for _, header in method.claims)
        return method.copy_headers

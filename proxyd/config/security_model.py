"""The security settings of listeners and routes (docs/security.md): `[rule NAME]` and `[cors
NAME]` sections, the security_headers preset, per-client connection rates. Frozen attrs
values, as the rest of proxyd.config.model; `[auth NAME]` is in proxyd.config.auth_model."""

from __future__ import annotations

import re
from typing import Any, Final, Literal

import attrs

from proxyd.ratelimit.rates import Rate as Rate  # the rates of [ratelimit], too

OFF: Final = "off"
"""A route's `auth = off` or `cors = off`: none for its requests, whatever the listener says."""
Off = Literal["off"]

RULE_MATCHES: Final = ("path", "query", "uri", "method", "user_agent", "header")
"""What a [rule] matches its pattern against (`header NAME`: that field's value)."""
RULE_MODES: Final = ("enforce", "log_only")
INVALID_HEADERS: Final = ("drop", "refuse", "pass")
"""[http] invalid_headers: what a request field whose name has other characters than letters,
digits and '-' gets."""


@attrs.frozen
class RuleConfig:
    """`[rule NAME]`: a request whose `match` part the `pattern` finds is refused with `status`
    (mode enforce) or only logged and counted (mode log_only)."""

    name: str
    match: str
    """One of RULE_MATCHES."""
    pattern: re.Pattern[str]
    header: str | None = None
    """match = header: the field's name, lower case."""
    mode: str = "enforce"
    status: int = 403


@attrs.frozen
class CorsConfig:
    """`[cors NAME]`: a CORS policy (proxyd.filters.cors.CorsPolicy) routes may name."""

    name: str
    policy: Any
    """proxyd.filters.cors.CorsPolicy (kept as Any: the config layer only holds it)."""


@attrs.frozen
class SecurityHeadersConfig:
    """`security_headers` and its keys: the preset's response fields
    (proxyd.filters.security_headers.preset), made at load."""

    enabled: bool = False
    frame_options: str | None = "SAMEORIGIN"
    referrer_policy: str | None = "strict-origin-when-cross-origin"
    content_security_policy: str | None = None
    frame_ancestors: str | None = None
    override: bool = False
    fields: tuple[tuple[bytes, bytes], ...] = ()
    """The fields added to responses (empty when not enabled)."""

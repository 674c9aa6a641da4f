"""[http] / [https] `otlp_*` keys: one span per request exported to an OpenTelemetry
collector over OTLP/HTTP (proxyd.otlp, proxyd.filters.trace_context). The keys' parsers, the
value they make, and the check that they come with `trace_context = on` or `restart` (the span
is the one whose id that filter sends upstream)."""

from __future__ import annotations

import math
from typing import Any, Final
from urllib.parse import urlsplit

from proxyd.config.errors import Invalid
from proxyd.config.ini import Section
from proxyd.config.keys import Key
from proxyd.config.otlp_model import OtlpConfig

TRACES_PATH: Final = "/v1/traces"
"""The path of OTLP/HTTP's traces endpoint on a collector (its default port is 4318)."""


_ENDPOINT_EXPECTED: Final = "an http:// or https:// URL with a host and a path"


def endpoint(text: str) -> str:
    """An OTLP/HTTP URL: http or https, a host, a valid port, a path other than '/', no
    user or password (the collector's credentials belong in the environment: see
    docs/configuration.md), no fragment."""
    word = text.strip()
    example = f"http://127.0.0.1:4318{TRACES_PATH}"
    try:
        url = urlsplit(word)
        port = url.port
    except ValueError as e:
        if "port" in str(e).lower():
            raise Invalid("a port from 1 to 65535", repr(word)) from None
        raise Invalid(_ENDPOINT_EXPECTED, repr(word)) from None
    if port == 0:
        raise Invalid("a port from 1 to 65535", repr(word))
    if url.scheme not in ("http", "https") or not url.hostname:
        hint = f"e.g. {example}"
        if word and "://" not in word:
            hint = f"did you mean 'http://{word}{'' if '/' in word else TRACES_PATH}'?"
        raise Invalid(_ENDPOINT_EXPECTED, repr(word), hint)
    if any(c.isspace() or not c.isprintable() for c in word):
        raise Invalid(_ENDPOINT_EXPECTED, repr(word))
    if url.username is not None or url.password is not None:
        raise Invalid(
            "a URL without user or password (set OTEL_EXPORTER_OTLP_TRACES_HEADERS in"
            " proxyd's environment for the collector's credentials)",
            "credentials in the URL",
        )
    if url.fragment:
        raise Invalid("a URL without a fragment", repr(word))
    if url.path in ("", "/"):
        raise Invalid(
            _ENDPOINT_EXPECTED,
            repr(word),
            f"did you mean '{word.rstrip('/')}{TRACES_PATH}'? OTLP/HTTP takes spans there",
        )
    return word


def service_name(text: str) -> str:
    word = text.strip()
    if not word or len(word) > 255 or not word.isprintable():
        raise Invalid("a service name (1 to 255 printable characters)", repr(word))
    return word


def ratio(text: str) -> float:
    """A number from 0 to 1 (`0.25`), or a percentage (`25%`)."""
    word = text.strip()
    expected = "a ratio from 0 to 1 (e.g. 0.1) or a percentage (e.g. 10%)"
    try:
        value = float(word[:-1]) / 100 if word.endswith("%") else float(word)
    except ValueError:
        raise Invalid(expected, repr(word)) from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise Invalid(expected, repr(word))
    return value


KEYS: Final = {
    "otlp_endpoint": Key(endpoint, group="otlp", field="endpoint"),
    "otlp_service_name": Key(service_name, group="otlp", field="service_name"),
    "otlp_sample": Key(ratio, group="otlp", field="sample"),
}
"""[http] and [https] keys; proxyd.config.cross_checks builds their OtlpConfig."""


def otlp_group(
    section: Section, fields: dict[str, Any], values: dict[str, Any]
) -> list[tuple[str | None, Invalid]]:
    """Set fields["otlp"] from the `otlp_*` keys' values; the problems across keys: the
    other keys without `otlp_endpoint`, any of them with `trace_context = off` (the span
    exported is the one whose id trace_context sends upstream)."""
    if not values:
        return []
    if "endpoint" not in values:
        return [
            (key, Invalid("'otlp_endpoint' too (where to export spans)", "none"))
            for key in KEYS
            if key in section.entries
        ]
    if fields.get("trace_context", "off") == "off":
        return [
            (
                "otlp_endpoint",
                Invalid(
                    "trace_context = on or restart with it (the span exported is the one whose"
                    " id trace_context sends upstream)",
                    "trace_context = off",
                ),
            )
        ]
    fields["otlp"] = OtlpConfig(**values)
    return []

"""The value of a listener's `otlp_*` keys (proxyd.config.otlp reads them)."""

from __future__ import annotations

from typing import Final

import attrs

DEFAULT_SERVICE_NAME: Final = "proxyd"


@attrs.frozen
class OtlpConfig:
    """Where and how a listener's spans are exported (proxyd.otlp)."""

    endpoint: str
    """The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`."""
    service_name: str = DEFAULT_SERVICE_NAME
    """The spans' resource `service.name`."""
    sample: float = 1.0
    """The share of the traces proxyd begins that are sampled (so exported); a continued
    trace keeps the client's sampled flag."""

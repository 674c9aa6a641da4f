"""When to order a certificate (sans-IO: times in, times out; no clock, no reactor).

A certificate is kept while it is valid, covers the names asked for and is not due: due is
`renew_before` ahead of its expiry, by default a third of its lifetime ahead (30 days for
Let's Encrypt's 90-day certificates), moved earlier by a random jitter of up to a tenth of
that (at most 12 hours) so that many proxies renewing the same day do not ask at the same
second. A failed attempt is retried after `retry_min`, doubling on each failure in a row up
to `retry_max`; a certificate still valid is served meanwhile.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Iterable

import attrs

from proxyd.config.acme_model import AcmeConfig

MAX_JITTER = 12 * 3600.0


def covers(certificate_names: Iterable[str], wanted: Iterable[str]) -> bool:
    """Whether a certificate for `certificate_names` serves every name `wanted` (exactly, or
    by a wildcard one label up)."""
    have = {name.lower() for name in certificate_names}
    for name in wanted:
        name = name.lower()
        if name in have:
            continue
        parent = name.split(".", 1)[1] if "." in name else ""
        if parent and "*." + parent in have:
            continue
        return False
    return True


def _seconds(moment: datetime.datetime) -> float:
    return moment.timestamp()


@attrs.frozen
class Held:
    """What matters of a certificate held: its validity and its names."""

    not_before: float
    not_after: float
    names: tuple[str, ...]

    @classmethod
    def of(
        cls, not_before: datetime.datetime, not_after: datetime.datetime, names: Iterable[str]
    ) -> Held:
        return cls(_seconds(not_before), _seconds(not_after), tuple(names))


def renewal_time(held: Held, config: AcmeConfig, jitter: float) -> float:
    """When `held` is due, `jitter` in [0, 1) picking where in the jitter window."""
    lifetime = max(0.0, held.not_after - held.not_before)
    ahead = config.renew_before if config.renew_before is not None else lifetime / 3
    ahead = min(ahead, lifetime)
    window = min(ahead / 10, MAX_JITTER)
    return held.not_after - ahead - window * jitter


@attrs.define
class Schedule:
    """The renewal state of one [acme] section: the certificate held, the failures in a
    row, and when the next attempt is due."""

    config: AcmeConfig
    rng: random.Random = attrs.field(factory=random.Random)
    held: Held | None = None
    failures: int = 0
    _jitter: float = 0.0

    def hold(self, held: Held | None) -> None:
        """A certificate is held now (stored, or just obtained); failures are forgotten."""
        self.held = held
        self.failures = 0
        self._jitter = self.rng.random()

    def usable(self, now: float) -> bool:
        """The held certificate has not expired and covers the names. One not valid yet by
        this clock counts too: a new order would not be valid earlier (the CA's clock is
        ahead of ours)."""
        held = self.held
        return held is not None and now < held.not_after and covers(held.names, self.config.names)

    def next_attempt(self, now: float) -> float:
        """When to order next: now if nothing usable is held, else when it is due; after a
        failure, once the backoff has passed."""
        if self.failures:
            return now + self.backoff()
        if not self.usable(now):
            return now
        assert self.held is not None
        return max(now, renewal_time(self.held, self.config, self._jitter))

    def failed(self) -> None:
        self.failures += 1

    def backoff(self) -> float:
        """The wait after `failures` failures in a row: retry_min doubled each time, up to
        retry_max."""
        if not self.failures:
            return 0.0
        wait = self.config.retry_min * 2 ** min(self.failures - 1, 40)
        return float(min(wait, self.config.retry_max))

    def due(self, now: float) -> bool:
        return self.next_attempt(now) <= now

"""Rise/fall health state of one server, fed one check result at a time (sans-IO).

A server starts UP "on probation", like HAProxy's default `init-state up`: it counts as up so
that a fresh process serves at once, but its first failed check takes it DOWN without waiting
for `fall` failures. Once any check has succeeded the normal counting applies: `fall` failures
in a row take an UP server DOWN, `rise` successes in a row take a DOWN server UP.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Transition:
    """A server changed state on the check result that produced this value."""

    up: bool
    """The new state."""
    reason: str
    """The reason given with the result that caused the change."""
    count: int
    """Results in a row that caused it (failures going DOWN, successes going UP)."""
    threshold: int
    """How many were needed: `fall` or `rise`; 1 for the first check on probation."""
    first_check: bool = False
    """Went DOWN on its first check, while still on probation."""

    @property
    def state(self) -> str:
        return "UP" if self.up else "DOWN"

    @property
    def counts(self) -> str:
        """`3/3 failed`, `2/2 succeeded`, or `first check failed`."""
        if self.first_check:
            return "first check failed"
        return f"{self.count}/{self.threshold} {'succeeded' if self.up else 'failed'}"


@attrs.define
class HealthState:
    """One server's rise/fall counters. `record()` each check result in order."""

    rise: int = attrs.field(validator=attrs.validators.ge(1))
    fall: int = attrs.field(validator=attrs.validators.ge(1))
    up: bool = True
    probation: bool = True
    """UP but never yet seen to pass a check: the first failure takes it DOWN."""
    successes: int = 0
    """Successes in a row while DOWN (toward `rise`)."""
    failures: int = 0
    """Failures in a row while UP (toward `fall`)."""

    def record(self, ok: bool, reason: str) -> Transition | None:
        """Count one check result; the Transition when it changes the state, else None."""
        if self.up:
            return self._record_while_up(ok, reason)
        return self._record_while_down(ok, reason)

    def _record_while_up(self, ok: bool, reason: str) -> Transition | None:
        if ok:
            self.probation = False
            self.failures = 0
            return None
        if self.probation:
            self._go(up=False)
            return Transition(up=False, reason=reason, count=1, threshold=1, first_check=True)
        self.failures += 1
        if self.failures < self.fall:
            return None
        count = self.failures
        self._go(up=False)
        return Transition(up=False, reason=reason, count=count, threshold=self.fall)

    def _record_while_down(self, ok: bool, reason: str) -> Transition | None:
        if not ok:
            self.successes = 0
            return None
        self.successes += 1
        if self.successes < self.rise:
            return None
        count = self.successes
        self._go(up=True)
        return Transition(up=True, reason=reason, count=count, threshold=self.rise)

    def _go(self, up: bool) -> None:
        self.up = up
        self.probation = False
        self.successes = 0
        self.failures = 0

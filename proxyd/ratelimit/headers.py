"""The response fields of rate limits: `RateLimit-Policy` and `RateLimit` as
draft-ietf-httpapi-ratelimit-headers-11 (May 2026) defines them, and `Retry-After` for a 429.

Since draft -08 the fields are two Structured Field Lists (RFC 9651), one item per policy,
named by a String: `RateLimit-Policy: "api";q=100;w=60` (the quota q over a window of w
seconds) and `RateLimit: "api";r=42;t=30` (r still available, within the next t seconds).
The older `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` fields (drafts up to
-07) are not sent.

Wiring: each `[ratelimit NAME]` builds one `Policy(NAME, gcra)` (its item is serialized
then, once). A route or listener whose requests several limits judge builds its
`policy_field(policies)` once, in the configured order (the draft wants it to stay the same
from one response to the next). Per response, the filter passes each limit's Policy and the
request's Verdict to `response_fields()`: it gives RateLimit-Policy, RateLimit, and, when a
limit refused the request, Retry-After; the filter adds them to the response (its own 429 or
the server's answer).

How GCRA maps onto the draft's terms:

- q and w are the configured rate: `100/s` is `q=100;w=1`, `1M/d` is `q=1000000;w=86400`.
  The burst has no parameter in the draft and is not sent.
- r is Verdict.remaining: requests that would pass right now.
- t is the draft's "effective window, the number of seconds within which the client can use
  no more than the available quota": for GCRA, the time until r grows by one,
  reset_after - (burst - remaining - 1) * T, rounded up to whole seconds (the draft's t is
  an integer; up, so that a client waiting t always finds r grown). t = 0 only for a key
  that owes nothing. With r = 0, t is the same moment as Retry-After, as the draft asks
  ("Retry-After SHOULD NOT reference a point in time earlier than the end of the effective
  window").
- The optional `pk` (partition key) is not sent: it would show the key (a client address,
  an identity) to whoever reads the response.
- Several limits: RateLimit lists the most restrictive first (refused ones, then fewer r,
  then longer t), so a client that reads only the first item paces by the binding one.
- Retry-After (RFC 9110, 10.2.3) is delay-seconds: the longest retry_after among the limits
  that refused, rounded up, at least 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Final

from proxyd.ratelimit.gcra import Gcra, Verdict

Field = tuple[bytes, bytes]

RATELIMIT_POLICY: Final = b"RateLimit-Policy"
RATELIMIT: Final = b"RateLimit"
RETRY_AFTER: Final = b"Retry-After"

DRAFT: Final = "draft-ietf-httpapi-ratelimit-headers-11"

_ROUNDING: Final = 1e-6
"""Seconds forgiven before rounding up, so 2.0000000000000004 s is 2, not 3."""
_SF_STRING: Final = re.compile(r"^[\x20-\x7e]*$")


def _sf_string(text: str) -> bytes:
    """RFC 9651, 4.1.6: printable ASCII in quotes, with `"` and `\\` escaped."""
    if not _SF_STRING.match(text):
        raise ValueError(f"a policy name of printable ASCII, not {text!r}")
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


def whole_seconds(seconds: float) -> int:
    """Rounded up, forgiving float rounding (a microsecond)."""
    return max(0, math.ceil(seconds - _ROUNDING))


class Policy:
    """One limit as the RateLimit fields name it. A plain class rather than an attrs one, so
    that mypyc compiles it as a native class."""

    __slots__ = ("_quoted", "gcra", "item", "name")

    def __init__(self, name: str, gcra: Gcra) -> None:
        self.name: Final = name
        self.gcra: Final = gcra
        self._quoted: Final = _sf_string(name)
        rate = gcra.rate
        self.item: Final = b"%s;q=%d;w=%d" % (self._quoted, rate.count, rate.period_seconds)
        """Its RateLimit-Policy item: `"name";q=100;w=1`."""

    def __repr__(self) -> str:
        return f"Policy(name={self.name!r}, gcra={self.gcra!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return self.name == other.name and self.gcra == other.gcra

    def __hash__(self) -> int:
        return hash((self.name, self.gcra))

    def effective_window(self, verdict: Verdict) -> int:
        """The RateLimit `t` for `verdict`: whole seconds until `remaining` grows."""
        gcra = self.gcra
        free = gcra.burst - verdict.remaining - 1
        if free < 0:
            return 0
        return whole_seconds(verdict.reset_after - free * gcra.interval)

    def service_item(self, verdict: Verdict) -> bytes:
        """Its RateLimit item for `verdict`: `"name";r=19;t=1`."""
        return b"%s;r=%d;t=%d" % (self._quoted, verdict.remaining, self.effective_window(verdict))


def policy_field(policies: Sequence[Policy]) -> Field:
    """`RateLimit-Policy` for requests that these limits judge, in the order given."""
    return (RATELIMIT_POLICY, b", ".join(policy.item for policy in policies))


def ratelimit_field(results: Sequence[tuple[Policy, Verdict]]) -> Field:
    """`RateLimit` for one request's verdicts, the most restrictive first."""
    if len(results) == 1:
        policy, verdict = results[0]
        return (RATELIMIT, policy.service_item(verdict))
    ranked = sorted(
        range(len(results)),
        key=lambda i: (
            results[i][1].allowed,
            results[i][1].remaining,
            -results[i][0].effective_window(results[i][1]),
            i,
        ),
    )
    return (RATELIMIT, b", ".join(results[i][0].service_item(results[i][1]) for i in ranked))


def retry_after_field(seconds: float) -> Field:
    """`Retry-After` in delay-seconds: `seconds` rounded up, at least 1 (0 would invite an
    immediate retry that is still refused)."""
    return (RETRY_AFTER, b"%d" % max(1, whole_seconds(seconds)))


def response_fields(
    results: Sequence[tuple[Policy, Verdict]], policy: Field | None = None
) -> list[Field]:
    """The fields for a response to a request these limits judged: RateLimit-Policy (`policy`
    when built beforehand, else from the results' policies), RateLimit, and Retry-After when
    any of them refused."""
    fields = [
        policy if policy is not None else policy_field([p for p, _ in results]),
        ratelimit_field(results),
    ]
    refused = [verdict.retry_after for _, verdict in results if not verdict.allowed]
    if refused:
        fields.append(retry_after_field(max(refused)))
    return fields

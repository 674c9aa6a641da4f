"""Verdicts of the Autobahn cases, their order, and the comparison of two runs.

Each case has two verdicts, as in wstest's reports: `behavior` (the case's main column) and
`behaviorClose` (how the connection was closed). Better first:

    behavior:      OK > NON-STRICT > INFORMATIONAL = UNIMPLEMENTED > FAILED = MISSING
    behaviorClose: OK > INFORMATIONAL = FAILED BY CLIENT > WRONG CODE > UNCLEAN > FAILED = MISSING

NON-STRICT still conforms (a SHOULD not followed); INFORMATIONAL and UNIMPLEMENTED record a
behaviour the RFC leaves open or a feature not offered (permessage-deflate). On the close,
FAILED BY CLIENT means the client had to drop the TCP connection after the close handshake
(RFC 6455 7.1.1 wants the server to), WRONG CODE an unexpected close code, UNCLEAN no close
handshake where one was required. MISSING is a case that did not finish (the run was cut).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

MISSING = "MISSING"

BEHAVIOR_RANK = {
    "OK": 3,
    "NON-STRICT": 2,
    "INFORMATIONAL": 1,
    "UNIMPLEMENTED": 1,
    "FAILED": 0,
    MISSING: 0,
}
CLOSE_RANK = {
    "OK": 4,
    "INFORMATIONAL": 3,
    "FAILED BY CLIENT": 3,
    "WRONG CODE": 2,
    "UNCLEAN": 1,
    "FAILED": 0,
    MISSING: 0,
}

# One run: case id -> {"behavior": ..., "behaviorClose": ..., "remoteCloseCode": ..., ...}
Results = Mapping[str, Mapping[str, Any]]


def case_key(case_id: str) -> tuple[int, ...]:
    """'6.10.3' sorts after '6.2.1'."""
    return tuple(int(part) for part in case_id.split("."))


def failures(results: Results) -> list[str]:
    """The cases whose main verdict is FAILED (or that did not finish)."""
    return [case for case in sorted(results, key=case_key) if not _rank(results[case])[0]]


def regressions(direct: Results, through: Results) -> dict[str, str]:
    """The cases that did worse `through` a proxy than `direct`, on either verdict, each with
    a line saying how; a case run directly but not through the proxy counts as MISSING."""
    worse = {}
    for case in sorted(direct, key=case_key):
        before = direct[case]
        after = through.get(case, {"behavior": MISSING, "behaviorClose": MISSING})
        if any(b < a for b, a in zip(_rank(after), _rank(before), strict=True)):
            worse[case] = f"{_verdict(before)} directly, {_verdict(after)} through the proxy"
    return worse


def summary_table(runs: Mapping[str, Results]) -> str:
    """Counts of each verdict pair per run, one column a run (a Markdown table)."""
    pairs: Counter[tuple[str, str]] = Counter()
    counts = {
        name: Counter(_pair(result) for result in results.values())
        for name, results in runs.items()
    }
    for counter in counts.values():
        pairs.update(counter.keys())
    order = sorted(
        pairs, key=lambda pair: (-BEHAVIOR_RANK.get(pair[0], 0), -CLOSE_RANK.get(pair[1], 0), pair)
    )
    lines = [
        "| verdict (behavior / close) | " + " | ".join(runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for pair in order:
        cells = " | ".join(str(counts[name][pair]) for name in runs)
        lines.append(f"| {pair[0]} / {pair[1]} | {cells} |")
    totals = " | ".join(str(len(results)) for results in runs.values())
    lines.append(f"| cases | {totals} |")
    return "\n".join(lines)


def exceptions_table(runs: Mapping[str, Results]) -> str:
    """Every case that is not OK / OK in some run, with its verdicts in each run."""
    cases = sorted(
        {
            case
            for results in runs.values()
            for case, r in results.items()
            if _pair(r) != ("OK", "OK")
        },
        key=case_key,
    )
    lines = ["| case | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for case in cases:
        cells = []
        for results in runs.values():
            result = results.get(case)
            cells.append(_verdict(result) if result is not None else MISSING)
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pair(result: Mapping[str, Any]) -> tuple[str, str]:
    return str(result["behavior"]), str(result["behaviorClose"])


def _rank(result: Mapping[str, Any]) -> tuple[int, int]:
    behavior, close = _pair(result)
    return BEHAVIOR_RANK.get(behavior, 0), CLOSE_RANK.get(close, 0)


def _verdict(result: Mapping[str, Any]) -> str:
    behavior, close = _pair(result)
    code = result.get("remoteCloseCode")
    return f"{behavior} / {close}" + (f" ({code})" if code is not None else "")

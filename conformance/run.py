"""Runs the Autobahn test suite's fuzzing-client cases against one WebSocket server.

    python -m conformance.run --url ws://127.0.0.1:9301/ [--cases '1.*,2.*'] [--exclude '9.*']
                              [--json results.json] [--reports DIR] [--timeout 3600]

This is `wstest -m fuzzingclient` with a spec naming one server: the suite's own client and
case modules (ported to Python 3 by conformance.suite) run every selected case on a
connection of its own and judge it. Case patterns are the suite's (`*` matches anything,
e.g. `6.4.*`); `--exclude` takes cases out of the selection. The suite's JSON reports (its
index.json and one file per case, with the wire log) go to --reports; --json gets one object
`{"agent", "url", "suite", "cases": {ID: {"behavior", "behaviorClose", "remoteCloseCode",
"duration", "result", "resultClose", "wasNotCleanReason"}}}`. It prints the count of each
verdict and every case that is not OK. Exit status: 0 when every case finished (whatever the
verdicts), 2 when the run was cut short by --timeout or a signal (the unfinished cases are
MISSING).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from conformance import suite, verdicts

AGENT = "server"


def read_reports(reports: Path, agent: str) -> dict[str, dict[str, Any]]:
    """The verdicts of the suite's index.json, with each case's result texts."""
    index = reports / "index.json"
    if not index.exists():
        return {}
    results = {}
    for case, entry in json.loads(index.read_text()).get(agent, {}).items():
        detail = json.loads((reports / entry["reportfile"]).read_text())
        results[case] = {
            "behavior": entry["behavior"],
            "behaviorClose": entry["behaviorClose"],
            "remoteCloseCode": entry["remoteCloseCode"],
            "duration": entry["duration"],
            "result": detail["result"],
            "resultClose": detail["resultClose"],
            "wasNotCleanReason": detail["wasNotCleanReason"],
        }
    return results


def run_cases(
    url: str, cases: list[str], exclude: list[str], reports: Path, timeout: float
) -> None:
    """Runs the cases on the global reactor (this is an entry point). Cut short by the
    timeout or a signal, it still writes the reports of the cases done so far."""
    sys.path.insert(0, str(suite.prepare()))
    from autobahntestsuite import fuzzing
    from twisted.internet import reactor as global_reactor

    # mypy types the global reactor by its zope interfaces, whose methods take no self.
    reactor: Any = global_reactor

    spec = {
        "outdir": str(reports),
        "servers": [{"agent": AGENT, "url": url}],
        "cases": cases,
        "exclude-cases": exclude,
    }

    def cut() -> None:
        print(f"conformance.run: {timeout:g}s passed; stopping with the cases done so far")
        reactor.stop()

    def report_if_cut() -> None:
        if not (reports / "index.json").exists():
            factory.createReports()

    # The factory connects for its first case as soon as it is made, and stops the reactor
    # once it has written the reports after the last one.
    factory = fuzzing.FuzzingClientFactory(spec)
    reactor.addSystemEventTrigger("before", "shutdown", report_if_cut)
    watchdog = reactor.callLater(timeout, cut)
    reactor.run()
    if watchdog.active():
        watchdog.cancel()


def selected(patterns: list[str], exclude: list[str]) -> list[str]:
    """The case ids the suite resolves the patterns to (to find the ones that never ran)."""
    from autobahntestsuite.case import CaseBasename, CaseCategories, Cases, CaseSetname
    from autobahntestsuite.case import CaseSubCategories as subcategories
    from autobahntestsuite.caseset import CaseSet

    case_set = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, subcategories)
    return list(case_set.parseSpecCases({"cases": patterns, "exclude-cases": exclude}))


def patterns(text: str) -> list[str]:
    return [pattern.strip() for pattern in text.split(",") if pattern.strip()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="ws://HOST:PORT/PATH of the server")
    parser.add_argument("--cases", default="*", help="comma-separated case patterns")
    parser.add_argument("--exclude", default="", help="comma-separated case patterns")
    parser.add_argument("--json", type=Path, help="write the verdicts here")
    parser.add_argument(
        "--reports", type=Path, help="the suite's JSON reports (default: a temp dir)"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run")
    args = parser.parse_args(argv)

    cases, exclude = patterns(args.cases), patterns(args.exclude)
    reports = args.reports or Path(tempfile.mkdtemp(prefix="autobahn-reports-"))
    run_cases(args.url, cases, exclude, reports, args.timeout)
    results = read_reports(reports, AGENT)
    missing = [case for case in selected(cases, exclude) if case not in results]
    for case in missing:
        results[case] = {"behavior": verdicts.MISSING, "behaviorClose": verdicts.MISSING}
    results = {case: results[case] for case in sorted(results, key=verdicts.case_key)}

    if args.json:
        document = {
            "agent": AGENT,
            "url": args.url,
            "suite": f"autobahntestsuite {suite.VERSION} (fuzzingclient, ported to Python 3)",
            "cases": results,
        }
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    counts = Counter((r["behavior"], r["behaviorClose"]) for r in results.values())
    print(f"{len(results)} cases against {args.url} (reports in {reports}):")
    for (behavior, close), count in sorted(counts.items()):
        print(f"  {count:4d}  {behavior} / {close}")
    for case, result in results.items():
        if (result["behavior"], result["behaviorClose"]) != ("OK", "OK"):
            print(
                f"  {case}: {result['behavior']} / {result['behaviorClose']}: "
                f"{result.get('result', '')} {result.get('resultClose', '')}".rstrip()
            )
    return 2 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

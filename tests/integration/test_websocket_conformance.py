"""The Autobahn WebSocket test suite's fuzzing-client cases against an autobahn echo server,
directly and through the real proxyd in each WebSocket mode: an `[http]` listener passing
upgrades through, `[websocket] mode = passthrough` and `mode = message`. No case may fail
through proxyd, and no case may do worse through proxyd than directly (conformance.verdicts
defines the order). See docs/conformance.md.

By default a subset runs (everything but the 9.x limits and the 12.x/13.x compression cases,
plus the first case of each of their groups). PROXYD_CONFORMANCE=full runs all 517 cases
(`make conformance`); PROXYD_CONFORMANCE='9.*,12.1.*' runs the cases of those patterns. The
verdict tables go to .cache/conformance/report.md and stdout, the reports of a failed run to
.cache/conformance/failed/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance import verdicts

from .harness import Backend, ProcessList, Proxyd, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SELECTION = os.environ.get("PROXYD_CONFORMANCE", "")

if SELECTION:
    CASES = "*" if SELECTION == "full" else SELECTION
    # 12.x and 13.x send 1000 compressed messages of up to 128 KiB a case: a full run of
    # them takes about half an hour per target on two cores.
    RUN_TIMEOUT = 4 * 3600.0
else:
    # Sections 1-7 and 10 whole; of 9.x (up to 16 MiB messages) and 12.x/13.x (1000
    # compressed messages a case) the first case of each group.
    first_of_groups = [f"9.{group}.1" for group in range(1, 9)]
    first_of_groups += [f"12.{group}.1" for group in range(1, 6)]
    first_of_groups += [f"13.{group}.1" for group in range(1, 8)]
    CASES = ",".join(["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*", *first_of_groups])
    RUN_TIMEOUT = 240.0

MODES = {
    "http": (
        "[http web]\nlisten = tcp:{port}:interface=127.0.0.1\nroutes =\n    path / -> pool echo\n"
    ),
    "passthrough": (
        "[websocket raw]\nlisten = tcp:{port}:interface=127.0.0.1\npool = echo\n"
        "mode = passthrough\n"
    ),
    "message": (
        "[websocket msg]\nlisten = tcp:{port}:interface=127.0.0.1\npool = echo\n"
        "mode = message\nmax_message_size = 64MiB\nmax_frame_size = 64MiB\n"
        "permessage_deflate = on\n"
    ),
}


def run_suite(url: str, directory: Path) -> dict[str, dict[str, Any]]:
    """`python -m conformance.run` against `url`; its verdicts by case id."""
    directory.mkdir(parents=True, exist_ok=True)
    results = directory / "results.json"
    argv = [sys.executable, "-m", "conformance.run", "--url", url, "--cases", CASES]
    argv += ["--json", str(results), "--reports", str(directory / "reports")]
    argv += ["--timeout", str(RUN_TIMEOUT)]
    with open(directory / "run.log", "wb") as log:
        done = subprocess.run(
            argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT + 120
        )
    output = (directory / "run.log").read_text(errors="replace")
    assert done.returncode == 0, f"conformance.run exited with {done.returncode}:\n{output[-4000:]}"
    return json.loads(results.read_text())["cases"]


def keep_reports(directory: Path, name: str) -> Path:
    """A copy of a failed run's reports where pytest's rotation of tmp dirs won't remove it."""
    kept = ROOT / ".cache" / "conformance" / "failed" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.copytree(directory, kept)
    return kept


def describe(cases: dict[str, str], results: dict[str, dict[str, Any]]) -> str:
    lines = []
    for case, how in cases.items():
        result = results.get(case, {})
        texts = [result.get(key) for key in ("result", "resultClose", "wasNotCleanReason")]
        lines.append(f"  {case}: {how}: " + " ".join(text for text in texts if text))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, dict[str, dict[str, Any]]]]:
    """Every run's verdicts by target name; the tables are written when the module ends."""
    collected: dict[str, dict[str, dict[str, Any]]] = {}
    yield collected
    if len(collected) > 1:
        report = (
            f"Cases: {CASES}\n\n{verdicts.summary_table(collected)}\n\n"
            f"Cases not OK / OK in some run:\n\n{verdicts.exceptions_table(collected)}\n"
        )
        path = ROOT / ".cache" / "conformance" / "report.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report)
        print(f"\n{report}")


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """examples/ws_echo.py, for the whole module."""
    directory = tmp_path_factory.mktemp("ws-echo")
    processes = ProcessList(directory)
    port = free_port()
    argv = [sys.executable, str(ROOT / "examples" / "ws_echo.py"), "--port", str(port)]
    process = processes.start("ws-echo", argv)
    try:
        process.wait_for_output(rf"listening on 127\.0\.0\.1:{port}\b", 15)
        yield Backend(process, port)
    finally:
        processes.stop_all()


@pytest.fixture(scope="module")
def direct(
    echo_server: Backend,
    runs: dict[str, dict[str, dict[str, Any]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, dict[str, Any]]:
    """The verdicts against the echo server itself: the baseline."""
    url = f"ws://127.0.0.1:{echo_server.port}/"
    runs["direct"] = run_suite(url, tmp_path_factory.mktemp("direct"))
    return runs["direct"]


@pytest.mark.timeout(RUN_TIMEOUT + 180)
def test_echo_server_fails_no_case_directly(direct: dict[str, dict[str, Any]]) -> None:
    failed = dict.fromkeys(verdicts.failures(direct), "FAILED")
    assert not failed, f"the echo server fails cases directly:\n{describe(failed, direct)}"


@pytest.mark.timeout(RUN_TIMEOUT * 2 + 180)
@pytest.mark.parametrize("mode", list(MODES))
def test_no_case_does_worse_through_proxyd(
    mode: str,
    echo_server: Backend,
    direct: dict[str, dict[str, Any]],
    runs: dict[str, dict[str, dict[str, Any]]],
    proxyd: Callable[..., Proxyd],
    tmp_path: Path,
) -> None:
    port = free_port()
    pool = f"[pool echo]\nservers = {echo_server.address}\n\n"
    proxyd(pool + MODES[mode].format(port=port))

    through = run_suite(f"ws://127.0.0.1:{port}/", tmp_path / "run")
    runs[mode] = through

    failed = dict.fromkeys(verdicts.failures(through), "FAILED")
    worse = verdicts.regressions(direct, through)
    problems = []
    if failed:
        problems.append(f"FAILED through proxyd:\n{describe(failed, through)}")
    if worse:
        problems.append(f"worse through proxyd than directly:\n{describe(worse, through)}")
    if problems:
        kept = keep_reports(tmp_path / "run", mode)
        problems.append(f"the suite's reports (with wire logs) are in {kept}")
    assert not problems, f"{mode} mode:\n" + "\n".join(problems)

"""proxyd's JSON event log (`twistd --logger proxyd.logs.json_lines`)."""

from __future__ import annotations

import json

from twisted.logger import LogLevel
from twisted.python.failure import Failure

from proxyd.logs import json_line


def test_an_event_is_one_json_line_with_its_message_formatted() -> None:
    line = json_line(
        {
            "log_time": 1795457120.25,
            "log_level": LogLevel.warn,
            "log_namespace": "proxyd.app",
            "log_system": "-",
            "log_format": "[{listener}] reloaded {count} certificate(s)",
            "listener": "https web",
            "count": 2,
        }
    )
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "time": "2026-11-23T18:05:20.250+00:00",
        "level": "warn",
        "namespace": "proxyd.app",
        "system": "-",
        "message": "[https web] reloaded 2 certificate(s)",
    }


def test_a_failure_carries_its_traceback_and_a_workers_event_its_worker() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        failure = Failure()
    record = json.loads(
        json_line(
            {
                "log_time": 0.0,
                "log_level": LogLevel.critical,
                "log_format": "boom",
                "log_failure": failure,
                "worker": 1,
                "worker_pid": 4321,
            }
        )
    )
    assert record["level"] == "critical" and record["message"] == "boom"
    assert "ValueError: bad" in record["traceback"]
    assert (record["worker"], record["worker_pid"]) == (1, 4321)

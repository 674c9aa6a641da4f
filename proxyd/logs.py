"""Event-log observers for twistd's `--logger` option.

`twistd --logger proxyd.logs.json_lines proxyd --config FILE` writes proxyd's event log (not
the access log, which is JSON already) as one JSON object a line on stdout, for the journal or
a log shipper, instead of twistd's text lines (`--logfile`).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from twisted.logger import FileLogObserver, formatEvent


def json_lines() -> FileLogObserver:
    """Each event as {"time", "level", "namespace", "system", "message"}, with "traceback"
    for a failure and "worker"/"worker_pid" for a worker's event relayed by the master."""
    return FileLogObserver(sys.stdout, json_line)


def json_line(event: dict[str, Any]) -> str:
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "system": event.get("log_system", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key in ("worker", "worker_pid"):
        if key in event:
            record[key] = event[key]
    return json.dumps(record, default=str) + "\n"

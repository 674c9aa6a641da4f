"""`twistd --logger proxyd.logs.json_lines proxyd`: the event log as JSON lines on stdout,
the workers' events (relayed by the master) among them with their worker's index."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from .harness import TWISTD, Backend, ProcessList, free_port

pytestmark = pytest.mark.integration


def test_the_event_log_can_be_json_lines_with_the_workers_events(
    http_backend: Backend, processes: ProcessList, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "proxyd.ini"
    config.write_text(
        "[proxyd]\nworkers = 2\naccess_log = off\n\n"
        f"[pool web]\nservers = 127.0.0.1:{http_backend.port}\n\n"
        f"[http web]\nlisten = tcp:{port}:interface=127.0.0.1\nroutes =\n    path / -> pool web\n"
    )
    argv = [TWISTD, "-n", "--pidfile", "", "--logger", "proxyd.logs.json_lines", "proxyd"]
    proxyd = processes.start("proxyd", [*argv, "--config", str(config)], cwd=tmp_path)
    proxyd.wait_for_output(r"worker 1 \(pid \d+\) serving", 20)
    proxyd.wait_for_output(r"worker 0 \(pid \d+\) serving", 20)
    os.kill(proxyd.pid, signal.SIGTERM)
    assert proxyd.popen.wait(20) == 0
    records = [json.loads(line) for line in proxyd.output().splitlines()]
    assert all({"time", "level", "namespace", "system", "message"} <= set(r) for r in records)
    messages = [r["message"] for r in records]
    assert "SIGTERM: stopping gracefully" in messages
    from_workers = {r["worker"] for r in records if "worker" in r}
    assert from_workers == {0, 1}

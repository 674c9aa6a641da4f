"""testssl.sh against an [https] listener with proxyd's default TLS settings: no vulnerability,
only TLS 1.2 and 1.3, nothing graded medium or worse in protocols, ciphers and server
preferences. (Findings about the certificate itself, made by a test CA testssl does not trust,
are left out.) The command is the one docs/tls.md gives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.certs import TestCA

from .harness import ProcessList, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BAD = ("MEDIUM", "HIGH", "CRITICAL")


@pytest.mark.timeout(180)
@pytest.mark.skipif(shutil.which("testssl") is None, reason="testssl (Debian testssl.sh) missing")
def test_testssl_finds_no_weakness_in_the_default_tls_settings(
    tmp_path: Path, processes: ProcessList, proxyd
) -> None:
    backend_port = free_port()
    process = processes.start(
        "http-backend",
        [sys.executable, str(ROOT / "examples" / "http_backend.py"), "--port", str(backend_port)],
    )
    process.wait_listening([backend_port], 15)
    pem = TestCA().issue(["localhost", "127.0.0.1"]).write(tmp_path / "site.pem")
    port = free_port()
    proxyd(
        f"[pool web]\nservers = 127.0.0.1:{backend_port}\n\n"
        f"[https front]\nlisten = tcp:{port}:interface=127.0.0.1\ncertificates = {pem}\n"
        "routes =\n    path / -> pool web\n"
    )
    report = tmp_path / "testssl.json"
    command = [
        "testssl", "--quiet", "--color", "0", "--warnings", "batch", "--ip", "127.0.0.1",
        "-p", "-s", "-f", "-U", "-S", "--connect-timeout", "5", "--jsonfile", str(report),
        f"https://localhost:{port}/",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=170, cwd=tmp_path)
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    findings = {f["id"]: f for f in json.loads(report.read_text())}
    summary = Counter(f["severity"] for f in findings.values())

    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert findings[old]["finding"] == "not offered", findings[old]
    for current in ("TLS1_2", "TLS1_3"):
        assert findings[current]["finding"].startswith("offered"), findings[current]
    bad = [
        f"{f['id']}: {f['severity']}: {f['finding']}"
        for f in findings.values()
        if f["severity"] in BAD and not f["id"].startswith("cert")
    ]
    assert not bad, f"testssl severities {dict(summary)}:\n" + "\n".join(bad)
    for vulnerability in ("heartbleed", "CCS", "ROBOT", "POODLE_SSL", "SWEET32", "LOGJAM"):
        assert findings[vulnerability]["severity"] in ("OK", "INFO"), findings[vulnerability]

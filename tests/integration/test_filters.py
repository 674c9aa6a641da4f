"""Operators' filters through the real proxyd: loaded from a module by the config's [filter]
sections (tests/integration/sample_filters.py), in front of the demo HTTP backend."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .harness import RssSampler, free_port
from .test_http_relay import RSS_LIMIT_KIB, curl, http_backend  # noqa: F401

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n"


def config(port: int, backend_address: str) -> str:
    return f"""
[pool web]
servers = {backend_address}

[filter local]
class = sample_filters:Local
python_path = {HERE}
path = /local

[filter tag]
class = sample_filters:Tag
python_path = {HERE}
header = X-Filter-Tag
value = tagged

[filter wait]
class = sample_filters:Wait
python_path = {HERE}
path = /echo
delay = 300ms

[filter boom]
class = sample_filters:Boom
python_path = {HERE}
path = /boom

[filter upper]
class = sample_filters:Upper
python_path = {HERE}

[route shout]
pool = web
filters = upper

[http front]
listen = tcp:{port}:interface=127.0.0.1
filters = local tag wait boom
routes =
    path /size/ -> route shout
    path / -> pool web
"""


@pytest.fixture
def front(http_backend, proxyd):  # type: ignore[no-untyped-def]  # noqa: F811
    backend = http_backend("web-1")
    port = free_port()
    proxy = proxyd(config(port, backend.address))
    return proxy, port


def test_a_filter_answers_locally(front) -> None:  # type: ignore[no-untyped-def]
    proxy, port = front
    result = curl("-i", f"http://127.0.0.1:{port}/local")
    assert result.stdout.startswith("HTTP/1.1 200 "), result.stdout
    assert result.stdout.endswith("answered by filter local\n")
    [record] = proxy.wait_access_records(1)
    assert record["upstream"] is None and record["status"] == 200


def test_a_header_added_by_a_filter_reaches_the_backend_after_a_pause(front) -> None:  # type: ignore[no-untyped-def]
    _proxy, port = front
    started = time.monotonic()
    result = curl(f"http://127.0.0.1:{port}/echo")
    held = time.monotonic() - started
    fields = {name.lower(): value for name, value in json.loads(result.stdout)["headers"]}
    assert fields["x-filter-tag"] == "tagged"
    assert held >= 0.3  # the wait filter held it on its Deferred
    quick = curl("-o", "/dev/null", "-w", "%{http_code} %{time_total}", f"http://127.0.0.1:{port}/")
    code, seconds = quick.stdout.split()
    assert code == "200" and float(seconds) < 0.3  # other paths are not held


def test_a_raising_filter_gives_500_and_the_next_request_is_served(front) -> None:  # type: ignore[no-untyped-def]
    proxy, port = front
    proxy.expected_failures.append("filter boom failed on GET /boom")
    result = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/boom")
    assert result.stdout == "500"
    assert curl(f"http://127.0.0.1:{port}/").returncode == 0
    records = proxy.wait_access_records(2)
    assert records[0]["status"] == 500 and "boom on purpose" in records[0]["error"]
    assert records[1]["status"] == 200
    proxy.wait_for_log("filter boom failed on GET /boom")
    assert proxy.log().count("boom on purpose") >= 1


def test_a_100_mib_body_is_transformed_as_it_streams_under_100_mib_rss(front) -> None:  # type: ignore[no-untyped-def]
    proxy, port = front
    size = 100 * MiB
    sampler = RssSampler(proxy.pid)
    sampler.baseline_kib = proxy.rss_kib()
    sampler._thread.start()
    digest = hashlib.sha256()
    received = 0
    try:
        with subprocess.Popen(
            ["curl", "-sS", "--http1.1", f"http://127.0.0.1:{port}/size/100m"],
            stdout=subprocess.PIPE,
        ) as download:
            assert download.stdout is not None
            while chunk := download.stdout.read(1 << 20):
                digest.update(chunk)
                received += len(chunk)
            assert download.wait(timeout=120) == 0
    finally:
        sampler._stop.set()
    assert received == size
    expected = hashlib.sha256(PATTERN.upper() * (size // len(PATTERN))).hexdigest()
    assert digest.hexdigest() == expected
    assert sampler.peak_kib < RSS_LIMIT_KIB, f"peak RSS {sampler.peak_kib} KiB"


def test_each_worker_loads_the_filters_and_a_reload_makes_new_instances(
    http_backend,  # noqa: F811
    proxyd,
) -> None:  # type: ignore[no-untyped-def]
    backend = http_backend("web-1")
    port = free_port()
    text = config(port, backend.address)
    proxy = proxyd("[proxyd]\nworkers = 2\n" + text)
    for index in (0, 1):
        proxy.wait_for_log(rf"worker {index} \(pid \d+\) serving", timeout=20)
    answers = {curl(f"http://127.0.0.1:{port}/local").stdout for _ in range(8)}
    assert answers == {"answered by filter local\n"}
    start = proxy.log_offset()
    proxy.config_path.write_text(
        "[proxyd]\nworkers = 2\n" + text.replace("path = /local", "path = /moved")
    )
    proxy.process.signal_group(signal.SIGHUP)
    for index in (0, 1):
        proxy.wait_for_log(
            rf"\[worker {index}#info [\w.]+\] reloaded .*: generation 2", start=start
        )
    moved = {curl(f"http://127.0.0.1:{port}/moved").stdout for _ in range(8)}
    assert moved == {"answered by filter local\n"}  # the new instance, in every worker
    assert "answered by filter" not in curl(f"http://127.0.0.1:{port}/local").stdout

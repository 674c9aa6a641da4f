"""Rate limits through the real proxyd, with curl, in front of the demo HTTP backend
(examples/http_backend.py): a quick burst past the limit gets 429 with Retry-After and the
RateLimit fields, clients are counted apart, a SIGHUP reload keeps the limit's table, the
metrics count it."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import pytest

from .harness import free_port
from .test_http_relay import curl, http_backend  # noqa: F401

pytestmark = pytest.mark.integration


def config(backend: str, port: int, admin: int, rate: str = "5/m") -> str:
    # 5 a minute, 5 at once: the 6th of a quick burst is refused whatever the machine's speed
    # (the next one passes 12 s later).
    return f"""
[pool web]
servers = {backend}

[ratelimit per-client]
rate = {rate}
burst = 5

[http front]
listen = tcp:{port}:interface=127.0.0.1
ratelimits = per-client
routes =
    path / -> pool web

[admin]
listen = tcp:{admin}:interface=127.0.0.1
"""


def burst(port: int, count: int, *args: str) -> list[tuple[int, dict[str, str]]]:
    """`count` requests on one keep-alive connection: each one's status and fields."""
    urls = [arg for _ in range(count) for arg in ("-o", "/dev/null", f"http://127.0.0.1:{port}/")]
    result = curl("-s", "-D", "-", *args, *urls)
    assert result.returncode == 0, result.stderr
    answers = []
    for head in result.stdout.replace("\r\n", "\n").strip().split("\n\n"):
        lines = head.split("\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        answers.append((int(lines[0].split()[1]), fields))
    return answers


def test_the_request_past_the_burst_gets_429_and_a_reload_keeps_the_count(
    http_backend,  # noqa: F811
    proxyd,
    tmp_path: Path,
) -> None:
    backend = http_backend("web-1")
    port, admin = free_port(), free_port()
    proxy = proxyd(config(backend.address, port, admin))
    answers = burst(port, 6)
    assert [status for status, _ in answers] == [200] * 5 + [429]
    assert answers[0][1]["ratelimit-policy"] == '"per-client";q=5;w=60'
    assert answers[0][1]["ratelimit"] == '"per-client";r=4;t=12'
    refused = answers[5][1]
    assert 1 <= int(refused["retry-after"]) <= 12
    assert refused["ratelimit"].startswith('"per-client";r=0;t=')
    # Another client is counted apart.
    assert [s for s, _ in burst(port, 1, "--interface", "127.0.0.2")] == [200]
    # A reload that keeps the limit keeps its table: no fresh burst.
    start = proxy.log_offset()
    proxy.process.signal_group(signal.SIGHUP)
    proxy.wait_for_log(r"reloaded .*: generation 2", start=start)
    assert [s for s, _ in burst(port, 1)] == [429]
    records = proxy.wait_access_records(8)
    assert records[5]["status"] == 429 and records[5]["error"] == "rate limited by per-client"
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics") as response:
        metrics = response.read().decode()
    labels = 'kind="http",limit="per-client",listener="front"'
    assert f'proxyd_ratelimit_requests_total{{{labels},outcome="allowed"}} 6.0' in metrics
    assert f'proxyd_ratelimit_requests_total{{{labels},outcome="limited"}} 2.0' in metrics
    assert 'error="rate_limited"' in metrics


def test_a_changed_limit_starts_afresh_at_reload(
    http_backend,  # noqa: F811
    proxyd,
    tmp_path: Path,
) -> None:
    backend = http_backend("web-1")
    port, admin = free_port(), free_port()
    proxy = proxyd(config(backend.address, port, admin))
    assert [s for s, _ in burst(port, 6)][-1] == 429
    proxy.config_path.write_text(proxy.config_path.read_text().replace("rate = 5/m", "rate = 6/m"))
    start = proxy.log_offset()
    proxy.process.signal_group(signal.SIGHUP)
    proxy.wait_for_log(r"reloaded .*: generation 2", start=start)
    assert [s for s, _ in burst(port, 6)] == [200] * 5 + [429]

"""The `otlp_*` keys of [http] and [https] (proxyd.config.otlp): read with their defaults,
refused without trace_context or without otlp_endpoint, and bad values refused with the
file's line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import HttpListenerConfig
from proxyd.config.otlp_model import OtlpConfig

ENDPOINT = "http://127.0.0.1:4318/v1/traces"

HTTP = (
    "[pool web]\nservers = 127.0.0.1:9001\n"
    "[http h]\nlisten = tcp:8080\nroutes =\n    path / -> pool web\n"
)
"""Lines 1 to 6; a key given after them is on line 7."""


def load_http(tmp_path: Path, keys: str) -> HttpListenerConfig:
    path = tmp_path / "proxyd.ini"
    text = HTTP + textwrap.dedent(keys)
    path.write_text(text)
    return loads(text, str(path)).http[0]


def config_errors(tmp_path: Path, keys: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_http(tmp_path, keys)
    prefix = f"{tmp_path / 'proxyd.ini'}:"
    return [str(e).removeprefix(prefix) for e in info.value.errors]


def test_otlp_keys_are_read_with_their_defaults(tmp_path: Path) -> None:
    config = load_http(tmp_path, f"trace_context = on\notlp_endpoint = {ENDPOINT}\n")
    assert config.otlp == OtlpConfig(ENDPOINT, "proxyd", 1.0)
    config = load_http(
        tmp_path,
        "trace_context = restart\notlp_endpoint = https://collector.example:4318/v1/traces\n"
        "otlp_service_name = edge\notlp_sample = 10%\n",
    )
    assert config.otlp == OtlpConfig("https://collector.example:4318/v1/traces", "edge", 0.1)
    assert load_http(tmp_path, "trace_context = on\n").otlp is None


def test_otlp_endpoint_without_trace_context_is_refused(tmp_path: Path) -> None:
    assert config_errors(tmp_path, f"otlp_endpoint = {ENDPOINT}\n") == [
        "7: [http h] otlp_endpoint: expected trace_context = on or restart with it (the span"
        " exported is the one whose id trace_context sends upstream); found trace_context = off"
    ]


def test_otlp_keys_without_an_endpoint_are_refused(tmp_path: Path) -> None:
    assert config_errors(
        tmp_path, "trace_context = on\notlp_service_name = x\notlp_sample = 0.5\n"
    ) == [
        "8: [http h] otlp_service_name: expected 'otlp_endpoint' too (where to export"
        " spans); found none",
        "9: [http h] otlp_sample: expected 'otlp_endpoint' too (where to export spans); found none",
    ]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (
            "collector:4318",
            "expected an http:// or https:// URL with a host and a path; found"
            " 'collector:4318' (did you mean 'http://collector:4318/v1/traces'?)",
        ),
        (
            "http://collector:4318/",
            "expected an http:// or https:// URL with a host and a path; found"
            " 'http://collector:4318/' (did you mean 'http://collector:4318/v1/traces'?"
            " OTLP/HTTP takes spans there)",
        ),
        (
            "grpc://collector:4317/v1/traces",
            "expected an http:// or https:// URL with a host and a path; found"
            " 'grpc://collector:4317/v1/traces' (e.g. http://127.0.0.1:4318/v1/traces)",
        ),
        (
            "http://collector:0/v1/traces",
            "expected a port from 1 to 65535; found 'http://collector:0/v1/traces'",
        ),
        (
            "http://collector:70000/v1/traces",
            "expected a port from 1 to 65535; found 'http://collector:70000/v1/traces'",
        ),
        (
            "http://user:pass@collector:4318/v1/traces",
            "expected a URL without user or password (set OTEL_EXPORTER_OTLP_TRACES_HEADERS"
            " in proxyd's environment for the collector's credentials); found credentials"
            " in the URL",
        ),
    ],
)
def test_a_bad_otlp_endpoint_is_refused_with_the_files_line(
    tmp_path: Path, value: str, error: str
) -> None:
    assert config_errors(tmp_path, f"trace_context = on\notlp_endpoint = {value}\n") == [
        f"8: [http h] otlp_endpoint: {error}"
    ]


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "half", "200%"])
def test_a_bad_otlp_sample_is_refused(tmp_path: Path, value: str) -> None:
    keys = f"trace_context = on\notlp_endpoint = {ENDPOINT}\notlp_sample = {value}\n"
    assert config_errors(tmp_path, keys) == [
        "9: [http h] otlp_sample: expected a ratio from 0 to 1 (e.g. 0.1) or a percentage"
        f" (e.g. 10%); found '{value}'"
    ]


def test_an_empty_otlp_service_name_is_refused(tmp_path: Path) -> None:
    keys = f"trace_context = on\notlp_endpoint = {ENDPOINT}\notlp_service_name =\n"
    assert config_errors(tmp_path, keys) == [
        "9: [http h] otlp_service_name: expected a service name (1 to 255 printable"
        " characters); found ''"
    ]

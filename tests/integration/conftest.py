"""Fixtures for the integration tests: the real `twistd -n proxyd` and real peers, all on
ephemeral 127.0.0.1 ports, each one waited for and each one stopped at teardown."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certs import Issued, TestCA

from .harness import Backend, ProcessList, Proxyd, free_port, start_backend, start_proxyd
from .mariadb import MariaDB, find_binary, install_template
from .smtp import SmtpServer, make_certificate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessList]:
    """Every process a test starts; all of them are stopped when it ends, pass or fail."""
    directory = tmp_path / "processes"
    directory.mkdir()
    procs = ProcessList(directory)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def backend(processes: ProcessList) -> Callable[..., Backend]:
    """`backend(mode, *args, name=...)` starts a peers.py server and returns it once it
    listens (see peers.py for the modes)."""

    def start(mode: str, *args: str, name: str = "") -> Backend:
        return start_backend(processes, mode, *args, name=name)

    return start


@pytest.fixture
def proxyd(tmp_path: Path, processes: ProcessList) -> Iterator[Callable[..., Proxyd]]:
    """`proxyd(config_text)` starts `twistd -n proxyd` on it and returns once every
    `listen = tcp:PORT` of the config is listening. At teardown each proxyd gets SIGTERM
    (SIGKILL after 10s); the test fails if one exited on its own or logged a traceback."""
    started: list[Proxyd] = []

    def start(config: str, **kwargs: Any) -> Proxyd:
        directory = tmp_path / f"proxyd-{len(started)}"
        directory.mkdir()
        instance = start_proxyd(processes, directory, config, **kwargs)
        started.append(instance)
        return instance

    yield start

    problems = []
    for instance in started:
        died_early = not instance.process.alive and not instance.stopped_by_test
        status = instance.process.stop()
        if died_early:
            problems.append(f"proxyd exited by itself with status {status}")
        report = instance.crash_report()
        if report is not None:
            problems.append(f"proxyd logged an unhandled error:\n{report[-6000:]}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def mariadb_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """System tables installed once per session; every server starts from a copy."""
    if find_binary("mariadbd", "mysqld") is None:
        pytest.skip("mariadbd is not installed (scripts/apt-need mariadbd:mariadb-server)")
    return install_template(tmp_path_factory.mktemp("mariadb-template"))


@pytest.fixture
def mariadb(
    tmp_path: Path, processes: ProcessList, mariadb_template: Path
) -> Iterator[Callable[[str], MariaDB]]:
    """`mariadb(name)` starts a MariaDB server with a user and database for the tests."""
    servers: list[MariaDB] = []

    def start(name: str) -> MariaDB:
        directory = tmp_path / f"mariadb-{name}"
        directory.mkdir()
        server = MariaDB(processes, mariadb_template, directory, name)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.cleanup()


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cert.pem, key.pem): self-signed for 127.0.0.1 and localhost."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp_server(tls_cert: tuple[Path, Path]) -> Iterator[SmtpServer]:
    server = SmtpServer(*tls_cert)
    try:
        server.start_listening()
        yield server
    finally:
        server.close()


# TLS: a test CA, certificates made from it, an HTTP origin and `openssl s_server` peers.
# (tests/integration/test_https.py has module-level fixtures of the same names.)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def certs(tmp_path: Path, ca: TestCA) -> Callable[..., Path]:
    """`certs(name, names, issued=None)` writes a certificate for `names` (or `issued`), its
    chain and key in one PEM, as certs/NAME.pem beside certs/ca.pem (the CA of `ca`)."""
    directory = tmp_path / "certs"
    directory.mkdir()
    ca.write_ca(directory / "ca.pem")

    def make(name: str, names: list[str], issued: Issued | None = None) -> Path:
        return (issued or ca.issue(names)).write(directory / f"{name}.pem")

    return make


@pytest.fixture
def http_backend(processes: ProcessList) -> Backend:
    """examples/http_backend.py (named b1) on 127.0.0.1: /echo answers with the request."""
    port = free_port()
    argv = [sys.executable, str(ROOT / "examples" / "http_backend.py"), "--port", str(port)]
    process = processes.start("http-backend", [*argv, "--name", "b1"])
    process.wait_listening([port], 15)
    return Backend(process, port)


@pytest.fixture
def tls_server(processes: ProcessList) -> Callable[[Path], int]:
    """`tls_server(pem)`: an `openssl s_server -www` with that certificate; its port."""

    def start(pem: Path) -> int:
        port = free_port()
        argv = ["openssl", "s_server", "-quiet", "-www", "-accept", str(port), "-cert", str(pem)]
        argv += ["-naccept", "1000"]
        process = processes.start(f"s_server-{pem.stem}", argv)
        process.wait_listening([port], 15)
        return port

    return start

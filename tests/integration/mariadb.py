"""A throwaway MariaDB server for the integration tests.

The system tables are installed once per session into a template directory; each server gets a
copy, listens on 127.0.0.1 on a free port, and has a user `proxyd` (password `proxyd-secret`)
that owns the database `proxyd_test`, created over the unix socket as root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pymysql

from .harness import Process, ProcessList, free_port, wait_until

USER = "proxyd"
PASSWORD = "proxyd-secret"
DATABASE = "proxyd_test"

# Small enough to start in well under a second; nothing here needs durability.
SERVER_OPTIONS = [
    "--skip-log-bin",
    "--skip-name-resolve",
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=8M",
    "--innodb-flush-log-at-trx-commit=0",
    "--performance-schema=OFF",
    "--max-connections=200",
]


def find_binary(*names: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def _user_options() -> list[str]:
    return ["--user=root"] if os.geteuid() == 0 else []


def install_template(directory: Path) -> Path:
    installer = find_binary("mariadb-install-db", "mysql_install_db")
    if installer is None:
        raise FileNotFoundError("mariadb-install-db")
    datadir = directory / "data"
    result = subprocess.run(
        [
            installer,
            "--no-defaults",
            "--auth-root-authentication-method=normal",
            f"--datadir={datadir}",
            "--skip-test-db",
            *_user_options(),
            "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=8M",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed:\n{result.stdout}\n{result.stderr}")
    return datadir


class MariaDB:
    """One mariadbd. `start()` and `stop()` may be called again; the port stays the same."""

    def __init__(self, processes: ProcessList, template: Path, directory: Path, name: str) -> None:
        self.processes = processes
        self.name = name
        self.directory = directory
        self.datadir = directory / "data"
        shutil.copytree(template, self.datadir)
        # A unix socket path must fit in 108 bytes; tmp_path can be longer than that.
        self._socket_dir = tempfile.mkdtemp(prefix="mdb-", dir="/tmp")
        self.socket = f"{self._socket_dir}/mysqld.sock"
        self.error_log = directory / "error.log"
        self.port = free_port()
        self.process: Process | None = None
        self._initialised = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        assert self.process is None or not self.process.alive, "already running"
        server = find_binary("mariadbd", "mysqld")
        assert server is not None
        for attempt in range(3):
            offset = self.error_log.stat().st_size if self.error_log.exists() else 0
            self.process = self.processes.start(
                f"mariadb-{self.name}",
                [
                    server,
                    "--no-defaults",
                    *_user_options(),
                    f"--datadir={self.datadir}",
                    f"--socket={self.socket}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--pid-file={self.directory}/mariadbd.pid",
                    f"--log-error={self.error_log}",
                    *SERVER_OPTIONS,
                ],
            )
            if self._wait_ready(offset, timeout):
                break
            # Someone took the port between free_port() and the bind: try another one.
            self.process.kill()
            if attempt == 2:
                raise AssertionError(f"mariadbd could not bind:\n{self._error_log_tail()}")
            self.port = free_port()
        if not self._initialised:
            self._create_user()
            self._initialised = True

    def _error_log_tail(self, offset: int = 0) -> str:
        if not self.error_log.exists():
            return ""
        with open(self.error_log, errors="replace") as log:
            log.seek(offset)
            return log.read()[-4000:]

    def _wait_ready(self, offset: int, timeout: float) -> bool:
        process = self.process
        assert process is not None

        def ready() -> str | None:
            text = self._error_log_tail(offset)
            if "Bind on TCP/IP port" in text or "Do you already have another" in text:
                return "bind-failed"
            if "ready for connections" in text:
                return "ready"
            if not process.alive:
                raise AssertionError(
                    f"mariadbd exited with {process.popen.returncode}:\n{text}\n{process.tail()}"
                )
            return None

        return wait_until(ready, timeout, f"mariadb {self.name} to start") == "ready"

    def _create_user(self) -> None:
        with self.root_connection() as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {DATABASE}")
            cursor.execute(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
            cursor.execute(f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'%'")

    def root_connection(self) -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=self.socket, user="root", connect_timeout=10)

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (SIGTERM), waited for."""
        if self.process is not None:
            self.process.stop(timeout)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._socket_dir, ignore_errors=True)


def connect_through(port: int, timeout: float = 10.0) -> pymysql.connections.Connection:
    """A client connection as the test user to whatever listens on `port` (proxyd)."""
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user=USER,
        password=PASSWORD,
        database=DATABASE,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
    )


def server_port(conn: pymysql.connections.Connection) -> int:
    """The port of the MariaDB that answered: tells which backend proxyd chose."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@port")
        (port,) = cursor.fetchone()
    return int(port)

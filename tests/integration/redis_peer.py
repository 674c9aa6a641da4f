"""A real redis-server (Debian's package, installed by `make test`) on a free loopback port,
started by a test: with a password, optionally over TLS, stopped and started again on the same
port, and slowed down on demand (DEBUG SLEEP)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .harness import Process, ProcessList, free_port

REDIS = shutil.which("redis-server")
PASSWORD = "s3cret-redis-password"


class RedisServer:
    def __init__(
        self, processes: ProcessList, directory: Path, tls: tuple[Path, Path] | None = None
    ):
        self.processes = processes
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        """The server's certificate and key files: TLS only, on `port`."""
        self.process: Process | None = None
        self.started = 0

    def url(self, db: int = 0) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        assert REDIS is not None, "redis-server is missing (make test installs it)"
        argv = [
            REDIS,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            PASSWORD,
            "--enable-debug-command",
            "local",
            "--dir",
            str(self.directory),
        ]
        if self.tls is None:
            argv += ["--port", str(self.port)]
        else:
            cert, key = self.tls
            argv += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(cert),
                "--tls-key-file",
                str(key),
                "--tls-auth-clients",
                "no",
            ]
        self.started += 1
        self.process = self.processes.start(f"redis-{self.started}", argv)
        self.process.wait_listening([self.port], 15)
        return self

    def stop(self) -> None:
        assert self.process is not None
        self.process.kill()

    def cli(self, *args: str, background: bool = False) -> subprocess.Popen[str] | str:
        argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--no-auth-warning"]
        argv += ["-a", PASSWORD, *args]
        if background:
            return subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        return done.stdout.strip()

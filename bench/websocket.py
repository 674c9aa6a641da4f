"""WebSocket scenarios: small messages in a closed loop over 100 connections, directly to an
echo server and through nginx, HAProxy and proxyd.

The echo server and the load client are Node.js programs on the `ws` package
(bench/ws/wsbench.js, installed by `make bench` with `npm ci`), so that neither is what limits
a Python proxy. The client opens its connections, then each one sends a text message, waits
for its echo and sends the next; an operation is one echo (a round trip: two messages relayed).
The proxy's CPU time is read just before the loaded seconds and just after, so that the
opening handshakes and the closes are not counted.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

from bench.processes import free_port, which
from bench.scenario import Bench, Load, Meter, Scenario, StartError

WSBENCH = Path(__file__).resolve().parent / "ws" / "wsbench.js"
CONNECTIONS = 100
SIZE = 32
WINDOW = 1
MAX_ECHOES = 10_000_000
"""Most echoes in one client run, whatever its duration."""
CLIENT_GRACE = 60
"""Seconds a client may take beyond its duration (opening, closing) before it is killed."""


class WebSocket(Scenario):
    """proxyd relays with `listener`: an `[http]` route (Upgrade passthrough, as nginx and
    HAProxy do it) or a `[websocket]` listener in message mode (every frame parsed)."""

    unit = "echo"
    needs = ("node", "nginx")

    def __init__(self, name: str, title: str, listener: str) -> None:
        self.name = name
        self.title = title
        self.listener = listener

    def origin(self, bench: Bench) -> int:
        if not (WSBENCH.parent / "node_modules" / "ws").is_dir():
            raise StartError("bench/ws/node_modules is missing (make bench runs npm ci there)")
        port = free_port()
        argv = [*bench.pinning.load(), str(which("node")), str(WSBENCH), "echo", str(port)]
        bench.start("origin", argv, tcp=(port,))
        return port

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        body = f"""    upstream echo {{
        server 127.0.0.1:{origin};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
"""
        return bench.nginx_http("nginx", body)

    def haproxy(self, bench: Bench, port: int, origin: int) -> str:
        body = f"""    option forwardfor
frontend bench
    bind 127.0.0.1:{port}
    default_backend echo
backend echo
    server echo 127.0.0.1:{origin}
"""
        return bench.haproxy_config("http", body)

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        listen = f"listen = tcp:{port}:interface=127.0.0.1\n"
        pool = f"[pool echo]\nservers = 127.0.0.1:{origin}\n\n"
        return pool + self.listener.format(listen=listen)

    def describe(self) -> str:
        return (
            f"Node ws client, {CONNECTIONS} connections, {SIZE}-byte text messages, "
            f"{WINDOW} in flight per connection"
        )

    def check(self, bench: Bench, port: int) -> str | None:
        """A text and a binary message echoed unchanged, a close answered with 1000."""
        argv = [*bench.pinning.load(), str(which("node")), str(WSBENCH), "check"]
        try:
            result = subprocess.run(
                [*argv, f"ws://127.0.0.1:{port}/echo"], capture_output=True, text=True, timeout=30
            )
        except subprocess.TimeoutExpired:
            return "check: no answer within 30 s"
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip()
            return said or f"check exited with {result.returncode}"
        return None

    def load(self, bench: Bench, port: int, meter: Meter) -> Load:
        argv = [*bench.pinning.load(), str(which("node")), str(WSBENCH), "load"]
        argv += [f"ws://127.0.0.1:{port}/echo", str(CONNECTIONS), str(bench.duration)]
        argv += [str(SIZE), str(WINDOW), str(MAX_ECHOES)]
        client = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert client.stdin is not None and client.stdout is not None
        assert client.stderr is not None
        watchdog = threading.Timer(bench.duration + CLIENT_GRACE, client.kill)
        watchdog.start()
        try:
            if client.stdout.readline().strip() != "open":
                raise RuntimeError(f"client: {client.stderr.read().strip() or 'no connections'}")
            meter.begin()
            client.stdin.write("go\n")
            client.stdin.flush()
            line = client.stdout.readline()
            meter.end()
            if not line:
                raise RuntimeError(f"client: {client.stderr.read().strip() or 'no result'}")
            client.stdin.write("close\n")
            client.stdin.close()
            if client.wait() != 0:
                raise RuntimeError(f"client: {client.stderr.read().strip()}")
        finally:
            watchdog.cancel()
            if client.poll() is None:
                client.kill()
                client.wait()
        result = json.loads(line)
        return Load(
            operations=result["echoes"],
            seconds=result["seconds"],
            p50_ms=result["p50_ms"],
            p99_ms=result["p99_ms"],
            errors=result["errors"],
            extra={"client_cpu_s": result["client_cpu"]},
        )


SCENARIOS = (
    WebSocket(
        "websocket",
        "WebSocket small messages, closed loop (proxyd: [http] route, Upgrade passthrough)",
        "[http bench]\n{listen}routes =\n    path / -> pool echo\n",
    ),
    WebSocket(
        "websocket-message",
        "WebSocket small messages, closed loop (proxyd: [websocket] mode = message)",
        "[websocket bench]\n{listen}pool = echo\nmode = message\n",
    ),
)

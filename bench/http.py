"""HTTP scenarios: wrk against an nginx origin, directly and through each proxy.

The origin is one nginx worker (not a Python backend, so that it is not what limits the
figures): `GET /` answers `hello` (6 bytes), `GET /1m` is a 1 MiB static file, and
`POST /upload` reads a body of up to 2 MiB, discards it and answers `ok`. Every proxy keeps
its upstream connections alive whatever the client does and adds `X-Forwarded-For`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

from bench.processes import free_port, which
from bench.scenario import Bench, Load, Meter, Scenario, bounded

MiB = 1 << 20
SMALL_BODY = b"hello\n"
UPLOAD_ANSWER = b"ok\n"
WRK_CONNECTIONS = 50
WRK_THREADS = 2


# --- configurations -----------------------------------------------------------------------


def start_origin(bench: Bench) -> int:
    """Starts the nginx origin on the load CPUs; returns its port."""
    port = free_port()
    www = bench.workdir / "www"
    www.mkdir(exist_ok=True)
    (www / "1m").write_bytes(os.urandom(MiB))
    body = f"""    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = / {{
            default_type text/plain;
            return 200 "{SMALL_BODY.decode().strip()}\\n";
        }}
        location = /upload {{
            client_max_body_size 2m;
            default_type text/plain;
            return 200 "{UPLOAD_ANSWER.decode().strip()}\\n";
        }}
    }}
"""
    bench.origin_nginx(bench.nginx_http("origin", body), tcp=(port,))
    return port


def nginx_upstream(origin: int) -> str:
    return f"""    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 32;
        keepalive_requests 1000000;
    }}
"""


# Stream answers that do not fit the buffers, as the others do, rather than spool them to a
# temporary file. Request bodies up to 2 MiB are read whole into memory before they are sent
# on: nginx's default way (unbuffered, every upload whose answer comes before its end costs the
# client its connection), without the temporary file.
NGINX_PROXY_LOCATION = """        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_max_temp_file_size 0;
            client_max_body_size 2m;
            client_body_buffer_size 2m;
        }
"""


def haproxy_http(bench: Bench, bind: str, origin: int, globals_: str = "") -> str:
    body = f"""    option forwardfor
    http-reuse always
frontend bench
    bind {bind}
    default_backend origin
backend origin
    server origin 127.0.0.1:{origin}
"""
    return bench.haproxy_config("http", body, globals_)


def proxyd_pool(origin: int) -> str:
    return f"[pool origin]\nservers = 127.0.0.1:{origin}\n"


# --- checking -----------------------------------------------------------------------------


def fetch(
    port: int, path: str, headers: tuple[str, ...] = (), body: bytes | None = None
) -> tuple[int, bytes]:
    """(status, body) of one GET (or POST of `body`) over a new connection: a Content-Length,
    chunked or to-EOF answer."""
    method = "GET" if body is None else "POST"
    fields = [*headers, f"Content-Length: {len(body)}"] if body is not None else list(headers)
    request = "\r\n".join([f"{method} {path} HTTP/1.1", "Host: bench", *fields, "", ""])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode() + (body or b""))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed after {data[:200]!r}")
            data += chunk
        head, answer = data.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        found = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        )
        length = int(found.get(b"content-length", -1))
        chunked = found.get(b"transfer-encoding", b"").lower() == b"chunked"
        while length < 0 or len(answer) < length:
            if chunked and answer.endswith(b"0\r\n\r\n"):
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    if chunked:
        decoded, rest = b"", answer
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
        answer = decoded
    return status, answer


# --- load ---------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(text: str) -> dict[str, float]:
    """Requests, seconds, p50 and p99 in ms and errors from wrk's `--latency` report."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no {pattern!r} in wrk's output:\n{text}")
        return match

    # wrk pads a latency in seconds with a space ("1.93s "): spaces before the end too.
    p50 = find(r"^\s+50%\s+([\d.]+)(us|ms|s|m|h)\s*$")
    p99 = find(r"^\s+99%\s+([\d.]+)(us|ms|s|m|h)\s*$")
    done = find(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h),")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "requests": int(done.group(1)),
        "seconds": float(done.group(2)) * _UNITS[done.group(3)] / 1e3,
        "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)],
        "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
        "errors": (sum(map(int, errors.groups())) if errors else 0)
        + (int(bad.group(1)) if bad else 0),
    }


def run_wrk(bench: Bench, meter: Meter, url: str, options: list[str]) -> dict[str, float]:
    argv = [*bench.pinning.load(), str(which("wrk")), *options]
    argv += ["-d", f"{bench.duration}s", "--latency", "--timeout", "5s", url]
    with meter:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=bounded(bench.duration)
        )
    if result.returncode != 0:
        raise RuntimeError(f"wrk exited with {result.returncode}: {result.stderr.strip()}")
    return parse_wrk(result.stdout)


UPLOAD_SCRIPT = f"""wrk.method = "POST"
wrk.body = string.rep("x", {MiB})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


# --- scenarios ----------------------------------------------------------------------------


class ProxiedHttp(Scenario):
    """An HTTP scenario's proxies: each forwards every path to the origin, keeping its
    connections to it alive."""

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        server = f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n"
        server += f"{NGINX_PROXY_LOCATION}    }}\n"
        return bench.nginx_http("nginx", nginx_upstream(origin) + server)

    def haproxy(self, bench: Bench, port: int, origin: int) -> str:
        return haproxy_http(bench, f"127.0.0.1:{port}", origin)

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        listener = f"[http bench]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        return f"{proxyd_pool(origin)}\n{listener}routes =\n    path / -> pool origin\n"


class HttpScenario(ProxiedHttp):
    """wrk -c 50 -t 2 on one URL; `size` bytes of body per request (answered, or uploaded with
    `upload`) make the unit MiB rather than requests."""

    needs = ("wrk", "nginx")

    def __init__(
        self,
        name: str,
        title: str,
        path: str,
        size: int,
        headers: tuple[str, ...] = (),
        upload: bool = False,
    ) -> None:
        self.name = name
        self.title = title
        self.path = path
        self.size = size
        self.headers = headers
        self.upload = upload
        self.unit = "MiB" if size >= MiB else "req"

    def origin(self, bench: Bench) -> int:
        return start_origin(bench)

    def check(self, bench: Bench, port: int) -> str | None:
        body = b"x" * self.size if self.upload else None
        try:
            status, answer = fetch(port, self.path, self.headers, body)
        except (OSError, RuntimeError, ValueError) as e:
            return f"check request failed: {e}"
        wanted = len(UPLOAD_ANSWER) if self.upload else self.size
        if status != 200 or len(answer) != wanted:
            return f"check: status {status} and {len(answer)} body bytes, wanted 200 and {wanted}"
        return None

    def load(self, bench: Bench, port: int, meter: Meter) -> Load:
        options = ["-c", str(WRK_CONNECTIONS), "-t", str(WRK_THREADS)]
        for header in self.headers:
            options += ["-H", header]
        if self.upload:
            script = bench.workdir / "upload.lua"
            script.write_text(UPLOAD_SCRIPT)
            options += ["-s", str(script)]
        figures = run_wrk(bench, meter, f"http://127.0.0.1:{port}{self.path}", options)
        per_request = self.size / MiB if self.unit == "MiB" else 1
        return Load(
            operations=figures["requests"] * per_request,
            seconds=figures["seconds"],
            p50_ms=figures["p50_ms"],
            p99_ms=figures["p99_ms"],
            errors=int(figures["errors"]),
        )

    def describe(self) -> str:
        method = "POST" if self.upload else "GET"
        return f"{method} {self.path}; wrk -c {WRK_CONNECTIONS} -t {WRK_THREADS} --latency"


FILTERS = Path(__file__).resolve().parent / "filters"


class FilteredHttp(HttpScenario):
    """http-keepalive with a field added to each request and each response: by an operator's
    Python filter in proxyd (bench/filters/tag.py), by proxy_set_header and add_header in nginx,
    by http-request / http-response set-header in HAProxy. Its cost per request is the
    difference from http-keepalive's."""

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        location = NGINX_PROXY_LOCATION.replace(
            "            proxy_max_temp_file_size 0;\n",
            "            proxy_max_temp_file_size 0;\n"
            "            proxy_set_header X-Bench-Filter request;\n"
            "            add_header X-Bench-Filter response;\n",
        )
        server = f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n"
        server += f"{location}    }}\n"
        return bench.nginx_http("nginx", nginx_upstream(origin) + server)

    def haproxy(self, bench: Bench, port: int, origin: int) -> str:
        config = haproxy_http(bench, f"127.0.0.1:{port}", origin)
        return config.replace(
            "    default_backend origin\n",
            "    http-request set-header X-Bench-Filter request\n"
            "    http-response set-header X-Bench-Filter response\n"
            "    default_backend origin\n",
        )

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        sections = f"[filter tag]\nclass = tag:Tag\npython_path = {FILTERS}\n\n"
        listener = f"[http bench]\nlisten = tcp:{port}:interface=127.0.0.1\nfilters = tag\n"
        return f"{proxyd_pool(origin)}\n{sections}{listener}routes =\n    path / -> pool origin\n"


SCENARIOS = (
    HttpScenario("http-keepalive", "HTTP small answers, keep-alive", "/", len(SMALL_BODY)),
    FilteredHttp(
        "http-filter",
        "HTTP small answers, keep-alive, a field added to each request and response",
        "/",
        len(SMALL_BODY),
    ),
    HttpScenario(
        "http-close",
        "HTTP small answers, Connection: close (the proxies keep their upstreams alive)",
        "/",
        len(SMALL_BODY),
        headers=("Connection: close",),
    ),
    HttpScenario("http-1m", "HTTP 1 MiB answers, keep-alive", "/1m", MiB),
    HttpScenario("http-upload", "HTTP 1 MiB uploads, keep-alive", "/upload", MiB, upload=True),
)

"""`make run`: start the bundled demo backends, then proxyd in the foreground in front of them.

Ctrl-C stops proxyd and the backends.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time

import acme_ca

HERE = os.path.dirname(os.path.abspath(__file__))
GSLB_HOSTS = ("127.0.0.2", "127.0.0.3")
"""The [gslb demo] pool's backends (etc/proxyd.ini): one address each, for its A answers."""
BIN = os.path.dirname(sys.executable)

TRY = """
proxyd is starting on {config}. Try, in another terminal:
    echo hello | curl -sN --max-time 1 telnet://127.0.0.1:7000   # TCP relay -> echo 9001/9002
    echo hello | curl -sN --max-time 1 telnet://127.0.0.1:7001   # the same, found by DNS SRV
    curl -si http://127.0.0.1:8080/ http://127.0.0.1:8080/       # HTTP relay -> web 9101/9102
    curl -si http://127.0.0.1:8080/api/echo                      # strip_prefix; X-Forwarded-*
    curl -si http://127.0.0.1:8080/healthz                       # answered by proxyd itself
    curl -s http://127.0.0.1:8080/hello                          # a Python filter rewrites it
    curl -si -H 'X-Canary: 1' http://127.0.0.1:8080/             # a Python filter: canary pool
    curl -si --cacert etc/demo-tls/demo-ca.pem https://localhost:8443/echo    # HTTPS
    echo hi | openssl s_client -quiet -connect 127.0.0.1:7443   # TLS on a TCP listener
    curl -s --cacert etc/demo-tls/demo-ca.pem https://localhost:9443/  # SNI passthrough
    bash -c 'exec 3<>/dev/udp/127.0.0.1/5300; echo hi >&3; timeout 1 cat <&3'  # UDP relay
    echo hi | .venv/bin/python examples/ws_client.py ws://127.0.0.1:8090/  # WebSocket, message mode
    .venv/bin/python examples/ws_client.py ws://127.0.0.1:8091/    # passthrough: type to chat
    .venv/bin/python examples/ws_client.py ws://127.0.0.1:8080/chat  # Upgrade on the HTTP relay
    for i in $(seq 12); do curl -s -o /dev/null -w '%{{http_code}} ' \\
        http://127.0.0.1:8080/api/echo; done         # a rate limit counted in Redis: 429s
    curl -si --path-as-is http://127.0.0.1:8080/a/%2e%2e/admin   # refused by a [rule]: 403
    curl -si --interface 127.0.0.2 http://127.0.0.1:8080/private/  # an access list: 403
    curl -s --compressed -D - http://127.0.0.1:8080/zip/echo     # compressed: zstd, br, gzip
    curl -si -X OPTIONS -H 'Origin: https://app.example.com' \\
        -H 'Access-Control-Request-Method: PUT' http://127.0.0.1:8080/api/echo  # CORS preflight
    openssl s_client -connect 127.0.0.1:8444 -servername acme.demo.test </dev/null \\
        2>/dev/null | openssl x509 -noout -subject -issuer  # a certificate from ACME (pebble)
    curl -s http://127.0.0.1:9901/api/v1/status  # admin API; /metrics for Prometheus
    xdg-open http://127.0.0.1:9901/              # the live stats page
    curl -s -X POST http://127.0.0.1:9901/api/v1/reload   # reload {config} (or SIGHUP)
    .venv/bin/proxyd check {config}              # validate the configuration
    dig @127.0.0.1 -p 5354 www.demo.test         # GSLB: the healthy gslb backends, weighted
    curl -s -X POST -d '{{"admin": "maint"}}' \\
        http://127.0.0.1:9901/api/v1/pools/gslb/servers/127.0.0.3:9111  # then dig: one left
    for port in 8181 8182; do curl -s -D - -o /dev/null -H 'Host: cdn.demo.test' \\
        "http://127.0.0.1:$port/headers?Cache-Control=max-age%3D60" | grep Cache-Status
        done                                        # a CDN tier: shield, owner, edge asked
Stop with Ctrl-C.
"""


def wait_accepting(
    ports: list[int], backend: subprocess.Popen[bytes], limit: float, host: str = "127.0.0.1"
) -> str | None:
    """None once every port accepts a connection on `host`; otherwise why not."""
    deadline = time.monotonic() + limit
    pending = list(ports)
    while pending:
        if backend.poll() is not None:
            return f"the demo backends exited (code {backend.returncode}); are ports {ports} free?"
        try:
            with socket.create_connection((host, pending[0]), timeout=0.5):
                pending.pop(0)
        except OSError:
            if time.monotonic() > deadline:
                return f"the demo backends did not listen on {pending} within {limit:g}s"
            time.sleep(0.1)
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="etc/proxyd.ini")
    args = parser.parse_args()
    backends = [
        subprocess.Popen([sys.executable, os.path.join(HERE, "echo_server.py"), "9001", "9002"]),
        subprocess.Popen([sys.executable, os.path.join(HERE, "udp_echo.py"), "9201", "9202"]),
        *(
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(HERE, "http_backend.py"),
                    *("--port", str(port), "--name", f"web-{index}"),
                ]
            )
            for index, port in enumerate((9101, 9102), 1)
        ),
    ]
    backends += [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, "chat_server.py"),
                *("--port", str(port), "--name", f"chat-{index}"),
            ]
        )
        for index, port in enumerate((9301, 9302), 1)
    ]
    redis = shutil.which("redis-server")
    if redis is not None:  # the rate limit's store (etc/proxyd.ini's [ratelimit demo-api])
        backends.append(
            subprocess.Popen(
                [redis, "--bind", "127.0.0.1", "--port", "9601", "--save", ""],
                stdout=subprocess.DEVNULL,
            )
        )
    ports = (9101, 9102, 9301, 9302, 9601)[: len(backends) - 2]
    certificate = os.path.join(HERE, "..", "etc", "demo-tls", "localhost.pem")
    authority = acme_ca.start(os.path.join(HERE, "..", "run"), os.path.abspath(certificate))
    backends += authority
    ports += acme_ca.PORTS[: len(authority)]
    problem = wait_accepting([9001, 9002], backends[0], limit=10)
    for backend, port in zip(backends[2:], ports, strict=True):
        problem = problem or wait_accepting([port], backend, limit=10)
    # The [gslb demo] pool's HTTP backends, each on its own loopback address: its answers.
    for index, host in enumerate(GSLB_HOSTS, 1):
        argv = [os.path.join(HERE, "http_backend.py"), "--interface", host, "--port", "9111"]
        backends.append(subprocess.Popen([sys.executable, *argv, "--name", f"gslb-{index}"]))
        problem = problem or wait_accepting([9111], backends[-1], limit=10, host=host)
    if problem:
        print(f"make run: {problem}", file=sys.stderr)
        for backend in backends:
            backend.terminate()
        return 1
    print(TRY.format(config=args.config), flush=True)
    twistd = [os.path.join(BIN, "twistd"), "-n", "--pidfile", "", "proxyd", "--config", args.config]
    try:
        return subprocess.call(twistd)
    except KeyboardInterrupt:
        return 0
    finally:
        for backend in backends:
            backend.terminate()
            backend.wait()


if __name__ == "__main__":
    sys.exit(main())

"""TLS clients for the integration tests: Python's ssl for what a handshake gave (certificate,
version, ALPN), `openssl s_client` and curl where the tools' own view is the point."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .harness import Proxyd, recv_all


def client_context(
    cafile: Path | None,
    *,
    check_hostname: bool = True,
    cert: Path | None = None,
    alpn: Sequence[str] = (),
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A verifying client context (chain always; name unless `check_hostname` is false)."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    context.check_hostname = check_hostname
    if cert is not None:
        context.load_cert_chain(cert)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


@contextlib.contextmanager
def tls_connection(
    port: int, server_name: str | None, context: ssl.SSLContext
) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to 127.0.0.1:`port` sending `server_name` as SNI (none if None)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        tls = context.wrap_socket(sock, server_hostname=server_name)
    except BaseException:
        sock.close()
        raise
    with tls:
        yield tls


def dns_names(tls: ssl.SSLSocket) -> list[str]:
    """The subjectAltName DNS entries of the certificate the server presented."""
    cert = tls.getpeercert()
    assert cert, "no verified peer certificate"
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


def names_seen(port: int, server_name: str | None, cafile: Path) -> list[str]:
    """The DNS names of the (verified) certificate served for `server_name`."""
    context = client_context(cafile, check_hostname=False)
    with tls_connection(port, server_name, context) as tls:
        return dns_names(tls)


def get(
    tls: ssl.SSLSocket, path: str, headers: dict[str, str] | None = None, close: bool = True
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET on an open connection: status, headers (names lower-cased), body.
    With `close` it asks for Connection: close and reads to the end; without, it reads one
    response framed by Content-Length."""
    lines = [f"GET {path} HTTP/1.1", "Host: proxyd.test"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = recv_all(tls) if close else _recv_one(tls)
    if not data:
        raise ConnectionError("closed without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), fields, body


def _recv_one(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert match, head
    end = len(head) + 4 + int(match.group(1))
    while len(data) < end:
        chunk = tls.recv(65536)
        assert chunk, "connection closed in the body"
        data += chunk
    return data


def echoed_headers(body: bytes) -> dict[str, str]:
    """The request headers examples/http_backend.py's /echo saw."""
    return dict(json.loads(body)["headers"])


def s_client(port: int, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=20,
    )


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--http1.1", "--max-time", "20", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def fails(call: Any, *args: Any, **kwargs: Any) -> str:
    """Runs `call` expecting a TLS or connection failure; returns its text."""
    try:
        call(*args, **kwargs)
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return str(e)
    raise AssertionError(f"{call.__name__} succeeded")


def reload(relay: Proxyd, pattern: str) -> None:
    """SIGHUP to proxyd; returns once its log says `pattern` after the signal."""
    start = relay.log_offset()
    relay.process.signal_group(signal.SIGHUP)
    relay.wait_for_log(pattern, start=start)

"""What an exchange leaves behind once it is over: its counts in the metrics, and its
access-log line, written as text: building a dict for the JSON encoder cost twice as much on
every request. The fields that are the same for every line of a connection are made into JSON
once (ClientConnection.log_fields), and the common methods' once for all."""

from __future__ import annotations

import math
from typing import Any, Final

from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.accesslog import json_string, json_value, utc_millis
from proxyd.metrics import ErrorKind, RelayStats
from proxyd.relay.http.exchange import Exchange
from proxyd.relay.http.messages import HttpError
from proxyd.tls import describe_failure

_log = Logger(namespace="proxyd.relay.http")


def count(exchange: Exchange) -> None:
    """The exchange's response, bytes and latencies, on the server that answered (""
    when proxyd answered itself)."""
    forward = exchange.forward
    tried = forward.driver.tried if forward is not None else ()
    answered = exchange.response is not None and forward is not None and exchange.answer is None
    cell = exchange.cell(tried[-1] if answered and tried else None)
    cell.bytes_in += exchange.request_bytes
    cell.bytes_out += exchange.response_bytes
    if exchange.tunnel is None:
        cell.response(exchange.status, exchange.clock.seconds() - exchange.started)
    else:  # the tunnel's life is no response time (101, or 200 on an HTTP/2 stream)
        cell.responses[exchange.status // 100] += 1
    if forward is not None and forward.header_time is not None and answered:
        cell.upstream_duration.observe(forward.header_time - (forward.driver.connect_time or 0.0))
    if exchange.error_kind is not None:
        cell.error(exchange.error_kind)
    if exchange.request.version == "2":
        cell.http2_requests += 1


def count_refusal(stats: RelayStats, error: HttpError) -> None:
    """A request refused before it had a route: proxyd's answer, with no route, pool or
    server."""
    cell = stats.cell("", "", "")
    cell.responses[error.status // 100] += 1
    cell.error(ErrorKind.HEADER_TIMEOUT if error.status == 408 else ErrorKind.BAD_REQUEST)


def handshake_failed(listener: str, client: str, reason: Failure) -> None:
    """A client that never completed its TLS handshake: why, at info level (scanners and
    clients with old TLS versions are common; a refused client certificate is warned about
    when it is verified)."""
    why = describe_failure(reason) or "connection closed during the handshake"
    _log.info(
        "https {listener}: TLS handshake with {client} failed: {why}",
        listener=listener,
        client=client,
        why=why,
    )


def refusal_record(listener: str, client: str, error: HttpError, now: float) -> dict[str, Any]:
    """The record of a request refused before it was parsed (no method, no target)."""
    return {
        "time": utc_millis(now),
        "listener": listener,
        "client": client,
        "method": None,
        "uri": None,
        "status": error.status,
        "bytes_in": 0,
        "bytes_out": 0,
        "error": error.message,
    }


def exchange_line(exchange: Exchange, now: float) -> str:
    """The line of `exchange`, ended at `now`: one f-string, as the common case is a line
    with an upstream (each piece joined apart costs a string more)."""
    request = exchange.request
    forward = exchange.forward
    route = exchange.route
    ctx = exchange.ctx
    method = request.method
    started = exchange.started
    head = (
        f'{{"time":"{utc_millis(started)}"{exchange.client.log_fields}'
        f',"method":{METHODS_JSON.get(method) or json_string(method.decode("latin-1"))}'
        f',"uri":{json_string(request.target.decode("latin-1"))}'
        f',"status":{exchange.status},"bytes_in":{exchange.request_bytes}'
        f',"bytes_out":{exchange.response_bytes}'
        f',"route":{json_string(route.name) if route is not None else "null"}'
    )
    request_id = json_string(ctx.request_id) if ctx is not None else "null"
    if forward is None:
        line = (
            f'{head}{_NO_UPSTREAM},"request_time":{seconds_json(now - started)}'
            f',"attempts":0,"request_id":{request_id}'
        )
    else:
        driver = forward.driver
        tried = driver.tried
        status = forward.upstream_status
        line = (
            f'{head},"upstream":{json_string(tried[-1].name) if tried else "null"}'
            f',"upstream_status":{"null" if status is None else str(status)}'
            f',"upstream_connect_time":{seconds_json(driver.connect_time)}'
            f',"upstream_header_time":{seconds_json(forward.header_time)}'
            f',"upstream_response_time":{seconds_json(now - driver.started if tried else None)}'
            f',"request_time":{seconds_json(now - started)},"attempts":{len(tried)}'
            f',"request_id":{request_id}'
        )
    if request.version == "2":
        line += f',"protocol":"HTTP/2","stream":{exchange.client.stream_id}'
    tls = exchange.client.tls
    if tls is not None:
        line += (
            f',"tls_version":{json_value(tls.version)},"sni":{json_value(tls.server_name or None)}'
        )
    if exchange.tunnel is not None:
        line += f',"upgrade":"websocket","close":{json_value(exchange.tunnel_close)}'
    if exchange.error is not None:
        line += f',"error":{json_value(exchange.error)}'
    if exchange.chain.logs_identity:
        found = exchange._vars or {}
        line += (
            f',"rule":{json_value(found.get("rule"))}'
            f',"auth_user":{json_value(found.get("auth_user"))}'
        )
    if exchange.chain.logs_cache:
        line += f',"cache":{json_value((exchange._vars or {}).get("cache_status"))}'
    if exchange.chain.logs_trace:
        trace_id = (exchange._vars or {}).get("trace_id")
        line += f',"trace_id":{json_value(trace_id)}'
    return line + "}"


_NO_UPSTREAM: Final = (
    ',"upstream":null,"upstream_status":null,"upstream_connect_time":null'
    ',"upstream_header_time":null,"upstream_response_time":null'
)
METHODS_JSON: Final = {
    method: json_string(method.decode("ascii"))
    for method in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")
}


def seconds_json(value: float | None) -> str:
    """A duration in the access log: seconds, to the millisecond."""
    if value is None:
        return "null"
    # repr(round(max(value, 0.0), 3)), as the JSON encoder would write it, for less: both
    # round the exact binary value half to even. No double lies between 0.0005 and the
    # double nearest to it, which is above it: what is below that rounds to 0 (and -0.0,
    # never a measured duration, keeps its sign as round() keeps it).
    if value < 0.0005:
        return "0.0" if value or math.copysign(1.0, value) > 0 else "-0.0"
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text[-1] == "." else text

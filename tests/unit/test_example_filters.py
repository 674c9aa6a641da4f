"""The filters in examples/filters/, loaded through a config's [filter] sections and run on
the relay (StringTransports)."""

from __future__ import annotations

import json
from pathlib import Path

from proxyd.config.load import loads
from proxyd.config.model import Address, FilterConfig, PoolConfig, ServerConfig
from proxyd.pool import Pool
from proxyd.relay.http.upstream import ConnectionPool
from tests.unit.test_http_relay import GET, OK, Relay, field

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "filters"


def filter_of(tmp_path: Path, keys: str) -> FilterConfig:
    text = (
        "[pool web]\nservers = 127.0.0.1:9001\n[pool canary]\nservers = 127.0.0.1:9101\n"
        f"[filter f]\npython_path = {EXAMPLES}\n{keys}\n"
        "[http h]\nlisten = tcp:8080\nfilters = f\nroutes =\n    path / -> pool web\n"
    )
    path = tmp_path / "proxyd.ini"
    path.write_text(text)
    [listener] = loads(text, str(path)).http
    [loaded] = listener.filters
    return loaded


def with_canary_pool(relay: Relay) -> Pool:
    """Pool `canary` (127.0.0.1:9101) beside the relay's `web`."""
    config = PoolConfig(name="canary", servers=(ServerConfig(Address("127.0.0.1", 9101)),))
    pool = Pool(config, relay.reactor)
    relay.factory.pools = {**relay.factory.pools, "canary": pool}
    relay.factory.upstreams = {
        **relay.factory.upstreams,
        "canary": ConnectionPool(relay.reactor, config),
    }
    return pool


def test_canary_router_sends_flagged_requests_to_the_canary_pool(tmp_path: Path) -> None:
    canary = filter_of(tmp_path, "class = canary:CanaryRouter\npool = canary\nvalue = yes")
    relay = Relay(filters=(canary,))
    with_canary_pool(relay)
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Canary: yes\r\n\r\n")
    assert relay.pending_connects() == [("127.0.0.1", 9101)]
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    assert field(relay.received(), "X-Canary-Served") == [b"1"]
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Canary: no\r\n\r\n")
    assert relay.pending_connects() == [("127.0.0.1", 9001)]


def test_canary_router_takes_a_stable_share_of_clients(tmp_path: Path) -> None:
    everyone = filter_of(tmp_path, "class = canary:CanaryRouter\npool = canary\npercent = 100")
    relay = Relay(filters=(everyone,))
    with_canary_pool(relay)
    relay.send(GET)
    assert relay.pending_connects() == [("127.0.0.1", 9101)]


def test_body_rewriter_replaces_across_reads_and_leaves_other_types_alone(
    tmp_path: Path,
) -> None:
    rewriter = filter_of(
        tmp_path, "class = rewrite:BodyRewriter\nfind = internal.test\nreplace = www.example.com"
    )
    relay = Relay(filters=(rewriter,))
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    body = b"see http://internal.test/a and internal.test!"
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    for piece in (body[:16], body[16:20], body[20:]):  # a match split over three reads
        upstream.dataReceived(piece)
    answer = relay.received()
    chunks = answer.split(b"\r\n\r\n", 1)[1]
    decoded = b""
    while chunks:
        size, _, rest = chunks.partition(b"\r\n")
        n = int(size, 16)
        decoded += rest[:n]
        chunks = rest[n + 2 :]
        if n == 0:
            break
    assert decoded == b"see http://www.example.com/a and www.example.com!"
    relay.send(GET)
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 13\r\n\r\ninternal.test"
    )
    assert relay.received().endswith(b"d\r\ninternal.test\r\n0\r\n\r\n")


def test_request_log_writes_a_line_per_exchange(tmp_path: Path) -> None:
    logger = filter_of(tmp_path, "class = request_log:RequestLog\nfile = audit.log")
    relay = Relay(filters=(logger,))
    relay.send(b"GET /a HTTP/1.1\r\nHost: a\r\nUser-Agent: probe/1\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    line = json.loads((tmp_path / "audit.log").read_text())
    assert line["method"] == "GET" and line["path"] == "/a" and line["status"] == 200
    assert line["server"] == "127.0.0.1:9001" and line["user_agent"] == "probe/1"
    assert len(line["request_id"]) == 32

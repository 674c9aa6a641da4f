"""The `[tcp]` relay of the real proxyd: half-close, bulk transfer under backpressure, a
backend dying mid-stream, no server at all."""

from __future__ import annotations

import hashlib
import socket
import struct
import time

import pytest

from .harness import (
    RssSampler,
    connect,
    connect_with_buffers,
    free_port,
    recv_all,
    recv_line,
    tcp_config,
)
from .peers import pattern_chunks, pattern_digest

pytestmark = pytest.mark.integration

MiB = 1 << 20
BULK = 256 * MiB
# proxyd's own memory may grow by this much while 256 MiB go through it; without
# backpressure a paused reader makes it hold most of the 256 MiB instead.
RSS_GROWTH_LIMIT_KIB = 48 * 1024
RSS_LIMIT_KIB = 100 * 1024

ACCESS_LOG_KEYS = {
    "time",
    "listener",
    "client",
    "backend",
    "bytes_in",
    "bytes_out",
    "duration",
    "connect_attempts",
    "close",
}


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[int, str]:
    """Reads until EOF or reset; returns (bytes read, "eof" | "reset"). Fails after timeout."""
    deadline = time.monotonic() + timeout
    total = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the connection was still open after {timeout}s")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return total, "reset"
        except TimeoutError:
            raise AssertionError(f"the connection was still open after {timeout}s") from None
        if not data:
            return total, "eof"
        total += len(data)


@pytest.mark.timeout(60)
def test_client_half_close_still_gets_the_backend_answer(backend, proxyd):
    counter = backend("count")
    port = free_port()
    relay = proxyd(tcp_config(port, [counter.address]))

    payload = b"q" * 100_000
    with connect(port) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        # The backend only answers after it has seen EOF: the relay must pass the
        # half-close on and keep the other direction open.
        assert recv_all(sock) == b"100000\n"

    (record,) = relay.wait_access_records(1)
    assert record.keys() >= ACCESS_LOG_KEYS
    assert record["listener"] == "relay"
    assert record["backend"] == counter.address
    assert record["client"].startswith("127.0.0.1:")
    assert record["bytes_in"] == len(payload)  # client to server
    assert record["bytes_out"] == len(b"100000\n")  # server to client
    assert record["connect_attempts"] == 1
    assert record["close"] in {"client_closed", "server_closed"}


@pytest.mark.timeout(60)
def test_backend_half_close_still_gets_the_client_upload(backend, proxyd):
    peer = backend("eof-first")
    port = free_port()
    proxyd(tcp_config(port, [peer.address]))

    with connect(port) as sock:
        assert recv_all(sock) == b"hello\n"  # the backend's EOF reached us
        sock.sendall(b"u" * 50_000)  # and our direction is still open
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock, 10)[0] == 0
    peer.process.wait_for_output(r"COUNT 50000\n", 10)


@pytest.mark.timeout(120)
def test_download_256mib_is_byte_exact_and_memory_bounded_with_a_slow_reader(backend, proxyd):
    source = backend("source", "--size", str(BULK))
    port = free_port()
    relay = proxyd(tcp_config(port, [source.address]))

    digest = hashlib.sha256()
    total = 0
    buffer = bytearray(65536)
    deadline = time.monotonic() + 90
    with (
        RssSampler(relay.pid, RSS_GROWTH_LIMIT_KIB) as rss,
        connect_with_buffers(port, rcvbuf=128 * 1024) as sock,
    ):
        # Not reading at all for a while (a throttle, not a wait for something): the
        # source writes much faster than proxyd reads, so without backpressure proxyd
        # would pull most of the 256 MiB into its memory now.
        time.sleep(1.5)
        rss.check()
        next_pause = 32 * MiB
        while total < BULK and time.monotonic() < deadline:
            count = sock.recv_into(buffer)
            if not count:
                break
            digest.update(memoryview(buffer)[:count])
            total += count
            if total >= next_pause:  # a slow reader: short stalls all along
                next_pause += 32 * MiB
                rss.check()
                time.sleep(0.1)
        assert sock.recv(1) == b""  # and nothing more than that

    assert total == BULK
    assert digest.hexdigest() == pattern_digest(BULK)
    rss.check()
    assert rss.peak_kib < RSS_LIMIT_KIB, f"peak RSS {rss.peak_kib} KiB"


@pytest.mark.timeout(120)
def test_upload_256mib_is_byte_exact_and_memory_bounded_with_a_slow_backend(backend, proxyd):
    sink = backend(
        "sink", "--initial-pause", "1.5", "--pause-every", str(32 * MiB), "--pause", "0.1"
    )
    port = free_port()
    relay = proxyd(tcp_config(port, [sink.address]))

    with (
        RssSampler(relay.pid, RSS_GROWTH_LIMIT_KIB) as rss,
        connect_with_buffers(port, sndbuf=128 * 1024) as sock,
    ):
        sock.sendall(struct.pack("!Q", BULK))
        for index, chunk in enumerate(pattern_chunks(BULK)):
            sock.sendall(chunk)
            if index % 16 == 0:
                rss.check()
        answer = recv_line(sock)

    assert answer == f"{BULK} {pattern_digest(BULK)}\n".encode()
    rss.check()
    assert rss.peak_kib < RSS_LIMIT_KIB, f"peak RSS {rss.peak_kib} KiB"


@pytest.mark.timeout(60)
def test_backend_killed_mid_stream_closes_client_and_next_goes_to_a_healthy_one(backend, proxyd):
    peers = {name: backend("stream", name=name) for name in ("a", "b")}
    port = free_port()
    relay = proxyd(
        tcp_config(
            port,
            [peer.address for peer in peers.values()],
            pool="streams",
            pool_options="check = tcp\ncheck_interval = 200ms\ncheck_timeout = 500ms\n"
            "rise = 2\nfall = 2\nmax_fails = 1",
            listener_options="connect_timeout = 2s\nretries = 2",
        )
    )

    with connect(port) as first:
        name = recv_line(first).strip().decode()
        assert name in peers
        victim = peers[name]
        (survivor_name,) = set(peers) - {name}
        received = 0
        while received < 256 * 1024:
            data = first.recv(65536)
            assert data, "the stream ended before the backend was killed"
            received += len(data)
        offset = relay.log_offset()
        victim.kill()
        started = time.monotonic()
        read_until_closed(first, timeout=5)
        assert time.monotonic() - started < 5

    # Straight away, before the health check may have noticed: a connect to the dead one
    # fails and is retried on the other.
    for _ in range(4):
        with connect(port) as sock:
            assert recv_line(sock).strip().decode() == survivor_name

    relay.wait_for_state(victim.address, "streams", "DOWN", timeout=10, start=offset)
    records = relay.wait_access_records(5)
    killed = next(r for r in records if r["backend"] == victim.address and r["bytes_out"])
    assert killed["close"] in {"server_closed", "server_reset"}


@pytest.mark.timeout(60)
def test_client_is_closed_when_no_server_answers(proxyd):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    port = free_port()
    relay = proxyd(
        tcp_config(
            port,
            [dead],
            pool_options="max_fails = 1\neject_time = 30s",
            listener_options="connect_timeout = 2s\nretries = 1",
        )
    )

    for _ in range(2):
        with connect(port) as sock:
            assert read_until_closed(sock, timeout=5)[0] == 0

    first, second = relay.wait_access_records(2)
    # Refused, then (ejected after that one failure) nothing left to retry on.
    assert first["close"] in {"connect_failed", "no_server"}
    assert first["connect_attempts"] >= 1
    assert first["backend"] in {None, "", dead}
    # Ejected after the first failure: the second client is not even tried on it.
    assert second["close"] == "no_server"
